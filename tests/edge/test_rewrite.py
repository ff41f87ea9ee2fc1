from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge import rewrite
from edge.platform import SlotContent
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


async def _fill(experiment: str) -> SlotContent | None:
    html = FILLS.get(experiment)
    return None if html is None else SlotContent(html)


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


# --- the page always arrives whole (security review M2) ----------------------------------------------

CALLS: list[str] = []


async def _fill_logged(experiment: str) -> SlotContent | None:
    CALLS.append(experiment)
    return await _fill(experiment)


def _run(page: str, cuts: list[int] | None = None) -> str:
    CALLS.clear()
    data = page.encode()
    bounds = sorted({0, len(data), *((c % (len(data) + 1)) for c in (cuts or []))})

    async def source() -> AsyncIterator[bytes]:
        for a, b in itertools.pairwise(bounds):
            yield data[a:b]

    async def run() -> bytes:
        return b"".join([c async for c in rewrite_slots(source(), _fill_logged)])

    return asyncio.run(run()).decode()


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        (  # <p>'s end tag may be omitted: a block start tag closes it
            '<p data-perch-slot="hero">old <i>x</i><div>rest</div>after</p>END',
            '<p data-perch-slot="hero"><b>NEW</b><div>rest</div>after</p>END',
        ),
        (
            '<ul><li data-perch-slot="menu">a<li>b</ul><footer>END</footer>',
            '<ul><li data-perch-slot="menu"><li>m</li><li>b</ul><footer>END</footer>',
        ),
        (  # an end tag of an enclosing element closes an <li> too
            '<ul><li data-perch-slot="menu">a</ul>END',
            '<ul><li data-perch-slot="menu"><li>m</li></ul>END',
        ),
        (  # a nested list shelters its own items
            '<li data-perch-slot="menu">a<ul><li>b<li>c</ul></li>END',
            '<li data-perch-slot="menu"><li>m</li></li>END',
        ),
        (
            '<table><tr><td data-perch-slot="cta">old<td>next</table>END',
            '<table><tr><td data-perch-slot="cta"><a>Buy</a><td>next</table>END',
        ),
        (
            '<select><option data-perch-slot="cta">x<option>y</select>END',
            '<select><option data-perch-slot="cta"><a>Buy</a><option>y</select>END',
        ),
        (  # elements with omitted end tags inside the slot close with it
            '<div data-perch-slot="hero"><p>one<p>two</div>END',
            '<div data-perch-slot="hero"><b>NEW</b></div>END',
        ),
        (  # "<!-->" is a complete comment: what follows is markup
            '<!--><div data-perch-slot="hero">old</div>END',
            '<!--><div data-perch-slot="hero"><b>NEW</b></div>END',
        ),
        (
            '<!---><div data-perch-slot="hero">old</div>END',
            '<!---><div data-perch-slot="hero"><b>NEW</b></div>END',
        ),
    ],
)
def test_slots_end_where_html_ends_them(page: str, expected: str) -> None:
    assert _run(page) == expected
    for cut in range(0, len(page), 7):
        assert _run(page, [cut, cut + 3]) == expected


@pytest.mark.parametrize(
    "page",
    [
        '<div data-perch-slot="hero">old <p>text and the rest of the page',  # the page ends first
        '<div data-perch-slot="hero">old <p>text</body></html>',  # the element never closes
        '<noscript><div data-perch-slot="hero">old</div></noscript>END',
        '<template><div data-perch-slot="hero">old</div></template>END',
        '<xmp><div data-perch-slot="hero">old</div></xmp>END',
        '<iframe><div data-perch-slot="hero">old</div></iframe>END',
    ],
)
def test_unfinished_or_inert_slots_keep_the_page_and_decide_nothing(page: str) -> None:
    assert _run(page) == page
    assert CALLS == []  # no decision, so no exposure for a variant nobody saw


def test_a_slot_too_large_to_hold_goes_out_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rewrite, "MAX_PENDING", 100)
    page = '<div data-perch-slot="hero">' + "<p>old</p>" * 50 + "</div>END"
    assert _run(page, list(range(0, 600, 64))) == page
    assert CALLS == []


_TOKENS = st.sampled_from(
    [
        '<p data-perch-slot="hero">',
        '<li data-perch-slot="menu">',
        '<div data-perch-slot="cta">',
        '<td data-perch-slot="keep">',
        "<p>",
        "<li>",
        "<ul>",
        "</ul>",
        "<div>",
        "</div>",
        "</p>",
        "<td>",
        "<tr>",
        "<table>",
        "</table>",
        "<!-->",
        "<!-- c -->",
        "<script>",
        "</script>",
        "<noscript>",
        "</noscript>",
        "text",
        "<",
        "</body>",
    ]
)


@given(st.lists(_TOKENS, max_size=30), st.lists(st.integers(min_value=0, max_value=2000), max_size=10))
def test_any_markup_any_chunking_the_end_of_the_page_arrives(tokens: list[str], cuts: list[int]) -> None:
    page = "".join(tokens) + "</script></noscript><footer>END</footer>"
    assert _run(page, cuts).endswith("END</footer>")


def test_a_filled_slot_carries_its_attributes_first_and_escaped() -> None:
    async def fill(experiment: str) -> SlotContent | None:
        return SlotContent("<b>x</b>", {"data-perch-token": 't1.a"b<c'})

    async def run(page: str) -> str:
        async def source() -> AsyncIterator[bytes]:
            yield page.encode()

        return b"".join([c async for c in rewrite_slots(source(), fill)]).decode()

    page = '<DIV class="h" data-perch-token="origin" DATA-PERCH-SLOT=cta>old</DIV>'
    assert asyncio.run(run(page)) == (
        '<DIV data-perch-token="t1.a&quot;b&lt;c" class="h" data-perch-token="origin" DATA-PERCH-SLOT=cta>'
        "<b>x</b></DIV>"
    )


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        (  # a quote inside an unquoted value is a character, not the start of a string
            '<main><div class=wrap><div data-perch-slot="hero"><span title=it\'s>a</span></div>'
            "<p>Bob's</p></div></main>",
            '<main><div class=wrap><div data-perch-slot="hero"><b>NEW</b></div><p>Bob\'s</p></div></main>',
        ),
        (  # </br> is a <br>, and a stray end tag is ignored: neither ends a <p>
            '<p data-perch-slot="hero">line1</br>line2</span> more</p>END',
            '<p data-perch-slot="hero"><b>NEW</b></p>END',
        ),
        (
            '<li data-perch-slot="menu">old <img src=a.png></img> more old</li>END',
            '<li data-perch-slot="menu"><li>m</li></li>END',
        ),
        (  # a <section> (any "special" element) shelters a nested <li>
            '<li data-perch-slot="menu">a<section><li>b</li></section>c</li>END',
            '<li data-perch-slot="menu"><li>m</li></li>END',
        ),
        (
            '<div data-perch-slot="hero" title="a>b">old</div>END',
            '<div data-perch-slot="hero" title="a>b"><b>NEW</b></div>END',
        ),
    ],
)
def test_tags_are_read_as_html_reads_them(page: str, expected: str) -> None:
    assert _run(page) == expected
    for cut in range(0, len(page), 5):
        assert _run(page, [cut]) == expected


_TEXT = st.sampled_from(["t", "Bob's", 'say "hi"', "a < b", "x > y", "&amp;", "it's", " "])


def _element(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    tags = st.sampled_from(["span", "div", "b", "em", "section", "a"])
    attrs = st.sampled_from(
        ["", " title=it's", ' class="a>b"', " data-x='q\"q'", " href=/x?a=1&b=2", " hidden"]
    )
    return st.builds(
        lambda t, a, c: f"<{t}{a}>{''.join(c)}</{t}>", tags, attrs, st.lists(children, max_size=3)
    )


_MARKUP = st.recursive(
    _TEXT | st.sampled_from(["<br>", "<img src=x.png alt='a'>", "<!-- c -->", "<!-->", "<hr/>"]),
    _element,
    max_leaves=12,
)


@given(
    st.lists(_MARKUP, max_size=4),
    st.lists(_MARKUP, max_size=4),
    st.lists(st.integers(min_value=0, max_value=4000), max_size=8),
)
def test_everything_outside_a_slot_arrives_unchanged(
    inner: list[str], outside: list[str], cuts: list[int]
) -> None:
    before = "<main><p>intro</p>"
    after = "".join(outside) + "</main><footer>end</footer>"
    page = before + '<div class=x data-perch-slot="hero">' + "".join(inner) + "</div>" + after
    assert _run(page, cuts) == before + '<div class=x data-perch-slot="hero"><b>NEW</b></div>' + after


def _bytes_through(page: bytes, charset: str, cuts: list[int]) -> bytes:
    async def fill(experiment: str) -> SlotContent | None:
        return SlotContent("<b>é 😀</b>")

    bounds = sorted({0, len(page), *(c % (len(page) + 1) for c in cuts)})

    async def run() -> bytes:
        async def source() -> AsyncIterator[bytes]:
            for a, b in itertools.pairwise(bounds):
                yield page[a:b]

        return b"".join([c async for c in rewrite_slots(source(), fill, charset)])

    return asyncio.run(run())


@given(st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_bytes_the_charset_cannot_read_go_out_unchanged(cuts: list[int]) -> None:
    # A windows-1252 page whose charset is only in <meta>: read as the default UTF-8.
    page = '<p>caf\xe9 \x93quoted\x94</p><div data-perch-slot="x">old</div>\xff end'.encode("latin-1")
    out = _bytes_through(page, "utf-8", cuts)
    assert out == page.replace(b">old<", "><b>é 😀</b><".encode())


def test_a_variant_the_page_charset_cannot_spell_uses_character_references() -> None:
    page = '<p>caf\xe9</p><div data-perch-slot="x">old</div>'.encode("latin-1")
    assert (
        _bytes_through(page, "latin-1", [7])
        == b'<p>caf\xe9</p><div data-perch-slot="x"><b>\xe9 &#128512;</b></div>'
    )


@pytest.mark.parametrize("charset", ["utf-16", "hex", "utf-32"])
def test_a_charset_markup_cannot_be_read_in_leaves_the_page_as_it_came(charset: str) -> None:
    page = b'<div data-perch-slot="x">old</div>'
    assert _bytes_through(page, charset, [3, 9]) == page
