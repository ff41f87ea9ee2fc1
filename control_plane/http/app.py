"""The control plane's HTTP API (Starlette), composed explicitly.

``create_app(settings, store, kv)`` wires routes, auth and the publish
schedule; nothing here is a module-level global, so tests build as many apps
as they like.  Admin endpoints take ``Authorization: Bearer <token>``;
``/v1/events`` takes the edge's ``X-Perch-Signature``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
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
from starlette.responses import JSONResponse as StarletteJSONResponse
from starlette.responses import Response
from starlette.routing import Route

from control_plane.distribution.kv_publishers import KVPublisher
from control_plane.events.group_commit import IngestWriter, ReplayedBatch
from control_plane.events.ingest import verified_tokens
from control_plane.experiments import ExperimentError, ExperimentSpec
from control_plane.http.dashboard import dashboard_routes, has_session
from control_plane.http.middleware import InternalErrorMiddleware
from control_plane.http.openapi import openapi_document
from control_plane.learning.publish import Gate, PublishResult, publish_all, publish_experiment, publish_index
from control_plane.learning.report import build_report
from control_plane.metrics import Metrics
from control_plane.settings import Settings
from control_plane.storage import privacy
from control_plane.storage.store import Conflict, NotFound, Store
from core import (
    KEY_RE,
    SIGNATURE_HEADER,
    EventError,
    JSONInputError,
    SignatureError,
    fresh_timestamp,
    is_text,
    parse_batch,
    parse_json,
    replay_key,
    snapshot_key,
    verify,
)

__all__ = ["create_app"]

log = logging.getLogger("perch.control_plane")

OPENAPI = openapi_document()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class JSONResponse(StarletteJSONResponse):
    """JSON that always encodes: an error message may quote what a client sent, lone surrogates
    included, and Starlette's UTF-8 rendering would turn that into a 500. Escaped, it stays JSON."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


async def _body(request: Request, limit: int) -> bytes:
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


async def _json(request: Request, limit: int) -> Any:
    raw = await _body(request, limit)
    try:
        # Text inside is left to the validators, whose 422 names the field that holds it.
        return parse_json(raw, check_text=False)
    except JSONInputError as exc:
        raise HTTPException(400, f"body must be JSON ({exc})") from None


def _path_key(request: Request) -> str:
    """The experiment key in the URL; one that could never exist is a 404 before any query."""
    key: str = request.path_params["key"]
    if not KEY_RE.fullmatch(key):
        raise HTTPException(404, f"no experiment {key[:140]!r}")
    return key


_IF_MATCH = re.compile(r'"?([0-9]{1,18})"?')


class Api:
    """The endpoints, bound to one store, KV publisher and metrics registry."""

    def __init__(
        self, settings: Settings, store: Store, kv: KVPublisher, metrics: Metrics, now_ms: Callable[[], int]
    ) -> None:
        self.settings, self.store, self.kv, self.metrics, self.now_ms = settings, store, kv, metrics, now_ms
        self.token = settings.admin_token.encode()
        self.writer = IngestWriter(
            store, on_commit=lambda batches, _events: metrics.ingest_group_batches.observe(batches)
        )

    def admin(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token):
            raise HTTPException(
                401,
                "admin endpoints need 'Authorization: Bearer <PERCH_ADMIN_TOKEN>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def experiment_or_404(self, key: str) -> Any:
        record = self.store.get_experiment(key)
        if record is None or record.archived:
            raise HTTPException(404, f"no experiment {key!r}")
        return record

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

    async def create_experiment(self, request: Request) -> Response:
        """
        summary: Create an experiment (admin).
        requestBody:
          description: "ExperimentSpec: key, arms [{key, payload?, html?}], default_arm, holdout, floor,
            features, model (segments or contextual; contextual by default when there are features),
            contextual {interactions, numeric, max_values, explore, prior_scale}, reward {kind, window_s,
            max_value}, prior {alpha, beta, shrinkage}, half_life_s, max_age_s, max_segments."
        responses:
          201: {description: Created; the stored experiment with its version.}
          409: {description: An experiment with this key exists.}
          422: {description: The definition breaks a rule; the message names it.}
        """
        self.admin(request)
        doc = await _json(request, self.settings.max_admin_body_bytes)
        spec = ExperimentSpec.create(doc)
        record = await run_in_threadpool(self.store.create_experiment, spec, self.now_ms())
        return JSONResponse(record.to_dict(), status_code=201)

    async def list_experiments(self, request: Request) -> Response:
        """
        summary: List experiments (admin).
        responses:
          200: {description: "{experiments: [...]}"}
        """
        self.admin(request)
        archived = request.query_params.get("archived") == "true"
        records = await run_in_threadpool(self.store.list_experiments, archived)
        return JSONResponse({"experiments": [r.to_dict() for r in records]})

    async def experiment(self, request: Request) -> Response:
        """
        summary: Show (GET), change (PATCH, optional If-Match version) or archive (DELETE) an experiment.
        responses:
          200: {description: The experiment.}
          404: {description: No such experiment.}
          409: {description: If-Match version is not the current one.}
          422: {description: The change breaks a rule.}
        """
        self.admin(request)
        key = _path_key(request)
        if request.method == "GET":
            record = await run_in_threadpool(self.experiment_or_404, key)
            doc = record.to_dict()
            doc["snapshots"] = await run_in_threadpool(self.store.snapshot_history, key, 20)
            doc["counters"] = await run_in_threadpool(self.store.counters, key)
            doc["outcomes"] = await run_in_threadpool(self.store.outcome_statuses, key)
            doc["history"] = await run_in_threadpool(self.store.history, key)
            return JSONResponse(doc)
        if request.method == "DELETE":
            record = await run_in_threadpool(self.store.archive_experiment, key, self.now_ms())
            await run_in_threadpool(self._retire, key)
            return JSONResponse(record.to_dict())
        changes = await _json(request, self.settings.max_admin_body_bytes)
        if not isinstance(changes, dict):
            raise HTTPException(400, "PATCH body must be a JSON object of the fields to change")
        expected = request.headers.get("if-match")
        match = _IF_MATCH.fullmatch(expected.strip()) if expected is not None else None
        if expected is not None and match is None:
            raise HTTPException(400, "If-Match must be the experiment version you read, e.g. If-Match: 3")
        version = int(match.group(1)) if match else None
        record = await run_in_threadpool(self.store.update_experiment, key, changes, self.now_ms(), version)
        return JSONResponse(record.to_dict())

    async def publish(self, request: Request) -> Response:
        """
        summary: Learn and publish an experiment now (admin).
        responses:
          200: {description: "{snapshot_version, kv_key, bytes}"}
          404: {description: No such experiment.}
        """
        self.admin(request)
        record = await run_in_threadpool(self.experiment_or_404, _path_key(request))

        def publish_now() -> PublishResult:
            with self.store.publish_lock(record.spec.key, wait=True):
                return publish_experiment(
                    self.store,
                    self.kv,
                    record,
                    self.metrics,
                    now_ms=self.now_ms,
                    force=True,
                    draws=self.settings.learner_draws,
                    gate=Gate(tolerance=self.settings.promotion_tolerance),
                )

        result = await run_in_threadpool(publish_now)
        await run_in_threadpool(self._publish_index)
        return JSONResponse(result.to_dict())

    def _retire(self, key: str) -> None:
        """Take an archived experiment off the edge: out of the index first (isolates stop at their
        next refresh), then its snapshot out of KV. A KV failure is logged: the archive stands, and
        the next publish cycle rewrites the index anyway."""
        try:
            self._publish_index()
            self.kv.delete_many([snapshot_key(key)])
        except Exception:
            log.exception("taking %s off the edge after archiving it failed", key)

    def _publish_index(self) -> None:
        with self.store.publish_lock(wait=True):
            publish_index(self.store, self.kv, now_ms=self.now_ms())

    async def report(self, request: Request) -> Response:
        """
        summary: "Per arm and per segment: exposures, outcomes, rate, posterior, P(best), allocation;
          personalized vs holdout lift with a 95% interval; snapshot history; alerts (admin)."
        responses:
          200: {description: The report (docs/report.md).}
          404: {description: No such experiment.}
        """
        if not await run_in_threadpool(has_session, request, self.settings, self.now_ms(), self.store):
            # the dashboard links here: its session will do, else the bearer token
            self.admin(request)
        record = await run_in_threadpool(self.experiment_or_404, _path_key(request))
        report = await run_in_threadpool(build_report, self.store, record, self.now_ms())
        return JSONResponse(report.to_dict())

    async def user(self, request: Request) -> Response:
        """
        summary: "GET /v1/users/{unit}/export: everything held about a visitor; DELETE /v1/users/{unit}:
          erase it and take it out of the statistics (admin)."
        responses:
          200: {description: "The export, or {deleted: {exposures, outcomes, stitches}}"}
        """
        self.admin(request)
        unit = request.path_params["unit"]
        if not 0 < len(unit) <= 256 or not is_text(unit):
            raise HTTPException(400, "unit ids are 1-256 characters of UTF-8 text without NUL")
        if request.method == "DELETE":
            deleted = await run_in_threadpool(privacy.erase, self.store, unit)
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
        """
        header = request.headers.get(SIGNATURE_HEADER)
        now_s = self.now_ms() // 1000
        try:
            # Before reading the body: an expired or malformed header costs us nothing.
            fresh_timestamp(header, now_s, self.settings.signature_tolerance_s)
        except SignatureError as exc:
            self.metrics.events_rejected.labels("signature").inc()
            return _error(401, str(exc))
        body = await _body(request, self.settings.max_event_body_bytes)
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
            return _error(401, str(exc))
        try:
            valid, rejected = parse_batch(body)
        except EventError as exc:
            self.metrics.events_rejected.labels("malformed").inc()
            return _error(400, str(exc))
        if rejected:
            self.metrics.events_rejected.labels("invalid_event").inc(len(rejected))
        if not valid:
            return _error(400, "no valid event in the batch", rejected=rejected[:20])
        signature = replay_key(self.settings.edge_secret, timestamp, body)
        try:
            tokens = verified_tokens(self.settings.edge_secret, valid)
            result = await self.writer.submit(valid, signature, self.now_ms(), tokens)
        except Exception as exc:
            if isinstance(exc, ReplayedBatch) or _is_duplicate_signature(exc):
                self.metrics.events_rejected.labels("replay").inc()
                # 409, not 401: an edge whose acknowledgement was lost and that resends within the
                # same second gets this, and counts the batch as delivered (it was stored).
                return _error(409, "this batch was already accepted (replayed signature)")
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
        Route("/v1/experiments", api.create_experiment, methods=["POST"]),
        Route("/v1/experiments", api.list_experiments, methods=["GET"]),
        Route("/v1/experiments/{key}", api.experiment, methods=["GET", "PATCH", "DELETE"]),
        Route("/v1/experiments/{key}/publish", api.publish, methods=["POST"]),
        Route("/v1/experiments/{key}/report", api.report, methods=["GET"]),
        Route("/v1/events", api.events, methods=["POST"]),
        # `path`: a user id may hold '/' (an email-like or namespaced id) and must stay reachable.
        Route("/v1/users/{unit:path}/export", api.user, methods=["GET"]),
        Route("/v1/users/{unit:path}", api.user, methods=["DELETE"]),
        *dashboard_routes(store, settings, now_ms),
    ]
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        ExperimentError: _status(422),
        NotFound: _status(404),
        Conflict: _status(409),
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
        return _error(code, str(exc))

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
