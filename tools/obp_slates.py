"""Open Bandit Pipeline's slate estimators on synthetic logs: the reference Perch's are checked against.

Runs in a separate virtualenv holding OBP 0.5.7 (``make obp-vectors`` makes it: OBP pins old
releases of its dependencies, so it cannot share Perch's). Imports nothing of Perch. Writes
``tests/control_plane/learning/obp_slates.json``: the logs and OBP's estimates, which
``tests/control_plane/learning/test_slates.py`` compares with control_plane.learning.slates to 1e-9.

Any ``obp.*`` import runs the package's ``__init__``, which imports torch; the estimators need
none of it, so a stand-in ``torch`` module is installed first and the package's ``__init__`` is
skipped (its modules are loaded from their directory).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "tests" / "control_plane" / "learning" / "obp_slates.json"
SEED = 20261203
LISTS, SLOTS, ITEMS = 300, 5, 20


class _Anything(types.ModuleType):
    """A module any attribute of which exists (torch's names in OBP's annotations and checks)."""

    def __getattr__(self, name: str) -> Any:
        return type(name, (), {})


def _estimators() -> Any:
    sys.modules.setdefault("torch", _Anything("torch"))
    spec = importlib.util.find_spec("obp")
    assert spec is not None and spec.submodule_search_locations, "OBP is not installed here"
    root = Path(next(iter(spec.submodule_search_locations)))
    for name, path in (("obp", root), ("obp.ope", root / "ope")):
        package = types.ModuleType(name)
        package.__path__ = [str(path)]
        sys.modules[name] = package
    from obp.ope import estimators_slate  # type: ignore[import-not-found]

    return estimators_slate


def _logs(rng: np.random.Generator) -> dict[str, list[Any]]:
    """(Rounded, to keep the file small; the estimates are computed from the rounded values.)
    Lists of SLOTS distinct items; a whole-list and an item-position probability per row under a
    logging and a target policy; clicks falling off with position."""
    rows: dict[str, list[Any]] = {k: [] for k in ("slate", "position", "item", "reward")}
    for key in ("logged_list", "target_list", "logged_item", "target_item"):
        rows[key] = []
    for s in range(LISTS):
        items = rng.choice(ITEMS, size=SLOTS, replace=False)
        logged_list, target_list = round(rng.uniform(1e-4, 1e-2), 7), round(rng.uniform(0.0, 1e-2), 7)
        for p, item in enumerate(items):
            rows["slate"].append(s)
            rows["position"].append(p)
            rows["item"].append(int(item))
            rows["reward"].append(float(rng.random() < 0.3 / (1 + p)))
            rows["logged_list"].append(logged_list)
            rows["target_list"].append(target_list)
            rows["logged_item"].append(round(float(rng.uniform(0.02, 0.6)), 5))
            rows["target_item"].append(round(float(rng.uniform(0.0, 0.6)), 5))
    return rows


def main() -> int:
    est = _estimators()
    logs = _logs(np.random.default_rng(SEED))
    a = {k: np.asarray(v) for k, v in logs.items()}
    common = {"slate_id": a["slate"], "reward": a["reward"], "position": a["position"]}
    standard = {"pscore": a["logged_list"], "evaluation_policy_pscore": a["target_list"]}
    independent = {
        "pscore_item_position": a["logged_item"],
        "evaluation_policy_pscore_item_position": a["target_item"],
    }
    results = {
        "SlateStandardIPS": est.SlateStandardIPS(len_list=SLOTS).estimate_policy_value(**common, **standard),
        "SelfNormalizedSlateStandardIPS": est.SelfNormalizedSlateStandardIPS(
            len_list=SLOTS
        ).estimate_policy_value(**common, **standard),
        "SlateIndependentIPS": est.SlateIndependentIPS(len_list=SLOTS).estimate_policy_value(
            **common, **independent
        ),
        "SelfNormalizedSlateIndependentIPS": est.SelfNormalizedSlateIndependentIPS(
            len_list=SLOTS
        ).estimate_policy_value(**common, **independent),
    }
    doc = {
        "about": "OBP's slate estimators on synthetic logs; made by tools/obp_slates.py (make obp-vectors)",
        "obp": version("obp"),
        "seed": SEED,
        "logs": logs,
        "results": {k: float(v) for k, v in results.items()},
    }
    OUT.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    print(f"wrote {OUT}: {doc['results']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
