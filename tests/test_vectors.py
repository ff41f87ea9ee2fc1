"""CPython runs the golden vectors; the Pyodide suite runs the same files."""

from __future__ import annotations

import base64
import copy

import pytest

from core import decode_snapshot, encode_snapshot
from tests.vectors import runner


@pytest.mark.parametrize("name", ["hashing", "decisions", "ranked", "rejections"])
def test_cpython_agrees_with_the_vectors(name: str) -> None:
    check = getattr(runner, f"check_{name}")
    assert check(runner.load(f"{name}.json")) == []


def test_vectors_cover_every_path() -> None:
    cases = runner.load("decisions.json")["cases"]
    assert {c["expected"]["reason"] for c in cases} == {"personalized", "holdout", "consent", "stale"}
    assert any(c["unit"] is None for c in cases)
    assert len({c["expected"]["segment"] for c in cases}) >= 6
    assert len({c["expected"]["arm"] for c in cases if c["snapshot"] == "wide"}) >= 10


def test_ranked_vectors_cover_every_path() -> None:
    cases = runner.load("ranked.json")["cases"]
    assert {c["expected"]["reason"] for c in cases} == {"personalized", "holdout", "consent", "stale"}
    assert {c["expected"]["primary_group"] for c in cases} >= {"", "shoes", "pans", "bags"}
    lists = [tuple(i["arm"] for i in c["expected"]["items"]) for c in cases if c["snapshot"] == "recs"]
    assert len(set(lists)) > 40  # the draws vary, the procedure is what the vectors pin
    floored = [c for c in cases if any(i["arm"] in ("arm-5", "arm-11") for i in c["expected"]["items"])]
    assert floored  # the forced items show up


def test_a_changed_ranked_list_is_reported() -> None:
    doc = copy.deepcopy(runner.load("ranked.json"))
    case = next(c for c in doc["cases"] if c["expected"]["reason"] == "personalized")
    items = case["expected"]["items"]
    items[0], items[1] = items[1], items[0]
    assert len(runner.check_ranked(doc)) == 1


def test_a_changed_decision_is_reported() -> None:
    doc = copy.deepcopy(runner.load("decisions.json"))
    case = next(c for c in doc["cases"] if c["expected"]["reason"] == "personalized")
    case["expected"]["arm"] = "arm-1" if case["expected"]["arm"] != "arm-1" else "arm-2"
    assert len(runner.check_decisions(doc)) == 1
    doc = copy.deepcopy(runner.load("hashing.json"))
    doc["cases"][5]["bucket"] += 1e-16
    assert len(runner.check_hashing(doc)) == 1


def test_vector_snapshots_reencode_to_the_same_bytes() -> None:
    # The control plane encodes with the same code: its bytes must not drift.
    snapshots = [
        *runner.load("decisions.json")["snapshots"].values(),
        *runner.load("ranked.json")["snapshots"].values(),
    ]
    for raw in snapshots:
        data = base64.b64decode(raw)
        assert encode_snapshot(decode_snapshot(data)) == data
