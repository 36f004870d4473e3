"""ImageHistory: every image the server kept, newest first, one page at a time: the
finished jobs the queue still holds (memory or Redis) and the PNGs in OUTPUT_DIR (also
those older than the queue's retention), each once, by one name a client can send back.

A name is the saved file's name (`<job id>-<seed>-<slug>.png`), or `<job id>.png` for an
image that was never saved; `check_name` refuses anything else before a path is built.
"""
from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from jobs.backend import QueueBackend
from jobs.job import Job, JobState
from jobs.store import OutputStore

log = logging.getLogger(__name__)

# A bare file name: no folder, no dot-dot, no glob characters; what save() writes fits.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,199}\.png$")


class BadImageName(ValueError):
    """A name that cannot be an image this server kept (e.g. a path)."""


def check_name(name: str) -> str:
    """`name` if it can name a kept image, else BadImageName saying what a name looks like."""
    if not NAME.match(name):
        raise BadImageName(f"{name[:80]!r} is not an image name: names are file names such "
                           "as '0123abcd-42-a-cat.png' (letters, digits, '-' and '_', ending "
                           "in .png; no folders), as GET /images lists them")
    return name


@dataclass
class KeptImage:
    """One kept image: its name and time, the job that made it (while the queue holds it)
    and its file in OUTPUT_DIR (when saved)."""

    name: str
    created: float
    job: Job | None = None
    path: Path | None = None

    def png(self) -> bytes | None:
        """The PNG's bytes (memory first), or None when the file has gone."""
        if self.job is not None and self.job.png is not None:
            return self.job.png
        try:
            return self.path.read_bytes() if self.path else None
        except OSError:
            return None


def _kept(job: Job) -> KeptImage | None:
    """A finished job's image as a kept one; None for a job that holds no image."""
    if job.kind != "generate" or job.state is not JobState.SUCCEEDED or job.png is None:
        return None
    return KeptImage(image_name(job), job.finished_at or job.created_at, job,
                     Path(job.saved_path) if job.saved_path else None)


def image_name(job: Job) -> str:
    """The name a kept job's image goes by: its saved file's, else `<job id>.png`."""
    return Path(job.saved_path).name if job.saved_path else f"{job.id}.png"


class ImageHistory:
    """The kept images as pages, one image found by name, and deleted (file and job)."""

    def __init__(self, queue: QueueBackend, store: OutputStore):
        self.queue = queue
        self.store = store

    def all(self, visible: Callable[[Job], bool], with_files: bool) -> list[KeptImage]:
        """Every kept image `visible` lets this client see, newest first; files in
        OUTPUT_DIR that no job holds only `with_files` (they record no owner)."""
        images: dict[str, KeptImage] = {}
        for job in self.queue.recent():
            kept = _kept(job)
            if kept is not None and visible(job):
                images[kept.name] = kept
        if with_files:
            for mtime, path in self.store.saved_files():
                if NAME.match(path.name) and path.name not in images:
                    images[path.name] = KeptImage(path.name, mtime, path=path)
        return sorted(images.values(), key=lambda image: image.created, reverse=True)

    def find(self, name: str, visible: Callable[[Job], bool],
             with_files: bool) -> KeptImage | None:
        """The kept image called `name` (BadImageName for a name that cannot be one)."""
        check_name(name)
        # Both kinds of name start with the job's id (`<id>.png`, `<id>-<seed>-<slug>.png`):
        # one lookup, not a walk over every kept job (under Redis each one a round trip).
        job = self.queue.get(name.split("-", 1)[0].removesuffix(".png"))
        kept = _kept(job) if job is not None else None
        if kept is not None and kept.name == name:
            return kept if visible(job) else None  # another user's: as if it did not exist
        path = self.store.find(name) if with_files else None
        if path is None:
            return None
        try:
            return KeptImage(name, path.stat().st_mtime, path=path)
        except OSError:
            return None

    def delete(self, image: KeptImage) -> bool:
        """Delete the image: its file in OUTPUT_DIR and the job holding it; False when the
        file could not be removed (the job is then kept too, so nothing half-goes)."""
        path = self.store.find(image.name) if image.path is not None else None
        if path is not None and not self.store.delete(path):
            return False
        if image.job is not None:
            self.queue.forget(image.job.id)
        log.info("image %s deleted", image.name)
        return True


def describe(image: KeptImage) -> dict[str, Any]:
    """What a client shows of a kept image: name, time, seed, size, its infotext as written
    (`parameters`) and as the one parser reads it (`settings`), and the request to run it
    again (`request`, null when the infotext is not one this server wrote)."""
    from PIL import Image

    from params.infotext import parse_parameters, request_from_infotext

    text, size = "", (None, None)
    png = image.png()
    if png is not None:
        try:
            with Image.open(io.BytesIO(png)) as opened:
                text, size = str(opened.info.get("parameters", "")), opened.size
        except Exception:  # a damaged file still lists (and can be deleted)
            log.warning("cannot read image %s", image.name)
    request, seed = None, None
    if image.job is not None:
        request, seed = image.job.request.to_dict(), image.job.seed
    elif text:
        try:
            parsed, seed = request_from_infotext(text)
            request = parsed.to_dict()
        except ValueError:
            pass
    settings = parse_parameters(text)
    return {"name": image.name, "job_id": image.job.id if image.job else None,
            "created_at": datetime.fromtimestamp(image.created, timezone.utc).isoformat(),
            "seed": seed, "width": size[0], "height": size[1],
            "prompt": request["prompt"] if request else settings.get("Prompt", ""),
            "parameters": text, "settings": settings, "request": request}
