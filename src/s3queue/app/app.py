"""The task app: ``@app.task`` functions, called from anywhere, run by workers.

An :class:`App` names a store; its tasks name their queue and their settings. Calling
``task.delay(...)`` (or ``await task.enqueue(...)``) stores a message whose payload
names the task and its arguments (:mod:`s3queue.app.calls`) and returns a
:class:`~s3queue.app.jobs.Job`; ``s3queue worker -A module:app`` runs them
(:mod:`s3queue.app.router`). Below it, :class:`~s3queue.queue.Queue` and
:class:`~s3queue.runtime.worker.Worker` stay the low-level API.

Invariant: every storage call of the app runs on its own loop (:mod:`s3queue.app.loop`),
and nothing is written before every argument was checked.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import inspect
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar, overload

from s3queue import limits
from s3queue.app.calls import Step, call_payload, check_arguments, read_call
from s3queue.app.jobs import ChainJob, GroupJob, Job, parse_job_id
from s3queue.app.loop import LoopThread
from s3queue.app.router import TaskRouter
from s3queue.backoff import Backoff
from s3queue.core.layout import check_queue_name
from s3queue.core.rates import RateLimit
from s3queue.core.records import MAX_RESULT_BYTES
from s3queue.errors import ConfigurationError, QueueError
from s3queue.payload import decode_json, encode_json
from s3queue.queue import Queue
from s3queue.runtime.queues import open_queues
from s3queue.runtime.worker import JobContext, Worker
from s3queue.storage import Storage, open_storage, redact_url

log = logging.getLogger("s3queue.app")

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_URL = "file://.s3queue"
DEFAULT_QUEUE = "default"


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """A task's settings; None leaves the queue's or the worker's in force."""

    queue: str = DEFAULT_QUEUE
    max_attempts: int | None = None
    timeout: float | None = None
    priority: int = 0
    backoff: Backoff | None = None
    rate_limit: RateLimit | str | None = None

    def __post_init__(self) -> None:
        check_queue_name(self.queue)
        if self.rate_limit is not None:
            object.__setattr__(self, "rate_limit", RateLimit.of(self.rate_limit))
        limits.MAX_ATTEMPTS.optional(self.max_attempts, "max_attempts")
        limits.JOB_TIMEOUT.optional(self.timeout, "timeout")
        limits.PRIORITY.check(self.priority, "priority")
        if self.backoff is not None and not isinstance(self.backoff, Backoff):
            raise ConfigurationError(
                f"backoff={self.backoff!r}", suggestion="pass s3queue.Backoff(...)"
            )


@dataclass(frozen=True, slots=True)
class When:
    """When a call may run and how it is enqueued (``apply``'s keyword options)."""

    delay: float | None = None
    at: datetime | None = None
    priority: int | None = None
    dedup_key: str | None = None

    def __post_init__(self) -> None:
        # Checked when made (by .set(), apply() or the CLI): a group or chain is
        # refused before any of its calls is written.
        if self.delay is not None and self.at is not None:
            raise ConfigurationError(
                "both a delay and a time to run at were given", suggestion="pass one of them"
            )
        limits.DELAY.optional(self.delay, "delay")
        if self.at is not None and not isinstance(self.at, datetime):
            raise ConfigurationError(
                f"at={self.at!r}", suggestion="pass a datetime (naive ones are read as UTC)"
            )
        limits.PRIORITY.optional(self.priority, "priority")
        if self.dedup_key is not None and (
            not isinstance(self.dedup_key, str) or not 0 < len(self.dedup_key) <= 1024
        ):
            raise ConfigurationError(
                f"dedup_key={self.dedup_key!r}",
                suggestion="a dedup key is a string of 1 to 1024 characters",
            )

    def seconds_from(self, now: float) -> float:
        """The delay from ``now`` (store time) that ``delay`` or ``at`` asks for."""
        if self.at is None:
            return self.delay or 0.0
        at = self.at if self.at.tzinfo is not None else self.at.replace(tzinfo=UTC)
        # A time already past runs at once, as a delay of 0 would.
        return limits.DELAY.check(max(0.0, at.timestamp() - now), "at (its time from now)")

    @property
    def later_only(self) -> bool:
        """Whether it sets what only a chain's first step can have."""
        return self.delay is not None or self.at is not None or self.dedup_key is not None


class Task(Generic[P, R]):
    """A function registered with ``@app.task``. Calling it runs it here and now;
    ``delay``/``enqueue``/``apply`` send it to a worker."""

    def __init__(self, app: App, fn: Callable[P, R], name: str, options: TaskOptions) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.options = options
        self.is_async = inspect.iscoroutinefunction(fn)
        functools.update_wrapper(self, fn)  # its name and docstring, as help() shows them

    def __repr__(self) -> str:
        return f"<task {self.name} on {self.options.queue}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    @property
    def queue(self) -> str:
        return self.options.queue

    @property
    def rate_key(self) -> str | None:
        """What its messages carry to fall under its rate limit (its name), if any."""
        return self.name if self.options.rate_limit is not None else None

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """This task with these arguments, to be sent later (in a chain or group)."""
        return Signature(self, tuple(args), dict(kwargs))

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Enqueue a call with these arguments; return its job once it is durable."""
        return self.s(*args, **kwargs).delay()

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """The asyncio twin of :meth:`delay`."""
        return await self.s(*args, **kwargs).enqueue()

    def apply(
        self,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **when: Any,
    ) -> Job:
        """``delay`` with options: ``delay=`` seconds or ``at=`` a datetime (naive
        is UTC), ``priority=``, ``dedup_key=`` (a second call with the same key
        returns the first's job)."""
        return self._signature(args, kwargs).set(**when).delay()

    async def aapply(
        self,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **when: Any,
    ) -> Job:
        """The asyncio twin of :meth:`apply`."""
        return await self._signature(args, kwargs).set(**when).enqueue()

    def _signature(self, args: Sequence[Any], kwargs: dict[str, Any] | None) -> Signature:
        if isinstance(args, str | bytes | dict) or not isinstance(args, Sequence):
            raise ConfigurationError(
                f"args={args!r}: apply takes the positional arguments as a list or tuple",
                suggestion=f"{self.name}.apply(args=[...], kwargs={{...}})",
            )
        if kwargs is not None and not isinstance(kwargs, dict):
            raise ConfigurationError(
                f"kwargs={kwargs!r}: apply takes the keyword arguments as a dict",
                suggestion=f"{self.name}.apply(args=[...], kwargs={{...}})",
            )
        return self.s(*args, **(kwargs or {}))


@dataclass(frozen=True)
class Signature:
    """A task and its arguments, not sent yet: ``task.s(...)``."""

    task: Task[Any, Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    when: When = When()

    def set(self, **options: Any) -> Signature:
        """The same call with ``delay``, ``at``, ``priority`` or ``dedup_key`` set."""
        try:
            return replace(self, when=replace(self.when, **options))
        except TypeError:
            allowed = "delay, at, priority, dedup_key"
            raise ConfigurationError(
                f"unknown option in {sorted(options)}", suggestion=f"options are: {allowed}"
            ) from None

    def delay(self) -> Job:
        app = self.task.app
        return app.loop.run(app.send(self))

    async def enqueue(self) -> Job:
        app = self.task.app
        return await app.loop.call(app.send(self))

    def step(self) -> Step:
        """This call as a later step of a chain."""
        return Step(
            task=self.task.name,
            queue=self.task.queue,
            args=list(self.args),
            kwargs=dict(self.kwargs),
            priority=_first(self.when.priority, self.task.options.priority),
            max_attempts=self.task.options.max_attempts,
            rate_key=self.task.rate_key,
        )

    def check(self, extra_first: bool = False) -> None:
        """Refuse arguments now rather than in a worker (``extra_first``: a chain
        step, which also gets the previous result first)."""
        if not extra_first:
            check_arguments(self.task.name, self.task.fn, self.args, self.kwargs)
            return
        try:
            check_arguments(self.task.name, self.task.fn, (None, *self.args), self.kwargs)
        except ConfigurationError as error:
            raise ConfigurationError(
                f"{error.message} (as a later step of a chain, it gets the result of the "
                "step before it as its first argument)",
                suggestion="leave the first argument to the step before it",
            ) from None


class Chain:
    """Steps run one after another, each result the next step's first argument."""

    def __init__(self, steps: Sequence[Signature]) -> None:
        steps = list(steps)
        if not steps or not all(isinstance(s, Signature) for s in steps):
            raise ConfigurationError(
                "a chain takes one or more task signatures",
                suggestion="chain(first.s(...), second.s(...)); a group cannot be a step",
            )
        if len({id(s.task.app) for s in steps}) != 1:
            raise ConfigurationError(
                "a chain's steps belong to different apps", suggestion="use one App"
            )
        self.steps = steps

    def delay(self) -> ChainJob:
        app = self.steps[0].task.app
        return app.loop.run(app.send_chain(self.steps))

    async def enqueue(self) -> ChainJob:
        app = self.steps[0].task.app
        return await app.loop.call(app.send_chain(self.steps))


class Group:
    """Calls run side by side; their results come back in order."""

    def __init__(self, members: Iterable[Signature]) -> None:
        self.members = list(members)
        if not self.members or not all(isinstance(s, Signature) for s in self.members):
            raise ConfigurationError(
                "a group takes one or more task signatures",
                suggestion="group(task.s(x) for x in xs)",
            )
        if len({id(s.task.app) for s in self.members}) > 1:
            raise ConfigurationError(
                "a group's members belong to different apps", suggestion="use one App"
            )

    def delay(self) -> GroupJob:
        app = self.members[0].task.app
        return app.loop.run(app.send_group(self.members))

    async def enqueue(self) -> GroupJob:
        app = self.members[0].task.app
        return await app.loop.call(app.send_group(self.members))


def chain(*steps: Signature) -> Chain:
    """``chain(a.s(1), b.s(), c.s())``: ``c(b(a(1)))``, each on a worker."""
    return Chain(steps)


def group(members: Iterable[Signature]) -> Group:
    """``group(resize.s(p) for p in paths)``: all of them, results in order."""
    return Group(members)


class App:
    """Tasks and the store they go through. ``url`` defaults to ``$S3QUEUE_URL``,
    else ``file://.s3queue`` (a directory beside the program); ``queue`` is the
    queue of tasks that name none.

    Close it (``app.close()``, ``await app.aclose()`` or ``with app:``) when a
    program is done with it; a program that exits without closing loses nothing
    (every enqueue is durable when it returns)."""

    def __init__(self, url: str | None = None, *, queue: str = DEFAULT_QUEUE) -> None:
        self.url = url or os.environ.get("S3QUEUE_URL") or DEFAULT_URL
        open_storage(self.url)  # checks the URL now; connects nowhere yet
        self.default_queue = check_queue_name(queue)
        self.loop = LoopThread()
        _OPEN_APPS.add(self)
        self.tasks: dict[str, Task[Any, Any]] = {}
        self._queues: dict[str, asyncio.Task[Queue]] = {}
        self._storage: Storage | None = None
        self._bound: asyncio.AbstractEventLoop | None = None
        #: Limits on whole queues, applied by the app's workers (see set_rate_limit).
        self.queue_rate_limits: dict[str, RateLimit] = {}

    def __repr__(self) -> str:
        return f"App({redact_url(self.url)!r}, {len(self.tasks)} tasks)"

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self, fn: None = None, /, *, name: str | None = None, **options: Any
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self, fn: Callable[P, R] | None = None, /, *, name: str | None = None, **options: Any
    ) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
        """Register a function as a task: ``@app.task`` or ``@app.task(queue=...,
        max_attempts=..., timeout=..., priority=..., backoff=...)``. Its name is
        ``module.function`` unless ``name=`` says otherwise."""
        try:
            settings = TaskOptions(**{"queue": self.default_queue, **options})
        except TypeError:
            known = "queue, max_attempts, timeout, priority, backoff, rate_limit, name"
            raise ConfigurationError(
                f"unknown task option in {sorted(options)}", suggestion=f"options are: {known}"
            ) from None

        def register(function: Callable[P, R]) -> Task[P, R]:
            if not callable(function):
                raise ConfigurationError(
                    f"@app.task got {function!r}, not a function",
                    suggestion="pass options by name: @app.task(queue='emails')",
                )
            task = Task(self, function, name or _task_name(function), settings)
            if task.name in self.tasks:
                raise ConfigurationError(
                    f"two tasks are named {task.name!r}",
                    suggestion="give one of them another name=",
                )
            self.tasks[task.name] = task
            return task

        return register(fn) if fn is not None else register

    def set_rate_limit(self, queue: str, limit: RateLimit | str | None) -> None:
        """Start at most ``limit`` (``"50/s"``, ``"30/m"``, ``"2/h"``) jobs of
        ``queue`` across all of this app's workers, whatever their task (None
        removes it). A task's own ``rate_limit`` applies too. Every worker process
        must run an app that says the same (it is the workers' configuration)."""
        check_queue_name(queue)
        if limit is None:
            self.queue_rate_limits.pop(queue, None)
        else:
            self.queue_rate_limits[queue] = RateLimit.of(limit)

    def job(self, job_id: str) -> Job:
        """A handle on any job, by the id ``job.id`` gave (``"queue:message id"``)."""
        queue, message_id = parse_job_id(job_id)
        return Job(self, queue, message_id)

    def chain_job(self, job_id: str) -> ChainJob:
        """A handle on a chain from any process, by its id (``chain_job.id``, the
        first step's job id): the first step's message lists the steps' queues."""
        return self.loop.run(self._chain_job(job_id))

    async def achain_job(self, job_id: str) -> ChainJob:
        return await self.loop.call(self._chain_job(job_id))

    async def _chain_job(self, job_id: str) -> ChainJob:
        first = self.job(job_id)
        call = read_call((await first._info()).payload, job_id)
        return ChainJob(self, first, [first.queue, *(step.queue for step in call.chain)])

    @property
    def queues(self) -> list[str]:
        """The queues of the app's tasks."""
        return sorted({task.queue for task in self.tasks.values()})

    def router(self) -> TaskRouter:
        """What a worker runs this app's tasks with."""
        return TaskRouter(self.tasks, self, self.queue_rate_limits)

    # --- running a worker in this process ----------------------------------------------------

    async def work(
        self, queues: Sequence[str] | None = None, *, concurrency: int = 10, burst: bool = False
    ) -> None:
        """Run a worker of this app's tasks on the running loop: on ``queues`` (all the
        app's by default), until cancelled, or with ``burst`` until they are drained.
        ``s3queue worker -A module:app`` does the same with every worker option."""
        names = list(queues) if queues is not None else self.queues
        async with open_queues(self.url, names) as opened:
            pool = Worker(opened, self.router(), concurrency=concurrency)
            # On the main thread, Ctrl-C and SIGTERM drain the pool (running jobs
            # finish or are released) rather than cutting it off with leases held.
            await pool.run(burst=burst, handle_signals=_on_main_thread())

    def run_worker(
        self, queues: Sequence[str] | None = None, *, concurrency: int = 10, burst: bool = False
    ) -> None:
        """The blocking twin of :meth:`work` (from a script, not inside an event loop)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(self.work(queues, concurrency=concurrency, burst=burst))
            return
        raise ConfigurationError(
            "run_worker() blocks, and an event loop is running here",
            suggestion="await app.work(...) instead",
        )

    # --- on the app's loop -----------------------------------------------------------------

    async def queue(self, name: str) -> Queue:
        """The queue ``name``, opened (and created if new) once per app and process.
        Only on the app's own loop (see :mod:`s3queue.app.loop`): the queue is bound
        to it."""
        if not self.loop.in_loop():
            raise ConfigurationError(
                "App.queue() runs on the app's own loop only",
                suggestion="open a Queue of your own: await s3queue.Queue.open(app.url, name)",
            )
        loop = asyncio.get_running_loop()
        if loop is not self._bound:  # a new loop (after fork or close): new queues
            self._bound, self._queues, self._storage = loop, {}, None
        opening = self._queues.get(name)
        if opening is None or (opening.done() and opening.exception() is not None):
            if self._storage is None:
                self._storage = open_storage(self.url)
            opening = loop.create_task(Queue.open(self._storage, check_queue_name(name)))
            self._queues[name] = opening
        return await asyncio.shield(opening)

    async def send(self, call: Signature, chain: Sequence[Step] = ()) -> Job:
        call.check()
        queue = await self.queue(call.task.queue)
        payload = call_payload(call.task.name, call.args, call.kwargs, chain=chain)
        message_id = await queue.enqueue(
            payload,
            delay=call.when.seconds_from(queue.clock()),
            priority=_first(call.when.priority, call.task.options.priority),
            dedup_key=call.when.dedup_key,
            max_attempts=call.task.options.max_attempts,
            rate_key=call.task.rate_key,
        )
        return Job(self, queue.name, message_id)

    async def send_chain(self, steps: Sequence[Signature]) -> ChainJob:
        for index, step in enumerate(steps):
            step.check(extra_first=index > 0)
            if index > 0 and step.when.later_only:
                raise ConfigurationError(
                    f"step {index + 1} of the chain ({step.task.name}) sets delay, at or "
                    "dedup_key, which only the first step can have (a later step runs "
                    "when the one before it completes)",
                    suggestion="set them on the chain's first step",
                )
        first = await self.send(steps[0], chain=[s.step() for s in steps[1:]])
        return ChainJob(self, first, [s.task.queue for s in steps])

    async def send_group(self, members: Sequence[Signature]) -> GroupJob:
        for member in members:
            member.check()
        jobs = await asyncio.gather(*(self.send(member) for member in members))
        return GroupJob(self, jobs)

    async def next_step(self, step: Step, rest: list[Step], result: Any, ctx: JobContext) -> str:
        """Enqueue ``step`` after the chain step ``ctx`` runs, then link it (see
        :mod:`s3queue.app.router`); its job id. Called by the worker, from its loop."""
        parent = f"{ctx.queue.name}:{ctx.message_id}"
        return await self.loop.call(self._next_step(step, rest, result, parent))

    async def cancel_step(self, job_id: str) -> None:
        await self.job(job_id).acancel()

    async def _next_step(self, step: Step, rest: list[Step], result: Any, parent: str) -> str:
        queue = await self.queue(step.queue)
        # The result goes on as JSON makes it (a tuple as a list), as it is stored.
        passed = decode_json(
            encode_json(result, limit=MAX_RESULT_BYTES, what="the result", exact=False)
        )
        payload = call_payload(
            step.task, [passed, *step.args], step.kwargs, chain=rest, parent=parent
        )
        message_id = await queue.enqueue(
            payload,
            priority=step.priority or 0,
            max_attempts=step.max_attempts,
            rate_key=step.rate_key,
        )
        parent_queue, _, parent_id = parent.partition(":")
        try:
            message_id = await queue.link(parent_queue, parent_id, message_id)
        except QueueError as error:
            # The next step is durable: it links itself before it runs. Failing this
            # step now would run it again (or dead-letter it) while its successor runs.
            log.warning(
                "could not link %s:%s after %s (it links itself): %s",
                queue.name,
                message_id,
                parent,
                error,
            )
        return f"{queue.name}:{message_id}"

    async def _close(self) -> None:
        opened, self._queues = self._queues, {}
        for opening in opened.values():
            if opening.done() and opening.exception() is None:
                await opening.result().close()
        if self._storage is not None:
            await self._storage.close()
            self._storage = None

    # --- closing -------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the app's queues and stop its loop (it starts again if used)."""
        self.loop.stop(self._close())

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> App:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


#: Apps to close when the interpreter exits: a request still in flight on an app's
#: loop (a record written after a commit, a clock sample) then finishes first, rather
#: than being cut off as the process ends.
_OPEN_APPS: weakref.WeakSet[App] = weakref.WeakSet()


def _close_idle_apps() -> None:
    # As the main thread ends: apps that other threads are still using (a web
    # server's) are closed at exit instead, once those threads are done.
    for app in list(_OPEN_APPS):
        if not app.loop.in_flight:
            with contextlib.suppress(Exception):
                app.close()


def _close_apps() -> None:
    for app in list(_OPEN_APPS):
        with contextlib.suppress(Exception):
            app.close()


# Run as the main thread ends, before the interpreter starts finalizing (a plain atexit
# handler runs later, and obstore's requests then sometimes abort the process), like
# concurrent.futures' own exit hook; atexit for the rest.
getattr(threading, "_register_atexit", atexit.register)(_close_idle_apps)
atexit.register(_close_apps)


def _task_name(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or "?"
    main = sys.modules.get("__main__")
    if module == "__main__" and main is not None:
        # A module run as a program is "__main__" here but has its import name in a
        # worker: take that name (python -m pkg.mod), else the one a worker started
        # here would import it by (s3queue worker imports from the current directory).
        spec = getattr(main, "__spec__", None)
        module = spec.name if spec is not None else _import_name(getattr(main, "__file__", None))
    return f"{module}.{getattr(fn, '__qualname__', repr(fn))}"


def _import_name(path: str | None) -> str:
    """``pkg.mod`` for ``./pkg/mod.py`` under the current directory, else ``mod``."""
    if path is None:
        return "__main__"
    absolute = Path(os.path.abspath(path))  # as given: a symlinked directory keeps its name
    try:
        parts = absolute.with_suffix("").relative_to(Path.cwd()).parts
    except ValueError:
        parts = ()
    if parts and all(part.isidentifier() for part in parts):
        return ".".join(parts)
    return absolute.stem


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _first(*values: int | None) -> int:
    return next((v for v in values if v is not None), 0)


__all__ = ["App", "Chain", "Group", "Signature", "Task", "TaskOptions", "chain", "group"]
