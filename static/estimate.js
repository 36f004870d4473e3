// The expected time before generating: asks the server's POST /estimate (its measured pace
// per model and kind of image) for the form's current settings and says it under Generate,
// with the faster choice when the wait is over about a minute.

const DEBOUNCE_MS = 250;

/** "about 12 s" / "about 3 min 5 s" */
export function aboutSeconds(seconds) {
  if (seconds < 90) return `about ${seconds < 10 ? seconds.toFixed(1) : Math.round(seconds)} s`;
  const minutes = Math.floor(seconds / 60);
  return `about ${minutes} min ${Math.round(seconds - minutes * 60)} s`;
}

const PRESET_LABELS = { quality: "Quality", balanced: "Balanced", fast: "Fast" };

/** One faster choice in words: "the Fast preset (about 40 s)". */
function choiceText(choice) {
  const time = choice.seconds === null ? "not measured yet" : aboutSeconds(choice.seconds);
  if (choice.preset) return `the ${PRESET_LABELS[choice.preset] || choice.preset} preset (${time})`;
  return `the 1-step model ${choice.model} (${time})`;
}

/** What the page says for one /estimate answer. */
export function estimateText(answer) {
  if (!answer.measured) {
    return "Expected time: not measured yet (known after the first image of these settings).";
  }
  let text = `Expected time: ${aboutSeconds(answer.seconds)} per image on this server.`;
  if (answer.faster && answer.faster.length) {
    text += ` Faster: ${answer.faster.map(choiceText).join(", or ")}.`;
  }
  return text;
}

export class Estimate {
  /** `element` shows the text; `fetchJson(path, options)` is the page's credentialed fetch;
   * `onAnswer(seconds)` hears each answer's expected seconds (null: not measured yet). */
  constructor(element, fetchJson, url, onAnswer = () => {}) {
    this.element = element;
    this.fetchJson = fetchJson;
    this.url = url;
    this.onAnswer = onAnswer;
    this.timer = null;
    this.asked = 0;  // answers to older questions are dropped
  }

  /** Ask again for `body` (the generation body; images are left out, only the mode counts). */
  update(body) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.ask(body), DEBOUNCE_MS);
  }

  async ask(body) {
    const asked = ++this.asked;
    const { init_image: init, mask_image: mask, mask_invert: _, ...settings } = body;
    const mode = mask ? "inpaint" : init ? "img2img" : "txt2img";
    if (!init) delete settings.strength;
    if (!settings.prompt) settings.prompt = "-";  // the settings decide the time, not the words
    try {
      const answer = await this.fetchJson(`${this.url}?mode=${mode}`, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(settings) });
      if (asked !== this.asked) return;
      this.element.textContent = estimateText(answer);
      this.element.dataset.seconds = answer.seconds ?? "";  // unrounded, for tests and tools
      this.onAnswer(answer.measured ? answer.seconds : null);
    } catch (err) {  // settings the server refuses: Generate will say why; say nothing here
      if (asked !== this.asked) return;
      this.element.textContent = "";
      this.onAnswer(null);
    }
  }
}
