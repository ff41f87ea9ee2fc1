"""The demo's simulated visitors: who they are, what truly converts them, and how they browse.

Each visitor has a device and a traffic source, and returning visitors keep their cookie; the
hidden conversion rates make the best variant differ by segment. The simulator sends them
through the edge over HTTP as browsers would, at a steady rate.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

from cli.demo_recs import RECS, ListOutcome, clicks

__all__ = [
    "ARMS",
    "EXPERIMENT",
    "PROFILE_EXPERIMENT",
    "Outcome",
    "Visit",
    "experiment_spec",
    "oracle_arm",
    "population",
    "simulate",
    "true_rate",
]

EXPERIMENT = "home-hero"
PROFILE_EXPERIMENT = "home-hero-profiles"  # --profiles: the same hero, also learning from profiles
ARMS = ["classic", "bold", "social-proof", "discount"]
DEVICES = {"desktop": 0.45, "mobile": 0.45, "tablet": 0.10}
SOURCES = {"search": 0.40, "social": 0.30, "direct": 0.30}
USER_AGENTS = {
    "desktop": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/124 Safari/537.36",
    "mobile": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "tablet": "Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) AppleWebKit/605.1.15",
}
REFERERS = {"search": "https://www.google.com/search?q=shoes", "social": "https://t.co/x1y2", "direct": None}
# Hidden truth: conversion rate by device and arm, scaled by traffic source. The best
# arm differs by segment, so no single variant is right for everyone.
BASE = {
    "desktop": {"classic": 0.040, "bold": 0.062, "social-proof": 0.045, "discount": 0.048},
    "mobile": {"classic": 0.030, "bold": 0.034, "social-proof": 0.041, "discount": 0.058},
    "tablet": {"classic": 0.050, "bold": 0.038, "social-proof": 0.061, "discount": 0.044},
}
SOURCE_LIFT = {
    "search": {"classic": 1.15, "bold": 1.0, "social-proof": 0.9, "discount": 1.0},
    "social": {"classic": 0.85, "bold": 1.0, "social-proof": 1.35, "discount": 1.0},
    "direct": {"classic": 1.0, "bold": 1.0, "social-proof": 1.0, "discount": 1.0},
}
CONSENT_WITHHELD = 0.08
RETURNING = 0.20
# `perch demo --profiles`: each visitor also has an interest, which the pages they view show
# (perch.js's page_view signals) and which outweighs device and source in what converts them.
INTERESTS = {"running-shoes": 0.40, "cookware": 0.35, "travel-bags": 0.25}
INTEREST_LIFT = {
    "running-shoes": {"classic": 0.8, "bold": 1.9, "social-proof": 0.9, "discount": 0.8},
    "cookware": {"classic": 0.9, "bold": 0.7, "social-proof": 0.9, "discount": 1.9},
    "travel-bags": {"classic": 1.6, "bold": 0.8, "social-proof": 1.4, "discount": 0.7},
}
RETURNING_PROFILES = 0.60  # the profile world: most visits are of visitors seen before


def true_rate(device: str, source: str, arm: str, interest: str = "") -> float:
    lift = INTEREST_LIFT[interest][arm] if interest else 1.0
    return BASE[device][arm] * SOURCE_LIFT[source][arm] * lift


def oracle_arm(device: str, source: str, interest: str = "") -> str:
    return max(ARMS, key=lambda a: true_rate(device, source, a, interest))


@dataclass
class Visit:
    index: int
    visitor: int
    device: str
    source: str
    consent: bool
    u: float  # the visit's conversion draw, shared by Perch, uniform and oracle
    uniform_arm: str
    interest: str = ""  # --profiles: what the visitor browses, and what converts them
    u2: float = 0.0  # --profiles: the draw of the second experiment (independent of the first)


@dataclass
class Outcome:
    arm: str | None = None
    reason: str = ""
    converted: bool = False
    expected: float = 0.0  # the true rate of what was shown
    decide_ms: float | None = None
    wall_ms: float = 0.0
    error: str | None = None


def population(count: int, seed: int, *, interests: bool = False) -> list[Visit]:
    rng = random.Random(seed)
    extra = random.Random(seed + 1)  # the profile world's draws: the plain demo's stay as they were
    visits: list[Visit] = []
    visitors: list[tuple[str, str, bool]] = []
    kinds: list[str] = []
    returning = RETURNING_PROFILES if interests else RETURNING
    for i in range(count):
        if visitors and rng.random() < returning:
            visitor = rng.randrange(len(visitors))
        else:
            device = rng.choices(list(DEVICES), list(DEVICES.values()))[0]
            source = rng.choices(list(SOURCES), list(SOURCES.values()))[0]
            visitors.append((device, source, rng.random() >= CONSENT_WITHHELD))
            kinds.append(extra.choices(list(INTERESTS), list(INTERESTS.values()))[0] if interests else "")
            visitor = len(visitors) - 1
        device, source, consent = visitors[visitor]
        visit = Visit(i, visitor, device, source, consent, rng.random(), rng.choice(ARMS))
        if interests:
            visit.interest, visit.u2 = kinds[visitor], extra.random()
        visits.append(visit)
    return visits


class Simulator:
    """Visitors as browsers would be: their own cookie, consent, referer and device."""

    def __init__(self, edge_url: str, visits: list[Visit], rate: float, *, profiles: bool = False) -> None:
        self.edge_url = edge_url
        self.rate = rate
        self.profiles = profiles
        self.started = time.monotonic()
        self.outcomes = [Outcome() for _ in visits]
        # --profiles: the same visits' decisions in the experiment that also knows the visitor's profile,
        # and their recommendations lists (cli.demo_recs), with the clicks' own draws.
        self.second = [Outcome() for _ in visits] if profiles else []
        self.lists = [ListOutcome() for _ in visits] if profiles else []
        self.click_rng = random.Random(len(visits))
        self.cookies: dict[int, str] = {}
        self.queue: asyncio.Queue[Visit] = asyncio.Queue()
        for visit in visits:
            self.queue.put_nowait(visit)

    def headers(self, visit: Visit, uid: str | None = None) -> dict[str, str]:
        """A browser's headers; ``uid``: the cookie this very visit holds (a visitor's two visits in
        flight at once may have been given two ids, and a beacon must carry its own decision's)."""
        headers = {"user-agent": USER_AGENTS[visit.device]}
        referer = REFERERS[visit.source]
        if referer:
            headers["referer"] = referer
        uid = uid or self.cookies.get(visit.visitor)
        if not visit.consent:
            headers["sec-gpc"] = "1"
        elif uid is not None:
            headers["cookie"] = f"perch_uid={uid}"
        return headers

    async def visit(self, session: Any, visit: Visit) -> None:
        out = self.outcomes[visit.index]
        uid = self.cookies.get(visit.visitor)  # the cookie this request carries: its tokens are for it
        headers = self.headers(visit, uid)
        started = time.perf_counter()
        url = f"{self.edge_url}/v1/decide"
        params = [("experiment", EXPERIMENT)] + (
            [("experiment", PROFILE_EXPERIMENT), ("experiment", RECS)] if self.profiles else []
        )
        async with session.get(url, params=params, headers=headers) as r:
            body = await r.json()
            out.wall_ms = (time.perf_counter() - started) * 1000
            if r.status != 200:
                out.error = f"decide: HTTP {r.status}"
                return
            timing = r.headers.get("server-timing", "")
            if "perch_uid" in r.cookies:
                uid = self.cookies[visit.visitor] = r.cookies["perch_uid"].value
        if timing.startswith("perch;dur="):
            out.decide_ms = float(timing.split("=", 1)[1])
        decisions = body["decisions"]
        await self.settle(session, visit, out, decisions[0], u=visit.u, uid=uid)
        if self.profiles:
            await self.settle(session, visit, self.second[visit.index], decisions[1], u=visit.u2, uid=uid)
            await self.click(session, visit, decisions[2], uid)
            if visit.consent and uid is not None:
                await self.browse(session, visit, uid)

    async def settle(
        self, session: Any, visit: Visit, out: Outcome, decision: dict[str, Any], *, u: float, uid: str | None
    ) -> None:
        """What the visitor does about one decision: convert (with its beacon) or not."""
        out.arm, out.reason = decision["arm"] or "classic", decision["reason"]  # fallback: the page's own
        out.expected = true_rate(visit.device, visit.source, out.arm, visit.interest)
        out.converted = u < out.expected
        if out.converted:
            beacon = {"token": decision["token"], "value": 1}  # the decision's signed token
            async with session.post(
                f"{self.edge_url}/v1/events", headers=self.headers(visit, uid), json=beacon
            ) as b:
                await b.read()
                if b.status != 202:
                    out.error = f"beacon: HTTP {b.status}"

    async def click(self, session: Any, visit: Visit, decision: dict[str, Any], uid: str | None) -> None:
        """The recommendations list: the positions the visitor clicks, each beaconed with its token."""
        out, tokens = clicks(decision, visit.interest, self.click_rng)
        self.lists[visit.index] = out
        for token in tokens:
            async with session.post(
                f"{self.edge_url}/v1/events",
                headers=self.headers(visit, uid),
                json={"token": token, "value": 1},
            ) as b:
                await b.read()
                if b.status != 202:
                    out.error = f"click beacon: HTTP {b.status}"

    async def browse(self, session: Any, visit: Visit, uid: str) -> None:
        """The pages the visitor views on this visit, as perch.js reports them (page_view signals)."""
        signals = [
            {"kind": "page_view", "category": visit.interest, "id": f"v{visit.index}-{k}"} for k in range(2)
        ]
        async with session.post(
            f"{self.edge_url}/v1/signals",
            headers=self.headers(visit, uid),
            json={"schema": 1, "signals": signals},
        ) as r:
            await r.read()
            if r.status != 202:
                self.outcomes[visit.index].error = f"signals: HTTP {r.status}"

    async def worker(self, session: Any, progress: Any) -> None:
        import aiohttp

        while not self.queue.empty():
            visit = self.queue.get_nowait()
            # Visitors arrive at ``rate`` a second, not as fast as two cores can send them.
            wait = self.started + visit.index / self.rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                await self.visit(session, visit)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.outcomes[visit.index].error = f"{type(exc).__name__}: {exc}"
            progress.update(1)


async def simulate(
    edge_url: str,
    visits: list[Visit],
    concurrency: int,
    rate: float,
    progress: Any,
    *,
    profiles: bool = False,
) -> tuple[list[Outcome], list[Outcome], list[ListOutcome]]:
    # aiohttp rather than httpx here: at thousands of requests a second on two shared
    # cores the client's own overhead decides how fast the demo runs.
    import aiohttp

    simulator = Simulator(edge_url, visits, rate, profiles=profiles)
    connector = aiohttp.TCPConnector(limit=concurrency)
    # Cookies are kept per simulated visitor, not in one shared jar.
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        await asyncio.gather(*(simulator.worker(session, progress) for _ in range(concurrency)))
    return simulator.outcomes, simulator.second, simulator.lists


def experiment_spec(*, profiles: bool = False) -> dict[str, Any]:
    """The hero; with ``profiles`` its twin that also learns from the visitor's profile interest."""
    return {
        "key": PROFILE_EXPERIMENT if profiles else EXPERIMENT,
        "default_arm": "classic",
        "features": ["device", "source", "profile.interest"] if profiles else ["device", "source"],
        "holdout": 0.1,
        "floor": 0.05,
        "prior": {"alpha": 1, "beta": 20, "shrinkage": 30},
        "max_age_s": 3600,
        "arms": [
            {
                "key": arm,
                "html": f"<section class='hero hero-{arm}'>{arm}</section>",
                "payload": {"variant": arm},
            }
            for arm in ARMS
        ],
    }
