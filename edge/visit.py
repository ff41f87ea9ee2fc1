"""What lives as long as an isolate (:class:`Edge`) and as long as one request (:class:`Visit`).

A visit is one request's visitor, its decisions and the events they produce: the decide route
and the page route both make their decisions through one, so a page's slots and an API call
identify, decide, mint tokens and log exposures alike.

Personalization never fails a page: without a usable snapshot a decision says ``fallback`` and
why, and the caller keeps its own default variant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core import (
    Decision,
    DecisionToken,
    Fallback,
    Generator,
    Profile,
    RankedDecision,
    decide,
    decide_ranked,
    exposure_event,
    fallback,
    feature_path,
    mint_token,
    stitch_event,
    unit_tag,
)
from edge.cache import SnapshotCache
from edge.config import EdgeConfig
from edge.identity import Identity, identify, parse_cookies
from edge.limits import Budget
from edge.outbox import Outbox
from edge.platform import EdgeRequest, Platform
from edge.profiles import Hydration, ProfileCache
from edge.session import SESSION_COOKIE, advance, read_session, session_cookie

__all__ = ["Edge", "Visit"]


@dataclass
class Edge:
    """What lives as long as the isolate: settings, the snapshot cache, the outbox."""

    config: EdgeConfig
    cache: SnapshotCache = field(init=False)
    outbox: Outbox = field(init=False)
    profiles: ProfileCache = field(init=False)
    signal_budget: Budget = field(init=False)  # per visitor: 100 at once, then one a second
    started_ms: int = 0
    requests: int = 0
    rejected_identities: int = 0  # user ids offered without a valid site signature: ignored
    rejected_beacons: int = 0  # outcome items without a valid token for this visitor: not credited
    rejected_signals: int = 0  # signal items that broke the schema (core.signals)

    def __post_init__(self) -> None:
        self.cache = SnapshotCache(self.config)
        self.outbox = Outbox()
        self.profiles = ProfileCache(self.config)
        self.signal_budget = Budget()


def _because(label: str, profile: Profile | None) -> str:
    """A feature that favoured the arm, in words: a profile's own ("you viewed running shoes")."""
    if profile is not None and label.startswith("profile."):
        words = profile.because.get(label[8:].partition("=")[0])
        if words:
            return words
    return label


def _personalized(decision: Decision, profile: Profile | None) -> str:
    if decision.propensity is not None:
        segment, p = decision.segment, decision.propensity
        return f"chosen for segment {segment!r} by Thompson sampling (propensity {p:.3f})"
    if decision.because:
        reasons = ", ".join(_because(label, profile) for label in decision.because)
        return f"shown because {reasons} (contextual Thompson sampling)"
    return "chosen by contextual Thompson sampling (an exploring draw, or no feature favoured it)"


def _why(decision: Decision, max_age_s: float, profile: Profile | None = None) -> str:
    # Only the chosen reason's words are formatted: this runs for every decision.
    reason = decision.reason
    if reason == "personalized":
        return _personalized(decision, profile)
    if reason == "holdout":
        return f"in the holdout group of {decision.experiment!r}: always the default variant"
    if reason == "consent":
        if profile is not None and profile.dnp:
            return "you asked not to be personalized: the default variant"
        return "no personalization without consent: the default variant"
    if reason == "stale":
        return f"snapshot is {decision.snapshot_age_s:.0f}s old (limit {max_age_s:.0f}s): default variant"
    return reason


def _ranked_why(ranked: RankedDecision, max_age_s: float, note: str | None, profile: Profile | None) -> str:
    if ranked.reason == "personalized":
        why = f"ranked for segment {ranked.segment!r} by Thompson sampling, one draw per item"
        if ranked.primary_group:
            outside = sum(1 for item in ranked.items if item.group != ranked.primary_group)
            why += f"; {outside} of {len(ranked.items)} from outside the interest {ranked.primary_group!r}"
        if ranked.because:
            why += f"; first because {', '.join(_because(label, profile) for label in ranked.because)}"
    elif ranked.reason == "holdout":
        why = f"in the holdout group of {ranked.experiment!r}: the default order"
    elif ranked.reason == "consent":
        why = "no personalization without consent (or asked not to be personalized): the default order"
    else:  # stale
        why = f"snapshot is {ranked.snapshot_age_s:.0f}s old (limit {max_age_s:.0f}s): the default order"
    return f"{why}; {note}" if note else why


def _answer(decision: Decision | Fallback, why: str, token: str | None) -> dict[str, Any]:
    """A decision as callers get it: its fields, why in words, and what its beacon must bring back."""
    out = decision.to_dict()
    out["why"] = why
    out["token"] = token
    return out


class Visit:
    """One request's decisions and the events they produce."""

    def __init__(self, edge: Edge, platform: Platform, request: EdgeRequest, rng: Generator) -> None:
        self.edge, self.platform, self.request, self.rng = edge, platform, request, rng
        self.cookies = parse_cookies(request.header("cookie"))
        config = edge.config
        self.identity: Identity = identify(
            request,
            self.cookies,
            config.user_header,
            rng,
            config.cookie_max_age_s,
            secret=config.identity_secret,
        )
        if self.identity.rejected_claim:
            edge.rejected_identities += 1
        self.events: list[dict[str, Any]] = []
        self.unit_tag: str | None = None
        self.decide_s = 0.0
        self.hydration: Hydration | None = None
        self.session_cookie: str | None = None
        if self.identity.stitch:
            self.events.append(stitch_event(*self.identity.stitch, platform.now_ms()))

    def tag(self) -> str | None:
        """The visitor's keyed tag (core.unit_tag): in their decision tokens, and naming their profile."""
        secret = self.edge.config.edge_secret
        if not secret or self.identity.unit is None:
            return None
        if self.unit_tag is None:  # one HMAC per request, however many decisions it makes
            self.unit_tag = unit_tag(secret, self.identity.unit)
        return self.unit_tag

    async def with_profile(self, context: Mapping[str, str]) -> dict[str, str]:
        """``context`` and what the edge knows of the visitor: their session (``session.*``,
        edge.session) and profile (``profile.*``, edge.profiles) features, which only the edge sets.
        Without consent, ``context`` as it was."""
        out = {k: v for k, v in context.items() if not k.startswith(("profile.", "session."))}
        secret, unit = self.edge.config.edge_secret, self.identity.unit
        if self.identity.consent and secret and unit is not None:
            now_s = self.platform.now_ms() // 1000
            session = advance(read_session(self.cookies.get(SESSION_COOKIE), secret, unit), now_s)
            self.session_cookie = session_cookie(session, secret, unit, self.edge.config.cookie_max_age_s)
            out.update(session.features())
        # A visitor whose id was made just now has no profile: no read for them.
        known = self.identity.consent and not self.identity.fresh and self.edge.config.profiles
        tag = self.tag() if known else None
        if tag is None:
            return out
        started = self.platform.perf_s()
        self.hydration = await self.edge.profiles.hydrate(tag, self.platform)
        self.decide_s += self.platform.perf_s() - started
        profile = self.hydration.profile
        if profile is not None:
            out.update(profile.context())
        return out

    @property
    def profile(self) -> Profile | None:
        return None if self.hydration is None else self.hydration.profile

    async def decide(self, experiment: str, context: Mapping[str, str]) -> dict[str, Any]:
        started = self.platform.perf_s()
        try:
            entry = await self.edge.cache.get(experiment, self.platform)
            snap = entry.snapshot
            if snap is None:
                served = fallback(experiment, entry.error or "not loaded yet", self.rng)
                why = f"no snapshot available ({served.cause}): keep your default variant"
                return _answer(served, why, None)  # nothing was decided: no outcome to credit
            now = self.platform.now_ms()
            profile = self.profile
            # The visitor's own do-not-personalize flag counts as withheld consent.
            consent = self.identity.consent and not (profile is not None and profile.dnp)
            # What tokens and exposures report: the cell the decision used (core.features).
            names = snap.context_features
            reported = dict(zip(names, feature_path(names, context), strict=True))
            unit = self.identity.unit if consent else None  # as without consent: nothing names them
            note = self.hydration.note() if self.hydration is not None else None
            if snap.ranking is not None:
                # The primary interest: the profile's, else this session's (edge.session), whichever
                # first names a group of items (else the top-scored item's group, core.ranking).
                candidates = (
                    profile.features.get("interest") if profile is not None else None,
                    context.get("session.interest"),
                )
                primary = next((c for c in candidates if c in snap.ranking.group_names), None)
                ranked = decide_ranked(
                    snap,
                    self.identity.unit,
                    context,
                    now_ms=now,
                    rng=self.rng,
                    primary=primary,
                    consent=consent,
                )
                return self._ranked(
                    ranked, reported, unit, now, _ranked_why(ranked, snap.max_age_s, note, profile)
                )
            decision = decide(snap, self.identity.unit, context, now_ms=now, rng=self.rng, consent=consent)
            self.events.append(exposure_event(decision, unit, now, reported))
            why = _why(decision, snap.max_age_s, profile)
            if note:
                why = f"{why}; {note}"
            return _answer(decision, why, self._token(decision, reported, now))
        finally:
            self.decide_s += self.platform.perf_s() - started

    def _ranked(
        self, ranked: RankedDecision, cell: dict[str, str], unit: str | None, now: int, why: str
    ) -> dict[str, Any]:
        """A ranked decision's answer, one exposure and one token per position: a click or a
        purchase is credited to the item and position whose token its beacon brings back."""
        out = ranked.to_dict()
        out["why"] = why
        for item, doc in zip(ranked.items, out["items"], strict=True):
            as_decision = Decision(
                experiment=ranked.experiment,
                arm=item.arm,
                payload=item.payload,
                html=item.html,
                propensity=item.propensity,
                reason=ranked.reason,
                segment=ranked.segment,
                snapshot_version=ranked.snapshot_version,
                snapshot_age_s=ranked.snapshot_age_s,
                decision_id=item.decision_id,
            )
            self.events.append(exposure_event(as_decision, unit, now, cell))
            doc["token"] = self._token(as_decision, cell, now)
        return out

    def _token(self, decision: Decision, cell: dict[str, str], now: int) -> str | None:
        """What a beacon must bring back for this decision's outcome to count."""
        secret = self.edge.config.edge_secret
        if not secret:
            return None
        return mint_token(
            secret,
            DecisionToken(
                decision.decision_id,
                decision.experiment,
                decision.arm,
                cell,
                now,
                decision.snapshot_version,
                self.tag() or "",
                decision.reason,  # so the control plane can credit the outcome from the token alone
            ),
        )

    def headers(self, cache_control: str | None = "private, no-store") -> list[tuple[str, str]]:
        out = [("set-cookie", c) for c in self.identity.set_cookies]
        if self.session_cookie:
            out.append(("set-cookie", self.session_cookie))
        if cache_control:
            out.append(("cache-control", cache_control))
        out.append(("server-timing", f"perch;dur={self.decide_s * 1000:.3f}"))
        return out

    def flush(self) -> None:
        """Send this request's events home in the background."""
        if self.events:
            events, self.events = self.events, []
            self.edge.outbox.add(self.platform, self.edge.config, events)
