"""The OpenAPI document, complete: every request body and every error answer.

Routes read their bodies themselves (after authentication, with errors a person can
act on), so FastAPI cannot see them: a route names its body's model with
:func:`body`, and :func:`install` writes it into the document. Every operation also
lists the error answers the API gives, all shaped ``{"err": "..."}``, so that a client
generated from the document, or a fuzzer reading it, knows them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import TypeAdapter

_BODY = "x-regscan-body"  # in a route's openapi_extra until the document is built
_REF = "#/components/schemas/{model}"
ERROR = {
    "type": "object",
    "properties": {"err": {"type": "string", "description": "what went wrong, and how to fix it"}},
    "required": ["err"],
}
ERRORS = {
    "400": "the request is malformed: the message says what to fix",
    "401": "no valid credentials",
    "403": "the caller's role may not do this, or the image is outside the configuration",
    "404": "no such thing, or no such endpoint",
    "409": "conflicts with what is running (a regular scan, a key in use)",
    "413": "the body is larger than the API takes",
    "422": "an Idempotency-Key reused for another request",
    "429": "over a limit: ask again after Retry-After seconds",
    "503": "a service behind the API is not answering, or the API is busy: ask again",
}
# The API's versions: "1", or a release such as "34.04" (checked by the app itself).
VERSION_PATTERN = r"^\d+(\.\d+)?$"


# The models routes named, by the key their openapi_extra holds (the document is built
# from JSON-able values, so it names them rather than holds them).
_MODELS: dict[str, tuple[Any, bool]] = {}


def body(model: Any, *, required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` for a route whose body is ``model`` (a pydantic model or type)."""
    key = f"{len(_MODELS)}:{model!r}"
    _MODELS[key] = (model, required)
    return {_BODY: key}


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` build (once) the complete document."""

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _build(app)
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]


def _build(app: FastAPI) -> dict[str, Any]:
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR
    for schemas_name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(schemas_name, None)  # our validation errors are 400 {"err"}
    for item in doc["paths"].values():
        for operation in item.values():
            _request_body(operation, schemas)
            _errors(operation)
            _version(operation)
    return doc


def _request_body(operation: dict[str, Any], schemas: dict[str, Any]) -> None:
    key = operation.pop(_BODY, None)
    if key is None:
        return
    model, required = _MODELS[key]
    schema = TypeAdapter(model).json_schema(ref_template=_REF)
    schemas.update(schema.pop("$defs", {}))
    operation["requestBody"] = {
        "required": required,
        "content": {"application/json": {"schema": schema}},
    }


def _errors(operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    for code, what in ERRORS.items():
        responses[code] = {
            "description": what,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }


def _version(operation: dict[str, Any]) -> None:
    for parameter in operation.get("parameters", []):
        if parameter.get("in") == "path" and parameter.get("name") == "version":
            parameter["schema"] = {"type": "string", "pattern": VERSION_PATTERN}
