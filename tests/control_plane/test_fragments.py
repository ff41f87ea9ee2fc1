from __future__ import annotations

import pytest

from control_plane.fragments import one_element


@pytest.mark.parametrize(
    ("fragment", "one"),
    [
        ("<li>a</li>", True),
        ("  <li class='x'>a <img src=a.png> <b>b</b><br>c</li>\n", True),
        ("<img src=x>", True),
        ("<br/>", True),
        ("<li>a</li><li>b</li>", False),
        ("text", False),
        ("<li>a</li> and text", False),
        ("<li>never closed", False),
        ("", False),
    ],
)
def test_a_ranked_items_fragment_is_one_element(fragment: str, one: bool) -> None:
    assert one_element(fragment) is one
