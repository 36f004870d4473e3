"""engine.speedups on the tiny real pipeline: CFG cutoff and DeepCache are off by default,
give exactly the default image when set to their 'off' values, and otherwise do less UNet
work, deterministically."""
import pytest

from engine import Engine
from engine.speedups import DeepCache, cfg_cutoff_step
from params import GenerationRequest

REQ = GenerationRequest(prompt="a red cube on a table", negative_prompt="blurry", steps=6,
                        guidance_scale=7.5, width=64, height=64, scheduler="DPM++ 2M")


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory):
    from config import Settings
    from tests.conftest import BASE_ENV

    e = Engine(Settings.from_env({**BASE_ENV, "MODEL_ID": str(tiny_model_dir)}))
    e.load()
    assert e.status.state == "ready", e.status.error
    return e


def with_(**changes) -> GenerationRequest:
    return GenerationRequest(**{**REQ.to_dict(), **changes})


def unet_batches(engine, request, seed=1) -> tuple[bytes, list[int]]:
    """The PNG and the batch size of every call of the UNet's first ResNet (spied, not
    changed); DeepCache skips it on cached steps, along with everything deeper."""
    unet = engine.pipe.unet
    batches = []
    hook = unet.down_blocks[0].resnets[0].register_forward_hook(
        lambda module, args, out: batches.append(out.shape[0]))
    try:
        png = engine.generate(request, seed).png
    finally:
        hook.remove()
    return png, batches


def test_off_values_give_exactly_the_default_image(engine):
    default = engine.generate(REQ, 11).png
    assert engine.generate(with_(cfg_cutoff=1.0), 11).png == default
    assert engine.generate(with_(deep_cache=1), 11).png == default


def test_cfg_cutoff_runs_the_rest_at_batch_one(engine):
    default, full = unet_batches(engine, REQ)
    cut, batches = unet_batches(engine, with_(cfg_cutoff=0.5))
    assert full == [2] * 6
    assert batches == [2, 2, 2, 2, 1, 1]  # guidance stops after step index 3 (as diffusers)
    assert cut != default
    assert unet_batches(engine, with_(cfg_cutoff=0.5))[0] == cut  # same seed, same bytes
    assert unet_batches(engine, REQ)[0] == default  # the shared pipeline is unchanged


def test_cfg_cutoff_step_matches_diffusers_callback():
    assert cfg_cutoff_step(0.5, 6) == 3 and cfg_cutoff_step(0.4, 25) == 10
    assert cfg_cutoff_step(1.0, 25) is None  # never: off


def test_deep_cache_runs_the_deep_blocks_every_nth_step_only(engine):
    default, full = unet_batches(engine, REQ)
    shallow = []  # the last up-block's last ResNet: the branch that runs at every step
    hook = engine.pipe.unet.up_blocks[-1].resnets[-1].register_forward_hook(
        lambda module, args, out: shallow.append(out.shape[0]))
    try:
        cached, deep_calls = unet_batches(engine, with_(deep_cache=3))
    finally:
        hook.remove()
    assert len(full) == 6 and len(deep_calls) == 2  # steps 1 and 4 run in full
    assert len(shallow) == 6  # ... and the shallow branch runs at every step
    assert cached != default
    assert engine.generate(with_(deep_cache=3), 1).png == cached  # deterministic
    assert engine.generate(REQ, 1).png == default  # unwrapped afterwards


def test_deep_cache_keeps_the_conditional_half_when_guidance_stops(engine):
    """Steps 1 and 4 run in full at batch 2; guidance stops after step 4 and steps 5-6 reuse
    the positive half of step 4's features instead of paying for another full call."""
    png, deep_calls = unet_batches(engine, with_(deep_cache=3, cfg_cutoff=0.5))
    assert deep_calls == [2, 2]
    assert engine.generate(with_(deep_cache=3, cfg_cutoff=0.5), 1).png == png
    assert png != engine.generate(with_(deep_cache=3), 1).png


def test_deep_cache_restores_every_forward_on_error(engine):
    unet = engine.pipe.unet
    before = {id(m): m.__dict__.get("forward") for m in unet.modules()}
    with pytest.raises(RuntimeError):
        with DeepCache(unet, 2):
            raise RuntimeError("boom")
    assert {id(m): m.__dict__.get("forward") for m in unet.modules()} == before


@pytest.mark.parametrize("changes", [dict(), dict(cfg_cutoff=0.5), dict(deep_cache=2),
                                     dict(scheduler="DPM++ 2M Karras", steps=4)])
def test_same_seed_same_bytes_in_every_mode(engine, changes):
    req = with_(**changes)
    assert engine.generate(req, 99).png == engine.generate(req, 99).png
