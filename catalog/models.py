"""The local model catalogue: the MODEL_ID model, then every diffusers folder and single-file
checkpoint directly in MODELS_DIR; finding one by any name a client sends; the sha256 of
single files (computed once, cached); and where a single file's diffusers copy goes (the
engine converts it: engine/single_file.py).

Layout of MODELS_DIR (all optional):

    <name>/model_index.json      a diffusers folder
    <stem>.safetensors           an SD 1.x checkpoint in the original (A1111/civitai) layout
    <stem>.config/               its diffusers config folder, for checkpoints not SD 1.x/2.x shaped
    <name>.json                  a model's card (catalog.cards): its recommended settings,
                                 family or prediction type, beside its folder or file
    <stem>.ckpt                  listed but refused: a Python pickle can run code
    .sha256.json                 the hash cache (keyed by real path, size, mtime)
    .converted/<stem>-<key>/     the diffusers copy of a checkpoint (keyed the same way)
    .baked/<key>/                a model with LoRAs merged in (catalog.bakes), listed by the
                                 name its manifest gives

Each entry carries its family (catalog.families), read from its configs: the folder's, a
checkpoint's converted copy or sidecar config folder, else its tensor names; a Hub model's from
the local Hub cache.

Nothing here imports torch: listing is cheap, and request threads may call it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from config import TINY_MODEL_ID, Settings
from catalog import checkpoints
from catalog.bakes import list_baked
from catalog.cards import read_card
from catalog.families import ModelFamily, folder_family, read_json, with_card
from catalog.files import PARTIAL, staged
from catalog.hashes import file_sha256
from errors import ModelUnavailable, UnknownModel

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (phase, bytes done, bytes total)
HASH_CACHE = ".sha256.json"
CONVERTED = ".converted"
CKPT_PROBLEM = ("refused: .ckpt files are Python pickles that can run code; convert it to "
                ".safetensors")
_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{8,64}\]$")


@dataclass(frozen=True)
class ModelEntry:
    """One model the server can list: what clients call it and what loads it."""

    name: str        # what clients use (A1111 model_name): stem, folder name or Hub id
    title: str       # A1111 title: "<file name> [<sha256[:10]>]" once the hash is known
    kind: str        # "hub" | "diffusers" | "single_file" | "ckpt"
    source: str      # what loads it: a Hub id, a folder or a file path
    filename: str    # the path shown to clients (the Hub id for a Hub model)
    sha256: str | None = None
    problem: str = ""  # "" or why it cannot load
    family: ModelFamily = field(default_factory=ModelFamily)

    @property
    def short_hash(self) -> str | None:
        """A1111's short hash: the first 10 hex characters of the sha256."""
        return self.sha256[:10] if self.sha256 else None

    @property
    def card(self) -> dict[str, Any]:
        """Its card (`<name>.json` beside it), read now; {} for a Hub model or none."""
        return {} if self.kind == "hub" else read_card(self.source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelEntry":
        """The entry `dataclasses.asdict` made of one (the Redis heartbeat carries it so)."""
        return cls(**{**data, "family": ModelFamily.from_dict(data.get("family"))})


def list_models(settings: Settings) -> list[ModelEntry]:
    """The MODEL_ID model first, then MODELS_DIR's models sorted by name (hashes from the
    cache only: listing never hashes a file)."""
    local = _scan(settings)
    first = _startup_entry(settings, local)
    rest = [e for e in local if not _same(e.source, first.source)]
    return [first] + rest


def find_model(settings: Settings, wanted: str) -> ModelEntry:
    """The entry a client means by `wanted`: A1111 title "name [hash10]", model_name,
    filename, file name with or without extension, or the title without its hash.
    Raises UnknownModel (listing the names we have) or ModelUnavailable (its problem)."""
    wanted = (wanted or "").strip()
    entries = list_models(settings)
    # MODEL_ID as spelled (a path, say) names the startup model, whatever it is called now.
    entry = entries[0] if wanted == settings.model_id else (
        _match(entries, wanted) or _match(entries, _HASH_SUFFIX.sub("", wanted)))
    if entry is None:
        names = ", ".join(e.name for e in entries)
        raise UnknownModel(f"unknown model {wanted!r}; the models are: {names}")
    if entry.problem:
        raise ModelUnavailable(f"model {entry.name!r}: {entry.problem}")
    return entry


def model_sha256(entry: ModelEntry, settings: Settings, compute: bool = False) -> str | None:
    """The sha256 of a single-file model from the cache, hashing the file (once: the result is
    cached by real path, size and mtime) only when `compute`. None for a diffusers folder or a
    Hub model: their weights are several files, so there is no one file hash to show."""
    if entry.kind not in ("single_file", "ckpt"):
        return None
    path = Path(entry.source).resolve()
    key, stat = str(path), path.stat()
    cache_file = settings.path(settings.models_dir) / HASH_CACHE
    cache = read_json(cache_file)
    hit = cache.get(key)
    if hit and hit.get("size") == stat.st_size and hit.get("mtime_ns") == stat.st_mtime_ns:
        return hit.get("sha256")
    if not compute:
        return None
    digest = file_sha256(path)
    cache = read_json(cache_file)  # re-read: another process may have added entries meanwhile
    cache[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    _write_json(cache_file, cache)
    return digest


def with_hash(entry: ModelEntry, settings: Settings) -> ModelEntry:
    """The entry with its sha256 computed (and cached) and its title showing the short hash."""
    digest = model_sha256(entry, settings, compute=True)
    return replace(entry, sha256=digest, title=_title(Path(entry.source).name, digest)) \
        if digest else entry


def converted_folder(path: Path, settings: Settings) -> Path:
    """Where the diffusers copy of checkpoint `path` goes: named by its real path, size, mtime
    and config, so an edited or replaced file is converted again."""
    real = Path(path).resolve()
    stat = real.stat()
    sidecar = checkpoints.sidecar_config(real)
    config_stamp = (sidecar / "model_index.json").stat().st_mtime_ns if sidecar else "sd-v1"
    told = checkpoints.told_prediction_type(real)  # another answer converts again
    told_stamp = f":{told}" if told else ""  # (absent: the keys of earlier versions still hold)
    key = hashlib.sha256(f"{real}:{stat.st_size}:{stat.st_mtime_ns}:{config_stamp}{told_stamp}"
                         .encode())
    return settings.path(settings.models_dir) / CONVERTED / f"{real.stem}-{key.hexdigest()[:12]}"


def _scan(settings: Settings) -> list[ModelEntry]:
    """Every diffusers folder and checkpoint file directly in MODELS_DIR, sorted by name."""
    root = settings.path(settings.models_dir)
    if not root.is_dir():
        return []
    skip = {settings.path(folder).resolve() for folder in (
        settings.lora_dir, settings.embeddings_dir, settings.bf16_cache_dir)}
    entries = []
    for item in root.iterdir():
        if item.name.startswith(".") or PARTIAL in item.name or item.resolve() in skip:
            continue
        if item.is_dir() and not item.name.endswith(".config") \
                and (item / "model_index.json").is_file():
            entries.append(_folder_entry(item))
        elif item.is_file() and item.suffix.lower() in (".safetensors", ".ckpt"):
            entries.append(_file_entry(item, settings))
    taken = {e.name for e in entries}  # a model the user put there wins over a bake's name
    entries += [_folder_entry(folder, name) for name, folder in list_baked(settings)
                if name not in taken]
    return sorted(entries, key=lambda e: e.name.lower())


def _folder_entry(folder: Path, name: str | None = None) -> ModelEntry:
    problem = "" if (folder / "model_index.json").is_file() else (
        f"{folder} is not a diffusers model folder (no model_index.json)")
    return ModelEntry(name=name or folder.name, title=name or folder.name, kind="diffusers",
                      source=str(folder), filename=str(folder), problem=problem,
                      family=folder_family(folder, read_card(folder)))


def _file_entry(path: Path, settings: Settings) -> ModelEntry:
    ckpt = path.suffix.lower() == ".ckpt"
    entry = ModelEntry(name=path.stem, title=path.name, kind="ckpt" if ckpt else "single_file",
                       source=str(path), filename=str(path),
                       problem=CKPT_PROBLEM if ckpt else checkpoints.checkpoint_problem(path))
    digest = model_sha256(entry, settings)
    family = ModelFamily() if entry.problem else _checkpoint_family(path, settings)
    return replace(entry, sha256=digest, title=_title(path.name, digest), family=family)


def _checkpoint_family(path: Path, settings: Settings) -> ModelFamily:
    """A checkpoint's family: its converted copy's configs once converted (the prediction type
    found then included), else its sidecar config folder's, else its tensor names'."""
    card = read_card(path)
    converted = converted_folder(path, settings)
    if (converted / "model_index.json").is_file():
        return folder_family(converted, card)
    sidecar = checkpoints.sidecar_config(path)
    if sidecar is not None:
        return folder_family(sidecar, card)
    return with_card(checkpoints.checkpoint_family(path), card)


def hub_family(repo_id: str) -> ModelFamily:
    """A Hub model's family from the configs in the local Hub cache (no network); unknown
    until they are there (the engine knows it once the model is loaded)."""
    from huggingface_hub import try_to_load_from_cache

    index = try_to_load_from_cache(repo_id, "model_index.json")
    if not isinstance(index, str):
        return ModelFamily()
    return folder_family(Path(index).parent)


def _title(file_name: str, digest: str | None) -> str:
    return f"{file_name} [{digest[:10]}]" if digest else file_name


def is_model_path(model_id: str) -> bool:
    """Whether MODEL_ID names a folder or file on disk rather than a catalogue name or Hub id."""
    return model_id.startswith(("/", ".", "~")) or Path(model_id).expanduser().exists()


def model_id_name(model_id: str) -> str:
    """How clients see a MODEL_ID: a path as its folder name or file stem (as the catalogue
    names it; never the path itself), anything else as given."""
    if model_id == TINY_MODEL_ID or not is_model_path(model_id):
        return model_id
    path = Path(model_id).expanduser()
    if not path.name or path.name in (".", ".."):  # "." or "..": the folder's own name
        path = path.resolve()
    is_file = path.suffix.lower() in (".safetensors", ".ckpt") and not path.is_dir()
    return (path.stem if is_file else path.name) or model_id


def _startup_entry(settings: Settings, local: list[ModelEntry]) -> ModelEntry:
    """The MODEL_ID model: tiny-random, a folder or file path, a catalogue name, or a Hub id."""
    model_id = settings.model_id
    if model_id == TINY_MODEL_ID:
        folder = settings.path(settings.tiny_model_dir)
        return replace(_folder_entry(folder, TINY_MODEL_ID), problem="")  # built on load
    path = Path(model_id).expanduser()
    if is_model_path(model_id):
        name = model_id_name(model_id)
        if path.suffix.lower() in (".safetensors", ".ckpt") and not path.is_dir():
            if not path.is_file():
                return ModelEntry(name, path.name, "single_file", model_id, model_id,
                                  problem=f"{path} does not exist")
            return _file_entry(path, settings)
        return _folder_entry(path, name)
    found = _match(local, model_id) or _match(local, _HASH_SUFFIX.sub("", model_id))
    if found:
        return found
    return ModelEntry(name=model_id, title=model_id, kind="hub", source=model_id,
                      filename=model_id, family=hub_family(model_id))


def _match(entries: list[ModelEntry], wanted: str) -> ModelEntry | None:
    """The first entry any of whose names is exactly `wanted`."""
    for entry in entries:
        file_name = Path(entry.filename).name
        names = {entry.name, entry.title, entry.filename, file_name, Path(file_name).stem,
                 _HASH_SUFFIX.sub("", entry.title)}
        if entry.sha256:
            names |= {entry.sha256, entry.sha256[:10]}
        if wanted in names:
            return entry
    return None


def _same(a: str, b: str) -> bool:
    """Whether two sources are the same file or folder (Hub ids compare as text)."""
    try:
        return Path(a).resolve() == Path(b).resolve() if os.path.exists(a) else a == b
    except OSError:
        return a == b


def _write_json(path: Path, data: dict) -> None:
    """Write beside and rename, so readers never see half a file; a read-only MODELS_DIR
    only costs hashing again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with staged(path) as tmp:  # only the worker writes it: one partial per process
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    except OSError as exc:
        log.warning("could not write the hash cache %s: %s", path, exc)
