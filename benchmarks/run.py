"""``make bench``: every Perch benchmark in one run, written to ``benchmarks/RESULTS.md``.

    .venv/bin/python -m benchmarks.run                 # everything, ~20 minutes on 2 cores
    .venv/bin/python -m benchmarks.run --quick         # tiny sizes: checks the machinery only
    .venv/bin/python -m benchmarks.run --sections core,learner --output /tmp/r.md

Sections: ``core`` (pytest-benchmark: core on CPython against MABWiser and
Vowpal Wabbit), ``pyodide`` (the Worker bundle in real Pyodide under Node),
``learner`` (learn-and-publish cycle scaling), ``learning`` (share of the
oracle's lift, Perch's real loop against peers on simulated visitors), ``ingest`` (``POST
/v1/events`` of a real ``perch serve`` on SQLite and PostgreSQL) and
``http`` (``perch edge dev`` under concurrent load on loopback).  One fixed
seed (:data:`benchmarks.shapes.SEED`), synthetic data made here, nothing
downloaded; every figure is a measurement of this run, never a pass/fail.
A section that fails is reported as failed and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.common import ROOT, Stopwatch, load_average, machine
from benchmarks.shapes import SEED

SECTIONS = ("core", "pyodide", "learner", "learning", "ingest", "consume", "clickhouse", "profiles", "http")
DEFAULT_OUTPUT = ROOT / "benchmarks" / "RESULTS.md"


@dataclass(frozen=True)
class Plan:
    """How big each section runs: ``FULL`` for ``make bench``, ``QUICK`` to check the machinery."""

    core_max_time_s: float = 0.75
    core_min_rounds: int = 5
    pyodide: dict[str, Any] = field(default_factory=dict)
    learner: dict[str, Any] = field(default_factory=dict)
    learning: dict[str, Any] = field(default_factory=dict)
    ingest: dict[str, Any] = field(default_factory=dict)
    consume: dict[str, Any] = field(default_factory=dict)
    clickhouse: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, Any] = field(default_factory=dict)
    http: dict[str, Any] = field(default_factory=dict)


FULL = Plan()
QUICK = Plan(
    core_max_time_s=0.01,
    core_min_rounds=3,
    pyodide={"n": 300, "cold_budget_s": 0.2, "fetch_shapes": ((2, 1),), "fetch_cold_n": 30, "warmup_s": 0.0},
    learner={
        "event_sizes": (10**3, 10**5),
        "verify_sizes": (300,),
        "grid": ((2, 1), (2, 50)),
        "grid_events": 10**4,
        "repeats": 1,
        "contextual": (5, 3, 6, 50),
    },
    learning={"visitors": 4_000, "seeds": (1,)},
    ingest={"duration_s": 0.5, "loads": ((1, 2), (1, 8), (50, 2))},
    consume={"events": 5_000, "consumers": (1, 2)},
    clickhouse={"exposures": 10**5, "repeats": 3},
    profiles={"units": 20_000},
    http={"concurrency": (1, 4), "requests": 100, "seconds": 3.0, "warmup": 20},
)
# What `pytest benchmarks --benchmark-disable` (make test) runs, so no section can rot unnoticed.
SMOKE = Plan(
    core_max_time_s=0.01,
    core_min_rounds=1,
    pyodide={"n": 50, "cold_budget_s": 0.1, "fetch_shapes": ((2, 1),), "fetch_cold_n": 5, "warmup_s": 0.0},
    learner={
        "event_sizes": (10**3, 10**4),
        "verify_sizes": (100,),
        "grid": ((2, 1),),
        "grid_events": 10**3,
        "repeats": 1,
        "shape": (2, 15),
        "contextual": (2, 2, 3, 8),
    },
    learning={
        "visitors": 2_500,
        "seeds": (1,),
        "environments": ("additive",),
        "policies": ("uniform", "context-free TS", "Perch contextual"),
        "processes": 1,
    },
    ingest={"duration_s": 0.3, "loads": ((1, 2), (1, 8), (50, 2)), "backends": ("sqlite",)},
    consume={"events": 2_000, "consumers": (1,), "backends": ("sqlite", "chdb")},
    clickhouse={"exposures": 10**4, "repeats": 1},
    profiles={"units": 3_000},
    http={"concurrency": (2,), "requests": 40, "seconds": 3.0, "warmup": 10},
)


def run_core(plan: Plan) -> dict[str, Any]:
    """pytest-benchmark over test_core.py and test_peers.py in one process; its JSON, parsed."""
    with tempfile.TemporaryDirectory(prefix="perch-bench-core-") as tmp:
        out = Path(tmp) / "core.json"
        command = [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks/test_core.py",
            "benchmarks/test_peers.py",
            "--benchmark-only",
            f"--benchmark-json={out}",
            f"--benchmark-max-time={plan.core_max_time_s}",
            f"--benchmark-min-rounds={plan.core_min_rounds}",
            "--benchmark-warmup=on",
            "--benchmark-warmup-iterations=2000",
            "--benchmark-columns=min,median,mean,max,rounds",
            "--benchmark-sort=name",
            "-q",
            "-p",
            "no:cacheprovider",
        ]
        proc = subprocess.run(command, cwd=ROOT, check=False, capture_output=True, text=True)
        sys.stderr.write(proc.stdout[-4000:])
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"pytest-benchmark failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr}"
            )
        data = json.loads(out.read_text())
    return {
        "command": " ".join(["pytest", *command[3:]]).replace(str(out), "<json>"),
        "pytest_benchmark": data["version"],
        "benchmarks": [
            {"name": b["name"], "extra_info": b["extra_info"], "stats": b["stats"]}
            for b in data["benchmarks"]
        ],
        "skipped": proc.stdout.count(" skipped"),
    }


def _sections(plan: Plan) -> dict[str, Callable[[], dict[str, Any]]]:
    from benchmarks import (
        bench_clickhouse,
        bench_consume,
        bench_http,
        bench_ingest,
        bench_learner,
        bench_learning,
        bench_profiles,
        bench_pyodide,
    )

    return {
        "core": lambda: run_core(plan),
        "pyodide": lambda: bench_pyodide.run(**plan.pyodide),
        "learner": lambda: bench_learner.run(**plan.learner),
        "learning": lambda: bench_learning.run(**plan.learning),
        "ingest": lambda: bench_ingest.run(**plan.ingest),
        "consume": lambda: bench_consume.run(**plan.consume),
        "clickhouse": lambda: bench_clickhouse.run(**plan.clickhouse),
        "profiles": lambda: bench_profiles.run(**plan.profiles),
        "http": lambda: bench_http.run(**plan.http),
    }


def execute(plan: Plan, sections: list[str], *, quick: bool, command: str) -> dict[str, Any]:
    """Run ``sections`` at ``plan``'s sizes; a failing section is recorded, not raised."""
    total = Stopwatch()
    results: dict[str, Any] = {
        "seed": SEED,
        "quick": quick,
        "command": command,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": machine(),
        "sections": {},
    }
    runners = _sections(plan)
    for name in sections:
        print(f"[bench] {name} ... (load {load_average()})", file=sys.stderr, flush=True)
        clock = Stopwatch()
        try:
            results["sections"][name] = {"ok": True, **runners[name]()}
        except Exception as exc:  # report it and go on with the other sections
            traceback.print_exc()
            results["sections"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        results["sections"][name]["seconds"] = clock.seconds
        results["sections"][name]["others_cores"] = clock.others_cores()
        print(f"[bench] {name} done in {clock.seconds:.0f} s", file=sys.stderr, flush=True)
    results["seconds"] = total.seconds
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: check the machinery, not the figures"
    )
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated, of {','.join(SECTIONS)}"
    )
    parser.add_argument(
        "--output", type=Path, help=f"the Markdown report (default {DEFAULT_OUTPUT}; none with --quick)"
    )
    parser.add_argument("--json", type=Path, help="also write every raw figure as JSON here")
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {','.join(SECTIONS)}")
    plan = QUICK if args.quick else FULL
    output = args.output or (None if args.quick else DEFAULT_OUTPUT)
    command = (
        "python -m benchmarks.run" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    )

    results = execute(plan, wanted, quick=args.quick, command=command)
    text = report.render(results)
    if output is not None:
        output.write_text(text)
        print(f"[bench] wrote {output}", file=sys.stderr)
    else:
        print(text)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 1 if any(not s["ok"] for s in results["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
