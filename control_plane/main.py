"""The composition root of a running control plane: settings -> store, KV publisher, app."""

from __future__ import annotations

from collections.abc import Mapping

import httpx
from starlette.applications import Starlette

from control_plane.distribution.kv_publishers import CloudflareKVPublisher, KVPublisher, LocalKVPublisher
from control_plane.http.app import create_app
from control_plane.settings import Settings
from control_plane.storage.store import Store
from core import LocalKV

__all__ = ["app_from_env", "kv_publisher"]


def kv_publisher(settings: Settings) -> KVPublisher:
    if settings.kv == "cloudflare":
        return CloudflareKVPublisher(
            settings.cf_account_id,
            settings.cf_namespace_id,
            settings.cf_api_token,
            client=httpx.Client(timeout=30),
        )
    return LocalKVPublisher(LocalKV(settings.data_dir))


def app_from_env(env: Mapping[str, str]) -> Starlette:
    settings = Settings.from_env(env)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store.from_url(settings.database_url, settings.unit_salt)
    store.migrate()
    schedule = True
    if settings.events_url.startswith("clickhouse"):
        from control_plane.storage.clickhouse import executor_for
        from control_plane.storage.clickhouse_events import EventLog

        store.events = EventLog(executor_for(settings.events_url))
        store.events.migrate()
    elif settings.events_url:
        # chDB serves one process per data path, and `perch consume` holds it: that process learns
        # and publishes (`perch consume --publish`); this one serves the API and the dashboard.
        schedule = False
        store.events_elsewhere = (
            f"the events are in chDB ({settings.events_url}), which `perch consume` holds: "
            "it learns and publishes with --publish"
        )
    return create_app(settings, store, kv_publisher(settings), schedule=schedule)
