"""The control plane's API as an OpenAPI 3.1 document (served at ``/openapi.json``).

Written out rather than generated from docstrings: one handler serves GET, PATCH and DELETE of
an experiment, and tools (schemathesis in ``make test``, client generators) need each operation's
parameters, bodies and security declared exactly. ``tests/control_plane/test_openapi.py`` checks
the document against the OpenAPI 3.1 schema, checks that it names every route the app serves,
and throws generated requests at every operation.
"""

from __future__ import annotations

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
                "properties": {"key": _KEY, "payload": {}, "html": {"type": "string"}},
            },
        },
        "default_arm": _KEY,
        "holdout": {"type": "number", "minimum": 0, "maximum": 0.5},
        "floor": {"type": "number", "minimum": 0, "maximum": 1},
        "features": {
            "type": "array",
            "maxItems": 4,
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


def openapi_document() -> dict[str, Any]:
    experiment = {"$ref": "#/components/schemas/Experiment"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Perch control plane",
            "version": "1",
            "description": "Experiments, event ingestion, reports, privacy. README: Security model.",
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "PERCH_ADMIN_TOKEN"},
                "edgeSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Perch-Signature",
                    "description": "t=<unix>,v1=<hex HMAC-SHA256(PERCH_EDGE_SECRET, t + '.' + body)>",
                },
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
                "ExperimentSpec": _SPEC,
                "Experiment": {
                    "type": "object",
                    "required": ["spec", "version", "archived"],
                    "properties": {
                        "spec": {"$ref": "#/components/schemas/ExperimentSpec"},
                        "version": {"type": "integer"},
                        "archived": {"type": "boolean"},
                    },
                },
                "EventBatch": _BATCH,
            },
        },
        "paths": {
            "/healthz": {
                "get": {
                    "summary": "Liveness: the service and its database answer.",
                    "responses": {"200": _json(_OBJECT, "ok")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics.",
                    "security": _ADMIN,
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_errors(401),
                    },
                }
            },
            "/v1/experiments": {
                "post": {
                    "summary": "Create an experiment.",
                    "security": _ADMIN,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/ExperimentSpec"}}
                        },
                    },
                    "responses": {
                        "201": _json(
                            experiment,
                            "Created (version 1), or an archived key brought back as its next version.",
                        ),
                        **_errors(400, 401, 409, 413, 422),
                    },
                },
                "get": {
                    "summary": "List experiments.",
                    "security": _ADMIN,
                    "parameters": [
                        {
                            "name": "archived",
                            "in": "query",
                            "required": False,
                            "schema": {"enum": ["true", "false"]},
                        }
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {"experiments": {"type": "array", "items": experiment}},
                            },
                            "The experiments.",
                        ),
                        **_errors(401),
                    },
                },
            },
            "/v1/experiments/{key}": {
                "parameters": _EXPERIMENT_PATH,
                "get": {
                    "summary": "An experiment with its snapshots, counters, outcomes and history.",
                    "security": _ADMIN,
                    "responses": {"200": _json(experiment, "The experiment."), **_errors(401, 404)},
                },
                "patch": {
                    "summary": "Change an experiment (not key, salt or features; arms stay).",
                    "security": _ADMIN,
                    "parameters": [
                        {
                            "name": "If-Match",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "pattern": '^"?[0-9]{1,18}"?$'},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "responses": {
                        "200": _json(experiment, "Changed, version + 1."),
                        **_errors(400, 401, 404, 409, 413, 422),
                    },
                },
                "delete": {
                    "summary": "Archive: the data is kept; the edge stops personalizing it.",
                    "security": _ADMIN,
                    "responses": {"200": _json(experiment, "Archived."), **_errors(401, 404)},
                },
            },
            "/v1/experiments/{key}/publish": {
                "parameters": _EXPERIMENT_PATH,
                "post": {
                    "summary": "Learn and publish now.",
                    "security": _ADMIN,
                    "responses": {
                        "200": _json(_OBJECT, "{snapshot_version, kv_key, bytes, ...}"),
                        **_errors(401, 404),
                    },
                },
            },
            "/v1/experiments/{key}/report": {
                "parameters": _EXPERIMENT_PATH,
                "get": {
                    "summary": "Arms, segments, holdout lift, history, OPE (docs/report.md).",
                    "security": _ADMIN,
                    "responses": {"200": _json(_OBJECT, "The report."), **_errors(401, 404)},
                },
            },
            "/v1/events": {
                "post": {
                    "summary": "The edge's signed batches of exposures, outcomes and stitches.",
                    "security": [{"edgeSignature": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/EventBatch"}}
                        },
                    },
                    "responses": {
                        "200": _json(
                            _OBJECT, "Stored: accepted, duplicates, joined, late, pending, rejected."
                        ),
                        **_errors(400, 401, 409, 413),
                    },
                },
            },
            "/v1/users/{unit}/export": {
                "parameters": [
                    {
                        "name": "unit",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 256},
                    }
                ],
                "get": {
                    "summary": "Everything held about a visitor (a user id covers its anonymous ids).",
                    "security": _ADMIN,
                    "responses": {"200": _json(_OBJECT, "The export."), **_errors(400, 401)},
                },
            },
            "/v1/users/{unit}": {
                "parameters": [
                    {
                        "name": "unit",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 256},
                    }
                ],
                "delete": {
                    "summary": "Erase a visitor and take them out of the statistics.",
                    "security": _ADMIN,
                    "responses": {
                        "200": _json(_OBJECT, "{deleted: {exposures, outcomes, stitches}}"),
                        **_errors(400, 401),
                    },
                },
            },
        },
    }
