"""Edge latencies measured inside Pyodide, with Pyodide's own clock.

``benchmarks/run.py`` copies this file into the Pyodide file system as the
top-level module ``pyodide_edge`` (beside the built Worker bundle) and calls
its functions through the test harness's ``call`` op
(``tests/pyodide/harness.mjs``).  Every duration is ``time.perf_counter_ns``
taken inside Pyodide around exactly the code under test, so Node's JSON
round trips and the harness's own bookkeeping are not in the figures.

* :func:`decide_latency` — warm decision: a decoded snapshot, ``core.decide``;
* :func:`cold_latency` — KV bytes (a JS ``ArrayBuffer``) -> ``bytes`` ->
  ``decode_snapshot`` -> ``decide``;
* :func:`fetch_latency` — the whole ``Default.fetch`` of the bundle's entry
  (request conversion, routing, identity, context, KV through the SDK's
  binding wrapper, decision, JSON, ``Response``), with a ``KvNamespace``
  stand-in and the control plane's ``fetch`` answered in-process.  ``warm``
  keeps the isolate's snapshot cache, ``cold`` empties it before every request.

Nothing here runs at import time (workerd forbids randomness at startup and
CPython imports this module only for :func:`summarize`).
"""

from __future__ import annotations

import base64
import math
import random
import sys
import time
from typing import Any

__all__ = ["cold_latency", "decide_latency", "fetch_latency", "runtime", "summarize", "timer_overhead"]

SEED = 20_260_101
# Where the Worker sends its exposures: answered by the fetch stub, never the network.
STUB_CONTROL_PLANE = "http://control-plane.bench.invalid"
SECRET = "bench-edge-secret-0123456789"


def summarize(samples_ns: list[int]) -> dict[str, float]:
    """Nearest-rank percentiles of durations in ns, reported in microseconds."""
    ordered = sorted(samples_ns)
    n = len(ordered)
    if not n:
        return {"n": 0}

    def rank(q: float) -> float:
        return ordered[min(n - 1, max(0, math.ceil(q * n) - 1))] / 1000.0

    return {
        "n": n,
        "mean_us": sum(ordered) / n / 1000.0,
        "p50_us": rank(0.50),
        "p90_us": rank(0.90),
        "p99_us": rank(0.99),
        "p999_us": rank(0.999),
        "max_us": ordered[-1] / 1000.0,
    }


def _units(n: int) -> list[str]:
    rng = random.Random(SEED)
    # Returning visitors: perch_uid cookies are 32 hex characters.
    return [f"{rng.getrandbits(128):032x}" for _ in range(n)]


def runtime() -> dict[str, Any]:
    import msgpack

    try:
        import pyodide

        version = getattr(pyodide, "__version__", "?")
    except ImportError:
        version = None
    return {
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "pyodide": version,
        "msgpack_c_extension": not msgpack.Unpacker.__module__.endswith("fallback"),
    }


def timer_overhead(n: int = 10_000) -> dict[str, float]:
    """Two back-to-back clock reads: the floor under every figure below."""
    clock = time.perf_counter_ns
    out = [0] * n
    for i in range(n):
        t0 = clock()
        out[i] = clock() - t0
    return summarize(out)


def _warm(snapshot_b64: str, context: dict[str, str], n: int, warmup: int, **kw: Any) -> list[int]:
    """Nanoseconds of ``n`` warm decisions of new visitors (after ``warmup``): ``decide``, or
    ``decide_ranked`` given ``primary`` (``kw``) for a snapshot with a ranking."""
    from core import decide, decide_ranked, decode_snapshot

    snap = decode_snapshot(base64.b64decode(snapshot_b64))
    chooser: Any = decide_ranked if snap.ranking is not None else decide
    rng = random.Random(SEED)
    now = snap.created_at + 1_000
    units = _units(n + warmup)
    clock = time.perf_counter_ns
    out = [0] * n
    for i in range(warmup):
        chooser(snap, units[n + i], context, now_ms=now, rng=rng, **kw)
    for i in range(n):
        unit = units[i]
        t0 = clock()
        chooser(snap, unit, context, now_ms=now, rng=rng, **kw)
        out[i] = clock() - t0
    return out


def decide_latency(
    snapshot_b64: str, context: dict[str, str], n: int, warmup: int = 200, raw: bool = False
) -> dict[str, Any]:
    """``n`` warm decisions; ``raw`` also returns every duration in ns (to merge passes)."""
    out = _warm(snapshot_b64, context, n, warmup)
    return {**summarize(out), "samples_ns": out} if raw else summarize(out)


def ranked_latency(
    snapshot_b64: str, context: dict[str, str], n: int, primary: str | None, warmup: int = 200
) -> dict[str, Any]:
    """``n`` warm ranked decisions (core.slate), each a new visitor; ``primary`` their interest."""
    out = _warm(snapshot_b64, context, n, warmup, primary=primary)
    return {**summarize(out), "samples_ns": out}


def cold_latency(
    snapshot_b64: str, context: dict[str, str], n: int, budget_s: float | None = None, warmup: int = 20
) -> dict[str, Any]:
    """Up to ``n`` cold decisions; stops early (after at least 1,000) once ``budget_s`` is spent."""
    from pyodide.ffi import to_js

    from core import decide, decode_snapshot

    data = base64.b64decode(snapshot_b64)
    kv_value = to_js(data).buffer  # what KV hands the Worker: a JS ArrayBuffer
    now = decode_snapshot(data).created_at + 1_000
    rng = random.Random(SEED)
    units = _units(n + warmup)
    clock = time.perf_counter_ns
    deadline = None if budget_s is None else clock() + int(budget_s * 1e9)
    out: list[int] = []
    for i in range(n + warmup):
        unit = units[i]
        t0 = clock()
        raw = kv_value.to_bytes()
        snap = decode_snapshot(raw)
        decide(snap, unit, context, now_ms=now, rng=rng)
        t1 = clock()
        if i >= warmup:
            out.append(t1 - t0)
            if deadline is not None and t1 > deadline and len(out) >= min(n, 1_000):
                break
    return summarize(out)


# The runtime around the Worker, built in JS: a KV namespace whose class name the
# Workers SDK recognises, workerd's ExecutionContext, incoming Requests with `cf`,
# and a fetch that answers the control plane in-process (restored afterwards).
_JS = r"""
(() => {
  class KvNamespace {
    constructor() { this.store = new Map(); this.reads = 0; }
    put(key, bytes) { this.store.set(key, new Uint8Array(bytes)); }
    async get(key, options) {
      this.reads += 1;
      const type = typeof options === 'string' ? options : (options?.type ?? 'text');
      const v = this.store.get(key);
      if (v === undefined) return null;
      if (type === 'arrayBuffer') return v.slice().buffer;
      return new TextDecoder().decode(v);
    }
  }
  class ExecutionContext {
    constructor() { this.pending = []; this.props = {}; }
    waitUntil(p) { this.pending.push(Promise.resolve(p)); }
    passThroughOnException() {}
  }
  const realFetch = globalThis.fetch;
  let posts = 0;
  const stub = (prefix) => {
    globalThis.fetch = async (url, init) => {
      if (String(url).startsWith(prefix)) { posts += 1; return new Response(null, { status: 202 }); }
      return realFetch(url, init);
    };
  };
  const restore = () => { globalThis.fetch = realFetch; };
  const request = (url, uid) => {
    const req = new Request(url, { headers: [
      ['cookie', `perch_uid=${uid}`],
      ['user-agent', 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148'],
      ['accept', 'application/json'],
    ] });
    Object.defineProperty(req, 'cf', { value: { country: 'FR', colo: 'CDG' }, enumerable: true });
    return req;
  };
  const settle = async (ctx) => {
    let count = 0;
    while (ctx.pending.length) {
      const batch = ctx.pending.splice(0);
      count += batch.length;
      await Promise.allSettled(batch);
    }
    return count;
  };
  const env = (kv, vars) => Object.assign({ PERCH_KV: kv }, vars);
  return { KvNamespace, ExecutionContext, stub, restore, request, settle, env, posts: () => posts };
})()
"""


def _server_timing_ns(value: str | None) -> int:
    if not value or "dur=" not in value:
        return 0
    return round(float(value.partition("dur=")[2].split(";")[0]) * 1e6)


class _FetchSamples:
    """What the measured requests of :func:`fetch_latency` took, answered and did in the background."""

    def __init__(self) -> None:
        self.wall: list[int] = []
        self.server: list[int] = []
        self.background: list[int] = []
        self.statuses: dict[str, int] = {}
        self.reasons: dict[str, int] = {}

    async def add(self, response: Any, sent: int, answered: int, settled: int) -> None:
        self.wall.append(answered - sent)
        self.background.append(settled - answered)
        self.server.append(_server_timing_ns(response.headers.get("server-timing")))
        status = str(response.status)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if len(self.wall) % 100 == 1:  # check what was answered, off the clock
            body = (await response.json()).to_py()
            for decision in body["decisions"]:
                self.reasons[decision["reason"]] = self.reasons.get(decision["reason"], 0) + 1

    def summary(self, raw: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "fetch": summarize(self.wall),
            "server_timing": summarize(self.server),
            "wait_until": summarize(self.background),
            "statuses": self.statuses,
            "reasons_checked": self.reasons,
        }
        if raw:
            out["samples_ns"] = {"fetch": self.wall, "server_timing": self.server}
        return out


def _worker_env(
    helpers: Any, snapshot_b64: str, experiment: str, profiles: str = "off", units: list[str] | None = None
) -> tuple[Any, Any]:
    """A KV stand-in holding the snapshot (and with ``profiles="hit"`` a profile for each of
    ``units``), and the Worker's env around it."""
    import js
    from pyodide.ffi import to_js

    from core import Profile, encode_profile, profile_key, snapshot_key, unit_tag

    kv = helpers.KvNamespace.new()
    kv.put(snapshot_key(experiment), to_js(base64.b64decode(snapshot_b64)))
    if profiles == "hit":
        for i, unit in enumerate(units or []):
            profile = Profile(
                features={
                    "interest": ("running", "cooking", "travel")[i % 3],
                    "engagement": "high",
                    "ltv": "mid",
                },
                because={"interest": "you viewed running shoes"},
                updated_ms=1,
            )
            kv.put(profile_key(unit_tag(SECRET, unit)), to_js(encode_profile(profile)))
    variables = {
        "CONTROL_PLANE_URL": STUB_CONTROL_PLANE,
        "PERCH_EDGE_SECRET": SECRET,
        "PERCH_PROFILES": "off" if profiles == "off" else "on",
    }
    return kv, helpers.env(kv, to_js(variables, dict_converter=js.Object.fromEntries))


async def fetch_latency(
    snapshot_b64: str,
    experiment: str,
    context: dict[str, str],
    n: int,
    *,
    cold: bool = False,
    budget_s: float | None = None,
    warmup: int = 50,
    profiles: str = "off",
    raw: bool = False,
) -> dict[str, Any]:
    """Up to ``n`` ``GET /v1/decide`` through ``Default.fetch`` in one isolate.

    ``profiles``: "off" reads no visitor profiles (PERCH_PROFILES=off); "hit" gives every visitor a
    profile in KV, read on their request (each visitor comes once: the first read of an isolate);
    "miss" reads and finds none.

    ``cold`` empties the isolate's snapshot cache before every request, so
    each one reads KV, decodes and decides inline.  Stops early (after at
    least 1,000) once ``budget_s`` is spent.  The ``waitUntil`` work (signing
    and sending the exposure home) is awaited after each response and timed
    apart: it costs the isolate CPU but never delays the response.
    """
    from urllib.parse import urlencode

    import _harness_rt as rt  # the harness's copy of workerd's entrypoint wrapper
    from entry import Default
    from pyodide.code import run_js

    import edge.worker

    helpers = run_js(_JS)
    units = _units(n + warmup)
    kv, env = _worker_env(helpers, snapshot_b64, experiment, profiles, units)
    query = urlencode([("experiment", experiment)] + [(f"ctx.{k}", v) for k, v in sorted(context.items())])
    url = f"https://shop.example/v1/decide?{query}"
    clock = time.perf_counter_ns
    deadline = None if budget_s is None else clock() + int(budget_s * 1e9)
    samples = _FetchSamples()
    edge.worker._ISOLATE.clear()
    helpers.stub(STUB_CONTROL_PLANE)
    try:
        for i in range(n + warmup):
            if cold:
                edge.worker._ISOLATE.clear()  # a fresh isolate: KV read, decode, decide inline
            request = helpers.request(url, units[i])
            ctx = helpers.ExecutionContext.new()
            t0 = clock()
            response = await rt.call_entry(True, Default(ctx, env), "fetch", request)
            t1 = clock()
            await helpers.settle(ctx)  # waitUntil: sign and send the exposure
            t2 = clock()
            if i < warmup:
                continue
            await samples.add(response, t0, t1, t2)
            if deadline is not None and t2 > deadline and len(samples.wall) >= min(n, 1_000):
                break
        posts = int(helpers.posts())
        isolate = edge.worker._ISOLATE.get("edge")
        hydrated = dict(isolate.profiles.counts) if isolate is not None else {}
    finally:
        helpers.restore()
        edge.worker._ISOLATE.clear()
    return {
        **samples.summary(raw=raw),
        "kv_reads": int(kv.reads),
        "control_plane_posts": posts,
        "profile_reads": hydrated,
    }
