"""Event batches as queue messages: the contract between the edge's queue sink and `perch consume`.

A message is text (Cloudflare's pull consumers want ``text`` bodies)::

    t=<unix seconds>,v1=<hex HMAC-SHA256>\\n{"schema": 1, "batch": "<id>", "events": [...]}

The first line is the same ``X-Perch-Signature`` value the HTTP path sends (:mod:`core.signing`),
over the bytes after the newline. Unlike the HTTP path, the consumer checks the MAC with no
freshness window: a message may wait hours in a backlog. Replays cannot add anything, because
every event is idempotent by its id and ``batch`` names the message for the consumer's log.

Events with a decision id go to the queue ``route(decision_id, n)``: an exposure and all its
outcomes meet in one queue, so exactly one consumer credits each decision. Stitches carry no
decision id and go by their own id.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from core.errors import PerchError
from core.events import EVENT_SCHEMA
from core.signing import SignatureError, replay_key, sign, verify_any_age

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_SEND_BATCH_BYTES",
    "MAX_SEND_BATCH_MESSAGES",
    "MessageError",
    "Packed",
    "encode_messages",
    "pack_messages",
    "parse_message",
    "route",
    "send_batches",
]

# Cloudflare's limits are 128 KB per message, 100 messages and 256 KB per sendBatch; kept a little
# under them, because the platform counts some bytes of its own per message.
MAX_MESSAGE_BYTES = 120_000
MAX_SEND_BATCH_MESSAGES = 100
MAX_SEND_BATCH_BYTES = 240_000


class MessageError(PerchError, ValueError):
    """A queue message is not a signed Perch event batch; the message says what is wrong."""


def route(key: str, queues: int) -> int:
    """The queue (0 .. queues-1) for events keyed ``key`` (a decision id, else the event id)."""
    if queues < 1:
        raise ValueError(f"queues={queues}, must be >= 1")
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % queues


def _event_key(event: dict[str, Any]) -> str:
    return str(event.get("decision_id") or event.get("id") or "")


def _body(batch_id: str, events: Sequence[dict[str, Any]]) -> bytes:
    doc = {"schema": EVENT_SCHEMA, "batch": batch_id, "events": list(events)}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True, slots=True)
class Packed:
    """One message and the events it carries (the sender counts them, and re-sends them by POST
    if Queues refuse the message)."""

    text: str
    events: list[dict[str, Any]]


def pack_messages(
    secret: str,
    events: Sequence[dict[str, Any]],
    *,
    now_s: int,
    batch_id: str,
    queues: int = 1,
) -> list[list[Packed]]:
    """Per queue, the signed messages carrying ``events`` (each at most :data:`MAX_MESSAGE_BYTES`).

    ``batch_id`` must be unique per call (the edge uses a random id); message k of queue q is
    named ``<batch_id>.<q>.<k>``. An event too large for a message on its own is left out (the
    edge validates its own events, so this only guards the limit); the caller counts what is
    missing.
    """
    per_queue: list[list[dict[str, Any]]] = [[] for _ in range(queues)]
    for event in events:
        per_queue[route(_event_key(event), queues) if queues > 1 else 0].append(event)
    out: list[list[Packed]] = []
    for q, items in enumerate(per_queue):
        messages: list[Packed] = []
        chunk: list[dict[str, Any]] = []
        size = 0
        for event in items:
            # Each event's own size, measured once: the envelope and separators are small and fixed.
            length = len(json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")) + 1
            if length + 200 > MAX_MESSAGE_BYTES:
                continue
            if chunk and size + length + 200 > MAX_MESSAGE_BYTES:
                messages.append(Packed(_sign(secret, now_s, f"{batch_id}.{q}.{len(messages)}", chunk), chunk))
                chunk, size = [], 0
            chunk.append(event)
            size += length
        if chunk:
            messages.append(Packed(_sign(secret, now_s, f"{batch_id}.{q}.{len(messages)}", chunk), chunk))
        out.append(messages)
    return out


def encode_messages(
    secret: str,
    events: Sequence[dict[str, Any]],
    *,
    now_s: int,
    batch_id: str,
    queues: int = 1,
) -> list[list[str]]:
    """:func:`pack_messages`, the message texts only."""
    packed = pack_messages(secret, events, now_s=now_s, batch_id=batch_id, queues=queues)
    return [[p.text for p in messages] for messages in packed]


def _sign(secret: str, now_s: int, batch_id: str, events: Sequence[dict[str, Any]]) -> str:
    body = _body(batch_id, events)
    return sign(secret, body, now_s) + "\n" + body.decode("utf-8")


M = TypeVar("M", str, Packed)


def send_batches(messages: Sequence[M]) -> list[list[M]]:
    """``messages`` grouped for ``sendBatch``: at most 100 messages and 240,000 bytes per call."""
    calls: list[list[M]] = []
    current: list[M] = []
    size = 0
    for message in messages:
        length = len((message if isinstance(message, str) else message.text).encode("utf-8"))
        if current and (len(current) >= MAX_SEND_BATCH_MESSAGES or size + length > MAX_SEND_BATCH_BYTES):
            calls.append(current)
            current, size = [], 0
        current.append(message)
        size += length
    if current:
        calls.append(current)
    return calls


def parse_message(secret: str, message: str | bytes) -> tuple[str, bytes]:
    """The ``(replay key, batch body)`` of a signed message; :class:`MessageError` if it is not one.

    The body is left for :func:`core.parse_batch`, which checks the batch and each event on its
    own (parsed once: at 30,000 events/s a second parse would show). The replay key is our own MAC
    of the message, as :func:`core.replay_key` gives it for a POST.
    """
    raw = message.encode("utf-8") if isinstance(message, str) else bytes(message)
    header, sep, body = raw.partition(b"\n")
    if not sep or len(header) > 512:
        raise MessageError("a queue message must be '<signature>\\n<batch JSON>'")
    try:
        timestamp = verify_any_age(secret, header.decode("ascii"), body)
    except (UnicodeDecodeError, SignatureError) as exc:
        raise MessageError(f"queue message signature: {exc}") from None
    return replay_key(secret, timestamp, body), body
