"""The cursor's on-disk format: what earlier versions wrote decodes, and encodes
back to the same bytes."""

from __future__ import annotations

from typing import get_args

import msgspec

from s3queue.core.cursor import (
    Counter,
    Counters,
    Cursor,
    Flight,
    Op,
    OpenSegment,
    Operation,
    Outcome,
    RegisterTimer,
    apply,
    decode_cursor,
    encode_cursor,
    is_done,
    is_unread,
    unfinished_indices,
)
from s3queue.core.layout import LOG_LANE, SegmentRef
from s3queue.core.segment import Segment, SegmentCache, encode_segment
from s3queue.storage.memory import MemoryStorage

#: A cursor as s3queue wrote it when timer buckets were kept as string keys.
WRITTEN = (
    b'{"format":1,"shard":3,"version":12,"commit":"9f2c","recent_commits":["a1","9f2c"],'
    b'"next_seq":42,"next_high":7,"open":[{"ref":"H6","count":3,"done":"BQ=="},'
    b'{"ref":"L41","count":10,"done":"AwA="}],"flights":{"3-L41-2":{"attempt":2,'
    b'"lease":{"token":"t1","owner":"w1","claimed_at":1732480000.5,"expires_at":1732480030.5},'
    b'"errors":[{"attempt":1,"at":1732479990.0,"type":"ValueError","message":"boom",'
    b'"traceback":null,"worker":"w0"}]},"3-H6-1":{"attempt":1,"outcome":{"status":"completed",'
    b'"finished_at":1732480001.0,"result":{"ok":true}}}},'
    b'"timers":{"1732480080":2,"1732480020":0,"1732480140":11},'
    b'"timers_sealed_before":1732479960,"purged_before":3,"purged_high_before":0,'
    b'"counters":{"ingested":40,"claimed":12,"completed":9,"dead":0,"retried":0,"recovered":0,'
    b'"released":0,"stale_rejected":0,"quarantined":0}}'
)


def test_a_cursor_written_before_encodes_back_to_the_same_bytes_and_new_counters() -> None:
    cursor = decode_cursor(WRITTEN, "q/shards/0003/cursor")
    # Counters are always written; fields of flights only when they are set.
    counters_since = b',"cancelled":0}}'
    assert encode_cursor(cursor) == WRITTEN[: -len(b"}}")] + counters_since


def test_a_cancel_request_and_a_cancelled_outcome_are_written_only_where_they_are() -> None:
    cursor = decode_cursor(WRITTEN, "q/shards/0003/cursor")
    flights = dict(cursor.flights)
    flights["3-L41-2"] = msgspec.structs.replace(flights["3-L41-2"], cancel_requested=True)
    flights["3-L42-0"] = Flight(attempt=0, outcome=Outcome(status="cancelled", finished_at=5.0))
    data = encode_cursor(msgspec.structs.replace(cursor, flights=flights))
    assert data.count(b'"cancel_requested":true') == 1
    assert b'"3-L42-0":{"attempt":0,"outcome":{"status":"cancelled","finished_at":5.0}}' in data
    assert decode_cursor(data, "q/shards/0003/cursor").flights == flights


def test_timer_buckets_are_written_as_json_object_keys_in_registration_order() -> None:
    t = apply(
        Cursor(shard=0),
        [RegisterTimer(1732480080), RegisterTimer(1732480020)],
        {},
        now=1732480000.0,
        commit="c",
        new_token=lambda: "t",
    )
    assert b'"timers":{"1732480080":0,"1732480020":0}' in encode_cursor(t.cursor)


def test_message_i_of_a_window_segment_is_bit_i_mod_8_of_byte_i_div_8() -> None:
    segment = OpenSegment(ref="L41", count=10, done=bytes([0b0000_0101, 0b10]))
    assert list(unfinished_indices(segment)) == [1, 3, 4, 5, 6, 7, 8]
    assert list(unfinished_indices(segment, [9, 8, 2])) == [8]
    assert [is_done(segment, i) for i in (0, 1, 2, 9)] == [True, False, True, True]


def test_a_segment_is_unread_from_the_next_seq_of_its_lane_on() -> None:
    cursor = Cursor(shard=0, next_seq=5, next_high=2, timers={60: 3})
    assert [is_unread(cursor, SegmentRef.log(seq)) for seq in (4, 5, 6)] == [False, True, True]
    assert [is_unread(cursor, SegmentRef.high(seq)) for seq in (1, 2)] == [False, True]
    assert [is_unread(cursor, SegmentRef.timer(60, seq)) for seq in (2, 3)] == [False, True]
    assert not is_unread(cursor, SegmentRef.timer(120, 0))  # a bucket it never registered


def test_every_operation_class_is_one_of_the_operation_union() -> None:
    # ShardCommitter.submit takes any Op and hands it on as an Operation.
    # (Names: a slotted dataclass leaves its unslotted first draft among the subclasses.)
    assert {c.__name__ for c in Op.__subclasses__()} == {c.__name__ for c in get_args(Operation)}


def test_the_counter_names_are_the_fields_of_counters() -> None:
    assert list(get_args(Counter)) == list(Counters.__struct_fields__)


async def test_a_window_larger_than_the_segment_cache_is_still_read_whole() -> None:
    """Fetches of other shards evict what one shard's fetch just put in the cache:
    the window handed back is the segments fetched, not what the cache still has."""
    storage = MemoryStorage()
    refs = [SegmentRef(LOG_LANE, seq) for seq in range(6)]
    for ref in refs:
        segment = Segment(writer="w", created_at=1.0, messages=[])
        await storage.put(ref.key("q", 0), encode_segment(segment))
    cache = SegmentCache(storage, "q", capacity=2)
    window = await cache.require(0, refs)
    assert list(window) == [str(ref) for ref in refs]
