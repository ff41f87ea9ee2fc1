"""Where snapshots live in Workers KV, and the local store that mirrors it.

The key layout is shared by the control plane's publishers and the edge, so
it lives here: ``perch:snapshot:<experiment>`` holds the current snapshot of
an experiment, and ``perch:index`` the keys of the live experiments, so an
edge never reads KV (or keeps a cache entry) for a key a client made up, and
stops serving an archived experiment.  :class:`LocalKV` is the on-disk stand-in for a KV namespace
used by ``perch serve`` (writer) and ``perch edge dev`` (reader): one file per
key under ``<PERCH_DATA_DIR>/kv/``, named by the percent-encoded key, written
atomically so a reader never sees half a snapshot.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote, unquote

from core.errors import PerchError
from core.snapshot import KEY_RE
from core.text import JSONInputError, is_int64, parse_json

__all__ = [
    "INDEX_KEY",
    "KV_KEY_MAX_BYTES",
    "MAX_INDEX_EXPERIMENTS",
    "SNAPSHOT_PREFIX",
    "LiveIndexError",
    "LocalKV",
    "decode_index",
    "encode_index",
    "snapshot_key",
]

SNAPSHOT_PREFIX = "perch:snapshot:"
INDEX_KEY = "perch:index"
KV_KEY_MAX_BYTES = 512
MAX_INDEX_EXPERIMENTS = 10_000
_INDEX_SCHEMA = 1


class LiveIndexError(PerchError, ValueError):
    """The published index of live experiments is unusable; the message says why."""


def encode_index(experiments: Iterable[str], created_ms: int) -> bytes:
    """The ``perch:index`` value: the live experiment keys, sorted, and when they were listed."""
    keys = sorted(set(experiments))
    if len(keys) > MAX_INDEX_EXPERIMENTS or not all(KEY_RE.fullmatch(k) for k in keys):
        raise LiveIndexError(f"an index holds at most {MAX_INDEX_EXPERIMENTS} valid experiment keys")
    doc = {"schema": _INDEX_SCHEMA, "created": created_ms, "experiments": keys}
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_index(raw: bytes) -> tuple[frozenset[str], int]:
    """(live experiment keys, created ms) from a ``perch:index`` value, or :class:`LiveIndexError`."""
    if len(raw) > 160 * MAX_INDEX_EXPERIMENTS:
        raise LiveIndexError(f"index is {len(raw)} bytes, too large")
    try:
        doc = parse_json(raw)
    except JSONInputError as exc:
        raise LiveIndexError(f"index is not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("schema") != _INDEX_SCHEMA:
        raise LiveIndexError(f"index must be an object with schema {_INDEX_SCHEMA}")
    keys, created = doc.get("experiments"), doc.get("created")
    if not isinstance(keys, list) or len(keys) > MAX_INDEX_EXPERIMENTS or not is_int64(created):
        raise LiveIndexError("index must list at most 10000 experiments and say when it was created")
    if not all(isinstance(k, str) and KEY_RE.fullmatch(k) for k in keys):
        raise LiveIndexError("index holds something that is not an experiment key")
    return frozenset(keys), created


def snapshot_key(experiment: str) -> str:
    """The KV key of ``experiment``'s current snapshot."""
    key = SNAPSHOT_PREFIX + experiment
    if not experiment or len(key.encode("utf-8")) > KV_KEY_MAX_BYTES:
        raise ValueError(f"experiment {experiment!r}: KV keys must be 1-{KV_KEY_MAX_BYTES} bytes")
    return key


class LocalKV:
    """A directory of files standing in for one KV namespace."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root) / "kv"

    def _path(self, key: str) -> Path:
        return self.root / quote(key, safe="")

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, key: str, value: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(value)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def keys(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        names = (unquote(p.name) for p in self.root.iterdir() if not p.name.startswith(".tmp-"))
        return sorted(k for k in names if k.startswith(prefix))
