"""The OpenAPI 3 document, generated from the registered routes and the request fields.

Each view declares its summary, request schema and responses with `@doc(...)`; the
document walks `app.url_map`, so a route cannot be added without appearing in it.
"""
from __future__ import annotations

import re
from typing import Any, Callable

from flask import Blueprint, current_app, jsonify, render_template

from api import services
from params import request_fields

bp = Blueprint("openapi", __name__)

ERROR_SCHEMA = {"type": "object", "required": ["error", "message"],
                "properties": {"error": {"type": "string", "description": "short code"},
                               "message": {"type": "string", "description": "what to do"}}}


def doc(summary: str, request: Any = None, responses: dict[int, Any] | None = None,
        tags: tuple[str, ...] = (), **extra: Any) -> Callable:
    """Attach OpenAPI facts to a view function (request: a schema, 'generation', or a
    callable returning a schema, for bodies whose limits come from the settings; extra
    `content_type` for a body that is not JSON, e.g. multipart/form-data)."""
    def wrap(fn: Callable) -> Callable:
        fn.openapi = {"summary": summary, "request": request, "responses": responses or {},
                      "tags": list(tags), **extra}
        return fn

    return wrap


def generation_schema() -> dict[str, Any]:
    """The native generation body as a JSON Schema, with this server's limits."""
    specs = request_fields(services().settings)
    return {"type": "object", "additionalProperties": False,
            "required": [s.name for s in specs if s.required],
            "properties": {s.name: s.schema() for s in specs}}


def _response(status: int, spec: Any) -> dict[str, Any]:
    if isinstance(spec, str) and spec.startswith("image/"):
        return {"description": f"{status}", "content": {spec: {"schema": {
            "type": "string", "format": "binary"}}}}
    if isinstance(spec, tuple):  # (description, schema)
        desc, schema = spec
        return {"description": desc, "content": {"application/json": {"schema": schema}}}
    if isinstance(spec, dict):
        return {"description": f"{status}", "content": {"application/json": {"schema": spec}}}
    return {"description": spec or f"{status}"}


def build_spec(app) -> dict[str, Any]:
    """Walk every registered route and describe it."""
    paths: dict[str, Any] = {}
    schemas = {"Error": ERROR_SCHEMA, "GenerationRequest": generation_schema()}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        meta = getattr(view, "openapi", {"summary": rule.endpoint, "responses": {}})
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        item = paths.setdefault(path, {})
        params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in rule.arguments]
        params += [{"name": name, "in": "query", "required": False, "schema": schema}
                   for name, schema in meta.get("query", {}).items()]
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            op: dict[str, Any] = {"summary": meta["summary"], "operationId":
                                  f"{rule.endpoint}_{method.lower()}".replace(".", "_"),
                                  "responses": {}}
            if meta.get("tags"):
                op["tags"] = meta["tags"]
            if params:
                op["parameters"] = params
            body = meta.get("request")
            if callable(body):  # built now, inside the app, so it shows this server's limits
                body = body()
            if body is not None and method in ("POST", "PUT", "PATCH"):
                schema = ({"$ref": "#/components/schemas/GenerationRequest"}
                          if body == "generation" else body)
                op["requestBody"] = {"required": True, "content": {
                    meta.get("content_type", "application/json"): {"schema": schema}}}
            for status, spec in sorted(meta["responses"].items()):
                op["responses"][str(status)] = _response(status, spec)
            error_ref = {"$ref": "#/components/schemas/Error"}
            for status in meta.get("errors", (400, 401, 404, 415, 429, 503)):
                op["responses"].setdefault(str(status), {
                    "description": "error", "content": {"application/json": {
                        "schema": meta.get("error_schema", error_ref)}}})
            if not op["responses"]:
                op["responses"]["200"] = {"description": "OK"}
            item[method.lower()] = op
    return {"openapi": "3.0.3",
            "info": {"title": "CPU Stable Diffusion server", "version": "1.0.0",
                     "description": "Text-to-image on the CPU: native, job, AUTOMATIC1111 "
                                    "and OpenAI-compatible APIs."},
            "paths": paths,
            "components": {"schemas": schemas, "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"}}}}


@bp.get("/openapi.json")
@doc("This document: every route of every dialect.", responses={200: {"type": "object"}},
     errors=())
def openapi_json():
    """Serve the generated OpenAPI document."""
    return jsonify(build_spec(current_app))


@bp.get("/docs")
@doc("This document for people: Swagger UI (vendored under static/vendor/swagger-ui).",
     responses={200: "text/html"}, errors=())
def docs():
    """Serve the API reference page, which renders /openapi.json in the browser."""
    return render_template("docs.html")
