"""Snapshot wire format (schemas 1, 2 and 3): encode at the origin, decode at the edge.

The bytes are a msgpack map ``{"schema": 1, "crc32": <uint32>, "payload":
<bin>}``; the payload is itself a msgpack map holding the snapshot, with the
three (segment x arm) tables as packed little-endian float32 ``bin`` values,
because decoding thousands of nested msgpack floats is ~20x slower in Pyodide
than ``array.frombytes``.  See docs/snapshot-format.md.

The decoder is the edge's trust boundary: whatever bytes KV returns, it
either yields a valid :class:`Snapshot` or raises :class:`SnapshotError`,
and it checks every size against a limit before allocating for it.

Schema 2 adds a contextual model (``model`` in the body); a snapshot without
one is still written as schema 1, byte for byte as before, so segment
experiments and older edges are untouched. Schema 3 adds ``ranking`` (a ranked
decision point, core.ranking), with or without a model: an older edge refuses
it and serves its default rather than deciding one item where a list was asked.
"""

from __future__ import annotations

import sys
import zlib
from array import array
from collections.abc import Mapping
from typing import Any

import msgpack

from core.contextual import MAX_COLUMNS, MAX_MODEL_FLOATS, Block, ContextualModel
from core.errors import SnapshotError
from core.ranking import MAX_SLOTS, Ranking
from core.snapshot import MAX_ARMS, MAX_CELLS, MAX_SEGMENTS, Arm, Segment, Snapshot

__all__ = ["MAX_SNAPSHOT_BYTES", "SCHEMA_VERSION", "decode_snapshot", "encode_snapshot"]

SCHEMA_VERSION = 3  # the newest this code writes and reads
# 1: segments; 2: a contextual model; 3: a ranked decision point (with or without a model).
SCHEMAS = (1, 2, 3)
# The Workers KV value limit: nothing larger can have come from KV.
MAX_SNAPSHOT_BYTES = 25 * 1024 * 1024
_MAX_STR = 1024 * 1024
_MAX_CONTAINER = max(MAX_SEGMENTS, 4096)
# Maps and arrays in one payload: each segment needs two, so 100,000 segments
# fit, while a payload of millions of tiny containers (a few bytes on the
# wire, ~100 in memory each) is stopped as it is parsed, not after.
MAX_CONTAINERS = 3 * MAX_SEGMENTS

_BIG_ENDIAN = sys.byteorder == "big"


def _pack_table(values: Any) -> bytes:
    table = array("f", values)
    if _BIG_ENDIAN:
        table.byteswap()
    return table.tobytes()


def _unpack_table(name: str, raw: object, cells: int, shape: str = "arms x segments") -> array[float]:
    if not isinstance(raw, bytes):
        raise SnapshotError(f"field {name!r}: expected packed float32 bytes, got {type(raw).__name__}")
    if len(raw) != 4 * cells:
        raise SnapshotError(f"field {name!r}: {len(raw)} bytes, must be 4 x {shape} = {4 * cells}")
    table: array[float] = array("f")
    table.frombytes(raw)
    if _BIG_ENDIAN:
        table.byteswap()
    return table


def encode_snapshot(snapshot: Snapshot) -> bytes:
    """The v1 wire bytes of ``snapshot`` (deterministic for equal snapshots)."""
    arms = []
    for arm in snapshot.arms:
        item: dict[str, Any] = {"key": arm.key}
        if arm.payload is not None:
            item["payload"] = arm.payload
        if arm.html is not None:
            item["html"] = arm.html
        arms.append(item)
    segments = [
        {"key": s.key, "features": dict(sorted(s.features.items())), "parent": s.parent}
        for s in snapshot.segments
    ]
    body: dict[str, Any] = {
        "experiment": snapshot.experiment,
        "version": snapshot.version,
        "created_at": snapshot.created_at,
        "max_age_s": float(snapshot.max_age_s),
        "salt": snapshot.salt,
        "hash_version": snapshot.hash_version,
        "default_arm": snapshot.default_arm,
        "holdout": float(snapshot.holdout),
        "floor": float(snapshot.floor),
        "arms": arms,
        "segments": segments,
        "alpha": _pack_table(snapshot.alpha),
        "beta": _pack_table(snapshot.beta),
        "allocation": _pack_table(snapshot.allocation),
    }
    if snapshot.context_features:  # optional: older readers ignore it
        body["features"] = list(snapshot.context_features)
    schema = 1
    if snapshot.model is not None:
        schema = 2
        body["model"] = _encode_model(snapshot.model)
    if snapshot.ranking is not None:
        # Its own schema, so an edge that cannot rank refuses it (and serves the default) rather
        # than deciding one item where a list was asked for.
        schema = 3
        body["ranking"] = _encode_ranking(snapshot.ranking)
    payload = msgpack.packb(body, use_bin_type=True)
    crc = zlib.crc32(payload)
    wire: bytes = msgpack.packb({"schema": schema, "crc32": crc, "payload": payload}, use_bin_type=True)
    return wire


def _encode_model(model: ContextualModel) -> dict[str, Any]:
    blocks = []
    for block in model.blocks:
        item: dict[str, Any] = {"kind": block.kind, "inputs": list(block.inputs)}
        if block.kind == "numeric":
            item["mean"] = float(block.mean)
            item["scale"] = float(block.scale)
        else:
            item["values"] = [list(v) for v in block.values]
        blocks.append(item)
    return {
        "kind": "contextual",
        "explore": float(model.explore),
        "blocks": blocks,
        "mean": _pack_table(model.mean),
        "cov": _pack_table(model.cov),
    }


def _encode_ranking(ranking: Ranking) -> dict[str, Any]:
    out: dict[str, Any] = {
        "slots": ranking.slots,
        "diversity": float(ranking.diversity),
        "groups": list(ranking.groups),
        "forced": _pack_table(ranking.forced),
    }
    if len(ranking.positions):
        out["positions"] = _pack_table(ranking.positions)
    return out


def _decode_ranking(raw: Mapping[str, Any], arms: int, segments: int) -> Ranking:
    slots = _field(raw, "slots", int)
    groups = _field(raw, "groups", list)
    if not 1 <= slots <= MAX_SLOTS or len(groups) != arms:
        raise SnapshotError(
            f"ranking: slots={slots} must be in [1, {MAX_SLOTS}], and groups one per arm ({arms})"
        )
    distinct = len({g for g in groups if g}) if all(isinstance(g, str) for g in groups) else 0
    forced = _unpack_table("ranking.forced", raw.get("forced"), arms * segments)
    positions: Any = ()
    if "positions" in raw:
        size = segments * (1 + distinct) * arms * slots
        positions = _unpack_table("ranking.positions", raw.get("positions"), size, "the positions table")
    return Ranking(slots, _field(raw, "diversity", (int, float)), groups, forced, positions)


def _decode_model(raw: object, arms: int) -> ContextualModel:
    if not isinstance(raw, dict) or raw.get("kind") != "contextual":
        raise SnapshotError("field 'model': expected a map with kind 'contextual'")
    raw_blocks = _field(raw, "blocks", list)
    blocks = []
    for i, item in enumerate(raw_blocks):
        if not isinstance(item, dict):
            raise SnapshotError(f"model blocks[{i}]: expected a map")
        blocks.append(
            Block(
                _field(item, "kind", str),
                tuple(_field(item, "inputs", list)),
                tuple(tuple(v) if isinstance(v, list) else v for v in _field(item, "values", list))
                if "values" in item
                else (),
                _field(item, "mean", (int, float)) if "mean" in item else 0.0,
                _field(item, "scale", (int, float)) if "scale" in item else 1.0,
            )
        )
    # Sizes before the tables: the column count follows from the blocks alone.
    dim = 1 + sum(b.width for b in blocks)
    if dim > MAX_COLUMNS:
        raise SnapshotError(f"model has {dim} columns, at most {MAX_COLUMNS}")
    tri = dim * (dim + 1) // 2
    if arms * (dim + tri) > MAX_MODEL_FLOATS:
        raise SnapshotError(f"model of {arms} arms x {dim} columns exceeds {MAX_MODEL_FLOATS} floats")
    return ContextualModel(
        arms=arms,
        blocks=blocks,
        mean=_unpack_table("model.mean", raw.get("mean"), arms * dim, "arms x columns"),
        cov=_unpack_table("model.cov", raw.get("cov"), arms * tri, "arms x columns x (columns + 1) / 2"),
        explore=_field(raw, "explore", (int, float)),
    )


def _unpack(data: Any, what: str) -> Any:
    size = len(data)
    count = 0

    def counted(container: Any) -> Any:
        nonlocal count
        count += 1
        if count > MAX_CONTAINERS:
            raise SnapshotError(f"{what}: more than {MAX_CONTAINERS} maps and arrays")
        return container

    try:
        return msgpack.unpackb(
            data,
            object_hook=counted,
            list_hook=counted,
            raw=False,
            strict_map_key=True,
            max_str_len=_MAX_STR,
            max_bin_len=size,
            max_array_len=_MAX_CONTAINER,
            max_map_len=_MAX_CONTAINER,
            max_ext_len=0,
        )
    except SnapshotError:
        raise
    except msgpack.ExtraData:
        raise SnapshotError(f"{what}: trailing bytes after the msgpack value") from None
    except Exception as exc:  # any msgpack failure, in C or the pure-Python fallback
        text = str(exc) or type(exc).__name__
        if "incomplete" in text or isinstance(exc, msgpack.OutOfData):
            raise SnapshotError(f"{what}: truncated ({size} bytes)") from None
        raise SnapshotError(f"{what}: not valid msgpack ({text})") from None


def _field(body: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in body:
        raise SnapshotError(f"field {name!r} is missing")
    value = body[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise SnapshotError(f"field {name!r}: expected {expected}, got {type(value).__name__}")
    return value


def _arm(item: object, i: int) -> Arm:
    if not isinstance(item, dict) or not isinstance(item.get("key"), str):
        raise SnapshotError(f"arms[{i}]: expected a map with a string 'key'")
    return Arm(item["key"], item.get("payload"), item.get("html"))


def _segment(item: object, i: int) -> Segment:
    if not isinstance(item, dict) or not isinstance(item.get("key"), str):
        raise SnapshotError(f"segments[{i}]: expected a map with a string 'key'")
    features = item.get("features", {})
    if not isinstance(features, dict):
        raise SnapshotError(f"segments[{i}]: 'features' must be a map")
    return Segment(item["key"], features, item.get("parent"))


def _payload(data: bytes | bytearray | memoryview) -> tuple[int, dict[str, Any]]:
    """The schema and the checksummed payload map of snapshot bytes."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SnapshotError(f"snapshot must be bytes, got {type(data).__name__}")
    try:
        size = data.nbytes if isinstance(data, memoryview) else len(data)
    except ValueError as exc:  # a released memoryview
        raise SnapshotError(f"snapshot buffer is unusable ({exc})") from None
    if size > MAX_SNAPSHOT_BYTES:
        raise SnapshotError(f"snapshot is {size} bytes, must be at most {MAX_SNAPSHOT_BYTES}")
    if size == 0:
        raise SnapshotError("snapshot is empty (truncated)")
    if isinstance(data, memoryview):
        # Pyodide hands KV values over as memoryviews of any shape; one
        # bounded copy gives msgpack the flat bytes it needs.
        data = data.tobytes()
    envelope = _unpack(data, "snapshot")
    if not isinstance(envelope, dict):
        raise SnapshotError(f"snapshot: expected a msgpack map, got {type(envelope).__name__}")
    schema = envelope.get("schema")
    if type(schema) is not int or schema not in SCHEMAS:
        raise SnapshotError(f"unknown schema {schema!r}; this decoder reads schemas {list(SCHEMAS)}")
    crc = _field(envelope, "crc32", int)
    payload = _field(envelope, "payload", bytes)
    if zlib.crc32(payload) != crc:
        raise SnapshotError(f"bad checksum: payload crc32 is {zlib.crc32(payload)}, header says {crc}")
    body = _unpack(payload, "payload")
    if not isinstance(body, dict):
        raise SnapshotError(f"payload: expected a msgpack map, got {type(body).__name__}")
    return schema, body


def _shape(body: Mapping[str, Any]) -> tuple[list[Any], list[Any], int]:
    """The raw arms and segments of a payload, and their cell count, each within its limit."""
    raw_arms = _field(body, "arms", list)
    raw_segments = _field(body, "segments", list)
    if not 1 <= len(raw_arms) <= MAX_ARMS:
        raise SnapshotError(f"{len(raw_arms)} arms, must be between 1 and {MAX_ARMS}")
    if not 1 <= len(raw_segments) <= MAX_SEGMENTS:
        raise SnapshotError(f"{len(raw_segments)} segments, must be between 1 and {MAX_SEGMENTS}")
    cells = len(raw_arms) * len(raw_segments)
    if cells > MAX_CELLS:
        raise SnapshotError(f"{len(raw_arms)} arms x {len(raw_segments)} segments exceeds {MAX_CELLS} cells")
    return raw_arms, raw_segments, cells


def decode_snapshot(data: bytes | bytearray | memoryview) -> Snapshot:
    """Parse and validate schema 1, 2 or 3 snapshot bytes; raise only :class:`SnapshotError`."""
    schema, body = _payload(data)
    # Sizes first: the tables are only read once their lengths are known good.
    raw_arms, raw_segments, cells = _shape(body)
    number = (int, float)
    model = ranking = None
    if schema == 2 or (schema == 3 and "model" in body):
        model = _decode_model(_field(body, "model", dict), len(raw_arms))
    elif "model" in body:
        raise SnapshotError("field 'model' needs schema 2 or 3; a schema 1 reader would ignore it")
    if schema == 3:
        ranking = _decode_ranking(_field(body, "ranking", dict), len(raw_arms), len(raw_segments))
    elif "ranking" in body:
        raise SnapshotError("field 'ranking' needs schema 3; an older reader would ignore it")
    return Snapshot(
        experiment=_field(body, "experiment", str),
        version=_field(body, "version", int),
        created_at=_field(body, "created_at", int),
        max_age_s=_field(body, "max_age_s", number),
        salt=_field(body, "salt", str),
        default_arm=_field(body, "default_arm", str),
        holdout=_field(body, "holdout", number),
        floor=_field(body, "floor", number),
        arms=[_arm(item, i) for i, item in enumerate(raw_arms)],
        segments=[_segment(item, i) for i, item in enumerate(raw_segments)],
        alpha=_unpack_table("alpha", body.get("alpha"), cells),
        beta=_unpack_table("beta", body.get("beta"), cells),
        allocation=_unpack_table("allocation", body.get("allocation"), cells),
        hash_version=_field(body, "hash_version", int),
        context_features=_field(body, "features", list) if "features" in body else (),
        model=model,
        ranking=ranking,
    )
