"""The control plane's API as an OpenAPI 3.1 document (served at ``/openapi.json``).

Written out rather than generated from docstrings: one handler serves GET, PATCH and DELETE of
an experiment, and tools (schemathesis in ``make test``, client generators) need each operation's
parameters, bodies and security declared exactly. ``tests/control_plane/http/test_openapi.py`` checks
the document against the OpenAPI 3.1 schema, checks that it names every route the app serves,
and throws generated requests at every operation.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["openapi_document"]

_KEY = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:\\-]{0,127}$"}
_ERROR = {"$ref": "#/components/schemas/Error"}
_OBJECT = {"type": "object"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Malformed input; the message says what was expected.",
        401: "Missing or wrong credentials.",
        404: "No such experiment.",
        409: "The key exists, If-Match is not the current version, or the batch was stored before.",
        413: "Body too large.",
        422: "The definition breaks a rule; the message names it.",
    }
    return {str(code): _json(_ERROR, text[code]) for code in codes}


_EXPERIMENT_PATH = [{"name": "key", "in": "path", "required": True, "schema": _KEY}]
_ADMIN: list[dict[str, list[str]]] = [{"bearer": []}]

_SPEC = {
    "type": "object",
    "required": ["key", "arms", "default_arm"],
    "additionalProperties": False,
    "properties": {
        "key": _KEY,
        "arms": {
            "type": "array",
            "minItems": 2,
            "maxItems": 100,
            "items": {
                "type": "object",
                "required": ["key"],
                "additionalProperties": False,
                "properties": {
                    "key": _KEY,
                    "payload": {},
                    "html": {"type": "string"},
                    # Ranked experiments only: the item's group (a content category).
                    "group": {"type": "string", "minLength": 1, "maxLength": 64},
                },
            },
        },
        "default_arm": _KEY,
        "holdout": {"type": "number", "minimum": 0, "maximum": 0.5},
        "floor": {"type": "number", "minimum": 0, "maximum": 1},
        "features": {
            "type": "array",
            "maxItems": 16,  # 4 for model "segments"
            "items": {"type": "string", "minLength": 1, "maxLength": 64},
        },
        "reward": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "kind": {"enum": ["binary", "numeric"]},
                "window_s": {"type": "integer", "minimum": 1, "maximum": 7776000},
                "max_value": {"type": "number", "exclusiveMinimum": 0},
            },
        },
        "prior": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "alpha": {"type": "number", "exclusiveMinimum": 0},
                "beta": {"type": "number", "exclusiveMinimum": 0},
                "shrinkage": {"type": "number", "exclusiveMinimum": 0},
            },
        },
        "half_life_s": {"type": ["number", "null"], "minimum": 60},
        "max_age_s": {"type": "number", "minimum": 60},
        "max_segments": {"type": "integer", "minimum": 1, "maximum": 10000},
        "min_segment_units": {"type": "integer", "minimum": 1, "maximum": 1000000},
        "salt": {"type": "string", "maxLength": 128},
        "model": {"enum": ["segments", "contextual"]},
        "contextual": {"type": "object"},
        "ranking": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "description": "A ranked decision point: `slots` of the arms (its items) per request.",
            "properties": {
                "slots": {"type": "integer", "minimum": 1, "maximum": 32},
                "diversity": {"type": "number", "minimum": 0, "maximum": 1},
                "groups": {"type": "object", "additionalProperties": {"type": "string"}},
                "min_exposures": {"type": "integer", "minimum": 0},
                "period_s": {"type": "integer", "minimum": 10, "maximum": 31622400},
            },
        },
    },
}

_BATCH = {
    "type": "object",
    "required": ["schema", "events"],
    "properties": {
        "schema": {"const": 1},
        "events": {"type": "array", "maxItems": 5000, "items": {"type": "object"}},
    },
}


def _op(
    summary: str,
    ok: dict[str, Any],
    errors: tuple[int, ...] = (),
    *,
    security: list[dict[str, list[str]]] | None = _ADMIN,
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One operation: its success responses (``ok``), then the documented errors."""
    op: dict[str, Any] = {"summary": summary}
    if security is not None:
        op["security"] = security
    if parameters is not None:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    op["responses"] = {**ok, **_errors(*errors)}
    return op


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_EXPERIMENT = _ref("Experiment")
_UNIT_PATH = [
    {
        "name": "unit",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": 256},
    }
]

_COMPONENTS = {
    "securitySchemes": {
        "bearer": {"type": "http", "scheme": "bearer", "description": "PERCH_ADMIN_TOKEN"},
        "edgeSignature": {
            "type": "apiKey",
            "in": "header",
            "name": "X-Perch-Signature",
            "description": "t=<unix>,v1=<hex HMAC-SHA256(PERCH_EDGE_SECRET, t + '.' + body)>",
        },
        "siteSignature": {
            "type": "apiKey",
            "in": "header",
            "name": "X-Perch-Signature",
            "description": "t=<unix>,v1=<hex HMAC-SHA256(PERCH_SITE_SECRET, t + '.' + body)>; the body's "
            "unit equals the path's",
        },
    },
    "schemas": {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "ExperimentSpec": _SPEC,
        "Experiment": {
            "type": "object",
            "required": ["spec", "version", "archived"],
            "properties": {
                "spec": _ref("ExperimentSpec"),
                "version": {"type": "integer"},
                "archived": {"type": "boolean"},
            },
        },
        "EventBatch": _BATCH,
    },
}

# Every route the app serves, one entry per path and method: a table rather than code, so adding
# a route is adding a row, and test_openapi checks the rows against the app's routes.
_PATHS: dict[str, dict[str, Any]] = {
    "/healthz": {
        "get": _op(
            "Liveness: the service and its database answer.", {"200": _json(_OBJECT, "ok")}, security=None
        )
    },
    "/metrics": {
        "get": _op(
            "Prometheus metrics.",
            {
                "200": {
                    "description": "Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
            (401,),
        )
    },
    "/v1/experiments": {
        "post": _op(
            "Create an experiment.",
            {
                "201": _json(
                    _EXPERIMENT, "Created (version 1), or an archived key brought back as its next version."
                )
            },
            (400, 401, 409, 413, 422),
            body=_ref("ExperimentSpec"),
        ),
        "get": _op(
            "List experiments.",
            {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {"experiments": {"type": "array", "items": _EXPERIMENT}},
                    },
                    "The experiments.",
                )
            },
            (401,),
            parameters=[
                {"name": "archived", "in": "query", "required": False, "schema": {"enum": ["true", "false"]}}
            ],
        ),
    },
    "/v1/experiments/{key}": {
        "parameters": _EXPERIMENT_PATH,
        "get": _op(
            "An experiment with its snapshots, counters, outcomes and history.",
            {"200": _json(_EXPERIMENT, "The experiment.")},
            (401, 404),
        ),
        "patch": _op(
            "Change an experiment (not key, salt or features; arms stay).",
            {"200": _json(_EXPERIMENT, "Changed, version + 1.")},
            (400, 401, 404, 409, 413, 422),
            parameters=[
                {
                    "name": "If-Match",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "pattern": '^"?[0-9]{1,18}"?$'},
                }
            ],
            body={"type": "object"},
        ),
        "delete": _op(
            "Archive: the data is kept; the edge stops personalizing it.",
            {"200": _json(_EXPERIMENT, "Archived.")},
            (401, 404),
        ),
    },
    "/v1/experiments/{key}/publish": {
        "parameters": _EXPERIMENT_PATH,
        "post": _op(
            "Learn and publish now.",
            {"200": _json(_OBJECT, "{snapshot_version, kv_key, bytes, ...}")},
            (401, 404),
        ),
    },
    "/v1/experiments/{key}/report": {
        "parameters": _EXPERIMENT_PATH,
        "get": _op(
            "Arms, segments, holdout lift, history, OPE (docs/report.md).",
            {"200": _json(_OBJECT, "The report.")},
            (401, 404),
        ),
    },
    "/v1/events": {
        "post": _op(
            "The edge's signed batches of exposures, outcomes and stitches.",
            {"200": _json(_OBJECT, "Stored: accepted, duplicates, joined, late, pending, rejected.")},
            (400, 401, 409, 413),
            security=[{"edgeSignature": []}],
            body=_ref("EventBatch"),
        ),
    },
    "/v1/users/{unit}/export": {
        "parameters": _UNIT_PATH,
        "get": _op(
            "Everything held about a visitor (a user id covers its anonymous ids).",
            {"200": _json(_OBJECT, "The export.")},
            (400, 401),
        ),
    },
    "/v1/users/{unit}": {
        "parameters": _UNIT_PATH,
        "delete": _op(
            "Erase a visitor and take them out of the statistics.",
            {"200": _json(_OBJECT, "{deleted: {exposures, outcomes, stitches, signals, attributes}}")},
            (400, 401),
        ),
    },
    "/v1/users/{unit}/attributes": {
        "parameters": _UNIT_PATH,
        "put": _op(
            "Set (a value) or remove (null) a visitor's stated attributes and do-not-personalize flag.",
            {"200": _json(_OBJECT, "{attributes: every attribute now held}")},
            (400, 401, 422),
            security=[{"bearer": []}, {"siteSignature": []}],
            body={
                "type": "object",
                "additionalProperties": False,
                "minProperties": 1,
                "properties": {
                    "attributes": {
                        "type": "object",
                        "maxProperties": 24,
                        "additionalProperties": {"type": ["string", "null"], "minLength": 1, "maxLength": 64},
                    },
                    "do_not_personalize": {"type": "boolean"},
                    "unit": {"type": "string", "description": "with a site signature: the path's id"},
                },
            },
        ),
    },
    "/v1/users/{unit}/profile": {
        "parameters": _UNIT_PATH,
        "get": _op(
            "The visitor's profile: its numbers, features, why, and whether KV holds it.",
            {"200": _json(_OBJECT, "The profile.")},
            (400, 401, 404),
        ),
    },
}


def openapi_document() -> dict[str, Any]:
    """A fresh copy each time: callers may change theirs."""
    return copy.deepcopy(
        {
            "openapi": "3.1.0",
            "info": {
                "title": "Perch control plane",
                "version": "1",
                "description": "Experiments, event ingestion, reports, privacy. README: Security model.",
            },
            "components": _COMPONENTS,
            "paths": _PATHS,
        }
    )
