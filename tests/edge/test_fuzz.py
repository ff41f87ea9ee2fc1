"""Every edge route against arbitrary requests: never a 5xx, never a page cut short.

Hostile JSON (lone surrogates, NUL, control characters, deep nesting, huge integers), random
headers and cookies, query strings and ``cf`` values, thrown at one isolate that keeps its state
across examples, as a real isolate would. ``PERCH_FUZZ_EXAMPLES`` raises the budget.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import INDEX_KEY, encode_index, parse_batch
from edge.platform import EdgeRequest
from edge.routing import handle
from edge.visit import Edge
from tests.edge.conftest import CONFIG, FakePlatform, read_body
from tests.factories import build_snapshot
from tests.hostile import HOSTILE_TEXT, JSON_DOCS, SCALARS, dumps

PAGE_TAIL = b"<footer>the end of the page</footer></body></html>"
PAGE = b'<html><body><h1 data-perch-slot="home-hero">Welcome</h1><p data-perch-slot="x">a<li>b' + PAGE_TAIL


BODIES = (
    JSON_DOCS.map(dumps)
    | st.fixed_dictionaries({"experiments": st.lists(HOSTILE_TEXT, max_size=3), "context": JSON_DOCS}).map(
        dumps
    )
    | st.fixed_dictionaries({"events": st.lists(JSON_DOCS, max_size=3)}).map(dumps)
    | st.binary(max_size=200)
    | st.sampled_from([b"[" * 5000 + b"]" * 5000, b'{"a":' + b"9" * 5000 + b"}", b"\xed\xa0\x80", b""])
)
HEADER_NAMES = st.sampled_from(
    [
        "cookie",
        "user-agent",
        "referer",
        "x-perch-user",
        "sec-gpc",
        "dnt",
        "content-type",
        "x-other",
        "if-none-match",
    ]
)
# Header values arrive as latin-1-decoded bytes: any of 0-255 can show up.
HEADER_VALUES = st.text(st.characters(max_codepoint=255), max_size=60) | st.sampled_from(
    ["perch_uid=0123456789abcdef0123456789abcdef", "perch_prefs=lang=%00x&a=%ED%A0%80", "http://[::1/x", "1"]
)
PATHS = st.sampled_from(["/v1/decide", "/v1/events", "/v1/health", "/page", "/v1/other", "/"])
QUERIES = st.lists(
    st.tuples(
        st.sampled_from(["experiment", "ctx.device", "ctx.country", "ctx.Bad", "utm_medium", "x"]),
        HOSTILE_TEXT,
    ),
    max_size=4,
).map(lambda pairs: "&".join(f"{quote(k)}={quote(v, errors='surrogatepass')}" for k, v in pairs))
CF = st.dictionaries(st.sampled_from(["country", "colo", "timezone", "other"]), SCALARS, max_size=3)


@pytest.fixture(scope="module")
def isolate() -> tuple[Edge, FakePlatform]:
    platform = FakePlatform()
    platform.put(build_snapshot(context_features=["device", "source", "country"]))
    platform.kv[INDEX_KEY] = encode_index(["home-hero"], 0)
    platform.pages["https://origin.test/page"] = (
        200,
        [("content-type", "text/html")],
        [PAGE[:50], PAGE[50:]],
    )
    return Edge(CONFIG), platform


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "HEAD"]),
    path=PATHS,
    query=QUERIES,
    headers=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=4),
    body=BODIES,
    cf=CF,
    seed=st.integers(0, 2**32),
)
def test_no_request_gets_a_5xx_or_a_cut_page(
    isolate: tuple[Edge, FakePlatform],
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
    body: bytes,
    cf: dict[str, Any],
    seed: int,
) -> None:
    edge, platform = isolate
    # (The fake origin serves /page by exact URL, so pages get no query.)
    url = f"https://s.test{path}" + (f"?{query}" if query and path != "/page" else "")
    request = EdgeRequest(method, url, headers, body, cf)

    async def run() -> tuple[int, bytes]:
        response = await handle(edge, platform, request, random.Random(seed))
        out = await read_body(response)
        await platform.drain()
        return response.status, out

    status, out = asyncio.run(run())
    assert status < 500, (status, out[:300])
    if path == "/page" and method == "GET":
        assert out.endswith(PAGE_TAIL), out[-200:]
    if path in ("/v1/decide", "/v1/events", "/v1/health"):
        json.loads(out)  # every API answer is JSON, errors included
    # Whatever was accepted went home as events the control plane's schema takes, every one.
    for _, batch, _ in platform.posts:
        valid, rejected = parse_batch(batch)
        assert rejected == [], rejected
        json.dumps(valid, ensure_ascii=False).encode("utf-8")
    platform.posts.clear()
