"""README.md's benchmark headline states the targets of benchmarks/targets.py, the table
RESULTS.md's headline is judged by: change a target in one place and this test names the other."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.targets import README_ROWS, TARGETS, Target, readme_target

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_headline() -> list[tuple[str, str]]:
    """(figure, target) of each row of the table under README.md's "## Benchmarks"."""
    text = README.read_text()
    section = text[text.index("\n## Benchmarks\n") :]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in row.strip("|").split(" | ")] for row in rows[1:]]  # after the header
    return [(figure, target.split(" — ")[0]) for figure, _measured, target in cells]


def _keys(figure: str) -> tuple[str, ...]:
    (prefix,) = [p for p in README_ROWS if figure.startswith(p)]
    return README_ROWS[prefix]


def test_every_readme_headline_row_states_its_targets() -> None:
    rows = _readme_headline()
    assert {p for p in README_ROWS if any(f.startswith(p) for f, _ in rows)} == set(README_ROWS)
    for figure, target in rows:
        keys = _keys(figure)
        if keys:
            assert target.replace("\u00d7", "x") == readme_target(keys), figure  # README writes a times sign


def test_readme_statements_follow_the_table() -> None:
    # The check above must fail when only the table changes.
    keys = README_ROWS["Pyodide: whole `Default.fetch` p99"]
    assert readme_target(keys) == "≤ 1 / 1.15 ms"
    assert readme_target(README_ROWS["learning, share of the oracle's lift"]) == "≥ 75 %, ahead"
    assert readme_target(("consume.events_per_s",)) == "≥ 25,000"


@pytest.mark.parametrize(
    ("target", "value", "verdict"),
    [
        (Target(200, "≤ 0.2 ms"), 200.0, "met"),
        (Target(200, "≤ 0.2 ms"), 200.5, "**missed**"),
        (Target(5.0, "≥ 5x", higher_is_better=True), 4.99, "**missed**"),
        (Target(5.0, "≥ 5x", higher_is_better=True), None, "not measured"),
    ],
)
def test_a_target_is_met_up_to_its_limit(target: Target, value: float | None, verdict: str) -> None:
    assert target.verdict(value) == verdict


def test_every_target_is_in_the_readme_or_results_only() -> None:
    stated = {k for keys in README_ROWS.values() for k in keys}
    # The learner's growth is a RESULTS.md-only target: the README gives the contextual cycle.
    assert set(TARGETS) - stated == {"learner.growth"}
