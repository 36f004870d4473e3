"""ESRGAN-family upscalers (catalog/upscalers.py, engine/rrdbnet.py, engine/upscalers.py) on
random-weight state dicts of the real architectures (tests/random_upscaler.py), saved as the
files users download, in a temporary MODELS_DIR."""
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from catalog.upscalers import describe_rrdbnet, find_upscaler, list_upscalers, upscaler_names
from engine import upscalers
from engine.rrdbnet import RRDBNet, canonical_key, load_rrdbnet, read_state
from tests.random_upscaler import (full_x4plus_shapes, old_esrgan_state, real_esrgan_state,
                                   reference_old_esrgan, reference_real_esrgan)


class NotATensor:
    """Something a weights_only load must refuse to unpickle."""


def picture(width=24, height=20, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def as_input(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]


def as_pixels(out: torch.Tensor) -> np.ndarray:
    return out[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.fixture
def models_dir(tmp_path):
    """MODELS_DIR with the three layouts as .pth and .safetensors, and some bad files."""
    esrgan, real = tmp_path / "ESRGAN", tmp_path / "RealESRGAN"
    esrgan.mkdir()
    real.mkdir()
    torch.save(old_esrgan_state(4, seed=1), esrgan / "4x-Old.pth")
    # torch's pre-1.6 format, which most 2018-2019 ESRGAN files are in
    torch.save(old_esrgan_state(2, seed=6), esrgan / "2x-Legacy.pth",
               _use_new_zipfile_serialization=False)
    torch.save({"x": NotATensor()}, esrgan / "evil-legacy.pth",
               _use_new_zipfile_serialization=False)
    save_file(old_esrgan_state(2, seed=2), str(esrgan / "2x-OldSafe.safetensors"))
    torch.save({"params_ema": real_esrgan_state(4, seed=3),
                "params": real_esrgan_state(4, seed=9)}, real / "RealESRGAN_x4plus.pth")
    save_file(real_esrgan_state(2, seed=4), str(real / "RealESRGAN_x2plus.safetensors"))
    (esrgan / "broken.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    (esrgan / "garbage.pth").write_bytes(b"not a checkpoint at all")
    torch.save({"params_ema": real_esrgan_state(4, seed=5), "extra": NotATensor()},
               esrgan / "evil.pth")
    save_file({"body.0.weight": torch.zeros(4, 3, 3, 3)}, str(esrgan / "compact.safetensors"))
    torch.save({"params": {"body.0.weight": torch.zeros(4, 3, 3, 3)}}, real / "general.pth")
    return tmp_path


@pytest.fixture
def settings(make_settings, models_dir):
    upscalers.unload_upscaler()
    yield make_settings(MODELS_DIR=str(models_dir))
    upscalers.unload_upscaler()


def test_the_full_size_x4plus_key_set_is_recognised():
    shapes = full_x4plus_shapes()
    spec = describe_rrdbnet(shapes)
    assert (spec.layout, spec.scale, spec.num_block, spec.num_feat, spec.num_grow) == (
        "real-esrgan", 4, 23, 64, 32)
    with torch.device("meta"):
        net = RRDBNet(spec)
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert {canonical_key(k, spec): v for k, v in shapes.items()} == ours
    assert sum(int(np.prod(s)) for s in shapes.values()) == 16_697_987  # the real file's count


@pytest.mark.parametrize("build, scale, layout, unshuffle", [
    (old_esrgan_state, 4, "esrgan", 1), (old_esrgan_state, 2, "esrgan", 1),
    (old_esrgan_state, 8, "esrgan", 1), (real_esrgan_state, 4, "real-esrgan", 1),
    (real_esrgan_state, 2, "real-esrgan", 2), (real_esrgan_state, 1, "real-esrgan", 4)])
def test_the_scale_and_sizes_are_read_from_the_keys(build, scale, layout, unshuffle):
    spec = describe_rrdbnet({k: tuple(v.shape) for k, v in
                             build(scale, num_block=3, num_feat=12, num_grow=6).items()})
    assert (spec.layout, spec.scale, spec.unshuffle) == (layout, scale, unshuffle)
    assert (spec.num_block, spec.num_feat, spec.num_grow, spec.in_channels) == (3, 12, 6, 3)


def test_the_listing_reads_safetensors_headers_and_checks_pickles(settings):
    entries = {e.path.name: e for e in list_upscalers(settings)}
    assert entries["RealESRGAN_x4plus.pth"].name == "R-ESRGAN 4x+"  # A1111's name for it
    assert entries["RealESRGAN_x2plus.safetensors"].scale == 2  # from the header's shapes
    assert entries["2x-OldSafe.safetensors"].scale == 2
    assert entries["4x-Old.pth"].scale == 4  # a .pth's scale only from its name
    assert not any(entries[n].problem for n in ("4x-Old.pth", "RealESRGAN_x4plus.pth",
                                                "RealESRGAN_x2plus.safetensors"))
    assert "safetensors header" in entries["broken.safetensors"].problem
    assert "not a PyTorch checkpoint" in entries["garbage.pth"].problem
    assert entries["2x-Legacy.pth"].problem == "" and entries["2x-Legacy.pth"].scale == 2
    assert "NotATensor" in entries["evil-legacy.pth"].problem
    assert "NotATensor" in entries["evil.pth"].problem and "refused" in entries["evil.pth"].problem
    assert "SRVGGNetCompact" in entries["compact.safetensors"].problem
    assert "SRVGGNetCompact" in entries["general.pth"].problem  # from the pickle's names
    names = upscaler_names(settings)
    assert names[:5] == ["None", "Lanczos", "Nearest", "Bicubic", "Bilinear"]
    assert "evil" not in names and "R-ESRGAN 4x+" in names and "4x-Old" in names
    assert find_upscaler(settings, "realesrgan_x4plus").name == "R-ESRGAN 4x+"


def test_weights_only_refuses_a_pickled_object(models_dir):
    with pytest.raises(ValueError, match="cannot be read safely.*Unpickling"):
        read_state(models_dir / "ESRGAN" / "evil.pth")


@pytest.mark.parametrize("file, scale, reference", [
    ("ESRGAN/4x-Old.pth", 4, lambda s, x: reference_old_esrgan(s, x)),
    ("ESRGAN/2x-OldSafe.safetensors", 2, lambda s, x: reference_old_esrgan(s, x)),
    ("ESRGAN/2x-Legacy.pth", 2, lambda s, x: reference_old_esrgan(s, x)),
    ("RealESRGAN/RealESRGAN_x4plus.pth", 4, lambda s, x: reference_real_esrgan(s, x, 4)),
    ("RealESRGAN/RealESRGAN_x2plus.safetensors", 2,
     lambda s, x: reference_real_esrgan(s, x, 2))])
def test_the_net_gives_the_published_architectures_output(models_dir, file, scale, reference):
    """Our RRDBNet with a file's weights = the published forward over the file's own keys
    (params_ema, not params, for Real-ESRGAN's .pth)."""
    path = models_dir / file
    state = read_state(path)
    net = load_rrdbnet(path)
    x = as_input(picture())
    with torch.inference_mode():
        ours, theirs = net(x), reference(state, x)
    assert ours.shape == (1, 3, 20 * scale, 24 * scale)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_upscale_image_runs_the_model_to_the_exact_size(settings, models_dir):
    source = picture()
    state = read_state(models_dir / "RealESRGAN" / "RealESRGAN_x4plus.pth")
    direct = as_pixels(reference_real_esrgan(state, as_input(source), 4))
    out = upscalers.upscale_image(source, "R-ESRGAN 4x+", (96, 80), settings)
    assert out.size == (96, 80) and out.mode == "RGB"
    assert np.abs(np.asarray(out, dtype=int) - direct).max() <= 1  # the net ran, untouched
    lanczos = np.asarray(source.resize((96, 80), Image.Resampling.LANCZOS), dtype=int)
    assert np.abs(np.asarray(out, dtype=int) - lanczos).mean() > 5
    # Another size: one model pass, then Lanczos to exactly that size; the model stays loaded.
    assert upscalers.upscale_image(source, "R-ESRGAN 4x+", (61, 33), settings).size == (61, 33)
    assert upscalers.loaded_upscaler().endswith("RealESRGAN_x4plus.pth")


def test_a_bigger_scale_than_the_models_runs_it_again(settings, monkeypatch):
    calls = []
    real = upscalers.run_tiled
    monkeypatch.setattr(upscalers, "run_tiled", lambda net, image, **kw: calls.append(
        image.size) or real(net, image, **kw))
    out = upscalers.upscale_image(picture(10, 8), "RealESRGAN_x2plus", (70, 56), settings)
    assert out.size == (70, 56) and calls == [(10, 8), (20, 16), (40, 32)]


def test_x2_pixel_unshuffle_takes_odd_sizes_and_alpha(settings):
    source = picture(13, 9).convert("RGBA")
    out = upscalers.upscale_image(source, "RealESRGAN_x2plus", (26, 18), settings)
    assert out.size == (26, 18) and out.mode == "RGBA"


def test_dtype_bfloat16_runs_the_model_under_bf16_autocast(make_settings, models_dir, caplog):
    source = picture()
    exact = upscalers.upscale_image(source, "4x-Old", (96, 80),
                                    make_settings(MODELS_DIR=str(models_dir), DTYPE="float32"))
    with caplog.at_level("INFO", logger="engine.upscalers"):
        bf16 = upscalers.upscale_image(source, "4x-Old", (96, 80), make_settings(
            MODELS_DIR=str(models_dir), DTYPE="bfloat16"))
    assert "bf16" in caplog.text
    diff = np.abs(np.asarray(exact, dtype=int) - np.asarray(bf16, dtype=int))
    assert 0 < diff.mean() < 2  # ran in bf16: close, not equal
    upscalers.unload_upscaler()


def test_tiles_give_the_untiled_picture(settings, models_dir):
    net = load_rrdbnet(models_dir / "ESRGAN" / "4x-Old.pth")
    source = picture(50, 37)
    whole = np.asarray(upscalers.run_tiled(net, source, tile=1024), dtype=int)
    tiled = np.asarray(upscalers.run_tiled(net, source, tile=16, overlap=16), dtype=int)
    assert whole.shape == (148, 200, 3) and np.abs(whole - tiled).max() <= 1
    x2 = load_rrdbnet(models_dir / "RealESRGAN" / "RealESRGAN_x2plus.safetensors")
    whole = np.asarray(upscalers.run_tiled(x2, source, tile=1024), dtype=int)
    tiled = np.asarray(upscalers.run_tiled(x2, source, tile=15, overlap=15), dtype=int)
    assert whole.shape == (74, 100, 3) and np.abs(whole - tiled).max() <= 1


def test_one_model_is_kept_and_can_be_dropped(settings):
    upscalers.upscale_image(picture(8, 8), "4x-Old", (32, 32), settings)
    first = upscalers._loaded[1]
    upscalers.upscale_image(picture(8, 8), "4x-Old", (32, 32), settings)
    assert upscalers._loaded[1] is first  # loaded once
    upscalers.upscale_image(picture(8, 8), "2x-OldSafe", (16, 16), settings)
    assert upscalers.loaded_upscaler().endswith("2x-OldSafe.safetensors")
    assert upscalers.unload_upscaler() and upscalers.loaded_upscaler() is None
    assert not upscalers.unload_upscaler()


@pytest.mark.parametrize("name, message", [
    ("nope", "not available"), ("evil", "refused"), ("broken", "safetensors header")])
def test_a_name_we_cannot_use_says_why(settings, name, message):
    with pytest.raises(upscalers.UnknownUpscaler, match=message):
        upscalers.upscale_image(picture(), name, (48, 40), settings)


def test_pillow_resamplers_need_no_model(settings):
    source = picture()
    for name in ("Lanczos", "Nearest", "Bicubic", "Bilinear", "None"):
        assert upscalers.upscale_image(source, name, (50, 41), settings).size == (50, 41)
    assert upscalers.upscale_image(source, "None", source.size, settings) is source
    assert upscalers.loaded_upscaler() is None


def test_running_out_of_memory_is_a_request_error(settings, monkeypatch):
    """A fake allocation failure (a real one would need more RAM than this box has)."""
    def no_memory(net, image, **kw):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate")

    monkeypatch.setattr(upscalers, "run_tiled", no_memory)
    with pytest.raises(upscalers.UpscaleTooBig, match="out of memory upscaling 24x20 to 96x80"):
        upscalers.upscale_image(picture(), "4x-Old", (96, 80), settings)
