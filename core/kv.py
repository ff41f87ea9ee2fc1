"""Where snapshots live in Workers KV, and the local store that mirrors it.

The key layout is shared by the control plane's publishers and the edge, so
it lives here: ``perch:snapshot:<experiment>`` holds the current snapshot of
an experiment.  :class:`LocalKV` is the on-disk stand-in for a KV namespace
used by ``perch serve`` (writer) and ``perch edge dev`` (reader): one file per
key under ``<PERCH_DATA_DIR>/kv/``, named by the percent-encoded key, written
atomically so a reader never sees half a snapshot.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import quote, unquote

__all__ = ["KV_KEY_MAX_BYTES", "SNAPSHOT_PREFIX", "LocalKV", "snapshot_key"]

SNAPSHOT_PREFIX = "perch:snapshot:"
KV_KEY_MAX_BYTES = 512


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
