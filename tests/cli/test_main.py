from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cli.main import main
from core import bucket, decode_snapshot, encode_snapshot
from tests.factories import build_snapshot

SPEC = {
    "experiment": "cta",
    "version": 2,
    "created_at": 1_780_000_000_000,
    "max_age_s": 600,
    "salt": "cta",
    "default_arm": "blue",
    "holdout": 0.0,
    "floor": 0.1,
    "arms": [{"key": "blue", "payload": {"color": "#00f"}}, {"key": "green", "html": "<b>go</b>"}],
    "segments": [{"key": "all"}, {"key": "mobile", "features": {"device": "mobile"}, "parent": 0}],
    "alpha": [1, 30, 30, 1],
    "beta": [30, 1, 1, 30],
    "allocation": [0.05, 0.95, 0.95, 0.05],
}


def test_encode_inspect_decide(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))
    out = tmp_path / "snap.bin"
    runner = CliRunner()
    result = runner.invoke(main, ["snapshot", "encode", str(spec), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert decode_snapshot(out.read_bytes()).arms[1].html == "<b>go</b>"

    summary = json.loads(runner.invoke(main, ["snapshot", "inspect", str(out)]).output)
    assert summary["features"] == ["device"]
    assert summary["segments"][1]["allocation"] == {"blue": 0.95, "green": 0.05}

    args = [
        "snapshot",
        "decide",
        str(out),
        "--unit",
        "u-1",
        "--ctx",
        "device=mobile",
        "--seed",
        "1",
        "--now-ms",
        str(SPEC["created_at"]),
    ]
    decision = json.loads(runner.invoke(main, args).output)
    assert decision["segment"] == "mobile"
    assert decision["reason"] == "personalized"
    consent = json.loads(runner.invoke(main, [*args, "--no-consent"]).output)
    assert (consent["arm"], consent["reason"]) == ("blue", "consent")


def test_bad_inputs_give_clear_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(encode_snapshot(build_snapshot())[:-2])
    result = runner.invoke(main, ["snapshot", "inspect", str(bad)])
    assert result.exit_code == 1
    assert "truncated" in result.output
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**SPEC, "holdout": 2}))
    result = runner.invoke(main, ["snapshot", "encode", str(spec), "-o", str(tmp_path / "x.bin")])
    assert result.exit_code == 1
    assert "holdout=2, must be a number in [0.0, 1.0)" in result.output
    result = runner.invoke(main, ["snapshot", "decide", str(bad), "--ctx", "novalue"])
    assert result.exit_code == 2
    assert "expected FEATURE=VALUE" in result.output


def test_bucket_command() -> None:
    result = CliRunner().invoke(main, ["bucket", "u-42", "--salt", "home:holdout"])
    assert float(result.output) == bucket("u-42", "home:holdout")
    assert CliRunner().invoke(main, ["bucket", "u", "--salt", "s", "--version", "3"]).exit_code == 1


def test_a_contextual_snapshot_encodes_inspects_and_decides(tmp_path: Path) -> None:
    # Columns: intercept, device=mobile, other, unknown. Green wins on mobile, blue elsewhere.
    spec = {
        **SPEC,
        "segments": [{"key": "all"}],
        "alpha": [1, 1],
        "beta": [1, 1],
        "allocation": [0.5, 0.5],
        "context_features": ["device"],
        "model": {
            "blocks": [{"kind": "categorical", "inputs": ["device"], "values": [["mobile"]]}],
            "mean": [-3, -2, 0, 1, -3, 2, 0, 0],
            "cov": [1e-4 if i in (0, 4, 7, 9) else 0.0 for i in range(10)] * 2,
            "explore": 1.0,
        },
        "floor": 0.0,
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    out = tmp_path / "snap.bin"
    runner = CliRunner()
    result = runner.invoke(main, ["snapshot", "encode", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(runner.invoke(main, ["snapshot", "inspect", str(out)]).output)
    assert summary["features"] == ["device"] and summary["model"]["columns"] == 4
    base = [
        "snapshot",
        "decide",
        str(out),
        "--unit",
        "u-1",
        "--seed",
        "1",
        "--now-ms",
        str(SPEC["created_at"]),
    ]
    mobile = json.loads(runner.invoke(main, [*base, "--ctx", "device=mobile"]).output)
    assert (mobile["arm"], mobile["propensity"], mobile["because"]) == ("green", None, ["device=mobile"])
    # No device at all: "unknown", as the edge would see it (core.features), and blue wins.
    missing = json.loads(runner.invoke(main, base).output)
    assert missing["arm"] == "blue"


def test_snapshot_decide_shows_a_ranked_snapshots_list(tmp_path: Path) -> None:
    from tests.factories import build_ranked_snapshot

    snap = build_ranked_snapshot()
    path = tmp_path / "recs.bin"
    path.write_bytes(encode_snapshot(snap))
    runner = CliRunner()
    args = ["snapshot", "decide", str(path), "--unit", "u-1", "--seed", "1", "--primary", "g2"]
    decision = json.loads(runner.invoke(main, [*args, "--now-ms", str(snap.created_at)]).output)
    assert len(decision["items"]) == 5 and decision["primary_group"] == "g2"
    summary = json.loads(runner.invoke(main, ["snapshot", "inspect", str(path)]).output)
    assert summary["ranking"]["slots"] == 5 and summary["ranking"]["groups"]["item-6"] == "g2"
