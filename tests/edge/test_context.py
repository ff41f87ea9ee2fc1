from __future__ import annotations

import pytest

from edge.context import ContextError, build_context, device_class, source_class
from tests.edge.conftest import request

IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"
IPAD = "Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) AppleWebKit/605.1.15"
ANDROID_TABLET = "Mozilla/5.0 (Linux; Android 14; SM-X710) AppleWebKit/537.36 Chrome/120 Safari/537.36"
ANDROID_PHONE = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/120 Mobile Safari/537.36"
DESKTOP = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120 Safari/537.36"
BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


@pytest.mark.parametrize(
    ("ua", "expected"),
    [
        (IPHONE, "mobile"),
        (ANDROID_PHONE, "mobile"),
        (IPAD, "tablet"),
        (ANDROID_TABLET, "tablet"),
        (DESKTOP, "desktop"),
        (BOT, "bot"),
        ("", "unknown"),
        (None, "unknown"),
    ],
)
def test_device_class(ua: str | None, expected: str) -> None:
    assert device_class(ua) == expected


@pytest.mark.parametrize(
    ("referer", "medium", "expected"),
    [
        (None, None, "direct"),
        ("https://www.google.com/search?q=x", None, "search"),
        ("https://duckduckgo.com/", None, "search"),
        ("https://t.co/abc", None, "social"),
        ("https://m.facebook.com/story", None, "social"),
        ("https://shop.test/cart", None, "internal"),
        ("https://blog.example.org/post", None, "referral"),
        ("https://www.google.com/", "email", "email"),
        (None, "cpc", "paid"),
        ("not a url", None, "direct"),
    ],
)
def test_source_class(referer: str | None, medium: str | None, expected: str) -> None:
    assert source_class(referer, "shop.test", medium) == expected


def test_context_layers_derived_cookie_and_explicit_features() -> None:
    req = request(
        "https://shop.test/p?utm_medium=email",
        headers={"user-agent": IPHONE, "referer": "https://www.bing.com/"},
        cf={"country": "FR", "colo": "CDG", "timezone": "Europe/Paris", "asn": 3215},
    )
    cookies = {"perch_prefs": "theme=dark&lang=fr&Bad Name=x"}
    ctx = build_context(req, cookies, {"plan": "pro", "device": "kiosk", "returning": True})
    assert ctx == {
        "device": "kiosk",  # explicit context wins over the User-Agent
        "source": "email",
        "country": "FR",
        "colo": "CDG",
        "timezone": "Europe/Paris",
        "pref.theme": "dark",
        "pref.lang": "fr",
        "plan": "pro",
        "returning": "true",
    }


@pytest.mark.parametrize(
    ("explicit", "message"),
    [
        ({"Bad": "x"}, "names are 1-64 of a-z"),
        ({"x": ["list"]}, "value must be a string or number"),
        ({"x": "v" * 129}, "longer than 128"),
        ({f"f{i}": "v" for i in range(33)}, "33 context features, at most 32"),
    ],
)
def test_explicit_context_limits(explicit: dict[str, object], message: str) -> None:
    with pytest.raises(ContextError, match=message):
        build_context(request("https://shop.test/"), {}, explicit)
