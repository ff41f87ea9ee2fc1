from __future__ import annotations

import re
from pathlib import Path

import pytest

from control_plane.settings import Settings, SettingsError

TOKEN = "admin-token-0123456789"
SECRET = "edge-secret-0123456789"
ENV = {"PERCH_ADMIN_TOKEN": TOKEN, "PERCH_EDGE_SECRET": SECRET}


def test_environment_is_read_with_embedded_defaults(tmp_path: Path) -> None:
    settings = Settings.from_env({**ENV, "PERCH_DATA_DIR": str(tmp_path), "PERCH_PUBLISH_INTERVAL_S": "5"})
    assert settings.database_url == f"sqlite:///{(tmp_path / 'perch.db').resolve()}"
    assert (settings.kv, settings.publish_interval_s) == ("local", 5.0)
    assert settings.unit_salt and settings.unit_salt != SECRET  # derived, never the secret itself
    assert settings.events_url == ""  # events in the database unless ClickHouse is named
    assert Settings.from_env({**ENV, "PERCH_EVENTS_URL": "chdb:///x"}).events_url == "chdb:///x"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PERCH_EDGE_SECRET": SECRET}, "PERCH_ADMIN_TOKEN must be set, at least 16 characters"),
        ({**ENV, "PERCH_KV": "redis"}, "PERCH_KV='redis', must be 'local' or 'cloudflare'"),
        ({**ENV, "PERCH_KV": "cloudflare"}, "PERCH_KV=cloudflare needs PERCH_CF_ACCOUNT_ID"),
        (
            {**ENV, "PERCH_PUBLISH_INTERVAL_S": "0.5"},
            "PERCH_PUBLISH_INTERVAL_S=0.5, must be >= 1 (KV: 1 write/s/key)",
        ),
        ({**ENV, "PERCH_PUBLISH_INTERVAL_S": "soon"}, "PERCH_PUBLISH_INTERVAL_S='soon', must be a number"),
        (
            {**ENV, "PERCH_DATABASE_URL": "chdb:///var/perch"},
            "PERCH_DATABASE_URL='chdb:///var/perch': ClickHouse holds events only; set PERCH_EVENTS_URL",
        ),
        (
            {**ENV, "PERCH_EVENTS_URL": "postgresql://h/db"},
            "PERCH_EVENTS_URL='postgresql://h/db', must be chdb:///path or clickhouse://",
        ),
    ],
)
def test_bad_settings_say_what_is_expected(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match="^" + re.escape(message)):
        Settings.from_env(env)


def test_signatures_cannot_outlive_the_replay_memory() -> None:
    assert Settings(admin_token=TOKEN, edge_secret=SECRET, signature_tolerance_s=420).signature_tolerance_s
    with pytest.raises(SettingsError, match=r"signature_tolerance_s=600, must be in \[1, 420\]"):
        Settings(admin_token=TOKEN, edge_secret=SECRET, signature_tolerance_s=600)
