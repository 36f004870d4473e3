"""Random-weight ESRGAN-family state dicts in the layouts the published files use, and a
reference forward written from the published architectures straight over those keys (no
module of ours), to check that engine.rrdbnet really runs them.

Layouts: xinntao/ESRGAN's old one (`model.0`, `model.1.sub.N.RDBk.convj.0`, `model.3`...:
RRDB_ESRGAN_x4.pth and most community models such as 4x-UltraSharp) and Real-ESRGAN's
(`params_ema` of `conv_first`, `body.N.rdbk.convj`, `conv_body`, `conv_up1/2`, `conv_hr`,
`conv_last`; x2 and x1 pixel-unshuffle the input, so `conv_first` takes 12 or 48 channels).
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

FULL_X4PLUS = dict(num_block=23, num_feat=64, num_grow=32)  # RealESRGAN_x4plus.pth


def _conv(state: dict, name: str, cin: int, cout: int, gen: torch.Generator | None) -> None:
    if gen is None:  # shapes only: meta tensors hold no memory
        state[f"{name}.weight"] = torch.empty(cout, cin, 3, 3, device="meta")
        state[f"{name}.bias"] = torch.empty(cout, device="meta")
        return
    # 1/sqrt(fan_in) keeps the random features O(1) through 20+ convolutions.
    state[f"{name}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) / (3 * cin ** 0.5)
    state[f"{name}.bias"] = torch.randn(cout, generator=gen) * 0.01


def _rdb(state: dict, prefix: str, suffix: str, feat: int, grow: int, gen) -> None:
    for j in range(5):
        _conv(state, f"{prefix}conv{j + 1}{suffix}", feat + j * grow,
              grow if j < 4 else feat, gen)


def real_esrgan_state(scale: int = 4, num_block: int = 2, num_feat: int = 16,
                      num_grow: int = 8, seed: int | None = 0) -> dict[str, torch.Tensor]:
    """Real-ESRGAN's RRDBNet keys (BasicSR rrdbnet_arch), random weights (seed None: meta
    tensors, shapes only)."""
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    _conv(state, "conv_first", 3 * {4: 1, 2: 4, 1: 16}[scale], num_feat, gen)
    for i in range(num_block):
        for k in (1, 2, 3):
            _rdb(state, f"body.{i}.rdb{k}.", "", num_feat, num_grow, gen)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        _conv(state, name, num_feat, num_feat, gen)
    _conv(state, "conv_last", num_feat, 3, gen)
    return state


def old_esrgan_state(scale: int = 4, num_block: int = 2, num_feat: int = 16,
                     num_grow: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """xinntao/ESRGAN's original (old-arch) keys, random weights: model.0 first conv,
    model.1.sub the trunk, then per x2 stage (Upsample, conv, act), then HR conv, act, conv."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    _conv(state, "model.0", 3, num_feat, gen)
    for i in range(num_block):
        for k in (1, 2, 3):
            _rdb(state, f"model.1.sub.{i}.RDB{k}.", ".0", num_feat, num_grow, gen)
    _conv(state, f"model.1.sub.{num_block}", num_feat, num_feat, gen)
    index = 1
    for _ in range({1: 0, 2: 1, 4: 2, 8: 3}[scale]):
        index += 3
        _conv(state, f"model.{index - 1}", num_feat, num_feat, gen)
    # the HR conv sits two after the last (its act between), the last conv two after that
    _conv(state, f"model.{index + 1}", num_feat, num_feat, gen)
    _conv(state, f"model.{index + 3}", num_feat, 3, gen)
    return state


def _apply(state, name, x):
    return F.conv2d(x, state[f"{name}.weight"], state[f"{name}.bias"], padding=1)


def _lrelu(x):
    return F.leaky_relu(x, 0.2)


def _dense(state, prefix, suffix, x):
    feats = [x]
    for j in range(1, 5):
        feats.append(_lrelu(_apply(state, f"{prefix}conv{j}{suffix}", torch.cat(feats, 1))))
    return _apply(state, f"{prefix}conv5{suffix}", torch.cat(feats, 1)) * 0.2 + x


def _trunk(state, block_prefix, suffix, num_block, feat):
    for i in range(num_block):
        out = feat
        for k in (1, 2, 3):
            out = _dense(state, block_prefix.format(i=i, k=k), suffix, out)
        feat = out * 0.2 + feat
    return feat


def _pixel_unshuffle(x, scale):
    """BasicSR's own pixel_unshuffle (basicsr/archs/arch_util.py), not torch's."""
    b, c, hh, hw = x.size()
    h, w = hh // scale, hw // scale
    x_view = x.view(b, c, h, scale, w, scale)
    return x_view.permute(0, 1, 3, 5, 2, 4).reshape(b, c * scale ** 2, h, w)


def reference_real_esrgan(state, x, scale):
    """Real-ESRGAN's RRDBNet.forward over its own keys."""
    num_block = len({k.split(".")[1] for k in state if k.startswith("body.")})
    feat = _pixel_unshuffle(x, {4: 1, 2: 2, 1: 4}[scale]) if scale < 4 else x
    feat = _apply(state, "conv_first", feat)
    feat = feat + _apply(state, "conv_body", _trunk(state, "body.{i}.rdb{k}.", "",
                                                     num_block, feat))
    for name in ("conv_up1", "conv_up2"):
        feat = _lrelu(_apply(state, name, F.interpolate(feat, scale_factor=2, mode="nearest")))
    return _apply(state, "conv_last", _lrelu(_apply(state, "conv_hr", feat)))


def reference_old_esrgan(state, x):
    """The old ESRGAN Sequential: conv, ShortcutBlock(RRDBs + conv), upsamplers, HR convs."""
    num_block = len({k.split(".")[3] for k in state if ".RDB1.conv1." in k})
    feat = _apply(state, "model.0", x)
    trunk = _trunk(state, "model.1.sub.{i}.RDB{k}.", ".0", num_block, feat)
    feat = feat + _apply(state, f"model.1.sub.{num_block}", trunk)
    indices = sorted(int(k.split(".")[1]) for k in state
                     if k.count(".") == 2 and k.endswith(".weight") and k != "model.0.weight")
    for index in indices[:-2]:
        feat = _lrelu(_apply(state, f"model.{index}",
                             F.interpolate(feat, scale_factor=2, mode="nearest")))
    return _apply(state, f"model.{indices[-1]}", _lrelu(_apply(state, f"model.{indices[-2]}",
                                                                feat)))


def full_x4plus_shapes() -> dict[str, tuple[int, ...]]:
    """The key names and shapes of the real RealESRGAN_x4plus.pth (no tensors made)."""
    state = real_esrgan_state(4, **FULL_X4PLUS, seed=None)
    return {k: tuple(v.shape) for k, v in state.items()}
