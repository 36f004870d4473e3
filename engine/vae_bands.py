"""VAE decode strategies that cut the anonymous-memory peak of the decode, with the same
pixels: in-place SiLUs and the decoder run in row bands.

They patch a loaded `AutoencoderKL` in place, as diffusers' own `enable_vae_slicing` does;
each returns whether it applied, so /health lists only what really runs.
"""
from __future__ import annotations


def low_memory_vae_decode(vae) -> bool:
    """Make the VAE's SiLUs in-place (same pixels, one activation-sized tensor less at a
    time); True if there was any to change.

    The VAE decode is where anonymous memory peaks (~1 GB of activations at 512x512); each
    SiLU there follows a GroupNorm whose fresh output nothing else reads, so overwriting it
    is safe (inference only: the engine never trains). bench/results.md has the effect.
    """
    import torch

    changed = False
    for module in list(vae.modules()):
        for name, child in module.named_children():
            if type(child) is torch.nn.SiLU:
                setattr(module, name, torch.nn.SiLU(inplace=True))
                changed = True
    return changed


# Rows per band are chosen so one band of one activation is about this big: small next to
# the 128-256 MiB full-resolution tensors it replaces, big enough that oneDNN convolutions
# keep their speed (bench/results.md has the measurements).
VAE_BAND_BYTES = 8 * 2**20


def vae_decode_in_row_bands(vae) -> bool:
    """Run the VAE decoder's up-blocks and output layers band by band (less RAM; same pixels
    at 512x512 and 256x256, elsewhere within ~4e-6, i.e. at most 1/255 on a pixel). True if
    it applied: only to a float32 AutoencoderKL (the full SD VAE), where the banded result
    was checked to be exact; a tiny VAE (AutoencoderTiny, SDXS's own `vae/`) has no such
    stages and its decode is small already, so it keeps diffusers' code.

    At 512x512 the decoder's full-resolution stages (an upsampled 512x512x256 tensor is
    256 MiB) made the whole generation peak at ~1.4-1.6 GiB of anonymous memory, mostly
    GroupNorm outputs and oneDNN's full-size copies. Here every GroupNorm -> SiLU -> 3x3 conv
    and every nearest-2x upsample -> conv runs on horizontal bands of rows with a one-row halo,
    writing into one preallocated output: a 3x3 conv's output rows depend only on the input
    rows next to them, and GroupNorm takes its per-group mean/rstd first from the whole
    tensor through torch's own kernel, so every value is computed exactly as diffusers
    computes it (the tests check the pixels). The second conv of a ResNet block writes over
    its own input (keeping the one row above each band), so a block holds its input and one
    output-sized tensor. Blocks that do not have the plain SD VAE shape keep diffusers' code.
    """
    import torch
    from diffusers import AutoencoderKL
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.upsampling import Upsample2D

    if not isinstance(vae, AutoencoderKL):
        return False  # AutoencoderTiny's decoder is a plain stack of small convolutions
    if vae.dtype != torch.float32:
        return False  # each banded layer would fall back to diffusers' code at run time
    decoder = vae.decoder
    applied = False
    for block in decoder.up_blocks:
        for resnet in block.resnets:
            if type(resnet) is ResnetBlock2D and _plain_resnet(resnet):
                resnet.forward = _BandedResnet(resnet)
                applied = True
        for upsampler in block.upsamplers or []:
            if type(upsampler) is Upsample2D and _plain_upsampler(upsampler):
                upsampler.forward = _BandedUpsample(upsampler)
                applied = True
    if type(decoder.conv_norm_out) is torch.nn.GroupNorm and _plain_conv(decoder.conv_out):
        decoder.forward = _BandedDecoderForward(decoder)
        applied = True
    return applied


def _plain_conv(conv, size: int = 3) -> bool:
    """A stride-1 `size`x`size` conv whose padding keeps the size: the bands carry a one-row
    halo, enough for 3x3 (and 1x1, used only for shortcuts)."""
    import torch

    k = conv.kernel_size
    return (type(conv) is torch.nn.Conv2d and k == (size, size)
            and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding == (k[0] // 2, k[1] // 2) and conv.padding_mode == "zeros")


def _plain_resnet(r) -> bool:
    """A ResnetBlock2D as in the SD VAE: no time embedding, no resampling, GroupNorms."""
    import torch

    return (r.time_emb_proj is None and r.upsample is None and r.downsample is None
            and type(r.norm1) is torch.nn.GroupNorm and type(r.norm2) is torch.nn.GroupNorm
            and _plain_conv(r.conv1) and _plain_conv(r.conv2)
            and (r.conv_shortcut is None or _plain_conv(r.conv_shortcut, 1))
            and r.time_embedding_norm != "scale_shift")  # without temb: norm2 only


def _plain_upsampler(u) -> bool:
    """An Upsample2D doing nearest 2x interpolation then a plain conv."""
    return (u.interpolate and u.use_conv and not u.use_conv_transpose and u.norm is None
            and u.name == "conv" and _plain_conv(u.conv))


def _exact_banding_applies(x) -> bool:
    """Inference on contiguous float32: where the banded result was checked to be exact."""
    import torch

    return x.dtype == torch.float32 and x.is_contiguous() and not torch.is_grad_enabled()


def _row_bands(x, height: int, step: int = 1):
    """(start, end) row ranges covering `height` rows of x's width and channels, `step`-aligned."""
    row_bytes = x.shape[0] * x.shape[1] * x.shape[3] * x.element_size()
    rows = max(step, VAE_BAND_BYTES // max(row_bytes, 1) // step * step)
    return [(a, min(a + rows, height)) for a in range(0, height, rows)]


def _norm_coefficients(norm, x):
    """Per-channel (scale, shift) so that norm(x) == x * scale + shift, bit for bit.

    mean/rstd come from torch's own GroupNorm kernel run on one group at a time (its
    throw-away output is one group's size), then scale/shift are formed as that kernel does
    (fused multiply-adds), so the banded result equals `norm(x)` exactly.
    """
    import torch

    n, c = x.shape[:2]
    g = norm.num_groups
    rows = x.reshape(n * g, -1)  # a view: x is contiguous NCHW, each group's values adjacent
    stats = [torch.native_group_norm(rows[i].view(1, 1, -1), None, None, 1, 1, rows.shape[1],
                                     1, norm.eps)[1:] for i in range(n * g)]
    mean = torch.cat([m.view(1) for m, _ in stats]).view(n, g, 1)
    rstd = torch.cat([r.view(1) for _, r in stats]).view(n, g, 1)
    scale = rstd * norm.weight.view(1, g, -1)
    shift = torch.addcmul(norm.bias.view(1, g, -1), -scale, mean)
    return scale.reshape(n, c, 1, 1), shift.reshape(n, c, 1, 1)


def _conv_band(conv, rows, a: int, b: int, lo: int, hi: int):
    """conv's output rows [a, b) from `rows`, the conv input's rows [lo, hi) (zeros beyond)."""
    import torch.nn.functional as F

    pad = conv.padding[0]
    if lo > a - pad or hi < b + pad:  # the image's top/bottom edge: the conv's zero padding
        rows = F.pad(rows, (0, 0, lo - (a - pad), (b + pad) - hi))
    return F.conv2d(rows, conv.weight, conv.bias, padding=(0, conv.padding[1]))


class _BandedResnet:
    """ResnetBlock2D.forward (no time embedding) computed in row bands; see vae_decode_in_row_bands."""

    def __init__(self, resnet):
        self.r = resnet
        self.original = resnet.forward

    def __call__(self, input_tensor, temb=None, *args, **kwargs):
        import torch

        r = self.r
        x = input_tensor
        if temb is not None or args or kwargs or not _exact_banding_applies(x):
            return self.original(input_tensor, temb, *args, **kwargs)
        n, _, height, width = x.shape
        act = r.nonlinearity
        h = x.new_empty(n, r.conv1.out_channels, height, width)
        scale, shift = _norm_coefficients(r.norm1, x)
        for a, b in _row_bands(x, height):
            lo, hi = max(a - 1, 0), min(b + 1, height)
            h[:, :, a:b] = _conv_band(r.conv1, act(torch.addcmul(shift, x[:, :, lo:hi], scale)),
                                      a, b, lo, hi)
        scale, shift = _norm_coefficients(r.norm2, h)
        above = None  # h's last row of the previous band, as it was before being overwritten
        for a, b in _row_bands(h, height):
            hi = min(b + 1, height)
            raw = h[:, :, a:hi] if above is None else torch.cat([above, h[:, :, a:hi]], dim=2)
            hidden = _conv_band(r.conv2, act(torch.addcmul(shift, raw, scale)), a, b,
                                max(a - 1, 0), hi)
            above = h[:, :, b - 1:b].clone()
            shortcut = x[:, :, a:b]
            if r.conv_shortcut is not None:
                shortcut = _conv_band(r.conv_shortcut, shortcut, a, b, a, b)
            h[:, :, a:b] = (shortcut + hidden) / r.output_scale_factor
        return h


class _BandedUpsample:
    """Upsample2D.forward (nearest 2x, then conv) computed in row bands of its output."""

    def __init__(self, upsampler):
        self.u = upsampler
        self.original = upsampler.forward

    def __call__(self, hidden_states, output_size=None, *args, **kwargs):
        import torch.nn.functional as F

        x = hidden_states
        if output_size is not None or args or kwargs or not _exact_banding_applies(x):
            return self.original(hidden_states, output_size, *args, **kwargs)
        conv = self.u.conv
        n, _, height, width = x.shape
        out = x.new_empty(n, conv.out_channels, 2 * height, 2 * width)
        for a, b in _row_bands(out, 2 * height, step=2):
            lo, hi = max(a - 1, 0), min(b + 1, 2 * height)  # upsampled rows the conv reads
            up = F.interpolate(x[:, :, lo // 2:(hi + 1) // 2], scale_factor=2.0, mode="nearest")
            up = up[:, :, lo - lo // 2 * 2:][:, :, :hi - lo]
            out[:, :, a:b] = _conv_band(conv, up, a, b, lo, hi)
        return out


class _BandedDecoderForward:
    """Decoder.forward with its up-blocks unrolled and GroupNorm -> SiLU -> conv_out in bands."""

    def __init__(self, decoder):
        self.d = decoder
        self.original = decoder.forward

    def __call__(self, sample, latent_embeds=None):
        import torch
        from diffusers.models.resnet import ResnetBlock2D
        from diffusers.models.unets.unet_2d_blocks import UpDecoderBlock2D

        d = self.d
        if latent_embeds is not None or not _exact_banding_applies(sample):
            return self.original(sample, latent_embeds)
        sample = d.conv_in(sample)
        sample = d.mid_block(sample, latent_embeds)
        for up_block in d.up_blocks:
            if type(up_block) is not UpDecoderBlock2D:
                sample = up_block(sample, latent_embeds)
                continue
            # UpDecoderBlock2D.forward, unrolled: called as a module, a block keeps its input
            # (a full-resolution tensor) alive until it returns; here each layer's input is
            # freed as soon as the next layer has its output.
            for layer in [*up_block.resnets, *(up_block.upsamplers or [])]:
                sample = layer(sample, None) if isinstance(layer, ResnetBlock2D) else layer(sample)
        if not sample.is_contiguous():
            sample = sample.contiguous()
        n, _, height, width = sample.shape
        out = sample.new_empty(n, d.conv_out.out_channels, height, width)
        scale, shift = _norm_coefficients(d.conv_norm_out, sample)
        for a, b in _row_bands(sample, height):
            lo, hi = max(a - 1, 0), min(b + 1, height)
            rows = d.conv_act(torch.addcmul(shift, sample[:, :, lo:hi], scale))
            out[:, :, a:b] = _conv_band(d.conv_out, rows, a, b, lo, hi)
        return out
