"""The engine on the tiny real pipeline: determinism, fidelity to plain diffusers, previews,
schedulers, load failures."""
import io

import pytest
import torch
from PIL import Image

from engine import Engine
from engine.generation import user_step
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
        "CFG scale: 7.5, Seed: 99, Size: 64x64, Model: tiny")  # MODEL_ID's name, not its path


def test_every_step_is_reported_and_callback_can_stop_the_run(engine):
    seen = []
    engine.generate(REQ, seed=1, on_step=lambda s, t, lat: seen.append((s, t, lat.shape)))
    assert seen[0][2] == (1, 4, 8, 8)
    assert {t for _, t, _ in seen} == {3}  # the steps the user asked for
    assert seen[-1][0] == 3

    class Stop(Exception):
        pass

    def stop_at_two(step, total, latents):
        if step == 2:
            raise Stop()

    with pytest.raises(Stop):
        engine.generate(REQ, seed=1, on_step=stop_at_two)


@pytest.mark.parametrize("scheduler", ["default", "Euler", "DPM++ 2M"])
def test_steps_are_counted_as_the_user_asked_for_them(engine, scheduler):
    """PNDM (the default) runs 9 UNet calls for 8 steps; the user must see 'step n of 8'."""
    req = GenerationRequest(**{**REQ.to_dict(), "steps": 8, "scheduler": scheduler})
    seen = []
    engine.generate(req, seed=1, on_step=lambda s, t, lat: seen.append((s, t)))
    steps = [s for s, _ in seen]
    assert {t for _, t in seen} == {8}
    assert steps == sorted(steps) and steps[0] >= 1 and steps[-1] == 8
    assert set(steps) == set(range(1, 9))  # every step shows, none beyond the last


def test_user_step_maps_the_pipelines_count_onto_the_asked_steps():
    assert [user_step(i, 9, 8) for i in range(1, 10)] == [1, 2, 3, 4, 5, 6, 7, 8, 8]
    assert [user_step(i, 3, 3) for i in range(1, 4)] == [1, 2, 3]


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


def test_attention_slicing_on_is_one_setting_away(make_settings):
    e = Engine(make_settings(ATTENTION_SLICING="on"))
    e.load()
    assert "attention-slicing" in e.info()["optimizations"]
    assert e.generate(REQ, seed=3).png  # still works


def test_bfloat16_loads_memory_mapped_from_its_cache(make_settings, tmp_path):
    """The first bf16 load writes the bf16 weights once; they are then file-backed (mapped
    from the cache's safetensors), and a second load reuses them without converting."""
    e = Engine(make_settings(DTYPE="bfloat16", BF16_CACHE_DIR=str(tmp_path)))
    e.load()
    assert e.status.state == "ready", e.status.error
    info = e.info()
    assert info["dtype"] == "bfloat16" and "mmap-bf16-weights-cache" in info["optimizations"]
    assert e.pipe.unet.dtype == torch.bfloat16 and e.pipe.text_encoder.dtype == torch.bfloat16
    assert e.pipe.vae.dtype == torch.float32  # banded, exact decode; listed as such
    assert "vae-decode-in-row-bands" in info["optimizations"]
    shards = sorted(tmp_path.glob("*/shard-*.safetensors"))
    assert len({p.parent for p in shards}) == 2  # unet and text encoder
    maps = open("/proc/self/maps").read()
    assert all(str(p) in maps for p in shards), "bf16 weights are not memory-mapped"
    assert e.generate(REQ, seed=3).png.startswith(b"\x89PNG")
    before = {p: p.stat().st_mtime_ns for p in shards}
    again = Engine(make_settings(DTYPE="bfloat16", BF16_CACHE_DIR=str(tmp_path)))
    again.load()
    assert again.status.state == "ready"
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/shard-*.safetensors")} == before
    assert again.generate(REQ, seed=3).png == e.generate(REQ, seed=3).png


def test_bfloat16_cache_is_rebuilt_when_the_model_changes(make_settings, tiny_model_dir,
                                                         tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    cache = tmp_path / "cache"
    Engine(make_settings(MODEL_ID=str(model), DTYPE="bfloat16", BF16_CACHE_DIR=str(cache))).load()
    first = {p.name for p in cache.iterdir()}
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes())  # same bytes, new file: must not be trusted
    Engine(make_settings(MODEL_ID=str(model), DTYPE="bfloat16", BF16_CACHE_DIR=str(cache))).load()
    second = {p.name for p in cache.iterdir()}
    assert len(first) == 2 and len(second) == 3  # a new unet copy; the text encoder's reused
    assert not any(".partial" in name for name in second)


def test_dtype_auto_follows_the_probe_and_float32_gets_a_hint(make_settings):
    from engine.cpu import PrecisionProbe
    from engine.slot import precision_hint

    fast = PrecisionProbe({}, {}, bf16_speedup=1.8, threads=2, seconds=0.5)
    slow = PrecisionProbe({}, {}, bf16_speedup=0.7, threads=2, seconds=0.5)
    auto = Engine(make_settings(DTYPE="auto"))
    assert auto.choose_bf16(fast) and not auto.choose_bf16(slow)
    assert not Engine(make_settings(DTYPE="float32")).choose_bf16(fast)
    assert Engine(make_settings(DTYPE="bfloat16")).choose_bf16(slow)
    assert precision_hint(make_settings(DTYPE="float32"), fast) == (
        "this CPU runs bfloat16 about 1.8x faster: set DTYPE=auto; pixels change slightly")
    assert precision_hint(make_settings(DTYPE="float32"), slow) == ""
    assert precision_hint(make_settings(DTYPE="auto"), fast) == ""


def test_health_shows_the_measured_precision_choice(engine):
    precision = engine.info()["precision"]
    assert precision["chosen"] == "float32"  # DTYPE=float32, the default
    assert precision["bf16_speedup"] > 0 and precision["threshold"] == 1.3
    assert set(precision["conv_gflops"]) == {"float32", "bfloat16"}
    assert all(v > 0 for v in precision["gemm_gflops"].values())
    assert precision["seconds"] > 0  # reported; how long is the benchmark's business


def test_missing_model_fails_with_advice_and_does_not_raise(make_settings, tmp_path):
    e = Engine(make_settings(MODEL_ID=str(tmp_path / "no-such-model")))
    e.load()
    assert e.status.state == "failed"
    assert "MODEL_ID" in e.status.error and "no-such-model" in e.status.error


def test_load_failure_logs_its_traceback(make_settings, tmp_path, caplog):
    (tmp_path / "model_index.json").write_text("{ not json")
    e = Engine(make_settings(MODEL_ID=str(tmp_path)))
    with caplog.at_level("ERROR", logger="engine.slot"):
        e.load()
    assert e.status.state == "failed"
    [record] = [r for r in caplog.records if "model load failed" in r.getMessage()]
    assert record.exc_info and record.exc_info[0] is not None  # the traceback is logged


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


def test_torch_threads_setting_wins_over_adaptive(make_settings):
    assert Engine(make_settings(TORCH_THREADS="3")).threads_for_next_job() == 3
    chosen = Engine(make_settings(TORCH_THREADS="0")).threads_for_next_job()
    from engine import usable_cores

    assert 1 <= chosen <= usable_cores()
