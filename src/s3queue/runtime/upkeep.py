"""The worker's background duty of collection: a sweeper pass per queue now and then.

Every worker runs this loop, but the sweeper lease (in ``<queue>/sweeper``) lets one
process at a time do a queue's pass; the others only read the lease (one GET per
interval) and take over when its holder stops renewing it. A pass may spend at
most ``share`` of the requests the process made since its last pass (never less
than a small floor, so that an idle queue is still collected).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from s3queue.core.sweep import Budget, SweepReport
from s3queue.errors import QueueError
from s3queue.queue import Queue

log = logging.getLogger("s3queue.sweep")

#: The share of the requests a process made since its last pass that the pass may
#: spend: sweeping never costs the queue more than this.
SHARE = 0.05
#: Requests a pass may always spend, whatever the process did meanwhile: the fixed
#: reads of a pass over a few shards, and a few pages of listings and deletions.
FLOOR = 64


class Upkeep:
    """Runs sweeper passes over ``queues`` on behalf of worker ``owner``."""

    def __init__(self, queues: list[Queue], owner: str, interval: float | None) -> None:
        self.interval = interval
        self.sweepers = [(q, q.sweeper(owner)) for q in queues]
        #: The process's requests at the end of each queue's last pass.
        self._seen = [q.storage.counts.total for q in queues]
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
                pause = interval * random.uniform(0.8, 1.2)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), pause)
                if stopping.is_set():
                    break
                for index in range(len(self.sweepers)):
                    await self._pass(index, lease_for=interval * 3)
        finally:
            for _, sweeper in self.sweepers:
                with contextlib.suppress(QueueError):
                    await sweeper.release()

    async def _pass(self, index: int, *, lease_for: float) -> SweepReport | None:
        queue, sweeper = self.sweepers[index]
        counts = queue.storage.counts
        others = counts.total - self._seen[index]
        allowance = max(FLOOR, int(others * SHARE))
        try:
            report = await sweeper.run(lease_for=lease_for, budget=Budget(allowance))
        except QueueError as error:
            log.warning("sweeping queue %s failed, will retry: %s", queue.name, error)
            return None
        finally:
            self._seen[index] = counts.total
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
