"""Writes the golden vectors from the current code: ``make vectors``.

The vectors are the contract between edge and origin.  Regenerating them is
a deliberate act that must come with a new hash or schema version; this
script refuses to overwrite existing files without ``--force``.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import random
import sys
import zlib
from typing import Any

import msgpack

from core import (
    Arm,
    Block,
    ContextualModel,
    Ranking,
    Segment,
    Snapshot,
    SnapshotError,
    bucket,
    decode_snapshot,
    encode_snapshot,
)
from tests.allocation import monte_carlo_allocation
from tests.vectors.runner import HERE, run_decision, run_ranked

CREATED = 1_780_000_000_000
DEVICES = ["desktop", "mobile", "tablet"]
SOURCES = ["search", "social", "direct"]


def _snapshot(
    name: str, arms: int, segments: list[Segment], *, holdout: float, floor: float, seed: int
) -> Snapshot:
    rng = random.Random(seed)
    cells = arms * len(segments)
    # Mostly informative posteriors, with some shapes below 1 to cover the
    # small-shape sampler path.
    alpha = [
        rng.choice([rng.uniform(0.2, 0.9), rng.uniform(1, 40), rng.uniform(50, 900)]) for _ in range(cells)
    ]
    beta = [a * rng.uniform(1, 30) for a in alpha]
    return Snapshot(
        experiment=name,
        version=rng.randrange(1, 10_000),
        created_at=CREATED,
        max_age_s=600.0,
        salt=f"{name}-salt",
        default_arm="arm-0",
        holdout=holdout,
        floor=floor,
        arms=[
            Arm(f"arm-{i}", {"variant": i, "title": f"Variant {i}"}, f"<p data-v='{i}'>Variant {i}</p>")
            for i in range(arms)
        ],
        segments=segments,
        alpha=alpha,
        beta=beta,
        allocation=monte_carlo_allocation(alpha, beta, arms, floor, draws=200_000, seed=seed),
    )


def _contextual(seed: int, arms: int = 5) -> Snapshot:
    """A schema 2 snapshot: categorical, interaction and numeric blocks, random posteriors."""
    rng = random.Random(seed)
    blocks = [
        Block("categorical", ("device",), (("desktop",), ("mobile",))),
        Block("categorical", ("source",), (("search",), ("social",), ("direct",))),
        Block("categorical", ("device", "source"), (("mobile", "social"), ("desktop", "search"))),
        Block("numeric", ("visits",), mean=3.0, scale=2.0),
    ]
    dim = 1 + sum(b.width for b in blocks)
    mean = [rng.gauss(-3.0 if c == 0 else 0.0, 0.6) for _ in range(arms) for c in range(dim)]
    cov: list[float] = []
    for _ in range(arms):
        # L L' with a random lower-triangular L is positive semi-definite, as a Laplace covariance is.
        low = [[rng.gauss(0, 0.15) if j <= i else 0.0 for j in range(dim)] for i in range(dim)]
        for i in range(dim):
            for j in range(i, dim):
                cov.append(sum(low[i][k] * low[j][k] for k in range(dim)) + (0.01 if i == j else 0.0))
    return Snapshot(
        experiment="hero-contextual",
        version=rng.randrange(1, 10_000),
        created_at=CREATED,
        max_age_s=600.0,
        salt="ctx-salt",
        default_arm="arm-0",
        holdout=0.1,
        floor=0.1,
        arms=[Arm(f"arm-{i}", {"variant": i}) for i in range(arms)],
        segments=[Segment("all")],
        alpha=[1.0] * arms,
        beta=[1.0] * arms,
        allocation=[1.0 / arms] * arms,
        context_features=("device", "source", "visits"),
        model=ContextualModel(arms, blocks, mean, cov, explore=1.5),
    )


def _partial(seed: int) -> Snapshot:
    """Segments that name ``unknown``: an incomplete context must land in them (core.features)."""
    tree = [
        Segment("all"),
        Segment("device:unknown", {"device": "unknown"}, 0),
        Segment("device:mobile", {"device": "mobile"}, 0),
        Segment("device:unknown.source:social", {"device": "unknown", "source": "social"}, 1),
    ]
    snap = _snapshot("partial-context", 3, tree, holdout=0.0, floor=0.05, seed=seed)
    fields = {name: getattr(snap, name) for name in Snapshot.__dataclass_fields__ if not name.startswith("_")}
    fields.pop("arm_index")
    return Snapshot(**{**fields, "context_features": ("device", "source")})


def snapshots() -> dict[str, Snapshot]:
    tree = [Segment("all")]
    for d in DEVICES[1:]:
        tree.append(Segment(d, {"device": d}, 0))
    tree.append(Segment("search", {"source": "search"}, 0))
    tree.append(Segment("mobile-search", {"device": "mobile", "source": "search"}, 1))
    tree.append(Segment("mobile-social", {"device": "mobile", "source": "social"}, 1))
    return {
        "hero": _snapshot("home-hero", 4, tree, holdout=0.1, floor=0.05, seed=1),
        "wide": _snapshot("catalog-sort", 50, tree[:3], holdout=0.0, floor=0.01, seed=2),
        "pair": _snapshot("cta-color", 2, [Segment("all")], holdout=0.5, floor=0.2, seed=3),
        "partial": _partial(4),
        "contextual": _contextual(5),
    }


def ranked_snapshots(snaps: dict[str, Snapshot]) -> dict[str, Snapshot]:
    """Ranked decision points: 12 items in 3 groups (plus 2 ungrouped) over the hero's segment tree,
    with floors to honour and a per-position table; and a contextual one (no table)."""
    base = _snapshot("recs", 14, list(snaps["hero"].segments), holdout=0.1, floor=0.05, seed=4)
    groups = [("shoes", "pans", "bags")[i % 3] if i < 12 else "" for i in range(14)]
    segments = len(base.segments)
    forced = [0.3 if i in (5, 11) else 0.0 for i in range(14)] * segments
    ranking = Ranking(5, 0.2, groups, forced)
    ranked = dataclasses.replace(base, ranking=ranking)
    table = [round(random.Random(i).random(), 3) for i in range(segments * 4 * 14 * 5)]
    ranked = dataclasses.replace(ranked, ranking=dataclasses.replace(ranking, positions=table))
    ctx = snaps["contextual"]
    names = [("shoes", "pans")[i % 2] for i in range(len(ctx.arms))]
    contextual = dataclasses.replace(
        ctx, experiment="recs-ctx", ranking=Ranking(3, 0.34, names, [0.0] * len(ctx.arms))
    )
    return {"recs": ranked, "recs-ctx": contextual}


def ranked_cases(snaps: dict[str, Snapshot]) -> list[dict[str, Any]]:
    rng = random.Random(43)
    cases = []
    for name in snaps:
        for i in range(80):
            unit = None if i % 10 == 9 else f"visitor-{rng.randrange(10**6)}"
            context = {"device": rng.choice(DEVICES), "source": rng.choice(SOURCES)} if i % 4 else {}
            case = {
                "snapshot": name,
                "unit": unit,
                "context": context,
                "now_ms": CREATED + (86_400_000 if i % 17 == 3 else 5_000),
                "rng_seed": rng.randrange(2**32),
                "primary": rng.choice([None, "shoes", "pans", "bags", "hats"]),
                "consent": i % 13 != 5,
            }
            case["expected"] = run_ranked(snaps, case)
            cases.append(case)
    return cases


def hashing_cases() -> list[dict[str, Any]]:
    units = ["", "a", "user-1", "user-2", "ünïcødé", "🦜 perch", "x" * 300, "0", "00", "a:b", "ab"]
    units += [f"visitor-{i}" for i in range(100)]
    salts = ["", "home-hero", "home-hero:holdout", "s"]
    return [{"unit": u, "salt": s, "version": 1, "bucket": bucket(u, s, 1)} for u in units for s in salts]


def decision_cases(snaps: dict[str, Snapshot]) -> list[dict[str, Any]]:
    rng = random.Random(42)
    cases = []
    for name in snaps:
        for i in range(120):
            unit = None if i % 10 == 9 else rng.choice([f"visitor-{rng.randrange(10**6)}", f"ü-{i}", str(i)])
            context = {"device": rng.choice(DEVICES), "source": rng.choice(SOURCES)} if i % 4 else {}
            if name in ("partial", "contextual") and i % 3 == 1:
                # Incomplete contexts, unseen values and numbers good and bad.
                context = {k: v for k, v in context.items() if rng.random() < 0.5}
                if rng.random() < 0.3:
                    context["device"] = rng.choice(["watch", "unknown", "tablet"])
            if name == "contextual" and i % 2:
                context["visits"] = rng.choice(["0", "2.5", "7", "1e9", "-3", "nan", "many"])
            now = (
                CREATED + rng.choice([0, 1_000, 599_000, 601_000, 86_400_000])
                if i % 7 == 0
                else CREATED + 5_000
            )
            case = {
                "snapshot": name,
                "unit": unit,
                "context": context,
                "now_ms": now,
                "rng_seed": rng.randrange(2**32),
                "consent": i % 13 != 5,
            }
            case["expected"] = run_decision(snaps, case)
            cases.append(case)
    return cases


def _rejections(broken: dict[str, bytes]) -> list[dict[str, Any]]:
    """Each broken snapshot with the error the decoder gives it (all must be refused)."""
    cases = []
    for name, data in broken.items():
        try:
            decode_snapshot(data)
        except SnapshotError as exc:
            cases.append({"name": name, "bytes": base64.b64encode(data).decode(), "error": str(exc)})
        else:
            raise AssertionError(f"{name} decoded")
    return cases


def rejection_cases(valid: bytes) -> list[dict[str, Any]]:
    envelope = msgpack.unpackb(valid)
    body = msgpack.unpackb(envelope["payload"])

    def wrap(b: dict[str, Any], **over: Any) -> bytes:
        payload = msgpack.packb(b, use_bin_type=True)
        fields = {"schema": 1, "crc32": zlib.crc32(payload), "payload": payload, **over}
        return msgpack.packb(fields, use_bin_type=True)

    nan = b"\x00\x00\xc0\x7f"
    broken = {
        "truncated": valid[:-3],
        "unknown-schema": wrap(body, schema=4),
        "model-in-schema-1": wrap({**body, "model": {"kind": "contextual"}}),
        "bad-checksum": wrap(body, crc32=1),
        "short-table": wrap({**body, "beta": body["beta"][:-4]}),
        "nan-alpha": wrap({**body, "alpha": nan + body["alpha"][4:]}),
        "zero-beta": wrap({**body, "beta": bytes(4) + body["beta"][4:]}),
        "unknown-default": wrap({**body, "default_arm": "arm-99"}),
        "allocation-sum": wrap({**body, "allocation": body["alpha"]}),
    }
    return _rejections(broken)


def model_rejection_cases(valid: bytes) -> list[dict[str, Any]]:
    """Schema 2 bodies whose model breaks a rule: sizes are checked before tables are read."""
    body = msgpack.unpackb(msgpack.unpackb(valid)["payload"])
    model = body["model"]

    def wrap(**over: Any) -> bytes:
        payload = msgpack.packb({**body, "model": {**model, **over}}, use_bin_type=True)
        return msgpack.packb(
            {"schema": 2, "crc32": zlib.crc32(payload), "payload": payload}, use_bin_type=True
        )

    broken = {
        "model-short-cov": wrap(cov=model["cov"][:-4]),
        "model-nan-mean": wrap(mean=b"\x00\x00\xc0\x7f" + model["mean"][4:]),
        "model-huge": wrap(
            blocks=[{"kind": "categorical", "inputs": ["device"], "values": [[str(i)] for i in range(3000)]}]
        ),
        "model-blocks-mismatch": wrap(
            blocks=[{"kind": "numeric", "inputs": ["age"], "mean": 0.0, "scale": 1.0}]
        ),
        "model-negative-variance": wrap(cov=b"\x00\x00\x80\xbf" + model["cov"][4:]),
    }
    return _rejections(broken)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--force", action="store_true", help="overwrite existing vectors")
    args = parser.parse_args()
    snaps = snapshots()
    encoded = {name: encode_snapshot(s) for name, s in snaps.items()}
    ranked = ranked_snapshots(snaps)
    files = {
        "hashing.json": {"hash_version": 1, "cases": hashing_cases()},
        "decisions.json": {
            "snapshots": {name: base64.b64encode(data).decode() for name, data in encoded.items()},
            "cases": decision_cases(snaps),
        },
        "ranked.json": {
            "snapshots": {name: base64.b64encode(encode_snapshot(s)).decode() for name, s in ranked.items()},
            "cases": ranked_cases(ranked),
        },
        "rejections.json": {
            "cases": rejection_cases(encoded["hero"]) + model_rejection_cases(encoded["contextual"])
        },
    }
    for name, doc in files.items():
        path = HERE / name
        if path.exists() and not args.force:
            print(f"{path} exists; pass --force to overwrite the contract", file=sys.stderr)
            return 1
        path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
