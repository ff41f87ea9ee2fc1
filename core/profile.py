"""A visitor's profile as the edge reads it: built at the origin, one Workers KV value per visitor.

The control plane's profile builder (control_plane.profiles) turns behavioural signals and
explicit attributes into a few categorical features per visitor (``interest``, ``engagement``,
``ltv``, ``churn``, ``cluster``, and the attributes the operator allows) and publishes them under
``perch:profile:<tag>``, where the tag is :func:`core.tokens.unit_tag` of the visitor's unit under
the edge secret: the edge computes it from the cookie, and the key reveals nothing of the id.

The edge adds the features to the request's context as ``profile.<name>``, so a contextual
experiment can learn from them like from ``device``. The value is msgpack::

    {"schema": 1, "updated": <ms>, "features": {name: value}, "because": {name: words}, "dnp": bool}

``because`` says, in words a visitor would recognise, what a feature came from ("you viewed
running shoes"), for the decision's ``why``; ``dnp`` is the visitor's do-not-personalize flag.
Like the snapshot decoder, :func:`decode_profile` is a trust boundary: whatever bytes KV returns it
yields a valid :class:`Profile` or raises :class:`ProfileError`, checking sizes before allocating.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from core.errors import PerchError
from core.text import is_int64, is_text
from core.tokens import UNIT_TAG_RE

__all__ = [
    "FEATURE_NAME_RE",
    "MAX_BECAUSE",
    "MAX_PROFILE_BYTES",
    "PROFILE_PREFIX",
    "SENSITIVE_ATTRIBUTES",
    "Profile",
    "ProfileError",
    "decode_profile",
    "encode_profile",
    "is_sensitive",
    "profile_key",
]

PROFILE_PREFIX = "perch:profile:"
PREFIX = "profile."  # of the context entries a profile's features become
MAX_PROFILE_BYTES = 4096
MAX_PROFILE_FEATURES = 24
_SCHEMA = 1
# A feature's (and a stated attribute's) name.
FEATURE_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_MAX_VALUE = 64
MAX_BECAUSE = 160

# Attributes a site may hold but Perch never personalizes on (the seeds' examples, and the special
# categories of personal data in data-protection law). A name containing one of these is refused
# as a feature at the origin, and an edge drops it from any profile it reads.
SENSITIVE_ATTRIBUTES = frozenset(
    {
        # Stems, matched anywhere in a name: "religious", "politics", "disabled", "married" too.
        "income",
        "salary",
        "wage",
        "wealth",
        "health",
        "medical",
        "diagnos",
        "illness",
        "relationship",
        "marital",
        "marri",
        "religio",
        "belief",
        "ethnic",
        "race",
        "racial",
        "sexual",
        "gender",
        "politic",
        "pregnan",
        "disab",
        "biometric",
        "genetic",
        "union",
        "criminal",
        "convict",
    }
)


class ProfileError(PerchError, ValueError):
    """A profile value is unusable; the message says which rule it broke."""


_SENSITIVE_RE = re.compile("|".join(sorted(SENSITIVE_ATTRIBUTES)))


@functools.lru_cache(maxsize=1024)
def is_sensitive(name: str) -> bool:
    """Whether an attribute or feature name falls in a sensitive category (:data:`SENSITIVE_ATTRIBUTES`).

    Cached: the edge asks it of every feature of every profile it reads, and profiles share a few
    names (the bound keeps an isolate's memory flat whatever names KV holds)."""
    return _SENSITIVE_RE.search(name.lower()) is not None


def profile_key(tag: str) -> str:
    """The KV key of the profile of the visitor whose :func:`~core.tokens.unit_tag` is ``tag``."""
    if not UNIT_TAG_RE.fullmatch(tag):
        raise ProfileError(f"profile tag {tag!r}: expected 16 lowercase hex characters (core.unit_tag)")
    return PROFILE_PREFIX + tag


@dataclass(frozen=True, slots=True)
class Profile:
    features: Mapping[str, str] = field(default_factory=dict)
    because: Mapping[str, str] = field(default_factory=dict)
    dnp: bool = False  # the visitor asked not to be personalized
    updated_ms: int = 0
    # What context() returns, made once: an isolate reads a cached profile on every request.
    _context: Mapping[str, str] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.features) > MAX_PROFILE_FEATURES:
            raise ProfileError(f"{len(self.features)} features, at most {MAX_PROFILE_FEATURES}")
        for name, value in self.features.items():
            _check_feature(name, value)
        for name, words in self.because.items():
            if name not in self.features:
                raise ProfileError(f"because[{name!r}]: names no feature of the profile")
            if not isinstance(words, str) or not 0 < len(words) <= MAX_BECAUSE or not is_text(words):
                raise ProfileError(f"because[{name!r}]: expected 1-{MAX_BECAUSE} characters of text")
        if not is_int64(self.updated_ms) or self.updated_ms < 0:
            raise ProfileError(f"updated={self.updated_ms!r}: expected a timestamp in ms")
        shown = {PREFIX + name: value for name, value in self.features.items() if not is_sensitive(name)}
        object.__setattr__(self, "_context", shown)

    def context(self) -> dict[str, str]:
        """The features as context entries (``profile.<name>``); sensitive ones never."""
        return dict(self._context)


def _check_feature(name: object, value: object) -> None:
    if not isinstance(name, str) or not FEATURE_NAME_RE.fullmatch(name):
        raise ProfileError(f"feature {name!r}: names are 1-32 of a-z, 0-9 and '_', starting with a letter")
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_VALUE or not is_text(value):
        raise ProfileError(f"feature {name!r}: expected a value of 1-{_MAX_VALUE} characters of text")


def encode_profile(profile: Profile) -> bytes:
    doc = {
        "schema": _SCHEMA,
        "updated": profile.updated_ms,
        "features": dict(sorted(profile.features.items())),
        "because": dict(sorted(profile.because.items())),
        "dnp": profile.dnp,
    }
    raw: bytes = msgpack.packb(doc, use_bin_type=True)
    if len(raw) > MAX_PROFILE_BYTES:
        raise ProfileError(f"profile is {len(raw)} bytes, at most {MAX_PROFILE_BYTES}")
    return raw


def decode_profile(raw: bytes) -> Profile:
    """A :class:`Profile` from KV bytes, or :class:`ProfileError` saying what is wrong with them."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise ProfileError("a profile is bytes")
    if len(raw) > MAX_PROFILE_BYTES:
        raise ProfileError(f"profile is {len(raw)} bytes, at most {MAX_PROFILE_BYTES}")
    try:
        doc: Any = msgpack.unpackb(
            bytes(raw),
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_BECAUSE * 4,
            max_bin_len=0,
            max_array_len=0,
            max_map_len=MAX_PROFILE_FEATURES + 8,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several types for bad bytes: all mean the same here
        raise ProfileError(f"profile is not msgpack ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("schema") != _SCHEMA:
        raise ProfileError(f"profile must be a map with schema {_SCHEMA}")
    features, because, dnp = doc.get("features", {}), doc.get("because", {}), doc.get("dnp", False)
    if not isinstance(features, dict) or not isinstance(because, dict) or not isinstance(dnp, bool):
        raise ProfileError("profile: features and because must be maps, dnp a boolean")
    return Profile(features=features, because=because, dnp=dnp, updated_ms=doc.get("updated", 0))
