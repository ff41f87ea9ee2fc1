"""The edge in real Pyodide under Node: the built Worker bundle, timed from inside.

Builds the bundle exactly as ``perch bundle build`` does, boots it in the
test suite's harness (``tests/pyodide/harness.mjs``, one Node process = one
isolate) beside :mod:`benchmarks.pyodide_edge`, and asks that module for
latency percentiles measured with Pyodide's ``time.perf_counter_ns``.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, load_average, summarize
from benchmarks.shapes import (
    HEADLINE,
    SHAPES,
    context_for,
    contextual_context,
    contextual_snapshot,
    ranked_snapshot,
    snapshot_of_shape,
)
from core import encode_snapshot

__all__ = ["run"]

PYODIDE_ASM = ROOT / "node_modules" / "pyodide" / "pyodide.asm.wasm"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _Isolate:
    def __init__(self, harness: Any) -> None:
        self.harness = harness

    def call(self, func: str, *args: Any, **kwargs: Any) -> Any:
        reply = self.harness(op="call", module="pyodide_edge", func=func, args=list(args), kwargs=kwargs)
        if not reply.get("ok"):
            raise RuntimeError(f"pyodide_edge.{func} failed in Pyodide: {reply.get('error')}")
        return reply["result"]


def _node_version(node: str) -> str:
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=False, timeout=30)
    return out.stdout.strip()


def _fresh(arms: int, segments: int) -> tuple[str, str, dict[str, str]]:
    """A snapshot created now (a stale one would skip the Thompson draw), its key and context."""
    snap = snapshot_of_shape(arms, segments, created_at=time.time_ns() // 1_000_000, max_age_s=6 * 3600.0)
    return _b64(encode_snapshot(snap)), snap.experiment, context_for(segments)


def run(
    *,
    n: int = 10_000,
    cold_budget_s: float = 6.0,
    fetch_shapes: tuple[tuple[int, int], ...] = ((2, 1), HEADLINE, (50, 500)),
    fetch_cold_n: int = 1_000,
    warmup_s: float = 5.0,
) -> dict[str, Any]:
    """Every figure of the Pyodide section; raises if Node or Pyodide is missing."""
    from deploy.bundle import build_bundle
    from tests.pyodide.conftest import Harness, node_executable

    node = node_executable()
    if node is None or not PYODIDE_ASM.exists():
        raise RuntimeError(f"Node tooling missing (node={node}, {PYODIDE_ASM}); run `make node`")
    tmp = Path(tempfile.mkdtemp(prefix="perch-bench-pyodide-"))
    try:
        bundle = build_bundle(tmp / "bundles", "bench")
        modules = tmp / "modules"
        modules.mkdir()
        shutil.copy(ROOT / "benchmarks" / "pyodide_edge.py", modules / "pyodide_edge.py")
        harness = Harness(node, bundle.path / "src", bundle.path / "python_modules", modules)
        try:
            return _measure(
                _Isolate(harness),
                n=n,
                cold_budget_s=cold_budget_s,
                fetch_shapes=fetch_shapes,
                fetch_cold_n=fetch_cold_n,
                warmup_s=warmup_s,
                header={
                    "node": _node_version(node),
                    "boot_ms": harness.boot_ms,
                    "bundle_gzip_bytes": bundle.manifest["total_gzip_size"],
                },
            )
        finally:
            harness.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _contextual(isolate: _Isolate, n: int, cold_budget_s: float) -> dict[str, Any]:
    """The contextual model's figures: warm decide, decode + decide, and ``Default.fetch``."""
    snap = contextual_snapshot()
    data = _b64(encode_snapshot(snap))
    context = contextual_context()
    fresh = contextual_snapshot(created_at=time.time_ns() // 1_000_000, max_age_s=6 * 3600.0)
    assert snap.model is not None
    return {
        "arms": len(snap.arms),
        "features": len(snap.context_features),
        "columns": snap.model.dim,
        "bytes": len(base64.b64decode(data)),
        "decide": summarize(isolate.call("decide_latency", data, context, n, raw=True)["samples_ns"]),
        "cold": isolate.call("cold_latency", data, context, n, budget_s=cold_budget_s),
        "fetch": isolate.call("fetch_latency", _b64(encode_snapshot(fresh)), fresh.experiment, context, n),
    }


def _ranked(isolate: _Isolate, n: int) -> dict[str, Any]:
    """A ranked decision point's warm decide (5 of 50 items), for a visitor with a known interest
    and for one without (the top item's group is the primary then)."""
    snap = ranked_snapshot()
    assert snap.ranking is not None
    data = _b64(encode_snapshot(snap))
    context = context_for(len(snap.segments))
    runs = {
        who: isolate.call("ranked_latency", data, context, n, primary)["samples_ns"]
        for who, primary in (("interest", "g1"), ("no_interest", None))
    }
    return {
        "items": len(snap.arms),
        "slots": snap.ranking.slots,
        "segments": len(snap.segments),
        "groups": len(snap.ranking.group_names),
        "bytes": len(base64.b64decode(data)),
        "decide": summarize([x for samples in runs.values() for x in samples]),
        **{who: summarize(samples) for who, samples in runs.items()},
    }


def _merged(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Summaries of two halves of one measurement, as one (their raw samples pooled)."""
    return {
        part: summarize([x for r in runs for x in r["samples_ns"][part]])
        for part in ("fetch", "server_timing")
    }


def _measure(
    isolate: _Isolate,
    *,
    n: int,
    cold_budget_s: float,
    fetch_shapes: tuple[tuple[int, int], ...],
    fetch_cold_n: int,
    warmup_s: float,
    header: dict[str, Any],
) -> dict[str, Any]:
    out: dict[str, Any] = {**header, "load_before": load_average()}
    out["runtime"] = isolate.call("runtime")
    out["timer_overhead"] = isolate.call("timer_overhead")
    snapshots = {shape: encode_snapshot(snapshot_of_shape(*shape)) for shape in SHAPES}
    out["snapshot_bytes"] = {f"{a}x{s}": len(data) for (a, s), data in snapshots.items()}

    # V8 compiles Pyodide's WebAssembly in tiers, in the background: let it finish
    # before measuring, as it has in a Worker isolate that has served a while.
    headline = _fresh(*HEADLINE)
    started = time.monotonic()
    while time.monotonic() - started < warmup_s:
        isolate.call("decide_latency", _b64(snapshots[HEADLINE]), context_for(HEADLINE[1]), 2_000)
        isolate.call("fetch_latency", *headline, 300)
    out["warmup_s"] = round(time.monotonic() - started, 1)

    # Two passes over the shapes, merged: a passing disturbance (a GC, a neighbour) is
    # spread over all shapes rather than landing on one of them.
    samples: dict[str, list[int]] = {f"{a}x{s}": [] for a, s in SHAPES}
    for part in (n // 2, n - n // 2):
        for a, s in SHAPES:
            reply = isolate.call("decide_latency", _b64(snapshots[(a, s)]), context_for(s), part, raw=True)
            samples[f"{a}x{s}"] += reply["samples_ns"]
    out["decide"] = {key: summarize(values) for key, values in samples.items()}
    # The headline shape always gets all n runs; the others stop after their budget.
    out["cold"] = {
        f"{a}x{s}": isolate.call(
            "cold_latency",
            _b64(snapshots[(a, s)]),
            context_for(s),
            n,
            budget_s=None if (a, s) == HEADLINE else cold_budget_s,
        )
        for a, s in SHAPES
    }
    out["fetch"] = {
        f"{a}x{s}": isolate.call("fetch_latency", *_fresh(a, s), n, budget_s=None) for a, s in fetch_shapes
    }
    out["fetch_cold"] = {
        "{}x{}".format(*HEADLINE): isolate.call("fetch_latency", *headline, fetch_cold_n, cold=True)
    }
    # Profile hydration: the same requests without profile reads, and with a profile in KV for every
    # visitor (each read once: an isolate's first request of that visitor), alternated in tenths so
    # both see the same machine (this VM's speed drifts within a run).
    hydration: dict[str, list[dict[str, Any]]] = {"off": [], "hit": []}
    for part in [n // 10] * 9 + [n - 9 * (n // 10)]:
        for mode, runs in hydration.items():
            runs.append(isolate.call("fetch_latency", *headline, part, profiles=mode, raw=True))
    out["profiles"] = {mode: _merged(runs) for mode, runs in hydration.items()}
    out["profiles"]["reads"] = [r["profile_reads"] for r in hydration["hit"]]
    out["contextual"] = _contextual(isolate, n, cold_budget_s)
    out["ranked"] = _ranked(isolate, n)
    out["load_after"] = load_average()
    return out
