// Live mode: "generate as you type". Offered only while the server's measured pace says an
// image of the form's settings takes a few seconds (a 1-step model, a tiny size); then a
// pause in typing submits the form, and a newer prompt cancels the job it supersedes, so
// the queue never fills with images nobody will look at.

/** Longest expected image (seconds) for which the page offers live mode. */
export const LIVE_MAX_SECONDS = 8;
/** A pause in typing this long submits (a keystroke resets it). */
export const TYPING_PAUSE_MS = 600;

export class LiveMode {
  /**
   * `offer` is the element holding the switch (`toggle`) and its `hint`; `generate(seed)`
   * submits the form's settings as a job, superseding any job live mode started before.
   */
  constructor(offer, toggle, hint, generate) {
    this.offerElement = offer;
    this.toggle = toggle;
    this.hint = hint;
    this.generate = generate;
    this.timer = null;
    this.seed = null;  // one seed while live: the image follows the words, not new noise
    toggle.addEventListener("change", () => this.switched());
  }

  /** Whether the user has live mode on (and it is offered). */
  get on() {
    return this.toggle.checked && !this.offerElement.hidden;
  }

  /** The expected seconds for the form's current settings (null: not measured yet). */
  offer(seconds) {
    const fits = seconds !== null && seconds !== undefined && seconds <= LIVE_MAX_SECONDS;
    this.offerElement.hidden = !fits;
    if (!fits && this.toggle.checked) {
      this.toggle.checked = false;  // slower settings: typing must not start long jobs
      this.switched();
    }
  }

  /** The form changed: while live, generate once typing pauses. */
  changed() {
    if (!this.on) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.generate(this.seed), TYPING_PAUSE_MS);
  }

  switched() {
    clearTimeout(this.timer);
    if (this.toggle.checked) {
      this.seed = Math.floor(Math.random() * 2 ** 31);
      this.hint.textContent = `On: a pause in typing generates (seed ${this.seed}); ` +
        "a newer prompt cancels the older image.";
      this.changed();
    } else {
      this.hint.textContent = "";
    }
  }
}
