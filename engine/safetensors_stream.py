"""One safetensors file written tensor by tensor: the header first (every name, dtype and
shape is known before any value is), then each tensor's bytes as it is computed, so a file
the size of a whole UNet is assembled holding one tensor at a time in memory. The result is
the ordinary format (`safetensors.safe_open` and `from_pretrained` read it, memory-mapped).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterable

# torch dtype name -> safetensors' name for it
DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64",
          "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
          "bool": "BOOL"}
ALIGN = 8  # the header is padded so the data starts 8-byte aligned, as safetensors writes it


def write_streamed(path: Path, layout: list[tuple[str, object, tuple[int, ...]]],
                   tensors: Iterable, metadata: dict[str, str] | None = None) -> None:
    """Write `path` from `layout` [(name, torch dtype, shape)] and `tensors`, which yields the
    tensors in that order (each must have its entry's dtype and shape)."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, dtype, shape in layout:
        size = dtype.itemsize
        for dim in shape:
            size *= dim
        header[name] = {"dtype": DTYPES[str(dtype).replace("torch.", "")],
                        "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % ALIGN)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        # strict: a generator yielding more or fewer tensors than the header names fails
        for (name, dtype, shape), tensor in zip(layout, tensors, strict=True):
            if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                raise ValueError(f"{name}: got {tensor.dtype} {tuple(tensor.shape)}, the "
                                 f"header says {dtype} {tuple(shape)}")
            data = tensor.detach().contiguous().reshape(-1)
            f.write(memoryview(data.view(_byte_dtype()).numpy()))  # no copy of the tensor


def _byte_dtype():
    import torch

    return torch.uint8
