"""What every API endpoint shares: JSON that always encodes, error bodies, bounded request bodies,
the experiment key in a URL, and the admin check."""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse as StarletteJSONResponse

from control_plane.settings import Settings
from control_plane.storage.store import ExperimentRecord, Store
from core import KEY_RE, JSONInputError, parse_json

__all__ = ["Endpoints", "JSONResponse", "error", "path_key", "read_body", "read_json"]


class JSONResponse(StarletteJSONResponse):
    """JSON that always encodes: an error message may quote what a client sent, lone surrogates
    included, and Starlette's UTF-8 rendering would turn that into a 500. Escaped, it stays JSON."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing past ``limit`` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int) -> Any:
    raw = await read_body(request, limit)
    try:
        # Text inside is left to the validators, whose 422 names the field that holds it.
        return parse_json(raw, check_text=False)
    except JSONInputError as exc:
        raise HTTPException(400, f"body must be JSON ({exc})") from None


def path_key(request: Request) -> str:
    """The experiment key in the URL; one that could never exist is a 404 before any query."""
    key: str = request.path_params["key"]
    if not KEY_RE.fullmatch(key):
        raise HTTPException(404, f"no experiment {key[:140]!r}")
    return key


class Endpoints:
    """Handlers bound to one store, settings and clock, behind the admin token where they ask."""

    def __init__(self, settings: Settings, store: Store, now_ms: Callable[[], int]) -> None:
        self.settings, self.store, self.now_ms = settings, store, now_ms
        self.token = settings.admin_token.encode()

    def admin(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token):
            raise HTTPException(
                401,
                "admin endpoints need 'Authorization: Bearer <PERCH_ADMIN_TOKEN>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def experiment_or_404(self, key: str) -> ExperimentRecord:
        record = self.store.get_experiment(key)
        if record is None or record.archived:
            raise HTTPException(404, f"no experiment {key!r}")
        return record
