"""The profile layer's endpoints: a visitor's stated attributes, and the profile Perch holds for them.

* ``PUT /v1/users/{id}/attributes`` (admin, or signed by the site): ``{"attributes": {"plan": "pro",
  "industry": null}, "do_not_personalize": false}`` sets (a value) or removes (null) attributes the
  site knows about a visitor; the next profile cycle turns the ones ``PERCH_PROFILE_ATTRIBUTES``
  lists into features. A site's backend need not hold the admin token (which can change
  experiments): with ``PERCH_SITE_SECRET`` set it signs the body as the edge signs its batches
  (``X-Perch-Signature: t=<unix>,v1=<HMAC-SHA256(secret, t + "." + body)>``, 300 s), and the body
  names the visitor (``"unit": "<id>"``, equal to the path's), so a signature covers one visitor.
  Sensitive attributes (core.profile: income, health, relationship status...) are refused, not
  stored. ``do_not_personalize`` is the visitor's own flag: the edge then serves them defaults.
* ``GET /v1/users/{id}/profile`` (admin): what their profile says, and why.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from control_plane.http._io import Endpoints, JSONResponse, read_body, read_json
from control_plane.settings import Settings
from control_plane.storage import profiles as rows
from control_plane.storage.schema import profiles
from control_plane.storage.store import Store
from core import (
    SIGNATURE_HEADER,
    JSONInputError,
    SignatureError,
    is_sensitive,
    is_text,
    parse_json,
    unit_tag,
    verify,
)
from core.profile import FEATURE_NAME_RE

__all__ = ["ProfileEndpoints", "profile_routes"]

MAX_ATTRIBUTES = 24


def _unit(request: Request) -> str:
    unit: str = request.path_params["unit"]
    if not 0 < len(unit) <= 256 or not is_text(unit):
        raise HTTPException(400, "unit ids are 1-256 characters of UTF-8 text without NUL")
    return unit


def _attributes(doc: Any) -> dict[str, str | None]:
    """The body's changes, each checked; the first rule broken is a 422 that names it."""
    if isinstance(doc, dict):
        doc = {k: v for k, v in doc.items() if k != "unit"}  # a signed body names its visitor
    if not isinstance(doc, dict) or not set(doc) <= {"attributes", "do_not_personalize"} or not doc:
        raise HTTPException(
            422, 'body must be {"attributes": {name: value or null}, "do_not_personalize": bool}'
        )
    attributes = doc.get("attributes", {})
    if not isinstance(attributes, dict) or len(attributes) > MAX_ATTRIBUTES:
        raise HTTPException(422, f"attributes: expected an object of at most {MAX_ATTRIBUTES} names")
    out: dict[str, str | None] = {}
    for name, value in attributes.items():
        if not FEATURE_NAME_RE.fullmatch(name) or name == rows.DNP:
            raise HTTPException(
                422, f"attribute {name!r}: names are 1-32 of a-z, 0-9 and '_', starting with a letter"
            )
        if is_sensitive(name):
            raise HTTPException(
                422, f"attribute {name!r} is in a sensitive category (core.profile): Perch does not hold it"
            )
        if value is not None and not (isinstance(value, str) and 0 < len(value) <= 64 and is_text(value)):
            raise HTTPException(
                422, f"attribute {name!r}: expected 1-64 characters of text, or null to remove it"
            )
        out[name] = value
    flag = doc.get("do_not_personalize")
    if flag is not None:
        if not isinstance(flag, bool):
            raise HTTPException(422, "do_not_personalize: expected true or false")
        out[rows.DNP] = "true" if flag else "false"
    return out


class ProfileEndpoints(Endpoints):
    def __init__(self, settings: Settings, store: Store, now_ms: Callable[[], int]) -> None:
        super().__init__(settings, store, now_ms)

    async def attributes(self, request: Request) -> Response:
        """
        summary: "PUT /v1/users/{unit}/attributes: set or remove a visitor's attributes (admin or signed)."
        responses:
          200: {description: "All of the visitor's attributes now held"}
          422: {description: "A name, value or sensitive attribute refused; the message says which."}
        """
        unit = _unit(request)
        changes = _attributes(await self._authorized_body(request, unit))
        tag = unit_tag(self.settings.edge_secret, unit)
        held = await run_in_threadpool(rows.set_attributes, self.store, unit, tag, changes, self.now_ms())
        return JSONResponse({"attributes": held})

    async def _authorized_body(self, request: Request, unit: str) -> Any:
        """The body, once the admin token or the site's signature over it (naming ``unit``) checks out."""
        header = request.headers.get(SIGNATURE_HEADER)
        if header is None or request.headers.get("authorization") or not self.settings.site_secret:
            self.admin(request)
            return await read_json(request, self.settings.max_admin_body_bytes)
        raw = await read_body(request, self.settings.max_admin_body_bytes)
        try:
            verify(self.settings.site_secret, header, raw, self.now_ms() // 1000)
        except SignatureError as exc:
            raise HTTPException(401, f"site signature refused: {exc}") from None
        try:
            doc = parse_json(raw, check_text=False)
        except JSONInputError as exc:
            raise HTTPException(400, f"body must be JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("unit") != unit:
            raise HTTPException(401, 'a signed body names its visitor: "unit" must equal the id in the path')
        return doc

    async def profile(self, request: Request) -> Response:
        """
        summary: "GET /v1/users/{unit}/profile: the visitor's profile: numbers, features and why (admin)."
        responses:
          200: {description: "The profile"}
          404: {description: "No profile built for this visitor (yet)."}
        """
        self.admin(request)
        unit_hash = self.store.hash_unit(_unit(request))

        def read() -> Any:
            with self.store.engine.connect() as conn:
                return conn.execute(
                    select(
                        profiles.c.doc, profiles.c.built_ms, profiles.c.published_digest, profiles.c.digest
                    ).where(profiles.c.unit_hash == unit_hash)
                ).first()

        row = await run_in_threadpool(read)
        if row is None:
            raise HTTPException(
                404, "no profile for this visitor (yet): profiles are built from their signals"
            )
        doc, built, published, digest = row
        return JSONResponse({**json.loads(doc), "built_ms": built, "published": published == digest})


def profile_routes(endpoints: ProfileEndpoints) -> list[Route]:
    return [
        Route("/v1/users/{unit:path}/attributes", endpoints.attributes, methods=["PUT"]),
        Route("/v1/users/{unit:path}/profile", endpoints.profile, methods=["GET"]),
    ]
