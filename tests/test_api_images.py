"""GET /images (the history, paged), GET /images/<name> and DELETE /images/<name> on the
tiny model: images in memory and only on disk in OUTPUT_DIR, newest first; names that are
paths refused; delete needs the credential and removes file and job."""
from __future__ import annotations

import io
import os
import time
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

INFOTEXT = ("an old {n}\nNegative prompt: blur\nSteps: 3, Sampler: Euler, CFG scale: 6, "
            "Seed: {n}, Size: 64x64, Model: tiny")


def saved_png(folder: Path, name: str, n: int, age: float) -> Path:
    """A PNG this server could have written earlier, `age` seconds old, in a day folder."""
    info = PngInfo()
    info.add_text("parameters", INFOTEXT.format(n=n))
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (n, 0, 0)).save(out, format="PNG", pnginfo=info)
    path = folder / "2020-01-01" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out.getvalue())
    when = time.time() - age
    os.utime(path, (when, when))
    return path


def generate(client, prompt: str, headers: dict | None = None) -> str:
    """POST /generate; the job id."""
    r = client.post("/generate", json={"prompt": prompt, "steps": 1}, headers=headers or {})
    assert r.status_code == 200, r.json
    return r.headers["X-Job-Id"]


def test_pages_through_memory_and_disk_newest_first(make_app, tmp_path):
    out = tmp_path / "out"
    client = make_app(OUTPUT_DIR=str(out)).test_client()
    first = generate(client, "a red cat")
    second = generate(client, "a blue cat")
    # Written after the start: only on disk, never restored into the queue; older.
    for n in range(3):
        saved_png(out, f"old{n}-{n}-an-old.png", n, age=1000 + n)

    page = client.get("/images?limit=2").json
    assert page["total"] == 5 and page["next_offset"] == 2
    assert [i["job_id"] for i in page["images"]] == [second, first]
    newest = page["images"][0]
    assert newest["name"].startswith(f"{second}-") and newest["url"] == f"/images/{newest['name']}"
    assert newest["settings"]["Prompt"] == "a blue cat"  # params.infotext's parser
    assert newest["settings"]["Steps"] == "1" and newest["request"]["steps"] == 1
    assert (newest["width"], newest["height"]) == (64, 64)

    page = client.get("/images?offset=2&limit=2").json
    assert [i["name"] for i in page["images"]] == ["old0-0-an-old.png", "old1-1-an-old.png"]
    assert page["images"][0]["job_id"] is None and page["images"][0]["seed"] == 0
    assert page["images"][1]["request"]["guidance_scale"] == 6.0
    assert page["images"][1]["settings"]["Negative prompt"] == "blur"
    last = client.get("/images?offset=4&limit=2").json
    assert [i["name"] for i in last["images"]] == ["old2-2-an-old.png"]
    assert last["next_offset"] is None

    r = client.get("/images/old2-2-an-old.png")
    assert r.status_code == 200 and r.mimetype == "image/png"
    assert Image.open(io.BytesIO(r.data)).getpixel((0, 0)) == (2, 0, 0)
    r = client.get(f"/images/{newest['name']}?download=1")
    assert r.status_code == 200 and r.headers["Content-Disposition"].startswith("attachment")


def test_memory_only_images_go_by_their_job_id(make_app):
    client = make_app().test_client()  # OUTPUT_DIR off
    job_id = generate(client, "a cat")
    images = client.get("/images").json["images"]
    assert [i["name"] for i in images] == [f"{job_id}.png"]
    assert client.get(f"/images/{job_id}.png").status_code == 200


def test_bad_paging_arguments_are_400(client):
    for query in ("limit=0", "limit=101", "offset=-1", "limit=x"):
        r = client.get(f"/images?{query}")
        assert r.status_code == 400 and r.json["error"] == "invalid_field", query


def test_names_that_are_paths_are_refused(make_app, tmp_path):
    out = tmp_path / "out"
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not for you")
    (tmp_path / "out" / "2020-01-01").mkdir(parents=True)
    os.symlink(secret, out / "2020-01-01" / "link-1-x.png")  # a link out of OUTPUT_DIR
    client = make_app(OUTPUT_DIR=str(out)).test_client()
    for name in ("..%2Fsecret.png", "..%2F..%2Fsecret.png", "%2E%2E", "..", "a%5C..%5Cb.png",
                 "secret", ".hidden.png", "%2Fetc%2Fpasswd", "x*.png", "link-1-x.png"):
        for method in ("get", "delete"):
            r = getattr(client, method)(f"/images/{name}")
            assert r.status_code in (400, 404), (name, r.status_code)
            assert r.is_json and r.json["error"] in ("invalid_name", "not_found")
            assert b"not for you" not in r.data
    assert client.get("/images/..").json["error"] == "invalid_name"
    assert secret.exists()


def test_delete_needs_the_credential_and_removes_file_and_job(make_app, tmp_path):
    out = tmp_path / "out"
    client = make_app(OUTPUT_DIR=str(out), API_KEY="k3y").test_client()
    auth = {"Authorization": "Bearer k3y"}
    job_id = generate(client, "a doomed cat", auth)
    old = saved_png(out, "old0-0-an-old.png", 0, age=100)
    assert client.get("/images").status_code == 401
    name = client.get("/images", headers=auth).json["images"][0]["name"]

    r = client.delete(f"/images/{name}")
    assert r.status_code == 401 and r.json["error"] == "unauthorized"
    assert client.get(f"/images/{name}", headers=auth).status_code == 200  # still there
    r = client.delete(f"/images/{name}", headers=auth)
    assert r.status_code == 200 and r.json == {"deleted": name}
    assert not list(out.glob(f"*/{name}"))
    assert client.get(f"/jobs/{job_id}", headers=auth).status_code == 404
    assert client.get(f"/images/{name}", headers=auth).status_code == 404
    assert client.delete(f"/images/{name}", headers=auth).status_code == 404

    assert client.delete("/images/old0-0-an-old.png", headers=auth).status_code == 200
    assert not old.exists()
    assert client.get("/images", headers=auth).json["total"] == 0


def test_delete_from_another_site_is_refused(make_app, tmp_path):
    out = tmp_path / "out"
    client = make_app(OUTPUT_DIR=str(out)).test_client()
    saved_png(out, "old0-0-an-old.png", 0, age=100)
    r = client.delete("/images/old0-0-an-old.png", headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert client.get("/images").json["total"] == 1


def test_with_several_users_each_sees_only_their_own(make_app, tmp_path):
    out = tmp_path / "out"
    client = make_app(OUTPUT_DIR=str(out), API_AUTH="ann:pw1,bob:pw2").test_client()
    import base64

    def basic(user: str, password: str) -> dict:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    generate(client, "ann's cat", basic("ann", "pw1"))
    saved_png(out, "old0-0-an-old.png", 0, age=100)  # no owner: shown to nobody
    mine = client.get("/images", headers=basic("ann", "pw1")).json["images"]
    assert [i["prompt"] for i in mine] == ["ann's cat"]
    assert client.get("/images", headers=basic("bob", "pw2")).json["total"] == 0
    name = mine[0]["name"]
    assert client.get(f"/images/{name}", headers=basic("bob", "pw2")).status_code == 404
    assert client.delete(f"/images/{name}", headers=basic("bob", "pw2")).status_code == 404
