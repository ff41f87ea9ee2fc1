"""Context features as the learner and the edge both read them.

One rule lives here so that the edge, the control plane's ingestion, ``perch
snapshot decide`` and the golden vectors cannot disagree on it: a feature a
request does not carry, or carries as something that is not a string of UTF-8
text, counts as ``"unknown"``.  Each caller used to apply it itself, and
``decide`` did not, so the same incomplete context could land in different
segments depending on who asked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from core.text import is_text

__all__ = ["OTHER", "UNKNOWN", "feature_path", "with_unknowns"]

UNKNOWN = "unknown"
# A value the model has no column for (too rare when it was learnt): it shares one column per feature.
OTHER = "other"


def _value(context: Mapping[str, object], name: str) -> str:
    value = context.get(name)
    return value if isinstance(value, str) and is_text(value) else UNKNOWN


def feature_path(names: Sequence[str], context: Mapping[str, object] | None) -> tuple[str, ...]:
    """The values of ``names`` in ``context``, in order; absent or unusable ones are ``"unknown"``."""
    ctx = context or {}
    return tuple([_value(ctx, name) for name in names])


def with_unknowns(names: Sequence[str], context: Mapping[str, object] | None) -> dict[str, str]:
    """``context``'s text values, with every one of ``names`` it lacks set to ``"unknown"``."""
    ctx = context or {}
    out = {k: v for k, v in ctx.items() if isinstance(k, str) and isinstance(v, str)}
    for name in names:
        out[name] = _value(ctx, name)
    return out
