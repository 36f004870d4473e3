"""Upscalers on disk: Pillow's resamplers by name, and the ESRGAN family's files in
MODELS_DIR/ESRGAN and MODELS_DIR/RealESRGAN (A1111's layout), found by the name a client sends.

Torch-free, so request threads may list them. What can be known without torch is known here:
a `.safetensors` file's header gives every tensor's shape, so its architecture, scale and
size are read at listing time (`describe_rrdbnet`, the one reader of the three key layouts,
which the engine also uses on a loaded `.pth`); a `.pth` is checked for being a torch zip
whose pickle names only tensor-rebuilding globals (a file that would pickle anything else is
refused here, and `torch.load(weights_only=True)` refuses it again in the engine). A file we
cannot use is listed with its `problem` (A1111 "skipped") and never offered as an upscaler.
"""
from __future__ import annotations

import functools
import io
import pickletools
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from catalog.checkpoints import read_header
from config import Settings

NONE = "None"
PILLOW_UPSCALERS = ("Lanczos", "Nearest", "Bicubic", "Bilinear")
FOLDERS = ("ESRGAN", "RealESRGAN")
EXTENSIONS = (".pth", ".safetensors")
# A1111 shows the official Real-ESRGAN files under these names (modules/realesrgan_model.py);
# clients such as SillyTavern send them, so the files answer to them too.
A1111_NAMES = {"realesrgan_x4plus": "R-ESRGAN 4x+",
               "realesrgan_x4plus_anime_6b": "R-ESRGAN 4x+ Anime6B",
               "realesrgan_x2plus": "R-ESRGAN 2x+"}
# The globals a torch.save'd state dict's pickle may name (what weights_only=True allows for
# plain tensors); anything else is a pickled object we will not load.
SAFE_GLOBALS = re.compile(r"^(collections (OrderedDict)|torch\._utils _rebuild_\w+|"
                          r"torch (\w+Storage|Size|device|bfloat16|float16|float32)|"
                          r"torch\.serialization _get_layout|builtins (set|frozenset))$")
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER, first in a legacy file
_NAME_SCALE = re.compile(r"(?:^|[^a-z0-9])(?:x([1248])|([1248])x)(?:[^a-z0-9]|$)", re.I)


@dataclass(frozen=True)
class RRDBSpec:
    """An RRDBNet (ESRGAN, Real-ESRGAN) read from its keys: which layout, its scale and sizes.
    `unshuffle` is Real-ESRGAN's pixel-unshuffle of the input (2 for x2, 4 for x1);
    `tail_indices` the old layout's `model.N` convs after the trunk: its upsampling convs,
    then the two HR convs."""

    layout: str  # "esrgan" (model.0 ...), "basicsr" (RRDB_trunk ...), "real-esrgan" (body ...)
    scale: int
    in_channels: int
    out_channels: int
    num_feat: int
    num_block: int
    num_grow: int
    unshuffle: int = 1
    tail_indices: tuple[int, ...] = ()

    @property
    def num_upsample(self) -> int:
        """How many nearest-x2 + conv stages the net has."""
        return len(self.tail_indices) - 2 if self.layout == "esrgan" else 2


@dataclass(frozen=True)
class UpscalerEntry:
    """One model upscaler file: the name clients use, the file, its scale when known before
    loading (None for a .pth: its shapes are inside the pickle), and why it cannot be used."""

    name: str
    path: Path
    scale: int | None
    problem: str = ""

    @property
    def relative(self) -> str:
        """The file as A1111 shows it: its folder and name under MODELS_DIR."""
        return f"{self.path.parent.name}/{self.path.name}"


def describe_rrdbnet(shapes: Mapping[str, Sequence[int]]) -> RRDBSpec:
    """The RRDBNet a state dict holds, from its key names and shapes (any of the three
    layouts); ValueError saying what it is instead when it is not one."""
    keys = set(shapes)
    if "conv_first.weight" in keys and any(k.startswith("body.") for k in keys):
        return _real_esrgan(shapes)
    if "conv_first.weight" in keys and any(k.startswith("RRDB_trunk.") for k in keys):
        return _basicsr(shapes)
    if "model.0.weight" in keys and any(k.startswith("model.1.sub.") for k in keys):
        return _old_esrgan(shapes)
    raise ValueError(_not_rrdbnet(keys))


def _not_rrdbnet(keys: set[str]) -> str:
    """Why a file with these tensor names is no RRDBNet."""
    if "body.0.weight" in keys:
        return ("it is an SRVGGNetCompact net (realesr-general / animevideo), not an RRDBNet: "
                "only the ESRGAN / Real-ESRGAN RRDBNet family is supported")
    sample = ", ".join(sorted(keys)[:3]) or "no tensors"
    return f"its keys ({sample}, ...) are not an ESRGAN / Real-ESRGAN RRDBNet's"


def _need(shapes: Mapping[str, Sequence[int]], key: str) -> Sequence[int]:
    if key not in shapes:
        raise ValueError(f"it lacks {key!r}: an incomplete or unknown RRDBNet")
    return shapes[key]


def _blocks(shapes: Mapping[str, Sequence[int]], pattern: str) -> int:
    found = {int(m.group(1)) for k in shapes if (m := re.match(pattern, k))}
    if not found or found != set(range(len(found))):
        raise ValueError("its RRDB blocks are missing or not numbered 0..N-1")
    return len(found)


def _real_esrgan(shapes: Mapping[str, Sequence[int]]) -> RRDBSpec:
    first, last = _need(shapes, "conv_first.weight"), _need(shapes, "conv_last.weight")
    for key in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        _need(shapes, f"{key}.weight")
    out = int(last[0])
    factor = int(first[1]) // out
    unshuffle = {1: 1, 4: 2, 16: 4}.get(factor)
    if unshuffle is None or int(first[1]) % out:
        raise ValueError(f"conv_first takes {first[1]} channels for {out} out: not a "
                         "Real-ESRGAN x4 (3), x2 (12) or x1 (48) input")
    return RRDBSpec("real-esrgan", 4 // unshuffle, out, out, int(first[0]),
                    _blocks(shapes, r"body\.(\d+)\.rdb1\.conv1\.weight$"),
                    int(_need(shapes, "body.0.rdb1.conv1.weight")[0]), unshuffle)


def _basicsr(shapes: Mapping[str, Sequence[int]]) -> RRDBSpec:
    first, last = _need(shapes, "conv_first.weight"), _need(shapes, "conv_last.weight")
    for key in ("trunk_conv", "upconv1", "upconv2", "HRconv"):
        _need(shapes, f"{key}.weight")
    return RRDBSpec("basicsr", 4, int(first[1]), int(last[0]), int(first[0]),
                    _blocks(shapes, r"RRDB_trunk\.(\d+)\.RDB1\.conv1\.weight$"),
                    int(_need(shapes, "RRDB_trunk.0.RDB1.conv1.weight")[0]))


def _old_esrgan(shapes: Mapping[str, Sequence[int]]) -> RRDBSpec:
    first = _need(shapes, "model.0.weight")
    num_block = _blocks(shapes, r"model\.1\.sub\.(\d+)\.RDB1\.conv1\.0\.weight$")
    _need(shapes, f"model.1.sub.{num_block}.weight")  # the trunk's closing conv
    tail = sorted(int(m.group(1)) for k in shapes if (m := re.match(r"model\.(\d+)\.weight$", k))
                  and int(m.group(1)) >= 2)
    if len(tail) < 2:
        raise ValueError("it lacks the final HR convolutions (model.N.weight after model.1)")
    feat = int(first[0])
    ups = tuple(tail[:-2])
    for index in ups:
        if tuple(shapes[f"model.{index}.weight"][:2]) != (feat, feat):
            raise ValueError(f"model.{index} is a pixel-shuffle upsampler: only the "
                             "nearest + conv upsampler of ESRGAN is supported")
    return RRDBSpec("esrgan", 2 ** len(ups), int(first[1]),
                    int(shapes[f"model.{tail[-1]}.weight"][0]), feat, num_block,
                    int(_need(shapes, "model.1.sub.0.RDB1.conv1.0.weight")[0]),
                    tail_indices=tuple(tail))


def pth_problem(path: Path) -> str:
    """Why a .pth cannot be used, found without torch ('' when it can): torch's zip format or
    its legacy (pre-1.6) one, whose pickle names only tensor-rebuilding globals, holding an
    RRDBNet's tensors."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")
                       or n == "data.pkl"]
            if not pickles:
                return "it is a zip without data.pkl, not a PyTorch checkpoint"
            return _pickle_problem(io.BytesIO(archive.read(pickles[0])))
    except zipfile.BadZipFile:
        pass
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    # torch's legacy format (most 2018-2019 ESRGAN files): pickles of the magic number, the
    # protocol version and the system info, then the state dict's, then the raw storages.
    not_torch = "it is not a PyTorch checkpoint (neither torch's zip nor its legacy format)"
    try:
        with open(path, "rb") as f:
            try:
                if LEGACY_MAGIC not in [arg for _, arg, _ in pickletools.genops(f)]:
                    return not_torch
                for _ in range(2):  # the protocol version, the system info
                    for _ in pickletools.genops(f):
                        pass
            except Exception:  # noqa: BLE001  (not a pickle at all)
                return not_torch
            return _pickle_problem(f)
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"


def _pickle_problem(stream) -> str:
    """Why the state-dict pickle on `stream` is refused ('' when it is plain tensors of an
    RRDBNet): any global but a tensor's, or no RRDBNet first convolution among its names."""
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(stream):
            if opcode.name == "GLOBAL":
                name = str(arg)
            elif opcode.name == "STACK_GLOBAL":
                name = " ".join(strings[-2:])
            else:
                if isinstance(arg, str):
                    strings.append(arg)
                continue
            if not SAFE_GLOBALS.match(name):
                return (f"its pickle holds a {name.replace(' ', '.')} object, not only "
                        "tensors: refused (a pickle can run code); convert it to "
                        ".safetensors")
    except Exception as exc:  # noqa: BLE001  (any malformed pickle is simply unreadable)
        return f"its pickle is damaged ({type(exc).__name__})"
    # The tensor names are strings in the pickle (their shapes are not, readily): enough to
    # tell an RRDBNet's first convolution from another architecture's.
    if not {"conv_first.weight", "model.0.weight"} & set(strings):
        return _not_rrdbnet({k for k in strings if k.endswith((".weight", ".bias"))})
    return ""


def _entry(path: Path) -> UpscalerEntry:
    """The file's entry, read once per version of the file (a listing per extras request
    would otherwise re-read every pickle: ~10 ms each)."""
    try:
        stat = path.stat()
    except OSError as exc:
        return UpscalerEntry(path.stem, path, None, f"it cannot be read ({exc.strerror})")
    return _read_entry(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _read_entry(path: Path, size: int, mtime_ns: int) -> UpscalerEntry:
    name = A1111_NAMES.get(path.stem.lower(), path.stem)
    if path.suffix.lower() == ".pth":
        match = _NAME_SCALE.search(path.stem)
        return UpscalerEntry(name, path, int(next(g for g in match.groups() if g))
                             if match else None, pth_problem(path))
    try:
        header = read_header(path)
        spec = describe_rrdbnet({k: v.get("shape", ()) for k, v in header.items()
                                 if isinstance(v, dict)})
    except (OSError, ValueError) as exc:
        return UpscalerEntry(name, path, None, str(exc))
    return UpscalerEntry(name, path, spec.scale)


def list_upscalers(settings: Settings) -> list[UpscalerEntry]:
    """Every .pth / .safetensors file in MODELS_DIR/ESRGAN and MODELS_DIR/RealESRGAN (and
    their subfolders), sorted by name; unusable ones carry their `problem`."""
    root = settings.path(settings.models_dir)
    found: dict[str, UpscalerEntry] = {}
    for folder in FOLDERS:
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.is_file() and path.suffix.lower() in EXTENSIONS \
                    and not path.name.startswith("."):
                entry = _entry(path)
                found.setdefault(entry.name.lower(), entry)  # the first of two same names wins
    return sorted(found.values(), key=lambda e: e.name.lower())


def find_upscaler(settings: Settings, name: str) -> UpscalerEntry | None:
    """The model upscaler a client names: by its listed name, file stem or file name
    (case-insensitive); None when there is none."""
    wanted = name.strip().lower()
    for entry in list_upscalers(settings):
        if wanted in (entry.name.lower(), entry.path.stem.lower(), entry.path.name.lower()):
            return entry
    return None


def upscaler_names(settings: Settings) -> list[str]:
    """Every name an upscaler field may hold: None, Pillow's, then the usable model files'."""
    return [NONE, *PILLOW_UPSCALERS,
            *(e.name for e in list_upscalers(settings) if not e.problem)]
