"""engine.vae_bands: the banded, in-place VAE decode gives diffusers' own pixels."""
import torch

from engine import vae_bands


def test_vae_decode_in_row_bands_gives_the_plain_decoders_pixels(tiny_model_dir, monkeypatch):
    """The banded decode equals diffusers' own decode.

    With the engine's band size the tiny model's tensors fit one band and the values are
    bit-identical (on the full-size VAE at 512x512, with 16-32 bands, the PNG was
    byte-identical too: bench/results.md). Forced down to a few rows per band, the tiny
    16-channel convolutions take other oneDNN/torch kernels whose sums round differently:
    floats move by ~1e-6, so a pixel may differ by at most 1 of 255.
    """
    from diffusers import AutoencoderKL

    plain = AutoencoderKL.from_pretrained(str(tiny_model_dir / "vae"))
    banded = AutoencoderKL.from_pretrained(str(tiny_model_dir / "vae"))
    vae_bands.low_memory_vae_decode(banded)
    vae_bands.vae_decode_in_row_bands(banded)
    latents = torch.randn(1, 4, 40, 16, generator=torch.Generator().manual_seed(0)) * 4

    def pixels(image):
        return ((image / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.int16)

    with torch.inference_mode():
        ref = plain.decode(latents).sample
        assert torch.equal(banded.decode(latents).sample, ref)
        monkeypatch.setattr(vae_bands, "VAE_BAND_BYTES", 16 * 128 * 4 * 5)  # 4-5 rows
        ours = banded.decode(latents).sample
    assert ours.shape == ref.shape == (1, 3, 320, 128)
    assert (ours - ref).abs().max().item() <= 1e-4
    assert (pixels(ours) - pixels(ref)).abs().max().item() <= 1


def test_vae_row_bands_with_shortcut_convs_and_odd_sizes(monkeypatch):
    """A VAE whose channel counts change between blocks (so resnets have 1x1 shortcut convs,
    as in SD's), decoded in small bands at an odd, non-square latent size: within float
    rounding of diffusers' own decode and at most 1/255 per pixel."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    config = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                  block_out_channels=(8, 16, 24, 32), norm_num_groups=8,
                  down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4)
    plain = AutoencoderKL(**config).eval()
    banded = AutoencoderKL(**config).eval()
    banded.load_state_dict(plain.state_dict())
    vae_bands.low_memory_vae_decode(banded)
    vae_bands.vae_decode_in_row_bands(banded)
    assert any(r.conv_shortcut is not None for b in banded.decoder.up_blocks for r in b.resnets)
    monkeypatch.setattr(vae_bands, "VAE_BAND_BYTES", 32 * 64 * 4 * 3)  # a few rows
    latents = torch.randn(1, 4, 13, 9, generator=torch.Generator().manual_seed(1)) * 4
    with torch.inference_mode():
        ref = plain.decode(latents).sample
        ours = banded.decode(latents).sample
    assert ours.shape == ref.shape == (1, 3, 104, 72)
    assert (ours - ref).abs().max().item() <= 1e-4
    to_pixels = lambda t: ((t / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.int16)  # noqa: E731
    assert (to_pixels(ours) - to_pixels(ref)).abs().max().item() <= 1


def test_row_bands_do_not_apply_to_a_bf16_vae(tiny_model_dir):
    """They would fall back to diffusers' code at run time: say so, so /health can't list them."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(tiny_model_dir / "vae"), dtype=torch.bfloat16)
    assert vae_bands.vae_decode_in_row_bands(vae) is False
    fp32 = AutoencoderKL.from_pretrained(str(tiny_model_dir / "vae"))
    assert vae_bands.vae_decode_in_row_bands(fp32) is True
