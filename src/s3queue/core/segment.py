"""Segments: immutable batches of messages, written once by a producer.

Invariant: a segment's bytes never change after its create-if-absent PUT; its
``writer`` nonce makes every segment's bytes unique, so a retried write can
recognise itself (see ``storage.retry``).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import msgspec

from s3queue.core.layout import SegmentRef
from s3queue.core.records import FORMAT, decode, encode
from s3queue.errors import CorruptData
from s3queue.storage import Storage

#: A segment holds at most this many messages and about this many bytes, so that
#: one GET stays fast and one PUT stays far below S3's 5 GB single-PUT limit. The
#: bytes are those of the segment itself: large payloads are blobs of their own.
MAX_SEGMENT_MESSAGES = 1000
MAX_SEGMENT_BYTES = 8 * 1024 * 1024


class Message(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    #: The payload as JSON; ``null`` when it is in a blob.
    payload: msgspec.Raw
    enqueued_at: float
    visible_at: float
    priority: int = 0
    max_attempts: int = 3
    dedup_key: str | None = None
    #: The rate limit the message falls under besides the queue's (see rates.py).
    rate_key: str | None = None
    #: The key of the blob that holds a payload over the queue's blob threshold
    #: (``blobs/p-<random>``, see core/blobs.py); the segment holds only this key.
    blob: str | None = None


class Segment(msgspec.Struct, frozen=True, kw_only=True):
    format: int = FORMAT
    writer: str
    created_at: float
    messages: list[Message]


def encode_segment(segment: Segment) -> bytes:
    return encode(segment)


def decode_segment(data: bytes, key: str) -> Segment:
    return decode(data, Segment, what="segment", key=key)


class SegmentCache:
    """Segments are immutable, so a process can keep every one it has read."""

    def __init__(self, storage: Storage, queue: str, capacity: int = 4096) -> None:
        self._storage = storage
        self._queue = queue
        self._capacity = capacity
        self._items: OrderedDict[tuple[int, str], Segment] = OrderedDict()

    def get(self, shard: int, ref: SegmentRef) -> Segment | None:
        item = self._items.get((shard, str(ref)))
        if item is not None:
            self._items.move_to_end((shard, str(ref)))
        return item

    def put(self, shard: int, ref: SegmentRef, segment: Segment) -> None:
        self._items[(shard, str(ref))] = segment
        while len(self._items) > self._capacity:
            self._items.popitem(last=False)

    def forget(self, shard: int, ref: SegmentRef) -> None:
        """Drop a segment that was deleted (a purge)."""
        self._items.pop((shard, str(ref)), None)

    def clear(self) -> None:
        self._items.clear()

    async def fetch(self, shard: int, ref: SegmentRef) -> Segment | None:
        """The segment, from cache or storage; None if it does not exist (yet).

        Raises CorruptData (``metadata``: key, shard, ref) when it cannot be read."""
        cached = self.get(shard, ref)
        if cached is not None:
            return cached
        key = ref.key(self._queue, shard)
        stored = await self._storage.get(key)
        if stored is None or (not stored.data and ref.is_timer):
            # Nothing there yet, or the empty object that seals a timer bucket.
            return None
        try:
            if not stored.data:
                raise CorruptData(f"empty segment at {key}", metadata={"key": key})
            segment = decode_segment(stored.data, key)
        except CorruptData as error:
            error.metadata.update(shard=shard, ref=str(ref))
            raise
        self.put(shard, ref, segment)
        return segment

    async def require(self, shard: int, refs: list[SegmentRef]) -> dict[str, Segment]:
        # Kept here, not looked up in the cache again: fetches of other shards
        # running meanwhile may have evicted them (many shards, deep windows).
        found = {str(ref): s for ref in refs if (s := self.get(shard, ref)) is not None}
        missing = [ref for ref in refs if str(ref) not in found]
        fetched = await asyncio.gather(*(self.fetch(shard, ref) for ref in missing))
        for ref, segment in zip(missing, fetched, strict=True):
            if segment is None:
                key = ref.key(self._queue, shard)
                raise CorruptData(
                    f"segment {key} is missing although the cursor still needs it",
                    suggestion="segments must not be deleted by hand or by a lifecycle rule "
                    "shorter than the longest time a message may wait; its messages are "
                    "set aside as lost",
                    metadata={"key": key, "shard": shard, "ref": str(ref), "missing": True},
                )
            found[str(ref)] = segment
        return {str(ref): found[str(ref)] for ref in refs}
