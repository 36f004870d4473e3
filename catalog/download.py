"""Fetch a Hub model before `from_pretrained` reads it: only the files from_pretrained would
read (the `patterns` the engine computes with diffusers' own allow/ignore rules), the disk checked first, progress for /health and
the log, and partial files resumed after a cut connection or a restart.

huggingface_hub 2.x deletes a partial file when its download fails (its temporary names are
unique per attempt), so a restart would fetch a 3.4 GB UNet from zero. Here each missing blob
is fetched into `blobs/<etag>.partial` (a stable name) with HTTP Range requests, renamed to the
blob when complete, then `snapshot_download` links the snapshot, writes its tree cache and
refs, and fetches nothing more. A snapshot folder is used only once every planned file is in it.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from errors import DownloadInterrupted, ModelLoadError, NotEnoughDisk

log = logging.getLogger(__name__)

Progress = Callable[..., None]  # (phase, bytes done, bytes total, **extra figures)
# (model_index.json, the repo's file names, safety checker off) -> (allow, ignore) patterns
Patterns = Callable[[dict, set, bool], tuple]
PARTIAL_SUFFIX = ".partial"
LOG_EVERY_SECONDS = 10  # a log line at most this often ...
LOG_EVERY_FRACTION = 0.05  # ... and only after this much more of the total
PUBLISH_EVERY_SECONDS = 0.25  # /health figures need no more than this
CHUNK_BYTES = 1 << 20  # what a cut connection may lose, and the progress granularity
RETRIES = 5  # dropped connections in a row, each resumed with Range, before giving up
RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class PlannedFile:
    """One file of the snapshot: its path in the repo, size and cache blob name."""

    path: str
    size: int
    blob: str  # the LFS sha256, else the git blob id: what huggingface_hub names the blob


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (HF_HUB_CACHE, else
    HF_HOME/hub), the rule huggingface_hub applies when it is imported."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def hub_endpoint() -> str:
    """HF_ENDPOINT as the environment says now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE is set (now or when huggingface_hub was imported)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return constants.HF_HUB_OFFLINE or value in ("1", "true", "yes", "on")


def free_bytes(path: Path) -> int:
    """Free space of the disk holding `path` (or its nearest existing parent); the one seam
    tests use to fake a full disk."""
    for folder in [path, *path.parents]:
        if folder.exists():
            return shutil.disk_usage(folder).free
    return shutil.disk_usage("/").free


def size_text(n: int) -> str:
    """Bytes for a person: GB to one decimal, MB for small amounts."""
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _plan(repo_id: str, token: str | None, safety_checker_off: bool, cache: Path,
          endpoint: str, patterns: Patterns) -> tuple[str, list[PlannedFile], list[str], list[str]]:
    """Ask the Hub for the commit and its file list (with sizes), read model_index.json, and
    keep the files from_pretrained would read."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    api = HfApi(endpoint=endpoint, token=token or None)
    commit = api.repo_info(repo_id, revision="main").sha
    tree = [f for f in api.list_repo_tree(repo_id, recursive=True, revision=commit)
            if isinstance(f, RepoFile)]
    index_file = hf_hub_download(repo_id, "model_index.json", revision=commit, cache_dir=cache,
                                 endpoint=endpoint, token=token or None)
    model_index = json.loads(Path(index_file).read_text())
    allow, ignore = patterns(model_index, {f.path for f in tree}, safety_checker_off)
    kept = filter_repo_objects(tree, allow_patterns=allow, ignore_patterns=ignore,
                               key=lambda f: f.path)
    files = [PlannedFile(f.path, f.size, f.lfs.sha256 if f.lfs else f.blob_id) for f in kept]
    return commit, files, allow, ignore


class DownloadMeter:
    """Counts a download's bytes and files; publishes them to /health and the log."""

    def __init__(self, repo_id: str, files: list[PlannedFile], blobs: Path,
                 progress: Progress | None):
        self.repo_id, self.progress = repo_id, progress
        self.bytes_total = sum(f.size for f in files)
        self.files_total = len(files)
        self.files_done = sum((blobs / f.blob).is_file() for f in files)
        self.finished_bytes = sum(f.size for f in files if (blobs / f.blob).is_file())
        self.current = 0  # bytes of the file being fetched, partial part included
        self.started, self.start_bytes = time.monotonic(), self.done
        self.logged_at, self.logged_bytes = self.started, self.done
        self.published_at = 0.0

    @property
    def done(self) -> int:
        """Bytes of the snapshot on disk now (finished files plus the current partial)."""
        return self.finished_bytes + self.current

    def eta_seconds(self) -> float | None:
        """Seconds left at this session's speed (bytes kept from an earlier run excluded)."""
        fetched, elapsed = self.done - self.start_bytes, time.monotonic() - self.started
        if fetched <= 0 or elapsed <= 0:
            return None
        return round((self.bytes_total - self.done) * elapsed / fetched, 1)

    def update(self, current: int, force: bool = False) -> None:
        """Record the current file's size on disk; publish and log when it is time."""
        self.current = current
        now = time.monotonic()
        if force or now - self.published_at >= PUBLISH_EVERY_SECONDS:
            self.published_at = now
            self._publish()
        if (now - self.logged_at >= LOG_EVERY_SECONDS and self.bytes_total and
                (self.done - self.logged_bytes) / self.bytes_total >= LOG_EVERY_FRACTION):
            self.logged_at, self.logged_bytes = now, self.done
            eta = self.eta_seconds()
            log.info("downloading %s: %s of %s (%d %%), %d of %d files%s", self.repo_id,
                     size_text(self.done), size_text(self.bytes_total),
                     100 * self.done // self.bytes_total, self.files_done, self.files_total,
                     f", about {eta / 60:.0f} min left" if eta else "")

    def file_finished(self, size: int) -> None:
        """One more file is complete in the cache."""
        self.finished_bytes += size
        self.files_done += 1
        self.update(0, force=True)

    def _publish(self) -> None:
        if self.progress is None:
            return
        self.progress("downloading", self.done, self.bytes_total,
                      files_done=self.files_done, files_total=self.files_total,
                      eta_seconds=self.eta_seconds())


def _stream_into(handle, url: str, headers: dict, size: int, meter: DownloadMeter) -> None:
    """Append the rest of `url` to `handle` (a file opened for appending), resuming with a
    Range request after a dropped connection, up to RETRIES failures in a row."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session, hf_raise_for_status

    failures = 0
    while handle.tell() < size:
        start = handle.tell()
        asked = dict(headers, Range=f"bytes={start}-") if start else headers
        try:
            with get_session().stream("GET", url, headers=asked,
                                      timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as response:
                hf_raise_for_status(response)
                if start and response.status_code == 200:  # Range ignored: start over
                    handle.seek(0)
                    handle.truncate()
                for chunk in response.iter_bytes(CHUNK_BYTES):
                    handle.write(chunk)
                    meter.update(handle.tell())
                    failures = 0
        except httpx2.TransportError as exc:
            failures += 1
            if failures > RETRIES:
                raise
            log.warning("download of %s interrupted at %s (%s); resuming", url,
                        size_text(handle.tell()), exc)
            time.sleep(RETRY_SECONDS)
    if handle.tell() != size:
        raise OSError(f"{url} gave {handle.tell()} bytes, the Hub's file list says {size}")


def _silent_tqdm():
    """A tqdm class that never draws: the server logs lines, not terminal progress bars."""
    from huggingface_hub.utils import tqdm

    class Silent(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Silent


def _fetch(repo_id: str, commit: str, item: PlannedFile, blobs: Path, endpoint: str,
           token: str | None, meter: DownloadMeter) -> None:
    """Fetch one file into blobs/<blob>.partial from where an earlier attempt stopped, then
    rename it to its blob."""
    from filelock import FileLock
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    partial = blobs / (item.blob + PARTIAL_SUFFIX)
    url = hf_hub_url(repo_id, item.path, revision=commit, endpoint=endpoint)
    headers = build_hf_headers(token=token or None)
    headers["Accept-Encoding"] = "identity"  # sizes must be the file's bytes
    with FileLock(str(partial) + ".lock"):  # two servers on one cache never write one file
        if (blobs / item.blob).is_file():
            return
        with open(partial, "ab") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() > item.size:  # not this file after all: start over
                handle.truncate(0)
            meter.update(handle.tell(), force=True)
            _stream_into(handle, url, headers, item.size, meter)
        os.replace(partial, blobs / item.blob)
        Path(str(partial) + ".lock").unlink(missing_ok=True)
    meter.file_finished(item.size)


def _snapshot_from_cache(repo_id: str, cache: Path, safety_checker_off: bool,
                         patterns: Patterns, cause: Exception | None) -> str:
    """The cached snapshot when the Hub cannot be asked (offline, unreachable, or refusing):
    checked against the cached file list, else the Hub's error (or huggingface_hub's) raised."""
    from huggingface_hub import get_cached_repo_tree, snapshot_download, try_to_load_from_cache

    try:
        tree = {f.path for f in get_cached_repo_tree(repo_id, cache_dir=cache)}
        index_file = try_to_load_from_cache(repo_id, "model_index.json", cache_dir=cache)
        model_index = json.loads(Path(index_file).read_text()) if isinstance(index_file, str) \
            else {}
        allow, ignore = patterns(model_index, tree, safety_checker_off)
    except Exception:  # no cached file list: huggingface_hub decides from the folder alone
        allow = ignore = None
    try:
        return snapshot_download(repo_id, cache_dir=cache, local_files_only=True,
                                 allow_patterns=allow, ignore_patterns=ignore)
    except Exception as exc:
        if cause is not None and type(cause).__name__ in (
                "GatedRepoError", "RepositoryNotFoundError", "HfHubHTTPError"):
            raise cause from exc  # the Hub's answer says more than "not cached"
        raise


def _missing(folder: str, files: list[PlannedFile]) -> list[str]:
    """Planned files absent from a snapshot folder."""
    return [f.path for f in files if not (Path(folder) / f.path).is_file()]


def _fetch_missing_blobs(repo_id: str, commit: str, files: list[PlannedFile], blobs: Path,
                        cache: Path, endpoint: str, token: str | None,
                        progress: Progress | None) -> None:
    """Fetch every planned blob not yet in `blobs` (resuming partial ones), after checking
    the disk; a cut connection becomes DownloadInterrupted, keeping what was fetched."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    todo = [f for f in files if not (blobs / f.blob).is_file()]
    kept = sum((blobs / (f.blob + PARTIAL_SUFFIX)).stat().st_size for f in todo
               if (blobs / (f.blob + PARTIAL_SUFFIX)).is_file())
    needed = sum(f.size for f in todo) - kept
    free = free_bytes(cache)
    if needed > free:
        raise NotEnoughDisk(
            f"not enough disk space to download model {repo_id!r}: needs {size_text(needed)} "
            f"in {cache}, {size_text(free)} free: free space or set HF_HOME to a folder on a "
            "larger disk")
    if not todo:
        return
    meter = DownloadMeter(repo_id, files, blobs, progress)
    log.info("downloading %s: %d of %d files, %s to fetch (%s already here) into %s",
             repo_id, len(todo), len(files), size_text(needed), size_text(meter.done + kept),
             cache)
    meter.update(0, force=True)
    for item in todo:
        try:
            _fetch(repo_id, commit, item, blobs, endpoint, token, meter)
        except (httpx2.HTTPError, OSError) as exc:
            if isinstance(exc, HfHubHTTPError) and exc.response is not None and \
                    exc.response.status_code in (401, 403, 404):
                raise  # gated, bad token or gone: explain_load_error says which
            raise DownloadInterrupted(
                f"the download of model {repo_id!r} stopped at {size_text(meter.done)} of "
                f"{size_text(meter.bytes_total)} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); the part already "
                "fetched is kept: restart the server to resume") from exc
    log.info("downloaded %s: %s in %.0f s", repo_id, size_text(meter.bytes_total),
             time.monotonic() - meter.started)


def download_snapshot(repo_id: str, token: str | None, safety_checker_off: bool,
                      patterns: Patterns, progress: Progress | None = None) -> str:
    """The local snapshot folder of `repo_id` with every file from_pretrained reads: fetched
    now if missing (disk checked first, progress published, partial files resumed), else
    taken from the cache when offline (HF_HUB_OFFLINE=1) or when the Hub cannot be reached."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    from huggingface_hub.file_download import repo_folder_name

    cache, endpoint = hub_cache_dir(), hub_endpoint()
    if hub_offline():
        return _snapshot_from_cache(repo_id, cache, safety_checker_off, patterns, None)
    import httpx2

    try:
        commit, files, allow, ignore = _plan(repo_id, token, safety_checker_off, cache, endpoint,
                                          patterns)
    except (httpx2.HTTPError, OfflineModeIsEnabled, HfHubHTTPError, OSError) as exc:
        if type(exc).__name__ in ("RevisionNotFoundError",):
            raise
        log.warning("the Hub could not be asked about %s (%s); trying the local cache",
                    repo_id, exc)
        return _snapshot_from_cache(repo_id, cache, safety_checker_off, patterns, exc)
    storage = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    blobs = storage / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    _fetch_missing_blobs(repo_id, commit, files, blobs, cache, endpoint, token, progress)
    # Every blob is here: snapshot_download only links them and records the file list.
    folder = snapshot_download(repo_id, revision=commit, cache_dir=cache, endpoint=endpoint,
                               token=token or None, allow_patterns=allow,
                               ignore_patterns=ignore, tqdm_class=_silent_tqdm())
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / "main").write_text(commit)  # lets an offline start find the snapshot
    missing = _missing(folder, files)
    if missing:
        raise ModelLoadError(f"the snapshot of {repo_id!r} in {folder} is incomplete (missing "
                             f"{', '.join(missing[:3])}): restart the server with network to "
                             "finish the download")
    return folder
