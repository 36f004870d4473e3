"""Locked-down defaults: rate limits, CORS, API key, request size, JSON on every error path."""
import pytest

from tests.helpers import poll_until

# Routes that start a generation, and the JSON body that makes each of them valid.
GENERATING = [("/generate", {"prompt": "a cat"}), ("/jobs", {"prompt": "a cat"}),
              ("/sdapi/v1/txt2img", {"prompt": "a cat", "steps": 1, "width": 64, "height": 64}),
              ("/v1/images/generations", {"prompt": "a cat", "size": "64x64"})]
# The generating routes that take images (multipart, or JSON a test cannot make up here).
GENERATING_WITH_IMAGES = ["/v1/images/edits", "/sdapi/v1/img2img"]


def test_every_generating_endpoint_and_nothing_else_is_rate_limited(make_app):
    """A renamed view would silently lose its rate limit: every route is called twice over a
    1/minute limit and exactly the generating ones must answer a real 429. The body is
    invalid so nothing is generated; the limiter counts the request all the same."""
    app = make_app(RATE_LIMIT="1/minute")
    client = app.test_client()
    limited = set()
    for method, path in every_route(app):
        for _ in range(2):
            r = client.open(path, method=method, json={"not": "valid"})
        if r.status_code == 429:
            limited.add((method, path))
    served = {path for _, path in every_route(app)}
    assert limited == {("POST", path) for path in [*(p for p, _ in GENERATING),
                                                   *GENERATING_WITH_IMAGES] if path in served}
    assert "/v1/images/edits" in served


def every_route(app, skip_endpoints=frozenset()):
    """Every (method, path) the app serves, path arguments filled with 'abc'."""
    out = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint in skip_endpoints:
            continue
        path = rule.rule
        for arg in rule.arguments:
            path = path.replace(f"<{arg}>", "abc")
        out += [(method, path) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return out


def protected_routes(app):
    """Every (method, path) that needs the API key: all but the page, health, icon, static
    and docs."""
    from app import OPEN_ENDPOINTS

    return every_route(app, OPEN_ENDPOINTS)


def test_rate_limit_is_429_json_with_retry_after(make_app):
    app = make_app(RATE_LIMIT="2/minute")
    client = app.test_client()
    for path, body in GENERATING:
        codes = [client.post(path, json=body).status_code for _ in range(2)]
        assert all(c in (200, 202) for c in codes)
        r = client.post(path, json=body)
        assert r.status_code == 429 and r.is_json, path
        assert int(r.headers["Retry-After"]) > 0
        if path.startswith("/v1/"):  # OpenAI's error shape
            assert r.json["error"]["type"] == "rate_limit_error"
        else:
            assert "too_many_requests" in str(r.json) and r.json["message"]
    # Probes, the page and job polling are never limited.
    assert all(client.get("/health").status_code == 200 for _ in range(10))
    assert all(client.get("/").status_code == 200 for _ in range(5))
    assert all(client.get("/jobs").status_code == 200 for _ in range(5))


def test_rate_limit_is_per_client(make_app):
    client = make_app(RATE_LIMIT="1/minute").test_client()
    assert client.post("/jobs", json={"prompt": "a"},
                       environ_base={"REMOTE_ADDR": "10.0.0.1"}).status_code == 202
    assert client.post("/jobs", json={"prompt": "a"},
                       environ_base={"REMOTE_ADDR": "10.0.0.1"}).status_code == 429
    assert client.post("/jobs", json={"prompt": "a"},
                       environ_base={"REMOTE_ADDR": "10.0.0.2"}).status_code == 202


def test_cors_is_closed_by_default(client):
    r = client.get("/health", headers={"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in r.headers
    r = client.options("/generate", headers={"Origin": "http://evil.example",
                                             "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in r.headers


def test_cors_allows_only_the_configured_origins(make_app):
    client = make_app(CORS_ORIGINS="http://good.example").test_client()
    r = client.get("/health", headers={"Origin": "http://good.example"})
    assert r.headers["Access-Control-Allow-Origin"] == "http://good.example"
    r = client.get("/health", headers={"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in r.headers
    star = make_app(CORS_ORIGINS="*").test_client()
    assert star.get("/health", headers={"Origin": "http://x.example"}).headers[
        "Access-Control-Allow-Origin"] == "*"


def test_api_key_guards_every_route_but_page_health_icon_and_docs(make_app):
    app = make_app(API_KEY="s3cret-key")
    client = app.test_client()
    routes = protected_routes(app)
    assert ("POST", "/generate") in routes and ("GET", "/jobs/abc") in routes
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"}):
            r = client.open(path, method=method, json={"prompt": "a"}, headers=headers)
            assert r.status_code == 401, (method, path, headers)
            assert r.is_json and "unauthorized" in str(r.json["error"])
            assert r.headers["WWW-Authenticate"] == "Bearer"
    ok = {"Authorization": "Bearer s3cret-key"}
    assert client.post("/generate", json={"prompt": "a"}, headers=ok).status_code == 200
    assert client.get("/jobs", headers=ok).status_code == 200
    for path in ("/", "/health", "/openapi.json", "/favicon.ico"):
        r = client.get(path)
        assert r.status_code == 200 and b"s3cret-key" not in r.data


def test_health_reveals_no_secrets(make_app):
    client = make_app(API_KEY="k-123", HF_TOKEN="hf_abcdef").test_client()
    body = client.get("/health").get_data(as_text=True)
    assert "k-123" not in body and "hf_abcdef" not in body


@pytest.mark.parametrize("method,path,kwargs,status", [
    ("POST", "/generate", {"data": "x" * 100_000, "content_type": "application/json"}, 413),
    ("GET", "/static/nope.js", {}, 404),
    ("PUT", "/health", {}, 405),
    ("POST", "/jobs", {"data": b"\xff\xfe", "content_type": "application/json"}, 400),
    ("POST", "/jobs", {"data": "{}", "content_type": "text/plain"}, 415),
])
def test_every_error_path_answers_json(client, method, path, kwargs, status):
    r = client.open(path, method=method, **kwargs)
    assert r.status_code == status and r.is_json
    assert set(r.json) == {"error", "message"} and r.json["message"]


def test_missing_key_on_openai_routes_uses_openai_error_shape(make_app):
    client = make_app(API_KEY="k").test_client()
    r = client.post("/v1/images/generations", json={"prompt": "a"})
    assert r.status_code == 401
    assert r.json["error"]["type"] == "authentication_error" and r.json["error"]["message"]


def test_retry_after_only_on_refusals_and_outcomes_are_logged(make_app, caplog):
    client = make_app(RATE_LIMIT="1/minute").test_client()
    with caplog.at_level("INFO", logger="sd_server"):
        ok = client.post("/jobs", json={"prompt": "a"})
        limited = client.post("/jobs", json={"prompt": "a"})
    assert ok.status_code == 202 and "Retry-After" not in ok.headers
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    assert "POST /jobs -> 202" in caplog.text and "POST /jobs -> 429" in caplog.text


# The page's scripts, styles and images come from this server; images are blob: URLs.
CSP = "default-src 'self'; img-src 'self' blob:; frame-ancestors 'none'"


def test_every_response_carries_the_security_headers(make_app):
    """Pages, files, JSON, and errors of every kind and dialect (an unexpected error is
    injected by replacing a view: none can be provoked on demand)."""
    app = make_app(RATE_LIMIT="1/minute")

    def broken():
        raise RuntimeError("boom")

    app.view_functions["openapi.openapi_json"] = broken
    client = app.test_client()
    client.post("/jobs", json={"prompt": "a cat"})
    calls = [("GET", "/", {}, 200), ("GET", "/health", {}, 200),
             ("GET", "/static/app.js", {}, 200), ("GET", "/favicon.ico", {}, 200),
             ("GET", "/nope", {}, 404), ("PUT", "/health", {}, 405),
             ("POST", "/generate", {"json": ["a cat"]}, 400),
             ("POST", "/sdapi/v1/txt2img", {"json": {"steps": 0}}, 422),
             ("POST", "/v1/images/generations", {"data": "a cat"}, 415),
             ("POST", "/jobs", {"json": {"prompt": "a cat"}}, 429),
             ("GET", "/openapi.json", {}, 500)]
    for method, path, kwargs, status in calls:
        r = client.open(path, method=method, **kwargs)
        assert r.status_code == status, path
        assert r.headers["Content-Security-Policy"] == CSP, path
        assert r.headers["X-Content-Type-Options"] == "nosniff", path
        assert r.headers["Referrer-Policy"] == "same-origin", path


# Deeper than Python's JSON decoder can recurse, and just deeper than the server allows.
DEEP_BODIES = {"5000 nested arrays": b"[" * 5000 + b"]" * 5000,
               "3000 nested objects as prompt": b'{"prompt": ' + b'{"a": ' * 3000 + b'"cat"'
               + b"}" * 3000 + b"}",
               "65 levels as prompt": b'{"prompt": ' + b"[" * 65 + b"]" * 65 + b"}"}


@pytest.mark.parametrize("name", DEEP_BODIES)
@pytest.mark.parametrize("path", [path for path, _ in GENERATING])
def test_deeply_nested_json_is_400_in_each_dialects_shape(client, path, name):
    r = client.post(path, data=DEEP_BODIES[name], content_type="application/json")
    assert r.status_code == 400 and r.is_json
    if path.startswith("/v1/"):  # OpenAI's error shape
        assert r.json["error"]["type"] == "invalid_request_error"
        message = r.json["error"]["message"]
    else:
        assert r.json["error"] == "invalid_json"
        message = r.json["message"]
    assert "more than 64 levels deep" in message
    if path.startswith("/sdapi/"):
        assert r.json["detail"] == message


# HTTP Basic auth (API_AUTH), alone and beside API_KEY.

def basic(user: str, password: str, encoding: str = "utf-8") -> dict:
    """An Authorization header as Open WebUI builds it (base64 of 'user:pass')."""
    import base64

    token = base64.b64encode(f"{user}:{password}".encode(encoding)).decode()
    return {"Authorization": f"Basic {token}"}


AUTH = "alice:pw-1,bob:p\u00e4ss:word"  # a password may hold ':' and non-ASCII


def test_basic_auth_guards_every_route_but_page_health_icon_and_docs(make_app):
    app = make_app(API_AUTH=AUTH)
    client = app.test_client()
    wrong = [{}, basic("alice", "pw-2"), basic("alice", "pw-1x"), basic("carol", "pw-1"),
             basic("alice", "p\u00e4ss:word"), {"Authorization": "Basic !!!"},
             {"Authorization": "Basic " + "YWxpY2U="},  # 'alice' with no colon
             {"Authorization": "Bearer pw-1"}]
    for method, path in protected_routes(app):
        for headers in wrong:
            r = client.open(path, method=method, json={"prompt": "a"}, headers=headers)
            assert r.status_code == 401, (method, path, headers)
            assert r.headers["WWW-Authenticate"] == 'Basic realm="sd-cpu-server", charset="UTF-8"'
    for headers in (basic("alice", "pw-1"), basic("bob", "p\u00e4ss:word"),
                    basic("bob", "p\u00e4ss:word", "latin-1"),  # what requests sends
                    {"authorization": basic("alice", "pw-1")["Authorization"].replace(
                        "Basic", "basic")}):
        assert client.get("/jobs", headers=headers).status_code == 200, headers
    for path in ("/", "/health", "/openapi.json", "/favicon.ico"):
        r = client.get(path)
        assert r.status_code == 200 and b"pw-1" not in r.data


def test_either_credential_is_enough_when_both_are_set(make_app, caplog):
    client = make_app(API_KEY="k-123", API_AUTH="alice:pw-1").test_client()
    with caplog.at_level("DEBUG"):
        assert client.get("/jobs", headers={"Authorization": "Bearer k-123"}).status_code == 200
        assert client.get("/jobs", headers=basic("alice", "pw-1")).status_code == 200
        r = client.get("/jobs", headers=basic("alice", "k-123"))
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == ('Basic realm="sd-cpu-server", charset="UTF-8", '
                                             "Bearer")
    assert "Basic" in r.json["message"] and "Bearer" in r.json["message"]
    assert "pw-1" not in caplog.text and "k-123" not in caplog.text  # never logged


@pytest.mark.parametrize("path, body, shape", [
    ("/generate", {"prompt": "a"}, "native"),
    ("/sdapi/v1/txt2img", {"prompt": "a"}, "a1111"),
    ("/v1/images/generations", {"prompt": "a"}, "openai")])
def test_wrong_basic_credential_is_401_in_each_dialects_shape(make_app, path, body, shape):
    client = make_app(API_AUTH="alice:pw-1").test_client()
    r = client.post(path, json=body, headers=basic("alice", "nope"))
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic ")
    if shape == "openai":
        assert r.json["error"]["type"] == "authentication_error"
    else:
        assert r.json["error"] == "unauthorized" and "API_AUTH" in r.json["message"]
    if shape == "a1111":
        assert r.json["detail"] == r.json["message"]


def test_the_pages_own_requests_get_no_basic_challenge(make_app):
    """A `Basic` challenge makes the browser pop its login dialog over the page's own; the
    page marks its requests (X-Requested-With: sd-cpu-page) and gets a challenge browsers
    do not act on."""
    client = make_app(API_AUTH="alice:pw-1").test_client()
    r = client.get("/jobs", headers={"X-Requested-With": "sd-cpu-page"})
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'xBasic realm="sd-cpu-server"'
    assert client.get("/jobs", headers={"X-Requested-With": "sd-cpu-page",
                                        **basic("alice", "pw-1")}).status_code == 200


@pytest.mark.parametrize("env, auth", [({}, "none"), ({"API_KEY": "k"}, "bearer"),
                                       ({"API_AUTH": "a:b"}, "basic"),
                                       ({"API_KEY": "k", "API_AUTH": "a:b"}, "either")])
def test_the_page_is_told_which_credential_to_ask_for(make_app, env, auth):
    import json
    import re

    page = make_app(**env).test_client().get("/").get_data(as_text=True)
    limits = json.loads(re.search(r'data-limits="([^"]*)"', page)[1].replace("&#34;", '"')
                        .replace("&quot;", '"'))
    assert limits["auth"] == auth


def test_requests_and_webuiapi_clients_authenticate_with_basic(live_server):
    """The real clients: requests' auth= tuple and webuiapi's set_auth (A1111's --api-auth)."""
    import requests
    import webuiapi

    server = live_server(API_AUTH="alice:pw-1")
    r = requests.post(server.url + "/generate", json={"prompt": "a", "steps": 1},
                      auth=("alice", "pw-1"), timeout=60)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/png"
    r = requests.post(server.url + "/generate", json={"prompt": "a"}, auth=("alice", "no"),
                      timeout=60)
    assert r.status_code == 401 and "Basic" in r.headers["WWW-Authenticate"]
    host, port = server.url.rsplit("//", 1)[1].split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), steps=1)
    with pytest.raises(RuntimeError) as refused:  # webuiapi raises (status, body) on a 401
        api.txt2img(prompt="a cat", width=64, height=64)
    assert refused.value.args[0] == 401
    api.set_auth("alice", "pw-1")
    result = api.txt2img(prompt="a cat", width=64, height=64, seed=3)
    assert result.image.size == (64, 64) and result.info["seed"] == 3


# The cross-site request guard: a page on another site may not POST/PUT/DELETE.

def cross_site_refused(r, shape: str = "native") -> bool:
    """Whether `r` is the guard's 403 in the dialect's shape."""
    if r.status_code != 403:
        return False
    if shape == "openai":
        return r.json["error"]["code"] == "cross_site_request" and \
            "CORS_ORIGINS" in r.json["error"]["message"]
    return r.json["error"] == "cross_site_request" and "CORS_ORIGINS" in r.json["message"]


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"}, {"Origin": "null"},
    {"Origin": "http://localhost.evil.example"}, {"Origin": "http://localhost:8080"},
    {"Referer": "http://evil.example/page.html"}, {"Referer": "not a url"},
    {"Origin": "http://evil.example", "Referer": "http://localhost/"}])
def test_cross_site_posts_are_refused_in_each_dialects_shape(client, headers):
    """The test client's host is 'localhost'; none of these is it."""
    assert cross_site_refused(client.post("/generate", json={"prompt": "a"}, headers=headers))
    assert cross_site_refused(client.post("/jobs", data="prompt=a", headers=headers))
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a"}, headers=headers)
    assert cross_site_refused(r) and r.json["detail"] == r.json["message"]
    r = client.post("/v1/images/edits", data={"prompt": "a"}, headers=headers,
                    content_type="multipart/form-data")
    assert cross_site_refused(r, "openai")
    assert cross_site_refused(client.delete("/jobs/abc", headers=headers))
    assert client.get("/jobs", headers=headers).json["jobs"] == []  # nothing was queued


@pytest.mark.parametrize("headers", [
    {}, {"Origin": "http://localhost"}, {"Origin": "https://localhost"},
    {"Origin": "http://localhost:80"}, {"Referer": "http://localhost/"}, {"Referer": ""}])
def test_same_site_requests_and_clients_without_origin_pass(client, headers):
    """No Origin or Referer (curl, SDKs), or this server's own host (a TLS proxy in front
    turns https into http, so the scheme is not compared)."""
    r = client.post("/jobs", json={"prompt": "a"}, headers=headers)
    assert r.status_code == 202, r.json


def test_cors_origins_may_post_and_reads_are_never_refused(make_app):
    client = make_app(CORS_ORIGINS="http://good.example:3000").test_client()
    good = {"Origin": "http://good.example:3000"}
    assert client.post("/jobs", json={"prompt": "a"}, headers=good).status_code == 202
    evil = {"Origin": "http://good.example:3001"}
    assert cross_site_refused(client.post("/jobs", json={"prompt": "a"}, headers=evil))
    assert client.get("/jobs", headers=evil).status_code == 200
    r = client.options("/jobs", headers={**good, "Access-Control-Request-Method": "POST"})
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == good["Origin"]
    anyone = make_app(CORS_ORIGINS="*").test_client()
    assert anyone.post("/jobs", json={"prompt": "a"}, headers=evil).status_code == 202


@pytest.mark.parametrize("host,status", [
    ("localhost:5000", 200), ("127.0.0.1", 200), ("[::1]:5000", 200),
    ("evil.example", 400), ("evil.example:5000", 400), ("127.0.0.1.evil.example", 400),
])
def test_a_local_server_answers_only_to_local_host_names(make_app, host, status):
    """DNS rebinding: a page whose name now points at 127.0.0.1 sends its own name as Host."""
    client = make_app().test_client()
    r = client.get("/health", headers={"Host": host})
    assert r.status_code == status
    if status == 400:
        assert r.json["error"] == "host_not_allowed" and "ALLOWED_HOSTS" in r.json["message"]
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "a"}, headers={"Host": host})
        assert r.status_code == 400 and r.json["detail"]  # in the dialect's own shape


def test_allowed_hosts_opens_the_lan_or_names_the_hosts(make_app):
    lan = make_app(HOST="0.0.0.0").test_client()  # auto: any name on a LAN address
    assert lan.get("/health", headers={"Host": "sd.lan:5000"}).status_code == 200
    named = make_app(ALLOWED_HOSTS="sd.lan").test_client()
    assert named.get("/health", headers={"Host": "sd.lan:5000"}).status_code == 200
    assert named.get("/health", headers={"Host": "localhost"}).status_code == 400
    anyone = make_app(ALLOWED_HOSTS="*").test_client()
    assert anyone.get("/health", headers={"Host": "whatever.example"}).status_code == 200


def test_with_several_users_a_job_is_its_makers_alone(make_app):
    """alice's job is a 404 to bob for its status, image, preview and cancel, and absent
    from his /jobs; alice sees it all (issue 21: owners)."""
    client = make_app(API_AUTH=AUTH).test_client()
    alice, bob = basic("alice", "pw-1"), basic("bob", "p\u00e4ss:word")
    job_id = client.post("/jobs", json={"prompt": "a"}, headers=alice).get_json()["id"]
    poll_until(lambda: client.get(f"/jobs/{job_id}", headers=alice).get_json()["state"]
               == "succeeded", 60, "alice's job")
    for method, path in (("GET", f"/jobs/{job_id}"), ("GET", f"/jobs/{job_id}/image"),
                         ("GET", f"/jobs/{job_id}/preview"),
                         ("POST", f"/jobs/{job_id}/cancel"), ("DELETE", f"/jobs/{job_id}")):
        assert client.open(path, method=method, headers=bob).status_code == 404, path
    assert job_id not in [j["id"] for j in client.get("/jobs", headers=bob).get_json()["jobs"]]
    assert job_id in [j["id"] for j in client.get("/jobs", headers=alice).get_json()["jobs"]]
    assert client.get(f"/jobs/{job_id}/image", headers=alice).status_code == 200


def test_one_shared_key_sees_every_job_as_before(make_app):
    client = make_app(API_KEY="k1").test_client()
    key = {"Authorization": "Bearer k1"}
    job_id = client.post("/jobs", json={"prompt": "a"}, headers=key).get_json()["id"]
    # Another holder of the same key, from another address, is the same client.
    assert client.get(f"/jobs/{job_id}", headers=key,
                      environ_base={"REMOTE_ADDR": "10.0.0.9"}).status_code == 200
