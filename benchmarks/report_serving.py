"""RESULTS.md sections 5 and 6: ingestion through `perch serve`, and HTTP at the local edge runner."""

from __future__ import annotations

from typing import Any

from benchmarks.report_format import HEAD, ms, p, shape, table

__all__ = ["http_section", "ingest_section"]


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
                    ms(p(lat, "p50_us")),
                    ms(p(lat, "p99_us")),
                    failed + ("" if ok else " (stored != acknowledged!)"),
                ]
            )
    lines += table(
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
        f"`perch edge dev` (CPython, uvicorn) with a {shape(http.get('shape', HEAD))} snapshot in its "
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
                ms(p(wall, "p50_us")),
                ms(p(wall, "p99_us")),
                ms(p(wall, "p999_us")),
                ms(p(st, "p50_us")),
                ms(p(st, "p99_us")),
                f"{r.get('edge_cpu_ms_per_request', 0):.2f}",
                f"{r.get('exposures_delivered', 0):,} in {r.get('exposure_batches', 0):,}",
                ", ".join(f"{k}: {v}" for k, v in r["statuses"].items()),
            ]
        )
    lines += table(
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
