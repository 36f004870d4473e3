"""RRDBNet, the ESRGAN / Real-ESRGAN upscaler network, written here from its published
architecture (xinntao/ESRGAN's RRDBNet_arch and BasicSR's rrdbnet_arch, which A1111 and
spandrel copy), and the reading of its three key layouts into this one module.

Why not spandrel (the library A1111 and ComfyUI use): `import spandrel` imports every
architecture it knows, LaMa's and RestoreFormer's among them, and those import torchvision at
import time, so even its ESRGAN loader cannot be imported without torchvision (measured in a
throwaway venv with spandrel installed --no-deps: ModuleNotFoundError: torchvision). PyPI's
torchvision would replace our CPU torch with a CUDA build. The net is ~60 lines; the key
layouts are read torch-free in catalog.upscalers.describe_rrdbnet.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from catalog.upscalers import RRDBSpec, describe_rrdbnet


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convolutions, the residual scaled by 0.2."""

    def __init__(self, feat: int, grow: int):
        super().__init__()
        self.feat, self.grow = feat, grow
        for i in range(5):
            setattr(self, f"conv{i + 1}", nn.Conv2d(feat + i * grow, grow if i < 4 else feat,
                                                    3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x plus 0.2 x the dense block's output."""
        # One buffer instead of torch.cat per conv: each output is copied once, not again for
        # every later cat (cat was ~30 % of a forward). A channel prefix of a batch-1 NCHW
        # buffer is contiguous, so the convolutions read it in place.
        if x.shape[0] != 1:
            return torch.cat([self(x[i:i + 1]) for i in range(x.shape[0])])
        buf = x.new_empty(1, self.feat + 4 * self.grow, *x.shape[2:])
        buf[:, :self.feat] = x
        for i in range(1, 5):
            start = self.feat + (i - 1) * self.grow
            buf[:, start:start + self.grow] = F.leaky_relu(
                getattr(self, f"conv{i}")(buf[:, :start]), 0.2, inplace=True)
        return self.conv5(buf).mul_(0.2).add_(x)


class RRDB(nn.Module):
    """Three dense blocks in a residual-in-residual, scaled by 0.2."""

    def __init__(self, feat: int, grow: int):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(feat, grow)
        self.rdb2 = ResidualDenseBlock(feat, grow)
        self.rdb3 = ResidualDenseBlock(feat, grow)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x plus 0.2 x the three blocks' output."""
        return self.rdb3(self.rdb2(self.rdb1(x))).mul_(0.2).add_(x)


class RRDBNet(nn.Module):
    """ESRGAN's generator: trunk of RRDBs at the input's size, then nearest-x2 + conv stages
    (Real-ESRGAN x2/x1 pixel-unshuffle the input first, so the net still upsamples 4x)."""

    def __init__(self, spec: RRDBSpec):
        super().__init__()
        self.spec = spec
        feat = spec.num_feat
        self.conv_first = nn.Conv2d(spec.in_channels * spec.unshuffle ** 2, feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(feat, spec.num_grow) for _ in range(spec.num_block)))
        self.conv_body = nn.Conv2d(feat, feat, 3, 1, 1)
        self.ups = nn.ModuleList(nn.Conv2d(feat, feat, 3, 1, 1)
                                 for _ in range(spec.num_upsample))
        self.conv_hr = nn.Conv2d(feat, feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(feat, spec.out_channels, 3, 1, 1)
        # The 2x and 4x stages run channels-last: oneDNN then reads and writes the big maps
        # in place instead of reordering each into a blocked copy (measured on one 224 px
        # tile: peak 473 vs 686 MiB in float32, 258 vs 455 in bf16, and faster). The trunk
        # stays NCHW, where its dense buffer's channel prefixes are contiguous.
        for conv in (*self.ups, self.conv_hr, self.conv_last):
            conv.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in 0..1 -> (N, C, H x scale, W x scale); H, W multiples of unshuffle."""
        if self.spec.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.spec.unshuffle)
        feat = self.conv_first(x)
        feat = (feat + self.conv_body(self.body(feat))).contiguous(
            memory_format=torch.channels_last)
        for conv in self.ups:
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2,
                                inplace=True)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2, inplace=True))


def canonical_key(key: str, spec: RRDBSpec) -> str:
    """A state-dict key of any layout as this module's RRDBNet names it."""
    if spec.layout == "real-esrgan":
        return re.sub(r"^conv_up(\d)\.", lambda m: f"ups.{int(m.group(1)) - 1}.", key)
    if spec.layout == "basicsr":
        key = re.sub(r"^RRDB_trunk\.(\d+)\.RDB(\d)\.", r"body.\1.rdb\2.", key)
        for old, new in (("trunk_conv.", "conv_body."), ("upconv1.", "ups.0."),
                         ("upconv2.", "ups.1."), ("HRconv.", "conv_hr.")):
            if key.startswith(old):
                return new + key[len(old):]
        return key
    if m := re.match(r"model\.1\.sub\.(\d+)\.RDB(\d)\.(conv\d)\.0\.(\w+)$", key):
        return f"body.{m.group(1)}.rdb{m.group(2)}.{m.group(3)}.{m.group(4)}"
    if m := re.match(r"model\.1\.sub\.\d+\.(\w+)$", key):
        return f"conv_body.{m.group(1)}"
    if m := re.match(r"model\.(\d+)\.(\w+)$", key):
        index, tail = int(m.group(1)), m.group(2)
        if index == 0:
            return f"conv_first.{tail}"
        position = spec.tail_indices.index(index) if index in spec.tail_indices else -1
        if 0 <= position < spec.num_upsample:
            return f"ups.{position}.{tail}"
        return f"conv_hr.{tail}" if position == spec.num_upsample else f"conv_last.{tail}"
    return key


def unwrap_state(loaded: Any) -> dict[str, torch.Tensor]:
    """The tensors of a loaded file: Real-ESRGAN's `params_ema` (else `params`) when
    present, else the file itself; ValueError when it holds no state dict."""
    if isinstance(loaded, dict):
        for wrapper in ("params_ema", "params", "state_dict"):
            if isinstance(loaded.get(wrapper), dict):
                loaded = loaded[wrapper]
                break
    if not isinstance(loaded, dict) or not loaded:
        raise ValueError("it holds no state dict (no tensors by name)")
    tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(loaded):
        raise ValueError("it holds values that are not tensors")
    return tensors


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """A .pth (torch.load with weights_only=True: never an arbitrary pickle) or
    .safetensors file's tensors, unwrapped; ValueError with the reason when unreadable."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return unwrap_state(load_file(str(path), device="cpu"))
        return unwrap_state(torch.load(path, map_location="cpu", weights_only=True))
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001  (an unreadable file is the user's to fix)
        text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ValueError(f"it cannot be read safely ({type(exc).__name__}: {text})") from None


def load_rrdbnet(path: Path) -> RRDBNet:
    """The RRDBNet in a file, in eval mode with its weights loaded; ValueError with the
    reason (not an RRDBNet, shapes that do not fit) when it cannot be."""
    state = read_state(path)
    spec = describe_rrdbnet({k: tuple(v.shape) for k, v in state.items()})
    net = RRDBNet(spec)
    try:
        net.load_state_dict({canonical_key(k, spec): v.float() for k, v in state.items()})
    except RuntimeError as exc:
        raise ValueError(f"its tensors do not fit the RRDBNet their names describe "
                         f"({str(exc).splitlines()[0][:200]})") from None
    return net.eval().requires_grad_(False)
