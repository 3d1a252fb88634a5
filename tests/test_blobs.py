"""Payloads and results over the blob threshold: stored as objects of their own,
transparently to producers, handlers and readers, on every backend."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from s3queue import App, PayloadError, Queue, Worker
from s3queue.core import layout
from s3queue.core.cursor import Cursor
from s3queue.core.layout import BLOB_GRACE, SegmentRef
from s3queue.core.records import (
    BLOB_THRESHOLD,
    MAX_PAYLOAD_BYTES,
    MAX_RESULT_BYTES,
    DeadLetter,
    QueueSettings,
    ResultRecord,
    decode,
    encode,
)
from s3queue.core.segment import Segment, decode_segment
from s3queue.errors import CorruptData
from s3queue.storage import open_raw_storage, open_storage
from s3queue.storage.faults import Fault, FaultyStorage
from tests.conftest import FAST, run_until

#: 50 MB: far above the threshold, and what a "large" job argument looks like.
LARGE = 50_000_000


@pytest.fixture
async def queue(store_url: str) -> AsyncIterator[Queue]:
    q = await Queue.open(store_url, "big", shards=1)
    yield q
    await q.close()


async def blobs(queue: Queue) -> list[str]:
    """The keys under the queue's blobs/ prefix."""
    return sorted(e.key for e in await queue.storage.list(layout.blobs_prefix(queue.name)))


async def everything(queue: Queue) -> list[str]:
    return sorted(e.key for e in await queue.storage.list(layout.queue_prefix(queue.name)))


async def segment_of(queue: Queue, mid: str) -> Segment:
    address = layout.parse_message_id(mid)
    key = address.segment.key(queue.name, address.shard)
    stored = await queue.storage.get(key)
    assert stored is not None
    return decode_segment(stored.data, key)


# --- the round trip -------------------------------------------------------------------------


async def test_a_50_mb_payload_and_result_round_trip(queue: Queue, backend: str) -> None:
    payload = {"data": "p" * LARGE, "n": 1}
    started = time.perf_counter()
    mid = await queue.enqueue(payload)
    [lease] = await queue.claim(1, visibility_timeout=60)
    assert lease.payload == payload
    await queue.ack(lease, {"echo": "r" * LARGE})
    await queue.settle()
    info = await queue.get(mid)
    assert info is not None
    assert info.status == "completed"
    assert info.payload == payload
    assert info.result == {"echo": "r" * LARGE}
    print(f"50 MB payload + result round trip on {backend}: {time.perf_counter() - started:.2f} s")
    [payload_blob, result_blob] = await blobs(queue)
    assert layout.blob_of(queue.name, payload_blob) == ("payload", None)
    assert layout.blob_of(queue.name, result_blob) == ("result", mid)
    # The segment and the result record hold only the keys.
    message = (await segment_of(queue, mid)).messages[0]
    assert message.blob == payload_blob
    stored = await queue.storage.get(layout.result_key(queue.name, mid))
    assert stored is not None
    assert len(stored.data) < 1000
    record = decode(stored.data, ResultRecord, what="result", key="k")
    assert record.result_blob == result_blob


async def test_a_large_result_sits_in_the_cursor_as_its_key_only(store_url: str) -> None:
    # Until its result record is written, an outcome sits in the cursor, which is
    # rewritten on every commit. The record's write fails here, so it stays there.
    faulty = FaultyStorage(open_raw_storage(store_url))
    faulty.inject(Fault("put", times=1000, when=lambda key: "/results/" in key))
    async with await Queue.open(faulty, "big", shards=1) as queue:
        mid = await queue.enqueue(1)
        [lease] = await queue.claim(1)
        result = "r" * (2 * BLOB_THRESHOLD)
        await queue.ack(lease, result)
        stored = await faulty.get(layout.cursor_key(queue.name, 0))
        assert stored is not None
        cursor = decode(stored.data, Cursor, what="cursor", key="k")
        outcome = cursor.flights[mid].outcome
        assert outcome is not None
        assert outcome.result_blob in await blobs(queue)
        assert len(stored.data) < 4096
        info = await queue.get(mid)  # read from the cursor, through the blob
        assert info is not None
        assert info.result == result
        assert await faulty.get(layout.result_key(queue.name, mid)) is None
        faulty.faults.clear()


# --- the threshold ----------------------------------------------------------------------------


async def test_payloads_up_to_the_threshold_stay_in_their_segment(queue: Queue) -> None:
    # A string's JSON is two quotes longer than the string.
    at = await queue.enqueue("a" * (BLOB_THRESHOLD - 2))
    assert (await segment_of(queue, at)).messages[0].blob is None
    assert await blobs(queue) == []
    over = await queue.enqueue("b" * (BLOB_THRESHOLD - 1))
    [key] = await blobs(queue)
    assert (await segment_of(queue, over)).messages[0].blob == key
    leases = {lease.id: lease for lease in await queue.claim(2)}
    assert leases[at].payload == "a" * (BLOB_THRESHOLD - 2)
    assert leases[over].payload == "b" * (BLOB_THRESHOLD - 1)


async def test_results_up_to_the_threshold_stay_in_their_record(queue: Queue) -> None:
    first, second = await queue.enqueue_many([1, 2])
    leases = {lease.id: lease for lease in await queue.claim(2)}
    await queue.ack(leases[first], "a" * (BLOB_THRESHOLD - 2))
    assert await blobs(queue) == []
    await queue.ack(leases[second], "b" * (BLOB_THRESHOLD - 1))
    [key] = await blobs(queue)
    assert layout.blob_of(queue.name, key) == ("result", second)
    await queue.settle()
    for mid, value in ((first, "a" * (BLOB_THRESHOLD - 2)), (second, "b" * (BLOB_THRESHOLD - 1))):
        info = await queue.get(mid)
        assert info is not None
        assert info.result == value


async def test_the_threshold_is_read_from_queue_json(store_url: str) -> None:
    storage = open_storage(store_url)
    settings = QueueSettings(name="small", shards=1, created_at=time.time(), blob_threshold=100)
    await storage.put(layout.settings_key("small"), encode(settings), mode="create")
    async with await Queue.open(storage, "small") as q:
        mid = await q.enqueue("x" * 99)  # 101 bytes of JSON
        assert len(await blobs(q)) == 1
        [lease] = await q.claim(1)
        assert lease.payload == "x" * 99
        await q.ack(lease, "y" * 99)
        await q.settle()
        assert len(await blobs(q)) == 2
        info = await q.get(mid)
        assert info is not None
        assert info.result == "y" * 99
    await storage.close()


async def test_segments_hold_many_messages_whose_payloads_are_blobs(queue: Queue) -> None:
    # 40 payloads of 300 KB each: 12 MB inline would need two segments; as blobs
    # the segment holds only their keys.
    ids = await queue.enqueue_many([f"{i}" + "z" * 300_000 for i in range(40)])
    assert {layout.parse_message_id(mid).segment for mid in ids} == {SegmentRef.log(0)}
    assert len(await blobs(queue)) == 40
    leases = await queue.claim(40)
    assert sorted(lease.payload[:2] for lease in leases) == sorted(
        f"{i}" + "z" * (2 - len(str(i))) for i in range(40)
    )


# --- the maximum ------------------------------------------------------------------------------


async def test_a_payload_over_the_maximum_is_refused_before_anything_is_written(
    queue: Queue,
) -> None:
    await queue.enqueue(1)
    before = await everything(queue)
    with pytest.raises(PayloadError, match=f"over the limit of {MAX_PAYLOAD_BYTES} bytes") as info:
        await queue.enqueue("x" * (MAX_PAYLOAD_BYTES - 1))
    assert info.value.metadata["size"] == MAX_PAYLOAD_BYTES + 1
    assert "its own object" in (info.value.suggestion or "")
    assert await everything(queue) == before


async def test_a_result_over_the_maximum_is_refused_and_the_lease_kept(queue: Queue) -> None:
    mid = await queue.enqueue(1)
    [lease] = await queue.claim(1, visibility_timeout=60)
    before = await everything(queue)
    with pytest.raises(PayloadError, match=f"over the limit of {MAX_RESULT_BYTES} bytes"):
        await queue.ack(lease, "x" * MAX_RESULT_BYTES)
    assert await everything(queue) == before
    info = await queue.get(mid)
    assert info is not None
    assert info.status == "processing"
    await queue.ack(lease, "small")  # still held
    info = await queue.get(mid)
    assert info is not None
    assert info.result == "small"


# --- dead letters and redrive ---------------------------------------------------------------


async def test_a_dead_letter_holds_its_blob_payload_inline_and_redrives(queue: Queue) -> None:
    payload = "d" * (3 * BLOB_THRESHOLD)
    mid = await queue.enqueue(payload, max_attempts=1)
    [lease] = await queue.claim(1)
    await queue.fail(lease, "no", retriable=False)
    await queue.settle()
    stored = await queue.storage.get(layout.dead_key(queue.name, mid))
    assert stored is not None
    letter = decode(stored.data, DeadLetter, what="dead letter", key="k")
    assert msgspec.json.decode(letter.payload) == payload
    [dead] = await queue.dead_letters()
    assert dead.payload == payload
    [first_blob] = await blobs(queue)
    [new_id] = await queue.redrive([mid])
    # The copy went through the normal path: a blob of its own.
    second_blob = (await segment_of(queue, new_id)).messages[0].blob
    assert second_blob is not None
    assert second_blob != first_blob
    assert sorted(await blobs(queue)) == sorted([first_blob, second_blob])
    [again] = await queue.claim(1)
    assert (again.id, again.payload) == (new_id, payload)


# --- missing blobs ----------------------------------------------------------------------------


async def test_a_missing_payload_blob_is_a_clear_error_for_get(queue: Queue) -> None:
    mid = await queue.enqueue("m" * (2 * BLOB_THRESHOLD))
    [key] = await blobs(queue)
    await queue.storage.delete(key)
    with pytest.raises(CorruptData, match=f"payload of message {mid} is missing") as info:
        await queue.get(mid)
    assert key in str(info.value)
    assert info.value.metadata["key"] == key


async def test_a_message_whose_payload_blob_is_missing_is_dead_lettered(queue: Queue) -> None:
    mid = await queue.enqueue("m" * (2 * BLOB_THRESHOLD))
    ok = await queue.enqueue("fine")
    [key] = await blobs(queue)
    await queue.storage.delete(key)
    leases = await queue.claim(2)
    assert [lease.id for lease in leases] == [ok]  # it never reaches a handler
    await queue.settle()
    [dead] = await queue.dead_letters()
    assert (dead.id, dead.status, dead.payload) == (mid, "dead", None)
    assert key in dead.errors[-1].message
    assert dead.errors[-1].type == "CorruptData"
    assert (await queue.get(mid)) == dead


async def test_a_missing_result_blob_is_a_clear_error(queue: Queue) -> None:
    mid = await queue.enqueue(1)
    [lease] = await queue.claim(1)
    await queue.ack(lease, "r" * (2 * BLOB_THRESHOLD))
    await queue.settle()
    [key] = await blobs(queue)
    await queue.storage.delete(key)
    with pytest.raises(CorruptData, match=f"result of message {mid} is missing") as info:
        await queue.get(mid)
    assert info.value.metadata == {"key": key, "id": mid, "missing": True}


async def test_a_blob_the_store_fails_to_return_releases_its_message(store_url: str) -> None:
    faulty = FaultyStorage(open_raw_storage(store_url))
    async with await Queue.open(faulty, "big", shards=1) as queue:
        large = await queue.enqueue("m" * (2 * BLOB_THRESHOLD))
        small = await queue.enqueue("fine")
        faulty.inject(Fault("get", times=1000, when=lambda key: "/blobs/" in key))
        assert [lease.id for lease in await queue.claim(2)] == [small]
        faulty.faults.clear()
        [again] = await queue.claim(2)  # given back, its attempt not counted
        assert (again.id, again.attempt, again.payload) == (large, 1, "m" * (2 * BLOB_THRESHOLD))


# --- the collection contract -----------------------------------------------------------------


async def test_a_blob_written_too_long_before_its_segment_is_written_again(
    queue: Queue,
) -> None:
    # The producer's monotonic clock: the blob's PUT starts at 0, its segment would
    # be written BLOB_GRACE later (a long retry): the blob is written anew first.
    times = iter([0.0, BLOB_GRACE, BLOB_GRACE])
    queue.producer.blobs.monotonic = lambda: next(times)
    payload = "g" * (2 * BLOB_THRESHOLD)
    mid = await queue.enqueue(payload)
    old, new = await blobs(queue), (await segment_of(queue, mid)).messages[0].blob
    assert len(old) == 2
    assert new in old
    [lease] = await queue.claim(1)
    assert lease.payload == payload


async def test_a_blob_written_recently_is_not_written_again(queue: Queue) -> None:
    times = iter([0.0, BLOB_GRACE / 2 - 1])
    queue.producer.blobs.monotonic = lambda: next(times)
    await queue.enqueue("g" * (2 * BLOB_THRESHOLD))
    assert len(await blobs(queue)) == 1


# --- compatibility ----------------------------------------------------------------------------


def test_records_written_before_blobs_decode_as_before() -> None:
    segment = decode_segment(
        b'{"format":1,"writer":"w.0","created_at":1.0,"messages":'
        b'[{"payload":{"a":1},"enqueued_at":1.0,"visible_at":0.0}]}',
        "k",
    )
    assert segment.messages[0].blob is None
    assert msgspec.json.decode(segment.messages[0].payload) == {"a": 1}
    record = decode(
        b'{"format":1,"id":"0-L0-0","result":5,"completed_at":1.0,"attempts":1}',
        ResultRecord,
        what="result",
        key="k",
    )
    assert record.result_blob is None
    cursor = decode(
        b'{"format":1,"shard":0,"flights":{"0-L0-0":{"attempt":1,'
        b'"outcome":{"status":"completed","finished_at":1.0,"result":5}}}}',
        Cursor,
        what="cursor",
        key="k",
    )
    outcome = cursor.flights["0-L0-0"].outcome
    assert outcome is not None
    assert outcome.result_blob is None


# --- the task app -----------------------------------------------------------------------------


async def test_a_task_takes_and_returns_50_mb(tmp_path: Any) -> None:
    url = f"file://{tmp_path / 'store'}"
    app = App(url)

    @app.task(name="shout")
    def shout(text: str) -> dict[str, Any]:
        return {"upper": text.upper(), "length": len(text)}

    started = time.perf_counter()
    queue = await Queue.open(url, "default")
    pool = Worker([queue], app.router(), polling=FAST)
    try:
        job = await shout.enqueue("t" * LARGE)
        done = asyncio.create_task(run_until(pool, "completed"))
        assert await job.wait(timeout=120) == {"upper": "T" * LARGE, "length": LARGE}
        await done
        info = await job.ainfo()
        assert info.payload["args"] == ["t" * LARGE]
    finally:
        await queue.close()
        await app.aclose()
    print(f"50 MB task argument + return value on file: {time.perf_counter() - started:.2f} s")
