"""img2img and inpainting on the tiny real pipeline: shared weights, fidelity to plain
diffusers, determinism, the mask, speed options, step counting."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from params import GenerationRequest


@pytest.fixture(scope="module")
def engine(tiny_engine):
    return tiny_engine


def two_colours(flip: bool = False) -> Image.Image:
    """A 64x64 input image: red left half, green right half (mirrored with `flip`)."""
    array = np.zeros((64, 64, 3), np.uint8)
    left, right = (200, 30, 30), (20, 200, 40)
    array[:, :32], array[:, 32:] = (right, left) if flip else (left, right)
    return Image.fromarray(array)


def centre_mask() -> Image.Image:
    """White (repaint) 32x32 square in the middle of a black 64x64 mask."""
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


TXT = GenerationRequest(prompt="a red cube", negative_prompt="blurry", steps=4, width=64,
                        height=64)
IMG = GenerationRequest(**{**TXT.to_dict(), "init_image": two_colours(), "mask_image": None,
                           "strength": 0.75})
INPAINT = GenerationRequest(**{**IMG.to_dict(), "init_image": two_colours(),
                               "mask_image": centre_mask(), "strength": 1.0, "mask_blur": 0})


def pixels(result) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(result.png)).convert("RGB")).astype(float)


@pytest.mark.parametrize("mode,scheduler", [("img2img", "default"), ("inpaint", "default"),
                                            ("img2img", "Heun"), ("txt2img", "UniPC")])
def test_views_share_the_loaded_modules_and_leave_the_pipeline_alone(engine, mode, scheduler):
    """No weight copy: the view's modules are the loaded objects themselves (identity)."""
    view = engine._pipeline_for(mode, scheduler)
    assert view is not engine.pipe
    for name in ("unet", "vae", "text_encoder", "tokenizer"):
        assert getattr(view, name) is getattr(engine.pipe, name), name
    assert view.scheduler is not engine.pipe.scheduler
    assert type(view).__name__ == {"img2img": "StableDiffusionImg2ImgPipeline",
                                   "inpaint": "StableDiffusionInpaintPipeline",
                                   "txt2img": "StableDiffusionPipeline"}[mode]
    assert engine._pipeline_for("txt2img", "default") is engine.pipe


def test_img2img_matches_plain_diffusers_img2img(engine, tiny_model_dir):
    from diffusers import StableDiffusionImg2ImgPipeline

    plain = StableDiffusionImg2ImgPipeline.from_pretrained(
        str(tiny_model_dir), safety_checker=None, requires_safety_checker=False)
    plain.set_progress_bar_config(disable=True)
    ref = plain(prompt=IMG.prompt, negative_prompt=IMG.negative_prompt, image=two_colours(),
                strength=0.75, num_inference_steps=4, guidance_scale=IMG.guidance_scale,
                generator=torch.Generator("cpu").manual_seed(3)).images[0]
    ours = pixels(engine.generate(IMG, seed=3))
    assert np.array_equal(ours, np.asarray(ref).astype(float))


def test_same_seed_same_bytes_and_modes_differ(engine):
    txt, img, inpaint = (engine.generate(r, seed=11) for r in (TXT, IMG, INPAINT))
    assert engine.generate(IMG, seed=11).png == img.png
    assert engine.generate(INPAINT, seed=11).png == inpaint.png
    assert len({txt.png, img.png, inpaint.png}) == 3
    assert engine.generate(IMG, seed=12).png != img.png
    info = Image.open(io.BytesIO(inpaint.png)).info["parameters"]
    assert "Denoising strength: 1" in info and "Mask blur: 0" in info


def test_the_lower_the_strength_the_more_the_input_decides(engine):
    """The tiny model's VAE is random, so no output resembles its input by eye; what
    strength controls is still measurable: how much the output moves when the input image
    changes (at strength 1 only ~7% of the input's latents survive the noise)."""
    def input_effect(strength: float) -> float:
        a, b = (pixels(engine.generate(GenerationRequest(**{
            **IMG.to_dict(), "init_image": two_colours(flip), "steps": 20,
            "strength": strength}), seed=5)) for flip in (False, True))
        return float(np.abs(a - b).mean())

    low, high = input_effect(0.05), input_effect(1.0)
    assert low > 5 * high and low > 2.0


def test_inpainting_keeps_the_outside_and_repaints_the_inside(engine):
    out = pixels(engine.generate(INPAINT, seed=4))
    source = np.asarray(two_colours()).astype(float)
    inside = np.asarray(centre_mask()) > 127
    assert np.abs(out - source)[~inside].max() == 0  # the input's own pixels
    assert np.abs(out - source)[inside].mean() > 20


def test_mask_blur_blends_the_edge(engine):
    from params import uploads

    mask = uploads.prepare_mask(centre_mask(), two_colours(), "mask_image", 64, 64, 0, 4, False)
    blurred = GenerationRequest(**{**INPAINT.to_dict(), "init_image": two_colours(),
                                   "mask_image": mask, "mask_blur": 4})
    out = pixels(engine.generate(blurred, seed=4))
    sharp = pixels(engine.generate(INPAINT, seed=4))
    source = np.asarray(two_colours()).astype(float)
    edge = (slice(14, 18), slice(20, 44))  # rows across the top edge of the square
    assert np.abs(out - source)[edge].mean() > 0
    assert not np.array_equal(out[edge], sharp[edge])
    untouched = np.asarray(mask) == 0  # beyond the blur's reach
    assert untouched.sum() > 1000 and np.abs(out - source)[untouched].max() == 0


def count_unet_batches(engine, request, seed=1):
    """Run `request`, returning the UNet's input batch size at each call and the steps seen."""
    batches, seen = [], []
    hook = engine.pipe.unet.register_forward_pre_hook(
        lambda _module, args: batches.append(args[0].shape[0]))
    try:
        result = engine.generate(request, seed, on_step=lambda s, t, lat: seen.append(
            (s, t, tuple(lat.shape))))
    finally:
        hook.remove()
    return batches, seen, result


def test_inpainting_with_cfg_cutoff_and_deep_cache(engine):
    """Guidance stops half way: the mask tensors are cut with the embeddings, so the UNet
    runs at batch 1 and the latents stay one image."""
    request = GenerationRequest(**{**INPAINT.to_dict(), "init_image": two_colours(),
                                   "mask_image": centre_mask(), "cfg_cutoff": 0.5,
                                   "deep_cache": 2})
    batches, seen, result = count_unet_batches(engine, request)
    assert batches == [2, 2, 2, 1, 1]  # PNDM: 5 calls for 4 steps, cut after int(5 x 0.5)
    assert all(shape == (1, 4, 8, 8) for _, _, shape in seen)
    plain = engine.generate(INPAINT, seed=1)
    assert result.png != plain.png
    source = np.asarray(two_colours()).astype(float)
    assert np.abs(pixels(result) - source)[:16].max() == 0


@pytest.mark.parametrize("scheduler", ["default", "Heun", "DPM2 a", "UniPC"])
@pytest.mark.parametrize("request_", [IMG, INPAINT], ids=["img2img", "inpaint"])
def test_steps_count_the_denoising_steps_asked(engine, scheduler, request_):
    """steps x strength steps run; Heun/DPM2 call the UNet ~2x a step, PNDM once more: the
    user sees 'step n of <steps x strength>', every one of them, never beyond."""
    request = GenerationRequest(**{**request_.to_dict(), "init_image": two_colours(),
                                   "mask_image": request_.mask_image, "steps": 4,
                                   "strength": 0.75, "scheduler": scheduler})
    batches, seen, _ = count_unet_batches(engine, request)
    asked = request.denoising_steps
    assert asked == 3
    assert {t for _, t, _ in seen} == {asked}
    steps = [s for s, _, _ in seen]
    assert steps == sorted(steps) and set(steps) == set(range(1, asked + 1))
    if scheduler in ("Heun", "DPM2 a"):
        assert len(batches) >= 2 * asked - 1
