"""Streaming fill of ``data-perch-slot`` elements, for runtimes without HTMLRewriter.

workerd has HTMLRewriter (lol-html); CPython and Pyodide under Node do not,
so this is the equivalent there: it reads the origin's body chunk by chunk,
passes everything through untouched except the content of elements carrying
``data-perch-slot="<experiment>"``, which it replaces with the HTML the fill
function returns (or leaves alone when that is None).

The page always arrives whole.  A slot's original content is held back (up to
``MAX_PENDING`` characters) until the slot ends, and only then is the
experiment decided and its HTML emitted.  A slot ends at its end tag, or where
HTML ends it implicitly: an end tag of an element that encloses it, or, for
elements whose end tag may be omitted (``<p>``, ``<li>``, ``<td>``,
``<option>``, ...), a start tag that closes them.  If the page ends first, or
the slot runs past ``MAX_PENDING``, its original content goes out unchanged and
nothing is decided (so no exposure is logged for a variant nobody saw).
Comments (``<!-->`` included) and the contents of ``script``, ``style``,
``textarea``, ``title``, ``noscript``, ``template``, ``xmp``, ``iframe``,
``noembed`` and ``noframes`` are never mistaken for markup.  It keeps at most
one unfinished tag in memory; past ``MAX_PENDING`` characters of one tag it
gives up and passes the rest through unchanged.
"""

from __future__ import annotations

import codecs
import html
import re
from collections.abc import AsyncIterator

from edge.platform import SlotFill

__all__ = ["MAX_PENDING", "SLOT_ATTRIBUTE", "TOKENS_ATTRIBUTE", "TOKEN_ATTRIBUTE", "rewrite_slots"]

SLOT_ATTRIBUTE = "data-perch-slot"
TOKEN_ATTRIBUTE = "data-perch-token"  # on a filled slot: what its outcome beacon must carry
TOKENS_ATTRIBUTE = "data-perch-tokens"  # on a filled ranked slot: its children's tokens, in order
MAX_PENDING = 256 * 1024

# Attributes as HTML tokenizes them: a quote starts a quoted value only right after "=" (so
# title=it's is one unquoted value), and a quoted value must be complete for the tag to match
# (else we wait for the next chunk). Possessive, so a tag that never closes costs linear time.
_ATTRS = r"(?:\s+|/|[^\s/>\"'=][^\s/>=]*(?:\s*=\s*(?:\"[^\"]*\"|'[^']*'|(?![\"'])[^\s>]*))?)*+"
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9:\-]*)(" + _ATTRS + r")>")
_ATTR = re.compile(r"([^\s\"'>/=][^\s>/=]*)(?:\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|(?![\"'])([^\s>]+)))?")
_RAW_TEXT = {
    "script",
    "style",
    "textarea",
    "title",
    "noscript",
    "template",
    "xmp",
    "iframe",
    "noembed",
    "noframes",
}
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

# HTML's optional end tags: the start tags that close an open element of each name, and the
# elements which, open inside it, shelter a nested one of the same kind (a list inside an <li>).
_P_CLOSERS = frozenset(
    {"address", "article", "aside", "blockquote", "details", "dialog", "div", "dl", "fieldset"}
    | {"figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hgroup"}
    | {"hr", "main", "menu", "nav", "ol", "p", "pre", "search", "section", "table", "ul"}
)
_TABLE_PARTS = frozenset({"tbody", "thead", "tfoot"})
# HTML's "special" elements (less address, div and p): open inside an <li>, <dt> or <dd>, they keep
# a nested one from closing it, as the parser's "li" start-tag steps stop at them.
_SHELTERS = frozenset(
    {"applet", "article", "aside", "blockquote", "body", "button", "caption", "center", "dd", "details"}
    | {"dir", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4"}
    | {"h5", "h6", "header", "hgroup", "li", "listing", "main", "marquee", "menu", "nav", "object", "ol"}
    | {"pre", "search", "section", "select", "summary", "table", "tbody", "td", "template", "tfoot"}
    | {"th", "thead", "tr", "ul"}
)
_CLOSED_BY: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "p": (_P_CLOSERS, frozenset({"button"})),
    "li": (frozenset({"li"}), _SHELTERS),
    "dt": (frozenset({"dt", "dd"}), _SHELTERS),
    "dd": (frozenset({"dt", "dd"}), _SHELTERS),
    "option": (frozenset({"option", "optgroup", "hr"}), frozenset()),
    "optgroup": (frozenset({"optgroup", "hr"}), frozenset()),
    "td": (frozenset({"td", "th", "tr"}) | _TABLE_PARTS, frozenset({"table"})),
    "th": (frozenset({"td", "th", "tr"}) | _TABLE_PARTS, frozenset({"table"})),
    "tr": (frozenset({"tr"}) | _TABLE_PARTS, frozenset({"table"})),
    "tbody": (_TABLE_PARTS, frozenset({"table"})),
    "thead": (_TABLE_PARTS, frozenset({"table"})),
    "tfoot": (_TABLE_PARTS, frozenset({"table"})),
    "rt": (frozenset({"rt", "rp", "rb", "rtc"}), frozenset()),
    "rp": (frozenset({"rt", "rp", "rb", "rtc"}), frozenset()),
    "colgroup": (frozenset({"colgroup", "tr", "thead", "tbody", "tfoot"}), frozenset()),
    "caption": (frozenset({"tr", "td", "th", "thead", "tbody", "tfoot", "colgroup"}), frozenset()),
}
# End tags of the elements that can hold each of those: met while the slot is open (and not
# closing something opened inside it), they close the slot too. Any other stray end tag (</span>
# with no <span> open, or </br>, which browsers read as <br>) is ignored, as HTML ignores it.
_BLOCKS = _P_CLOSERS | {"li", "dd", "dt", "td", "th", "caption", "button", "object", "template"}
_ENDED_BY: dict[str, frozenset[str]] = {
    "p": frozenset(_BLOCKS - {"hr", "p"}),
    "li": frozenset({"ul", "ol", "menu"}),
    "dt": frozenset({"dl", "div"}),
    "dd": frozenset({"dl", "div"}),
    "option": frozenset({"select", "datalist", "optgroup"}),
    "optgroup": frozenset({"select"}),
    "td": frozenset({"tr", "table"}) | _TABLE_PARTS,
    "th": frozenset({"tr", "table"}) | _TABLE_PARTS,
    "tr": frozenset({"table"}) | _TABLE_PARTS,
    "tbody": frozenset({"table"}),
    "thead": frozenset({"table"}),
    "tfoot": frozenset({"table"}),
    "rt": frozenset({"ruby", "rtc"}),
    "rp": frozenset({"ruby", "rtc"}),
    "colgroup": frozenset({"table"}),
    "caption": frozenset({"table"}),
}


def _slot_of(attributes: str) -> str | None:
    for match in _ATTR.finditer(attributes):
        if match.group(1).lower() == SLOT_ATTRIBUTE:
            value = match.group(2) or match.group(3) or match.group(4) or ""
            return html.unescape(value).strip() or None
    return None


def _markup_end(buf: str, i: int) -> int | None:
    """Where the comment, doctype or processing instruction at ``i`` ends; None if not in ``buf``."""
    if buf.startswith("<!--", i):
        if buf.startswith("<!-->", i):  # an empty comment, complete as it is
            return i + 5
        if buf.startswith("<!--->", i):
            return i + 6
        end = buf.find("-->", i + 4)
        return None if end < 0 else end + 3
    end = buf.find(">", i)
    return None if end < 0 else end + 1


def _literal_lt(buf: str, i: int, final: bool) -> bool:
    """Whether the '<' at ``i``, which starts no complete tag, is text (else a tag yet to arrive)."""
    head = buf[i + 1 : i + 3]
    starts_tag = bool(head) and (
        head[0].isalpha() or (head[0] == "/" and (len(head) < 2 or head[1].isalpha()))
    )
    return not starts_tag and (bool(head) or final)


class _Slot:
    """An open slot: its start tag, experiment, the elements open inside it, and its held-back content."""

    def __init__(self, experiment: str, name: str, start_tag: str) -> None:
        self.experiment = experiment
        self.stack_name = name
        self.stack = [name]  # the slot's own element first
        self.start_tag = start_tag
        self.held: list[str] = [start_tag]
        self.size = len(start_tag)

    def closed_by_start(self, name: str) -> bool:
        rule = _CLOSED_BY.get(self.stack[0])
        if rule is None or name not in rule[0]:
            return False
        return not any(open_name in rule[1] for open_name in self.stack[1:])


class _Scanner:
    """Tokenizer state carried across chunks."""

    def __init__(self, fill: SlotFill) -> None:
        self.fill = fill
        self.pending = ""
        self.raw_end: str | None = None  # inside script/style/...: the end tag looked for
        self.slot: _Slot | None = None
        self.passthrough = False

    async def feed(self, text: str, final: bool) -> str:
        if self.passthrough:
            return text
        buf = self.pending + text
        self.pending = ""
        out: list[str] = []
        i = 0
        n = len(buf)
        while i < n:
            if self.raw_end is not None:
                i = self._raw_text(out, buf, i, self.raw_end, final)
                if self.raw_end is not None:
                    break  # its end tag is not in this chunk (yet)
                continue
            lt = buf.find("<", i)
            if lt < 0:
                self._emit(out, buf[i:])
                i = n
                break
            self._emit(out, buf[i:lt])
            i = lt
            if buf.startswith(("<!", "<?"), i):
                end = _markup_end(buf, i)
                if end is None:
                    break
                self._emit(out, buf[i:end])
                i = end
                continue
            match = _TAG.match(buf, i)
            if match is None:
                if not _literal_lt(buf, i, final):
                    break  # an unfinished tag: wait for the next chunk (or flush at the end)
                self._emit(out, "<")
                i += 1
                continue
            i = match.end()
            await self._tag(out, match)
        self._rest(out, buf[i:], final)
        return "".join(out)

    def _raw_text(self, out: list[str], buf: str, i: int, raw_end: str, final: bool) -> int:
        """Pass on script/style/... text from ``i`` up to its end tag; returns where scanning resumes.

        ``raw_end`` stays set while the end tag has not been seen: it may straddle chunks.
        """
        end = buf.lower().find(raw_end, i)
        if end < 0:
            end = max(i, len(buf) - (0 if final else len(raw_end)))
        else:
            self.raw_end = None
        self._emit(out, buf[i:end])
        return end

    def _rest(self, out: list[str], rest: str, final: bool) -> None:
        """What the scan left of a chunk: flushed at the end, given up on past MAX_PENDING, else kept."""
        if final:
            self._emit(out, rest)
            self._abandon(out)
        elif len(rest) > MAX_PENDING:
            self._emit(out, rest)
            self._abandon(out)
            self.passthrough = True
        else:
            self.pending = rest

    def _emit(self, out: list[str], text: str) -> None:
        slot = self.slot
        if slot is None:
            if text:
                out.append(text)
            return
        slot.held.append(text)
        slot.size += len(text)
        if slot.size > MAX_PENDING:
            self._abandon(out)

    def _abandon(self, out: list[str]) -> None:
        """The slot never ended where we could see: its original content goes out as it was."""
        if self.slot is not None:
            out.extend(self.slot.held)
            self.slot = None

    async def _close_slot(self, out: list[str]) -> None:
        slot = self.slot
        assert slot is not None
        self.slot = None
        content = await self.fill(slot.experiment)
        if content is None:
            out.extend(slot.held)
            return
        # Ours go first, right after the tag name: a browser keeps the first of duplicate attributes.
        cut = 1 + len(slot.stack_name)
        extra = "".join(f' {name}="{html.escape(value)}"' for name, value in content.attributes.items())
        out.append(slot.start_tag[:cut] + extra + slot.start_tag[cut:])
        out.append(content.html)

    async def _tag(self, out: list[str], match: re.Match[str]) -> None:
        closing, name, attributes = match.group(1) == "/", match.group(2).lower(), match.group(3)
        self_closing = attributes.rstrip().endswith("/")
        opens = not (closing or self_closing or name in _VOID)
        slot = self.slot
        if slot is not None:
            if closing:
                if name in slot.stack:
                    # Pop to it: elements whose end tags were omitted close with it.
                    del slot.stack[len(slot.stack) - 1 - slot.stack[::-1].index(name) :]
                    if not slot.stack:  # the slot's own end tag
                        await self._close_slot(out)
                        out.append(match.group(0))
                        return
                elif name in _ENDED_BY.get(slot.stack[0], ()) or (
                    slot.stack[0] in _CLOSED_BY and name in ("body", "html")
                ):
                    # An end tag of an element around a slot whose own end tag may be omitted
                    # (</ul> after an open <li>): it closes the slot too.
                    await self._close_slot(out)
                    out.append(match.group(0))
                    return
                elif name in ("body", "html"):
                    # The slot's element never closed: a malformed page keeps its own content.
                    self._abandon(out)
                    out.append(match.group(0))
                    return
                # else a stray end tag inside the slot: HTML ignores it, and so do we
            elif slot.closed_by_start(name):
                await self._close_slot(out)
                self._start(out, match, name, attributes, opens)
                return
            elif opens:
                slot.stack.append(name)
            self._emit(out, match.group(0))
            if opens and name in _RAW_TEXT:
                self.raw_end = f"</{name}"
            return
        if closing:
            out.append(match.group(0))
        else:
            self._start(out, match, name, attributes, opens)

    def _start(self, out: list[str], match: re.Match[str], name: str, attributes: str, opens: bool) -> None:
        """A start tag outside any slot: pass it on, or hold it back as a slot's start."""
        experiment = _slot_of(attributes) if opens and SLOT_ATTRIBUTE in attributes.lower() else None
        if experiment is not None and name not in _RAW_TEXT:
            self.slot = _Slot(experiment, name, match.group(0))
            return
        out.append(match.group(0))
        if opens and name in _RAW_TEXT:
            self.raw_end = f"</{name}"


def _page_bytes(error: UnicodeError) -> tuple[str | bytes, int]:
    """Encode errors: bytes the decoder could not read go back out as they came (surrogateescape);
    a variant's character the page's charset lacks becomes a character reference."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    bad = error.object[error.start : error.end]
    if all("\udc80" <= c <= "\udcff" for c in bad):
        return bytes(ord(c) - 0xDC00 for c in bad), error.end
    return "".join(f"&#{ord(c)};" for c in bad), error.end


codecs.register_error("perch-page", _page_bytes)


def _ascii_compatible(charset: str) -> bool:
    """Whether markup reads as ASCII in ``charset``: what this scanner assumes (so not UTF-16/32,
    and not a bytes-to-bytes codec such as "hex" that ``codecs.lookup`` also knows)."""
    probe = "<div data-perch-slot='x'>ok</div>"
    try:
        return (
            probe.encode(charset) == probe.encode("ascii") and probe.encode("ascii").decode(charset) == probe
        )
    except (LookupError, UnicodeError, TypeError, AssertionError, ValueError):
        return False


async def rewrite_slots(
    chunks: AsyncIterator[bytes], fill: SlotFill, charset: str = "utf-8"
) -> AsyncIterator[bytes]:
    """Yield ``chunks`` with every slot element's content replaced by ``fill``.

    Bytes the charset cannot decode go back out unchanged, so a page whose real charset is only
    in a ``<meta>`` (say windows-1252 read as the default UTF-8) is not corrupted. A charset the
    scanner cannot read markup in (UTF-16, a bytes codec) leaves the page as it came, unfilled.
    """
    try:
        codecs.lookup(charset)
    except LookupError:  # a name no one knows: browsers fall back too, and UTF-8 is the likely truth
        charset = "utf-8"
    if not _ascii_compatible(charset):
        async for chunk in chunks:
            yield chunk
        return
    decoder = codecs.getincrementaldecoder(charset)(errors="surrogateescape")
    scanner = _Scanner(fill)
    async for chunk in chunks:
        text = await scanner.feed(decoder.decode(chunk), final=False)
        if text:
            yield text.encode(charset, errors="perch-page")
    text = await scanner.feed(decoder.decode(b"", final=True), final=True)
    if text:
        yield text.encode(charset, errors="perch-page")
