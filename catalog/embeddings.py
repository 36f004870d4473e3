"""Textual-inversion embeddings on disk: the files in EMBEDDINGS_DIR, found by the word a
prompt uses (the file name, as in A1111).

Listing is torch-free, so request threads may call it: a `.safetensors` file's shape comes
from its header; a `.pt`/`.bin` (torch's zip format) is read by a restricted unpickler that
knows only the few names a tensor's pickle uses and returns placeholders for them, so no
code in the file ever runs and no tensor is read. Loading the vectors into the text encoder
is the engine's work (engine/embeddings.py, with torch.load(weights_only=True)).

Two layouts exist: A1111's (`string_to_param: {"*": tensor}` with `name`, `step`,
`sd_checkpoint`...; `emb_params` in its .safetensors) and diffusers' (`{token: tensor}`).
"""
from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

from catalog.families import TEXT_ENCODER_OF_WIDTH, ModelFamily
from catalog.loras import read_header
from config import Settings
from errors import LoraError

log = logging.getLogger(__name__)

EXTENSIONS = (".safetensors", ".pt", ".bin")
# The biggest pickle we read to list a .pt/.bin embedding (real ones are a few KB).
MAX_PICKLE_BYTES = 1024 * 1024
A1111_KEY, A1111_SAFETENSORS_KEY = "string_to_param", "emb_params"
SDXL_KEYS = ("clip_l", "clip_g")


@dataclass(frozen=True)
class EmbeddingEntry:
    """One embedding file: the word prompts use, its file, layout ("a1111" or "diffusers"),
    its vectors and their width (None when unreadable: then `problem` says why), and what
    A1111 reports of its training (step, checkpoint)."""

    name: str
    path: Path
    layout: str = ""
    vectors: int | None = None
    width: int | None = None
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    size: int = 0
    mtime_ns: int = 0
    problem: str = ""

    @property
    def shape(self) -> int | None:
        """A1111's `shape`: the width of one vector."""
        return self.width

    @property
    def pattern(self) -> re.Pattern:
        """The name as a whole word of a prompt (CLIP's tokenizer lowercases, so any case)."""
        return re.compile(r"(?<![\w-])" + re.escape(self.name) + r"(?![\w-])", re.IGNORECASE)


class _Placeholder:
    """What the restricted unpickler builds in place of a class it allows (storages,
    Parameter): it records nothing and runs nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


@dataclass
class _TensorShape:
    """A tensor as the listing sees it: its shape."""

    shape: tuple[int, ...]


def _rebuild_tensor(_storage, _offset, size, *_rest) -> _TensorShape:
    return _TensorShape(tuple(int(n) for n in size))


def _rebuild_parameter(data, *_rest):
    return data


def _rebuild_from_type(func, _new_type, args, _state):
    return func(*args)


_ALLOWED = {("collections", "OrderedDict"): OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
            ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
            ("torch.nn.parameter", "Parameter"): _Placeholder,
            ("torch", "Size"): tuple}


class _ShapeUnpickler(pickle.Unpickler):
    """Reads a torch zip file's data.pkl into dicts of `_TensorShape`: only the names in
    `_ALLOWED` and torch's storage types resolve, all to harmless stand-ins."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name.endswith("Storage") or (module, name) == ("torch",
                                                                                 "float32"):
            return _Placeholder
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in an embedding")

    def persistent_load(self, pid):
        return _Placeholder()


def read_torch_pickle(path: Path) -> Any:
    """A torch.save file's object with each tensor as its shape (`_TensorShape`), torch-free;
    ValueError when it is not torch's zip format or holds anything but tensors and dicts."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/data.pkl")
                         or n == "data.pkl"), None)
            if name is None:
                raise ValueError("no data.pkl in the archive")
            if archive.getinfo(name).file_size > MAX_PICKLE_BYTES:
                raise ValueError("its pickle is too big for an embedding")
            raw = archive.read(name)
    except zipfile.BadZipFile:
        raise ValueError("not torch's zip format (an old-style pickle: re-save it with a "
                         "recent torch, or as .safetensors)") from None
    try:
        return _ShapeUnpickler(__import__("io").BytesIO(raw)).load()
    except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"unreadable pickle ({exc})") from None


def embedding_tensor_key(data: dict) -> tuple[str, Any]:
    """(layout, the tensor or its shape) of an embedding's top-level dict, by the rules of
    both layouts; ValueError naming what was found instead."""
    if A1111_KEY in data and isinstance(data[A1111_KEY], dict) and data[A1111_KEY]:
        return "a1111", next(iter(data[A1111_KEY].values()))
    if A1111_SAFETENSORS_KEY in data:
        return "a1111", data[A1111_SAFETENSORS_KEY]
    if set(SDXL_KEYS) <= set(data):
        raise ValueError("an SDXL embedding (clip_l/clip_g): this server runs SD 1.x/2.x")
    tensors = [key for key in data if not key.startswith("__")]
    if len(tensors) == 1:
        return "diffusers", data[tensors[0]]
    raise ValueError("no embedding found (expected A1111's 'string_to_param'/'emb_params' or "
                     f"diffusers' one {{token: tensor}}; found {sorted(tensors)[:5]})")


def _shape(value: Any) -> tuple[int, ...]:
    if isinstance(value, _TensorShape):
        return value.shape
    if isinstance(value, dict) and "shape" in value:  # a safetensors header entry
        return tuple(int(n) for n in value["shape"])
    raise ValueError("its embedding is not a tensor")


def read_embedding(path: Path) -> EmbeddingEntry:
    """The catalogue entry of one file (with `problem` set when it cannot be used)."""
    stat = path.stat()
    base = dict(name=path.stem, path=path, size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    try:
        if path.suffix == ".safetensors":
            data, metadata = read_header(path)
            extra: dict[str, Any] = metadata
        else:
            data = read_torch_pickle(path)
            if not isinstance(data, dict):
                raise ValueError("not a dict of tensors")
            extra = data
        layout, tensor = embedding_tensor_key(data)
        shape = _shape(tensor)
        if not 1 <= len(shape) <= 2:
            raise ValueError(f"its embedding has shape {list(shape)}, not [vectors, width]")
    except (OSError, ValueError, LoraError) as exc:
        return EmbeddingEntry(**base, problem=str(exc).replace("LoRA", "embedding"))
    step = extra.get("step")
    return EmbeddingEntry(
        **base, layout=layout, vectors=shape[0] if len(shape) == 2 else 1, width=shape[-1],
        step=int(step) if isinstance(step, (int, str)) and str(step).isdigit() else None,
        sd_checkpoint=_text(extra.get("sd_checkpoint")),
        sd_checkpoint_name=_text(extra.get("sd_checkpoint_name")))


def _text(value: Any) -> str | None:
    return str(value) if isinstance(value, (str, int)) and value != "" else None


def list_embeddings(settings: Settings) -> list[EmbeddingEntry]:
    """Every file under EMBEDDINGS_DIR (subfolders too) with an embedding's extension,
    sorted by name, the unreadable ones (and a second file of the same name) with their
    `problem`."""
    folder = settings.path(settings.embeddings_dir)
    if not folder.is_dir():
        return []
    entries = sorted((read_embedding(path) for path in folder.rglob("*")
                      if path.suffix in EXTENSIONS and path.is_file()),
                     key=lambda e: (e.name.lower(), len(e.path.parts), str(e.path)))
    # One name, one embedding (a prompt's word is read in any case): as A1111 walks the
    # folder, the shallowest path wins.
    first: dict[str, EmbeddingEntry] = {}
    for index, entry in enumerate(entries):
        kept = first.setdefault(entry.name.lower(), entry)
        if kept is not entry and not entry.problem:
            entries[index] = replace(entry, problem=f"{kept.path} has the same name")
    return entries


def embedding_problem(entry: EmbeddingEntry, family: ModelFamily | None,
                      width: int | None = None) -> str:
    """Why this embedding cannot be used with the model (its `problem`, or a width that is
    not the text encoder's: SD 1.x's 768, SD 2.x's 1024), or ""; `width` is the loaded text
    encoder's when the engine knows it, else the family's."""
    if entry.problem:
        return entry.problem
    expected = width or (family.cross_attention_dim if family is not None else None)
    if expected and entry.width != expected:
        label = f" ({family.label})" if family is not None else ""
        made = TEXT_ENCODER_OF_WIDTH.get(entry.width)
        return (f"its vectors are {entry.width} wide{f' ({made})' if made else ''}; the "
                f"model's text encoder{label} takes {expected}-wide ones")
    return ""


def used_embeddings(entries: Iterable[EmbeddingEntry], *texts: str) -> list[EmbeddingEntry]:
    """The embeddings whose name one of these texts writes as a word (one per name)."""
    texts = [t for t in texts if t]
    used: dict[str, EmbeddingEntry] = {}
    for entry in entries:
        if any(entry.pattern.search(text) for text in texts):
            used.setdefault(entry.name.lower(), entry)
    return list(used.values())
