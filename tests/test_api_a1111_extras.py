"""A1111 extras (upscaling, png-info, interrogate; api/a1111/extras.py) and the list
endpoints (api/a1111/lists.py)."""
import base64
import io
import json

import pytest
import requests
import webuiapi
from PIL import Image, PngImagePlugin

URL = "/sdapi/v1"
INFOTEXT = ("a red fox, \"quoted\"\nin snow\nNegative prompt: blurry\n"
            "Steps: 3, Sampler: Euler a, CFG scale: 6.5, Seed: 42, Size: 64x48, "
            'Lora hashes: "fox: abc, snow: def", Model: tiny')


def b64_png(image: Image.Image, **texts: str) -> str:
    meta = PngImagePlugin.PngInfo()
    for key, value in texts.items():
        meta.add_text(key, value)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=meta)
    return base64.b64encode(buf.getvalue()).decode()


def decoded(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def gradient(width=8, height=6) -> Image.Image:
    image = Image.new("RGB", (width, height))
    image.putdata([(x * 30 % 256, y * 40 % 256, (x * y * 7) % 256)
                   for y in range(height) for x in range(width)])
    return image


def extras(client, image: Image.Image, **fields):
    return client.post(f"{URL}/extra-single-image", json={"image": b64_png(image), **fields})


def test_each_resampler_scales_by_the_factor(client):
    source = gradient()
    outputs = {}
    for name in ("Lanczos", "Nearest", "Bicubic", "Bilinear"):
        r = extras(client, source, upscaler_1=name, upscaling_resize=2.5)
        assert r.status_code == 200, r.json
        outputs[name] = decoded(r.json["image"])
        assert outputs[name].size == (20, 15)
        assert name in r.json["html_info"]
    # Nearest copies pixels; the others interpolate, each differently.
    assert outputs["Nearest"].getpixel((0, 0)) == source.getpixel((0, 0))
    assert len({image.tobytes() for image in outputs.values()}) == 4
    expected = source.resize((20, 15), Image.Resampling.LANCZOS)
    assert outputs["Lanczos"].tobytes() == expected.tobytes()


def test_scale_to_a_size_crops_around_the_centre_or_keeps_the_aspect(client):
    source = gradient(8, 4)
    r = extras(client, source, upscaler_1="Nearest", resize_mode=1, upscaling_resize_w=16,
               upscaling_resize_h=16, upscaling_crop=True)
    cropped = decoded(r.json["image"])
    assert cropped.size == (16, 16)  # scaled by 4 to 32x16, then 8 columns cut each side
    assert cropped.getpixel((0, 0)) == source.getpixel((2, 0))
    r = extras(client, source, upscaler_1="Nearest", resize_mode=1, upscaling_resize_w=16,
               upscaling_resize_h=16, upscaling_crop=False)
    assert decoded(r.json["image"]).size == (32, 16)


def test_a_second_upscaler_is_blended_in(client):
    source = gradient()
    common = {"upscaler_1": "Nearest", "upscaling_resize": 2}
    nearest = decoded(extras(client, source, **common).json["image"])
    both = decoded(extras(client, source, **common, upscaler_2="Bilinear",
                          extras_upscaler_2_visibility=0.5).json["image"])
    bilinear = source.resize((16, 12), Image.Resampling.BILINEAR)
    assert both.tobytes() == Image.blend(nearest, bilinear, 0.5).tobytes()


def test_no_upscaler_returns_the_image_unchanged_with_its_text(client):
    source = gradient()
    r = extras(client, source, upscaling_resize=4)  # upscaler_1 defaults to "None"
    assert r.status_code == 200
    out = decoded(r.json["image"])
    assert out.size == source.size and out.tobytes() == source.tobytes()
    r = client.post(f"{URL}/extra-single-image", json={
        "image": b64_png(source, parameters=INFOTEXT), "upscaler_1": "Lanczos"})
    assert decoded(r.json["image"]).info["parameters"] == INFOTEXT  # A1111 keeps it too


def test_bad_extras_requests_are_422_naming_the_field(make_app):
    client = make_app(MAX_INPUT_PIXELS="4096").test_client()
    source = gradient()
    r = extras(client, source, upscaler_1="R-ESRGAN 4x+")
    assert r.status_code == 422 and "R-ESRGAN 4x+" in r.json["message"]
    assert "Lanczos, Nearest, Bicubic, Bilinear" in r.json["detail"]
    r = extras(client, source, upscaler_1="Lanczos", gfpgan_visibility=0.5)
    assert r.status_code == 422 and "'gfpgan_visibility'" in r.json["message"]
    assert extras(client, source, upscaler_1="Lanczos", upscaling_resize=0).status_code == 422
    assert extras(client, source, upscaling_crop="yes").status_code == 422
    r = extras(client, source, upscaler_1="Lanczos", upscaling_resize=12)  # 96x72 > 4096 px
    assert r.status_code == 422 and "MAX_INPUT_PIXELS" in r.json["message"]
    r = client.post(f"{URL}/extra-single-image", json={"image": "bm90IGFuIGltYWdl"})
    assert r.status_code == 422 and "'image'" in r.json["message"]
    r = client.post(f"{URL}/extra-single-image", json={"upscaler_1": "Lanczos"})
    assert r.status_code == 422 and "'image'" in r.json["message"]


def test_batch_upscales_every_image_in_order(client):
    first, second = gradient(4, 4), gradient(6, 2)
    body = {"imageList": [{"data": b64_png(first), "name": "a"},
                          {"data": b64_png(second), "name": "b"}],
            "upscaler_1": "Nearest", "upscaling_resize": 3}
    r = client.post(f"{URL}/extra-batch-images", json=body)
    assert r.status_code == 200
    sizes = [decoded(image).size for image in r.json["images"]]
    assert sizes == [(12, 12), (18, 6)]
    body["imageList"][1]["data"] = "%%%"
    r = client.post(f"{URL}/extra-batch-images", json=body)
    assert r.status_code == 422 and "'imageList[1].data'" in r.json["message"]
    r = client.post(f"{URL}/extra-batch-images", json={"imageList": []})
    assert r.status_code == 422 and "imageList" in r.json["message"]


def test_png_info_of_a_generated_image_parses_like_a1111(client):
    r = client.post(f"{URL}/txt2img", json={"prompt": "a lighthouse", "seed": 7, "steps": 2,
                                             "negative_prompt": "fog", "cfg_scale": 5})
    image_b64 = r.json["images"][0]
    info = client.post(f"{URL}/png-info", json={"image": image_b64})
    assert info.status_code == 200
    assert info.json["info"] == json.loads(r.json["info"])["infotexts"][0]
    params = info.json["parameters"]
    assert params["Prompt"] == "a lighthouse" and params["Negative prompt"] == "fog"
    assert (params["Steps"], params["Seed"], params["CFG scale"]) == ("2", "7", "5")
    assert (params["Size-1"], params["Size-2"]) == ("64", "64")
    assert info.json["items"] == {}


def test_png_info_of_multiline_quoted_text_items_and_no_text(client):
    r = client.post(f"{URL}/png-info", json={
        "image": "data:image/png;base64," + b64_png(gradient(), parameters=INFOTEXT,
                                                    Software="paint")})
    params = r.json["parameters"]
    assert params["Prompt"] == 'a red fox, "quoted"\nin snow'
    assert params["Lora hashes"] == "fox: abc, snow: def" and params["Model"] == "tiny"
    assert params["CFG scale"] == "6.5" and (params["Size-1"], params["Size-2"]) == ("64", "48")
    assert r.json["items"] == {"Software": "paint"}
    plain = client.post(f"{URL}/png-info", json={"image": b64_png(gradient())})
    assert plain.json == {"info": "", "items": {}, "parameters": {}}


def test_png_info_reads_a_jpegs_exif_user_comment(client):
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + INFOTEXT.encode("utf-16-be")
    buf = io.BytesIO()
    gradient().save(buf, format="JPEG", exif=exif)
    r = client.post(f"{URL}/png-info", json={"image": base64.b64encode(buf.getvalue()).decode()})
    assert r.json["info"] == INFOTEXT and r.json["parameters"]["Seed"] == "42"


def test_a_hostile_settings_line_does_not_hang_the_parser(client):
    """A1111's own pattern backtracks quadratically on this line (minutes); ours is linear
    (milliseconds). The deadline is a hang detector, not a speed measure: only a
    backtracking pattern misses it, on any machine."""
    import threading

    text = "prompt\n" + "a " * 28000 + ", x" * 1000
    body = {"image": b64_png(gradient(), parameters=text)}
    answers = []
    parse = threading.Thread(target=lambda: answers.append(client.post(f"{URL}/png-info",
                                                                       json=body)), daemon=True)
    parse.start()
    parse.join(60)
    assert answers, "png-info still parsing after 60 s: its pattern backtracks"
    assert answers[0].status_code == 200 and answers[0].json["info"] == text


def test_interrogate_is_a_clear_501(client):
    r = client.post(f"{URL}/interrogate", json={"image": b64_png(gradient()), "model": "clip"})
    assert r.status_code == 501 and "interrogator" in r.json["message"]
    assert r.json["detail"] == r.json["message"]


@pytest.mark.parametrize("path", ["loras", "hypernetworks", "face-restorers",
                                  "realesrgan-models", "prompt-styles", "sd-vae"])
def test_what_this_server_has_none_of_is_an_empty_list(client, path):
    r = client.get(f"{URL}/{path}")
    assert r.status_code == 200 and r.json == []


def test_lists_through_webuiapi(live_server):
    server = live_server()
    port = int(server.url.rsplit(":", 1)[1])
    api = webuiapi.WebUIApi(host="127.0.0.1", port=port)
    names = [u["name"] for u in api.get_upscalers()]
    assert names == ["None", "Lanczos", "Nearest", "Bicubic", "Bilinear"]
    assert set(api.get_upscalers()[1]) == {"name", "model_name", "model_path", "model_url",
                                           "scale"}
    assert api.get_embeddings() == {"loaded": {}, "skipped": {}}
    assert api.get_loras() == [] and api.get_prompt_styles() == []
    flags = api.get_cmd_flags()
    assert flags["api"] is True and flags["port"] == 5000 and flags["use_cpu"] == ["all"]
    memory = api.get_memory()
    ram = memory["ram"]
    assert 0 < ram["used"] < ram["total"] and 0 < ram["free"] <= ram["total"]
    assert "CPU" in memory["cuda"]["error"]
    # The extras and png-info through the client library too.
    result = api.extra_single_image(gradient(), upscaler_1="Lanczos", upscaling_resize=2)
    assert result.image.size == (16, 12)
    batch = api.extra_batch_images([gradient(), gradient(4, 4)], upscaler_1="Nearest",
                                   upscaling_resize=2)
    assert [image.size for image in batch.images] == [(16, 12), (8, 8)]
    png = requests.post(f"{server.url}{URL}/png-info", json={"image": b64_png(
        gradient(), parameters=INFOTEXT)}, timeout=30)
    assert png.json()["parameters"]["Sampler"] == "Euler a"


def test_cmd_flags_never_show_the_credentials(make_app):
    flags = make_app(API_AUTH="alice:s3cret").test_client().get(
        f"{URL}/cmd-flags", headers={"Authorization": "Basic " + base64.b64encode(
            b"alice:s3cret").decode()})
    assert flags.status_code == 200
    assert flags.json["api_auth"] and "s3cret" not in flags.get_data(as_text=True)
