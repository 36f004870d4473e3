"""Real A1111 clients against a live waitress server on the tiny pipeline: webuiapi's
img2img (with and without a mask) and LibreChat's Stable Diffusion tool flow."""
import base64
import io
import json

import requests
import webuiapi
from PIL import Image, ImageChops, ImageDraw


def webui(server, **kwargs) -> webuiapi.WebUIApi:
    """A webuiapi client of a live server."""
    port = int(server.url.rsplit(":", 1)[1])
    return webuiapi.WebUIApi(host="127.0.0.1", port=port, **kwargs)


def picture(size: int = 64) -> Image.Image:
    """An input image with structure (a gradient and a disc), so pixels can be compared."""
    image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, size * 3 // 4, size * 3 // 4),
                                  fill=(30, 160, 220))
    return image


def test_webuiapi_img2img_uses_the_image_and_reports_the_seed(live_server):
    api = webui(live_server(), sampler="Euler a", steps=4)
    source = picture()
    result = api.img2img(images=[source], prompt="a lighthouse", seed=77, width=64,
                         height=64, denoising_strength=0.5, cfg_scale=6)
    assert len(result.images) == 1 and result.image.size == (64, 64)
    info = result.info
    assert info["seed"] == 77 and info["denoising_strength"] == 0.5
    assert info["is_using_inpainting_conditioning"] is False and info["interrupted"] is False
    assert result.image.info["parameters"] == info["infotexts"][0]
    assert "Seed: 77, Size: 64x64, Denoising strength: 0.5" in info["infotexts"][0]
    assert result.parameters["init_images"] is None  # no base64 echoed back
    # Same body, same pixels; another input image, other pixels: the input is used.
    again = api.img2img(images=[source], prompt="a lighthouse", seed=77, width=64,
                        height=64, denoising_strength=0.5, cfg_scale=6)
    assert again.image.tobytes() == result.image.tobytes()
    other = api.img2img(images=[source.rotate(90)], prompt="a lighthouse", seed=77,
                        width=64, height=64, denoising_strength=0.5, cfg_scale=6)
    assert other.image.tobytes() != result.image.tobytes()


def test_webuiapi_img2img_with_a_mask_keeps_what_it_does_not_cover(live_server):
    api = webui(live_server(), sampler="Euler a", steps=3)
    source = picture()
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # repaint the left half
    result = api.img2img(images=[source], mask_image=mask, mask_blur=0, prompt="a tree",
                         seed=3, width=64, height=64, denoising_strength=1, batch_size=2)
    assert len(result.images) == 2 and result.info["all_seeds"] == [3, 4]
    assert result.info["extra_generation_params"] == {"Mask blur": 0}
    for image in result.images:
        kept = ImageChops.difference(image.convert("RGB").crop((36, 0, 64, 64)),
                                     source.crop((36, 0, 64, 64)))
        assert kept.getbbox() is None  # the black half is the input's own pixels
        changed = ImageChops.difference(image.convert("RGB").crop((0, 0, 28, 64)),
                                        source.crop((0, 0, 28, 64)))
        assert changed.getbbox() is not None
    inverted = api.img2img(images=[source], mask_image=mask, mask_blur=0, prompt="a tree",
                           seed=3, width=64, height=64, denoising_strength=1,
                           inpainting_mask_invert=1)
    kept = ImageChops.difference(inverted.image.convert("RGB").crop((0, 0, 28, 64)),
                                 source.crop((0, 0, 28, 64)))
    assert kept.getbbox() is None  # inverted: the white half is kept


def test_librechat_flow_reads_info_seed_size_and_infotext(live_server):
    server = live_server()
    # LibreChat's payload (api/app/clients/tools/structured/StableDiffusion.js), at a size
    # this test server allows (LibreChat asks 1024x1024: 2 minutes on the tiny model).
    payload = {"prompt": "a red barn, fields, dusk", "negative_prompt": "blurry, text",
               "cfg_scale": 4.5, "steps": 22, "width": 128, "height": 128}
    data = requests.post(server.url + "/sdapi/v1/txt2img", json=payload, timeout=120).json()
    image = data["images"][0]
    info = json.loads(data["info"])
    buffer = base64.b64decode(image.split(",", 1)[0])  # what LibreChat does: raw base64
    png = Image.open(io.BytesIO(buffer))
    assert png.format == "PNG" and png.size == (info["width"], info["height"]) == (128, 128)
    assert isinstance(info["seed"], int) and info["seed"] >= 0
    settings_line = info["infotexts"][0].split("\n")[-1]  # LibreChat's "generationInfo"
    assert settings_line.startswith("Steps: 22, Sampler: PNDM, CFG scale: 4.5, Seed: "
                                    f"{info['seed']}, Size: 128x128")
    assert png.info["parameters"] == info["infotexts"][0]
