"""engine.safetensors_stream: a safetensors file written tensor by tensor reads back exactly,
with safetensors' own reader, and a tensor that does not match its header is refused."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from engine.safetensors_stream import write_streamed


def layout_of(tensors: dict) -> list:
    return [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]


def test_every_dtype_and_shape_reads_back_exactly_with_its_metadata(tmp_path):
    tensors = {"w": torch.randn(3, 5), "conv": torch.randn(2, 3, 3, 3), "ids": torch.arange(7),
               "scalar": torch.tensor(2.5), "half": torch.randn(4, dtype=torch.float16),
               "bf": torch.randn(2, 2, dtype=torch.bfloat16), "empty": torch.zeros(0, 3)}
    path = tmp_path / "w.safetensors"
    write_streamed(path, layout_of(tensors), (t for t in tensors.values()), {"format": "pt"})
    loaded = load_file(path)
    assert set(loaded) == set(tensors)
    assert all(torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype
               for k, v in tensors.items())
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_a_tensor_unlike_its_header_or_a_missing_one_is_refused(tmp_path):
    tensors = {"a": torch.zeros(2, 2), "b": torch.zeros(3)}
    with pytest.raises(ValueError, match="b: got"):
        write_streamed(tmp_path / "x.safetensors", layout_of(tensors),
                       iter([torch.zeros(2, 2), torch.zeros(4)]))
    with pytest.raises(ValueError):
        write_streamed(tmp_path / "y.safetensors", layout_of(tensors), iter([torch.zeros(2, 2)]))
