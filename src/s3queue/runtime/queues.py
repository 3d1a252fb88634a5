"""The queues one worker pool serves, seen as one: claims go round them, each lease's
operations go to the queue it came from, and idle checks watch all of them.

Invariant: a lease is only ever acked, failed, extended or released through the
queue that leased it (a message id is unique within its queue only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from s3queue.core.cursor import Recovered
from s3queue.errors import ConfigurationError, QueueNotFound
from s3queue.info import Lease
from s3queue.queue import ClaimRound, Queue, Steal
from s3queue.storage import open_storage

log = logging.getLogger("s3queue.worker")


@contextlib.asynccontextmanager
async def open_queues(url: str, names: Sequence[str]) -> AsyncIterator[list[Queue]]:
    """The queues ``names`` at ``url``, opened over one store (one connection pool for
    every queue a pool serves), and closed with it on the way out."""
    storage = open_storage(url)
    opened: list[Queue] = []
    try:
        for name in names:
            opened.append(await Queue.open(storage, name))
        yield opened
    finally:
        try:
            for queue in opened:
                await queue.close()
        finally:
            await storage.close()  # waits for its requests still running


class QueueSet:
    """One or more open queues, served by one pool. Claims start at a different queue
    each round, so a busy queue does not starve the others."""

    def __init__(self, queues: Sequence[Queue]) -> None:
        if not queues:
            raise ConfigurationError("a worker needs a queue", suggestion="pass one or more")
        by_name = {q.name: q for q in queues}
        if len(by_name) != len(queues):
            raise ConfigurationError("a queue is listed twice", suggestion="list each queue once")
        self.queues = list(queues)
        self._by_name = by_name
        self._first = 0
        self._sweeps = -1

    @property
    def primary(self) -> Queue:
        """The first queue: its clock and backoff are the pool's."""
        return self.queues[0]

    @property
    def names(self) -> list[str]:
        return [q.name for q in self.queues]

    def of(self, lease: Lease) -> Queue:
        """The queue that leased ``lease``."""
        queue = self._by_name.get(lease.queue)
        if queue is None:  # acking through another queue would touch another message
            raise ConfigurationError(
                f"lease {lease.id} is of queue {lease.queue!r}, which this pool does not serve",
                suggestion="give a lease back to the worker (or Queue) that claimed it",
            )
        return queue

    def clock(self) -> float:
        return self.primary.clock()

    def on_recovered(self, listener: Callable[[Recovered], Any]) -> None:
        for q in self.queues:
            q.on_recovered(listener)

    def on_enqueued(self, listener: Callable[[list[str]], None]) -> None:
        for q in self.queues:
            q.on_enqueued(listener)

    async def claim_round(
        self,
        want: int,
        visibility_timeout: float,
        *,
        owner: str,
        steal: Steal | None = None,
    ) -> ClaimRound:
        """Up to ``want`` leases from the queues in turn, starting one further along
        each round (see :meth:`Queue.claim_round` for ``steal``)."""
        if len(self.queues) == 1:
            return await self.primary.claim_round(
                want, visibility_timeout, owner=owner, steal=steal
            )
        start, self._first = self._first, (self._first + 1) % len(self.queues)
        leases: list[Lease] = []
        contended = throttled = stolen = False
        for q in [
            self.queues[(start + step) % len(self.queues)] for step in range(len(self.queues))
        ]:
            if len(leases) >= want:
                break
            try:
                got = await q.claim_round(
                    want - len(leases), visibility_timeout, owner=owner, steal=steal
                )
            except QueueNotFound as error:
                self._deleted(q, error)
                continue
            leases.extend(got.leases)
            contended = contended or got.contended
            throttled = throttled or got.throttled
            stolen = stolen or got.stolen
        return ClaimRound(leases, contended, throttled, stolen)

    def _deleted(self, queue: Queue, error: QueueNotFound) -> None:
        """Stop serving a queue that was deleted; raise if it was the last one (the
        worker then stops with this error)."""
        if len(self.queues) == 1 or queue not in self.queues:
            raise error
        log.error("no longer serving queue %r: %s", queue.name, error)
        self.queues.remove(queue)
        self._first %= len(self.queues)

    async def arm_wake(self) -> None:
        queues = list(self.queues)
        armed = await asyncio.gather(*(q.arm_wake() for q in queues), return_exceptions=True)
        for q, outcome in zip(queues, armed, strict=True):
            if isinstance(outcome, QueueNotFound):
                self._deleted(q, outcome)
            elif isinstance(outcome, BaseException):
                raise outcome

    async def wake_changed(self) -> bool:
        """One GET per queue: whether any announced new work."""
        changed = await asyncio.gather(*(q.wake_changed() for q in self.queues))
        return any(changed)

    def next_due(self, after: float = -math.inf, *, quiet: float | None = None) -> float | None:
        dues = [due for q in self.queues if (due := q.next_due(after, quiet=quiet)) is not None]
        return min(dues) if dues else None

    def requests(self) -> int:
        """Storage requests made so far by every queue's store (counted once each)."""
        stores = {id(q.storage): q.storage for q in self.queues}
        return sum(store.counts.total for store in stores.values())

    async def sync_clock(self) -> None:
        for q in self.queues:
            await q.sync_clock()

    async def sweep(self) -> bool:
        """The next request of a sweep over every shard of every queue (see
        :meth:`Queue.sweep`), owned by this process or not: a shard whose owner
        died keeps work nobody announces (its expired leases) until the cluster
        names a new owner, and the idle workers' sweeps are what find it first."""
        self._sweeps += 1
        steps = len(Queue.SWEEP_STEPS)
        places = [(q, shard) for q in self.queues for shard in range(q.settings.shards)]
        q, shard = places[self._sweeps // steps % len(places)]
        try:
            return await q.sweep(shard, Queue.SWEEP_STEPS[self._sweeps % steps])
        except QueueNotFound as error:
            self._deleted(q, error)
            return False
