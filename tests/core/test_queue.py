"""core.queue: event batches as signed queue messages, the edge's and `perch consume`'s contract."""

from __future__ import annotations

import json

import pytest

from core import (
    MessageError,
    encode_messages,
    pack_messages,
    parse_batch,
    parse_message,
    route,
    send_batches,
    sign,
    verify_any_age,
)
from core.queue import MAX_MESSAGE_BYTES, MAX_SEND_BATCH_BYTES, MAX_SEND_BATCH_MESSAGES

SECRET = "edge-secret-0123456789"


def _events(n: int, pad: int = 0) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for i in range(n):
        decision = f"{i:032x}"
        out.append({"type": "exposure", "id": f"x-{decision}", "decision_id": decision, "pad": "p" * pad})
        if i % 3 == 0:
            out.append({"type": "outcome", "id": f"o-{decision}", "decision_id": decision})
    return out


def test_every_event_arrives_once_in_the_queue_of_its_decision() -> None:
    events = _events(3000, pad=200)
    per_queue = pack_messages(SECRET, events, now_s=1, batch_id="b", queues=4)
    seen: list[str] = []
    for q, messages in enumerate(per_queue):
        for message in messages:
            assert len(message.text.encode()) <= MAX_MESSAGE_BYTES
            _, body = parse_message(SECRET, message.text)
            assert body == message.text.partition("\n")[2].encode()
            for event in message.events:
                assert route(str(event["decision_id"]), 4) == q  # an exposure and its outcomes meet
                seen.append(str(event["id"]))
    assert sorted(seen) == sorted(str(e["id"]) for e in events)
    assert [[m.text for m in q] for q in per_queue] == encode_messages(
        SECRET, events, now_s=1, batch_id="b", queues=4
    )


def test_send_batches_respect_cloudflares_limits() -> None:
    (messages,) = encode_messages(SECRET, _events(20_000, pad=300), now_s=1, batch_id="b")
    calls = send_batches(messages)
    assert [m for call in calls for m in call] == messages
    for call in calls:
        assert len(call) <= MAX_SEND_BATCH_MESSAGES
        assert sum(len(m.encode()) for m in call) <= MAX_SEND_BATCH_BYTES
    small = encode_messages(SECRET, _events(5), now_s=1, batch_id="s")[0] * 150
    assert [len(c) for c in send_batches(small)] == [100, 50]


def test_a_message_is_checked_by_its_mac_whatever_its_age() -> None:
    (messages,) = encode_messages(SECRET, _events(3), now_s=1_000, batch_id="b")
    key, body = parse_message(SECRET, messages[0])  # signed 1,000 s after the epoch: still good
    doc = json.loads(body)
    assert (len(doc["events"]), doc["batch"], len(key)) == (4, "b.0.0", 64)
    valid, rejected = parse_batch(body)  # the consumer's next step: these test events lack fields
    assert valid == [] and len(rejected) == 4
    header, _, rest = messages[0].partition("\n")
    for bad in (
        header + "\n" + rest.replace("x-", "y-", 1),  # altered
        "t=1000,v1=" + "0" * 64 + "\n" + rest,  # forged
        rest,  # no signature line
    ):
        with pytest.raises(MessageError):
            parse_message(SECRET, bad)
    with pytest.raises(MessageError):
        parse_message("another-secret-0000000", messages[0])
    assert verify_any_age(SECRET, sign(SECRET, b"{}", 5), b"{}") == 5


def test_an_event_too_large_for_any_message_is_left_out_not_split() -> None:
    events = [{"type": "stitch", "id": "big", "pad": "p" * MAX_MESSAGE_BYTES}, *_events(2)]
    (messages,) = pack_messages(SECRET, events, now_s=1, batch_id="b")
    assert [e["id"] for m in messages for e in m.events] == [e["id"] for e in events[1:]]
