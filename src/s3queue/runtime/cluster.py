"""A worker's place in its cluster: its heartbeat, the shards it owns, and whether it
is the coordinator. The protocols are in :mod:`s3queue.core.registry` (heartbeats,
the coordinator's lease) and :mod:`s3queue.core.ownership` (rendezvous hashing).

Every heartbeat interval (jittered), for each queue it serves, a worker:

1. rewrites its heartbeat object (one PUT);
2. reads the cluster object (one GET) and, as the election says, renews or takes
   the coordinator's lease (a CAS; the holder first lists the live workers and
   reads the backlog, for the snapshot);
3. claims from then on mostly from the shards rendezvous hashing gives it among
   the live workers the cluster object names (itself included).

Idle workers share the polling (:meth:`Cluster.idle_interval`): a cluster of
``pods`` idle workers on ``shards`` shards reads its wake objects about
max(1 / poll_interval, shards / max_poll_interval) times a second in all, each
worker at its own random phase, so the first read after new work comes within
about a second whoever makes it, and the idle cost does not grow with the pods.

Nothing here is needed for correctness: every cursor write is fenced by its CAS.
A worker that cannot reach the store keeps its last view and tries again next
interval; a cluster without a coordinator claims as before (its duties wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from s3queue import sources
from s3queue.core import ownership, registry
from s3queue.core.records import Backlog, ClusterRecord, WorkerBeat
from s3queue.core.registry import Election
from s3queue.errors import QueueError
from s3queue.queue import Queue
from s3queue.runtime.queues import QueueSet
from s3queue.runtime.worker_settings import Polling
from s3queue.version import __version__

log = logging.getLogger("s3queue.cluster")

#: Seconds between a worker's first two steps (then doubled, up to the interval).
SETTLE_FIRST = 1.0
#: Called with ("promoted" | "demoted", queue name, epoch) when this worker becomes
#: or stops being a queue's coordinator.
Listener = Callable[[str, str, int], None]


@dataclass(slots=True)
class Seat:
    """This worker's view of one queue's cluster."""

    queue: Queue
    election: Election
    #: The live workers as the cluster object last named them.
    workers: list[str] = field(default_factory=list)
    coordinator: str | None = None
    epoch: int = 0
    coordinating: bool = False
    #: sources.monotonic() of the coordinator's last count of the backlog (or of
    #: taking the lease, before it counted).
    counted_at: float | None = None
    #: That count, running beside the steps: a deep backlog takes seconds to count,
    #: and neither the lease's renewal nor the news in the record may wait for it.
    counting: asyncio.Task[Backlog | None] | None = None


@dataclass(frozen=True, slots=True)
class Presence:
    """What a heartbeat says of the worker besides its id (filled in by the worker)."""

    concurrency: int
    running: int


class Cluster:
    """Runs worker ``worker_id``'s side of the cluster of every queue of ``queues``."""

    def __init__(
        self,
        queues: QueueSet,
        worker_id: str,
        polling: Polling,
        presence: Callable[[], Presence],
    ) -> None:
        self.queues = queues
        self.worker_id = worker_id
        self.polling = polling
        self._presence = presence
        self.started_at = sources.wall()
        self.seats = {
            q.name: Seat(
                q,
                Election(
                    q.storage,
                    q.name,
                    worker_id,
                    q.clock,
                    ttl=polling.worker_ttl,
                    skew_margin=q.context.rules.skew_margin,
                ),
            )
            for q in queues.queues
        }
        self._listeners: list[Listener] = []
        #: Set after every step (tests and the simulation wait on it).
        self.stepped = asyncio.Event()

    def on_change(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # --- what the worker asks --------------------------------------------------------

    def coordinates(self, queue: str) -> bool:
        """Whether this worker is ``queue``'s coordinator now (its lease runs)."""
        seat = self.seats.get(queue)
        return seat is not None and seat.election.holds()

    def snapshot(self, queue: str) -> ClusterRecord | None:
        """The cluster object of ``queue`` as this worker last read or wrote it."""
        seat = self.seats.get(queue)
        return None if seat is None else seat.election.record

    def owned(self, queue: str) -> int:
        """How many shards of ``queue`` this worker owns (all, before it knows)."""
        seat = self.seats.get(queue)
        if seat is None:
            return 0
        owned = seat.queue.owned
        return seat.queue.settings.shards if owned is None else len(owned)

    @property
    def workers(self) -> int:
        """Live workers of the first queue served, this one included."""
        seat = self.seats[self.queues.primary.name]
        return len({*seat.workers, self.worker_id})

    def idle_interval(self) -> float:
        """The wait between two idle checks of this worker once it has been idle a
        while: the cluster's idle workers together check about max(1 / poll_interval,
        shards / max_poll_interval) times a second (never less often than each
        shard once per max_poll_interval, never more than once per poll_interval
        each)."""
        polling = self.polling
        shards = sum(q.settings.shards for q in self.queues.queues)
        rate = max(1.0 / polling.poll_interval, shards / polling.max_poll_interval)
        return max(polling.poll_interval, self.workers / rate)

    # --- running ---------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Step every interval (jittered) until ``stopping``; then leave: delete the
        heartbeats and give up any coordinator's lease, so the others need not wait
        for them to expire."""
        interval = self.polling.heartbeat_interval
        # Settling: workers started together (a deployment, a test) list each other
        # at once, then again 1, 2, 4... seconds later, until the steps are an
        # interval apart: ownership is right within seconds of a start, not only
        # after the coordinator's next renewal.
        settle = SETTLE_FIRST
        try:
            while not stopping.is_set():
                await self.step(listing=settle < interval)
                pause = min(settle, interval) * sources.uniform(0.9, 1.0)
                settle *= 2
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), pause)
        finally:
            await self.leave()

    async def step(self, *, listing: bool = False) -> None:
        """One heartbeat, election step and ownership update per queue served; with
        ``listing``, the live workers are listed too rather than only read from the
        cluster object (one LIST more)."""
        for seat in list(self.seats.values()):
            if seat.queue not in self.queues.queues:
                continue  # found deleted: the worker stopped serving it
            try:
                await self._step(seat, listing=listing)
            except QueueError as error:
                log.warning(
                    "cluster step for queue %s failed, will retry: %s", seat.queue.name, error
                )
            self._changed(seat)
        self.stepped.set()

    async def _step(self, seat: Seat, *, listing: bool) -> None:
        queue = seat.queue
        presence = self._presence()
        await registry.beat(
            queue.storage,
            queue.name,
            WorkerBeat(
                id=self.worker_id,
                host=socket.gethostname(),
                pid=os.getpid(),
                queues=self.queues.names,
                concurrency=presence.concurrency,
                running=presence.running,
                version=__version__,
                started_at=self.started_at,
                last_seen=queue.clock(),
                interval=self.polling.heartbeat_interval,
            ),
            clock=queue.store_clock,
        )
        record = await seat.election.step(lambda: self._survey(seat))
        if record is not None and record.revision > queue.settings.revision:
            await queue.reload()  # a reshard: claim from the new shards from now on
        if record is not None:
            seat.workers, seat.coordinator, seat.epoch = record.workers, record.holder, record.epoch
            if record.expires_at + queue.context.rules.skew_margin < queue.clock():
                seat.coordinator = None  # its lease ran out: none until one takes it
        if listing and not seat.election.holds():  # the holder just listed them
            ttl = self.polling.worker_ttl
            listed = await registry.live(queue.storage, queue.name, queue.clock(), ttl)
            seat.workers = sorted({*seat.workers, *listed})
        settings = queue.settings
        owned = ownership.owned(
            queue.name,
            settings.shards,
            seat.workers,
            self.worker_id,
            grown_from=settings.grown_from,
        )
        queue.own(owned)

    async def _survey(self, seat: Seat) -> registry.Survey:
        """What the coordinator puts in the snapshot: the live workers (a LIST), the
        revision of queue.json (a GET: how every worker learns of a reshard) and the
        backlog as last counted, if a count finished since the last renewal."""
        queue = seat.queue
        ttl = self.polling.worker_ttl
        workers = await registry.live(queue.storage, queue.name, queue.clock(), ttl, forget=True)
        await queue.reload()
        backlog = self._counted(seat)
        self._count_if_due(seat)
        return registry.Survey(workers, backlog, queue.settings.revision)

    def _count_if_due(self, seat: Seat) -> None:
        """Start counting the backlog (the cursors and the segments not yet taken
        in; see :meth:`Queue.stats`) once a heartbeat interval, the first count an
        interval after taking the lease, so that neither settling steps nor a
        short run pay for reading a deep backlog."""
        now = sources.monotonic()
        if seat.counted_at is None or not seat.coordinating:
            seat.counted_at = now  # just took it: count an interval from now
            return
        if (
            seat.counting is not None
            or now - seat.counted_at < self.polling.heartbeat_interval * 0.9
        ):
            return
        seat.counted_at = now
        seat.counting = asyncio.create_task(self._count(seat.queue), name="s3queue-count")

    @staticmethod
    async def _count(queue: Queue) -> Backlog | None:
        at = queue.clock()
        try:
            stats = await queue.stats(listing=False)
        except QueueError as error:
            log.warning("cluster snapshot of %s without a backlog: %s", queue.name, error)
            return None
        return Backlog(
            pending=stats.pending,
            delayed=stats.delayed,
            processing=stats.processing,
            dead=stats.dead,
            at=at,
        )

    @staticmethod
    def _counted(seat: Seat) -> Backlog | None:
        """The count that finished since the last renewal, taken once; None (the
        record's stays) while one runs, or if it failed: not guessed."""
        task = seat.counting
        if task is None or not task.done():
            return None
        seat.counting = None
        return None if task.cancelled() else task.result()

    def _changed(self, seat: Seat) -> None:
        holds = seat.election.holds()
        if holds == seat.coordinating:
            return
        seat.coordinating = holds
        if not holds and seat.counting is not None:
            seat.counting.cancel()  # another counts now
            seat.counting = None
        change = "promoted" if holds else "demoted"
        log.info(
            "coordinator of %s: %s (epoch %d)",
            seat.queue.name,
            change,
            seat.epoch,
            extra={"queue": seat.queue.name, "epoch": seat.epoch},
        )
        for listener in self._listeners:
            listener(change, seat.queue.name, seat.epoch)

    async def leave(self) -> None:
        for seat in self.seats.values():
            queue = seat.queue
            with contextlib.suppress(QueueError):
                await seat.election.release()
            with contextlib.suppress(QueueError):
                await registry.leave(queue.storage, queue.name, self.worker_id)
            self._changed(seat)


__all__ = ["Cluster", "Presence", "Seat"]
