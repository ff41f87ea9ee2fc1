from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge import rewrite
from edge.rewrite import rewrite_slots

PAGE = """<!doctype html><html><head><title>a <div data-perch-slot="hero"></title>
<script>if (a<b) document.write('<div data-perch-slot="hero">x</div>')</script>
<style>div > p { color: red }</style></head>
<body><!-- <div data-perch-slot="hero"> -->
<div class="h" data-perch-slot="hero"><div>old <span>inner</span></div><img src=x><br/></div>
<p>1 < 2 and 3 </3> ok</p><section data-perch-slot='keep'>kept</section>
<DIV DATA-PERCH-SLOT=cta>old cta</DIV><img data-perch-slot="hero"><div data-perch-slot="hero"/>
<ul data-perch-slot="menu"><li>a<ul><li>b</ul></ul>ünï &amp; after</body></html>"""

FILLS = {"hero": "<b>NEW</b>", "cta": "<a>Buy</a>", "menu": "<li>m</li>", "keep": None}

EXPECTED = """<!doctype html><html><head><title>a <div data-perch-slot="hero"></title>
<script>if (a<b) document.write('<div data-perch-slot="hero">x</div>')</script>
<style>div > p { color: red }</style></head>
<body><!-- <div data-perch-slot="hero"> -->
<div class="h" data-perch-slot="hero"><b>NEW</b></div>
<p>1 < 2 and 3 </3> ok</p><section data-perch-slot='keep'>kept</section>
<DIV DATA-PERCH-SLOT=cta><a>Buy</a></DIV><img data-perch-slot="hero"><div data-perch-slot="hero"/>
<ul data-perch-slot="menu"><li>m</li></ul>ünï &amp; after</body></html>"""


async def _fill(experiment: str) -> str | None:
    return FILLS.get(experiment)


def _rewrite(page: str, cuts: list[int], charset: str = "utf-8") -> tuple[str, list[bytes]]:
    data = page.encode(charset)
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]

    async def source() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async def run() -> list[bytes]:
        return [c async for c in rewrite_slots(source(), _fill, charset)]

    out = asyncio.run(run())
    return b"".join(out).decode(charset), out


def test_fills_slots_and_leaves_everything_else_byte_for_byte() -> None:
    assert _rewrite(PAGE, [])[0] == EXPECTED


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=40))
def test_any_chunking_gives_the_same_page(cuts: list[int]) -> None:
    assert _rewrite(PAGE, cuts)[0] == EXPECTED


def test_streams_instead_of_buffering() -> None:
    page = "<p>x</p>" * 5000 + '<div data-perch-slot="hero">old</div>'
    _, out = _rewrite(page, list(range(0, 45_000, 1000)))
    assert len(out) > 30  # one output chunk per input chunk, not one at the end


def test_other_charsets_round_trip() -> None:
    text, _ = _rewrite('<p>café</p><div data-perch-slot="cta">x</div>', [3, 7], charset="latin-1")
    assert text == '<p>café</p><div data-perch-slot="cta"><a>Buy</a></div>'


def test_unfinished_markup_at_the_end_is_passed_through() -> None:
    assert _rewrite('<p>a</p><div data-perch-slot="hero', [5])[0] == '<p>a</p><div data-perch-slot="hero'
    assert _rewrite("<p>a</p><!-- open", [])[0] == "<p>a</p><!-- open"
    assert _rewrite("text <", [])[0] == "text <"


def test_gives_up_on_a_runaway_tag_without_buffering_it_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rewrite, "MAX_PENDING", 100)
    page = '<div title="' + "x" * 500 + '<div data-perch-slot="hero">old</div>'
    text, _ = _rewrite(page, list(range(0, 600, 50)))
    assert text == page  # passed through unchanged once the tag ran away
