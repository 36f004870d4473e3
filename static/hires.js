// The form's "Hires fix" switch: the first pass at the chosen size, an upscale, then a second
// pass at the larger size (the request's `hires` object). Its options show only when it is on;
// the hint says the output size, and when it is over this server's MAX_HIRES_SIZE.

const $ = (id) => document.getElementById(id);

/** A size rounded down to a multiple of 8, as the server does. */
const down8 = (value) => Math.max(8, Math.floor(value / 8) * 8);

/** A request's hires fix in a few words, for the result's settings. */
export function hiresSummary(hires) {
  const size = hires.width || hires.height
    ? `to ${hires.width || "auto"}×${hires.height || "auto"}` : `×${hires.scale}`;
  const steps = hires.steps ? `${hires.steps} steps` : "same steps";
  return `${size}, ${hires.upscaler}, ${steps}, denoising ${hires.denoising_strength}`;
}

export class HiresFix {
  constructor(limits) {
    this.limits = limits;
    this.toggle = $("hires");
    this.options = $("hires-options");
    this.scale = $("hires-scale");
    this.upscaler = $("hires-upscaler");
    this.steps = $("hires-steps");
    this.denoising = $("hires-denoising");
    this.hint = $("hires-hint");
    this.toggle.addEventListener("change", () => this.update());
    this.denoising.addEventListener("input", () => {
      $("hires-denoising-value").textContent = Number(this.denoising.value).toFixed(2);
    });
    for (const id of ["hires-scale", "width", "height"]) {
      $(id).addEventListener("input", () => this.update());
    }
    this.update();
  }

  /** Show the options while the switch is on, and the output size they make. */
  update() {
    const on = this.toggle.checked;
    this.options.hidden = !on;
    if (!on) {
      this.hint.textContent = "";
      return;
    }
    const width = Number($("width").value), height = Number($("height").value);
    if (!width || !height) {  // the input image decides the size: hires is txt2img only
      this.hint.textContent = "Hires fix applies to images made from the prompt alone.";
      return;
    }
    const scale = Number(this.scale.value) || 2;
    const w = down8(width * scale), h = down8(height * scale);
    const max = this.limits.max_hires_size;
    this.hint.textContent = Math.max(w, h) > max
      ? `${w}×${h} px is over this server's largest hires size (${max} px): lower the scale.`
      : `Output: ${w}×${h} px; progress counts both passes.`;
  }

  /** {hires: {...}} for a request body while the switch is on (txt2img only), else {}. */
  fields(body) {
    if (!this.toggle.checked || body.init_image) return {};
    return { hires: {
      scale: Number(this.scale.value),
      upscaler: this.upscaler.value,
      steps: Number(this.steps.value),
      denoising_strength: Number(this.denoising.value),
    } };
  }

  /** Put a request's hires fix (or none) back into the form. */
  fill(request) {
    const hires = request.hires;
    this.toggle.checked = Boolean(hires);
    if (hires) {
      this.scale.value = hires.scale;
      if ([...this.upscaler.options].some((o) => o.value === hires.upscaler)) {
        this.upscaler.value = hires.upscaler;
      }
      this.steps.value = hires.steps;
      this.denoising.value = hires.denoising_strength;
      this.denoising.dispatchEvent(new Event("input"));
    }
    this.update();
  }
}
