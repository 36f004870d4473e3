"""engine.weights_cache: a bf16 copy written once, never half-written, never stale, never
bigger than the disk (the happy path and memory-mapping are in test_engine.py)."""
from collections import namedtuple

import pytest
import torch

from engine import weights_cache


def model():
    """A small real module whose config names no source folder."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=2,
                         down_block_types=("DownEncoderBlock2D",),
                         up_block_types=("UpDecoderBlock2D",))


def test_a_failed_write_leaves_no_partial_copy(tmp_path, monkeypatch):
    """The disk fills after the first shard was written (the failure is injected)."""
    written = []
    real_save = weights_cache.save_shard

    def fills_up(tensors, path):
        if written:
            raise OSError(28, "No space left on device")
        real_save(tensors, path)
        written.append(path)

    monkeypatch.setattr(weights_cache, "SHARD_BYTES", 1024)  # several shards
    monkeypatch.setattr(weights_cache, "save_shard", fills_up)
    with pytest.raises(OSError):
        weights_cache.load_converted(model(), tmp_path, torch.bfloat16)
    assert written and not written[0].exists()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    m = model()
    assert weights_cache.load_converted(m, tmp_path, torch.bfloat16) is True
    assert next(m.parameters()).dtype == torch.bfloat16
    assert weights_cache.load_converted(model(), tmp_path, torch.bfloat16) is False  # reused


def test_abandoned_partial_copies_are_removed_before_a_write(tmp_path):
    """A copy half-written by a killed server goes when the next one writes (the rule
    itself is tested in test_catalog_files.py)."""
    import subprocess
    import sys

    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()
    dead = tmp_path / f"UNet2DConditionModel-abc.partial-{killed.pid}"
    dead.mkdir()
    weights_cache.load_converted(model(), tmp_path, torch.bfloat16)
    assert not dead.exists() and len(list(tmp_path.iterdir())) == 1


def test_not_enough_disk_says_how_much_and_what_to_do(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(weights_cache.shutil, "disk_usage", lambda path: usage(10, 10, 1000))
    with pytest.raises(weights_cache.CacheSpaceError) as err:
        weights_cache.load_converted(model(), tmp_path, torch.bfloat16)
    message = str(err.value)
    assert "GB free" in message and "BF16_CACHE_DIR" in message and "DTYPE=float32" in message
    assert str(tmp_path) in message and list(tmp_path.iterdir()) == []
