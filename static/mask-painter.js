// Painting the inpainting mask on the input image: a canvas over the image where a brush
// marks what to repaint and an eraser takes it back, with a size control, undo, invert and
// clear. Pointer Events, so a mouse, a pen and a finger all paint. The painted mask goes to
// the server as `mask_image` (white = repaint, black = keep), the same field an uploaded mask
// file fills; uploading stays the keyboard's way (the canvas cannot be painted by keys).

const $ = (id) => document.getElementById(id);
const UNDO_DEPTH = 30;          // strokes that can be taken back; each holds one ImageData
const PAINT = "rgb(230, 30, 60)";  // shown at the canvas's CSS opacity over the image

/** The mask painter inside the input-image fieldset; `onChange` after every edit;
 * `takeUpload()` hands over an uploaded mask file (or null) to start from when it opens. */
export class MaskPainter {
  constructor(onChange, takeUpload) {
    this.onChange = onChange;
    this.takeUpload = takeUpload;
    this.canvas = $("mask-canvas");
    this.ctx = this.canvas.getContext("2d", { willReadFrequently: true });
    this.undoStack = [];
    this.stroke = null;        // {id, x, y} of the pointer painting now
    this.image = null;         // the input image painted on ({url, width, height})
    this.painted = false;      // anything painted (an all-erased canvas counts as nothing)
    $("mask-paint-toggle").addEventListener("click", () => this.toggle());
    $("mask-paint-done").addEventListener("click", () => this.toggle(false));
    $("mask-undo").addEventListener("click", () => this.undo());
    $("mask-invert-paint").addEventListener("click", () => this.edit(() => this.invert()));
    $("mask-clear").addEventListener("click", () => this.edit(() => this.clearPixels()));
    $("mask-brush-size").addEventListener("input", () => this.showSize());
    const canvas = this.canvas;
    canvas.addEventListener("pointerdown", (event) => this.down(event));
    canvas.addEventListener("pointermove", (event) => this.move(event));
    for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
      canvas.addEventListener(type, (event) => this.up(event));
    }
    this.showSize();
    this.showState();
  }

  /** A new input image (or none): the canvas takes its size and starts empty. */
  reset(image) {
    this.image = image;
    this.undoStack = [];
    this.painted = false;
    $("mask-paint-toggle").hidden = !image;
    if (!image) {
      this.toggle(false);
    } else {
      this.canvas.width = image.width;
      this.canvas.height = image.height;
      $("mask-paint-image").src = image.url;
      $("mask-paint-image").alt = "";
    }
    this.showState();
  }

  /** Open or close the painting area (the painted mask stays either way). */
  toggle(open = $("mask-painter").hidden) {
    $("mask-painter").hidden = !open || !this.image;
    $("mask-paint-toggle").setAttribute("aria-expanded", String(!$("mask-painter").hidden));
    $("mask-paint-toggle").textContent = $("mask-painter").hidden ?
      "Paint the mask on the image" : "Hide the mask painter";
    if ($("mask-painter").hidden) return;
    const upload = this.takeUpload();
    if (upload) this.load(upload);
    $("mask-tool-brush").focus();
  }

  /** Whether the user painted something to send. */
  hasMask() {
    return this.image !== null && this.painted;
  }

  /** Start from an uploaded mask (white = repaint), so painting edits it. */
  async load(file) {
    const bitmap = await createImageBitmap(file);
    this.edit(() => {
      const { width, height } = this.canvas;
      this.ctx.clearRect(0, 0, width, height);
      this.ctx.drawImage(bitmap, 0, 0, width, height);
      const pixels = this.ctx.getImageData(0, 0, width, height);
      const d = pixels.data;
      for (let i = 0; i < d.length; i += 4) {
        const light = (d[i] * 299 + d[i + 1] * 587 + d[i + 2] * 114) / 1000;
        d[i] = 230; d[i + 1] = 30; d[i + 2] = 60;
        d[i + 3] = Math.round((light * d[i + 3]) / 255);
      }
      this.ctx.putImageData(pixels, 0, 0);
    });
    bitmap.close();
  }

  /** The mask as a PNG data: URL of the input image's size: white where painted. */
  dataUrl() {
    const { width, height } = this.canvas;
    const out = document.createElement("canvas");
    out.width = width;
    out.height = height;
    const ctx = out.getContext("2d");
    ctx.drawImage(this.canvas, 0, 0);
    ctx.globalCompositeOperation = "source-in";  // keep the strokes' coverage, make it white
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, width, height);
    ctx.globalCompositeOperation = "destination-over";  // black under everything else
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, width, height);
    return out.toDataURL("image/png");
  }

  // -------------------------------------------------------------- painting

  /** The pointer's place in the canvas's own pixels (its CSS size may differ). */
  point(event) {
    const rect = this.canvas.getBoundingClientRect();
    return { x: (event.clientX - rect.left) * (this.canvas.width / rect.width),
             y: (event.clientY - rect.top) * (this.canvas.height / rect.height) };
  }

  down(event) {
    if (this.stroke || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    try {
      this.canvas.setPointerCapture(event.pointerId);  // a stroke leaving the canvas goes on
    } catch (_) { /* a pointer the browser no longer tracks: paint without capture */ }
    this.remember();
    const { x, y } = this.point(event);
    this.stroke = { id: event.pointerId, x, y };
    this.line(x, y, x, y);
  }

  move(event) {
    if (!this.stroke || event.pointerId !== this.stroke.id) return;
    const { x, y } = this.point(event);
    this.line(this.stroke.x, this.stroke.y, x, y);
    this.stroke.x = x;
    this.stroke.y = y;
  }

  up(event) {
    if (!this.stroke || event.pointerId !== this.stroke.id) return;
    this.stroke = null;
    this.changed();
  }

  /** One segment of a stroke: paint, or (eraser) take paint away. */
  line(x0, y0, x1, y1) {
    const ctx = this.ctx;
    ctx.save();
    ctx.globalCompositeOperation = $("mask-tool-eraser").checked ? "destination-out" : "source-over";
    ctx.strokeStyle = PAINT;
    ctx.lineWidth = Number($("mask-brush-size").value);
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    if (x0 === x1 && y0 === y1) {  // a tap: a zero-length line draws nothing in Chromium
      ctx.fillStyle = PAINT;
      ctx.arc(x0, y0, ctx.lineWidth / 2, 0, 2 * Math.PI);
      ctx.fill();
    } else {
      ctx.moveTo(x0, y0);
      ctx.lineTo(x1, y1);
      ctx.stroke();
    }
    ctx.restore();
  }

  invert() {
    const { width, height } = this.canvas;
    const pixels = this.ctx.getImageData(0, 0, width, height);
    const d = pixels.data;
    for (let i = 0; i < d.length; i += 4) {
      d[i] = 230; d[i + 1] = 30; d[i + 2] = 60;
      d[i + 3] = 255 - d[i + 3];
    }
    this.ctx.putImageData(pixels, 0, 0);
  }

  clearPixels() {
    this.ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
  }

  // -------------------------------------------------------------- undo and state

  /** Keep the canvas as it is now, for Undo. */
  remember() {
    const { width, height } = this.canvas;
    this.undoStack.push(this.ctx.getImageData(0, 0, width, height));
    if (this.undoStack.length > UNDO_DEPTH) this.undoStack.shift();
  }

  /** A whole-canvas change (invert, clear, load) that Undo takes back. */
  edit(change) {
    if (!this.image) return;
    this.remember();
    change();
    this.changed();
  }

  undo() {
    const last = this.undoStack.pop();
    if (!last) return;
    this.ctx.putImageData(last, 0, 0);
    this.changed();
  }

  /** How much of the image is marked, 0..1. */
  coverage() {
    const { width, height } = this.canvas;
    if (!width || !height) return 0;
    const d = this.ctx.getImageData(0, 0, width, height).data;
    let marked = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] >= 128) marked += 1;
    return marked / (width * height);
  }

  changed() {
    const { width, height } = this.canvas;
    const d = this.ctx.getImageData(0, 0, width, height).data;
    this.painted = d.some((value, i) => i % 4 === 3 && value > 0);
    this.showState();
    this.onChange();
  }

  showSize() {
    $("mask-brush-size-value").textContent = `${$("mask-brush-size").value} px`;
  }

  showState() {
    $("mask-undo").disabled = this.undoStack.length === 0;
    const percent = Math.round(this.coverage() * 100);
    $("mask-paint-status").textContent = this.hasMask() ?
      `Painted mask: about ${percent} % of the image will be repainted.` : "Nothing painted yet.";
  }
}
