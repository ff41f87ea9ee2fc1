"""HTML fragments the control plane accepts from operators: what shape a ranked item's must have.

A ranked slot's list gets one child per item (edge.pages) and perch.js credits a click on the
i-th child to the i-th item, so an item's fragment must be exactly one element. Checked here, at
the origin, when the experiment is defined; the edge trusts its snapshot.
"""

from __future__ import annotations

from html.parser import HTMLParser

__all__ = ["one_element"]

_VOID = frozenset(
    ["area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"]
)  # elements with no end tag


class _TopLevel(HTMLParser):
    """Counts a fragment's top-level elements and whether any text sits beside them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth = self.elements = 0
        self.text = False

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if self.depth == 0:
            self.elements += 1
        if tag not in _VOID:
            self.depth += 1

    def handle_startendtag(self, tag: str, attrs: object) -> None:
        if self.depth == 0:
            self.elements += 1

    def handle_endtag(self, tag: str) -> None:
        if tag not in _VOID:
            self.depth = max(0, self.depth - 1)

    def handle_data(self, data: str) -> None:
        if self.depth == 0 and data.strip():
            self.text = True


def one_element(fragment: str) -> bool:
    """Whether ``fragment`` is a single element (with whatever inside it): a ranked item's child of
    the list, so that the i-th child of a filled list is the i-th item (edge.pages, perch.js)."""
    parser = _TopLevel()
    parser.feed(fragment)
    parser.close()
    return parser.elements == 1 and not parser.text and parser.depth == 0
