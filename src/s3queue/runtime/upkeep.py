"""The worker's background duty of collection: a sweeper pass per queue now and then.

Every worker runs this loop, but only a queue's coordinator (runtime/cluster.py)
sweeps it, and the sweeper lease (in ``<queue>/sweeper``) still lets one process at a
time do a pass: two coordinators, one deposed and not yet aware, never sweep at
once, and ``s3queue sweep`` by hand takes turns with the worker. A pass may spend at
most 5% of the requests the process made since its last pass. A pass is due when
that share covers a small floor of requests; when the last pass removed something
or stopped at its budget; when a checkpoint it wrote ripens (so a queue that went
idle is collected one TTL after its last message finished, not later); and in any
case every IDLE_PASSES intervals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from s3queue import sources
from s3queue.core.sweep import Budget, SweepReport
from s3queue.errors import QueueError, QueueNotFound
from s3queue.queue import Queue

log = logging.getLogger("s3queue.sweep")

#: The share of the requests a process made since its last pass that the pass may
#: spend: sweeping never costs the queue more than this.
SHARE = 0.05
#: Requests a pass may always spend, whatever the process did meanwhile: the fixed
#: reads of a pass over a few shards, and a few pages of listings and deletions. A
#: pass is due once 5% of the process's requests since the last one reach it...
FLOOR = 64
#: ...or, in a queue too quiet for that, once this many intervals went by: an idle
#: queue is still collected, at a small fraction of its idle polling.
IDLE_PASSES = 10
#: The shortest sweeper lease: well above the skew margin, and long enough for a
#: pass that deletes many thousands of objects (a pass stops when it runs out).
MIN_LEASE = 120.0


class Upkeep:
    """Runs sweeper passes over ``queues`` on behalf of worker ``owner``, for each
    queue only while ``may_sweep(queue name)`` says so (a worker sweeps the queues
    it coordinates)."""

    def __init__(
        self,
        queues: list[Queue],
        owner: str,
        interval: float | None,
        *,
        may_sweep: Callable[[str], bool] | None = None,
    ) -> None:
        self.interval = interval
        self._may_sweep = may_sweep
        self.sweepers = [(q, q.sweeper(owner)) for q in queues]
        #: The process's requests at the end of each queue's last pass.
        self._seen = [q.storage.counts.total for q in queues]
        #: Queues found deleted: not swept any more.
        self._gone: set[int] = set()
        #: Per queue: whether its last pass found work under way (a cursor moved,
        #: something removed, the budget ran out), and when (store time) its next
        #: checkpoint ripens: then a pass is due however idle the process is.
        self._eager = [True for _ in queues]
        self._ripens_at: list[float | None] = [None for _ in queues]
        #: sources.monotonic() of each queue's last pass.
        self._last = [sources.monotonic() for _ in queues]
        self.passes = 0
        self.removed = 0
        #: Requests every pass spent, the lease reads of passes left to a holder too.
        self.requests = 0
        #: Set after every pass this process made (tests and monitors wait on it).
        self.swept = asyncio.Event()

    async def run(self, stopping: asyncio.Event) -> None:
        if self.interval is None:
            return
        interval = self.interval
        try:
            while not stopping.is_set():
                # Jittered, so that workers started together do not read the lease
                # in step.
                pause = interval * sources.uniform(0.8, 1.2)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), pause)
                if stopping.is_set():
                    break
                for index in range(len(self.sweepers)):
                    if self._due(index, interval):
                        # Outlasts the pause between an idle queue's passes, so that
                        # the other workers leave them to the holder (one GET each).
                        lease_for = max(MIN_LEASE, interval * (IDLE_PASSES + 2))
                        await self._pass(index, lease_for=lease_for)
        finally:
            for _, sweeper in self.sweepers:
                with contextlib.suppress(QueueError):
                    await sweeper.release()

    def _due(self, index: int, interval: float) -> bool:
        queue = self.sweepers[index][0]
        if index in self._gone or (self._may_sweep is not None and not self._may_sweep(queue.name)):
            return False
        if self._eager[index]:
            return True
        ripens_at = self._ripens_at[index]
        if ripens_at is not None and queue.clock() >= ripens_at:
            return True
        others = queue.storage.counts.total - self._seen[index]
        idle_for = sources.monotonic() - self._last[index]
        return others * SHARE >= FLOOR or idle_for >= IDLE_PASSES * interval

    async def _pass(self, index: int, *, lease_for: float) -> SweepReport | None:
        queue, sweeper = self.sweepers[index]
        counts = queue.storage.counts
        others = counts.total - self._seen[index]
        allowance = max(FLOOR, int(others * SHARE))
        try:
            report = await sweeper.run(lease_for=lease_for, budget=Budget(allowance))
        except QueueNotFound as error:
            log.error("not sweeping queue %s any more: %s", queue.name, error)
            self._gone.add(index)
            return None
        except QueueError as error:
            log.warning("sweeping queue %s failed, will retry: %s", queue.name, error)
            return None
        finally:
            self._seen[index] = counts.total
            self._last[index] = sources.monotonic()
        # Not on the cursors moving alone: in a lightly loaded queue they move at
        # every pass, and a pass every interval would cost more than its share.
        self._eager[index] = report.held_by is None and (report.total > 0 or not report.complete)
        self._ripens_at[index] = report.ripens_at
        self.requests += report.requests
        if report.held_by is None:
            self.passes += 1
            self.removed += report.total
            self.swept.set()
            if report.total:
                log.info(
                    "swept %s: removed %d objects (%s) in %d requests",
                    queue.name,
                    report.total,
                    ", ".join(f"{n} {k}" for k, n in report.removed.items() if n),
                    report.requests,
                    extra={"queue": queue.name, "removed": report.total},
                )
        return report
