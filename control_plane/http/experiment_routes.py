"""The experiment endpoints: create, list, show, change, archive, publish now, and the report."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from control_plane.distribution.kv_publishers import KVPublisher
from control_plane.experiments import ExperimentSpec
from control_plane.http._io import Endpoints, JSONResponse, path_key, read_json
from control_plane.http.dashboard import has_session
from control_plane.learning.publish import Gate, PublishResult, publish_experiment, publish_index
from control_plane.learning.report import build_report
from control_plane.metrics import Metrics
from control_plane.settings import Settings
from control_plane.storage.store import Store
from core import snapshot_key

__all__ = ["ExperimentEndpoints", "experiment_routes"]

log = logging.getLogger("perch.control_plane")

_IF_MATCH = re.compile(r'"?([0-9]{1,18})"?')


class ExperimentEndpoints(Endpoints):
    def __init__(
        self, settings: Settings, store: Store, kv: KVPublisher, metrics: Metrics, now_ms: Callable[[], int]
    ) -> None:
        super().__init__(settings, store, now_ms)
        self.kv, self.metrics = kv, metrics

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
        doc = await read_json(request, self.settings.max_admin_body_bytes)
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
        key = path_key(request)
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
        changes = await read_json(request, self.settings.max_admin_body_bytes)
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
        record = await run_in_threadpool(self.experiment_or_404, path_key(request))

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
        record = await run_in_threadpool(self.experiment_or_404, path_key(request))
        report = await run_in_threadpool(build_report, self.store, record, self.now_ms())
        return JSONResponse(report.to_dict())


def experiment_routes(endpoints: ExperimentEndpoints) -> list[Route]:
    return [
        Route("/v1/experiments", endpoints.create_experiment, methods=["POST"]),
        Route("/v1/experiments", endpoints.list_experiments, methods=["GET"]),
        Route("/v1/experiments/{key}", endpoints.experiment, methods=["GET", "PATCH", "DELETE"]),
        Route("/v1/experiments/{key}/publish", endpoints.publish, methods=["POST"]),
        Route("/v1/experiments/{key}/report", endpoints.report, methods=["GET"]),
    ]
