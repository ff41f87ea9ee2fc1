"""Streaming fill of ``data-perch-slot`` elements, for runtimes without HTMLRewriter.

workerd has HTMLRewriter (lol-html); CPython and Pyodide under Node do not,
so this is the equivalent there: it reads the origin's body chunk by chunk,
passes everything through untouched except the content of elements carrying
``data-perch-slot="<experiment>"``, which it replaces with the HTML the fill
function returns (or leaves alone when that is None).  Comments and the raw
text of ``script``/``style``/``textarea``/``title`` are never mistaken for
markup.  It keeps at most one unfinished tag in memory; past ``MAX_PENDING``
characters of one tag it gives up and passes the rest through unchanged.
"""

from __future__ import annotations

import codecs
import html
import re
from collections.abc import AsyncIterator

from edge.platform import SlotFill

__all__ = ["MAX_PENDING", "SLOT_ATTRIBUTE", "rewrite_slots"]

SLOT_ATTRIBUTE = "data-perch-slot"
MAX_PENDING = 256 * 1024

_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9:\-]*)((?:[^>\"']|\"[^\"]*\"|'[^']*')*)>")
_ATTR = re.compile(r"([^\s\"'>/=]+)(?:\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s\"'=<>`]+)))?")
_RAW_TEXT = {"script", "style", "textarea", "title"}
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def _slot_of(attributes: str) -> str | None:
    for match in _ATTR.finditer(attributes):
        if match.group(1).lower() == SLOT_ATTRIBUTE:
            value = match.group(2) or match.group(3) or match.group(4) or ""
            return html.unescape(value).strip() or None
    return None


class _Scanner:
    """Tokenizer state carried across chunks."""

    def __init__(self, fill: SlotFill) -> None:
        self.fill = fill
        self.pending = ""
        self.raw_end: str | None = None  # inside script/style/...: the end tag looked for
        self.skip_tag: str | None = None  # inside a filled slot: its tag name...
        self.skip_depth = 0  # ...and how many of that tag are open
        self.passthrough = False

    async def feed(self, text: str, final: bool) -> str:  # noqa: PLR0915 - one tokenizer loop reads best
        if self.passthrough:
            return text
        buf = self.pending + text
        self.pending = ""
        out: list[str] = []
        i = 0
        n = len(buf)
        while i < n:
            if self.raw_end is not None:
                end = buf.lower().find(self.raw_end, i)
                if end < 0:
                    keep = 0 if final else len(self.raw_end)  # the end tag may straddle chunks
                    stop = max(i, n - keep)
                    self._emit(out, buf[i:stop])
                    i = stop
                    break
                self._emit(out, buf[i:end])
                self.raw_end = None
                i = end
                continue
            lt = buf.find("<", i)
            if lt < 0:
                self._emit(out, buf[i:])
                i = n
                break
            self._emit(out, buf[i:lt])
            i = lt
            if buf.startswith("<!--", i):
                end = buf.find("-->", i + 4)
                if end < 0:
                    break
                self._emit(out, buf[i : end + 3])
                i = end + 3
                continue
            if buf.startswith(("<!", "<?"), i):
                end = buf.find(">", i)
                if end < 0:
                    break
                self._emit(out, buf[i : end + 1])
                i = end + 1
                continue
            match = _TAG.match(buf, i)
            if match is None:
                head = buf[i + 1 : i + 3]
                starts_tag = bool(head) and (
                    head[0].isalpha() or (head[0] == "/" and (len(head) < 2 or head[1].isalpha()))
                )
                if not starts_tag and (head or final):
                    self._emit(out, "<")  # a literal '<' in text
                    i += 1
                    continue
                break  # an unfinished tag: wait for the next chunk (or flush at the end)
            i = match.end()
            await self._tag(out, match)
        rest = buf[i:]
        if final:
            self._emit(out, rest)
        elif len(rest) > MAX_PENDING:
            self.passthrough = True
            self._emit(out, rest)
        else:
            self.pending = rest
        return "".join(out)

    def _emit(self, out: list[str], text: str) -> None:
        if self.skip_tag is None and text:
            out.append(text)

    async def _tag(self, out: list[str], match: re.Match[str]) -> None:
        closing, name, attributes = match.group(1) == "/", match.group(2).lower(), match.group(3)
        self_closing = attributes.rstrip().endswith("/")
        if self.skip_tag is not None:
            if name == self.skip_tag:
                if closing:
                    self.skip_depth -= 1
                    if self.skip_depth == 0:
                        self.skip_tag = None
                        out.append(match.group(0))
                        return
                elif not self_closing:
                    self.skip_depth += 1
            if not closing and name in _RAW_TEXT and not self_closing:
                self.raw_end = f"</{name}"
            return
        out.append(match.group(0))
        if closing or self_closing or name in _VOID:
            return
        if name in _RAW_TEXT:
            self.raw_end = f"</{name}"
            return
        experiment = _slot_of(attributes) if SLOT_ATTRIBUTE in attributes.lower() else None
        if experiment is None:
            return
        content = await self.fill(experiment)
        if content is not None:
            out.append(content)
            self.skip_tag, self.skip_depth = name, 1


async def rewrite_slots(
    chunks: AsyncIterator[bytes], fill: SlotFill, charset: str = "utf-8"
) -> AsyncIterator[bytes]:
    """Yield ``chunks`` with every slot element's content replaced by ``fill``."""
    try:
        codecs.lookup(charset)
    except LookupError:
        charset = "utf-8"
    decoder = codecs.getincrementaldecoder(charset)(errors="replace")
    scanner = _Scanner(fill)
    async for chunk in chunks:
        text = await scanner.feed(decoder.decode(chunk), final=False)
        if text:
            yield text.encode(charset, errors="replace")
    text = await scanner.feed(decoder.decode(b"", final=True), final=True)
    if text:
        yield text.encode(charset, errors="replace")
