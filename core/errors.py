"""Error types raised by the decision core.

Every error the core raises derives from :class:`PerchError`, and each also
derives from the built-in type a caller would naturally catch (``ValueError``
for bad data), so ``except ValueError`` keeps working for code that does not
know about Perch.
"""

from __future__ import annotations

__all__ = ["HashingError", "PerchError", "SnapshotError"]


class PerchError(Exception):
    """Base class of every error raised by Perch."""


class SnapshotError(PerchError, ValueError):
    """A snapshot is malformed; the message names the rule it breaks."""


class HashingError(PerchError, ValueError):
    """A hashing input is unusable (unknown hash version, non-string unit)."""
