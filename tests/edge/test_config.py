"""The Worker's variable names: one list (edge.config.Var), which wrangler.toml and from_vars follow."""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields
from pathlib import Path

from edge.config import EVENT_QUEUE_PREFIX, KV_BINDING, SECRETS, EdgeConfig, Var

WRANGLER = Path(__file__).resolve().parents[2] / "wrangler.toml"
# A valid value of each var, unlike its default.
OTHER_VALUES = {
    Var.ORIGIN_URL: "https://origin.test",
    Var.CONTROL_PLANE_URL: "https://cp.test",
    Var.EDGE_SECRET: "an-edge-secret",
    Var.IDENTITY_SECRET: "an-identity-secret",
    Var.USER_HEADER: "x-site-user",
    Var.CACHE_TTL_S: "7",
    Var.RETRY_AFTER_S: "3",
    Var.KV_TIMEOUT_S: "0.5",
    Var.EVENT_LINGER_MS: "50",
    Var.TOKEN_MAX_AGE_S: "3600",
    Var.SERVER_FEATURES: "country",
    Var.PROFILE_TIMEOUT_S: "0.04",
    Var.PROFILE_TTL_S: "60",
    Var.PROFILES: "off",
}


def _uncommented(text: str) -> str:
    """wrangler.toml with its commented-out settings (``# NAME = value``, ``# [[section]]``) in force."""
    return re.sub(r"^# (\[\[[\w.]+\]\]|[A-Za-z_]+ = .*)$", r"\1", text, flags=re.MULTILINE)


def test_wrangler_vars_are_the_workers_vars_and_no_secret() -> None:
    config = tomllib.loads(WRANGLER.read_text())
    given = set(config["vars"])
    assert given <= set(Var) - SECRETS, given - set(Var)
    assert {Var.ORIGIN_URL, Var.CONTROL_PLANE_URL} <= given  # what a deploy must point somewhere


def test_wrangler_documents_every_var_and_secret() -> None:
    text = WRANGLER.read_text()
    documented = set(tomllib.loads(_uncommented(text))["vars"])
    assert documented == set(Var) - SECRETS  # every optional var, as a commented-out line
    for secret in SECRETS:
        assert f"wrangler secret put {secret}`" in text, secret


def test_wrangler_bindings_are_the_workers_bindings() -> None:
    config = tomllib.loads(WRANGLER.read_text())
    assert [ns["binding"] for ns in config["kv_namespaces"]] == [KV_BINDING]
    producers = tomllib.loads(_uncommented(WRANGLER.read_text()))["queues"]["producers"]
    assert producers and all(p["binding"].startswith(EVENT_QUEUE_PREFIX) for p in producers)


def test_from_vars_reads_every_var_and_only_those() -> None:
    default = EdgeConfig.from_vars({})
    for var, value in OTHER_VALUES.items():
        assert EdgeConfig.from_vars({var.value: value}) != default, var
    assert set(OTHER_VALUES) == set(Var)
    # Every setting a var feeds is set from it; the rest keep their defaults.
    everything = EdgeConfig.from_vars({var.value: value for var, value in OTHER_VALUES.items()})
    unchanged = {
        f.name for f in fields(EdgeConfig) if getattr(everything, f.name) == getattr(default, f.name)
    }
    assert unchanged == {"cookie_max_age_s", "max_experiments"}
    assert EdgeConfig.from_vars({"ORIGIN_URL_TYPO": "https://x.test"}) == default
