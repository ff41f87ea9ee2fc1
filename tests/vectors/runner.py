"""Checks ``core`` against the golden vectors; shared by every runtime.

Uses only the standard library and ``core`` so the Pyodide suite can import
it unchanged.  Each check returns a list of human-readable mismatches; an
empty list means the runtime agrees with the vectors bit for bit.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from typing import Any

from core import SnapshotError, bucket, decide, decide_ranked, decode_snapshot

HERE = Path(__file__).parent


def load(name: str) -> Any:
    return json.loads((HERE / name).read_text(encoding="utf-8"))


def run_decision(snapshots: dict[str, Any], case: dict[str, Any]) -> dict[str, Any]:
    decision = decide(
        snapshots[case["snapshot"]],
        case["unit"],
        case["context"],
        now_ms=case["now_ms"],
        rng=random.Random(case["rng_seed"]),
        consent=case["consent"],
    )
    return decision.to_dict()


def run_ranked(snapshots: dict[str, Any], case: dict[str, Any]) -> dict[str, Any]:
    decision = decide_ranked(
        snapshots[case["snapshot"]],
        case["unit"],
        case["context"],
        now_ms=case["now_ms"],
        rng=random.Random(case["rng_seed"]),
        primary=case["primary"],
        consent=case["consent"],
    )
    return decision.to_dict()


def check_hashing(doc: dict[str, Any]) -> list[str]:
    bad = []
    for case in doc["cases"]:
        got = bucket(case["unit"], case["salt"], case["version"])
        if got != case["bucket"]:
            bad.append(
                f"bucket({case['unit']!r}, {case['salt']!r}) = {got!r}, vector says {case['bucket']!r}"
            )
    return bad


def _check(doc: dict[str, Any], run: Any, label: str) -> list[str]:
    snapshots = {name: decode_snapshot(base64.b64decode(raw)) for name, raw in doc["snapshots"].items()}
    bad = []
    for i, case in enumerate(doc["cases"]):
        got = run(snapshots, case)
        if got != case["expected"]:
            diff = {k: (got.get(k), v) for k, v in case["expected"].items() if got.get(k) != v}
            bad.append(f"{label} {i} ({case['unit']!r}, {case['context']}): got vs vector {diff}")
    return bad


def check_decisions(doc: dict[str, Any]) -> list[str]:
    return _check(doc, run_decision, "case")


def check_ranked(doc: dict[str, Any]) -> list[str]:
    return _check(doc, run_ranked, "ranked case")


def check_rejections(doc: dict[str, Any]) -> list[str]:
    bad = []
    for case in doc["cases"]:
        try:
            decode_snapshot(base64.b64decode(case["bytes"]))
        except SnapshotError as exc:
            if str(exc) != case["error"]:
                bad.append(f"{case['name']}: error {str(exc)!r}, vector says {case['error']!r}")
        else:
            bad.append(f"{case['name']}: decoded, vector says {case['error']!r}")
    return bad


def check_all() -> dict[str, list[str]]:
    return {
        "hashing": check_hashing(load("hashing.json")),
        "decisions": check_decisions(load("decisions.json")),
        "ranked": check_ranked(load("ranked.json")),
        "rejections": check_rejections(load("rejections.json")),
    }


def sweep(count: int) -> list[list[Any]]:
    """Decisions for ``count`` generated visitors on every vector snapshot.

    Beyond the stored cases: both runtimes compute this and compare it whole,
    so any divergence in hashing, sampling or segment lookup shows up.
    """
    doc = load("decisions.json")
    snapshots = {name: decode_snapshot(base64.b64decode(raw)) for name, raw in doc["snapshots"].items()}
    devices, sources = ["desktop", "mobile", "tablet"], ["search", "social", "direct"]
    out = []
    for name, snap in snapshots.items():
        for i in range(count):
            context = {"device": devices[i % 3], "source": sources[(i // 3) % 3]}
            unit = None if i % 17 == 0 else f"sweep-{i}-é"
            decision = decide(snap, unit, context, now_ms=snap.created_at + 1000, rng=random.Random(i))
            out.append(
                [
                    name,
                    i,
                    decision.arm,
                    decision.reason,
                    decision.segment,
                    decision.propensity,
                    decision.decision_id,
                ]
            )
    return out


def runtime_info() -> dict[str, Any]:
    import sys

    import msgpack

    return {
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "msgpack": msgpack.version,
        "msgpack_c_extension": msgpack.Unpacker.__module__ == "msgpack._cmsgpack",
    }
