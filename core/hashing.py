"""Versioned, platform-independent hashing of units into [0, 1).

Edge (Pyodide) and origin (CPython) must put a unit in the same bucket bit for
bit, forever: holdout membership and traffic splits depend on it.  Version 1
is therefore defined only in terms of SHA-256 and integer arithmetic, which
are exact everywhere; no float maths or ``hash()`` (salted per process) is
involved.  A new scheme gets a new version number and the snapshot says which
version it was built for, so old snapshots keep their meaning.

Version 1: ``sha256(utf8(salt) + b"\\x00" + utf8(unit))``, first 8 bytes as a
big-endian unsigned integer, top 53 bits divided by 2**53.  The NUL separator
keeps ``("ab", "c")`` and ``("a", "bc")`` apart (neither a salt nor a unit id
may contain NUL).
"""

from __future__ import annotations

import hashlib

from core.errors import HashingError

__all__ = ["HASH_VERSION", "SUPPORTED_HASH_VERSIONS", "bucket", "seed64"]

HASH_VERSION = 1
SUPPORTED_HASH_VERSIONS = frozenset({1})

_TWO_POW_53 = float(1 << 53)


def _key(unit: str, salt: str, version: int) -> bytes:
    if version not in SUPPORTED_HASH_VERSIONS:
        raise HashingError(
            f"hash version {version!r} is not supported; supported: {sorted(SUPPORTED_HASH_VERSIONS)}"
        )
    if not isinstance(unit, str) or not isinstance(salt, str):
        raise HashingError(f"unit and salt must be str, got {type(unit).__name__} and {type(salt).__name__}")
    if "\x00" in unit or "\x00" in salt:
        raise HashingError("unit and salt must not contain NUL characters")
    return salt.encode("utf-8") + b"\x00" + unit.encode("utf-8")


def seed64(unit: str, salt: str, version: int = HASH_VERSION) -> int:
    """The unit's 64-bit hash under ``salt``: an integer in [0, 2**64)."""
    return int.from_bytes(hashlib.sha256(_key(unit, salt, version)).digest()[:8], "big")


def bucket(unit: str, salt: str, version: int = HASH_VERSION) -> float:
    """Map ``unit`` to a float in [0, 1), identical on every platform.

    The same (unit, salt, version) always gives the same bucket; different
    salts give independent buckets, which is how one experiment's holdout is
    kept independent of another's.
    """
    return (seed64(unit, salt, version) >> 11) / _TWO_POW_53
