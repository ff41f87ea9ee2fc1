"""The base of every error Perch raises, and the errors of the snapshot codec and hashing.

Every error class of ours derives from :class:`PerchError` (tests/test_layering.py checks it) and
also from the built-in type a caller would naturally catch (``ValueError`` for bad data), so
``except ValueError`` keeps working for code that does not know about Perch. Errors that belong
to one module live there (``core.kv.LiveIndexError``, ``core.events.EventError``,
``core.tokens.TokenError``, ...); this module holds the base and the errors several modules share.
"""

from __future__ import annotations

__all__ = ["HashingError", "PerchError", "SnapshotError"]


class PerchError(Exception):
    """Base class of every error raised by Perch."""


class SnapshotError(PerchError, ValueError):
    """A snapshot is malformed; the message names the rule it breaks."""


class HashingError(PerchError, ValueError):
    """A hashing input is unusable (unknown hash version, non-string unit)."""
