"""The records of finished messages: dead letters, stored results (and
cancellations), dedup markers.

The commit loop writes them after a commit that finished a message, then commits
``Finalize``; until then the outcome stays in the cursor, so a message's status is
never wrong in between. Invariant: every write here is idempotent (a record is
rewritten whole, a dedup marker is updated by compare-and-swap only while it still
names the message), so a process that finds another's unfinished outcomes may
write them again.
"""

from __future__ import annotations

import asyncio

import msgspec

from s3queue.core import layout
from s3queue.core.blobs import NULL, payload_json
from s3queue.core.cursor import Cursor, Flight, message_of, raw_or_none
from s3queue.core.records import (
    NO_RAW,
    DeadLetter,
    DedupMarker,
    ErrorRecord,
    QueueSettings,
    ResultRecord,
    decode,
    encode,
)
from s3queue.core.segment import Message, Segment, SegmentCache
from s3queue.errors import CorruptData, PreconditionFailed
from s3queue.storage import Storage, UpdateVersion

#: Compare-and-swap attempts on a dedup marker before leaving it to the next finish
#: (another producer renewing it is the only writer it can race).
DEDUP_ATTEMPTS = 8


class OutcomeRecords:
    """Writes what finished messages leave behind in one queue."""

    def __init__(self, storage: Storage, settings: QueueSettings, segments: SegmentCache) -> None:
        self.storage = storage
        self.queue = settings.name
        self.by_segment = settings.results_by_segment
        self.segments = segments

    async def write(self, shard: int, cursor: Cursor, ids: list[str]) -> None:
        """Write the records of the finished messages ``ids`` of ``shard``, whose
        outcomes ``cursor`` holds."""
        refs = sorted({layout.parse_message_id(mid).segment for mid in ids})
        segments = await self.segments.require(shard, refs)
        await asyncio.gather(*(self._write_one(cursor, segments, mid) for mid in ids))

    async def _write_one(self, cursor: Cursor, segments: dict[str, Segment], mid: str) -> None:
        flight = cursor.flights[mid]
        outcome = flight.outcome
        assert outcome is not None
        message = message_of(segments, mid)
        if outcome.status == "dead":
            letter = await self._dead_letter(mid, flight, message)
            await self.storage.put(layout.dead_key(self.queue, mid), encode(letter))
        elif (
            outcome.status == "cancelled"
            or raw_or_none(outcome.result) is not None
            or outcome.result_blob is not None
            or flight.errors
            or flight.progress
        ):
            record = ResultRecord(
                id=mid,
                status="cancelled" if outcome.status == "cancelled" else "completed",
                result=raw_or_none(outcome.result) or NO_RAW,
                result_blob=outcome.result_blob if outcome.status == "completed" else None,
                completed_at=outcome.finished_at,
                attempts=flight.attempt,
                errors=flight.errors,
                progress=flight.progress,
            )
            key = layout.result_key(self.queue, mid, by_segment=self.by_segment)
            await self.storage.put(key, encode(record))
        if message.dedup_key is not None:
            await self._mark_dedup_finished(message.dedup_key, mid, outcome.finished_at)

    async def _dead_letter(self, mid: str, flight: Flight, message: Message) -> DeadLetter:
        """The dead letter of ``mid``, its payload inline: read from its blob if it
        has one (a letter outlives its segment's blobs). A blob already gone leaves
        a null payload and one more error, naming its key."""
        errors = flight.errors
        try:
            payload = await payload_json(self.storage, message, mid)
        except CorruptData as error:
            if not error.metadata.get("missing"):
                raise
            payload = NULL
            at = flight.outcome.finished_at if flight.outcome is not None else 0.0
            lost = ErrorRecord(
                attempt=flight.attempt, at=at, type="CorruptData", message=error.message
            )
            # The worker that found it gone said so already, if one did.
            if not any(str(error.metadata["key"]) in e.message for e in errors):
                errors = [*errors, lost]
        return DeadLetter(
            id=mid,
            payload=payload,
            attempts=flight.attempt,
            errors=errors,
            enqueued_at=message.enqueued_at,
            died_at=flight.outcome.finished_at if flight.outcome is not None else 0.0,
            priority=message.priority,
            max_attempts=message.max_attempts,
            dedup_key=message.dedup_key,
            progress=flight.progress,
            rate_key=message.rate_key,
        )

    async def _mark_dedup_finished(self, dedup_key: str, mid: str, finished_at: float) -> None:
        key = layout.dedup_key(self.queue, dedup_key)
        for _ in range(DEDUP_ATTEMPTS):
            stored = await self.storage.get(key)
            if stored is None:
                return
            marker = decode(stored.data, DedupMarker, what="dedup marker", key=key)
            if marker.id != mid or marker.finished_at is not None:
                return
            try:
                await self.storage.put(
                    key,
                    encode(msgspec.structs.replace(marker, finished_at=finished_at)),
                    mode=UpdateVersion(stored.etag),
                )
                return
            except PreconditionFailed:
                continue
