"""A1111 options (api/a1111/options.py) and their store (jobs/options.py): GET, POST, the
model check, the speed options as defaults of later A1111 generations."""
import json
import logging
import threading

import pytest

from jobs.options import OptionsFull, OptionsStore

READ_BY_CLIENTS = {"sd_model_checkpoint", "sd_checkpoint_hash", "samples_format", "send_seed",
                   "CLIP_stop_at_last_layers", "eta_noise_seed_delta"}


def options(client) -> dict:
    r = client.get("/sdapi/v1/options")
    assert r.status_code == 200
    return r.json


def test_get_has_the_keys_clients_read_naming_the_served_model(client):
    got = options(client)
    assert READ_BY_CLIENTS <= set(got)
    model = client.get("/sdapi/v1/sd-models").json[0]
    assert got["sd_model_checkpoint"] == model["title"]
    assert got["sd_checkpoint_hash"] == model["sha256"]
    assert got["samples_format"] == "png" and got["CLIP_stop_at_last_layers"] == 1
    # The speed options show the server's own defaults until a client sets them.
    assert (got["speed_preset"], got["cfg_cutoff"], got["deep_cache"],
            got["vae_decoder"]) == ("quality", 1.0, 1, "full")
    assert got["samples_save"] is False  # the test server has no OUTPUT_DIR: nothing is saved


def test_a_supported_key_is_validated_stored_and_shown(client, caplog):
    caplog.set_level(logging.INFO, logger="api.a1111.options")
    r = client.post("/sdapi/v1/options", json={"deep_cache": 3, "vae_decoder": "tiny"})
    assert r.status_code == 200
    assert r.json == {"applied": ["deep_cache", "vae_decoder"], "no_effect": []}
    got = options(client)
    assert got["deep_cache"] == 3 and got["vae_decoder"] == "tiny"
    assert "deep_cache=3" in caplog.text and "no effect" not in caplog.text
    for bad in ({"deep_cache": 9}, {"cfg_cutoff": 0}, {"speed_preset": "warp"},
                {"vae_decoder": None}, {"deep_cache": "2"}):
        r = client.post("/sdapi/v1/options", json=bad)
        key = next(iter(bad))
        assert r.status_code == 422, bad
        assert f"'{key}'" in r.json["message"] and r.json["detail"] == r.json["message"]
    assert options(client)["deep_cache"] == 3  # refused values changed nothing


def test_an_unsupported_key_is_kept_echoed_and_logged_as_without_effect(client, caplog):
    caplog.set_level(logging.INFO, logger="api.a1111.options")
    r = client.post("/sdapi/v1/options", json={"samples_format": "jpg",
                                               "my_extension": {"a": [1, 2]}})
    assert r.status_code == 200
    assert r.json == {"applied": [], "no_effect": ["my_extension", "samples_format"]}
    got = options(client)
    assert got["samples_format"] == "jpg" and got["my_extension"] == {"a": [1, 2]}
    assert "no effect here: samples_format, my_extension" in caplog.text
    # Generation is untouched: still PNG.
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 1})
    assert r.status_code == 200
    assert json.loads(r.json["info"])["infotexts"]  # a real image came back
    import base64
    assert base64.b64decode(r.json["images"][0])[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_served_model_in_any_spelling_is_a_no_op(client):
    title = options(client)["sd_model_checkpoint"]
    name, short = title.rsplit(" [", 1)
    for spelling in (title, name, name + ".safetensors", short.rstrip("]")):
        r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": spelling})
        assert r.status_code == 200, spelling
    assert options(client)["sd_model_checkpoint"] == title


def test_another_model_is_a_422_naming_the_served_one_and_stores_nothing(client):
    title = options(client)["sd_model_checkpoint"]
    r = client.post("/sdapi/v1/options", json={"deep_cache": 2,
                                               "sd_model_checkpoint": "v1-5-pruned.safetensors"})
    assert r.status_code == 422
    served = client.get("/sdapi/v1/sd-models").json[0]
    assert title == served["title"]
    assert "v1-5-pruned" in r.json["message"] and served["model_name"] in r.json["message"]
    assert options(client)["deep_cache"] == 1  # all or nothing
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": 5}).status_code == 422


def test_open_webui_round_trip_get_then_post_everything_back(client):
    before = options(client)
    r = client.post("/sdapi/v1/options", json=before)
    assert r.status_code == 200 and "sd_model_checkpoint" not in r.json["no_effect"]
    assert options(client) == before


def test_bad_bodies_are_422_or_413_in_a1111s_shape(make_app):
    client = make_app().test_client()
    for body in ([1, 2], "x", 3, None):
        r = client.post("/sdapi/v1/options", data=json.dumps(body),
                        content_type="application/json")
        assert r.status_code in (400, 422) and r.json["message"], body
    r = client.post("/sdapi/v1/options", data='{"x": NaN}', content_type="application/json")
    assert r.status_code == 422 and "'x'" in r.json["message"]
    # The store is bounded: many big values are refused once it is full, never grown.
    filler = "y" * 60000
    statuses = [client.post("/sdapi/v1/options", json={f"k{i}": filler}).status_code
                for i in range(6)]
    assert statuses[:4] == [200] * 4 and statuses[-1] == 413
    assert len(json.dumps(options(client))) < 300 * 1024


def test_stored_speed_options_act_as_the_servers_knobs(app):
    from api.a1111 import speed_options as opts

    with app.test_request_context():
        assert opts.with_speed_defaults({"prompt": "a"}) == {
            "prompt": "a", "speed_preset": "quality", "cfg_cutoff": 1.0, "deep_cache": 1,
            "vae_decoder": "full"}
        opts.store().update({"deep_cache": 3, "cfg_cutoff": 0.6})
        assert opts.with_speed_defaults({})["deep_cache"] == 3
        assert opts.with_speed_defaults({"deep_cache": None})["deep_cache"] == 3
        # A field the request names wins; so does the preset it names, for its own fields.
        assert opts.with_speed_defaults({"deep_cache": 2})["deep_cache"] == 2
        assert opts.with_speed_defaults({"speed_preset": "fast"}) == {"speed_preset": "fast"}
        assert opts.with_speed_defaults({"speed_preset": "balanced"}) == {
            "speed_preset": "balanced", "vae_decoder": "full"}
        assert opts.with_speed_defaults({"speed_preset": "quality"})["deep_cache"] == 3


def test_a_stored_speed_option_changes_later_a1111_generations(client):
    assert client.post("/sdapi/v1/options", json={"deep_cache": 2}).status_code == 200

    def infotext(**fields):
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2, "seed": 1,
                                                   **fields})
        assert r.status_code == 200
        return json.loads(r.json["info"])["infotexts"][0]

    assert "DeepCache: 2" in infotext()
    assert "DeepCache" not in infotext(deep_cache=1)  # the request's own value wins


def test_store_updates_all_or_nothing_and_reports_changes():
    store = OptionsStore({"a": 1}, max_bytes=64)
    assert store.update({"a": 1}) == [] and store.update({"a": 2, "b": 3}) == ["a", "b"]
    with pytest.raises(OptionsFull):
        store.update({"a": 5, "c": "z" * 100})
    assert store.snapshot() == {"a": 2, "b": 3}


def test_store_keeps_every_concurrent_update():
    store = OptionsStore({}, max_bytes=1 << 20)
    threads = [threading.Thread(target=lambda i=i: [store.update({f"t{i}-{j}": j})
                                                    for j in range(200)]) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.snapshot()) == 8 * 200
