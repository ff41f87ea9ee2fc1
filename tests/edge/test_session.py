"""edge.session: within-session features from a signed cookie."""

from __future__ import annotations

import json

import pytest

from edge.session import IDLE_S, SESSION_COOKIE, Session, advance, read_session, session_cookie
from edge.visit import Edge
from tests.edge.conftest import SECRET, FakePlatform, request, serve
from tests.factories import NOW

UID = "0123456789abcdef0123456789abcdef"
T0 = NOW // 1000


def value(cookie: str) -> str:
    return cookie.split(";", maxsplit=1)[0].split("=", 1)[1]


def test_a_visitors_sessions_pages_and_time_away() -> None:
    first = advance(None, T0)
    assert first.features() == {"session.visitor": "new", "session.pages": "1", "session.gap": "first"}
    later = advance(advance(advance(first, T0 + 60), T0 + 120), T0 + 180)
    assert later.features()["session.pages"] == "4-9" and later.visits == 1
    back = advance(later, T0 + 180 + IDLE_S + 7200)  # two and a half hours later: a new session
    assert back.features() == {"session.visitor": "returning", "session.pages": "1", "session.gap": "<1d"}
    viewed = advance(back, T0 + 200 + IDLE_S + 7200, page=False, interest="running-shoes")
    assert viewed.pages == 1 and viewed.features()["session.interest"] == "running-shoes"


def test_the_cookie_round_trips_and_refuses_edits_and_other_visitors() -> None:
    session = Session(T0, T0, T0 + 5, -1, 2, 1, "trail & road")
    raw = value(session_cookie(session, SECRET, UID, 3600))
    assert read_session(raw, SECRET, UID) == session
    assert read_session(raw, SECRET, "f" * 32) is None  # carried over from another visitor
    assert read_session(raw, "another-secret", UID) is None
    edited = raw.replace("~2~1~", "~1~9~")
    assert edited != raw and read_session(edited, SECRET, UID) is None
    for junk in ("", "s1", "x" * 500, "s1~a~b~c~d~e~f~g~h", raw + "~x"):
        assert read_session(junk, SECRET, UID) is None


def _cookies(response: object) -> dict[str, str]:
    return {c.split("=", 1)[0]: value(c) for k, c in response.headers if k == "set-cookie"}  # type: ignore[attr-defined]


def test_requests_advance_the_session_and_a_page_view_signal_sets_its_interest(
    edge: Edge, platform: FakePlatform
) -> None:
    url = "https://s.test/v1/decide?experiment=home-hero"
    first = serve(edge, platform, request(url, headers={"cookie": f"perch_uid={UID}"}))
    raw = _cookies(first)[SESSION_COOKIE]
    assert read_session(raw, SECRET, UID) == Session(T0, T0, T0, -1, 1, 1)
    platform.clock_ms += 30_000
    beacon = json.dumps(
        {"schema": 1, "signals": [{"kind": "page_view", "category": "running-shoes"}]}
    ).encode()
    signals = serve(
        edge,
        platform,
        request(
            "https://s.test/v1/signals",
            "POST",
            {"cookie": f"perch_uid={UID}; {SESSION_COOKIE}={raw}"},
            beacon,
        ),
    )
    raw = _cookies(signals)[SESSION_COOKIE]
    platform.clock_ms += 30_000
    second = serve(
        edge, platform, request(url, headers={"cookie": f"perch_uid={UID}; {SESSION_COOKIE}={raw}"})
    )
    session = read_session(_cookies(second)[SESSION_COOKIE], SECRET, UID)
    assert session is not None and session.features() == {
        "session.visitor": "new",
        "session.pages": "2-3",
        "session.gap": "first",
        "session.interest": "running-shoes",
    }


@pytest.mark.parametrize(
    "cookie", [f"perch_uid={UID}; perch_consent=0", f"perch_uid={UID}; {SESSION_COOKIE}=forged"]
)
def test_no_session_without_consent_and_a_forged_one_starts_afresh(
    edge: Edge, platform: FakePlatform, cookie: str
) -> None:
    response = serve(
        edge, platform, request("https://s.test/v1/decide?experiment=home-hero", headers={"cookie": cookie})
    )
    got = _cookies(response).get(SESSION_COOKIE)
    if "perch_consent=0" in cookie:
        assert got is None
    else:
        assert read_session(got, SECRET, UID) == Session(T0, T0, T0, -1, 1, 1)
