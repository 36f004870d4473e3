"""catalog.download against a fake Hub: a local HTTP server started by the test that answers
the Hub API's revision and tree endpoints and serves `resolve` URLs with the headers
huggingface_hub reads (X-Repo-Commit, ETag, X-Linked-Etag/Size, Content-Length, Range). It
serves the tiny model's files as a repo, slowly when asked, and can cut a transfer mid-way.
The fake Hub stands in for huggingface.co, which this machine cannot reach; everything else
(huggingface_hub, diffusers, the tiny pipeline) is real."""
from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from catalog import download
from catalog.download import download_snapshot as fetch_snapshot
from engine.hub_files import download_patterns
from engine.load_errors import explain_load_error
from errors import DownloadInterrupted, NotEnoughDisk

from tests.helpers import poll_until

REPO = "test-org/tiny-sd"
UNET = "unet/diffusion_pytorch_model.safetensors"


def download_snapshot(repo_id, token, safety_off, progress=None):
    """The catalogue's downloader with the engine's file rules, as engine/loading.py calls it."""
    return fetch_snapshot(repo_id, token, safety_off, download_patterns, progress)


JUNK = {  # files from_pretrained never reads with our settings: none may be fetched
    "sd-v1-4.ckpt": b"pickle" * 1000,
    "sd-v1-4-full-ema.ckpt": b"pickle" * 2000,
    "unet/diffusion_pytorch_model.bin": b"bin" * 1000,
    "unet/diffusion_pytorch_model.fp16.safetensors": b"fp16" * 1000,
    "safety_checker/config.json": b"{}",
    "safety_checker/model.safetensors": b"weights" * 1000,
    "README.md": b"# tiny",
}
LFS_SUFFIXES = (".safetensors", ".ckpt", ".bin")


def repo_files(tiny_model_dir: Path) -> dict[str, bytes]:
    """The tiny model as a Hub repo shaped like CompVis/stable-diffusion-v1-4: a safety
    checker in model_index.json, .ckpt files at the root, .bin and fp16 duplicates."""
    files = {p.relative_to(tiny_model_dir).as_posix(): p.read_bytes()
             for p in tiny_model_dir.rglob("*") if p.is_file()}
    index = json.loads(files["model_index.json"])
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    files["model_index.json"] = json.dumps(index, indent=2).encode()
    return files | JUNK


class FakeHub:
    """The Hub's HTTP surface for one repo; counts what it serves; can be slow, cut a
    transfer, go down, gate the repo, refuse a token, or hold every answer until the test
    sets `answering` again."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.commit = hashlib.sha1(b"".join(sorted(files.values()))).hexdigest()
        self.served: Counter = Counter()  # body bytes sent per path
        self.gets: list[str] = []  # resolve GETs, in order
        self.chunk, self.delay = 64 * 1024, 0.0
        self.cut_after: dict[str, int] = {}  # path -> bytes sent before the connection drops
        self.down = False  # every request is dropped without an answer
        self.gated = False
        self.good_token: str | None = None
        self.answering = threading.Event()  # cleared: requests wait until it is set
        self.answering.set()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop serving."""
        self.answering.set()
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def git_oid(data: bytes) -> str:
        """The git blob id of `data` (the Hub's ETag of a non-LFS file)."""
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def tree(self) -> list[dict]:
        """The /tree answer: every file with size, oid and LFS data for weights."""
        out = []
        for path, data in sorted(self.files.items()):
            entry = {"type": "file", "path": path, "size": len(data), "oid": self.git_oid(data)}
            if path.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                "pointerSize": 134}
            out.append(entry)
        return out

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _json(self, status, payload, headers=()):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _answer(self, body: bool):
                assert hub.answering.wait(120), "the test never let the fake Hub answer"
                if hub.down:
                    self.close_connection = True  # no answer at all, as a dead network
                    return
                auth = self.headers.get("Authorization", "")
                if hub.good_token and auth and auth != f"Bearer {hub.good_token}":
                    message = "Invalid credentials in Authorization header"
                    return self._json(401, {"error": message}, [("X-Error-Message", message)])
                path = self.path.split("?")[0]
                prefix = f"/api/models/{REPO}/"
                if path.startswith(prefix + "revision/") or path == prefix.rstrip("/"):
                    return self._json(200, {"id": REPO, "sha": hub.commit, "private": False,
                                            "gated": "auto" if hub.gated else False,
                                            "siblings": [{"rfilename": p} for p in hub.files]})
                if path.startswith(prefix + "tree/"):
                    return self._json(200, hub.tree())
                resolve = f"/{REPO}/resolve/"
                if not path.startswith(resolve):
                    return self._json(404, {"error": "not found"},
                                      [("X-Error-Code", "RepoNotFound")])
                name = path[len(resolve):].split("/", 1)[1]
                if hub.gated and auth != f"Bearer {hub.good_token}":
                    message = f"Access to model {REPO} is restricted. You must have access."
                    return self._json(401, {"error": message}, [("X-Error-Code", "GatedRepo"),
                                                                ("X-Error-Message", message)])
                if name not in hub.files:
                    return self._json(404, {"error": "entry not found"},
                                      [("X-Error-Code", "EntryNotFound")])
                self._file(name, body)

            def _file(self, name: str, body: bool):
                data = hub.files[name]
                start = 0
                ranged = self.headers.get("Range", "")
                if ranged.startswith("bytes="):
                    start = int(ranged[6:].split("-")[0])
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", hub.commit)
                self.send_header("ETag", f'"{hub.git_oid(data)}"')
                if name.endswith(LFS_SUFFIXES):
                    self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                hub.gets.append(name)
                sent = start
                while sent < len(data):
                    piece = data[sent:sent + hub.chunk]
                    cut = hub.cut_after.get(name)
                    if cut is not None and sent + len(piece) > cut:
                        piece = data[sent:cut]
                    self.wfile.write(piece)
                    self.wfile.flush()
                    sent += len(piece)
                    hub.served[name] += len(piece)
                    if cut is not None and sent >= cut:
                        del hub.cut_after[name]
                        hub.down = True  # the network is gone for every retry too
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    if hub.delay:
                        time.sleep(hub.delay)

        return Handler


@pytest.fixture
def hub(tiny_model_dir, tmp_path, monkeypatch):
    """A fake Hub serving the tiny model as REPO; HF_HOME in tmp, HF_ENDPOINT at the fake;
    a dropped connection retried at once, and transfers in small chunks."""
    fake = FakeHub(repo_files(tiny_model_dir))
    monkeypatch.setattr(download, "RETRY_SECONDS", 0.01)
    monkeypatch.setattr(download, "CHUNK_BYTES", 256 * 1024)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    for name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    yield fake
    fake.close()


def wanted(hub: FakeHub) -> dict[str, bytes]:
    """The files from_pretrained reads with SAFETY_CHECKER=off: the repo minus the junk."""
    return {p: d for p, d in hub.files.items() if p not in JUNK}


class Recorder:
    """A progress callback like ModelSlot.report_progress, keeping every call."""

    def __init__(self):
        self.calls: list[tuple[str, int, int, dict]] = []

    def __call__(self, phase, done, total, **extra):
        self.calls.append((phase, done, total, extra))


def test_fetches_only_what_from_pretrained_reads_and_the_snapshot_loads(hub):
    from diffusers import StableDiffusionPipeline

    progress = Recorder()
    folder = download_snapshot(REPO, None, True, progress)
    expected = wanted(hub)
    assert set(hub.gets) == set(expected)  # no .ckpt, .bin, fp16 or safety checker
    assert sum(hub.served.values()) == sum(len(d) for d in expected.values())
    for path, data in expected.items():
        assert (Path(folder) / path).read_bytes() == data
    downloading = [c for c in progress.calls if c[0] == "downloading"]
    done = [c[1] for c in downloading]
    assert done == sorted(done) and done[-1] == downloading[-1][2] == sum(map(len,
                                                                             expected.values()))
    assert downloading[-1][3]["files_done"] == downloading[-1][3]["files_total"] == len(expected)
    pipe = StableDiffusionPipeline.from_pretrained(folder, use_safetensors=True,
                                                   safety_checker=None,
                                                   requires_safety_checker=False)
    assert pipe.unet is not None
    hub.gets.clear()
    assert download_snapshot(REPO, None, True, progress) == folder  # second start: no fetch
    assert hub.gets == []


def test_the_file_set_is_the_one_diffusers_own_download_fetches(hub, tmp_path, monkeypatch):
    import huggingface_hub
    from diffusers import StableDiffusionPipeline

    # diffusers asks huggingface_hub's module-level client, whose endpoint was read at import.
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", hub.url)
    for safety_off in (True, False):
        hub.gets.clear()
        StableDiffusionPipeline.download(REPO, use_safetensors=True,
                                         cache_dir=tmp_path / f"diffusers-{safety_off}",
                                         **({"safety_checker": None} if safety_off else {}))
        theirs = set(hub.gets) - {"model_index.json"}
        hub.gets.clear()
        monkeypatch.setenv("HF_HOME", str(tmp_path / f"ours-{safety_off}"))
        download_snapshot(REPO, None, safety_off)
        assert set(hub.gets) - {"model_index.json"} == theirs
    assert "safety_checker/model.safetensors" in theirs  # SAFETY_CHECKER=on fetches it


def test_not_enough_disk_fails_at_once_with_the_figures_and_the_fix(hub, monkeypatch):
    monkeypatch.setattr(download, "free_bytes", lambda path: 1_000_000)
    with pytest.raises(NotEnoughDisk) as raised:
        download_snapshot(REPO, None, True)
    total = sum(len(d) for d in wanted(hub).values())
    cache = Path(download.hub_cache_dir())
    assert (f"needs {total / 1e6:.1f} MB in {cache}, 1.0 MB free: free space or set HF_HOME"
            in str(raised.value))
    assert hub.served[UNET] == 0


def test_a_cut_download_fails_with_restart_to_resume_and_the_restart_fetches_only_the_rest(
        hub, monkeypatch):
    size = len(hub.files[UNET])
    hub.cut_after[UNET] = size // 3
    with pytest.raises(DownloadInterrupted) as raised:
        download_snapshot(REPO, None, True)
    assert "restart the server to resume" in str(raised.value)
    assert "RemoteProtocolError" in str(raised.value) or "Error" in str(raised.value)
    assert hub.served[UNET] == size // 3
    partial = next(Path(download.hub_cache_dir()).rglob("*.partial"))
    kept = partial.stat().st_size
    assert 0 < kept <= size // 3  # what arrived, less at most the chunk being received
    # Half-finished: an offline start refuses it rather than loading it as complete.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(Exception) as offline:
        download_snapshot(REPO, None, True)
    assert "Cannot find an appropriate cached snapshot" in str(offline.value)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub.down = False
    hub.served.clear()
    folder = download_snapshot(REPO, None, True)
    assert hub.served[UNET] == size - kept  # resumed where it stopped
    assert (Path(folder) / UNET).read_bytes() == hub.files[UNET]


def test_offline_uses_a_complete_cache_and_explains_an_empty_one(hub, monkeypatch,
                                                                 make_settings):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(Exception) as raised:
        download_snapshot(REPO, None, True)
    settings = make_settings(MODEL_ID=REPO)
    assert "not in the local Hugging Face cache" in explain_load_error(settings, raised.value)
    assert hub.gets == []  # offline means no request at all
    monkeypatch.delenv("HF_HUB_OFFLINE")
    folder = download_snapshot(REPO, None, True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.gets.clear()
    assert download_snapshot(REPO, None, True) == folder
    hub.down = True  # and online with the Hub unreachable, the cache serves too
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert download_snapshot(REPO, None, True) == folder
    (Path(folder) / UNET).unlink()  # a snapshot missing a file never loads as complete
    for offline in ("1", ""):
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
        with pytest.raises(Exception) as raised:
            download_snapshot(REPO, None, True)
        assert "incomplete" in str(raised.value) and UNET in str(raised.value)
    hub.down = False  # with the Hub back, the next start completes it
    assert (Path(download_snapshot(REPO, None, True)) / UNET).read_bytes() == hub.files[UNET]


def test_unreachable_hub_and_nothing_cached_says_download_it_once(hub, make_settings,
                                                                  monkeypatch):
    hub.close()
    with pytest.raises(Exception) as raised:
        download_snapshot(REPO, None, True)
    text = explain_load_error(make_settings(MODEL_ID=REPO), raised.value)
    assert "not in the local Hugging Face cache" in text and "hf download" in text


def test_gated_repo_without_token_says_accept_the_licence(hub, make_settings):
    hub.gated = True
    with pytest.raises(Exception) as raised:
        download_snapshot(REPO, None, True)
    text = explain_load_error(make_settings(MODEL_ID=REPO), raised.value)
    assert "is gated" in text and "HF_TOKEN" in text


def test_bad_token_says_the_hub_refused_it(hub, make_settings):
    hub.good_token = "hf_good"
    with pytest.raises(Exception) as raised:
        download_snapshot(REPO, "hf_bad", True)
    text = explain_load_error(make_settings(MODEL_ID=REPO, HF_TOKEN="hf_bad"), raised.value)
    assert "refused HF_TOKEN" in text and "hf_bad" not in text


def test_log_lines_come_every_ten_seconds_or_five_percent_whichever_later(monkeypatch, caplog):
    clock = [0.0]
    monkeypatch.setattr(download.time, "monotonic", lambda: clock[0])
    files = [download.PlannedFile("a", 1000, "x")]
    meter = download.DownloadMeter(REPO, files, Path("/nonexistent"), None)
    lines = []
    with caplog.at_level("INFO", logger="catalog.download"):
        for second, done in [(5, 200), (11, 210), (25, 240), (26, 270), (27, 900), (37, 1000)]:
            clock[0] = second
            meter.update(done)
            lines.append(len(caplog.records))
    # 5 s: too soon; 11 s: +21 % after 10 s: a line; 25 s: only +3 %; 26 s: +6 %: a line;
    # 27 s: +63 % but 1 s later: none; 37 s: a line.
    assert lines == [0, 1, 1, 2, 2, 3]
    assert "downloading test-org/tiny-sd: 0.0 MB of 0.0 MB (21 %)" in \
        caplog.records[0].getMessage()


def health(client) -> dict:
    """GET /health as JSON."""
    return client.get("/health").get_json()


def wait_health(client, done, timeout: float = 120) -> list[dict]:
    """Poll /health until `done(body)`; every body seen, in order."""
    seen = []

    def reached() -> bool:
        seen.append(health(client))
        return done(seen[-1])

    poll_until(reached, timeout, "/health to leave 'loading'", interval=0.05)
    return seen


def test_health_shows_the_download_rising_then_the_server_is_healthy(hub, make_app):
    hub.chunk, hub.delay = 32 * 1024, 0.02  # about 1.6 MB/s: seconds to watch
    client = make_app(wait=False, MODEL_ID=REPO).test_client()
    seen = wait_health(client, lambda b: b["status"] != "loading")
    assert seen[-1]["status"] == "healthy", seen[-1]
    figures = [b["progress"] for b in seen if b.get("phase") == "downloading"]
    done = [p["bytes_done"] for p in figures]
    assert len(set(done)) >= 3 and done == sorted(done)  # rising, seen several times
    total = sum(len(d) for d in wanted(hub).values())
    assert {p["bytes_total"] for p in figures} == {total}
    assert {p["files_total"] for p in figures} == {len(wanted(hub))}
    assert any(p["eta_seconds"] for p in figures)
    assert set(hub.gets) == set(wanted(hub))


def test_health_is_unhealthy_at_once_when_the_disk_is_too_small(hub, make_app, monkeypatch):
    monkeypatch.setattr(download, "free_bytes", lambda path: 2_000_000)
    client = make_app(wait=False, MODEL_ID=REPO).test_client()
    body = wait_health(client, lambda b: b["status"] != "loading", timeout=60)[-1]
    assert body["status"] == "unhealthy"
    assert "needs 4.6 MB in" in body["error"] and "2.0 MB free: free space or set HF_HOME" \
        in body["error"]
    assert hub.served[UNET] == 0


def test_health_says_restart_to_resume_when_the_network_drops(hub, make_app):
    hub.cut_after[UNET] = len(hub.files[UNET]) // 2
    client = make_app(wait=False, MODEL_ID=REPO).test_client()
    body = wait_health(client, lambda b: b["status"] != "loading", timeout=60)[-1]
    assert body["status"] == "unhealthy"
    assert "restart the server to resume" in body["error"] and "stopped at" in body["error"]
