"""Periodic jobs: enqueue a payload on a cron schedule, once per tick, from any number
of workers, with no coordinator.

Every worker that runs a schedule wakes at each tick and enqueues the payload with
the dedup key ``cron:<name>:<tick>``. Dedup keys are created with create-if-absent,
so however many workers race, one message per tick enters the queue. To keep the
race cheap, each worker first waits a random moment (up to ``CRON_JITTER`` seconds)
and looks whether the tick's marker already exists (a GET); only when it does not
does it try to enqueue (PUTs). Ticks while no worker runs are skipped, as cron does.

Schedules are in UTC: five cron fields (minute hour day month weekday), or six with
seconds last (croniter's convention), e.g. ``*/5 * * * *`` or ``* * * * * */10``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from croniter import croniter

from s3queue import limits, sources
from s3queue.core import layout
from s3queue.core.records import MAX_PAYLOAD_BYTES
from s3queue.errors import ConfigurationError, PayloadError, QueueError
from s3queue.payload import encode_json
from s3queue.queue import Queue

log = logging.getLogger("s3queue.cron")

#: Workers spread their look at a tick over this many seconds.
CRON_JITTER = 1.0


@dataclass(frozen=True)
class Cron:
    """Enqueue ``payload`` at every tick of ``schedule`` (UTC)."""

    schedule: str
    payload: Any = None
    #: Names the schedule in dedup keys: two schedules with one name share ticks.
    name: str = ""
    priority: int = 0
    _fields: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.schedule, str) or not croniter.is_valid(self.schedule):
            raise ConfigurationError(
                f"invalid cron schedule {self.schedule!r}",
                suggestion="five fields, minute hour day month weekday (e.g. '*/5 * * * *'), "
                "or six with seconds last (e.g. '* * * * * */10')",
            )
        what = f"the payload of cron {self.schedule!r}"
        try:
            encode_json(self.payload, limit=MAX_PAYLOAD_BYTES, what=what)
        except PayloadError as error:
            # Refused now, not at every tick: a tick's enqueue only logs its failure.
            raise ConfigurationError(error.message, suggestion=error.suggestion) from error
        object.__setattr__(self, "priority", limits.PRIORITY.check(self.priority, "priority"))
        if not self.name:
            object.__setattr__(self, "name", self.schedule.replace(" ", "_"))

    def next_tick(self, after: float) -> float:
        """The first tick strictly after ``after`` (a Unix time)."""
        return float(croniter(self.schedule, after).get_next(float))

    def dedup_key(self, tick: float) -> str:
        return f"cron:{self.name}:{int(tick)}"


class Scheduler:
    """Runs the schedules of one worker until ``stop`` is set."""

    def __init__(self, queue: Queue, crons: list[Cron]) -> None:
        self.queue = queue
        self.crons = list(crons)

    async def run(self, stop: asyncio.Event) -> None:
        if not self.crons:
            return
        now = self.queue.clock()
        due = {index: cron.next_tick(now) for index, cron in enumerate(self.crons)}
        while not stop.is_set():
            tick = min(due.values())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, tick - self.queue.clock()))
            if stop.is_set():
                return
            if self.queue.clock() < tick:
                continue  # woke early (clock adjusted): wait again
            fired = [i for i, at in due.items() if at <= tick]
            await asyncio.gather(*(self._fire(self.crons[i], due[i]) for i in fired))
            now = self.queue.clock()
            for i in fired:
                due[i] = self.crons[i].next_tick(max(now, due[i]))

    async def _fire(self, cron: Cron, tick: float) -> None:
        key = cron.dedup_key(tick)
        await asyncio.sleep(sources.uniform(0, CRON_JITTER))
        try:
            marker = layout.dedup_key(self.queue.name, key)
            if await self.queue.storage.get(marker) is not None:
                return  # another worker enqueued this tick
            await self.queue.enqueue(cron.payload, dedup_key=key, priority=cron.priority)
        except QueueError as error:
            # The next tick tries again; a missed tick is what cron does too.
            log.warning("cron %s could not enqueue its tick %s: %s", cron.name, int(tick), error)


def parse_cron(text: str) -> Cron:
    """``'<schedule> <JSON payload>'``, the form of ``s3queue worker --cron``: the
    schedule is the first six fields if they are a valid schedule and the rest is
    JSON, else the first five."""
    parts = text.split()
    for fields in (6, 5):
        schedule = " ".join(parts[:fields])
        rest = text.split(None, fields)[fields] if len(parts) > fields else "null"
        if len(parts) < fields or not croniter.is_valid(schedule):
            continue
        try:
            payload = json.loads(rest)
        except (ValueError, RecursionError):
            continue
        try:
            return Cron(schedule, payload)
        except ConfigurationError as error:
            raise ConfigurationError(
                f"--cron {text!r}: {error.message}", suggestion=error.suggestion
            ) from error
    raise ConfigurationError(
        f"--cron {text!r} is not '<schedule> <JSON payload>'",
        suggestion='e.g. --cron \'*/5 * * * * {"task": "report"}\' (UTC)',
    )
