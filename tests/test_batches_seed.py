"""Batch seeds (api/batches.py): consecutive from the first, wrapping at 2^32."""
import base64
import io
import json

from PIL import Image

from api.batches import batch_seeds
from params import MAX_SEED


def test_a_batch_starting_near_the_top_wraps_to_zero():
    assert batch_seeds(MAX_SEED - 1, 4) == [MAX_SEED - 1, MAX_SEED, 0, 1]
    assert batch_seeds(7, 3) == [7, 8, 9]


def test_a_random_start_leaves_room_for_the_whole_batch(monkeypatch):
    import api.batches

    # The largest start `secrets.randbelow` may give: the batch must still end in range.
    monkeypatch.setattr(api.batches.secrets, "randbelow", lambda n: n - 1)
    seeds = batch_seeds(None, 3)
    assert seeds == [MAX_SEED - 2, MAX_SEED - 1, MAX_SEED]


def test_an_a1111_batch_at_the_last_seed_reports_and_embeds_the_wrapped_seeds(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "seed": MAX_SEED,
                                               "batch_size": 2, "steps": 2})
    assert r.status_code == 200
    assert json.loads(r.json["info"])["all_seeds"] == [MAX_SEED, 0]
    texts = [Image.open(io.BytesIO(base64.b64decode(b))).info["parameters"]
             for b in r.json["images"]]
    assert f"Seed: {MAX_SEED}," in texts[0] and "Seed: 0," in texts[1]
