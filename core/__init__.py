"""Perch's decision core: hashing, snapshots, and Thompson-sampling decisions.

Standard library and msgpack only, so the same code runs at the origin
(CPython 3.11+) and at the edge (Pyodide in Cloudflare Python Workers).
"""

from __future__ import annotations

from core.codec import MAX_SNAPSHOT_BYTES, SCHEMA_VERSION, SCHEMAS, decode_snapshot, encode_snapshot
from core.contextual import Block, ContextualModel, normal_variates
from core.decide import DECISION_FIELDS, REASONS, Decision, Fallback, Generator, decide, draw_stream, fallback
from core.errors import HashingError, PerchError, SnapshotError
from core.events import (
    EventError,
    encode_batch,
    exposure_event,
    outcome_event,
    parse_batch,
    parse_beacon,
    stitch_event,
)
from core.features import OTHER, UNKNOWN, feature_path, with_unknowns
from core.hashing import HASH_VERSION, bucket, seed64
from core.kv import (
    INDEX_KEY,
    SNAPSHOT_PREFIX,
    LiveIndexError,
    LocalKV,
    decode_index,
    encode_index,
    snapshot_key,
)
from core.profile import (
    MAX_PROFILE_BYTES,
    PROFILE_PREFIX,
    SENSITIVE_ATTRIBUTES,
    Profile,
    ProfileError,
    decode_profile,
    encode_profile,
    is_sensitive,
    profile_key,
)
from core.queue import (
    MessageError,
    Packed,
    encode_messages,
    pack_messages,
    parse_message,
    route,
    send_batches,
)
from core.ranking import MAX_SLOTS, Ranking, choose_items, position_id, quota, split_position_id
from core.sampling import beta_variate, beta_variates, gamma_variate
from core.signals import KINDS, MAX_SIGNALS, SIGNAL_SCHEMA, SignalError, parse_signals, signal_event
from core.signing import (
    SIGNATURE_HEADER,
    SignatureError,
    fresh_timestamp,
    replay_key,
    sign,
    sign_identity,
    verify,
    verify_any_age,
    verify_identity,
)
from core.slate import RankedDecision, RankedItem, decide_ranked, draw_list
from core.snapshot import KEY_RE, Arm, Segment, Snapshot
from core.text import JSONInputError, is_int64, is_text, parse_json
from core.tokens import DecisionToken, TokenError, mint_token, read_token, unit_tag, verify_token

__all__ = [
    "MAX_SLOTS",
    "RankedDecision",
    "RankedItem",
    "Ranking",
    "choose_items",
    "decide_ranked",
    "draw_list",
    "position_id",
    "quota",
    "split_position_id",
    "MAX_PROFILE_BYTES",
    "KINDS",
    "MAX_SIGNALS",
    "PROFILE_PREFIX",
    "SENSITIVE_ATTRIBUTES",
    "SIGNAL_SCHEMA",
    "Profile",
    "ProfileError",
    "SignalError",
    "decode_profile",
    "encode_profile",
    "is_sensitive",
    "parse_signals",
    "profile_key",
    "signal_event",
    "HASH_VERSION",
    "DECISION_FIELDS",
    "INDEX_KEY",
    "KEY_RE",
    "SIGNATURE_HEADER",
    "SNAPSHOT_PREFIX",
    "MAX_SNAPSHOT_BYTES",
    "REASONS",
    "OTHER",
    "SCHEMAS",
    "SCHEMA_VERSION",
    "UNKNOWN",
    "Arm",
    "Block",
    "ContextualModel",
    "Decision",
    "DecisionToken",
    "EventError",
    "Fallback",
    "Generator",
    "HashingError",
    "LiveIndexError",
    "JSONInputError",
    "LocalKV",
    "MessageError",
    "Packed",
    "PerchError",
    "Segment",
    "Snapshot",
    "SignatureError",
    "SnapshotError",
    "TokenError",
    "beta_variate",
    "beta_variates",
    "bucket",
    "decide",
    "decode_index",
    "decode_snapshot",
    "draw_stream",
    "encode_batch",
    "encode_index",
    "encode_messages",
    "encode_snapshot",
    "exposure_event",
    "fallback",
    "feature_path",
    "fresh_timestamp",
    "gamma_variate",
    "mint_token",
    "is_int64",
    "is_text",
    "normal_variates",
    "pack_messages",
    "outcome_event",
    "parse_batch",
    "parse_beacon",
    "parse_json",
    "parse_message",
    "read_token",
    "replay_key",
    "route",
    "seed64",
    "send_batches",
    "sign",
    "sign_identity",
    "snapshot_key",
    "stitch_event",
    "unit_tag",
    "verify",
    "verify_any_age",
    "verify_identity",
    "verify_token",
    "with_unknowns",
]
