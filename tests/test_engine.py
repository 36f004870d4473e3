"""The engine on the tiny real pipeline: determinism, fidelity to plain diffusers, previews,
schedulers, load failures."""
import io

import pytest
import torch
from PIL import Image

from engine import Engine, cpu_has_amx_bf16
from engine.pipeline import user_step
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


def test_bfloat16_loads_and_reports_its_dtype(make_settings):
    e = Engine(make_settings(DTYPE="bfloat16"))
    e.load()
    assert e.status.state == "ready", e.status.error
    assert e.info()["dtype"] == "bfloat16" and "bfloat16" in e.info()["optimizations"]
    # The banded decode is exact only in float32 and never runs on a bf16 VAE: not listed.
    assert "vae-decode-in-row-bands" not in e.info()["optimizations"]
    assert e.pipe.unet.dtype == torch.bfloat16
    assert e.generate(REQ, seed=3).png.startswith(b"\x89PNG")
    auto = Engine(make_settings(DTYPE="auto"))
    assert auto.resolve_dtype() == (torch.bfloat16 if cpu_has_amx_bf16() else torch.float32)


def test_missing_model_fails_with_advice_and_does_not_raise(make_settings, tmp_path):
    e = Engine(make_settings(MODEL_ID=str(tmp_path / "no-such-model")))
    e.load()
    assert e.status.state == "failed"
    assert "MODEL_ID" in e.status.error and "no-such-model" in e.status.error


def test_load_failure_logs_its_traceback(make_settings, tmp_path, caplog):
    (tmp_path / "model_index.json").write_text("{ not json")
    e = Engine(make_settings(MODEL_ID=str(tmp_path)))
    with caplog.at_level("ERROR", logger="engine.pipeline"):
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
