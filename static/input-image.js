// The optional input image (img2img) and mask (inpainting) of the page's form: a drop zone
// that is also a keyboard button opening the file picker, a thumbnail, a remove button, the
// strength slider and the size selects' "from the input image" choice. A mask can also be
// painted on the image (mask-painter.js); an uploaded mask file wins while one is chosen.

import { MaskPainter } from "./mask-painter.js";

const $ = (id) => document.getElementById(id);
const AUTO = "";  // the size selects' value meaning "fit the input image" (sent as absent)

/** A file the user chose, checked to be a decodable image, with its data: URL for the API. */
async function readImage(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);  // decodes without an <img>: no CSP question
  } catch (_) {
    throw new Error(`"${file.name || "This file"}" is not an image this browser can read ` +
                    "(PNG, JPEG or WebP).");
  }
  const { width, height } = bitmap;
  bitmap.close();
  const dataUrl = await new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`Could not read "${file.name}".`));
    reader.readAsDataURL(file);
  });
  return { file, width, height, dataUrl, url: URL.createObjectURL(file) };
}

/** One image slot: drop zone + hidden file input + thumbnail + remove button. */
class ImagePicker {
  constructor(name, onChange, onError) {
    this.zone = $(`${name}-zone`);
    this.input = $(`${name}-file`);
    this.thumb = $(`${name}-thumb`);
    this.info = $(`${name}-info`);
    this.remove = $(`${name}-remove`);
    this.onChange = onChange;
    this.onError = onError;
    this.image = null;
    this.zone.addEventListener("click", () => this.input.click());
    this.zone.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();  // Space would scroll the page
        this.input.click();
      }
    });
    this.zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
      this.zone.classList.add("dragging");
    });
    this.zone.addEventListener("dragleave", () => this.zone.classList.remove("dragging"));
    this.zone.addEventListener("drop", (event) => {
      event.preventDefault();
      this.zone.classList.remove("dragging");
      const file = event.dataTransfer.files[0];
      if (file) this.set(file);
    });
    this.input.addEventListener("change", () => {
      if (this.input.files[0]) this.set(this.input.files[0]);
      this.input.value = "";  // choosing the same file again still fires "change"
    });
    this.remove.addEventListener("click", () => {
      this.clear();
      this.zone.focus();
    });
  }

  /** Check and show `file`; a file that is not an image is refused with a message. */
  async set(file) {
    this.onError("");
    let image;
    try {
      image = await readImage(file);
    } catch (err) {
      this.onError(err.message);
      return;
    }
    this.clear(false);
    this.image = image;
    this.thumb.src = image.url;
    this.thumb.alt = `${file.name || "image"}, ${image.width}×${image.height}`;
    this.thumb.hidden = false;
    this.info.textContent = `${file.name || "image"} · ${image.width}×${image.height}`;
    this.remove.hidden = false;
    this.zone.dataset.filled = "true";
    this.onChange();
  }

  /** Forget the image (and its object URL). */
  clear(notify = true) {
    if (this.image) URL.revokeObjectURL(this.image.url);
    this.image = null;
    this.thumb.removeAttribute("src");
    this.thumb.hidden = true;
    this.info.textContent = "";
    this.remove.hidden = true;
    delete this.zone.dataset.filled;
    if (notify) this.onChange();
  }
}

/** The input-image part of the form; `showError` writes to the page's error area. */
export class InputImage {
  constructor(limits, showError) {
    this.limits = limits;
    this.init = new ImagePicker("init-image", () => this.changed(), showError);
    this.mask = new ImagePicker("mask-image", () => this.maskChanged(), showError);
    this.showError = showError;
    this.painter = new MaskPainter(() => this.painted(), () => this.takeUploadedMask());
    this.sizeBefore = null;  // the sizes chosen before an input image switched them to auto
    $("strength").addEventListener("input", () => this.showStrength());
    $("steps").addEventListener("input", () => this.showStrength());
    for (const id of ["width", "height"]) {
      $(id).addEventListener("change", () => this.sizeChanged(id));
    }
    // A file dropped beside the zone would make the browser leave the page to show it.
    for (const type of ["dragover", "drop"]) {
      document.addEventListener(type, (event) => {
        if (!event.defaultPrevented) event.preventDefault();
      });
    }
    this.showStrength();
  }

  /** Use a PNG this page already holds (a finished result) as the input image. */
  useBlob(blob, name) {
    return this.init.set(new File([blob], name, { type: blob.type || "image/png" }));
  }

  /** The request fields for the image parts: {} without an input image. */
  fields() {
    if (!this.init.image) return {};
    const out = { init_image: this.init.image.dataUrl, strength: Number($("strength").value),
                  resize_mode: Number($("resize-mode").value) };
    const painted = this.painter.hasMask() ? this.painter.dataUrl() : null;
    const mask = this.mask.image ? this.mask.image.dataUrl : painted;
    if (mask) {
      out.mask_image = mask;
      out.mask_invert = $("mask-invert").checked ? 1 : 0;
      out.mask_blur = Number($("mask-blur").value);
    }
    return out;
  }

  /** A request's width/height: left out while the size follows the input image. */
  size() {
    if (this.init.image && ($("width").value === AUTO || $("height").value === AUTO)) return {};
    return { width: Number($("width").value), height: Number($("height").value) };
  }

  /** Put a finished job's strength back (the input image itself is not kept). */
  fill(request) {
    if (request.strength) $("strength").value = request.strength;
    if (request.mask_blur !== undefined) $("mask-blur").value = request.mask_blur;
    if (request.resize_mode !== undefined) $("resize-mode").value = request.resize_mode;
    this.showStrength();
  }

  changed() {
    const on = this.init.image !== null;
    $("init-image-options").hidden = !on;
    if (!on) this.mask.clear(false);
    this.painter.reset(this.init.image);
    this.setAutoSize(on);
    this.checkMask();
    this.showStrength();
  }

  maskChanged() {
    this.checkMask();
    if (this.mask.image) this.painter.reset(this.init.image);  // the file replaces any paint
  }

  /** The painter changed the mask: the expected time may change with it (inpaint or not). */
  painted() {
    $("form").dispatchEvent(new Event("change"));
  }

  /** The uploaded mask file, handed to the painter to paint on (the slot then empties). */
  takeUploadedMask() {
    const file = this.mask.image?.file;
    if (file) this.mask.clear(false);
    return file || null;
  }

  /** A mask of another size than the input image is refused here, as the server would. */
  checkMask() {
    const init = this.init.image;
    const mask = this.mask.image;
    if (!init || !mask) return;
    if (init.width !== mask.width || init.height !== mask.height) {
      this.mask.clear(false);
      this.showError(`The mask is ${mask.width}×${mask.height}; it must be the input ` +
                     `image's size, ${init.width}×${init.height}.`);
    }
  }

  /** With an input image, the size selects offer (and pick) "from the input image". */
  setAutoSize(on) {
    for (const id of ["width", "height"]) {
      const select = $(id);
      const auto = [...select.options].find((o) => o.value === AUTO);
      if (on && !auto) {
        select.add(new Option("From image", AUTO), 0);
      }
      if (!on && auto) auto.remove();
    }
    if (on && this.sizeBefore === null) {
      this.sizeBefore = { width: $("width").value, height: $("height").value };
      $("width").value = AUTO;
      $("height").value = AUTO;
    } else if (!on && this.sizeBefore) {
      $("width").value = this.sizeBefore.width;
      $("height").value = this.sizeBefore.height;
      this.sizeBefore = null;
    }
    this.showSize();
  }

  /** One side set by hand while the other follows the image: keep the image's aspect. */
  sizeChanged(id) {
    const image = this.init.image;
    const other = id === "width" ? "height" : "width";
    if (image && $(id).value === AUTO) {
      $(other).value = AUTO;
    } else if (image && $(other).value === AUTO) {
      const ratio = id === "width" ? image.height / image.width : image.width / image.height;
      const { min_size: min, max_size: max } = this.limits;
      const value = Math.max(min, Math.min(max, Math.round((Number($(id).value) * ratio) / 8) * 8));
      setSize(other, value);
    }
    this.showSize();
  }

  showSize() {
    const image = this.init.image;
    const auto = image && $("width").value === AUTO;
    $("size-hint").textContent = auto ?
      `The output keeps the input image's aspect (${fitSize(image, this.limits).join("×")}).` : "";
  }

  showStrength() {
    const strength = Number($("strength").value);
    const steps = Number($("steps").value) || 0;
    const run = Math.min(steps, Math.floor(steps * strength + 1e-9));
    $("strength-value").textContent = strength.toFixed(2);
    $("strength-hint").textContent = `0 keeps the input image, 1 ignores it; ${run} of ` +
      `${steps} steps run${run < 1 ? " (too few: raise the strength or the steps)" : ""}.`;
  }
}

/** The server's own fit (uploads.fit_size): the image's aspect within MIN_SIZE..MAX_SIZE. */
function fitSize(image, limits) {
  const { min_size: min, max_size: max } = limits;
  let scale = Math.min(1, max / Math.max(image.width, image.height));
  if (Math.min(image.width, image.height) * scale < min) {
    scale = min / Math.min(image.width, image.height);
  }
  const side = (v) => Math.max(min, Math.min(max, Math.round((v * scale) / 8) * 8));
  return [side(image.width), side(image.height)];
}

function setSize(id, value) {
  const select = $(id);
  const text = String(value);
  if (![...select.options].some((o) => o.value === text)) select.add(new Option(`${text} px`, text));
  select.value = text;
}
