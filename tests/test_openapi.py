"""GET /openapi.json: valid OpenAPI 3, generated from the code, covering every route."""
import re

from openapi_spec_validator import validate


def spec_of(app) -> dict:
    """The served OpenAPI document."""
    r = app.test_client().get("/openapi.json")
    assert r.status_code == 200
    return r.json


def test_document_is_valid_openapi_3(app):
    validate(spec_of(app))


def test_every_registered_route_and_method_is_described(app):
    paths = spec_of(app)["paths"]
    rules = [rule for rule in app.url_map.iter_rules() if rule.endpoint != "static"]
    assert {rule.endpoint.split(".")[0] for rule in rules} >= {"core", "jobs", "a1111",
                                                                "openai_images", "openapi"}
    for rule in rules:
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        assert path in paths, f"{rule.rule} is missing"
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            op = paths[path][method.lower()]
            assert op["summary"] != rule.endpoint, f"{rule.endpoint} has no @doc"
            assert op["responses"]


def test_dialect_bodies_show_this_servers_limits(make_app):
    spec = spec_of(make_app(MAX_SIZE="192", MAX_BATCH="3"))
    a1111 = spec["paths"]["/sdapi/v1/txt2img"]["post"]
    body = a1111["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert body["width"]["maximum"] == 192 and body["cfg_scale"]["maximum"] == 20
    assert body["n_iter"]["maximum"] == 3 and body["seed"]["minimum"] == -1
    openai = spec["paths"]["/v1/images/generations"]["post"]
    body = openai["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert body["n"]["maximum"] == 3 and "64..192" in body["size"]["description"]


def test_each_dialect_documents_its_error_shape(app):
    paths = spec_of(app)["paths"]

    def error_schema(path, method, status):
        return paths[path][method]["responses"][status]["content"]["application/json"][
            "schema"]

    openai_error = error_schema("/v1/images/generations", "post", "400")
    assert set(openai_error["properties"]["error"]["properties"]) == {
        "message", "type", "param", "code"}
    a1111_error = error_schema("/sdapi/v1/txt2img", "post", "422")
    assert {"error", "message", "detail"} <= set(a1111_error["properties"])
    native_error = error_schema("/generate", "post", "400")
    assert native_error == {"$ref": "#/components/schemas/Error"}
    progress = paths["/sdapi/v1/progress"]["get"]
    assert progress["parameters"][0]["name"] == "skip_current_image"


def test_docs_page_is_open_and_loads_only_this_servers_scripts(make_app):
    client = make_app(API_KEY="sekret").test_client()
    r = client.get("/docs")
    assert r.status_code == 200 and r.mimetype == "text/html"
    html = r.get_data(as_text=True)
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in html
    assert "/static/docs.js" in html and "/openapi.json" in html
    assert "<script>" not in html and "http" not in html.split("<body>")[0]  # no CDN
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "unsafe" not in csp and "script-src" not in csp
    # The vendored files carry their licence.
    assert client.get("/static/vendor/swagger-ui/LICENSE").status_code == 200
