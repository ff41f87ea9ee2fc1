"""The control plane's HTTP API (Starlette), composed explicitly.

``create_app(settings, store, kv)`` wires routes, auth and the publish
schedule; nothing here is a module-level global, so tests build as many apps
as they like.  Admin endpoints take ``Authorization: Bearer <token>``;
``/v1/events`` takes the edge's ``X-Perch-Signature``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from control_plane.distribution.kv_publishers import KVPublisher
from control_plane.events.clickhouse_sink import store_batch
from control_plane.events.group_commit import IngestWriter, ReplayedBatch
from control_plane.events.ingest import verified_tokens
from control_plane.experiments import ExperimentError
from control_plane.http._io import Endpoints, JSONResponse, error, read_body
from control_plane.http.dashboard import dashboard_routes
from control_plane.http.experiment_routes import ExperimentEndpoints, experiment_routes
from control_plane.http.middleware import InternalErrorMiddleware
from control_plane.http.openapi import openapi_document
from control_plane.http.profile_routes import ProfileEndpoints, profile_routes
from control_plane.learning.publish import Gate, publish_all
from control_plane.metrics import Metrics
from control_plane.profiles.builder import ProfileSettings, profile_cycle
from control_plane.settings import Settings
from control_plane.storage import privacy
from control_plane.storage.clickhouse import ClickHouseError
from control_plane.storage.store import Conflict, NotFound, Store
from core import (
    SIGNATURE_HEADER,
    EventError,
    SignatureError,
    fresh_timestamp,
    is_text,
    parse_batch,
    profile_key,
    replay_key,
    verify,
)

__all__ = ["create_app"]

log = logging.getLogger("perch.control_plane")

OPENAPI = openapi_document()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Api(Endpoints):
    """Health, metrics, the OpenAPI document, privacy requests and the edge's events."""

    def __init__(
        self, settings: Settings, store: Store, kv: KVPublisher, metrics: Metrics, now_ms: Callable[[], int]
    ) -> None:
        super().__init__(settings, store, now_ms)
        self.kv, self.metrics = kv, metrics
        self.writer = IngestWriter(
            store, on_commit=lambda batches, _events: metrics.ingest_group_batches.observe(batches)
        )

    async def healthz(self, request: Request) -> Response:
        """
        responses:
          200:
            description: The service and its database answer.
        """
        await run_in_threadpool(self.store.list_experiments)
        return JSONResponse({"status": "ok", "database": self.store.dialect})

    async def metrics_endpoint(self, request: Request) -> Response:
        """
        summary: Prometheus metrics (admin; experiment keys are the operator's business).
        responses:
          200:
            description: Prometheus metrics.
        """
        self.admin(request)
        await run_in_threadpool(self._refresh_snapshot_ages)
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    def _refresh_snapshot_ages(self) -> None:
        now = self.now_ms()
        for record in self.store.list_experiments():
            last = self.store.latest_snapshot(record.spec.key)
            if last is not None:
                self.metrics.snapshot_version.labels(record.spec.key).set(last.version)
                self.metrics.snapshot_age.labels(record.spec.key).set((now - last.created_ms) / 1000)

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(OPENAPI)

    async def user(self, request: Request) -> Response:
        """
        summary: "GET /v1/users/{unit}/export: everything held about a visitor; DELETE /v1/users/{unit}:
          erase it and take it out of the statistics (admin)."
        responses:
          200: {description: "The export, or {deleted: {exposures, outcomes, stitches, signals, attributes}}"}
        """
        self.admin(request)
        unit = request.path_params["unit"]
        if not 0 < len(unit) <= 256 or not is_text(unit):
            raise HTTPException(400, "unit ids are 1-256 characters of UTF-8 text without NUL")
        if request.method == "DELETE":
            # The profile's KV values first, while the rows that name them are still here.
            tags = await run_in_threadpool(privacy.profile_tags, self.store, unit)
            keys = [profile_key(tag) for tag in tags]
            if keys:
                await run_in_threadpool(self.kv.delete_many, keys)
            deleted = await run_in_threadpool(privacy.erase, self.store, unit)
            if keys:
                # Again: a profile publish that read their row before the erasure committed may
                # have written the value after the first delete (control_plane.profiles.builder).
                await run_in_threadpool(self.kv.delete_many, keys)
            return JSONResponse({"deleted": deleted})
        return JSONResponse(await run_in_threadpool(privacy.export, self.store, unit))

    async def events(self, request: Request) -> Response:
        """
        summary: Ingest a signed batch of exposures, outcomes and stitches from the edge.
        description: "Header X-Perch-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, t + '.' + body)>;
          body {schema: 1, events: [...]}. Acknowledged only once committed; resending is harmless."
        responses:
          200: {description: "Stored: {accepted, duplicates, joined, late, pending, rejected}"}
          400: {description: Malformed batch.}
          401: {description: Missing, wrong or expired signature.}
          409: {description: This very batch was already accepted.}
          413: {description: Batch too large.}
          503: {description: "Not accepted here (events in a chDB that perch consume holds): send again."}
        """
        header = request.headers.get(SIGNATURE_HEADER)
        now_s = self.now_ms() // 1000
        try:
            # Before reading the body: an expired or malformed header costs us nothing.
            fresh_timestamp(header, now_s, self.settings.signature_tolerance_s)
        except SignatureError as exc:
            self.metrics.events_rejected.labels("signature").inc()
            return error(401, str(exc))
        body = await read_body(request, self.settings.max_event_body_bytes)
        try:
            timestamp = verify(
                self.settings.edge_secret,
                header,
                body,
                now=now_s,
                tolerance_s=self.settings.signature_tolerance_s,
            )
        except SignatureError as exc:
            self.metrics.events_rejected.labels("signature").inc()
            return error(401, str(exc))
        try:
            valid, rejected = parse_batch(body)
        except EventError as exc:
            self.metrics.events_rejected.labels("malformed").inc()
            return error(400, str(exc))
        if rejected:
            self.metrics.events_rejected.labels("invalid_event").inc(len(rejected))
        if not valid:
            return error(400, "no valid event in the batch", rejected=rejected[:20])
        signature = replay_key(self.settings.edge_secret, timestamp, body)
        if self.store.events_elsewhere:
            # chDB is held by `perch consume`: nothing is accepted here, so the edge keeps the batch.
            return error(503, f"events are not taken here: {self.store.events_elsewhere}")
        try:
            tokens = verified_tokens(self.settings.edge_secret, valid)
            if self.store.events is not None:  # a ClickHouse server: the consumer's path, per batch
                result = await run_in_threadpool(
                    store_batch, self.store, valid, signature, self.now_ms(), tokens=tokens
                )
            else:
                result = await self.writer.submit(valid, signature, self.now_ms(), tokens)
        except Exception as exc:
            if isinstance(exc, ReplayedBatch) or _is_duplicate_signature(exc):
                self.metrics.events_rejected.labels("replay").inc()
                # 409, not 401: an edge whose acknowledgement was lost and that resends within the
                # same second gets this, and counts the batch as delivered (it was stored).
                return error(409, "this batch was already accepted (replayed signature)")
            raise
        for kind, count in result.accepted.items():
            self.metrics.events_accepted.labels(kind).inc(count)
        self.metrics.events_duplicate.inc(result.duplicates)
        return JSONResponse({**result.to_dict(), "rejected": rejected[:100]})


def create_app(
    settings: Settings,
    store: Store,
    kv: KVPublisher,
    *,
    metrics: Metrics | None = None,
    now_ms: Callable[[], int] = _now_ms,
    schedule: bool = True,
) -> Starlette:
    metrics = metrics or Metrics()
    api = Api(settings, store, kv, metrics, now_ms)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(_schedule(settings, store, kv, metrics, now_ms)) if schedule else None
        try:
            yield
        finally:
            if task:
                task.cancel()

    routes = [
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/metrics", api.metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", api.openapi, methods=["GET"], include_in_schema=False),
        *experiment_routes(ExperimentEndpoints(settings, store, kv, metrics, now_ms)),
        Route("/v1/events", api.events, methods=["POST"]),
        *profile_routes(ProfileEndpoints(settings, store, now_ms)),
        # `path`: a user id may hold '/' (an email-like or namespaced id) and must stay reachable.
        Route("/v1/users/{unit:path}/export", api.user, methods=["GET"]),
        Route("/v1/users/{unit:path}", api.user, methods=["DELETE"]),
        *dashboard_routes(store, settings, now_ms),
    ]
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        ExperimentError: _status(422),
        NotFound: _status(404),
        Conflict: _status(409),
        ClickHouseError: _status(503),  # the event store is down or refused: nothing was stored
        HTTPException: _on_http,
    }
    app = Starlette(
        routes=routes,
        middleware=[Middleware(InternalErrorMiddleware)],
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    return app


def _status(code: int) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handler(request: Request, exc: Exception) -> Response:
        return error(code, str(exc))

    return handler


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def _is_duplicate_signature(exc: Exception) -> bool:
    from sqlalchemy.exc import IntegrityError

    return isinstance(exc, IntegrityError) and "seen_batches" in str(exc)


async def _schedule(
    settings: Settings, store: Store, kv: KVPublisher, metrics: Metrics, now_ms: Callable[[], int]
) -> None:
    while True:
        await asyncio.sleep(settings.publish_interval_s)
        try:
            cycle = partial(
                publish_all,
                store,
                kv,
                metrics,
                now_ms=now_ms,
                draws=settings.learner_draws,
                gate=Gate(tolerance=settings.promotion_tolerance),
            )
            await run_in_threadpool(cycle)
        except Exception:  # the schedule must outlive one bad cycle
            log.exception("publish cycle failed")
        try:
            profiles = ProfileSettings(attributes=settings.profile_attributes)
            await run_in_threadpool(profile_cycle, store, kv, profiles, now_ms())
        except Exception:
            log.exception("profile cycle failed")
