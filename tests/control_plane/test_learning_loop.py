"""The learning loop as a state machine: whatever the control plane accepts, publishing succeeds.

Hypothesis drives experiments being created and archived, batches of events (valid ones, and ones
with hostile contexts, unknown arms, stray outcomes and stitches) going through the same
validation as ``POST /v1/events``, time passing, and publish cycles. After every step every live
experiment's snapshot in KV decodes, and no publish has failed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from control_plane.distribution.kv_publishers import LocalKVPublisher
from control_plane.events.ingest import ingest
from control_plane.experiments import ExperimentSpec
from control_plane.learning.publish import publish_all
from control_plane.metrics import Metrics
from control_plane.storage.store import Store
from core import INDEX_KEY, LocalKV, decode_index, decode_snapshot, encode_batch, parse_batch, snapshot_key
from tests.factories import NOW, UNIT_KEY

VALUES = st.sampled_from(
    ["mobile", "desktop", "search", "DE", "unknown", "\ud800", "a\x00", "é", "x" * 128, ""]
)
FEATURES = st.lists(st.sampled_from(["device", "source", "country"]), max_size=3, unique=True)
EXAMPLES = max(5, int(os.environ.get("PERCH_FUZZ_EXAMPLES", "100")) // 5)


class LearningLoop(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        root = Path(self.tmp.name)
        self.store = Store.from_url(f"sqlite:///{root / 'perch.db'}", UNIT_KEY)
        self.store.migrate()
        self.kv = LocalKV(root)
        self.metrics = Metrics()
        self.now = NOW
        self.decisions: list[tuple[str, str]] = []
        self.live: set[str] = set()
        self.serial = 0
        self.created = 0

    def teardown(self) -> None:
        if hasattr(self, "store"):
            self.store.engine.dispose()
            self.tmp.cleanup()

    @rule(
        features=FEATURES,
        arms=st.integers(2, 4),
        kind=st.sampled_from(["binary", "numeric"]),
        min_units=st.integers(1, 3),
        half_life=st.none() | st.just(3600.0),
    )
    def create(
        self, features: list[str], arms: int, kind: str, min_units: int, half_life: float | None
    ) -> None:
        self.created += 1
        key = f"exp-{self.created}"
        spec = ExperimentSpec.from_dict(
            {
                "key": key,
                "arms": [{"key": f"arm{i}", "html": f"<b>{i}</b>"} for i in range(arms)],
                "default_arm": "arm0",
                "features": features,
                "reward": {"kind": kind, "window_s": 3600, "max_value": 10.0},
                "half_life_s": half_life,
                "min_segment_units": min_units,
            }
        )
        self.store.create_experiment(spec, self.now)
        self.live.add(key)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def archive(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.live)))
        self.store.archive_experiment(key, self.now)
        self.live.discard(key)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), n=st.integers(1, 12))
    def events(self, data: st.DataObject, n: int) -> None:
        events: list[dict[str, Any]] = []
        for _ in range(n):
            self.serial += 1
            kind = data.draw(st.sampled_from(["exposure", "exposure", "outcome", "stitch"]))
            if kind == "exposure" or not self.decisions:
                key = data.draw(st.sampled_from([*sorted(self.live), "never-created"]))
                decision = f"{self.serial:032x}"
                context = data.draw(st.dictionaries(st.sampled_from(["device", "source", "country"]), VALUES))
                events.append(
                    {
                        "type": "exposure",
                        "id": f"x-{decision}",
                        "ts": self.now,
                        "decision_id": decision,
                        "experiment": key,
                        "arm": data.draw(st.sampled_from(["arm0", "arm1", "arm2", "zzz"])),
                        "unit": data.draw(st.sampled_from(["u-1", "u-2", "u-3", f"u-{self.serial}", None])),
                        "propensity": 0.5,
                        "reason": data.draw(
                            st.sampled_from(["personalized", "personalized", "holdout", "stale"])
                        ),
                        "segment": "all",
                        "snapshot_version": data.draw(st.sampled_from([1, 2**63 - 1, 2**63])),
                        "context": context,
                    }
                )
                self.decisions.append((decision, key))
            elif kind == "outcome":
                decision, key = data.draw(st.sampled_from(self.decisions))
                events.append(
                    {
                        "type": "outcome",
                        "id": f"o-{self.serial}",
                        "ts": self.now + data.draw(st.integers(-1000, 7_200_000)),
                        "decision_id": decision,
                        "experiment": key,
                        "value": data.draw(st.sampled_from([1, 0, 3.5, -2, 1e12, 10**13])),
                        "unit": "u-1",
                    }
                )
            else:
                events.append(
                    {
                        "type": "stitch",
                        "id": f"s-{self.serial}",
                        "ts": self.now,
                        "anonymous_id": data.draw(st.sampled_from(["anon-1", "anon-2"])),
                        "user_id": data.draw(st.sampled_from(["user-1", "user-2", "\ud800"])),
                    }
                )
        # What POST /v1/events does with a batch: validate each event, store the valid ones.
        valid, _ = parse_batch(encode_batch(events))
        if valid:
            ingest(self.store, valid, None, self.now)

    @rule(seconds=st.integers(1, 7200))
    def time_passes(self, seconds: int) -> None:
        self.now += seconds * 1000

    @rule()
    def publish(self) -> None:
        self.now += 1001  # KV takes one write per key per second
        publish_all(
            self.store, LocalKVPublisher(self.kv), self.metrics, now_ms=lambda: self.now, draws=10_000
        )
        failures = self.metrics.publish_failures.collect()[0].samples
        assert all(sample.value == 0 for sample in failures), failures
        published = decode_index(self.kv.get(INDEX_KEY) or b"")[0]
        assert published == self.live
        for key in self.live:  # every live experiment has a snapshot out, whatever it was fed
            raw = self.kv.get(snapshot_key(key))
            assert raw is not None, key
            assert decode_snapshot(raw).experiment == key

    @invariant()
    def snapshots_decode(self) -> None:
        if not hasattr(self, "kv"):
            return
        for key in self.live:
            raw = self.kv.get(snapshot_key(key))
            if raw is not None:
                assert decode_snapshot(raw).experiment == key


TestLearningLoop = LearningLoop.TestCase
TestLearningLoop.settings = settings(max_examples=EXAMPLES, stateful_step_count=12, deadline=None)
