"""RESULTS.md section 2: the edge in real Pyodide (warm decision, cold path, whole fetch)."""

from __future__ import annotations

from typing import Any

from benchmarks.report_format import ms, num, p, shape, table

__all__ = ["pyodide_section"]

_HEADS = ["arms x segments", "n", "p50", "p99", "p99.9", "max"]


def pyodide_section(py: dict[str, Any]) -> list[str]:
    rt = py.get("runtime", {})
    lines = [
        "## 2. Edge in real Pyodide",
        "",
        "The Worker bundle built as `perch bundle build` builds it "
        f"({py.get('bundle_gzip_bytes', 0):,} bytes gzipped), run by `tests/pyodide/harness.mjs` in "
        f"Pyodide {rt.get('pyodide')} (Python "
        f"{rt.get('python')}, msgpack C extension: {rt.get('msgpack_c_extension')}) under Node "
        f"{py.get('node')}; one Node process is one isolate (booted in {py.get('boot_ms', 0) / 1000:.1f} s, "
        f"then {py.get('warmup_s')} s of warm-up traffic while V8 tiers up Pyodide's WebAssembly). "
        "Every duration is `time.perf_counter_ns()` inside Pyodide around exactly the code measured "
        "(`benchmarks/pyodide_edge.py`); two back-to-back clock reads cost "
        f"p50 {num(p(py.get('timer_overhead'), 'p50_us'), 2)} µs, p99 "
        f"{num(p(py.get('timer_overhead'), 'p99_us'), 2)} µs. Times in ms.",
        "",
        "**Warm decision** — `decide()` on the isolate's decoded snapshot, returning visitors (two "
        "passes over all shapes, merged, so a passing disturbance does not land on one shape):",
        "",
        *table(_HEADS, [_row(k, v) for k, v in py.get("decide", {}).items()]),
        *_cold(py),
        *_fetch(py),
    ]
    ctx = py.get("contextual")
    if ctx:
        lines += _contextual(ctx)
    ranked = py.get("ranked")
    if ranked:
        lines += _ranked(ranked)
    return lines


def _ranked(r: dict[str, Any]) -> list[str]:
    return [
        "",
        f"**Ranked decision point** (schema 3: {r['slots']} positions from {r['items']} items in "
        f"{r['groups']} groups, {r['segments']} segments, every fifth item with a floor to honour, "
        f"the per-position propensity table; {r['bytes']:,} bytes): warm `decide_ranked`, a new "
        "visitor each time, with a profile interest and without one (then the top item's group is "
        "the primary):",
        "",
        *_latencies(
            "visitor",
            (("with an interest", r["interest"]), ("without", r["no_interest"]), ("both", r["decide"])),
        ),
    ]


def _latencies(what: str, rows: tuple[tuple[str, dict[str, Any]], ...]) -> list[str]:
    """A table of latency summaries: n, p50, p99, p99.9 and max in ms, one row per (name, summary)."""
    return table(
        [what, "n", "p50", "p99", "p99.9", "max"],
        [
            [name, f"{v.get('n', 0):,}", *(ms(p(v, k)) for k in ("p50_us", "p99_us", "p999_us", "max_us"))]
            for name, v in rows
        ],
    )


def _row(key: str, s: dict[str, Any]) -> list[str]:
    return [
        shape(key),
        f"{s.get('n', 0):,}",
        ms(p(s, "p50_us")),
        ms(p(s, "p99_us")),
        ms(p(s, "p999_us")),
        ms(p(s, "max_us")),
    ]


def _cold(py: dict[str, Any]) -> list[str]:
    sizes = py.get("snapshot_bytes", {})
    return [
        "**Cold path** — KV bytes (a JS `ArrayBuffer`) → `bytes` → `decode_snapshot` → `decide`, what a "
        "fresh isolate (or a changed snapshot) pays once; shapes whose 10,000 runs would take too long "
        "stop after their time budget (at least 1,000 runs):",
        "",
        *table(
            [*_HEADS, "snapshot bytes"],
            [[*_row(k, v), f"{sizes.get(k, 0):,}"] for k, v in py.get("cold", {}).items()],
        ),
    ]


def _fetch(py: dict[str, Any]) -> list[str]:
    fetch_rows = []
    for cold, group in ((False, py.get("fetch", {})), (True, py.get("fetch_cold", {}))):
        for key, r in group.items():
            f, st, wu = r.get("fetch"), r.get("server_timing"), r.get("wait_until")
            fetch_rows.append(
                [
                    shape(key) + (" (cold isolate)" if cold else ""),
                    f"{f.get('n', 0):,}",
                    ms(p(f, "p50_us")),
                    ms(p(f, "p99_us")),
                    ms(p(f, "p999_us")),
                    ms(p(st, "p50_us")),
                    ms(p(st, "p99_us")),
                    ms(p(wu, "p50_us")),
                    ms(p(wu, "p99_us")),
                    ", ".join(f"{k}: {v}" for k, v in sorted(r.get("reasons_checked", {}).items())),
                ]
            )
    return [
        "**Whole `Default.fetch`** — `GET /v1/decide?experiment=…&ctx.device=…&ctx.source=…` with a "
        "returning visitor's cookie, through the SDK's entrypoint wrapper (request and response "
        "conversion, routing, identity, context, KV through the binding wrapper, decision, JSON), with "
        "a `KvNamespace` stand-in and the control plane's `fetch` answered in-process. *Server-Timing* is "
        "the `perch;dur` the handler reports for its decisions; *waitUntil* is the background work after "
        "the response (signing and sending the exposure), timed apart because it never delays the "
        "response:",
        "",
        *table(
            [
                "arms x segments",
                "n",
                "fetch p50",
                "fetch p99",
                "fetch p99.9",
                "Server-Timing p50",
                "Server-Timing p99",
                "waitUntil p50",
                "waitUntil p99",
                "reasons (checked 1 in 100)",
            ],
            fetch_rows,
        ),
    ]


def _contextual(ctx: dict[str, Any]) -> list[str]:
    label = f"{ctx['arms']} arms, {ctx['features']} features, {ctx['columns']} columns"
    return [
        f"**Contextual model** (schema 2, {label}, {ctx['bytes']:,} bytes; a visitor with every "
        "feature set, one to a value the model never saw): warm `decide`, the cold path (decode + "
        "decide) and the whole `Default.fetch` as above:",
        "",
        *_latencies(
            "what",
            (
                ("warm decide", ctx["decide"]),
                ("decode + decide", ctx["cold"]),
                ("Default.fetch", ctx["fetch"]["fetch"]),
            ),
        ),
    ]
