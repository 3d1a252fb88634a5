"""Read-only views of a queue: one message's status, counts by status, dead letters.

They read cursors fresh from storage (never the commit loops' caches) and change
nothing, so any process may call them at any time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from s3queue.core import layout
from s3queue.core.blobs import payload_of, result_of
from s3queue.core.clock import Clock
from s3queue.core.commit import ShardCommitter
from s3queue.core.cursor import Cursor, Flight, is_done, is_unread, unfinished_indices
from s3queue.core.layout import SegmentRef
from s3queue.core.records import (
    DeadLetter,
    QuarantineRecord,
    QueueSettings,
    RedriveRecord,
    ResultRecord,
    decode,
    encode,
)
from s3queue.core.retention import is_collected
from s3queue.core.segment import Message, Segment, SegmentCache
from s3queue.core.sweep import read_record
from s3queue.errors import CorruptData
from s3queue.info import MessageInfo, Problem, ShardStats, Stats, Status
from s3queue.payload import decode_json
from s3queue.storage import Storage


class QueueReader:
    def __init__(
        self,
        storage: Storage,
        settings: QueueSettings,
        committers: list[ShardCommitter],
        segments: SegmentCache,
        clock: Clock,
    ) -> None:
        self.storage = storage
        self.settings = settings
        self.name = settings.name
        self.committers = committers
        self.segments = segments
        self.clock = clock

    async def get(self, message_id: str) -> MessageInfo | None:
        address = layout.parse_message_id(message_id)
        if address.shard >= self.settings.shards:
            return None
        cursor = await self.committers[address.shard].read()
        ref = address.segment
        try:
            segment = await self.segments.fetch(address.shard, ref)
        except CorruptData as error:
            raise await self._unreadable(message_id, error) from error
        message = None
        if segment is not None and address.index < len(segment.messages):
            message = segment.messages[address.index]
        flight = cursor.flights.get(message_id)
        now = self.clock()
        if message is not None and flight is not None:
            return await self._flight_info(message_id, message, flight, now)
        state = _coverage(cursor, message_id)
        if state == "open" and message is not None:
            waiting = _waiting_status(message.visible_at, now)
            return await self._info(message_id, message, waiting, 0)
        if state == "future":
            if message is None:
                return None
            waiting = _waiting_status(message.visible_at, now)
            return await self._info(message_id, message, waiting, 0)
        return await self._finished_info(message_id, message, cursor)

    async def _unreadable(self, mid: str, error: CorruptData) -> CorruptData:
        """Why the status of ``mid`` cannot be told: its segment is unreadable, and
        maybe already set aside (quarantined) with its unfinished messages."""
        address = layout.parse_message_id(mid)
        key = layout.quarantine_key(self.name, address.shard, address.segment)
        stored = await self.storage.get(key)
        if stored is None:
            where = "not set aside yet (the next claim on its shard does it)"
        else:
            record = decode(stored.data, QuarantineRecord, what="quarantine record", key=key)
            lost = "among the lost" if mid in record.lost else "finished before, or unknown"
            where = f"set aside at {key}; this message is {lost}"
        return CorruptData(
            f"the status of {mid} cannot be told: its segment is unreadable ({error.message}); "
            + where,
            suggestion=f"see: s3queue doctor {self.name}",
            metadata={**error.metadata, "id": mid},
        )

    async def _info(
        self, mid: str, message: Message, status: Status, attempts: int, **extra: Any
    ) -> MessageInfo:
        """The message's status, with its payload (read from its blob if it has
        one: CorruptData naming the key if the blob is gone)."""
        # When a waiting message may run; 0 (visible at once) reads as its enqueue
        # time, not 1970. A message that is not waiting has none.
        visible_at = extra.pop("visible_at", message.visible_at)
        waiting = status in ("pending", "delayed")
        return MessageInfo(
            id=mid,
            status=status,
            payload=await payload_of(self.storage, message, mid),
            attempts=attempts,
            max_attempts=message.max_attempts,
            priority=message.priority,
            enqueued_at=message.enqueued_at,
            visible_at=max(visible_at, message.enqueued_at) if waiting else None,
            dedup_key=message.dedup_key,
            **extra,
        )

    async def _flight_info(
        self, mid: str, message: Message, flight: Flight, now: float
    ) -> MessageInfo:
        progress = decode_json(flight.progress)
        if flight.outcome is not None:
            outcome = flight.outcome
            return await self._info(
                mid,
                message,
                outcome.status,
                flight.attempt,
                result=await result_of(self.storage, outcome.result, outcome.result_blob, mid),
                errors=list(flight.errors),
                finished_at=flight.outcome.finished_at,
                progress=progress,
            )
        if flight.lease is not None:
            return await self._info(
                mid,
                message,
                "processing",
                flight.attempt,
                errors=list(flight.errors),
                owner=flight.lease.owner,
                lease_expires_at=flight.lease.expires_at,
                progress=progress,
                cancel_requested=flight.cancel_requested,
            )
        return await self._info(
            mid,
            message,
            _waiting_status(flight.visible_at, now),
            flight.attempt,
            errors=list(flight.errors),
            visible_at=flight.visible_at,
        )

    async def _finished_info(
        self, mid: str, message: Message | None, cursor: Cursor
    ) -> MessageInfo | None:
        address = layout.parse_message_id(mid)
        # The dead letter first, then the redrive record: a redrive completes its
        # record before it deletes the letter, so one of the two is always seen.
        dead = await self.storage.get(layout.dead_key(self.name, mid))
        redriven, result, aside = await asyncio.gather(
            self.storage.get(layout.redriven_key(self.name, mid)),
            self.storage.get(self._result_key(mid)),
            self.storage.get(layout.quarantine_key(self.name, address.shard, address.segment)),
        )
        if redriven is not None:
            key = layout.redriven_key(self.name, mid)
            redrive = decode(redriven.data, RedriveRecord, what="redrive record", key=key)
            if redrive.redriven_to:
                return self._dead_info(redrive.letter, redriven_to=redrive.redriven_to)
        if dead is not None:
            key = layout.dead_key(self.name, mid)
            return self._dead_info(decode(dead.data, DeadLetter, what="dead letter", key=key))
        if result is None and aside is not None:
            self._set_aside(mid, aside.data)
        segment = address.segment
        purged_before = cursor.purged_high_before if segment.is_high else cursor.purged_before
        if not segment.is_timer and segment.seq < purged_before and result is None:
            return None  # purged before it ran
        # Read after the records: the watermark is written before any of them is
        # deleted, so a record found missing because it was collected shows here.
        if await self._collected(address):
            return MessageInfo.expired(mid)
        if message is None:
            return None
        if result is not None:
            key = self._result_key(mid)
            record = decode(result.data, ResultRecord, what="result", key=key)
            return await self._info(
                mid,
                message,
                record.status,
                record.attempts,
                result=await result_of(self.storage, record.result, record.result_blob, mid),
                finished_at=record.completed_at,
                errors=list(record.errors),
                progress=decode_json(record.progress),
            )
        # Done without a side record: it completed on its first attempt.
        return await self._info(mid, message, "completed", 1)

    async def _collected(self, address: layout.MessageAddress) -> bool:
        """Whether the sweeper collected (or is collecting) the message's segment."""
        record, _ = await read_record(self.storage, self.name)
        record = record.of_queue(self.settings)
        return is_collected(record, address.shard, address.segment)

    def _result_key(self, mid: str) -> str:
        return layout.result_key(self.name, mid, by_segment=self.settings.results_by_segment)

    def _set_aside(self, mid: str, data: bytes) -> None:
        """The cursor is past a message of a segment that was set aside: raise
        unless the record shows it had finished before (then it completed)."""
        address = layout.parse_message_id(mid)
        key = layout.quarantine_key(self.name, address.shard, address.segment)
        record = decode(data, QuarantineRecord, what="quarantine record", key=key)
        if not record.lost_unknown and mid not in record.lost:
            return  # it had finished when the segment was set aside
        raise CorruptData(
            f"the status of {mid} cannot be told: its segment {record.key} was set aside "
            f"({record.reason}) and the message is "
            + ("among the lost" if mid in record.lost else "possibly lost (it was never read)"),
            suggestion=f"see: s3queue doctor {self.name}",
            metadata={"key": record.key, "id": mid},
        )

    def _dead_info(self, letter: DeadLetter, redriven_to: str | None = None) -> MessageInfo:
        return MessageInfo(
            id=letter.id,
            status="redriven" if redriven_to else "dead",
            payload=decode_json(letter.payload),
            attempts=letter.attempts,
            max_attempts=letter.max_attempts,
            priority=letter.priority,
            enqueued_at=letter.enqueued_at,
            errors=list(letter.errors),
            finished_at=letter.died_at,
            dedup_key=letter.dedup_key,
            progress=decode_json(letter.progress),
            redriven_to=redriven_to,
        )

    async def stats(self, *, listing: bool = True) -> Stats:
        """Counts by status across all shards (reads every cursor and the unread
        backlog, and lists the dead letters). See :class:`~s3queue.info.Stats`.
        Unreadable objects do not fail it: they are counted out and reported."""
        # Cursors first, then the letters: a letter is written before its message
        # leaves the cursor, so each dead message is seen in one place or both.
        read = await asyncio.gather(
            *(self._shard_stats(k, listing) for k in range(self.settings.shards))
        )
        dead: dict[int, set[str]] = {k: dying for k, (_, dying, _) in enumerate(read)}
        for mid in await self.dead_letter_ids():
            dead.setdefault(layout.parse_message_id(mid).shard, set()).add(mid)
        shards = [dataclasses.replace(shard, dead=len(dead[shard.shard])) for shard, _, _ in read]
        problems = [problem for _, _, found in read for problem in found]
        problems.extend(await self.quarantined())
        return Stats(
            pending=sum(s.pending for s in shards),
            delayed=sum(s.delayed for s in shards),
            processing=sum(s.processing for s in shards),
            completed=sum(s.completed for s in shards),
            dead=sum(s.dead for s in shards),
            cancelled=sum(s.cancelled for s in shards),
            retried=sum(s.retried for s in shards),
            recovered=sum(s.recovered for s in shards),
            shards=shards,
            problems=problems,
        )

    async def quarantined(self) -> list[Problem]:
        """The segments set aside as unreadable, from their records."""
        prefix = layout.quarantine_prefix(self.name)
        entries = [
            e for e in await self.storage.list(prefix) if not layout.is_quarantine_copy(e.key)
        ]
        stored = await asyncio.gather(*(self.storage.get(e.key) for e in entries))
        out = []
        for entry, found in zip(entries, stored, strict=True):
            if found is None:
                continue
            try:
                record = decode(
                    found.data, QuarantineRecord, what="quarantine record", key=entry.key
                )
            except CorruptData as error:
                out.append(Problem(entry.key, error.message))
                continue
            count = "an unknown number of" if record.lost_unknown else str(len(record.lost))
            at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.at))
            out.append(
                Problem(
                    record.key,
                    f"set aside {at} UTC ({record.reason}): {count} unfinished messages lost",
                )
            )
        return out

    async def _shard_stats(
        self, shard: int, listing: bool = True
    ) -> tuple[ShardStats, set[str], list[Problem]]:
        """One shard's counts (``dead`` left 0), the ids its cursor says died whose
        dead letters may not be written yet, and what could not be read."""
        empty = ShardStats(shard, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        try:
            cursor = await self.committers[shard].read()
        except CorruptData as error:
            return empty, set(), [Problem(str(error.metadata.get("key")), error.message)]
        now = self.clock()
        counts = {"pending": 0, "delayed": 0, "processing": 0}
        dying: set[str] = set()
        problems: list[Problem] = []
        for open_segment in cursor.open:
            ref = SegmentRef.parse(open_segment.ref)
            segment = await self._readable(shard, ref, problems)
            if segment is None:
                continue
            for index in unfinished_indices(open_segment):
                mid = layout.message_id(shard, ref, index)
                status = _status(cursor.flights.get(mid), segment.messages[index], now)
                if status == "dead":
                    dying.add(mid)
                elif status is not None:
                    counts[status] += 1
        for ref, segment in await self._backlog(shard, cursor, problems, listing):
            prefix = f"{shard}-{ref}-"
            for index, message in enumerate(segment.messages):
                if prefix + str(index) not in cursor.flights:  # else cancelled before read
                    counts[_waiting_status(message.visible_at, now)] += 1
        stats = dataclasses.replace(
            empty,
            pending=counts["pending"],
            delayed=counts["delayed"],
            processing=counts["processing"],
            completed=cursor.counters.completed,
            cancelled=cursor.counters.cancelled,
            retried=cursor.counters.retried,
            recovered=cursor.counters.recovered,
            window_segments=len(cursor.open),
            cursor_bytes=len(encode(cursor)),
        )
        return stats, dying, problems

    async def _readable(
        self, shard: int, ref: SegmentRef, problems: list[Problem]
    ) -> Segment | None:
        try:
            segment = await self.segments.fetch(shard, ref)
        except CorruptData as error:
            problems.append(Problem(str(error.metadata.get("key")), error.message))
            return None
        if segment is None and await self._still_needed(shard, ref):
            key = ref.key(self.name, shard)
            problems.append(Problem(key, "missing although the cursor still needs it"))
        return segment

    async def _still_needed(self, shard: int, ref: SegmentRef) -> bool:
        """Whether the shard's cursor, read again, still has ``ref`` in its window: a
        purge since the first read deleted the segments it stepped past."""
        cursor = await self.committers[shard].read()
        return any(s.ref == str(ref) for s in cursor.open)

    async def _backlog(
        self, shard: int, cursor: Cursor, problems: list[Problem], listing: bool = True
    ) -> list[tuple[SegmentRef, Segment]]:
        """Segments written but not yet taken into the cursor's window (see
        :meth:`stats` for ``listing``)."""
        unread = (
            await unread_segments(self.storage, self.name, shard, cursor)
            if listing
            else await self._probed(shard, cursor)
        )
        out = []
        for ref in unread:
            try:
                segment = await self.segments.fetch(shard, ref)
            except CorruptData as error:
                problems.append(Problem(str(error.metadata.get("key")), error.message))
                continue
            if segment is not None:
                out.append((ref, segment))
        return out

    async def _probed(self, shard: int, cursor: Cursor) -> list[SegmentRef]:
        """:func:`unread_segments`, listing a lane only when its next segment exists
        (producers write a lane's segments at consecutive numbers), and the timer
        buckets only when the cursor registered one (a producer registers a bucket
        before it writes to it)."""
        refs: list[SegmentRef] = []
        for start in (SegmentRef.log(cursor.next_seq), SegmentRef.high(cursor.next_high)):
            try:
                if await self.segments.fetch(shard, start) is None:
                    continue
            except CorruptData:
                pass  # listed, then counted out as a problem by the caller's read
            prefix = layout.lane_prefix(self.name, shard, start.bucket)
            after = start.key(self.name, shard)
            refs.append(start)
            refs.extend(await _listed(self.storage, self.name, shard, prefix, after))
        if cursor.timers:
            timers = layout.timers_prefix(self.name, shard)
            refs.extend(await _listed(self.storage, self.name, shard, timers))
        return [ref for ref in refs if is_unread(cursor, ref)]

    async def dead_letter_ids(self, limit: int | None = None) -> list[str]:
        entries = await self.storage.list(layout.dead_prefix(self.name), limit=limit)
        return [layout.dead_letter_id(self.name, e.key) for e in entries]

    async def dead_letters(self, limit: int | None = 100) -> list[MessageInfo]:
        """Dead messages with their error history, oldest id first."""
        entries = await self.storage.list(layout.dead_prefix(self.name), limit=limit)
        stored = await asyncio.gather(*(self.storage.get(e.key) for e in entries))
        return [
            self._dead_info(decode(s.data, DeadLetter, what="dead letter", key=e.key))
            for e, s in zip(entries, stored, strict=True)
            if s is not None
        ]


async def list_segments(
    storage: Storage, queue: str, shard: int, cursor: Cursor
) -> list[SegmentRef]:
    """The segments of a shard's log and express lane from the cursor's position on,
    then every timer segment of the shard, seals included (keys s3queue did not
    write are skipped with a warning)."""
    refs: list[SegmentRef] = []
    for start in (SegmentRef.log(cursor.next_seq), SegmentRef.high(cursor.next_high)):
        prefix = layout.lane_prefix(queue, shard, start.bucket)
        last = SegmentRef(start.bucket, start.seq - 1)
        after = last.key(queue, shard) if start.seq > 0 else None
        refs.extend(await _listed(storage, queue, shard, prefix, after))
    refs.extend(await _listed(storage, queue, shard, layout.timers_prefix(queue, shard)))
    return refs


async def all_segments(
    storage: Storage, queue: str, shard: int
) -> list[tuple[SegmentRef, float | None]]:
    """Every segment of a shard in storage, with when it was written: both log lanes
    from their start, then every timer segment, seals included (what a purge covers
    and deletes)."""
    prefixes = [
        layout.lane_prefix(queue, shard, lane) for lane in (layout.LOG_LANE, layout.HIGH_LANE)
    ]
    prefixes.append(layout.timers_prefix(queue, shard))
    out: list[tuple[SegmentRef, float | None]] = []
    for prefix in prefixes:
        for entry in await storage.list(prefix):
            ref = layout.parse_segment_key(queue, shard, entry.key)
            if ref is not None:
                out.append((ref, entry.modified))
    return out


async def unread_segments(
    storage: Storage, queue: str, shard: int, cursor: Cursor
) -> list[SegmentRef]:
    """The segments of a shard written and not yet taken into the cursor's window."""
    written = await list_segments(storage, queue, shard, cursor)
    return [ref for ref in written if is_unread(cursor, ref)]


async def _listed(
    storage: Storage, queue: str, shard: int, prefix: str, start_after: str | None = None
) -> list[SegmentRef]:
    return [
        ref
        for entry in await storage.list(prefix, start_after=start_after)
        if (ref := layout.parse_segment_key(queue, shard, entry.key)) is not None
    ]


def _status(flight: Flight | None, message: Message, now: float) -> Status | None:
    """The status of an unfinished message of the window; None while its records
    are written after it completed."""
    if flight is None:
        return _waiting_status(message.visible_at, now)
    if flight.outcome is not None:
        return "dead" if flight.outcome.status == "dead" else None
    if flight.lease is not None:
        return "processing"
    return _waiting_status(flight.visible_at, now)


def _waiting_status(visible_at: float, now: float) -> Status:
    return "delayed" if visible_at > now else "pending"


def _coverage(cursor: Cursor, mid: str) -> str:
    """Where the cursor stands relative to a message: "open" (in the window, not
    done), "future" (not ingested yet) or "done" (finished)."""
    address = layout.parse_message_id(mid)
    ref = address.segment
    for segment in cursor.open:
        if segment.ref == str(ref):
            return "done" if is_done(segment, address.index) else "open"
    if ref.is_timer:
        next_seq = cursor.timers.get(ref.bucket)
        if next_seq is not None:
            return "done" if ref.seq < next_seq else "future"
        return "done" if ref.bucket < cursor.timers_sealed_before else "future"
    if ref.is_high:
        return "done" if ref.seq < cursor.next_high else "future"
    return "done" if ref.seq < cursor.next_seq else "future"
