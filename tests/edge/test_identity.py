from __future__ import annotations

import random

import pytest

from core import SignatureError, sign_identity, verify_identity
from core.signing import _identity_mac
from edge.identity import identify, known_units, parse_cookies
from tests.edge.conftest import request

UID = "0123456789abcdef0123456789abcdef"
YEAR = 365 * 24 * 3600


SECRET = "site-identity-secret-0123"


def ident(headers: dict[str, str] | None = None, cookies: dict[str, str] | None = None, seed: int = 1):  # type: ignore[no-untyped-def]
    return identify(
        request("https://s.test/", headers=headers),
        cookies or {},
        "x-perch-user",
        random.Random(seed),
        YEAR,
        secret=SECRET,
    )


def test_new_visitor_gets_a_secure_long_lived_cookie() -> None:
    identity = ident()
    assert identity.consent and len(identity.unit or "") == 32
    (cookie,) = identity.set_cookies
    assert cookie == f"perch_uid={identity.unit}; Path=/; Max-Age={YEAR}; HttpOnly; Secure; SameSite=Lax"


def test_ids_come_from_the_request_generator() -> None:
    assert ident(seed=1).unit == ident(seed=1).unit
    assert ident(seed=1).unit != ident(seed=2).unit


def test_returning_visitor_keeps_their_id_and_gets_no_cookie() -> None:
    identity = ident(cookies={"perch_uid": UID})
    assert (identity.unit, identity.set_cookies) == (UID, ())


def test_tampered_cookie_is_replaced() -> None:
    identity = ident(cookies={"perch_uid": "<script>"})
    assert identity.unit != "<script>" and identity.set_cookies


@pytest.mark.parametrize(
    ("headers", "cookies"),
    [({"sec-gpc": "1"}, {}), ({"dnt": "1"}, {}), ({}, {"perch_consent": "0"})],
)
def test_withheld_consent_means_no_id_no_cookie(headers: dict[str, str], cookies: dict[str, str]) -> None:
    identity = ident(headers, {**cookies, "perch_uid": UID})
    assert (identity.unit, identity.consent, identity.set_cookies, identity.stitch) == (None, False, (), None)
    assert known_units(
        request("https://s.test/", headers=headers), {**cookies, "perch_uid": UID}, "x-perch-user"
    ) == (None,)


def test_authenticated_id_wins_and_the_stitch_is_reported_once() -> None:
    token = sign_identity(SECRET, "user-42")
    first = ident({"x-perch-user": token}, {"perch_uid": UID})
    assert first.unit == "user-42"
    assert first.stitch == (UID, "user-42")
    (mark,) = first.set_cookies
    assert mark.startswith("perch_sid=")
    later = ident({"x-perch-user": token}, {"perch_uid": UID, "perch_sid": mark.split(";")[0].split("=")[1]})
    assert later.unit == "user-42" and later.stitch is None and later.set_cookies == ()


def test_parse_cookies_survives_malformed_pairs() -> None:
    # SimpleCookie would drop everything after the malformed pair, consent included.
    header = 'perch_uid=abc; other=a b; bad"cookie; perch_consent=0; q="quoted"; perch_uid=second'
    assert parse_cookies(header) == {"perch_uid": "abc", "other": "a b", "perch_consent": "0", "q": "quoted"}
    assert parse_cookies(None) == {}
    assert ident(cookies=parse_cookies("x=a b; perch_consent=0")).consent is False


@pytest.mark.parametrize(
    "claim",
    [
        "user-42",  # what any browser can send
        sign_identity("not-the-site-secret", "user-42"),
        sign_identity(SECRET, "user-42")[:-1] + "3",  # the id changed after signing
        "v1." + "g" * 64 + ".user-42",
        "v2." + sign_identity(SECRET, "user-42")[3:],
        "v1." + _identity_mac(SECRET, "user 42") + ".user 42",  # signed, but not an id we accept (space)
        "v1." + "0" * 64 + "." + "x" * 5000,
    ],
)
def test_claims_the_site_did_not_sign_are_ignored(claim: str) -> None:
    identity = ident({"x-perch-user": claim}, {"perch_uid": UID})
    assert (identity.unit, identity.stitch, identity.rejected_claim) == (UID, None, True)
    assert known_units(
        request("https://s.test/", headers={"x-perch-user": claim}),
        {"perch_uid": UID},
        "x-perch-user",
        SECRET,
    ) == (UID,)


def test_without_an_identity_secret_every_claim_is_ignored() -> None:
    token = sign_identity(SECRET, "user-42")
    identity = identify(
        request("https://s.test/", headers={"x-perch-user": token}),
        {"perch_uid": UID},
        "x-perch-user",
        random.Random(1),
        YEAR,
        secret=None,
    )
    assert (identity.unit, identity.rejected_claim) == (UID, True)


def test_identity_tokens_round_trip_and_hold_any_id() -> None:
    for user in ("u", "a.b.c", "user@example.com", "org/42:7"):
        assert verify_identity(SECRET, sign_identity(SECRET, user)) == user
    for refused in ("Jane Doe", "josé@example.com", "", "x" * 257):  # what the edge would never accept
        with pytest.raises(SignatureError, match="printable ASCII"):
            sign_identity(SECRET, refused)
    assert verify_identity("", sign_identity(SECRET, "u")) is None
    assert verify_identity(SECRET, "v1." + "0" * 64 + ".\ud800") is None
