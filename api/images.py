"""The image history: every image the server kept (in memory and in OUTPUT_DIR), newest
first, a page at a time; one image's PNG; delete one. The file work is jobs.history's."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, request, url_for

from api import ApiError, may_see, owners_apart, services
from api.openapi import doc
from jobs.history import BadImageName, ImageHistory, KeptImage, describe
from jobs.store import OutputStore

bp = Blueprint("images", __name__)

# A page's size when the client names none, and the most one page may hold (each image's
# PNG header is read for its infotext).
DEFAULT_PAGE = 24
MAX_PAGE = 100

IMAGE_SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "description": "the image's name: its file in OUTPUT_DIR, or "
             "<job id>.png for one never saved"},
    "url": {"type": "string"}, "job_id": {"type": "string", "nullable": True},
    "created_at": {"type": "string"}, "seed": {"type": "integer", "nullable": True},
    "width": {"type": "integer", "nullable": True},
    "height": {"type": "integer", "nullable": True}, "prompt": {"type": "string"},
    "parameters": {"type": "string", "description": "the PNG's A1111 infotext as written"},
    "settings": {"type": "object", "description": "that infotext read by the server's one "
                 "parser (png-info's fields: Prompt, Steps, Sampler, Size-1...)"},
    "request": {"type": "object", "nullable": True, "description": "the generation request "
                "that makes it again (images as their size); null when the infotext is not "
                "one this server wrote"}}}
PAGE_SCHEMA = {"type": "object", "properties": {
    "images": {"type": "array", "items": IMAGE_SCHEMA},
    "total": {"type": "integer"}, "offset": {"type": "integer"}, "limit": {"type": "integer"},
    "next_offset": {"type": "integer", "nullable": True, "description": "the next page's "
                    "offset; null on the last page"}}}


def history() -> ImageHistory:
    """The kept images as this server sees them (its queue, its OUTPUT_DIR)."""
    svc = services()
    return ImageHistory(svc.queue, OutputStore(svc.settings))


def with_files() -> bool:
    """Files in OUTPUT_DIR record no owner: where jobs belong to who made them, they are
    shown to nobody (each user sees the images the queue holds for them)."""
    return not owners_apart(services().settings)


def count_arg(name: str, default: int, lowest: int, highest: int) -> int:
    """A whole-number query argument within lowest..highest, or 400 naming it."""
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = lowest - 1
    if not lowest <= value <= highest:
        raise ApiError(400, "invalid_field", f"'{name}' must be a whole number in "
                       f"{lowest}..{highest} (got {raw[:40]!r})", param=name)
    return value


def image_or_404(name: str) -> KeptImage:
    """The kept image called `name`: 400 for a name that cannot be one (a path), 404 when
    no such image is kept."""
    try:
        image = history().find(name, may_see, with_files())
    except BadImageName as exc:
        raise ApiError(400, "invalid_name", str(exc), param="name") from None
    if image is None:
        raise ApiError(404, "not_found", f"no image {name!r}: it was deleted, or forgotten "
                       "(JOB_RETENTION_*) and never saved to OUTPUT_DIR; GET /images lists "
                       "the kept ones")
    return image


def image_json(image: KeptImage) -> dict:
    """An image's description plus its URL."""
    return {**describe(image), "url": url_for("images.image_file", name=image.name)}


@bp.get("/images")
@doc("The kept images (finished jobs in memory, and every PNG in OUTPUT_DIR), newest first, "
     "a page at a time, each with its settings (infotext) parsed.",
     query={"offset": {"type": "integer", "minimum": 0},
            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}},
     responses={200: PAGE_SCHEMA}, errors=(400, 401), tags=("images",))
def list_images():
    """One page of the history."""
    offset = count_arg("offset", 0, 0, 10**9)
    limit = count_arg("limit", DEFAULT_PAGE, 1, MAX_PAGE)
    images = history().all(may_see, with_files())
    page = images[offset:offset + limit]
    more = offset + limit < len(images)
    return jsonify({"images": [image_json(image) for image in page], "total": len(images),
                    "offset": offset, "limit": limit,
                    "next_offset": offset + limit if more else None})


@bp.get("/images/<name>")
@doc("One kept image's PNG (?download=1: as an attachment). A name that is not a bare file "
     "name is refused with 400.", query={"download": {"type": "string"}},
     responses={200: "image/png"}, errors=(400, 401, 404), tags=("images",))
def image_file(name: str):
    """The PNG."""
    image = image_or_404(name)
    png = image.png()
    if png is None:
        raise ApiError(404, "not_found", f"image {name!r} is no longer on disk")
    response = Response(png, mimetype="image/png")
    kind = "attachment" if request.args.get("download") else "inline"
    response.headers["Content-Disposition"] = f'{kind}; filename="{image.name}"'
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


@bp.delete("/images/<name>")
@doc("Delete a kept image: its file in OUTPUT_DIR and the finished job holding it (needs the "
     "same credential as generating).",
     responses={200: {"type": "object", "properties": {"deleted": {"type": "string"}}}},
     errors=(400, 401, 403, 404, 409), tags=("images",))
def delete_image(name: str):
    """Delete it; 409 when the file system refuses (the job is then kept)."""
    image = image_or_404(name)
    if not history().delete(image):
        raise ApiError(409, "delete_failed", f"could not delete {name!r} from OUTPUT_DIR; "
                       "check the folder's permissions (the server log has the reason)")
    return jsonify({"deleted": name})
