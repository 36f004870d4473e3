"""The engine on the tiny real pipeline: determinism, fidelity to plain diffusers, previews,
schedulers, load failures."""
import io

import pytest
import torch
from PIL import Image

import engine as engine_module
from engine import Engine, cpu_has_amx_bf16
from params import GenerationRequest


@pytest.fixture
def engine(make_settings):
    e = Engine(make_settings())
    e.load()
    assert e.status.state == "ready", e.status.error
    return e


REQ = GenerationRequest(prompt="a red cube on a table", negative_prompt="blurry", steps=3,
                        guidance_scale=7.5, width=64, height=64)


def test_same_seed_gives_identical_png_bytes(engine):
    a = engine.generate(REQ, seed=1234)
    b = engine.generate(REQ, seed=1234)
    c = engine.generate(REQ, seed=1235)
    assert a.png == b.png
    assert a.png != c.png
    assert a.png.startswith(b"\x89PNG\r\n\x1a\n")
    assert (a.width, a.height, a.seed) == (64, 64, 1234)


def test_matches_plain_diffusers_pipeline(engine, tiny_model_dir):
    """The project's default output equals a plain StableDiffusionPipeline run."""
    from diffusers import StableDiffusionPipeline

    ours = []
    engine.generate(REQ, seed=7, on_step=lambda s, t, lat: ours.append(lat.clone()))
    plain = StableDiffusionPipeline.from_pretrained(str(tiny_model_dir), safety_checker=None,
                                                    requires_safety_checker=False)
    plain.set_progress_bar_config(disable=True)
    ref = plain(prompt=REQ.prompt, negative_prompt=REQ.negative_prompt, num_inference_steps=3,
                guidance_scale=7.5, width=64, height=64,
                generator=torch.Generator("cpu").manual_seed(7), output_type="latent").images
    assert (ours[-1] - ref).abs().max().item() <= 1e-3
    ref_image = plain(prompt=REQ.prompt, negative_prompt=REQ.negative_prompt,
                      num_inference_steps=3, guidance_scale=7.5, width=64, height=64,
                      generator=torch.Generator("cpu").manual_seed(7)).images[0]
    ours_image = Image.open(io.BytesIO(engine.generate(REQ, seed=7).png)).convert("RGB")
    assert list(ours_image.getdata()) == list(ref_image.getdata())


def test_png_carries_a1111_parameters(engine):
    result = engine.generate(REQ, seed=99)
    image = Image.open(io.BytesIO(result.png))
    assert image.info["parameters"] == (
        "a red cube on a table\nNegative prompt: blurry\nSteps: 3, Sampler: PNDM, "
        f"CFG scale: 7.5, Seed: 99, Size: 64x64, Model: {engine.settings.model_id}")


def test_every_step_is_reported_and_callback_can_stop_the_run(engine):
    seen = []
    engine.generate(REQ, seed=1, on_step=lambda s, t, lat: seen.append((s, t, lat.shape)))
    assert [s for s, _, _ in seen] == list(range(1, len(seen) + 1))
    assert seen[-1][0] == seen[-1][1] >= 3  # PNDM runs steps + 1 UNet evaluations
    assert seen[0][2] == (1, 4, 8, 8)

    class Stop(Exception):
        pass

    def stop_at_two(step, total, latents):
        if step == 2:
            raise Stop()

    with pytest.raises(Stop):
        engine.generate(REQ, seed=1, on_step=stop_at_two)


def test_preview_is_a_small_png_of_the_latents(engine):
    latents = torch.zeros(1, 4, 8, 16)
    image = Image.open(io.BytesIO(engine.preview_png(latents)))
    assert image.size == (64, 32) and image.mode == "RGB"
    assert image.getpixel((0, 0)) == (127, 127, 127)  # zero latents -> mid grey
    latents[0, 0] = 1.0  # channel 0 maps to (0.298, 0.207, 0.208)
    pixel = Image.open(io.BytesIO(engine.preview_png(latents))).getpixel((10, 10))
    assert pixel == (165, 153, 154)  # (1 + f) * 127.5, truncated


def test_scheduler_choice_is_per_job_and_leaves_the_shared_pipeline_alone(engine):
    default_class = type(engine.pipe.scheduler)
    euler = engine.generate(GenerationRequest(**{**REQ.to_dict(), "scheduler": "Euler a"}), 5)
    assert type(engine.pipe.scheduler) is default_class
    again = engine.generate(REQ, seed=5)
    assert euler.png != again.png
    assert "Sampler: Euler a" in Image.open(io.BytesIO(euler.png)).info["parameters"]
    assert again.png == engine.generate(REQ, seed=5).png


def test_health_facts_are_honest(engine):
    info = engine.info()
    assert info["device"] == "cpu" and info["dtype"] == "float32"
    assert "sdpa-attention" in info["optimizations"]
    assert "attention-slicing" not in info["optimizations"]
    assert info["torch_threads"] == torch.get_num_threads() == 1


def test_vae_decodes_with_in_place_silu_and_says_so(engine):
    """The pixels stay those of plain diffusers (test above); this checks the change is on."""
    silus = [m for m in engine.pipe.vae.modules() if isinstance(m, torch.nn.SiLU)]
    assert silus and all(m.inplace for m in silus)
    assert "low-memory-vae-decode" in engine.info()["optimizations"]
    assert "vae-decode-in-row-bands" in engine.info()["optimizations"]


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
    engine_module.low_memory_vae_decode(banded)
    engine_module.vae_decode_in_row_bands(banded)
    latents = torch.randn(1, 4, 40, 16, generator=torch.Generator().manual_seed(0)) * 4

    def pixels(image):
        return ((image / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.int16)

    with torch.inference_mode():
        ref = plain.decode(latents).sample
        assert torch.equal(banded.decode(latents).sample, ref)
        monkeypatch.setattr(engine_module, "VAE_BAND_BYTES", 16 * 128 * 4 * 5)  # 4-5 rows
        ours = banded.decode(latents).sample
    assert ours.shape == ref.shape == (1, 3, 320, 128)
    assert (ours - ref).abs().max().item() <= 1e-4
    assert (pixels(ours) - pixels(ref)).abs().max().item() <= 1


def test_attention_slicing_on_is_one_setting_away(make_settings):
    e = Engine(make_settings(ATTENTION_SLICING="on"))
    e.load()
    assert "attention-slicing" in e.info()["optimizations"]
    assert e.generate(REQ, seed=3).png  # still works


def test_bfloat16_loads_and_reports_its_dtype(make_settings):
    e = Engine(make_settings(DTYPE="bfloat16"))
    e.load()
    assert e.status.state == "ready", e.status.error
    assert e.info()["dtype"] == "bfloat16" and "bfloat16" in e.info()["optimizations"]
    assert e.pipe.unet.dtype == torch.bfloat16
    assert e.generate(REQ, seed=3).png.startswith(b"\x89PNG")
    auto = Engine(make_settings(DTYPE="auto"))
    assert auto.resolve_dtype() == (torch.bfloat16 if cpu_has_amx_bf16() else torch.float32)


def test_dtype_auto_picks_bfloat16_only_where_the_cpu_has_amx():
    """bench/results.md: without AMX (even with AVX512-BF16) bf16 was slower than fp32."""
    assert cpu_has_amx_bf16("flags\t: avx512f amx_bf16 amx_tile avx512_bf16")
    assert not cpu_has_amx_bf16("flags\t: avx512f avx512_bf16 avx512_fp16")
    assert not cpu_has_amx_bf16("")


def test_missing_model_fails_with_advice_and_does_not_raise(make_settings, tmp_path):
    e = Engine(make_settings(MODEL_ID=str(tmp_path / "no-such-model")))
    e.load()
    assert e.status.state == "failed"
    assert "MODEL_ID" in e.status.error and "no-such-model" in e.status.error


def test_safety_checker_on_without_one_fails_clearly(make_settings):
    e = Engine(make_settings(SAFETY_CHECKER="on"))
    e.load()
    assert e.status.state == "failed" and "SAFETY_CHECKER" in e.status.error


def test_uncached_hub_model_offline_says_how_to_fix_it(tmp_path):
    """A real from_pretrained of SD v1-4 with an empty cache and the Hub unreachable
    (HF_HUB_OFFLINE=1, in a subprocess so the flag is read fresh)."""
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = ("import json; from config import Settings; from engine import Engine; "
            "e = Engine(Settings.from_env({'TORCH_THREADS': '1'})); e.load(); "
            "print(json.dumps([e.status.state, e.status.error]))")
    env = {"PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    state, error = json.loads(out.stdout.strip().splitlines()[-1])
    assert state == "failed"
    assert "not in the local Hugging Face cache" in error
    assert "hf download CompVis/stable-diffusion-v1-4" in error and "MODEL_ID" in error


def _stat(*cores):
    """A /proc/stat text: one (user, idle) pair of cumulative jiffies per CPU."""
    lines = [f"cpu{i} {user} 0 0 {idle} 0 0 0 0 0 0" for i, (user, idle) in enumerate(cores)]
    return "cpu  0 0 0 0 0 0 0 0 0 0\n" + "\n".join(lines) + "\nintr 0\n"


def test_idle_cores_reads_proc_stat_deltas():
    """/proc/stat texts are supplied: the machine's real load can't be made deterministic."""
    from engine import idle_cores

    before = _stat((100, 100), (100, 100), (100, 100), (100, 100))
    after = _stat((200, 100), (100, 200), (100, 200), (150, 150))  # busy, idle, idle, half
    samples = iter([before, after] * 2)
    assert idle_cores(0, read_stat=lambda: next(samples), cpus={0, 1, 2, 3}) == \
        pytest.approx(2.5)
    # Only the CPUs this process may run on count (e.g. under taskset 0,1).
    assert idle_cores(0, read_stat=lambda: next(samples), cpus={0, 1}) == pytest.approx(1.0)
    samples = iter(["garbage", "garbage"])
    assert idle_cores(0, read_stat=lambda: next(samples), cpus={0}) is None
    real = idle_cores(0.05)  # the real file parses on Linux
    import os

    assert real is None or 0.0 <= real <= os.cpu_count()


def test_adaptive_threads_uses_the_free_cores():
    from engine import adaptive_threads

    assert adaptive_threads(2, 2.0) == 2
    assert adaptive_threads(2, 1.0) == 1  # the other core is busy: one thread is faster
    assert adaptive_threads(2, 1.3) == 2  # a core 30 % free still counts
    assert adaptive_threads(2, 1.2) == 1  # one 20 % free does not
    assert adaptive_threads(8, 3.5) == 4 and adaptive_threads(8, 2.1) == 2
    assert adaptive_threads(2, 0.1) == 1  # never zero
    assert adaptive_threads(4, None) == 4  # unknown: all usable cores


def test_torch_threads_setting_wins_over_adaptive(make_settings):
    assert Engine(make_settings(TORCH_THREADS="3")).threads_for_next_job() == 3
    chosen = Engine(make_settings(TORCH_THREADS="0")).threads_for_next_job()
    from engine import usable_cores

    assert 1 <= chosen <= usable_cores()


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
    engine_module.low_memory_vae_decode(banded)
    engine_module.vae_decode_in_row_bands(banded)
    assert any(r.conv_shortcut is not None for b in banded.decoder.up_blocks for r in b.resnets)
    monkeypatch.setattr(engine_module, "VAE_BAND_BYTES", 32 * 64 * 4 * 3)  # a few rows
    latents = torch.randn(1, 4, 13, 9, generator=torch.Generator().manual_seed(1)) * 4
    with torch.inference_mode():
        ref = plain.decode(latents).sample
        ours = banded.decode(latents).sample
    assert ours.shape == ref.shape == (1, 3, 104, 72)
    assert (ours - ref).abs().max().item() <= 1e-4
    to_pixels = lambda t: ((t / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.int16)  # noqa: E731
    assert (to_pixels(ours) - to_pixels(ref)).abs().max().item() <= 1
