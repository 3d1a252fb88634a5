"""Who serves a queue (heartbeats) and who coordinates it (one leased object).

**Heartbeats.** Each worker process rewrites ``workers/<id>`` every heartbeat
interval and deletes it when it stops. A worker whose object the store has not
written for ``ttl`` seconds (by the store's own clock: the Last-Modified a listing
carries) is dead. Reading the live set is one LIST, which only the coordinator
makes: it puts the list in the cluster object, which every worker GETs once per
interval (a GET costs an eighth of a LIST).

**The cluster object** (``cluster``, :class:`~s3queue.core.records.ClusterRecord`)
is the coordinator's lease and the cluster snapshot at once, rewritten only by
compare-and-swap (If-Match on the ETag read, If-None-Match to create it):

- its holder renews it every interval with the live set and the backlog; a CAS
  that fails means another worker took it (the holder is demoted at once);
- any worker that reads it expired (``expires_at`` plus the skew margin is past,
  by the store's clock) takes it, with ``epoch`` one higher; of several trying at
  once one CAS wins and the others read the winner next interval;
- a holder that stops gracefully writes it expired, so the next reader takes it.

Every coordinator action is fenced by its epoch: the holder acts only while its
lease runs (minus the skew margin) and after writing it, and a deposed holder's
next write fails its CAS. A write whose answer was lost is recognised by its
``token`` at the next read. Nothing else rests on the lease: claims, acks and
ownership go on without a coordinator; its duties (sweeps, the snapshot) wait.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec

from s3queue import sources
from s3queue.core import layout
from s3queue.core.clock import Clock, StoreClock
from s3queue.core.records import Backlog, ClusterRecord, WorkerBeat, decode, encode
from s3queue.errors import CorruptData, PreconditionFailed
from s3queue.storage import Storage
from s3queue.storage.base import UpdateVersion

log = logging.getLogger("s3queue.cluster")


async def beat(
    storage: Storage, queue: str, record: WorkerBeat, *, clock: StoreClock | None = None
) -> None:
    """Write (or rewrite) the heartbeat of ``record.id``: one PUT. When ``clock``
    is due for a measurement before the next heartbeat, the heartbeat is its
    sample (a GET more), so that no process of a cluster writes the clock object."""
    key, data = layout.worker_key(queue, record.id), encode(record)
    if clock is not None and clock.due_within(record.interval):
        await clock.measure_on(storage, key, data)
    else:
        await storage.put(key, data)


async def leave(storage: Storage, queue: str, worker_id: str) -> None:
    await storage.delete(layout.worker_key(queue, worker_id))


#: A heartbeat the store has not rewritten for this many TTLs (and at least
#: FORGET_AFTER_MIN seconds) names a worker killed without a graceful stop: the
#: coordinator deletes it, so that pods coming and going do not grow the listing.
FORGET_AFTER_TTLS = 20
FORGET_AFTER_MIN = 3600.0


async def live(
    storage: Storage, queue: str, now: float, ttl: float, *, forget: bool = False
) -> list[str]:
    """The ids of the workers whose heartbeat the store wrote less than ``ttl``
    seconds before ``now`` (store time): one LIST. A store that does not say when
    it wrote an object keeps every listed worker alive until it leaves. With
    ``forget`` (the coordinator), heartbeats long dead are deleted too."""
    out, stale = [], []
    forget_before = now - max(FORGET_AFTER_TTLS * ttl, FORGET_AFTER_MIN)
    for entry in await storage.list(layout.workers_prefix(queue)):
        worker = layout.worker_of(queue, entry.key)
        if worker is None:
            continue
        if entry.modified is None or entry.modified >= now - ttl:
            out.append(worker)
        elif entry.modified < forget_before:
            stale.append(entry.key)
    if forget and stale:
        log.info("deleting %d heartbeats of workers gone for good: %s", len(stale), stale[:5])
        await storage.delete_many(stale)
    return out


@dataclass(frozen=True, slots=True)
class Member:
    """A heartbeat as ``s3queue workers`` shows it."""

    beat: WorkerBeat | None
    key: str
    #: When the store last wrote it (its clock), None if it cannot say.
    modified: float | None
    #: Why the object could not be read, when it could not.
    problem: str | None = None


async def members(storage: Storage, queue: str, *, details: int | None = None) -> list[Member]:
    """Every heartbeat under ``queue``, live or not (the caller judges by
    ``modified``): a LIST, and a GET each for the
    first ``details`` (all with None; the others come back with ``beat`` None and
    no problem: listed, not read). A corrupt one is reported, not raised: it names
    a worker that cannot be seen."""
    entries = [
        e
        for e in await storage.list(layout.workers_prefix(queue))
        if layout.worker_of(queue, e.key) is not None
    ]
    read = entries if details is None else entries[:details]
    stored = dict(zip(read, await asyncio.gather(*(storage.get(e.key) for e in read)), strict=True))
    out = []
    for entry in entries:
        if entry not in stored:
            out.append(Member(None, entry.key, entry.modified))
            continue
        found = stored[entry]
        if found is None:  # left between the listing and the read
            continue
        try:
            record = decode(found.data, WorkerBeat, what="worker heartbeat", key=entry.key)
        except CorruptData as error:
            out.append(Member(None, entry.key, entry.modified, error.message))
            continue
        out.append(Member(record, entry.key, entry.modified))
    return out


async def read_cluster(storage: Storage, queue: str) -> tuple[ClusterRecord | None, str | None]:
    """The cluster object of ``queue`` and its ETag; (None, None) when there is none."""
    key = layout.cluster_key(queue)
    stored = await storage.get(key)
    if stored is None:
        return None, None
    return decode(stored.data, ClusterRecord, what="cluster record", key=key), stored.etag


@dataclass(frozen=True, slots=True)
class Survey:
    """What the holder puts in the snapshot when it renews."""

    workers: list[str]
    #: None: counted no backlog this time (the record's stays).
    backlog: Backlog | None = None
    #: The revision of queue.json it read (0: none read; the record's stays).
    revision: int = 0


#: Makes the holder's survey, called only when it writes the record.
Surveyor = Callable[[], Awaitable[Survey]]


def notice(record: ClusterRecord | None) -> float:
    """How long after queue.json changes every live worker has read it: the holder
    reads it when it renews (once an interval), every worker sees the new revision
    in the record at its next step (once an interval). Two intervals, and steps
    take time (each serves the worker's queues in turn, over a store that may be
    slow): the lease's ttl, three intervals. Without a record no worker has run in
    a cluster yet: none."""
    return 0.0 if record is None else record.ttl


class Election:
    """One worker's side of the coordinator's lease on one queue."""

    def __init__(
        self,
        storage: Storage,
        queue: str,
        worker_id: str,
        clock: Clock,
        *,
        ttl: float,
        skew_margin: float,
    ) -> None:
        self.storage, self.queue, self.worker_id = storage, queue, worker_id
        self.clock, self.ttl, self.skew_margin = clock, ttl, skew_margin
        self.key = layout.cluster_key(queue)
        #: The cluster object as last read or written (None before, or if none).
        self.record: ClusterRecord | None = None
        #: The epoch this worker holds, None when it holds none.
        self.epoch: int | None = None
        self._token = ""

    def holds(self) -> bool:
        """Whether this worker may act as coordinator now: it holds the lease and
        the lease runs for longer than the skew margin by its clock."""
        record = self.record
        return (
            self.epoch is not None
            and record is not None
            and record.epoch == self.epoch
            and self.clock() < record.expires_at - self.skew_margin
        )

    async def step(self, survey: Surveyor) -> ClusterRecord | None:
        """Read the lease; renew it if held, take it if expired (with ``survey``'s
        live set and backlog in the snapshot). Returns the record as it now stands.
        Raises what the store raised: the caller steps again next interval."""
        record, etag = await read_cluster(self.storage, self.queue)
        self.record = record
        if record is not None and record.holder == self.worker_id and record.token == self._token:
            self.epoch = record.epoch  # our write, even one whose answer was lost
        elif self.epoch is not None:
            self.epoch = None  # another took it (or it was released and re-taken)
        now = self.clock()
        if self.epoch is not None:
            return await self._write(record, etag, self.epoch, survey)
        if record is None or now > record.expires_at + self.skew_margin:
            epoch = (record.epoch if record is not None else 0) + 1
            return await self._write(record, etag, epoch, survey)
        return record

    async def _write(
        self, record: ClusterRecord | None, etag: str | None, epoch: int, survey: Surveyor
    ) -> ClusterRecord | None:
        seen = await survey()
        backlog = seen.backlog if seen.backlog is not None else record.backlog if record else None
        now = self.clock()
        token = sources.token_hex(8)
        written = ClusterRecord(
            epoch=epoch,
            holder=self.worker_id,
            token=token,
            expires_at=now + self.ttl,
            at=now,
            ttl=self.ttl,
            workers=sorted(seen.workers),
            backlog=backlog,
            revision=seen.revision or (record.revision if record else 0),
        )
        self._token = token
        try:
            await self.storage.put(
                self.key, encode(written), mode="create" if etag is None else UpdateVersion(etag)
            )
        except PreconditionFailed:
            # Another worker wrote it first (or the answer was lost: the next read
            # tells by the token). Not the holder until then.
            self.epoch = None
            return record
        self.record, self.epoch = written, epoch
        return written

    async def release(self) -> None:
        """Give the lease up (a worker stopping): written expired, so the next worker
        that reads it takes it at once. Nothing happens if it is not held."""
        record, etag = await read_cluster(self.storage, self.queue)
        if record is None or etag is None or self.epoch is None or record.epoch != self.epoch:
            return
        if record.holder != self.worker_id:
            return
        released = msgspec.structs.replace(record, expires_at=0.0, token="")
        self.epoch = None
        try:
            await self.storage.put(self.key, encode(released), mode=UpdateVersion(etag))
        except PreconditionFailed:
            return


__all__ = [
    "Election",
    "Member",
    "Survey",
    "Surveyor",
    "beat",
    "leave",
    "live",
    "members",
    "notice",
    "read_cluster",
]
