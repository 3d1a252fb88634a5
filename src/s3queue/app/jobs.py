"""Handles on enqueued tasks: one job, a group of jobs, a chain of steps.

A handle is an id and the app that can look it up, nothing more: it can be made in
any process (``app.job(id)``) and holds no state of its own. Every look-up reads the
store, so what a handle reports is what the store says now. Waiting polls: one look-up
per poll (a GET of the job's shard cursor; the result record once finished), 50 ms
after the first and doubling up to 1 s between polls.

Invariant: a handle reports "completed" and returns a result only for a message the
store reports completed; a dead job raises :class:`~s3queue.errors.JobFailed`, a
cancelled one :class:`~s3queue.errors.JobCancelled`, and a timeout raises
``TimeoutError`` and changes nothing.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from s3queue import sources
from s3queue.core.layout import check_queue_name
from s3queue.errors import ConfigurationError, JobCancelled, JobExpired, JobFailed, JobNotFound
from s3queue.info import MessageInfo
from s3queue.queue import Queue

if TYPE_CHECKING:
    from s3queue.app.loop import LoopThread
    from s3queue.info import CancelOutcome

#: Seconds between the polls of a wait: the first, and the longest.
FIRST_POLL = 0.05
LONGEST_POLL = 1.0


class AppView(Protocol):
    """What a handle needs of the app: its loop and its open queues."""

    @property
    def loop(self) -> LoopThread: ...

    async def queue(self, name: str) -> Queue: ...


def parse_job_id(job_id: str) -> tuple[str, str]:
    """``"queue:message id"`` split in two, checked."""
    queue, colon, message_id = job_id.partition(":") if isinstance(job_id, str) else ("", "", "")
    if not colon or not message_id:
        raise ConfigurationError(
            f"invalid job id {job_id!r}",
            suggestion="a job id is 'queue:message id', as job.id gives it",
        )
    return check_queue_name(queue), message_id


class Job:
    """One task's message. ``id`` is ``"queue:message id"``; ``message_id`` is what
    the ``s3queue`` commands take beside the queue name."""

    def __init__(self, app: AppView, queue: str, message_id: str) -> None:
        self._app = app
        self.queue = queue
        self.message_id = message_id
        #: Where a redriven job went: a redrive enqueues a copy under a new id, and
        #: the handle follows it.
        self._current = message_id

    @property
    def id(self) -> str:
        return f"{self.queue}:{self.message_id}"

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # --- blocking calls and their asyncio twins ----------------------------------------

    def info(self) -> MessageInfo:
        """Everything the store says about the job (see :class:`MessageInfo`)."""
        return self._app.loop.run(self._info())

    async def ainfo(self) -> MessageInfo:
        return await self._app.loop.call(self._info())

    def status(self) -> str:
        """ "pending", "delayed", "processing", "completed", "dead", "cancelled" or
        "expired" (finished longer ago than the queue keeps results)."""
        return self.info().status

    async def astatus(self) -> str:
        return (await self.ainfo()).status

    @property
    def progress(self) -> Any:
        """The last progress value the task recorded (None if none)."""
        return self.info().progress

    async def aprogress(self) -> Any:
        return (await self.ainfo()).progress

    def result(self, timeout: float | None = None) -> Any:
        """Wait until the job finished and return its result; raise JobFailed if it
        died, JobCancelled if it was cancelled, TimeoutError after ``timeout``
        seconds (the job is left alone)."""
        return self._app.loop.run(self._wait(_deadline(timeout)))

    async def wait(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109 - twin of result(timeout)
        """The asyncio twin of :meth:`result`."""
        return await self._app.loop.call(self._wait(_deadline(timeout)))

    def cancel(self) -> CancelOutcome:
        """Cancel the job: a waiting job never runs; a running one is asked to stop
        (an async task is cancelled, a sync one sees ``current_job().cancelled``),
        and ends "cancelled" however its attempt ends. A finished job is left as it
        is, and the outcome says so."""
        return self._app.loop.run(self._cancel())

    async def acancel(self) -> CancelOutcome:
        return await self._app.loop.call(self._cancel())

    # --- on the app's loop -----------------------------------------------------------------

    async def _info(self) -> MessageInfo:
        queue = await self._app.queue(self.queue)
        while True:
            info = await queue.get(self._current)
            if info is None:
                raise JobNotFound(
                    f"no job {self.queue}:{self._current}",
                    suggestion="check the id and the app's URL; a purge deletes every job",
                    metadata={"id": self.id},
                )
            if info.status != "redriven" or info.redriven_to is None:
                return info
            self._current = info.redriven_to

    async def _wait(self, deadline: float) -> Any:
        pause = FIRST_POLL
        while True:
            info = await self._info()
            if info.status == "completed":
                return info.result
            if info.status == "dead":
                raise _failed(self.id, info)
            if info.status == "cancelled":
                raise JobCancelled(f"job {self.id} was cancelled", metadata={"id": self.id})
            if info.status == "expired":
                raise _expired(self.id)
            left = deadline - sources.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {self.id} is still {info.status}")
            await asyncio.sleep(min(pause, left))
            pause = min(LONGEST_POLL, pause * 2)

    async def _cancel(self) -> CancelOutcome:
        queue = await self._app.queue(self.queue)
        (outcome,) = await queue.cancel([self._current])
        return outcome


class GroupJob:
    """The jobs of a group, in the order the group listed them."""

    def __init__(self, app: AppView, jobs: Sequence[Job]) -> None:
        self._app = app
        self.jobs = list(jobs)

    def __repr__(self) -> str:
        return f"GroupJob({len(self.jobs)} jobs)"

    def __len__(self) -> int:
        return len(self.jobs)

    def result(self, timeout: float | None = None) -> list[Any]:
        """Every job's result, in order, once all finished; JobFailed (or
        JobCancelled) for the first job, in order, that did not complete;
        TimeoutError after ``timeout`` seconds in all."""
        return self._app.loop.run(self._wait(_deadline(timeout)))

    async def wait(self, timeout: float | None = None) -> list[Any]:  # noqa: ASYNC109 - twin of result(timeout)
        return await self._app.loop.call(self._wait(_deadline(timeout)))

    def statuses(self) -> list[str]:
        return self._app.loop.run(self._statuses())

    async def astatuses(self) -> list[str]:
        return await self._app.loop.call(self._statuses())

    def cancel(self) -> list[CancelOutcome]:
        """Cancel every job of the group (see :meth:`Job.cancel`)."""
        return self._app.loop.run(self._cancel())

    async def acancel(self) -> list[CancelOutcome]:
        return await self._app.loop.call(self._cancel())

    async def _cancel(self) -> list[CancelOutcome]:
        return [await job._cancel() for job in self.jobs]

    async def _wait(self, deadline: float) -> list[Any]:
        # One job at a time: a poll costs one look-up, and the group is done only
        # when its slowest job is.
        return [await job._wait(deadline) for job in self.jobs]

    async def _statuses(self) -> list[str]:
        return [(await job._info()).status for job in self.jobs]


class ChainJob:
    """A chain's steps: the first is enqueued at once, each next one by the worker
    that completed the step before it (see :mod:`s3queue.app.router`)."""

    def __init__(self, app: AppView, first: Job, queues: Sequence[str]) -> None:
        self._app = app
        self.first = first
        #: The queue of each step, in order.
        self.queues = list(queues)

    @property
    def id(self) -> str:
        """The first step's job id."""
        return self.first.id

    def __repr__(self) -> str:
        return f"ChainJob({self.id!r}, {len(self.queues)} steps)"

    def result(self, timeout: float | None = None) -> Any:
        """The last step's result once it completed; JobFailed (or JobCancelled)
        for the step that stopped the chain; TimeoutError after ``timeout`` s."""
        return self._app.loop.run(self._wait(_deadline(timeout)))

    async def wait(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109 - twin of result(timeout)
        return await self._app.loop.call(self._wait(_deadline(timeout)))

    def jobs(self) -> list[Job]:
        """The steps enqueued so far, in order."""
        return self._app.loop.run(self._jobs())

    async def ajobs(self) -> list[Job]:
        return await self._app.loop.call(self._jobs())

    def cancel(self) -> CancelOutcome:
        """Cancel the chain's furthest step enqueued so far, which stops the chain.
        If that step had just finished ("finished" and its next step enqueued),
        cancel again."""
        return self._app.loop.run(self._cancel())

    async def acancel(self) -> CancelOutcome:
        return await self._app.loop.call(self._cancel())

    async def _cancel(self) -> CancelOutcome:
        return await (await self._jobs())[-1]._cancel()

    async def _wait(self, deadline: float) -> Any:
        job, result = self.first, None
        for index in range(len(self.queues)):
            result = await job._wait(deadline)
            if index + 1 == len(self.queues):
                break
            follower = await self._next(job, index, deadline)
            job = follower
        return result

    async def _next(self, job: Job, index: int, deadline: float) -> Job:
        """The step after ``job`` (completed): its worker linked it before the ack."""
        queue = await self._app.queue(self.queues[index + 1])
        linked = await queue.linked(job.queue, job._current)
        if linked is None:
            raise JobNotFound(
                f"step {index + 2} of chain {self.id} cannot be found: step {index + 1} "
                f"({job.id}) completed without a link to it",
                suggestion="was that step enqueued by hand, or its queue purged?",
                metadata={"id": self.id},
            )
        return Job(self._app, queue.name, linked)

    async def _jobs(self) -> list[Job]:
        jobs = [self.first]
        for index in range(len(self.queues) - 1):
            info = await jobs[-1]._info()
            if info.status != "completed":
                break
            jobs.append(await self._next(jobs[-1], index, math.inf))
        return jobs


def _deadline(timeout: float | None) -> float:
    if timeout is None:
        return math.inf
    if not isinstance(timeout, int | float) or math.isnan(timeout) or timeout < 0:
        raise ConfigurationError(
            f"timeout={timeout!r}", suggestion="a timeout is seconds (0 or more), or None"
        )
    return sources.monotonic() + timeout


def _expired(job_id: str) -> JobExpired:
    queue = job_id.split(":")[0]
    return JobExpired(
        f"job {job_id} finished longer ago than queue {queue!r} keeps results: "
        "its result and status were collected",
        suggestion=f"read results within the queue's result_ttl, or keep them longer: "
        f"s3queue config {queue} --result-ttl 30d",
        metadata={"id": job_id},
    )


def _failed(job_id: str, info: MessageInfo) -> JobFailed:
    last = info.errors[-1] if info.errors else None
    what = f"{last.type}: {last.message}" if last else "no error recorded"
    attempts = f"{info.attempts} attempt{'s' if info.attempts != 1 else ''}"
    return JobFailed(
        f"job {job_id} failed after {attempts}: {what}",
        job_id=job_id,
        errors=list(info.errors),
        suggestion=f"see the traceback of each attempt in JobFailed.errors; "
        f"redrive it once fixed: s3queue redrive {job_id.split(':')[0]}",
    )
