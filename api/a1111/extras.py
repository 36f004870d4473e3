"""A1111 extras: upscaling (`extra-single-image`, `extra-batch-images`), `png-info` and
`interrogate`.

Upscaling goes to the engine through the queue backend (`queue.upscale`, jobs.backend): the
Pillow resamplers (Lanczos, Nearest, Bicubic, Bilinear) at once, an ESRGAN-family model file
(MODELS_DIR/ESRGAN, MODELS_DIR/RealESRGAN; catalog.upscalers) after the running job and before
the next one, tiled (a 4x of 1024 px: see README, Upscalers). No face restorers. Pillow's
largest allowed output (16 MP, 1024x1024 x4 with Lanczos) takes about 1 s to resample and 2 s
to encode as PNG. png-info parses the `parameters` text chunk (or a JPEG/WebP's EXIF
UserComment) as A1111's infotext parser does.
"""
from __future__ import annotations

import base64
import io
import math
from typing import Any

from flask import jsonify
from PIL import Image

from api import ApiError, json_body, services
from api.a1111.blueprint import A1111_DOC, bp
from api.a1111.generation import INVALID
from api.openapi import doc
from catalog.upscalers import NONE, find_upscaler, upscaler_names
from errors import UnsupportedRequest, ValidationError
from jobs import NotAccepting
from params import FieldSpec, field_value, uploads
from params.infotext import parse_parameters

# A batch may hold this many images, and its outputs this many times MAX_INPUT_PIXELS in
# all: enough for real batches, bounded so one request cannot hold gigabytes of pixels.
MAX_BATCH_IMAGES, MAX_BATCH_PIXEL_FACTOR = 32, 4
# Pillow's image.info keys that are not text chunks a client wrote (A1111 drops these too).
NOT_ITEMS = {"parameters", "dpi", "exif", "loop", "background", "timestamp", "duration",
             "progressive", "progression", "icc_profile", "chromaticity", "photoshop",
             "transparency", "gamma", "aspect", "interlace", "srgb", "xmp"}
EXIF_IFD, USER_COMMENT = 0x8769, 0x9286
FACE_FIELDS = ("gfpgan_visibility", "codeformer_visibility")

_UNIT = dict(type="number", minimum=0.0, maximum=1.0, default=0.0)
EXTRAS_SPECS = [
    FieldSpec("resize_mode", "integer", "0 = scale by upscaling_resize, 1 = scale to "
              "upscaling_resize_w x upscaling_resize_h", minimum=0, maximum=1, default=0),
    FieldSpec("upscaling_resize", "number", "scale factor (resize_mode 0)", minimum=0.0,
              maximum=64.0, exclusive_minimum=True, default=2.0),
    FieldSpec("upscaling_resize_w", "integer", "target width (resize_mode 1)", minimum=1,
              maximum=65536, default=512),
    FieldSpec("upscaling_resize_h", "integer", "target height (resize_mode 1)", minimum=1,
              maximum=65536, default=512),
    FieldSpec("upscaler_1", "string", "main upscaler: None, Lanczos, Nearest, Bicubic, "
              "Bilinear or a model file's name (GET upscalers)", max_length=200,
              default="None"),
    FieldSpec("upscaler_2", "string", "second upscaler, blended in (as upscaler_1)",
              max_length=200, default="None"),
    FieldSpec("extras_upscaler_2_visibility", description="weight of upscaler_2", **_UNIT),
    FieldSpec("gfpgan_visibility", description="must be 0: no face restorers here", **_UNIT),
    FieldSpec("codeformer_visibility", description="must be 0: no face restorers here",
              **_UNIT),
    FieldSpec("codeformer_weight", description="ignored", **_UNIT),
]
BOOLEANS = {"upscaling_crop": True, "show_extras_results": True, "upscale_first": False}


def _schema(image_field: dict[str, Any]) -> dict[str, Any]:
    props = {spec.name: spec.schema() for spec in EXTRAS_SPECS}
    props.update({name: {"type": "boolean", "default": default}
                  for name, default in BOOLEANS.items()})
    props["upscaling_crop"]["description"] = "resize_mode 1: crop the overflow (centred)"
    return {"type": "object", "additionalProperties": True, "properties": {
        **props, **image_field}}


SINGLE_SCHEMA = _schema({"image": {"type": "string", "description": "base64 image or data "
                                   "URL (PNG/JPEG/WebP)"}})
BATCH_SCHEMA = _schema({"imageList": {"type": "array", "maxItems": MAX_BATCH_IMAGES,
                                      "items": {"type": "object", "required": ["data"],
                                                "properties": {"data": {"type": "string"},
                                                               "name": {"type": "string"}}}}})
IMAGE_B64 = {"type": "string", "format": "byte"}
EXTRAS_ERRORS = (400, 401, 413, 415, 422)


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(INVALID, "invalid_field", message, param=field)


def parse_extras(body: Any) -> dict[str, Any]:
    """An extras body's upscaling fields, checked (422 naming the field)."""
    if not isinstance(body, dict):
        raise _invalid("body", "the body must be a JSON object with 'image' (or 'imageList')")
    try:
        values = {spec.name: field_value(spec, body) for spec in EXTRAS_SPECS}
    except ValidationError as exc:
        raise _invalid(exc.field, exc.message) from None
    settings = services().settings
    names = upscaler_names(settings)
    for field in ("upscaler_1", "upscaler_2"):
        if values[field] in names:
            continue
        entry = find_upscaler(settings, values[field])
        if entry is not None and not entry.problem:
            values[field] = entry.name  # its file name or stem: the listed name
        elif entry is not None:  # a file we have but cannot read: say which and why
            raise ApiError(400, "upscaler_unusable", f"'{field}': upscaler {entry.name!r} "
                           f"({entry.relative}) cannot be used: {entry.problem}", param=field)
        else:
            raise _invalid(field, f"upscaler {values[field]!r} is not available here; use "
                           f"one of {', '.join(names)} (GET /sdapi/v1/upscalers)")
    for name, default in BOOLEANS.items():
        value = body.get(name, default)
        if not isinstance(value, bool):
            raise _invalid(name, f"'{name}' must be true or false")
        values[name] = value
    for name in FACE_FIELDS:
        if values[name] > 0:
            raise _invalid(name, f"'{name}' must be 0: this server has no face restorers "
                           "(GET /sdapi/v1/face-restorers is empty)")
    return values


def target_size(width: int, height: int, opts: dict[str, Any]) -> tuple[tuple[int, int],
                                                                       tuple[int, int]]:
    """(resampled size, final size after the crop) for an image, as A1111 computes them:
    mode 0 scales by upscaling_resize; mode 1 scales until the image covers the target and,
    with upscaling_crop, crops the overflow around the centre."""
    if opts["resize_mode"] == 1:
        want = (opts["upscaling_resize_w"], opts["upscaling_resize_h"])
        scale = max(want[0] / width, want[1] / height)
    else:
        scale = opts["upscaling_resize"]
    scaled = (max(1, round(width * scale)), max(1, round(height * scale)))
    if opts["resize_mode"] == 1 and opts["upscaling_crop"]:
        return scaled, (min(want[0], scaled[0]), min(want[1], scaled[1]))
    return scaled, scaled


def upscale(image: Image.Image, field: str, opts: dict[str, Any]) -> Image.Image:
    """One image upscaled as `opts` say; unchanged when upscaler_1 is "None" (as A1111)."""
    if opts["upscaler_1"] == NONE:
        return image
    image = image.convert("RGBA" if "A" in image.getbands() or "transparency" in image.info
                          else "RGB")
    scaled, final = target_size(image.width, image.height, opts)
    limit = services().settings.max_input_pixels
    for size in (scaled, final):
        if size[0] * size[1] > limit:
            knob = "upscaling_resize" if opts["resize_mode"] == 0 else "upscaling_resize_w"
            raise _invalid(knob, f"'{field}' ({image.width}x{image.height}) would become "
                           f"{size[0]}x{size[1]} = {size[0] * size[1]} pixels; the limit is "
                           f"{limit} (MAX_INPUT_PIXELS): ask for a smaller size")
    out = _engine_upscale(image, "upscaler_1", opts, scaled)
    if opts["upscaler_2"] != NONE and opts["extras_upscaler_2_visibility"] > 0:
        out = Image.blend(out, _engine_upscale(image, "upscaler_2", opts, scaled),
                          opts["extras_upscaler_2_visibility"])
    if final != scaled:
        left, top = (scaled[0] - final[0]) // 2, (scaled[1] - final[1]) // 2
        out = out.crop((left, top, left + final[0], top + final[1]))
    return out


def _engine_upscale(image: Image.Image, field: str, opts: dict[str, Any],
                    size: tuple[int, int]) -> Image.Image:
    """The engine's upscale by `opts[field]` through the queue backend, its refusals as JSON
    errors naming the field."""
    try:
        out = services().queue.upscale(image, opts[field], size)
    except NotAccepting as exc:  # shutting down, or a backend without model upscalers
        headers = {"Retry-After": exc.retry_after} if exc.retry_after else {}
        raise ApiError(exc.status, exc.reason, exc.message, headers) from None
    except UnsupportedRequest as exc:  # unreadable when loaded, or too big for the memory
        raise ApiError(400, "upscale_refused", f"'{field}': {exc}", param=field) from None
    # RGBA in, RGBA out (a model upscales the colours, Lanczos the alpha)
    return out.convert(image.mode) if out.mode != image.mode else out


def png_base64(image: Image.Image, info: dict[str, Any]) -> str:
    """The image as a base64 PNG keeping the input's text chunks (A1111 keeps them too)."""
    from PIL import PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    for key, value in info.items():
        if isinstance(key, str) and isinstance(value, str):
            meta.add_text(key, value)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=meta)
    return base64.b64encode(buf.getvalue()).decode()


def _decode(field: str, data: Any) -> Image.Image:
    try:
        return uploads.decode_image(field, data, services().settings.max_input_pixels)
    except ValidationError as exc:
        raise _invalid(exc.field, exc.message) from None


def _html_info(opts: dict[str, Any], count: int) -> str:
    if opts["upscaler_1"] == NONE:
        return f"<p>{count} image(s) unchanged (upscaler_1 is None)</p>"
    how = (f"by {opts['upscaling_resize']:g}" if opts["resize_mode"] == 0 else
           f"to {opts['upscaling_resize_w']}x{opts['upscaling_resize_h']}")
    return f"<p>Postprocess upscale {how}, Postprocess upscaler: {opts['upscaler_1']}</p>"


@bp.post("/extra-single-image")
@doc("AUTOMATIC1111 extras on one image: upscale with a Pillow resampler or an ESRGAN-family "
     "model (GET upscalers), by a factor or to a size with an optional centre crop; "
     "upscaler_1 \"None\" returns the image unchanged. A model runs after the running "
     "generation, before the next (400 under QUEUE_BACKEND=redis; 400 naming a file we "
     "cannot read). No face restoration (its visibilities must be 0). The output is at "
     "most MAX_INPUT_PIXELS pixels.", request=SINGLE_SCHEMA,
     responses={200: {"type": "object", "properties": {"html_info": {"type": "string"},
                                                        "image": IMAGE_B64}}},
     errors=EXTRAS_ERRORS, **A1111_DOC)
def extra_single_image():
    """Upscale `image` and answer it as a base64 PNG."""
    body = json_body(image_fields=("image",))
    opts = parse_extras(body)
    if not body.get("image"):
        raise _invalid("image", "'image' is required: a base64 image or data URL")
    image = _decode("image", body["image"])
    out = upscale(image, "image", opts)
    return jsonify({"html_info": _html_info(opts, 1), "image": png_base64(out, image.info)})


@bp.post("/extra-batch-images")
@doc("AUTOMATIC1111 extras on several images (imageList[].data), upscaled as "
     f"extra-single-image does; at most {MAX_BATCH_IMAGES} images, and "
     f"{MAX_BATCH_PIXEL_FACTOR} x MAX_INPUT_PIXELS output pixels in all.",
     request=BATCH_SCHEMA, responses={200: {"type": "object", "properties": {
         "html_info": {"type": "string"}, "images": {"type": "array", "items": IMAGE_B64}}}},
     errors=EXTRAS_ERRORS, **A1111_DOC)
def extra_batch_images():
    """Upscale every image of `imageList` and answer them as base64 PNGs, in order."""
    body = json_body(image_fields=("imageList",))
    opts = parse_extras(body)
    items = body.get("imageList")
    if not isinstance(items, list) or not items:
        raise _invalid("imageList", "'imageList' must be a non-empty list of "
                       '{"data": <base64 image>, "name": "..."}')
    if len(items) > MAX_BATCH_IMAGES:
        raise _invalid("imageList", f"'imageList' has {len(items)} images; at most "
                       f"{MAX_BATCH_IMAGES} per request")
    budget = MAX_BATCH_PIXEL_FACTOR * services().settings.max_input_pixels
    images = []
    for i, item in enumerate(items):
        field = f"imageList[{i}].data"
        if not isinstance(item, dict) or not item.get("data"):
            raise _invalid(field, f"'{field}' is required: a base64 image or data URL")
        image = _decode(field, item["data"])
        out = upscale(image, field, opts)
        budget -= out.width * out.height
        if budget < 0:
            raise _invalid("imageList", f"the outputs would pass {MAX_BATCH_PIXEL_FACTOR} x "
                           "MAX_INPUT_PIXELS pixels in all; send fewer or smaller images")
        images.append(png_base64(out, image.info))
    return jsonify({"html_info": _html_info(opts, len(images)), "images": images})


def read_infotext(image: Image.Image) -> tuple[str, dict[str, Any]]:
    """(the `parameters` text, the other text items) of an image: a PNG text chunk, or a
    JPEG/WebP's EXIF UserComment (where A1111 writes it)."""
    items = {key: value for key, value in image.info.items()
             if isinstance(key, str) and key not in NOT_ITEMS and
             (isinstance(value, (str, bool, int)) or
              isinstance(value, float) and math.isfinite(value))}
    text = image.info.get("parameters")
    if not isinstance(text, str):
        text = _exif_comment(image)
    return text or "", items


def _exif_comment(image: Image.Image) -> str | None:
    """The EXIF UserComment as text (its 8-byte charset prefix decoded), or None."""
    try:
        raw = image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    except Exception:  # noqa: BLE001  (a broken EXIF block simply has no comment)
        return None
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, bytes) or len(raw) < 8:
        return None
    prefix, payload = raw[:8], raw[8:]
    if prefix == b"UNICODE\0":
        encoding = "utf-16-le" if payload[1:2] == b"\0" and payload[:1] != b"\0" else "utf-16-be"
        return payload.decode(encoding, errors="replace")
    return payload.decode("utf-8" if prefix != b"ASCII\0\0\0" else "ascii", errors="replace")


@bp.post("/png-info")
@doc("AUTOMATIC1111 png-info: the image's generation text (`info`, from its PNG "
     "`parameters` chunk or EXIF UserComment), its other text chunks (`items`) and the text "
     "parsed as A1111 does (`parameters`: Prompt, Negative prompt, Steps, Sampler, Size-1, "
     "Size-2, ...). An image without one answers \"\" and empty objects.",
     request={"type": "object", "required": ["image"], "properties": {
         "image": {"type": "string", "description": "base64 image or data URL"}}},
     responses={200: {"type": "object", "properties": {
         "info": {"type": "string"}, "items": {"type": "object"},
         "parameters": {"type": "object"}}}}, errors=EXTRAS_ERRORS, **A1111_DOC)
def png_info():
    """Read and parse an image's generation parameters."""
    body = json_body(image_fields=("image",))
    if not isinstance(body, dict) or not body.get("image"):
        raise _invalid("image", "'image' is required: a base64 PNG (or data URL)")
    text, items = read_infotext(_decode("image", body["image"]))
    return jsonify({"info": text, "items": items, "parameters": parse_parameters(text)})


@bp.post("/interrogate")
@doc("AUTOMATIC1111 interrogate: not available. This CPU server has no CLIP or DeepDanbooru "
     "interrogator (it would need further models in memory and seconds of CPU per image); "
     "it answers 501.", request={"type": "object", "properties": {
         "image": {"type": "string"}, "model": {"type": "string", "default": "clip"}}},
     responses={}, errors=(401, 501), **A1111_DOC)
def interrogate():
    """Always 501: there is no interrogator here."""
    raise ApiError(501, "not_implemented", "this server has no image interrogator (CLIP or "
                   "DeepDanbooru): captioning is not available on this CPU server")
