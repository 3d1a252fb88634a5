"""Redrive: dead letters go back into the queue as new messages, and the old id
remembers where its copy went.

Invariant: a dead letter is deleted only after its copy is durable and its
``redriven/<id>`` record names the copy, so at every instant ``get(old id)`` says
either "dead" or "redriven" (with the new id), never a status it does not have. The
record is reserved with create-if-absent before the copy is written, so two
redrives of one letter enqueue it once. A redrive that dies between writing the
copy and completing the record leaves a reservation; after
``RESERVATION_TIMEOUT`` another redrive takes it over and enqueues the letter again
(at-least-once, as everywhere else).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from s3queue import sources
from s3queue.core import layout
from s3queue.core.producer import Producer
from s3queue.core.records import DeadLetter, RedriveRecord, decode, encode
from s3queue.core.segment import Message
from s3queue.errors import PreconditionFailed, QueueError
from s3queue.storage import Storage, UpdateVersion

#: A reservation older than this belongs to a redrive that died; it may be taken over.
RESERVATION_TIMEOUT = 60.0
#: Dead letters read, copied and deleted together.
BATCH = 500


class NotDeadLetter(QueueError):
    """``redrive`` was given an id that is not a dead letter; nothing was redriven."""

    default_retriable = False


@dataclass
class _Claim:
    """A dead letter this redrive may copy (``etag`` of its reservation), or one that
    another redrive already copied (``redriven_to``)."""

    letter: DeadLetter
    etag: str | None = None
    record: RedriveRecord | None = None
    redriven_to: str = ""


class Redrive:
    def __init__(
        self, storage: Storage, queue: str, producer: Producer, clock: Callable[[], float]
    ) -> None:
        self.storage = storage
        self.queue = queue
        self.producer = producer
        self.clock = clock

    async def run(self, ids: list[str] | None) -> list[str]:
        """The new ids, in the order of ``ids`` (all dead letters, oldest id first,
        when None)."""
        if ids is None:
            entries = await self.storage.list(layout.dead_prefix(self.queue))
            ids = [layout.dead_letter_id(self.queue, e.key) for e in entries]
        canonical = [str(layout.parse_message_id(mid)) for mid in ids]
        letters = await self._letters(list(dict.fromkeys(canonical)))
        moved: dict[str, str] = {}
        for start in range(0, len(letters), BATCH):
            moved.update(await self._batch(letters[start : start + BATCH]))
        return [moved[mid] for mid in canonical]

    async def _letters(self, ids: list[str]) -> list[DeadLetter]:
        """Every dead letter named, or NotDeadLetter naming those that are not."""
        letters: list[DeadLetter] = []
        missing: list[str] = []
        for start in range(0, len(ids), BATCH):
            batch = ids[start : start + BATCH]
            stored = await asyncio.gather(
                *(self.storage.get(layout.dead_key(self.queue, mid)) for mid in batch)
            )
            for mid, found in zip(batch, stored, strict=True):
                if found is None:
                    missing.append(mid)
                else:
                    key = layout.dead_key(self.queue, mid)
                    letters.append(decode(found.data, DeadLetter, what="dead letter", key=key))
        if missing:
            raise await self._not_dead(missing)
        return letters

    async def _not_dead(self, missing: list[str]) -> NotDeadLetter:
        record = await self._record(missing[0])
        where = (
            f"it was already redriven to {record.redriven_to}"
            if record is not None and record.redriven_to
            else "no dead letter has that id"
        )
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        return NotDeadLetter(
            f"{missing[0]}{more} is not a dead letter of queue {self.queue!r}: {where}; "
            "nothing was redriven",
            suggestion="list dead letters with: s3queue dead " + self.queue,
            metadata={"ids": missing},
        )

    async def _record(self, mid: str) -> RedriveRecord | None:
        key = layout.redriven_key(self.queue, mid)
        stored = await self.storage.get(key)
        if stored is None:
            return None
        return decode(stored.data, RedriveRecord, what="redrive record", key=key)

    async def _batch(self, letters: list[DeadLetter]) -> dict[str, str]:
        claims = await asyncio.gather(*(self._reserve(letter) for letter in letters))
        mine = [c for c in claims if c.etag is not None]
        now = self.clock()
        copies = [
            Message(
                payload=c.letter.payload,
                enqueued_at=now,
                visible_at=0.0,
                priority=c.letter.priority,
                max_attempts=c.letter.max_attempts,
                rate_key=c.letter.rate_key,
            )
            for c in mine
        ]
        new_ids = await self.producer.write(copies) if copies else []
        await asyncio.gather(
            *(self._complete(c, new_id, now) for c, new_id in zip(mine, new_ids, strict=True))
        )
        # Deleted only once the record names the copy: until then the old id is "dead".
        await asyncio.gather(
            *(self.storage.delete(layout.dead_key(self.queue, c.letter.id)) for c in claims)
        )
        return {c.letter.id: c.redriven_to for c in claims}

    async def _reserve(self, letter: DeadLetter) -> _Claim:
        key = layout.redriven_key(self.queue, letter.id)
        record = RedriveRecord(letter=letter, nonce=sources.token_hex(8), reserved_at=self.clock())
        try:
            etag = await self.storage.put(key, encode(record), mode="create")
            return _Claim(letter, etag, record)
        except PreconditionFailed:
            pass
        stored = await self.storage.get(key)
        if stored is None:  # deleted (a purge) since: try once more from scratch
            return await self._reserve(letter)
        existing = decode(stored.data, RedriveRecord, what="redrive record", key=key)
        if existing.redriven_to:
            # An earlier redrive copied it and died before deleting the letter.
            return _Claim(letter, redriven_to=existing.redriven_to)
        if existing.reserved_at + RESERVATION_TIMEOUT > self.clock():
            raise QueueError(
                f"dead letter {letter.id} is being redriven by another process",
                suggestion=f"try again in {RESERVATION_TIMEOUT:.0f} s, or list it with "
                f"s3queue inspect {self.queue} {letter.id}",
            )
        etag = await self.storage.put(key, encode(record), mode=UpdateVersion(stored.etag))
        return _Claim(letter, etag, record)

    async def _complete(self, claim: _Claim, new_id: str, now: float) -> None:
        assert claim.record is not None
        assert claim.etag is not None
        done = msgspec.structs.replace(claim.record, redriven_to=new_id, redriven_at=now)
        await self.storage.put(
            layout.redriven_key(self.queue, claim.letter.id),
            encode(done),
            mode=UpdateVersion(claim.etag),
        )
        claim.redriven_to = new_id
