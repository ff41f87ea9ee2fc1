"""Whatever bytes KV hands the edge, decoding yields a Snapshot or a SnapshotError."""

from __future__ import annotations

import zlib
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import Snapshot, SnapshotError, decode_snapshot, encode_snapshot
from tests.factories import build_snapshot

VALID = encode_snapshot(build_snapshot())
ENVELOPE = msgpack.unpackb(VALID)
BODY = msgpack.unpackb(ENVELOPE["payload"])

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.binary(max_size=64),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


def decodes_or_rejects(data: bytes) -> None:
    try:
        result = decode_snapshot(data)
    except SnapshotError as exc:
        assert str(exc)  # every rejection says why
    else:
        assert isinstance(result, Snapshot)


def wrap(payload: bytes) -> bytes:
    return msgpack.packb({"schema": 1, "crc32": zlib.crc32(payload), "payload": payload})


@given(st.binary(max_size=512))
def test_random_bytes(data: bytes) -> None:
    decodes_or_rejects(data)


@st.composite
def mutations(draw: st.DrawFn, source: bytes) -> bytes:
    data = bytearray(source)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[i] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and data:
            del data[i : i + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[i:]
    return bytes(data)


@given(mutations(VALID))
def test_mutated_snapshots(data: bytes) -> None:
    decodes_or_rejects(data)


@given(mutations(ENVELOPE["payload"]))
def test_mutated_payloads_behind_a_valid_checksum(payload: bytes) -> None:
    # The checksum would catch every mutation above; re-signing the mutated
    # payload puts the inner validation itself under fire.
    decodes_or_rejects(wrap(payload))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(st.sampled_from(sorted(BODY)), msgpack_values, min_size=1, max_size=4),
    st.sets(st.sampled_from(sorted(BODY)), max_size=2),
)
def test_fields_replaced_with_arbitrary_values(replaced: dict[str, Any], removed: set[str]) -> None:
    body = {k: v for k, v in BODY.items() if k not in removed}
    body.update(replaced)
    decodes_or_rejects(wrap(msgpack.packb(body, use_bin_type=True)))


@given(
    st.lists(
        st.fixed_dictionaries(
            {"key": st.text(max_size=10)}, optional={"payload": msgpack_values, "html": msgpack_values}
        ),
        min_size=1,
        max_size=4,
    )
)
def test_arbitrary_arms(arms: list[dict[str, Any]]) -> None:
    body = dict(BODY, arms=arms)
    decodes_or_rejects(wrap(msgpack.packb(body, use_bin_type=True)))


@given(
    st.lists(
        st.fixed_dictionaries(
            {"key": st.text(max_size=6)}, optional={"features": msgpack_values, "parent": msgpack_values}
        ),
        min_size=1,
        max_size=5,
    )
)
def test_arbitrary_segments(segments: list[dict[str, Any]]) -> None:
    n = len(segments) * 3
    body = dict(
        BODY,
        segments=segments,
        alpha=b"\x00\x00\x80\x3f" * n,
        beta=b"\x00\x00\x80\x3f" * n,
        allocation=(b"\x00\x00\x00\x3f" + b"\x00\x00\x80\x3e" * 2) * len(segments),
    )
    decodes_or_rejects(wrap(msgpack.packb(body, use_bin_type=True)))
