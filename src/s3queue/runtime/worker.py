"""The worker pool: claims messages, runs handlers, acks, retries, dead-letters.

One asyncio task claims (in batches, with adaptive polling), one keeps the leases
of running and buffered jobs alive, and each job runs as its own task; sync
handlers run in a bounded thread pool. Invariant: every lease this worker claims
ends in exactly one of ack, fail, release, or expiry (if the process dies), so a
message is never left held by a worker that is not working on it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import inspect
import logging
import math
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from s3queue import limits, sources
from s3queue.core import layout
from s3queue.core.cursor import Recovered
from s3queue.errors import ConfigurationError, JobTimeout, LeaseLost, PayloadError, QueueError
from s3queue.info import Lease
from s3queue.queue import ClaimRound, Queue, Steal
from s3queue.runtime.cluster import Cluster, Presence
from s3queue.runtime.cron import Cron, Scheduler
from s3queue.runtime.pacing import MAX_PREFETCH_FACTOR as MAX_PREFETCH_FACTOR  # its old home
from s3queue.runtime.pacing import Pacing
from s3queue.runtime.queues import QueueSet
from s3queue.runtime.routes import Handler, OneHandler, Route, Router
from s3queue.runtime.upkeep import Upkeep
from s3queue.runtime.worker_log import LEVELS, log_banner, log_job, log_stopped
from s3queue.runtime.worker_settings import Leases, Polling, Scaling

log = logging.getLogger("s3queue.worker")

#: Every this many quiet idle checks, one request of a sweep (a shard's cursor, log
#: or express lane) is made instead of reading the wake object; spread one request
#: at a time so that the wake object is never left unread for long.
SWEEP_EVERY = 5
#: Seconds an ack or failure may wait for this worker's next claim on the same shard,
#: to share its cursor write. A finished job's lease stays covered by the heartbeat,
#: so waiting risks nothing; the next claim usually comes much sooner.
ACK_LINGER = 0.1
#: Work that waited this many poll intervals in a shard another worker owns may be
#: taken by a worker with a free slot: its owner is busy or gone. Two: an owner at
#: work checks its shards every poll interval at most, so work this old is not
#: about to be taken.
STEAL_AFTER_POLLS = 2
#: A worker that finds no waiting work to steal looks again later each time, up to
#: this many max_poll_intervals apart.
STEAL_BACKOFF = 4
#: Idle checks since its last work before a worker counts as idling (its checks
#: spaced out): news it then hears may be taken from any shard at once.
QUIET_CHECKS = 2

EventName = Literal[
    "enqueued",
    "claimed",
    "processing",
    "completed",
    "retry",
    "dead",
    "cancelled",
    "recovered",
    "lease_lost",
    "workers_started",
    "workers_stopped",
    "coordinator_promoted",
    "coordinator_demoted",
]
EVENTS: tuple[EventName, ...] = get_args(EventName)


@dataclass(frozen=True, slots=True)
class WorkerEvent:
    """What happened, to which message, with what a dashboard shows."""

    name: EventName
    worker_id: str
    at: float
    message_id: str | None = None
    attempt: int | None = None
    #: The attempts the message may have in all (None when not known: ``recovered``).
    max_attempts: int | None = None
    #: Seconds the handler ran (completed, retry, dead, cancelled), not counting the
    #: ack or failure written after it.
    duration: float | None = None
    error: str | None = None
    next_visible_at: float | None = None
    result: Any = None
    count: int | None = None
    #: ``recovered``: the expired lease was the message's last attempt, so taking it
    #: back dead-lettered it.
    dead: bool = False
    #: What ran the message (the handler, or the task): as its log line names it.
    task: str | None = None
    #: The queue of the message (None for pool-wide events), or of the cluster.
    queue: str | None = None
    #: ``coordinator_promoted`` / ``_demoted``: the epoch of the coordinator's lease.
    epoch: int | None = None


Listener = Callable[[WorkerEvent], Any]


@dataclass
class JobContext:
    """Passed to every handler call beside the payload."""

    message_id: str
    attempt: int
    max_attempts: int
    worker_id: str
    lease_token: str
    enqueued_at: float
    claimed_at: float
    queue: Queue
    lease: Lease
    _loop: asyncio.AbstractEventLoop = field(repr=False)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set, repr=False)

    def _call(self, make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            task: asyncio.Task[Any] = self._loop.create_task(make())
            self._tasks.add(task)
            task.add_done_callback(self._call_done)
            return task
        # A sync handler in a worker thread: wait for the write to be durable.
        return asyncio.run_coroutine_threadsafe(make(), self._loop).result()

    def _call_done(self, task: asyncio.Task[Any]) -> None:
        # A handler that did not await the call learns of its failure only here.
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s: %s", self.message_id, task.exception())

    @property
    def cancelled(self) -> bool:
        """Whether the message was cancelled while this job runs: stop, and return or
        raise (either way the message ends "cancelled"). Set at the worker's next
        lease renewal after the cancel, within a third of the visibility timeout; an
        async handler is also cancelled then (``asyncio.CancelledError``), a sync one
        should look at this now and then. Safe to read from a handler's thread."""
        return self.lease.cancel_requested

    def extend(self, seconds: float) -> Any:
        """Keep this job's lease ``seconds`` more. Await it in async handlers; in sync
        handlers it blocks until stored and returns the new expiry."""
        return self._call(lambda: self.queue.extend(self.lease, seconds))

    def progress(self, value: Any) -> Any:
        """Record progress (e.g. 0.0 to 1.0) visible through ``queue.get(id)``."""
        return self._call(lambda: self.queue.progress(self.lease, value))


@dataclass
class _Job:
    lease: Lease
    task: asyncio.Task[None] | None = None
    started_at: float = 0.0
    #: Its task was cancelled because its message was: not a shutdown, not a failure.
    cancelling: bool = False
    #: How it runs, once its task has started.
    route: Route | None = None


def _key(lease: Lease) -> str:
    """A lease's key among this worker's jobs: ids are unique within a queue only."""
    return f"{lease.queue}/{lease.id}"


class Worker:
    """Runs ``handler(payload, ctx)`` for messages of ``queue``.

    ``concurrency`` handlers run at once (between the bounds of ``scaling`` when
    autoscaling), highest priority first. ``leases`` say how long a job holds its
    message (extended while it runs) and how failures retry: a handler that raises is
    retried with their backoff; one that raises a non-retriable :class:`QueueError`,
    or fails its last attempt, is dead-lettered. ``polling`` sets the idle polling
    (with nothing to claim, one storage request per ``poll_interval`` seconds on
    average) and the prefetch. ``cron`` lists periodic jobs this worker enqueues.

    Each group of settings is a small frozen object that checks itself when built
    (:mod:`s3queue.runtime.worker_settings`); ``Worker(q, h, visibility_timeout=60)`` is now
    ``Worker(q, h, leases=Leases(visibility_timeout=60))``, ``poll_interval`` and
    ``prefetch`` go in ``Polling``, ``min_/max_concurrency`` and ``scale_cooldown`` in
    ``Scaling``. ``on_complete`` and ``on_error`` are gone: use
    ``worker.on("completed", f)`` and ``worker.on("retry" | "dead", f)``.
    """

    def __init__(
        self,
        queue: Queue | Sequence[Queue],
        handler: Handler | Router,
        *,
        concurrency: int = 10,
        leases: Leases = Leases(),
        polling: Polling = Polling(),
        scaling: Scaling = Scaling(),
        worker_id: str | None = None,
        cron: list[Cron] | None = None,
    ) -> None:
        self.router: Router = handler if isinstance(handler, Router) else OneHandler(handler)
        #: Whether every message runs an async handler (no thread pool is made).
        self.is_async = isinstance(self.router, OneHandler) and self.router.is_async
        concurrency = limits.CONCURRENCY.check(concurrency, "concurrency")
        low, high = scaling.bounds(concurrency)
        #: The queues served; ``queue`` is the first (its clock is the pool's).
        self.queues = QueueSet([queue] if isinstance(queue, Queue) else list(queue))
        self.queue = self.queues.primary
        self.handler = handler
        #: ``module:qualname`` (or the repr) of the handler, or the router's tasks.
        self.handler_name = self.router.describe()
        self.concurrency = concurrency
        self.leases, self.polling, self.scaling = leases, polling, scaling
        self.pacing = Pacing(
            min_concurrency=low,
            max_concurrency=high,
            cooldown=scaling.scale_cooldown,
            fixed_prefetch=polling.prefetch,
        )
        self.backoff = leases.backoff or self.queue.backoff
        self.worker_id = layout.check_worker_id(
            worker_id or f"{socket.gethostname()}-{os.getpid()}-{sources.token_hex(3)}"
        )
        #: Periodic jobs this worker enqueues (each tick is enqueued once).
        self.scheduler = Scheduler(self.queue, cron or [])
        #: Heartbeats, shard ownership and the coordinator's lease.
        self.cluster = Cluster(self.queues, self.worker_id, polling, self._presence)
        self.cluster.on_change(self._coordinator_changed)
        # Sweeping is a coordinator's duty: the others do not even read its lease.
        self.upkeep = Upkeep(
            list(self.queues.queues),
            self.worker_id,
            polling.sweep_interval,
            may_sweep=self.cluster.coordinates,
        )
        self._listeners: dict[str, list[Listener]] = {name: [] for name in EVENTS}
        self._start_state()
        self.router.bind(self)
        self.queues.on_recovered(self._recovered)
        # Handlers that enqueue follow-up work through ctx.queue show up as events.
        self.queues.on_enqueued(self._announce_enqueued)

    def _start_state(self) -> None:
        """The state of a worker that has not run yet."""
        self._executor: ThreadPoolExecutor | None = None
        self._buffer: list[Lease] = []
        self._running: dict[str, _Job] = {}
        self._settling: dict[str, Lease] = {}
        self._stopping, self._slot_free = asyncio.Event(), asyncio.Event()
        self._stopped, self._jobs_done = asyncio.Event(), asyncio.Event()
        self._callbacks: set[asyncio.Task[Any]] = set()
        self._forced = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: When (store time) the last claim started.
        self._claimed_at = -math.inf
        #: Idle checks since work was last found or announced, and sweep steps made.
        self._quiet = 0
        #: Idle checks since a claim last took work (they space the next ones out).
        self._quiet_run = 0
        #: Stealing (see _steal): whether the last look took something, when
        #: (sources.monotonic()) the next look for waiting work is due and the pause
        #: after it, and whether an idle check just heard news after a quiet spell.
        self._stealing = self._heard_after_quiet = self._heard = False
        self._steal_due = -math.inf
        self._steal_pause = self.polling.max_poll_interval
        self._idle_debt = 0.0
        self._armed = False
        self.processed = self.failed = 0
        #: sources.monotonic() of the first claim of the current run of failed claims
        #: (storage unreachable or refusing), None while claims succeed.
        self.claim_failing_since: float | None = None
        self.exit_error: BaseException | None = None

    @property
    def prefetch(self) -> int:
        """How many leases to hold beyond the running jobs (see :meth:`Pacing.prefetch`)."""
        return self.pacing.prefetch(self.concurrency, sources.monotonic())

    @property
    def is_running(self) -> bool:
        """Between the start of :meth:`run` and the end of its shutdown."""
        return self._loop is not None and not self._stopped.is_set()

    @property
    def is_stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def running_jobs(self) -> int:
        """Handlers running now."""
        return len(self._running)

    @property
    def buffered(self) -> int:
        """Leases claimed and waiting for a free slot."""
        return len(self._buffer)

    @property
    def busy(self) -> int:
        """Jobs running now plus leases claimed and waiting to start."""
        return len(self._running) + len(self._settling) + len(self._buffer)

    # --- events ---------------------------------------------------------------------------

    def on(self, event: EventName, callback: Listener) -> None:
        """Call ``callback(WorkerEvent)`` on ``event``; async callbacks are awaited in
        the background. A failing callback is logged and never fails the job."""
        if event not in self._listeners:
            raise ConfigurationError(
                f"unknown event {event!r}", suggestion=f"events are: {', '.join(EVENTS)}"
            )
        self._listeners[event].append(callback)

    def _emit(self, name: EventName, **fields: Any) -> None:
        listeners = self._listeners[name]
        # A job's outcome is also logged (see worker_log), from the same event.
        level = logging.ERROR if fields.get("dead") else LEVELS.get(name)
        logged = level is not None and log.isEnabledFor(level)
        if not listeners and not logged:
            return
        event = WorkerEvent(name=name, worker_id=self.worker_id, at=sources.wall(), **fields)
        if logged:
            log_job(log, event, event.task or self.handler_name, self.queue.clock())
        for listener in listeners:
            try:
                outcome = listener(event)
            except Exception:
                log.exception("%s listener failed", name)
                continue
            if inspect.isawaitable(outcome):
                task = asyncio.ensure_future(outcome)
                self._callbacks.add(task)
                task.add_done_callback(self._callback_done)

    def _callback_done(self, task: asyncio.Task[Any]) -> None:
        self._callbacks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("event listener failed", exc_info=task.exception())

    def _announce_enqueued(self, ids: list[str]) -> None:
        for mid in ids:
            self._emit("enqueued", message_id=mid)

    def _recovered(self, event: Recovered) -> None:
        error = f"the lease of worker {event.owner} expired"
        if event.cancelled:
            error += " after its message was cancelled: cancelled"
        elif event.dead:
            error += " and it had no attempts left: dead-lettered"
        self._emit(
            "recovered", message_id=event.id, attempt=event.attempt, error=error, dead=event.dead
        )

    def _presence(self) -> Presence:
        return Presence(concurrency=self.concurrency, running=len(self._running))

    def _coordinator_changed(self, change: str, queue: str, epoch: int) -> None:
        name: EventName = "coordinator_promoted" if change == "promoted" else "coordinator_demoted"
        self._emit(name, queue=queue, epoch=epoch)

    # --- running ----------------------------------------------------------------------------

    async def run(self, *, handle_signals: bool = False, burst: bool = False) -> None:
        """Work until :meth:`stop` (or SIGTERM/SIGINT with ``handle_signals``; with
        ``burst``, until every queue served has nothing pending, delayed or running)."""
        self._loop = asyncio.get_running_loop()
        if handle_signals:
            self._install_signals()
        self._emit("workers_started", count=self.concurrency)
        log_banner(log, self)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._claim_loop(), name="s3queue-claim")
                group.create_task(self._heartbeat_loop(), name="s3queue-heartbeat")
                group.create_task(self.scheduler.run(self._stopping), name="s3queue-cron")
                if not burst:
                    # A burst worker drains every shard and leaves: no cluster.
                    group.create_task(self.cluster.run(self._stopping), name="s3queue-cluster")
                    group.create_task(self.upkeep.run(self._stopping), name="s3queue-sweep")
                if burst:
                    group.create_task(self._burst_loop(), name="s3queue-burst")
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
            if self._callbacks:
                await asyncio.gather(*list(self._callbacks), return_exceptions=True)
            self._emit("workers_stopped", count=self.processed)
            log_stopped(log, self)
            self._stopped.set()
            if handle_signals:
                self._remove_signals()
        if self.exit_error is not None:
            raise self.exit_error

    async def stop(self, drain: bool = True) -> None:
        """Stop claiming. With ``drain``, let running jobs finish (up to
        ``shutdown_timeout``); jobs still running then, and every lease claimed but
        not started, are released for other workers at once."""
        if not drain:
            self._forced = True
        self._stopping.set()
        self._slot_free.set()
        await self._stopped.wait()

    async def _burst_loop(self) -> None:
        while not self._stopping.is_set():
            # Polling shared storage: no event crosses processes.
            await self._wait_stopping(self.polling.poll_interval)
            if not self._stopping.is_set() and not self.busy and await self._drained():
                self._stopping.set()
                self._slot_free.set()

    async def _drained(self) -> bool:
        for q in self.queues.queues:
            try:
                await q.reload()  # shards added while it ran: not drained before those are
                stats = await q.stats()
            except QueueError as error:
                self._storage_failed(error)
                return False
            if stats.pending + stats.delayed + stats.processing:
                return False
        return True

    def _install_signals(self) -> None:
        assert self._loop is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.add_signal_handler(sig, self._on_signal, sig)

    def _remove_signals(self) -> None:
        assert self._loop is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stopping.is_set():
            log.warning("second %s: stopping now, releasing running jobs", sig.name)
            self._forced = True
            self._slot_free.set()
            return
        log.info(
            "%s: finishing running jobs (up to %.0f s), then exiting",
            sig.name,
            self.leases.shutdown_timeout,
        )
        self._stopping.set()
        self._slot_free.set()

    # --- claiming --------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        async with asyncio.TaskGroup() as jobs:
            while not self._stopping.is_set():
                if self._start_buffered(jobs):
                    # Let the jobs just started run up to their first await: a job
                    # that is over by then frees its slot for the next buffered one,
                    # and the claim below is sized by what is really free.
                    await asyncio.sleep(0)
                    continue
                pipeline = self.concurrency + self.prefetch
                want = pipeline - len(self._running) - len(self._buffer)
                # A claim is a cursor write, and the acks that finished since the last
                # claim ride on it. While every slot has a job, wait until half the
                # pipeline is free so that each write carries many messages.
                idle = len(self._running) < self.concurrency
                if want <= 0 or (not idle and want < (pipeline + 1) // 2):
                    self._slot_free.clear()
                    await self._slot_free.wait()
                    continue
                leases, contended, throttled = await self._claim(want)
                if contended and not leases:
                    # Another process was writing the shards that hold work: give it
                    # a moment, then claim again (idling would leave the work there).
                    await self._wait_stopping(sources.uniform(0.002, 0.02))
                    continue
                if leases:
                    self._armed = False
                    for lease in leases:
                        self._emit("claimed", message_id=lease.id, attempt=lease.attempt)
                        bisect.insort(self._buffer, lease, key=_by_priority)
                    self._autoscale(busy=True)
                    continue
                self._autoscale(busy=False)
                if throttled and await self._await_token():
                    continue
                if not self._armed:
                    # Ask producers to announce what they write next, then claim once
                    # more: what they wrote before the arming is found by that claim.
                    self._armed = await self._arm()
                    self._heard = True  # the claim after arming stands for the news missed
                    continue
                if await self._idle(until_slot_free=bool(self._running)):
                    self._armed = False  # a ring disarms it: arm again before idling
            try:
                await self._shutdown()
            finally:
                self._jobs_done.set()

    async def _claim(self, want: int) -> tuple[list[Lease], bool, bool]:
        """Leases claimed, whether a busy shard was given way to another process, and
        whether work waits for rate-limit tokens."""
        try:
            asked = sources.monotonic()
            self._claimed_at = self.queue.clock()
            steal = self._steal()
            got = await self.queues.claim_round(
                want, self.leases.visibility_timeout, owner=self.worker_id, steal=steal
            )
        except QueueError as error:
            self._storage_failed(error)
            return [], False, False
        self.claim_failing_since = None
        if steal is not None:
            self._stole(steal, got)
        if got.leases:
            self._quiet_run = 0
            self.pacing.claimed(sources.monotonic() - asked)
        return got.leases, got.contended, got.throttled

    def _steal(self) -> Steal | None:
        """Whether this claim may look at shards other workers own, and what it may
        take there (see :class:`Steal`); None: it keeps to its own shards. Only with
        a slot free. News heard after a quiet spell may be taken from quiet shards
        (a cursor read each). Work that waits untaken is looked for (the segments
        of every other shard's window read too) at most once per
        ``max_poll_interval``, less often each time it finds none, up to
        STEAL_BACKOFF times less; as long as the last look took some, every
        claim looks. Other news (heard while busy lately, or missed while
        arming) may be taken from the shards last seen quiet: those of owners
        dead or idle, a cursor read each."""
        if len(self._running) + len(self._buffer) >= self.concurrency:
            return None
        quiet = self.polling.max_poll_interval
        now = sources.monotonic()
        if self._stealing or now >= self._steal_due:
            self._steal_due = now + self._steal_pause
            return Steal(quiet=quiet, waited=STEAL_AFTER_POLLS * self.polling.poll_interval)
        if self._heard_after_quiet:
            return Steal(quiet=quiet)
        if self._heard:
            return Steal(quiet=quiet, everywhere=False)
        return None

    def _stole(self, steal: Steal, got: ClaimRound) -> None:
        """Pace the looks for waiting work by what the last one found."""
        self._heard_after_quiet = self._heard = False
        self._stealing = got.stolen
        if steal.waited is None:
            return
        shortest = self.polling.max_poll_interval
        self._steal_pause = (
            shortest if got.stolen else min(self._steal_pause * 2, STEAL_BACKOFF * shortest)
        )

    async def _await_token(self) -> bool:
        """Work waits for rate-limit tokens: wait for the next, without a request, if
        it comes before an idle check would; whether it did. (Idling instead would
        arm the wake object, a request per token; a later token is waited for by
        the idle loop, whose checks find other work meanwhile.)"""
        due = self.queues.next_due(after=self._claimed_at)
        if due is None or due - self.queue.clock() > self.polling.poll_interval:
            return False
        await self._wait_stopping(max(0.0, due - self.queue.clock()))
        return True

    async def _wait_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _storage_failed(self, error: QueueError) -> None:
        if not error.retriable:
            self.exit_error = error
            self._stopping.set()
            return
        log.warning("storage request failed, will retry: %s", error)
        if self.claim_failing_since is None:
            self.claim_failing_since = sources.monotonic()

    # --- idle ---------------------------------------------------------------------------------

    async def _arm(self) -> bool:
        try:
            await self.queues.arm_wake()
        except QueueError as error:
            self._storage_failed(error)
            return False
        return True

    async def _idle(self, *, until_slot_free: bool) -> bool:
        """Nothing to claim: wait until there may be something, spending one storage
        request per ``poll_interval`` on average.

        Each check reads the queue's wake object (one GET: producers rewrite it after
        writing, workers after releasing or retrying), and every SWEEP_EVERY-th check
        makes one request of a sweep of the shards instead (a cursor, a log, an
        express lane in turn), which finds what no wake-up announced: a producer
        that died before ringing, leases of dead workers. Known due times (delays,
        retries, lease expiries, timer buckets) end the wait without any request.
        With jobs running, a finished job ends it too. Returns whether there may be
        new work.
        """
        if until_slot_free:
            self._slot_free.clear()
        while not self._stopping.is_set():
            if self._buffer and len(self._running) < self.concurrency:
                # A job ended while the claim was in flight: a buffered one can start.
                return False
            # Due times the last empty claim had passed are not due again: that
            # claim found nothing to do with them (a spin, otherwise).
            due = self.queues.next_due(after=self._claimed_at, quiet=self.polling.max_poll_interval)
            wait = self._idle_debt
            if due is not None:
                wait = min(wait, max(0.0, due - self.queue.clock()))
            stop = self._slot_free if until_slot_free else self._stopping
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
                return False
            if self._stopping.is_set():
                return False
            if due is not None and self.queue.clock() >= due:
                self._heard = True  # perhaps in a quiet shard of another's: it may look
                return False
            quiet = self._quiet_run >= QUIET_CHECKS
            if await self._check():
                # News after a quiet spell may be in any shard, its owner idling as
                # this worker was: the claim that follows may look there.
                self._heard_after_quiet = quiet
                self._heard = True
                return True
        return False

    async def _check(self) -> bool:
        """One idle check; whether there may be work. Sets the wait before the next
        from the requests this one made."""
        before = self.queues.requests()
        self._quiet += 1
        try:
            await self.queues.sync_clock()
            if self._quiet >= SWEEP_EVERY:
                # One request of a sweep: the steps of one shard, then the next shard.
                # Only after quiet checks: while work keeps coming, the wake object
                # is read every time.
                self._quiet = 0
                found = await self.queues.sweep()
            else:
                found = await self.queues.wake_changed()
            self.claim_failing_since = None
        except QueueError as error:
            self._storage_failed(error)
            found = False
        # Paced by the requests it made (a clock sample makes three), not by what the
        # rest of the process sent meanwhile.
        made = min(3 * len(self.queues.queues), max(1, self.queues.requests() - before))
        self._idle_debt = made * self._idle_wait()
        # Counted whatever the check found: news of work that the claim after it
        # does not get (other workers' shards, taken by them) is no reason to
        # check more often. A claim that takes work resets it.
        self._quiet_run += 1
        if found:
            self._quiet = 0
        return found

    def _idle_wait(self) -> float:
        """The wait before the next idle check: ``poll_interval`` after work, doubled
        by each quiet check up to this worker's share of its cluster's polling
        (:meth:`Cluster.idle_interval`): a worker that just had work checks often,
        and an idle cluster checks the queue at a rate that does not grow with it."""
        poll = self.polling.poll_interval
        return min(self.cluster.idle_interval(), poll * 2.0 ** min(self._quiet_run, 32))

    def _start_buffered(self, jobs: asyncio.TaskGroup) -> int:
        started = 0
        while self._buffer and len(self._running) < self.concurrency:
            lease = self._buffer.pop(0)  # the buffer is kept best first
            if lease.expires_at <= self.queues.of(lease).clock():
                self._expired_waiting(lease)
                continue
            job = _Job(lease, started_at=sources.monotonic())
            self._running[_key(lease)] = job
            job.task = jobs.create_task(self._execute(job), name=f"s3queue-job-{lease.id}")
            started += 1
        return started

    def _autoscale(self, *, busy: bool) -> None:
        was = self.concurrency
        self.concurrency = self.pacing.scale(
            was,
            busy=busy,
            waiting=len(self._buffer),
            running=len(self._running),
            now=sources.monotonic(),
        )
        if self.concurrency != was:
            step = "up" if self.concurrency > was else "down"
            log.info("scaled %s to %d concurrent jobs", step, self.concurrency)

    async def _shutdown(self) -> None:
        unstarted, self._buffer = self._buffer, []
        await self._release(unstarted)
        if self._running and not self._forced:
            waiting = [job.task for job in self._running.values() if job.task is not None]
            _, pending = await asyncio.wait(waiting, timeout=self.leases.shutdown_timeout)
            if pending:
                log.warning(
                    "%d jobs still running after %.0f s: releasing them",
                    len(pending),
                    self.leases.shutdown_timeout,
                )
        leftover = [
            job for job in self._running.values() if job.task is not None and not job.task.done()
        ]
        for job in leftover:
            assert job.task is not None
            job.task.cancel()
        if leftover:
            await asyncio.gather(
                *(job.task for job in leftover if job.task), return_exceptions=True
            )

    async def _release(self, leases: list[Lease]) -> None:
        outcomes = await asyncio.gather(
            *(self.queues.of(lease).release(lease) for lease in leases), return_exceptions=True
        )
        for lease, outcome in zip(leases, outcomes, strict=True):
            if isinstance(outcome, LeaseLost):
                self._emit(
                    "lease_lost",
                    message_id=lease.id,
                    attempt=lease.attempt,
                    max_attempts=self._max_attempts(lease),
                    error=str(outcome),
                )
            elif isinstance(outcome, BaseException):
                log.warning(
                    "could not release %s (it comes back when its lease expires): %s",
                    lease.id,
                    outcome,
                )

    # --- heartbeat ----------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self._beat
        while not self._jobs_done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._jobs_done.wait(), interval)
            if self._jobs_done.is_set():
                return
            await self._extend_due()

    async def _extend_due(self) -> None:
        # Every lease of a job running or waiting to start is extended at every beat,
        # not only those near expiry: the answer says whether the message was
        # cancelled, which a running job must learn within a beat. The extensions of
        # one shard share one cursor write, so a beat costs a write per shard, not a
        # request per job. A job whose ack is on its way is extended only if its lease
        # is short (an extension behind its ack would be refused as stale).
        now = self.queue.clock()
        due = [
            *(job.lease for job in self._running.values()),
            *self._buffer,
            *(
                lease
                for lease in self._settling.values()
                if lease.expires_at - now < self.leases.visibility_timeout / 2
            ),
        ]
        if not due:
            return
        outcomes = await asyncio.gather(
            *(self.queues.of(lease).extend(lease, self.leases.visibility_timeout) for lease in due),
            return_exceptions=True,
        )
        for lease, outcome in zip(due, outcomes, strict=True):
            if isinstance(outcome, LeaseLost):
                if self._working_on(lease):
                    self._lease_lost(lease, outcome)
                # Otherwise its ack or failure was already on its way, and landed
                # first (the simulation met this every few seconds): the message
                # ended as that write says, which reports itself. A lost lease here
                # would be a false warning, and could cancel a later attempt.
            elif isinstance(outcome, BaseException):
                log.warning("could not extend the lease of %s: %s", lease.id, outcome)
            elif lease.cancel_requested:
                self._stop_cancelled(lease)

    @property
    def _beat(self) -> float:
        """Seconds between two extensions of every lease held."""
        return max(0.05, self.leases.visibility_timeout / 3)

    def _expired_waiting(self, lease: Lease) -> None:
        """A lease that expired while its job waited for a slot (its extensions kept
        losing to other writers of a busy cursor, or storage failed) is not this
        worker's any more: another may have taken the message back, even finished it.
        The simulation caught a worker starting such a job a minute late, after
        another had completed it. (A lease close to expiry still starts: under load
        extensions lag by seconds without failing, and refusing those leases threw
        away hundreds of valid ones a minute in a fault-free simulated cluster.)"""
        self._emit(
            "lease_lost",
            message_id=lease.id,
            attempt=lease.attempt,
            max_attempts=self._max_attempts(lease),
            error="the lease expired while the job waited for a slot; not started "
            "(the message will be delivered again)",
        )

    def _working_on(self, lease: Lease) -> bool:
        """Whether ``lease`` is still this worker's to run: running or waiting to
        start, and not a later lease of the same message."""
        job = self._running.get(_key(lease))
        return (job is not None and job.lease is lease) or lease in self._buffer

    def _stop_cancelled(self, lease: Lease) -> None:
        """The message of a running job was cancelled: a sync handler sees
        ``ctx.cancelled``, an async one is cancelled too. (A lease waiting to start is
        acked without running when its turn comes.)"""
        job = self._running.get(_key(lease))
        if job is None or job.cancelling or job.task is None:
            return
        job.cancelling = True
        if job.route is not None and job.route.is_async:
            job.task.cancel()

    def _lease_lost(self, lease: Lease, error: LeaseLost) -> None:
        self._emit(
            "lease_lost",
            message_id=lease.id,
            attempt=lease.attempt,
            max_attempts=self._max_attempts(lease),
            error=str(error),
        )
        job = self._running.get(_key(lease))
        if job is not None and job.task is not None:
            # Another worker may own it now: stop working on it (and not ack it).
            job.cancelling = False
            job.task.cancel()
        if lease in self._buffer:
            self._buffer.remove(lease)

    # --- one job -------------------------------------------------------------------------------

    def _max_attempts(self, lease: Lease, route: Route | None = None) -> int:
        """The attempts ``lease``'s message has in all: its own limit, or the cap
        (the route's, else the worker's) when that is lower."""
        cap = (route.max_attempts if route is not None else None) or self.leases.max_attempts
        return min(lease.max_attempts, cap or lease.max_attempts)

    def _context(self, lease: Lease, route: Route) -> JobContext:
        assert self._loop is not None
        return JobContext(
            message_id=lease.id,
            attempt=lease.attempt,
            max_attempts=self._max_attempts(lease, route),
            worker_id=self.worker_id,
            lease_token=lease.token,
            enqueued_at=lease.enqueued_at,
            claimed_at=lease.claimed_at,
            queue=self.queues.of(lease),
            lease=lease,
            _loop=self._loop,
        )

    def _route(self, lease: Lease) -> Route:
        try:
            return self.router.route(lease)
        except Exception as error:  # a router's bug fails the job, not the worker
            return Route(functools.partial(_raise, error), self.handler_name, is_async=True)

    async def _execute(self, job: _Job) -> None:
        lease = job.lease
        job.route = route = self._route(lease)
        ctx = self._context(lease, route)
        facts = {"task": route.name, "queue": lease.queue, "attempt": lease.attempt}
        if not lease.cancel_requested:
            self._emit("processing", message_id=lease.id, max_attempts=ctx.max_attempts, **facts)
        started = sources.monotonic()
        try:
            try:
                # Cancelled while it waited for a slot: its ack ends it, unrun.
                result = None if lease.cancel_requested else await self._call(lease, ctx, route)
                if ctx._tasks:
                    await asyncio.gather(*list(ctx._tasks), return_exceptions=True)
            except asyncio.CancelledError:
                if not job.cancelling:
                    if self._forced or self._stopping.is_set():
                        await self._release([lease])
                    raise
                # Cancelled because its message was: not a failure. The ack below
                # ends the message "cancelled".
                _uncancel()
                result = None
            except Exception as error:
                self._settle(lease)
                await self._failed(lease, ctx, error, sources.monotonic() - started, route)
                return
            # The handler is done: its slot goes to the next job while the ack is
            # committed, so acks of consecutive rounds share cursor writes.
            ran = sources.monotonic() - started  # the handler's time, as for failures
            self._settle(lease)
            await self._ack(lease, ctx, result, ran, route)
        finally:
            self._running.pop(_key(lease), None)
            self._settling.pop(_key(lease), None)
            self._slot_free.set()

    async def _ack(
        self, lease: Lease, ctx: JobContext, result: Any, ran: float, route: Route
    ) -> None:
        try:
            await ctx.queue.ack(lease, result, linger=ACK_LINGER)
        except LeaseLost as error:
            self._lease_lost(lease, error)
            return
        except PayloadError as error:
            # The result cannot be stored (not JSON, too large): every retry
            # would end the same way, so the message is dead with that reason.
            await self._failed(lease, ctx, error, ran, route)
            return
        except QueueError as error:
            log.error("could not ack %s (it will be retried): %s", lease.id, error)
            return
        facts = {"message_id": lease.id, "attempt": lease.attempt, "duration": ran}
        facts |= {"task": route.name, "queue": lease.queue}
        if lease.cancel_requested:  # the ack ended it cancelled
            self._emit("cancelled", max_attempts=ctx.max_attempts, **facts)
            return
        self.processed += 1
        self._emit("completed", max_attempts=ctx.max_attempts, result=result, **facts)

    def _settle(self, lease: Lease) -> None:
        """Move a job whose handler returned from running to settling (ack or fail
        pending): it no longer takes a slot, and the heartbeat still covers it."""
        self._running.pop(_key(lease), None)
        self._settling[_key(lease)] = lease
        self.pacing.finished(sources.monotonic())
        self._slot_free.set()

    async def _call(self, lease: Lease, ctx: JobContext, route: Route) -> Any:
        if route.is_async:
            call: Awaitable[Any] = route.handler(lease.payload, ctx)
        else:
            assert self._loop is not None
            if self._executor is None:
                # Made on first use: a pool whose handlers are all async needs none.
                self._executor = ThreadPoolExecutor(
                    self.pacing.max_concurrency, thread_name_prefix="s3queue-job"
                )
            call = self._loop.run_in_executor(
                self._executor, functools.partial(route.handler, lease.payload, ctx)
            )
        timeout = route.timeout if route.timeout is not None else self.leases.job_timeout
        if timeout is None:
            return await _resolved(call)
        try:
            return await asyncio.wait_for(_resolved(call), timeout)
        except TimeoutError as error:
            raise JobTimeout(
                f"job {lease.id} ({route.name}) ran longer than its timeout of {timeout} s",
                suggestion="raise the timeout (the task's timeout= or --job-timeout), "
                "or split the job",
            ) from error

    async def _failed(
        self, lease: Lease, ctx: JobContext, error: Exception, duration: float, route: Route
    ) -> None:
        self.failed += 1
        retriable = not (isinstance(error, QueueError) and not error.retriable)
        if lease.attempt >= ctx.max_attempts:
            retriable = False
        try:
            failure = await ctx.queue.fail(
                lease,
                error,
                retriable=retriable,
                backoff=route.backoff or self.backoff,
                linger=ACK_LINGER,
            )
        except LeaseLost as lost:
            self._lease_lost(lease, lost)
            return
        except QueueError as storage_error:
            log.error(
                "could not record the failure of %s (it will be retried): %s",
                lease.id,
                storage_error,
            )
            return
        # Logged by _emit at WARNING (retry), ERROR (dead) or INFO (cancelled), like
        # every job outcome.
        self._emit(
            failure.status,
            message_id=lease.id,
            attempt=lease.attempt,
            max_attempts=ctx.max_attempts,
            duration=duration,
            error=f"{type(error).__name__}: {error}",
            next_visible_at=failure.visible_at if failure.status == "retry" else None,
            task=route.name,
            queue=lease.queue,
        )


def _raise(error: Exception, payload: Any, ctx: JobContext) -> Any:
    raise error


async def _resolved(call: Awaitable[Any]) -> Any:
    """The handler's return value; a plain function that returned an awaitable (a
    lambda or wrapper around an async function) has it awaited here."""
    result = await call
    while inspect.isawaitable(result):
        result = await result
    return result


def _uncancel() -> None:
    """Take back the cancellation just caught: the job's task goes on to its ack, and
    a later cancellation (a shutdown) must not be mistaken for this one."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def _by_priority(lease: Lease) -> int:
    """Buffer order: highest priority first, then in the order claimed."""
    return -lease.priority
