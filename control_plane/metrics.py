"""Prometheus metrics of one app instance (its own registry, so tests and apps don't collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events_accepted = Counter(
            "perch_events_accepted", "Events stored, by type", ["type"], registry=self.registry
        )
        self.events_rejected = Counter(
            "perch_events_rejected",
            "Events or batches refused, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.events_duplicate = Counter(
            "perch_events_duplicate", "Events already stored (resent batches)", registry=self.registry
        )
        self.ingest_group_batches = Histogram(
            "perch_ingest_group_batches",
            "Event batches stored per transaction (group commit)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.publish_seconds = Histogram(
            "perch_publish_seconds", "Time to learn and publish one experiment", registry=self.registry
        )
        self.publish_failures = Counter(
            "perch_publish_failures", "Publishes that failed", ["experiment"], registry=self.registry
        )
        self.promotion_blocked = Counter(
            "perch_promotion_blocked",
            "Learnt snapshots held back by the gate",
            ["experiment"],
            registry=self.registry,
        )
        self.learner_skipped_cells = Gauge(
            "perch_learner_skipped_cells",
            "(path, arm) cells the last learner run left out as unusable, by reason",
            ["experiment", "reason"],
            registry=self.registry,
        )
        self.snapshot_version = Gauge(
            "perch_snapshot_version",
            "Latest published snapshot version",
            ["experiment"],
            registry=self.registry,
        )
        self.snapshot_age = Gauge(
            "perch_snapshot_age_seconds",
            "Age of the latest published snapshot",
            ["experiment"],
            registry=self.registry,
        )
        self.snapshot_created = Gauge(
            "perch_snapshot_created_seconds",
            "When the latest snapshot was learnt (unix seconds); age = now - this",
            ["experiment"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
