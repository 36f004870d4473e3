"""Staged writes: a file or folder is written beside its target as
`<name>.partial-<host>-<pid>` and renamed over it only when complete, so a reader (a load, a
second server on the same disk) never sees half of one; and the partials of writers that
were killed are cleaned up later.

The host and pid in the name tell whose partial it is: two processes writing the same target
each have their own — also two containers sharing a volume, whose processes often have the
same pid — and a partial of this host whose writer is gone is known abandoned (another
host's is left alone: its pids mean nothing here). Torch-free: the engine stages its
converted weights, exports and checkpoints here, the catalogue its JSON caches.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from system import process_alive

log = logging.getLogger(__name__)

PARTIAL = ".partial-"  # also how the model listing tells a half-written entry (catalog.models)


def writer_tag(pid: int | None = None) -> str:
    """`<host>-<pid>` of a writer on this host (this process by default)."""
    return f"{socket.gethostname()}-{os.getpid() if pid is None else pid}"


def partial_path(target: Path) -> Path:
    """Where this process stages `target`: `<name>.partial-<host>-<pid>` beside it."""
    target = Path(target)
    return target.with_name(f"{target.name}{PARTIAL}{writer_tag()}")


def _abandoned(tag: str) -> bool:
    """Whether a partial's writer (`<host>-<pid>`, or a bare pid: this host's) is a process
    of this host that is gone."""
    host, _, pid = tag.rpartition("-")
    if not pid.isdigit() or host not in ("", socket.gethostname()):
        return False
    return not process_alive(int(pid))


def remove_path(path: Path) -> None:
    """Delete a file or a folder tree if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def staged(target: Path, directory: bool = False) -> Iterator[Path]:
    """Yield the partial path to write `target` into (made an empty folder first when
    `directory`), then rename it over `target`. Any exception, a full disk or a stopped
    server, removes the partial and goes on; if another process renamed its own copy into
    place first (a folder cannot be replaced once full), that copy is kept and ours dropped."""
    target = Path(target)
    tmp = partial_path(target)
    remove_path(tmp)  # left by an earlier attempt of this process, which may have been cut off
    if directory:
        tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        remove_path(tmp)
        raise
    try:
        tmp.replace(target)
    except OSError:
        remove_path(tmp)
        if not target.exists():
            raise


def remove_abandoned_partials(folder: Path, pattern: str = "*") -> list[Path]:
    """Delete the partials in `folder` whose target name matches the glob `pattern` and whose
    writer process on this host is gone (killed mid-write); living writers' and other hosts'
    are left alone. Returns what was removed."""
    removed = []
    for partial in Path(folder).glob(f"{pattern}{PARTIAL}*"):
        if _abandoned(partial.name.rsplit(PARTIAL, 1)[-1]):
            log.info("removing an abandoned partial write: %s", partial)
            remove_path(partial)
            removed.append(partial)
    return removed
