// Every image the server kept (GET /images: finished jobs and the PNGs in OUTPUT_DIR, newest
// first), a page at a time, and a viewer for one of them: the image large, its settings as
// the server's infotext parser read them, "Use these settings", "Use as input image",
// download, and delete (asked first; the server wants the same credential as generating).
// The viewer and the question are modal <dialog>s: Escape closes them, focus stays inside.

const $ = (id) => document.getElementById(id);
const PAGE_SIZE = 12;
const FOCUSABLE = "button, a[href], summary, input, select, textarea, [tabindex]:not([tabindex='-1'])";

/** Keep Tab and Shift+Tab inside `dialog` (the page behind is inert, the browser's own
 * toolbar is not: without this, Tab would leave for it). */
function trapFocus(dialog) {
  dialog.addEventListener("keydown", (event) => {
    if (event.key !== "Tab") return;
    const inside = [...dialog.querySelectorAll(FOCUSABLE)]
      .filter((el) => !el.disabled && el.getClientRects().length > 0);
    if (!inside.length) return;
    const first = inside[0];
    const last = inside[inside.length - 1];
    if (event.shiftKey && (document.activeElement === first || !dialog.contains(document.activeElement))) {
      event.preventDefault();
      last.focus();
    } else if (!event.shiftKey && document.activeElement === last) {
      event.preventDefault();
      first.focus();
    }
  });
}

/** The gallery of kept images and its viewer. `api(path, options)` is the page's
 * credentialed fetch (throws with the server's message); `fillForm(request, seed)` and
 * `useAsInput(blob, name)` are the form's; `onDeleted()` after an image is deleted. */
export class History {
  constructor(root, { api, fillForm, useAsInput, onDeleted }) {
    this.url = root.dataset.imagesUrl;
    this.api = api;
    this.fillForm = fillForm;
    this.useAsInput = useAsInput;
    this.onDeleted = onDeleted;
    this.offset = 0;
    this.asked = 0;          // answers to older page requests are dropped
    this.urls = new Map();   // image name -> object URL of its PNG (fetched with the credential)
    this.blobs = new Map();  // image name -> that PNG, for "use as input image"
    this.shown = null;       // the image in the viewer
    this.opener = null;      // the thumbnail that opened it: focus goes back there
    this.viewer = $("viewer");
    this.confirm = $("confirm-delete");
    trapFocus(this.viewer);
    trapFocus(this.confirm);
    $("gallery-newer").addEventListener("click", () => this.load(Math.max(0, this.offset - PAGE_SIZE)));
    $("gallery-older").addEventListener("click", () => this.load(this.offset + PAGE_SIZE));
    $("viewer-close").addEventListener("click", () => this.viewer.close());
    this.viewer.addEventListener("close", () => this.closed());
    $("viewer-reuse").addEventListener("click", () => this.reuse());
    $("viewer-use-input").addEventListener("click", () => this.useInput());
    $("viewer-delete").addEventListener("click", () => this.askDelete());
    $("confirm-keep").addEventListener("click", () => this.confirm.close("keep"));
    $("confirm-delete-ok").addEventListener("click", () => this.confirm.close("delete"));
    this.confirm.addEventListener("close", () => {
      if (this.confirm.returnValue === "delete") this.remove();
      else $("viewer-delete").focus();
    });
  }

  /** Show the page of images starting at `offset` (the current one by default). */
  async load(offset = this.offset, note = "") {
    const asked = ++this.asked;
    let page;
    try {
      page = await (await this.api(`${this.url}?offset=${offset}&limit=${PAGE_SIZE}`)).json();
    } catch (err) {
      if (asked === this.asked) {
        this.status(err.status === 401 ? "Sign in to see the kept images." :
          `Could not load the kept images: ${err.message}`);
      }
      return;
    }
    if (asked !== this.asked) return;
    if (!page.images.length && offset > 0 && page.total > 0) {  // a delete emptied the last page
      this.load(Math.floor((page.total - 1) / PAGE_SIZE) * PAGE_SIZE, note);
      return;
    }
    this.forgetExcept(new Set(page.images.map((image) => image.name)));
    const items = await Promise.all(page.images.map((image) => this.item(image)));
    if (asked !== this.asked) return;
    this.offset = offset;
    $("gallery").replaceChildren(...items);
    const shown = page.total ?
      `Images ${offset + 1}–${offset + page.images.length} of ${page.total}, newest first.` :
      "No kept images yet.";
    this.status(`${note}${shown}`);
    const focused = document.activeElement;
    $("gallery-newer").disabled = offset === 0;
    $("gallery-older").disabled = page.next_offset === null;
    $("gallery-pager").hidden = offset === 0 && page.next_offset === null;  // one page: no pager
    if (focused?.disabled) {  // the pager's button just ran out of pages: keep the focus near
      (focused.id === "gallery-older" ? $("gallery-newer") : $("gallery-older")).focus();
    }
  }

  status(text) {
    $("gallery-status").textContent = text;
  }

  /** An object URL of an image's PNG (fetched once: <img src> cannot send the credential). */
  async imageUrl(image) {
    if (!this.urls.has(image.name)) {
      const blob = await (await this.api(image.url)).blob();
      this.blobs.set(image.name, blob);
      this.urls.set(image.name, URL.createObjectURL(blob));
    }
    return this.urls.get(image.name);
  }

  forgetExcept(keep) {
    for (const [name, url] of this.urls) {
      if (!keep.has(name) && name !== this.shown?.name) {
        URL.revokeObjectURL(url);
        this.urls.delete(name);
        this.blobs.delete(name);
      }
    }
  }

  async item(image) {
    const li = document.createElement("li");
    li.className = "history-item";
    li.dataset.name = image.name;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "history-button";
    button.setAttribute("aria-label", `Open image: ${image.prompt || image.name}` +
                        (image.seed !== null ? ` (seed ${image.seed})` : ""));
    const img = document.createElement("img");
    img.alt = "";
    try {
      img.src = await this.imageUrl(image);
    } catch (_) { /* deleted meanwhile: the caption still says which */ }
    const caption = document.createElement("span");
    caption.className = "caption";
    caption.textContent = image.prompt || image.name;
    button.append(img, caption);
    button.addEventListener("click", () => this.open(image, button));
    li.append(button);
    return li;
  }

  // -------------------------------------------------------------- the viewer

  async open(image, opener) {
    this.shown = image;
    this.opener = opener;
    $("viewer-title").textContent = image.prompt || image.name;
    $("viewer-status").textContent = "";
    const rows = Object.entries(image.settings || {}).filter(([, value]) => value !== "");
    $("viewer-settings").replaceChildren(...rows.flatMap(([key, value]) => {
      const dt = document.createElement("dt");
      dt.textContent = key;
      const dd = document.createElement("dd");
      dd.textContent = String(value);
      return [dt, dd];
    }));
    $("viewer-parameters").textContent = image.parameters || "(this PNG carries no settings)";
    $("viewer-reuse").disabled = !image.request;
    const img = $("viewer-image");
    img.alt = `Kept image: ${image.prompt || image.name}`;
    try {
      const url = await this.imageUrl(image);
      img.src = url;
      $("viewer-download").href = url;
      $("viewer-download").download = image.name;
    } catch (err) {
      $("viewer-status").textContent = err.message;
    }
    if (!this.viewer.open) this.viewer.showModal();
  }

  closed() {
    if (this.confirm.open) this.confirm.close();
    if (this.opener?.isConnected) this.opener.focus();
    this.shown = null;
  }

  reuse() {
    const image = this.shown;
    if (!image?.request) return;
    this.opener = null;  // the focus goes to the form instead
    this.viewer.close();
    this.fillForm(image.request, image.seed);
  }

  async useInput() {
    const image = this.shown;
    const blob = image && this.blobs.get(image.name);
    if (!blob) return;
    this.opener = null;
    this.viewer.close();
    await this.useAsInput(blob, image.name);
  }

  askDelete() {
    $("confirm-text").textContent = `“${this.shown.prompt || this.shown.name}” ` +
      `(${this.shown.name}) is removed from the server for good, its file too.`;
    this.confirm.returnValue = "";
    this.confirm.showModal();
    $("confirm-keep").focus();  // the safe answer first
  }

  async remove() {
    const image = this.shown;
    if (!image) return;
    try {
      await this.api(image.url, { method: "DELETE" });
    } catch (err) {
      $("viewer-status").textContent = err.message;
      $("viewer-delete").focus();
      return;
    }
    this.opener = null;
    this.viewer.close();
    this.onDeleted();
    await this.load(this.offset, `Deleted ${image.name}. `);
    ($("gallery").querySelector("button") || $("gallery-title")).focus();
  }
}
