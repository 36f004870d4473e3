// What the form holds when a model or a few-step LoRA is picked: its recipe (the model's
// card from the server, built in for SD-Turbo and SDXS: steps, sampler, guidance, size),
// over the speed preset's steps and sampler, over the server's defaults. The server applies
// the same recipe to requests that leave these fields out; the page sends them all, so it
// fills them in first. Pure data and lookups; app.js puts the values into the form.

export class Recipes {
  /** limits: the server's defaults; presets: name -> fields; models: name -> {family_label,
   * defaults}; loraRecipes: LoRA name -> its recipe ({} for an ordinary LoRA). */
  constructor(limits, presets, models, loraRecipes) {
    this.limits = limits;
    this.presets = presets;
    this.models = models;
    this.loraRecipes = loraRecipes;
    this.served = { name: null, card: {}, label: "" };  // the model /health reports
  }

  /** The card of the model menu's choice ("" = the model being served). */
  card(choice) {
    return choice ? (this.models[choice] || {}).defaults || {} : this.served.card;
  }

  /** The form's values for a model choice under a speed preset. */
  values(choice, presetName) {
    const card = this.card(choice);
    const preset = this.presets[presetName] || {};
    const size = this.limits.default_size;
    return {
      steps: card.steps ?? preset.steps ?? this.limits.default_steps,
      scheduler: card.scheduler ?? preset.scheduler ?? "default",
      guidance_scale: card.guidance_scale ?? this.limits.default_guidance,
      width: Math.min(card.width ?? size, this.limits.max_size),
      height: Math.min(card.height ?? size, this.limits.max_size),
      negativeUsed: card.negative_prompt !== false,
    };
  }

  /** A model's recipe in words, for the hint under the menu ("" for none). */
  describe(choice) {
    const card = this.card(choice);
    const label = choice ? (this.models[choice] || {}).family_label : this.served.label;
    const parts = [];
    if (card.steps !== undefined) parts.push(`${card.steps} step${card.steps === 1 ? "" : "s"}`);
    if (card.scheduler) parts.push(card.scheduler);
    if (card.guidance_scale !== undefined) parts.push(`guidance ${card.guidance_scale}`);
    if (card.width !== undefined) parts.push(`${card.width}×${card.height}`);
    if (!label && !parts.length) return "";
    return `${label || "This model"}${parts.length ? `: recommended ${parts.join(", ")}` : ""}.`;
  }

  /** Note what /health says of the served model; true when it is another model than before. */
  noteServed(health) {
    if (health.status !== "healthy" || !health.model) return false;
    const changed = health.model !== this.served.name;
    this.served = { name: health.model, card: health.defaults || {},
                    label: (health.family || {}).label || "" };
    return changed;
  }

  /** A LoRA's recipe (steps, scheduler, guidance_scale; {} for an ordinary LoRA). */
  lora(name) {
    return this.loraRecipes[name] || {};
  }
}
