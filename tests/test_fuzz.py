"""Property-based fuzzing of every route: whatever the body, headers or content type, the
server never answers 500 and every error is JSON with a message."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FIELDS = ["prompt", "negative_prompt", "seed", "steps", "guidance_scale", "width", "height",
          "scheduler", "n", "size", "response_format", "cfg_scale", "sampler_name",
          "batch_size", "n_iter", "model", "hires", "enable_hr", "hr_scale", "hr_upscaler",
          "hr_resize_x", "hr_sampler_name", "denoising_strength"]

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=300))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=8)
# Mostly plausible bodies (known field names, wild values), so validation is exercised deeply.
plausible = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6)
small_valid = st.fixed_dictionaries({"prompt": st.text(min_size=1, max_size=20)}, optional={
    "steps": st.integers(0, 3), "width": st.sampled_from([64, 72, 63]),
    "seed": st.integers(-1, 2**32), "n": st.integers(0, 3)})


def nest(depth: int, kind: str, field: str | None) -> bytes:
    """A JSON value nested `depth` arrays/objects deep: the whole body, or one field's value."""
    opening, closing = (b"[", b"]") if kind == "array" else (b'{"a": ', b"}")
    value = opening * depth + b"1" + closing * depth
    return value if field is None else b'{"prompt": "a", "%s": %s}' % (field.encode(), value)


# Nesting around the server's limit of 64 and past Python's recursion limit, as the whole
# body, a field's value or an ignored field.
nested = st.builds(nest, st.sampled_from([63, 64, 65, 999, 1000, 3000, 5000, 30000]),
                   st.sampled_from(["array", "object"]), st.none() | st.sampled_from(FIELDS + ["x"]))
# Numbers no field allows: thousands of digits (past Python's int-parsing limit), overflowing
# exponents, JSON's non-standard NaN/Infinity, negative zero, just past 2^32 and 2^64.
huge_numbers = st.one_of(st.integers(1, 6000).map(lambda n: "1" + "0" * n),
                         st.integers(1, 6000).map(lambda n: "-0." + "0" * n + "1"),
                         st.sampled_from(["1e999", "-1e999", "1e-999", "NaN", "Infinity",
                                          "-Infinity", "-0", "4294967296",
                                          "18446744073709551616"]))
huge = st.builds(lambda field, number: b'{"prompt": "a", "%s": %s}' % (field.encode(),
                                                                       number.encode()),
                 st.sampled_from(FIELDS), huge_numbers)
# JSON in the other encodings it allows (UTF-16/32, with or without a byte-order mark), a
# UTF-8 BOM, and lone surrogates: escaped in the JSON text, or raw (so not valid UTF-8).
encodings = st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le",
                             "utf-8-sig"])
lone_surrogates = st.sampled_from([0xD800, 0xDBFF, 0xDC00, 0xDFFF]).map(chr)
odd_text = st.one_of(
    st.builds(lambda body, encoding: json.dumps(body).encode(encoding),
              small_valid | plausible, encodings),
    st.builds(lambda field, c: json.dumps({"prompt": "a" + c, field: c}).encode(),
              st.sampled_from(FIELDS), lone_surrogates),
    lone_surrogates.map(lambda c: json.dumps({"prompt": c}, ensure_ascii=False).encode(
        "utf-8", "surrogatepass")),
    st.sampled_from([b"\xef\xbb\xbf" + b'{"prompt": "a"}', b"\xff\xfe{}",
                     b"\xfe\xff\x00{\x00}"]),
)
hostile = st.one_of(nested, huge, odd_text)
bodies = st.one_of(
    plausible.map(lambda d: json.dumps(d).encode()),
    small_valid.map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    hostile,
)
content_types = st.sampled_from([
    "application/json", "application/json; charset=utf-8", "text/plain", "",
    "application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz",
    "application/json; charset=latin-1", "image/png", "application/jsonx"])
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
headers = st.dictionaries(st.sampled_from(["Authorization", "Accept", "X-Forwarded-For",
                                           "Origin", "Content-Encoding", "Range"]),
                          header_text, max_size=3)
path_ids = st.text(st.characters(min_codepoint=48, max_codepoint=122), min_size=1, max_size=20)


@pytest.fixture
def fuzz_app(make_app):
    # Tiny limits so that the bodies that are valid generate in milliseconds.
    return make_app(MAX_STEPS="3", DEFAULT_STEPS="1", MAX_SIZE="72", DEFAULT_SIZE="64",
                    QUEUE_SIZE="2", MAX_BATCH="2")


def routes(app):
    """(method, path template, argument names) for every registered route."""
    out = []
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            out.append((method, rule.rule, sorted(rule.arguments)))
    return out


def check(response):
    """No 500s; errors are JSON with a message (native or OpenAI shape)."""
    assert response.status_code != 500 and response.status_code < 600
    if response.status_code >= 400:
        assert response.is_json, response.get_data(as_text=True)[:200]
        body = response.get_json()
        if isinstance(body.get("error"), dict):  # OpenAI dialect
            assert body["error"]["message"]
        else:
            assert set(body) >= {"error", "message"} and body["message"]


# Reproducible runs; the app fixture is shared by the examples of one test on purpose.
FUZZING = settings(deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.function_scoped_fixture,
                                          HealthCheck.too_slow, HealthCheck.data_too_large])
# The README's Security section gives the number of cases: 1,200 + 300.
ROUTE_CASES, HOSTILE_CASES = 1200, 300


@settings(FUZZING, max_examples=ROUTE_CASES)
@given(data=st.data(), body=bodies, content_type=content_types, extra=headers)
def test_no_body_header_or_content_type_causes_a_500(fuzz_app, data, body, content_type, extra):
    client = fuzz_app.test_client()
    every = routes(fuzz_app)
    posts = [r for r in every if r[0] == "POST"]  # where bodies matter: drawn more often
    method, template, args = data.draw(st.one_of(st.sampled_from(posts), st.sampled_from(posts),
                                                 st.sampled_from(every)), label="route")
    path = template
    for arg in args:
        path = path.replace(f"<{arg}>", data.draw(path_ids, label=arg))
    if path.startswith("/static/"):
        path = "/static/" + data.draw(path_ids, label="file")
    kwargs = {"headers": {**extra}}
    if method in ("POST", "PUT", "PATCH", "DELETE"):
        kwargs["data"] = body
        if content_type:
            kwargs["headers"]["Content-Type"] = content_type
    check(client.open(path, method=method, **kwargs))


@settings(FUZZING, max_examples=HOSTILE_CASES)
@given(path=st.sampled_from(["/generate", "/jobs", "/sdapi/v1/txt2img",
                             "/v1/images/generations"]), body=hostile)
def test_hostile_json_to_a_generating_route_is_never_a_500(fuzz_app, path, body):
    """Deep nesting, huge numbers and odd encodings, labelled as JSON, where bodies are
    parsed: each is a generation or an error in the route's dialect, never a 500."""
    check(fuzz_app.test_client().post(path, data=body, content_type="application/json"))
