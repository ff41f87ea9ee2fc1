"""The heavy ``make bench`` sections at tiny sizes, so they cannot rot between runs.

Plain tests (no ``benchmark`` fixture): ``make test``'s
``pytest benchmarks --benchmark-disable`` runs them, ``--benchmark-only``
(``make bench``'s core section) skips them.  They check that each section
runs end to end and that the report renders; no figure is judged.
"""

from __future__ import annotations

from typing import Any

from benchmarks import report, run
from benchmarks.bench_pyodide import PYODIDE_ASM


def _execute(*sections: str) -> dict[str, Any]:
    results = run.execute(run.SMOKE, list(sections), quick=True, command="pytest benchmarks")
    for name in sections:
        section = results["sections"][name]
        assert section["ok"], section.get("error")
    return results


def test_learner_ingest_and_http_sections_run_and_render() -> None:
    results = _execute("learner", "ingest", "http")
    learner = results["sections"]["learner"]
    big = learner["events"]["10000"]
    assert (big["segments"], big["cells"], big["exposures"]) == (15, 14, 10_000)  # 7 leaf paths x 2 arms
    (ingested,) = learner["ingested"].values()
    assert ingested["exposures"] == 100
    sqlite = results["sections"]["ingest"]["backends"]["sqlite"]
    assert sqlite["stored"] == sqlite["acknowledged"]
    (level,) = results["sections"]["http"]["levels"]
    assert level["statuses"] == {"200": level["requests"]}
    assert level["exposures_delivered"] == level["requests"]
    text = report.render(results)
    for heading in ("## 3. Learner scaling", "## 5. Ingestion", "## 6. HTTP at the local edge runner"):
        assert heading in text


def test_pyodide_section_runs_in_real_pyodide() -> None:
    from tests.pyodide.conftest import require_tooling

    require_tooling(PYODIDE_ASM)  # a skip on a developer's machine, a failure in CI
    results = _execute("pyodide")
    py = results["sections"]["pyodide"]
    assert py["runtime"]["platform"] == "emscripten"
    assert py["decide"]["10x50"]["n"] == 50
    fetch = py["fetch"]["2x1"]
    assert fetch["statuses"] == {"200": 50}
    assert set(fetch["reasons_checked"]) == {"personalized"}
    assert fetch["control_plane_posts"] >= 1
    assert py["contextual"]["decide"]["n"] == 50 and py["contextual"]["columns"] == 97
    # Every visitor of the hydration runs had their profile read from KV, and found it.
    assert py["profiles"]["reads"] and all(set(r) == {"hit"} for r in py["profiles"]["reads"])
    assert py["profiles"]["hit"]["fetch"]["n"] == py["profiles"]["off"]["fetch"]["n"] == 50
    ranked = py["ranked"]
    assert (ranked["items"], ranked["slots"], ranked["decide"]["n"]) == (50, 5, 100)
    text = report.render(results)
    assert "## 2. Edge in real Pyodide" in text and "profile hydration p99 overhead" in text
    assert "Pyodide ranked warm decision p99 (5 of 50 items, 50 segments)" in text


def test_machine_description_survives_a_clean_checkout() -> None:
    import sys

    from benchmarks import common

    # `git status --porcelain` prints nothing on a clean tree: that is "not dirty", not a crash.
    assert common._version([sys.executable, "-c", "pass"]) is None
    assert common._version([sys.executable, "-c", "print('v1\\nv2')"]) == "v1"
    assert isinstance(common.machine()["dirty"], bool)


def test_learning_section_runs_perchs_loop_and_renders() -> None:
    results = _execute("learning")
    table = results["sections"]["learning"]["table"]["additive"]
    assert set(table) == {"uniform", "context-free TS", "Perch contextual"}
    perch = table["Perch contextual"]
    assert perch["publish_p50_s"] > 0  # it learnt and published through the real pipeline
    assert abs(table["uniform"]["captured"]) < 0.5
    text = report.render(results)
    assert "## 4. Learning quality" in text and "Perch contextual" in text


def test_profiles_section_builds_what_changed_and_renders() -> None:
    results = _execute("profiles")
    data = results["sections"]["profiles"]
    for label in ("small", "large"):
        cycle, idle = data[label]["cycle"], data[label]["idle"]
        assert cycle["built"] == cycle["published"] == data["changed"]  # the changed visitors, no more
        assert idle["built"] == idle["published"] == 0
    assert "## 5d. Profile builder" in report.render(results)


def test_consume_section_drains_a_queue_exactly_and_renders() -> None:
    results = _execute("consume")
    (drain,) = results["sections"]["consume"]["backends"]["sqlite"]
    assert drain["exact"] and drain["stored"] == drain["events"] >= 2_000
    text = report.render(results)
    assert "## 5b. Ingestion through `perch consume`" in text
    assert "`perch consume` into sqlite, local queue" in text


def test_clickhouse_sections_store_exactly_and_render() -> None:
    results = _execute("consume", "clickhouse")
    (drain,) = results["sections"]["consume"]["backends"]["chdb"]
    assert drain["exact"] and drain["stored"] == drain["events"] >= 2_000
    store = results["sections"]["clickhouse"]
    assert store["cells"] == 500 and 0 < store["bytes_per_exposure"] < 1_000
    text = report.render(results)
    assert "`perch consume` into chdb, local queue" in text
    assert "## 5c. ClickHouse event store (chDB)" in text
    assert "learner's cell read over 10,000 exposures" in text
