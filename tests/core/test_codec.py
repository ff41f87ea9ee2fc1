from __future__ import annotations

import tracemalloc
import zlib
from typing import Any

import msgpack
import pytest

from core import MAX_SNAPSHOT_BYTES, SnapshotError, decode_snapshot, encode_snapshot
from tests.factories import build_snapshot


def _parts(data: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    envelope = msgpack.unpackb(data)
    return envelope, msgpack.unpackb(envelope["payload"])


def rewrap(body: dict[str, Any], **envelope: Any) -> bytes:
    """Wire bytes for ``body`` with a correct checksum (unless overridden)."""
    payload = msgpack.packb(body, use_bin_type=True)
    fields = {"schema": 1, "crc32": zlib.crc32(payload), "payload": payload}
    fields.update(envelope)
    return msgpack.packb(fields, use_bin_type=True)


def test_round_trip_preserves_everything() -> None:
    snap = build_snapshot()
    data = encode_snapshot(snap)
    decoded = decode_snapshot(data)
    assert decoded == snap
    assert decoded.arms[0].payload == {"headline": "Welcome"}
    assert decoded.arms[1].html == "<h1>Go</h1>"
    assert decoded.segments[3].features == {"device": "mobile", "source": "search"}
    assert encode_snapshot(decoded) == data  # deterministic


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_accepts_any_bytes_like(wrap: Any) -> None:
    data = encode_snapshot(build_snapshot())
    assert decode_snapshot(wrap(data)).version == 7


def test_tables_are_packed_little_endian_float32() -> None:
    _, body = _parts(encode_snapshot(build_snapshot()))
    assert isinstance(body["alpha"], bytes)
    assert len(body["alpha"]) == 4 * 3 * 4
    assert body["alpha"][:4] == b"\x00\x00\x00\x40"  # 2.0f, little-endian


def _mutate_body(change: Any) -> bytes:
    _, body = _parts(encode_snapshot(build_snapshot()))
    change(body)
    return rewrap(body)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (lambda: b"", "empty"),
        (lambda: encode_snapshot(build_snapshot())[:-7], "truncated"),
        (lambda: encode_snapshot(build_snapshot()) + b"\x00", "trailing bytes"),
        (lambda: b"\xc1", "not valid msgpack"),
        (lambda: msgpack.packb([1, 2]), "expected a msgpack map, got list"),
        (lambda: rewrap({}, schema=4), r"unknown schema 4; this decoder reads schemas \[1, 2, 3\]"),
        (lambda: rewrap({}, schema=None), "unknown schema None"),
        (lambda: rewrap({}, schema=1.0), "unknown schema 1.0"),
        (lambda: rewrap({}, crc32=12345), "bad checksum"),
        (lambda: rewrap({}, crc32="x"), "field 'crc32': expected int, got str"),
        (lambda: rewrap([]), "payload: expected a msgpack map, got list"),
        (lambda: _mutate_body(lambda b: b.pop("salt")), "field 'salt' is missing"),
        (lambda: _mutate_body(lambda b: b.update(version="7")), "field 'version': expected int, got str"),
        (
            lambda: _mutate_body(lambda b: b.update(holdout=True)),
            "field 'holdout': expected int or float, got bool",
        ),
        (
            lambda: _mutate_body(lambda b: b.update(alpha=b["alpha"][:-4])),
            "field 'alpha': 44 bytes, must be 4 x arms x segments = 48",
        ),
        (
            lambda: _mutate_body(lambda b: b.update(beta=[1.0] * 12)),
            "field 'beta': expected packed float32 bytes, got list",
        ),
        (
            lambda: _mutate_body(lambda b: b.update(alpha=b"\x00\x00\xc0\x7f" * 12)),
            "alpha=nan, must be finite and > 0",
        ),
        (
            lambda: _mutate_body(lambda b: b.update(default_arm="zzz")),
            "default arm 'zzz' is not one of the arms",
        ),
        (
            lambda: _mutate_body(lambda b: b.update(arms=["x"])),
            r"arms\[0\]: expected a map with a string 'key'",
        ),
        (
            lambda: _mutate_body(lambda b: b["segments"][1].update(features=[])),
            r"segments\[1\]: 'features' must be a map",
        ),
        (lambda: _mutate_body(lambda b: b.update(allocation=b["beta"])), "allocation=50.0, must be in"),
    ],
)
def test_rejections_name_the_rule(data: Any, message: str) -> None:
    with pytest.raises(SnapshotError, match=message):
        decode_snapshot(data())


def test_rejects_non_bytes() -> None:
    with pytest.raises(SnapshotError, match="snapshot must be bytes, got str"):
        decode_snapshot("abc")  # type: ignore[arg-type]


def test_oversize_input_is_rejected_before_parsing() -> None:
    data = bytes(MAX_SNAPSHOT_BYTES + 1)
    tracemalloc.start()
    try:
        with pytest.raises(SnapshotError, match=f"must be at most {MAX_SNAPSHOT_BYTES}"):
            decode_snapshot(memoryview(data))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


@pytest.mark.parametrize(
    "payload",
    [
        b"\x81\xa4arms\xdd\xff\xff\xff\xff",  # an array header claiming 2**32 - 1 arms
        b"\x81\xa4salt\xdb\x7f\xff\xff\xff",  # a string header claiming 2 GiB
        b"\x81\xa5alpha\xc6\x7f\xff\xff\xff",  # a bin header claiming 2 GiB
    ],
)
def test_declared_sizes_are_checked_before_allocating(payload: bytes) -> None:
    data = msgpack.packb({"schema": 1, "crc32": zlib.crc32(payload), "payload": payload})
    tracemalloc.start()
    try:
        with pytest.raises(SnapshotError):
            decode_snapshot(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024


def test_container_count_is_limited_while_parsing() -> None:
    # ~1 byte on the wire but ~100 in memory per empty map: stopped as parsed.
    _, body = _parts(encode_snapshot(build_snapshot()))
    body["arms"][0]["payload"] = [[{}] * 100] * 4_000
    tracemalloc.start()
    try:
        with pytest.raises(SnapshotError, match="more than 300000 maps and arrays"):
            decode_snapshot(rewrap(body))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 120 * 1024 * 1024


def test_released_memoryview_is_a_snapshot_error() -> None:
    view = memoryview(encode_snapshot(build_snapshot()))
    view.release()
    with pytest.raises(SnapshotError, match="unusable"):
        decode_snapshot(view)


def test_shape_limits_are_checked_before_tables_are_read() -> None:
    _, body = _parts(encode_snapshot(build_snapshot()))
    body["arms"] = [{"key": f"a{i}"} for i in range(1001)]
    with pytest.raises(SnapshotError, match="1001 arms, must be between 1 and 1000"):
        decode_snapshot(rewrap(body))
    body["arms"] = [{"key": f"a{i}"} for i in range(1000)]
    body["segments"] = [{"key": f"s{i}"} for i in range(2001)]
    with pytest.raises(SnapshotError, match="1000 arms x 2001 segments exceeds 2000000 cells"):
        decode_snapshot(rewrap(body))


def test_context_features_round_trip_and_are_optional() -> None:
    snap = build_snapshot(context_features=["device", "source", "country"])
    assert decode_snapshot(encode_snapshot(snap)).context_features == ("device", "source", "country")
    _, body = _parts(encode_snapshot(build_snapshot()))
    assert "features" not in body  # snapshots without them encode as before
    with pytest.raises(SnapshotError, match="context_features"):
        build_snapshot(context_features=[""])
    with pytest.raises(SnapshotError, match="field 'features': expected list"):
        decode_snapshot(_mutate_body(lambda b: b.update(features="device")))


def test_unknown_payload_fields_are_ignored_for_forward_compatibility() -> None:
    snap = decode_snapshot(_mutate_body(lambda b: b.update(future_field={"x": 1})))
    assert snap == build_snapshot()
