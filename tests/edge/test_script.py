"""/v1/perch.js in headless Chromium: a click in a ranked list beacons the clicked position's token."""

from __future__ import annotations

import json

import pytest

from edge.script import SCRIPT
from tests.control_plane.http.test_dashboard import CHROMIUM, CHROMIUM_ARGS, require_browser

PAGE = """<!doctype html><html><head><script src="/v1/perch.js"></script></head><body>
<ul data-perch-tokens="t1.first t1.second t1.third" data-perch-slot="recs" id="list" style="padding:40px">
<li><a href="#a">first</a></li><li><a href="#b"><span id="deep">second</span></a></li><li>third</li>
</ul><p id="outside">not a list</p>
<ol data-perch-tokens="t2.a t2.b"><li id="ambiguous">one of three</li><li>two</li><li>three</li></ol>
</body></html>"""


@pytest.mark.browser
def test_a_click_in_a_ranked_list_sends_that_positions_token() -> None:
    require_browser()
    from playwright.sync_api import Route, sync_playwright

    beacons: list[tuple[str, object]] = []
    errors: list[str] = []

    def serve(route: Route) -> None:
        request = route.request
        path = request.url.split("shop.test", 1)[1]
        if path == "/v1/perch.js":
            route.fulfill(status=200, content_type="application/javascript", body=SCRIPT)
        elif path in ("/v1/events", "/v1/signals"):
            beacons.append((path, json.loads(request.post_data or "null")))
            route.fulfill(status=202, content_type="application/json", body="{}")
        else:
            route.fulfill(status=200, content_type="text/html", body=PAGE)

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = chromium.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.route("https://shop.test/**", serve)
            page.goto("https://shop.test/shop")
            page.click("#deep")  # inside the second item, two levels down
            page.click("#outside")
            page.click("#list", position={"x": 5, "y": 5})  # the list's own padding: no item
            page.click("#ambiguous")  # three children for two tokens: no telling which item
            page.click("text=third")
            page.wait_for_timeout(300)
        finally:
            chromium.close()
    events = [body for path, body in beacons if path == "/v1/events"]
    assert events == [{"token": "t1.second", "value": 1}, {"token": "t1.third", "value": 1}]
    assert errors == []
