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
    return create_app(settings, store, kv_publisher(settings))
