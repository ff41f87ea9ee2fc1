"""``benchmarks/RESULTS.md`` from the figures of one ``benchmarks.run``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from benchmarks import bench_consume
from benchmarks.shapes import ARMS, HEADLINE, SEGMENTS, SHAPES

__all__ = ["render"]

HEAD = "{}x{}".format(*HEADLINE)
HEAD_LABEL = f"{HEADLINE[0]} arms x {HEADLINE[1]} segments"


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> list[str]:
    align = align or "l" + "r" * (len(headers) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def _num(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "—"
    if abs(x) >= 100 and digits <= 1:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def _ms(us: float | None) -> str:
    return "—" if us is None else f"{us / 1000:.3f}"


def _ms_unit(us: float | None) -> str:
    return "not measured" if us is None else f"{us / 1000:.3f} ms"


def _shape(key: str) -> str:
    arms, segments = key.split("x")
    return f"{arms} x {segments}"


def _verdict(value: float | None, target: float, higher_is_better: bool = False) -> str:
    if value is None:
        return "not measured"
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "**missed**"


# --- sections --------------------------------------------------------------------------------


def _core_index(core: dict[str, Any]) -> dict[tuple[str, int | None, int | None], dict[str, Any]]:
    out = {}
    for b in core.get("benchmarks", []):
        info = b["extra_info"]
        key = (info.get("kind", b["name"]), info.get("arms"), info.get("segments"))
        if info.get("kind") == "generator":
            key = (f"generator.{info['generator']}", info.get("arms"), None)
        out[key] = {**b["stats"], **info}
    return out


def _median_us(
    index: dict[Any, Any], kind: str, arms: int | None = None, segments: int | None = None
) -> float | None:
    entry = index.get((kind, arms, segments))
    return None if entry is None else entry["median"] * 1e6


def _ratio(peer: float | None, perch: float | None) -> float | None:
    return None if peer is None or perch is None or perch == 0 else peer / perch


def core_section(core: dict[str, Any]) -> list[str]:
    ix = _core_index(core)
    lines = [
        "## 1. Core on CPython (pytest-benchmark)",
        "",
        f"`{core.get('command', 'pytest benchmarks')}` "
        f"(pytest-benchmark {core.get('pytest_benchmark', '?')}). "
        "Medians in µs per call. *x MABWiser* and *x VW* are the peer's median divided by Perch's "
        "`decide` median for the same shape: above 1, Perch is faster. MABWiser: one fitted "
        "`ThompsonSampling` `MAB` per segment, looked up from the context, then `predict()`. Vowpal "
        "Wabbit: `--cb_explore_adf -q sa --epsilon 0.05`, `predict` on the visitor's text examples "
        "(shared device/source features, one line per arm) and a draw from the returned PMF. See "
        "`benchmarks/peers.py`.",
        "",
    ]
    rows = []
    for arms, segments in SHAPES:
        perch = _median_us(ix, "perch.decide", arms, segments)
        mab = _median_us(ix, "mabwiser.ts_predict", arms, segments)
        vw = _median_us(ix, "vw.cb_explore_adf_predict", arms, segments)
        decode = _median_us(ix, "perch.decode", arms, segments)
        size = ix.get(("perch.decode", arms, segments), {}).get("snapshot_bytes")
        rows.append(
            [
                f"{arms} x {segments}",
                _num(perch),
                _num(mab),
                _num(_ratio(mab, perch), 2),
                _num(vw),
                _num(_ratio(vw, perch), 2),
                _num(decode),
                "—" if size is None else f"{size:,}",
            ]
        )
    lines += _table(
        [
            "arms x segments",
            "Perch `decide` µs",
            "MABWiser TS µs",
            "x MABWiser",
            "VW cb_explore_adf µs",
            "x VW",
            "`decode_snapshot` µs",
            "snapshot bytes",
        ],
        rows,
    )
    pre = [
        [
            f"{arms} x 50",
            _num(_median_us(ix, "vw.cb_explore_adf_predict_preparsed", arms, 50)),
            _num(
                _ratio(
                    _median_us(ix, "vw.cb_explore_adf_predict_preparsed", arms, 50),
                    _median_us(ix, "perch.decide", arms, 50),
                ),
                2,
            ),
        ]
        for arms in ARMS
    ]
    lines += [
        "VW's floor: `predict` on examples parsed once beforehand (a request cannot do this: its "
        "context is new), plus the draw from the PMF:",
        "",
        *_table(["arms x segments", "VW pre-parsed µs", "x VW pre-parsed"], pre),
    ]
    parts = [
        ["`bucket` (SHA-256 hash to [0, 1))", _num(_median_us(ix, "perch.bucket"), 2)],
        [
            "`draw_stream` (SHA-256 seed + Mersenne Twister seeding)",
            _num(_median_us(ix, "perch.part.draw_stream"), 2),
        ],
    ]
    parts += [
        [
            f"Beta draws alone, {arms} arms (`beta_variates`)",
            _num(_median_us(ix, "perch.part.beta_draws", arms), 2),
        ]
        for arms in ARMS
    ]
    parts += [
        [
            f"`segment_for`, {segments} segments",
            _num(_median_us(ix, "perch.part.segment_for", None, segments), 2),
        ]
        for segments in (50, 500)
    ]
    lines += ["Where a decision's time goes (medians, µs):", "", *_table(["part", "µs"], parts)]
    gens = [
        [
            f"{arms}",
            _num(_median_us(ix, "generator.mersenne", arms), 2),
            _num(_median_us(ix, "generator.splitmix64", arms), 2),
        ]
        for arms in (2, 50)
    ]
    lines += [
        "Per-visitor generator (the existing comparison): seed from the unit's hash, then a Thompson "
        "draw over *arms* arms, Mersenne Twister (what `decide` uses) against pure-Python SplitMix64:",
        "",
        *_table(["arms", "Mersenne Twister µs", "SplitMix64 µs"], gens),
    ]
    if core.get("skipped"):
        lines += [f"Skipped benchmarks: {core['skipped']} (bench extras missing?).", ""]
    return lines


def _p(summary: dict[str, Any] | None, key: str) -> float | None:
    return None if not summary or not summary.get("n") else summary.get(key)


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
        f"p50 {_num(_p(py.get('timer_overhead'), 'p50_us'), 2)} µs, p99 "
        f"{_num(_p(py.get('timer_overhead'), 'p99_us'), 2)} µs. Times in ms.",
        "",
        "**Warm decision** — `decide()` on the isolate's decoded snapshot, returning visitors (two "
        "passes over all shapes, merged, so a passing disturbance does not land on one shape):",
        "",
    ]

    def row(key: str, s: dict[str, Any]) -> list[str]:
        return [
            _shape(key),
            f"{s.get('n', 0):,}",
            _ms(_p(s, "p50_us")),
            _ms(_p(s, "p99_us")),
            _ms(_p(s, "p999_us")),
            _ms(_p(s, "max_us")),
        ]

    heads = ["arms x segments", "n", "p50", "p99", "p99.9", "max"]
    lines += _table(heads, [row(k, v) for k, v in py.get("decide", {}).items()])
    lines += [
        "**Cold path** — KV bytes (a JS `ArrayBuffer`) → `bytes` → `decode_snapshot` → `decide`, what a "
        "fresh isolate (or a changed snapshot) pays once; shapes whose 10,000 runs would take too long "
        "stop after their time budget (at least 1,000 runs):",
        "",
    ]
    sizes = py.get("snapshot_bytes", {})
    lines += _table(
        [*heads, "snapshot bytes"],
        [[*row(k, v), f"{sizes.get(k, 0):,}"] for k, v in py.get("cold", {}).items()],
    )
    lines += [
        "**Whole `Default.fetch`** — `GET /v1/decide?experiment=…&ctx.device=…&ctx.source=…` with a "
        "returning visitor's cookie, through the SDK's entrypoint wrapper (request and response "
        "conversion, routing, identity, context, KV through the binding wrapper, decision, JSON), with "
        "a `KvNamespace` stand-in and the control plane's `fetch` answered in-process. *Server-Timing* is "
        "the `perch;dur` the handler reports for its decisions; *waitUntil* is the background work after "
        "the response (signing and sending the exposure), timed apart because it never delays the "
        "response:",
        "",
    ]
    fetch_rows = []
    for cold, group in ((False, py.get("fetch", {})), (True, py.get("fetch_cold", {}))):
        for key, r in group.items():
            f, st, wu = r.get("fetch"), r.get("server_timing"), r.get("wait_until")
            fetch_rows.append(
                [
                    _shape(key) + (" (cold isolate)" if cold else ""),
                    f"{f.get('n', 0):,}",
                    _ms(_p(f, "p50_us")),
                    _ms(_p(f, "p99_us")),
                    _ms(_p(f, "p999_us")),
                    _ms(_p(st, "p50_us")),
                    _ms(_p(st, "p99_us")),
                    _ms(_p(wu, "p50_us")),
                    _ms(_p(wu, "p99_us")),
                    ", ".join(f"{k}: {v}" for k, v in sorted(r.get("reasons_checked", {}).items())),
                ]
            )
    lines += _table(
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
    )
    ctx = py.get("contextual")
    if ctx:
        label = f"{ctx['arms']} arms, {ctx['features']} features, {ctx['columns']} columns"
        lines += [
            f"**Contextual model** (schema 2, {label}, {ctx['bytes']:,} bytes; a visitor with every "
            "feature set, one to a value the model never saw): warm `decide`, the cold path (decode + "
            "decide) and the whole `Default.fetch` as above:",
            "",
        ]
        lines += _table(
            ["what", "n", "p50", "p99", "p99.9", "max"],
            [
                [
                    name,
                    f"{v.get('n', 0):,}",
                    *(_ms(_p(v, k)) for k in ("p50_us", "p99_us", "p999_us", "max_us")),
                ]
                for name, v in (
                    ("warm decide", ctx["decide"]),
                    ("decode + decide", ctx["cold"]),
                    ("Default.fetch", ctx["fetch"]["fetch"]),
                )
            ],
        )
    return lines


def learner_section(lr: dict[str, Any]) -> list[str]:
    lines = [
        "## 3. Learner scaling",
        "",
        "One forced learn-and-publish cycle (`control_plane.learning.publish.publish_experiment` on SQLite "
        "with the local KV publisher: read cells, learn with a 20,000-draw Monte Carlo allocation, promotion "
        "gate, encode, KV write, record), after one untimed cycle so the gate has a current snapshot to "
        "compare with; median of the runs shown, the parts timed inside the cycle. Events series: "
        f"{_shape(lr.get('shape', HEAD))} (arms x segments), statistics written directly as ingestion "
        "leaves them, plus the newest 25,000 logged exposure rows the gate reads "
        "(it reads at most 20,000). Seconds.",
        "",
    ]

    def row(label: str, r: dict[str, Any]) -> list[str]:
        return [
            label,
            f"{r['cells']:,}",
            f"{r['segments']}",
            f"{r['cycle_s']:.3f}",
            f"{r['cells_read_s'] * 1000:.1f} ms",
            f"{r['learn_s']:.3f}",
            f"{r['gate_s']:.3f}",
            f"{r['rest_s']:.3f}",
            f"{r['runs']}",
            r.get("published", ""),
        ]

    heads = [
        "exposures",
        "cells",
        "segments",
        "cycle",
        "cells read",
        "learn",
        "gate",
        "rest (encode, KV, record)",
        "runs",
        "outcome",
    ]
    rows = [row(f"{int(k):,}", r) for k, r in lr.get("events", {}).items()]
    rows += [
        row(f"{int(k):,} ingested ({r['events_ingested']:,} events in {r['ingest_s']:.1f} s)", r)
        for k, r in lr.get("ingested", {}).items()
    ]
    lines += _table(heads, rows)
    lines += [
        "The *ingested* rows ran real exposures and their outcomes through "
        "`control_plane.events.ingest.ingest` (batches of 100, in process) and then the same cycle on what "
        "ingestion left.",
        "",
        f"Segments x arms ({lr.get('grid_events', 0):,} exposures each), cycle seconds (of which learn):",
        "",
    ]
    grid = lr.get("grid", {})
    grid_rows = []
    for segments in SEGMENTS:
        cells = []
        for arms in ARMS:
            r = grid.get(f"{arms}x{segments}")
            cells.append("—" if r is None else f"{r['cycle_s']:.2f} ({r['learn_s']:.2f})")
        grid_rows.append([f"{segments} segments", *cells])
    lines += _table(["", *(f"{a} arms" for a in ARMS)], grid_rows)
    ctx = lr.get("contextual")
    if ctx:
        lines += [
            f"Contextual experiment: {ctx['arms']} arms, {ctx['features']} features of "
            f"{ctx['values']} values ({ctx['columns']} columns), {ctx['cells']:,} cells: cycle "
            f"{ctx['cycle_s']:.2f} s (read cells {ctx['cells_read_s']:.2f}, learn {ctx['learn_s']:.2f}, "
            f"gate {ctx['gate_s']:.2f}, rest {ctx['rest_s']:.2f}), snapshot {ctx['bytes']:,} bytes.",
            "",
        ]
    return lines


CONTEXTUAL_ENVIRONMENTS = ("additive", "interactions", "switching")
PERCH = "Perch contextual"


def _peers(table: dict[str, Any]) -> dict[str, Any]:
    return {name: row for name, row in table.items() if not name.startswith("Perch")}


def learning_verdicts(lg: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, measured, target, verdict) for the issue's learning goals."""
    out = []
    table = lg["table"]
    additive = table.get("additive", {}).get(PERCH)
    if additive is not None:
        out.append(
            (
                "Learning: Perch contextual, share of the oracle's lift, additive world",
                f"{additive['captured']:.0%}",
                "≥ 75 %",
                _verdict(additive["captured"], 0.75, higher_is_better=True),
            )
        )
    for env in CONTEXTUAL_ENVIRONMENTS:
        perch, peers = table.get(env, {}).get(PERCH), _peers(table.get(env, {}))
        if perch is None or not peers:
            continue
        best_name, best = max(peers.items(), key=lambda kv: kv[1]["captured"])
        out.append(
            (
                f"Learning: Perch contextual vs the best peer ({best_name}), {env} world",
                f"{perch['captured']:.0%} vs {best['captured']:.0%}",
                "ahead",
                "met" if perch["captured"] > best["captured"] else "**missed**",
            )
        )
    perch, peers = table.get("context-free", {}).get(PERCH), _peers(table.get("context-free", {}))
    if perch is not None and peers:
        best_name, best = max(peers.items(), key=lambda kv: kv[1]["captured"])
        gap = best["captured"] - perch["captured"]
        out.append(
            (
                f"Learning: Perch contextual vs the best peer ({best_name}), context-free world",
                f"{perch['captured']:.0%} vs {best['captured']:.0%}",
                "within 3 points",
                "met" if gap <= 0.03 else "**missed**",
            )
        )
    return out


def learning_section(lg: dict[str, Any]) -> list[str]:
    lines = [
        "## 4. Learning quality",
        "",
        f"`benchmarks/bench_learning.py`: {lg['visitors']:,} visitors x seeds {lg['seeds']} per world, "
        "4 arms, features device, source and country (some cells rare), "
        f"{lg['returning']:.0%} returning visitors, conversions arriving after an exponential delay of "
        f"mean {lg['delay_mean_s']:.0f} s against a publish every {lg['publish_every']:,} visits "
        f"({lg['publish_every'] * lg['visit_ms'] / 1000:.0f} s). Perch runs its real loop in-process "
        "(ingestion into SQLite, learn, promotion gate, KV, `core.decide`); the peers see the same "
        "visitors and the same conversion draws. Captured = (policy - uniform) / (oracle - uniform) in "
        "expected conversions, mean over seeds [min, max]; regret = expected conversions lost against "
        "the oracle.",
        "",
    ]
    for env, rows in lg["table"].items():
        ordered = sorted(rows.items(), key=lambda kv: -kv[1]["captured"])
        lines += [f"**{env}**", ""]
        lines += _table(
            ["policy", "captured", "regret", "s per run"],
            [
                [
                    name,
                    f"{r['captured']:.1%} [{r['captured_min']:.0%}, {r['captured_max']:.0%}]",
                    f"{r['regret']:,.0f}",
                    f"{r['seconds']:.0f}",
                ]
                for name, r in ordered
            ],
            "lrrr",
        )
    skipped = lg.get("skipped")
    if skipped:
        lines += [f"Not run (package not installed): {', '.join(skipped)}.", ""]
    return lines


def ingest_section(ing: dict[str, Any]) -> list[str]:
    lines = [
        "## 5. Ingestion",
        "",
        "A real `perch serve` per database (SQLite file with WAL and `synchronous=FULL`; PostgreSQL "
        f"{ing.get('postgresql_version', '?')} in its own `perch_bench` database), signed batches "
        "posted on loopback by sender threads for a bounded time. Batches of 1 are one page view's "
        "exposure; batches of 50 hold 45 exposures and 5 outcomes joining earlier ones. Counted: events "
        "acknowledged (200 after commit); *stored* checks them against the database afterwards. "
        "*Batches per commit* is the server's group commit at work (`perch_ingest_group_batches`): "
        "batches that arrive while a transaction commits share the next one.",
        "",
    ]
    rows = []
    for backend, b in ing.get("backends", {}).items():
        if "skipped" in b:
            rows.append([backend, "—", "—", "—", "—", "—", "—", "—", "—", b["skipped"]])
            continue
        ok = b["stored"] == b["acknowledged"]
        for r in b["runs"]:
            lat = r["latency"]
            failed = ", ".join(f"{k}: {v}" for k, v in r["failed"].items()) or "0"
            rows.append(
                [
                    backend,
                    r["batch_size"],
                    r["senders"],
                    f"{r['seconds']:.1f}",
                    f"{sum(r['accepted'].values()):,}",
                    f"**{r['events_per_s']:,.0f}**",
                    "—" if r.get("batches_per_commit") is None else f"{r['batches_per_commit']:.1f}",
                    _ms(_p(lat, "p50_us")),
                    _ms(_p(lat, "p99_us")),
                    failed + ("" if ok else " (stored != acknowledged!)"),
                ]
            )
    lines += _table(
        [
            "database",
            "events/batch",
            "senders",
            "seconds",
            "events accepted",
            "events/s",
            "batches per commit",
            "batch p50 ms",
            "batch p99 ms",
            "failed",
        ],
        rows,
    )
    for backend, b in ing.get("backends", {}).items():
        if "stored" in b:
            lines.append(
                f"- {backend}: acknowledged {b['acknowledged']}, stored {b['stored']}"
                + (" — match." if b["stored"] == b["acknowledged"] else " — **mismatch**.")
            )
    return [*lines, ""]


def http_section(http: dict[str, Any]) -> list[str]:
    lines = [
        "## 6. HTTP at the local edge runner",
        "",
        f"`perch edge dev` (CPython, uvicorn) with a {_shape(http.get('shape', HEAD))} snapshot in its "
        "local KV, exposures sent to a stand-in control plane in its own process "
        "(`benchmarks/sink.py`). An asyncio HTTP/1.1 client with that many keep-alive connections sends "
        "`GET /v1/decide` for returning visitors on loopback, bounded in requests and seconds; client, "
        "runner and sink share the machine's cores. *Wall* is the client's send-to-last-byte time, "
        "*Server-Timing* the handler's `perch;dur` for its decisions. Times in ms.",
        "",
    ]
    rows = []
    for r in http.get("levels", []):
        wall, st = r["wall"], r["server_timing"]
        rows.append(
            [
                r["concurrency"],
                f"{r['requests']:,}",
                f"{r['requests_per_s']:,.0f}",
                _ms(_p(wall, "p50_us")),
                _ms(_p(wall, "p99_us")),
                _ms(_p(wall, "p999_us")),
                _ms(_p(st, "p50_us")),
                _ms(_p(st, "p99_us")),
                f"{r.get('edge_cpu_ms_per_request', 0):.2f}",
                f"{r.get('exposures_delivered', 0):,} in {r.get('exposure_batches', 0):,}",
                ", ".join(f"{k}: {v}" for k, v in r["statuses"].items()),
            ]
        )
    lines += _table(
        [
            "connections",
            "requests",
            "req/s",
            "wall p50",
            "wall p99",
            "wall p99.9",
            "Server-Timing p50",
            "Server-Timing p99",
            "edge CPU ms/request",
            "exposures delivered in batches",
            "statuses",
        ],
        rows,
    )
    return lines


# --- headline and frame ----------------------------------------------------------------------


def contextual_verdicts(ctx: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    """The contextual model's Pyodide targets: warm decide, decode + decide, whole fetch."""
    if not ctx:
        return []
    label = f"{ctx['arms']} arms, {ctx['features']} features, {ctx['columns']} columns"
    warm = _p(ctx["decide"], "p99_us")
    cold = _p(ctx["cold"], "p99_us")
    fetch = _p(ctx["fetch"]["fetch"], "p99_us")
    return [
        (
            f"Pyodide contextual warm decision p99 ({label})",
            f"{_ms(warm)} ms",
            "≤ 0.2 ms",
            _verdict(warm, 200),
        ),
        (
            f"Pyodide contextual decode + decide p99 ({label})",
            f"{_ms(cold)} ms",
            "≤ 1 ms",
            _verdict(cold, 1000),
        ),
        (
            f"Pyodide contextual `Default.fetch` p99 ({label})",
            f"{_ms(fetch)} ms",
            "≤ 1.15 ms",
            _verdict(fetch, 1150),
        ),
    ]


def _event_path(sections: dict[str, Any], rows: list[list[str]], add: Any) -> None:
    """The headline's ingestion rows: the HTTP path as measured, the queue path against its target."""
    ing = sections.get("ingest", {})
    if ing.get("ok"):
        for backend, b in ing["backends"].items():
            for r in b.get("runs", []):
                rows.append(
                    [
                        f"Ingestion, {backend}, {r['batch_size']} events/batch, {r['senders']} senders",
                        f"{r['events_per_s']:,.0f} events/s",
                        "—",
                        "",
                    ]
                )
    consume = sections.get("consume", {})
    if consume.get("ok"):
        for figure, value, target, met in bench_consume.verdicts(consume):
            add(figure, value, target, "met" if met else "**missed**")


def _headline(sections: dict[str, Any]) -> tuple[list[str], list[str]]:
    rows: list[list[str]] = []
    missed: list[str] = []

    def add(figure: str, value: str, target: str, verdict: str) -> None:
        rows.append([figure, value, target, verdict])
        if verdict.startswith("**"):
            missed.append(f"{figure}: {value} (target {target})")

    py = sections.get("pyodide", {})
    if py.get("ok"):
        warm = _p(py["decide"].get(HEAD), "p99_us")
        cold = _p(py["cold"].get(HEAD), "p99_us")
        fetch = _p(py["fetch"].get(HEAD, {}).get("fetch"), "p99_us")
        add(f"Pyodide warm decision p99 ({HEAD_LABEL})", f"{_ms(warm)} ms", "≤ 0.2 ms", _verdict(warm, 200))
        add(f"Pyodide cold path p99 ({HEAD_LABEL})", f"{_ms(cold)} ms", "≤ 1 ms", _verdict(cold, 1000))
        add(
            f"Pyodide `Default.fetch` p99 ({HEAD_LABEL})", f"{_ms(fetch)} ms", "≤ 1 ms", _verdict(fetch, 1000)
        )
        st = _p(py["fetch"].get(HEAD, {}).get("server_timing"), "p99_us")
        rows.append(["Pyodide Server-Timing p99 of those requests", f"{_ms(st)} ms", "—", ""])
        for figure, value, target, verdict in contextual_verdicts(py.get("contextual")):
            add(figure, value, target, verdict)
    core = sections.get("core", {})
    if core.get("ok"):
        ix = _core_index(core)
        ratios = [
            _ratio(_median_us(ix, "mabwiser.ts_predict", a, s), _median_us(ix, "perch.decide", a, s))
            for a, s in SHAPES
        ]
        got = [r for r in ratios if r is not None]
        head = _ratio(
            _median_us(ix, "mabwiser.ts_predict", *HEADLINE), _median_us(ix, "perch.decide", *HEADLINE)
        )
        if got:
            add(
                f"CPython: MABWiser TS predict time / Perch decide time ({HEAD_LABEL}; all shapes)",
                f"{_num(head, 2)}x ({min(got):.2f}x to {max(got):.2f}x)",
                "≥ 5x",
                _verdict(head, 5.0, higher_is_better=True),
            )
        vw = _ratio(
            _median_us(ix, "vw.cb_explore_adf_predict", *HEADLINE), _median_us(ix, "perch.decide", *HEADLINE)
        )
        if vw is not None:
            rows.append(
                [f"CPython: VW cb_explore_adf predict / Perch decide ({HEAD_LABEL})", f"{vw:.2f}x", "—", ""]
            )
    lr = sections.get("learner", {})
    if lr.get("ok") and lr.get("events"):
        series = list(lr["events"].items())
        (lo_n, lo), (hi_n, hi) = series[0], series[-1]
        flat = hi["cycle_s"] <= lo["cycle_s"] * 1.5 + 0.05
        add(
            f"Learn-and-publish cycle, {int(lo_n):,} → {int(hi_n):,} exposures ({HEAD_LABEL})",
            f"{lo['cycle_s']:.2f} s → {hi['cycle_s']:.2f} s",
            "flat",
            "met" if flat else "**missed**",
        )
        ctx = lr.get("contextual")
        if ctx:
            add(
                f"Learn-and-publish cycle, contextual, {ctx['arms']} arms x {ctx['columns']} columns x "
                f"{ctx['cells']:,} cells",
                f"{ctx['cycle_s']:.2f} s (learn {ctx['learn_s']:.2f} s, gate {ctx['gate_s']:.2f} s)",
                "≤ 2 s",
                _verdict(ctx["cycle_s"], 2.0),
            )
        big = lr.get("grid", {}).get("50x500")
        if big:
            rows.append(
                ["Learn-and-publish cycle, 50 arms x 500 segments", f"{big['cycle_s']:.1f} s", "—", ""]
            )
    lg = sections.get("learning", {})
    if lg.get("ok"):
        for figure, value, target, verdict in learning_verdicts(lg):
            add(figure, value, target, verdict)
    _event_path(sections, rows, add)
    http = sections.get("http", {})
    if http.get("ok"):
        for r in http["levels"]:
            rows.append(
                [
                    f"`perch edge dev`, {r['concurrency']} connections",
                    f"p50 {_ms(_p(r['wall'], 'p50_us'))} / p99 {_ms(_p(r['wall'], 'p99_us'))} ms wall; "
                    f"Server-Timing p99 {_ms(_p(r['server_timing'], 'p99_us'))} ms; "
                    f"{r['requests_per_s']:,.0f} req/s",
                    "—",
                    "",
                ]
            )
    return _table(["figure", "measured", "target", ""], rows, "lllr"), missed


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    sections = results["sections"]
    py = sections.get("pyodide", {})
    rt = py.get("runtime", {})
    lines = [
        "# Perch benchmarks",
        "",
        f"Written by `{results['command']}` (`make bench`) on {results['started']}, in "
        f"{results['seconds'] / 60:.1f} minutes. One fixed seed ({results['seed']}), synthetic data made "
        "by the benchmarks, nothing downloaded. Every figure below was measured in this one run; none is "
        "a pass/fail test. Rerun with `make bench`.",
        "",
    ]
    if results.get("quick"):
        lines += [
            "**Quick mode: tiny sizes, for checking the machinery only. These figures mean nothing.**",
            "",
        ]
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    others = ", ".join(f"{name} {s.get('others_cores', 0):.2f}" for name, s in sections.items())
    lines += [
        "## Machine",
        "",
        *_table(
            ["", ""],
            [
                ["CPU", f"{m['cpu']}, {m['cores']} cores, {m['memory']}"],
                ["OS", m["os"]],
                ["CPython", f"{m['python']} ({m['implementation']})"],
                ["Pyodide", f"{rt.get('pyodide', '—')} (Python {rt.get('python', '—')})"],
                ["Node", py.get("node", "—")],
                ["PostgreSQL", sections.get("ingest", {}).get("postgresql_version", "—")],
                ["commit", f"{m['commit']}{' (with uncommitted changes)' if m['dirty'] else ''}"],
                ["packages", packages],
                [
                    f"cores kept busy by other processes, per section (of {m['cores']}; the "
                    "PostgreSQL server's work for the ingestion section counts here)",
                    others or "—",
                ],
            ],
            "ll",
        ),
    ]
    headline, missed = _headline(sections)
    lines += ["## Headline", "", *headline]
    renderers = {
        "core": core_section,
        "pyodide": pyodide_section,
        "learner": learner_section,
        "learning": learning_section,
        "ingest": ingest_section,
        "consume": bench_consume.section,
        "http": http_section,
    }
    for name, render_section in renderers.items():
        section = sections.get(name)
        if section is None:
            continue
        if not section.get("ok"):
            lines += [f"## {name}", "", f"**Failed**: `{section.get('error')}`", ""]
            continue
        lines += render_section(section)
        lines += [
            f"*Section time: {section['seconds']:.0f} s; other processes kept "
            f"{section.get('others_cores', 0):.2f} cores busy meanwhile.*",
            "",
        ]
    lines += ["## Targets missed in this run", ""]
    lines += [f"- {item}" for item in missed] or ["- none"]
    return "\n".join(lines).rstrip() + "\n"
