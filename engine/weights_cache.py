"""A bfloat16 copy of a model's weights, written once to disk and memory-mapped after.

Casting a loaded float32 UNet to bf16 makes a 1.7 GB anonymous copy (bench/results.md:
peak RssAnon 2.45 GiB), over the 1.2 GiB budget of an 8 GB laptop. Written to a
safetensors file once and memory-mapped on later loads, the bf16 weights are file-backed
pages the kernel can drop and re-read, like the float32 ones. The copy is keyed by the
source files (real path, size, mtime) and the torch version, so a changed model is never
served from a stale copy; a half-written copy is never used (written beside, then renamed).
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Callable

from catalog.files import remove_abandoned_partials, staged

log = logging.getLogger(__name__)

# Tensors are converted and written this many bytes at a time (one safetensors shard each),
# so the one-off conversion never holds the whole bf16 copy in anonymous memory either.
SHARD_BYTES = 256 * 2**20
INDEX = "weights.index.json"

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


def source_key(module, dtype_name: str) -> str:
    """A key naming the module's source weights exactly (changes when any file changes)."""
    import torch

    folder = Path(getattr(module.config, "_name_or_path", "") or "")
    parts = [type(module).__name__, dtype_name, torch.__version__]
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    for path in files:
        real = path.resolve()  # the Hub cache links to content-addressed blobs
        st = real.stat()
        parts.append(f"{real}:{st.st_size}:{st.st_mtime_ns}")
    if not files:  # weights from elsewhere: key on the parameters' names and shapes only
        parts += [f"{k}:{tuple(v.shape)}" for k, v in module.state_dict().items()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def load_converted(module, cache_dir: Path, dtype, progress: Progress | None = None) -> bool:
    """Replace `module`'s floating-point weights with memory-mapped `dtype` copies from
    `cache_dir`, writing them there first if needed. Returns True if it had to convert."""
    from safetensors.torch import load_file

    name = dtype_label(dtype)
    folder = _folder(cache_dir, module, name)
    converted = False
    if not (folder / INDEX).is_file():
        log.info("no %s copy of %s yet: writing it once to %s", name, type(module).__name__,
                 folder)
        _write_converted(module, folder, dtype, progress)
        converted = True
    index = json.loads((folder / INDEX).read_text())
    state = {}
    for shard in index["shards"]:
        state.update(load_file(folder / shard))  # memory-mapped: file-backed pages
    # assign=True keeps the loaded tensors themselves (their dtype and their mmap) instead
    # of copying into the module's float32 ones, which are then dropped.
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(f"cached {name} weights in {folder} do not match the model "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]}); delete "
                           "that folder and restart")
    for param in module.parameters():
        param.requires_grad_(False)
    return converted


def _folder(cache_dir: Path, module, dtype_name: str) -> Path:
    return Path(cache_dir) / f"{type(module).__name__}-{source_key(module, dtype_name)}"


def _write_converted(module, folder: Path, dtype, progress: Progress | None) -> None:
    """Write `module`'s state dict as `dtype` into `folder`, beside first, then renamed."""
    state = module.state_dict()
    total = sum(t.numel() * t.element_size() for t in state.values())
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_partials(folder.parent)
    needed = sum(t.numel() * (dtype.itemsize if t.is_floating_point() else t.element_size())
                 for t in state.values())
    free = shutil.disk_usage(folder.parent).free
    if free < needed * 1.05:
        raise CacheSpaceError(
            f"the {dtype_label(dtype)} copy of {type(module).__name__} needs "
            f"{needed / 1e9:.1f} GB in {folder.parent}, {free / 1e9:.1f} GB free: free some "
            "space, set BF16_CACHE_DIR to a disk that has it, or use DTYPE=float32")
    # Another process finishing the same copy first is fine: staged keeps theirs.
    with staged(folder, directory=True) as tmp:
        _write_shards(state, tmp, dtype, total, progress)
    log.info("wrote %s weights of %s to %s", dtype, type(module).__name__, folder)


class CacheSpaceError(RuntimeError):
    """Not enough free disk for the converted copy; the message says what to do."""


def dtype_label(dtype) -> str:
    """'bfloat16' for torch.bfloat16."""
    return str(dtype).replace("torch.", "")


def save_shard(tensors: dict, path: Path) -> None:
    """Write one safetensors shard."""
    from safetensors.torch import save_file

    save_file(tensors, path)


def _write_shards(state: dict, tmp: Path, dtype, total: int, progress: Progress | None) -> None:
    """Write `state` as `dtype` (floating-point tensors only) in shards, then the index."""
    shards: list[str] = []
    shard: dict = {}
    shard_bytes = done = 0

    def flush() -> None:
        nonlocal shard, shard_bytes
        if shard:
            name = f"shard-{len(shards):04d}.safetensors"
            save_shard(shard, tmp / name)
            shards.append(name)
        shard, shard_bytes = {}, 0

    for key, tensor in state.items():
        converted = tensor.to(dtype) if tensor.is_floating_point() else tensor
        shard[key] = converted.contiguous()
        shard_bytes += shard[key].numel() * shard[key].element_size()
        done += tensor.numel() * tensor.element_size()
        if shard_bytes >= SHARD_BYTES:
            flush()
            if progress:
                progress(done, total)
    flush()
    (tmp / INDEX).write_text(json.dumps({"shards": shards, "dtype": str(dtype)}))
    if progress:
        progress(total, total)
