"""The profile builder at volume: a cycle's cost when 1 % of a million visitors changed.

A SQLite store holds ``units`` built profiles (each with two older signals, built a day ago) and
fitted clusters; then ``changed`` of those visitors send five new signals each. Timed:

* the **cycle** (``build_cycle``: find who changed, read their signals and attributes, compute,
  save) and the **publish** of what changed (``publish_profiles``, to an in-memory KV publisher:
  the KV side is Cloudflare's bulk write, measured by its own REST limits, not here);
* the same cycle over a store of ``units / 10`` profiles with the same number changed: a cycle
  costs O(changed visitors), so the ratio of the two should be near 1;
* a cycle where nobody changed;
* a **refit** of the clusters (weekly by default) on the sample of profiles it reads.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.targets import TARGETS

__all__ = ["run", "section", "verdicts"]

SECRET = "bench-edge-secret-0123456789"
DAY_MS = 86_400_000
CATEGORIES = [f"cat-{i}" for i in range(40)]


class _MemoryKV:
    """A KV publisher that only counts: the builder's cost, not a network's."""

    def __init__(self) -> None:
        self.items = 0
        self.bytes = 0

    def put_many(self, items: Mapping[str, bytes]) -> None:
        self.items += len(items)
        self.bytes += sum(len(v) for v in items.values())

    def delete_many(self, keys: Any) -> None:
        pass


def _store(root: Path, units: int, now_ms: int) -> Any:
    from sqlalchemy import func, insert, select

    from control_plane.profiles.builder import ProfileSettings
    from control_plane.profiles.clusters import fit
    from control_plane.storage import profiles as rows
    from control_plane.storage.schema import profiles, signals
    from control_plane.storage.store import Store
    from core import unit_tag

    store = Store.from_url(f"sqlite:///{root / f'perch-{units}.db'}", "bench-unit-salt")
    store.migrate()
    rng = random.Random(units)
    built = now_ms - DAY_MS
    settings = ProfileSettings()
    sample = []
    with store.write() as conn:
        for start in range(0, units, 50_000):
            profile_rows, signal_rows = [], []
            for i in range(start, min(units, start + 50_000)):
                unit = f"visitor-{i}"
                unit_hash, tag = store.hash_unit(unit), unit_tag(SECRET, unit)
                a, b = rng.sample(CATEGORIES, 2)
                affinities = {a: 0.75, b: 0.25}
                if len(sample) < 5000:
                    sample.append(affinities)
                doc = {
                    "numbers": {"engagement": 0.4, "ltv": 0.0, "churn": 0.1, "affinities": affinities},
                    "features": {"interest": a, "engagement": "mid", "ltv": "none", "churn": "low"},
                    "because": {"interest": f"you viewed {a}"},
                    "dnp": False,
                    "updated_ms": built,
                }
                profile_rows.append(
                    {
                        "unit_hash": unit_hash,
                        "tag": tag,
                        "doc": json.dumps(doc),
                        "digest": f"{i:064x}",
                        "published_digest": f"{i:064x}",
                        "due": False,
                        "built_ms": built,
                        "dnp": False,
                    }
                )
                for k, category in enumerate((a, b)):
                    signal_rows.append(
                        {
                            "event_id": f"g-{i}-{k}",
                            "unit_hash": unit_hash,
                            "tag": tag,
                            "kind": "page_view",
                            "category": category,
                            "ts_ms": built - k * DAY_MS,
                        }
                    )
            conn.execute(insert(profiles), profile_rows)
            conn.execute(insert(signals), signal_rows)
        clusters = fit(sample, max_k=settings.max_k, seed=1, now_ms=now_ms)
        assert clusters is not None
        rows.set_state(store, conn, "clusters", clusters.to_dict())
        # Everything so far was built into the profiles: the next cycle starts after it.
        rows.set_state(
            store, conn, "watermark", [int(conn.execute(select(func.max(signals.c.seq))).scalar() or 0), 0]
        )
    return store


def _change(store: Any, units: int, changed: int, now_ms: int) -> None:
    from control_plane.events.ingest import ingest
    from core import signal_event, unit_tag

    rng = random.Random(changed)
    events = []
    for i in rng.sample(range(units), changed):
        unit = f"visitor-{i}"
        for k in range(5):
            events.append(
                signal_event(
                    unit,
                    unit_tag(SECRET, unit),
                    "page_view",
                    now_ms - k * 1000,
                    category=rng.choice(CATEGORIES),
                )
            )
    for start in range(0, len(events), 5000):
        ingest(store, events[start : start + 5000], None, now_ms)


def _cycle(store: Any, now_ms: int) -> dict[str, Any]:
    from control_plane.profiles.builder import ProfileSettings, build_cycle, publish_profiles

    kv = _MemoryKV()
    t = time.perf_counter()
    result = build_cycle(store, ProfileSettings(batch=100_000), now_ms)
    built_s = time.perf_counter() - t
    t = time.perf_counter()
    published = publish_profiles(store, kv, limit=100_000)
    return {
        "built": result.built,
        "changed": result.changed,
        "build_s": built_s,
        "publish_s": time.perf_counter() - t,
        "published": published,
        "bytes_per_profile": kv.bytes / max(kv.items, 1),
    }


def run(*, units: int = 10**6, changed_share: float = 0.01) -> dict[str, Any]:
    from control_plane.profiles.builder import ProfileSettings
    from control_plane.profiles.clusters import fit
    from control_plane.storage import profiles as rows

    root = Path(tempfile.mkdtemp(prefix="perch-bench-profiles-"))
    now_ms = int(time.time() * 1000)
    changed = max(1, int(units * changed_share))
    out: dict[str, Any] = {"units": units, "changed": changed}
    try:
        for label, size in (("small", max(changed * 2, units // 10)), ("large", units)):
            t = time.perf_counter()
            store = _store(root, size, now_ms)
            setup_s = time.perf_counter() - t
            _change(store, size, changed, now_ms)
            cycle = _cycle(store, now_ms + 1000)
            idle = _cycle(store, now_ms + 2000)
            out[label] = {"units": size, "setup_s": setup_s, "cycle": cycle, "idle": idle}
            if label == "large":
                with store.engine.connect() as conn:
                    sample = [json.loads(d)["numbers"]["affinities"] for d in rows.sample_docs(conn, 5000)]
                t = time.perf_counter()
                clusters = fit(sample, max_k=ProfileSettings().max_k, seed=1, now_ms=now_ms)
                out["refit_s"] = time.perf_counter() - t
                out["clusters"] = len(clusters.centroids) if clusters else 0
            store.engine.dispose()
        small, large = out["small"]["cycle"], out["large"]["cycle"]
        out["growth"] = (large["build_s"] + large["publish_s"]) / (small["build_s"] + small["publish_s"])
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def verdicts(data: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    cycle, target = data["large"]["cycle"], TARGETS["profiles.growth"]
    return [
        (
            f"profile cycle, {data['changed']:,} of {data['units']:,} visitors changed",
            f"{cycle['build_s'] + cycle['publish_s']:.1f} s (build {cycle['build_s']:.1f} s, publish "
            f"{cycle['publish_s']:.1f} s); {data['growth']:.2f}x the same cycle over "
            f"{data['small']['units']:,} visitors",
            target.text,
            target.met(data["growth"]),
        )
    ]


def section(data: dict[str, Any]) -> list[str]:
    lines = [
        "## 5d. Profile builder",
        "",
        f"SQLite; {data['changed']:,} visitors send five signals each into a store of built profiles "
        "(two older signals each, fitted clusters); then one build cycle and one publish (to an in-memory "
        "KV publisher), and a second cycle with nothing changed.",
        "",
        "| profiles held | changed | build s | publish s | published | B per profile | idle cycle s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label in ("small", "large"):
        r = data[label]
        c, idle = r["cycle"], r["idle"]
        lines.append(
            f"| {r['units']:,} | {c['built']:,} | {c['build_s']:.2f} | {c['publish_s']:.2f} | "
            f"{c['published']:,} | {c['bytes_per_profile']:.0f} | {idle['build_s'] + idle['publish_s']:.3f} |"
        )
    lines += [
        "",
        f"Growth, large / small cycle: {data['growth']:.2f}x. A refit of the clusters on a 5,000-profile "
        f"sample: {data['refit_s']:.1f} s ({data['clusters']} clusters).",
        "",
    ]
    return lines
