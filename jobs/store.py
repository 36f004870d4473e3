"""OutputStore: finished images on disk in OUTPUT_DIR, so nothing is lost when the process
ends and a restart brings the history back.

Layout: OUTPUT_DIR/<YYYY-MM-DD>/<job id>-<seed>-<prompt slug>.png, each PNG carrying the
A1111 "parameters" text the engine wrote, from which `restore` rebuilds the job.
"""
from __future__ import annotations

import glob
import logging
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

from config import Settings
from jobs.job import Job, JobState

log = logging.getLogger(__name__)

SLUG_CHARS = 40  # enough of the prompt to recognise a file by eye


class OutputStore:
    """Saves finished PNGs to OUTPUT_DIR and restores them as finished jobs; off when
    OUTPUT_DIR is empty. Neither method raises: a disk problem never stops the worker."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.clock = clock

    @property
    def folder(self) -> Path | None:
        """The resolved OUTPUT_DIR, or None when saving is off."""
        if not self.settings.output_dir:
            return None
        return Path(self.settings.path(self.settings.output_dir))

    def save(self, job: Job, png: bytes) -> str | None:
        """Write the job's PNG; its path, or None when off or the write failed (logged)."""
        folder = self.folder
        if folder is None:
            return None
        try:
            day_folder = folder / datetime.now().strftime("%Y-%m-%d")
            day_folder.mkdir(parents=True, exist_ok=True)
            slug = re.sub(r"[^a-z0-9]+", "-", job.request.prompt.lower()).strip("-")
            path = day_folder / f"{job.id}-{job.seed}-{slug[:SLUG_CHARS] or 'image'}.png"
            path.write_bytes(png)
            return str(path)
        except OSError as exc:  # a full disk must not fail a finished generation
            log.warning("could not save job %s to %s: %s", job.id, folder, exc)
        except Exception:  # nor may anything unforeseen; the image is still served
            log.exception("could not save job %s to %s", job.id, folder)
        return None

    def restore(self) -> list[Job]:
        """The images saved by earlier runs, within JOB_RETENTION_SECONDS and _COUNT, as
        finished jobs, oldest first. Files that are not ours or are damaged stay on disk
        and are skipped, one at a time."""
        folder = self.folder
        if folder is None:
            return []
        oldest = self.clock() - self.settings.job_retention_seconds
        files = [(mtime, path) for mtime, path in self.saved_files() if mtime >= oldest]
        files = sorted(files)[-self.settings.job_retention_count:]
        restored = [job for job in (self._load(path, mtime) for mtime, path in files) if job]
        if restored:
            log.info("restored %d saved images from %s", len(restored), folder)
        return restored

    def saved_files(self) -> list[tuple[float, Path]]:
        """Every PNG in OUTPUT_DIR's day folders as (mtime, path), oldest first; [] when off
        or unreadable (logged)."""
        folder = self.folder
        if folder is None:
            return []
        try:
            paths = list(folder.glob("*/*.png"))
        except OSError as exc:
            log.warning("cannot list saved images in %s: %s", folder, exc)
            return []
        files = []
        for path in paths:
            try:
                files.append((path.stat().st_mtime, path))
            except OSError:
                continue  # vanished or a dangling link: nothing there
        return sorted(files)

    def find(self, name: str) -> Path | None:
        """The saved file called `name` (a bare file name, checked by the caller) in any
        day folder, or None; never a path outside OUTPUT_DIR (a link out is not followed)."""
        folder = self.folder
        if folder is None or "/" in name or "\\" in name or name in ("", ".", ".."):
            return None
        try:
            root = folder.resolve()
            for path in folder.glob(f"*/{glob.escape(name)}"):
                if path.is_file() and path.resolve().is_relative_to(root):
                    return path
        except OSError:
            return None
        return None

    def delete(self, path: Path) -> bool:
        """Remove a saved file (from `find`); False when it could not be (logged)."""
        try:
            path.unlink()
            return True
        except FileNotFoundError:
            return True  # already gone: what the caller wanted
        except OSError as exc:
            log.warning("could not delete %s: %s", path, exc)
            return False

    def _load(self, path: Path, mtime: float) -> Job | None:
        """One saved PNG as a succeeded job, or None to skip it."""
        from PIL import Image

        from params.infotext import request_from_infotext

        try:
            png = path.read_bytes()
            with Image.open(path) as image:
                request, seed = request_from_infotext(image.info["parameters"])
        except (OSError, KeyError, ValueError):
            return None  # not one of ours, or damaged: leave it on disk
        except Exception:  # e.g. PIL's DecompressionBombError: skip this file, keep going
            log.exception("skipping saved image %s", path)
            return None
        job = Job(request=request, seed=seed, id=path.name.split("-", 1)[0],
                  state=JobState.SUCCEEDED, created_at=mtime, finished_at=mtime, png=png,
                  saved_path=str(path), delivered=True)
        job.step = job.total_steps
        job.done.set()
        return job
