"""The one rule for a bundle's version, shared by the builder and the object store.

A version names a directory under ``bundles/`` and a prefix in the bucket, so it must be a
plain directory name: a builder that accepted what the store refuses (or the reverse) would
build bundles nobody can publish.
"""

from __future__ import annotations

__all__ = ["version_problem"]


def version_problem(version: object) -> str | None:
    """Why ``version`` cannot name a bundle, or None when it can."""
    if isinstance(version, str) and version and "/" not in version and not version.startswith("."):
        return None
    return f"bundle version {version!r}: must be a plain directory name (no '/', not starting with '.')"
