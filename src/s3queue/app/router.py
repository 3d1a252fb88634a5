"""How a worker runs task messages: find the task, call it, start the next chain step.

A message naming a task this worker does not know is dead-lettered at once (a
non-retriable error naming the task and the tasks known here): nothing is lost, and
``s3queue redrive`` sends it back once a worker that knows it is deployed.

Chains: the worker that completes a step enqueues the next one and then links it
(:meth:`Queue.link`, create-if-absent) before the step is acked. A step that has a
parent links itself before it runs, and runs only if the link names it. So a worker
killed between enqueueing the next step and acking its own makes its retry enqueue a
copy that finds the link taken and completes without running: each step runs once
per successful parent, and none is lost.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from s3queue.app.calls import Call, Step, read_call
from s3queue.core.rates import RateLimit
from s3queue.errors import QueueError
from s3queue.info import Lease
from s3queue.runtime.routes import Route
from s3queue.runtime.worker import JobContext, Worker, WorkerEvent

if TYPE_CHECKING:
    from s3queue.app.app import Task

_current: contextvars.ContextVar[JobContext] = contextvars.ContextVar("s3queue_job")


def current_job() -> JobContext:
    """The context of the job the calling task is running for: its id, attempt,
    ``cancelled`` flag, ``progress()`` and ``extend()``."""
    try:
        return _current.get()
    except LookupError:
        raise QueueError(
            "current_job() was called outside a running task",
            retriable=False,
            suggestion="call it from inside a task's function while a worker runs it",
        ) from None


class ChainSteps(Protocol):
    """What the router needs of the app to move a chain on (the app provides it)."""

    async def next_step(self, step: Step, rest: list[Step], result: Any, ctx: JobContext) -> str:
        """Enqueue ``step`` with ``result`` first after ``ctx``'s message, link it, and
        return its job id."""
        ...

    async def cancel_step(self, job_id: str) -> None: ...


class TaskRouter:
    """The router of a worker serving an app's tasks (see the module docstring)."""

    def __init__(
        self,
        tasks: Mapping[str, Task[Any, Any]],
        chains: ChainSteps,
        queue_limits: Mapping[str, RateLimit] | None = None,
    ) -> None:
        self.tasks = dict(tasks)
        self._chains = chains
        self._queue_limits = dict(queue_limits or {})
        #: The next step each running chain step enqueued (by "queue:id" of the step):
        #: cancelled too if the step's ack comes back cancelled.
        self._successors: dict[str, str] = {}

    def bind(self, worker: Worker) -> None:
        for outcome in ("completed", "retry", "dead", "lease_lost", "cancelled"):
            worker.on(outcome, self._finished)
        for queue in worker.queues.queues:
            # The limits are the workers' configuration: each claim carries them.
            for task in self.tasks.values():
                if task.queue == queue.name and task.options.rate_limit is not None:
                    queue.set_rate_limit(task.options.rate_limit, key=task.name)
            if queue.name in self._queue_limits:
                queue.set_rate_limit(self._queue_limits[queue.name])

    def _finished(self, event: WorkerEvent) -> Awaitable[None] | None:
        # Plain, not async: it runs for every job, and an async listener would cost
        # every job a task of its own. Only a cancelled chain step returns work.
        if not self._successors:
            return None
        successor = self._successors.pop(f"{event.queue}:{event.message_id}", None)
        if successor is not None and event.name == "cancelled":
            # Cancelled after it enqueued the next step, before its ack: the chain
            # stops here, so the next step must not run either.
            return self._chains.cancel_step(successor)
        return None

    def describe(self) -> str:
        names = sorted(self.tasks)
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        return f"{len(names)} task{'s' if len(names) != 1 else ''}: {shown}"

    def route(self, lease: Lease) -> Route:
        try:
            call = read_call(lease.payload, lease.id)
            task = self._task(call, lease)
        except QueueError as error:
            name = lease.payload.get("task") if isinstance(lease.payload, dict) else None
            return Route(
                functools.partial(_refuse, error), str(name or "?"), is_async=True, timeout=None
            )
        options = task.options
        plain = not call.chain and call.parent is None
        return Route(
            functools.partial(_run_sync, task, call)
            if plain and not task.is_async
            # Chain steps link and enqueue around the call: async, the call in a thread.
            else functools.partial(self._run_async, task, call),
            task.name,
            is_async=task.is_async or not plain,
            timeout=options.timeout,
            backoff=options.backoff,
            max_attempts=options.max_attempts,
        )

    def _task(self, call: Call, lease: Lease) -> Task[Any, Any]:
        task = self.tasks.get(call.task)
        if task is None:
            known = ", ".join(sorted(self.tasks)) or "none"
            raise QueueError(
                f"message {lease.id} of queue {lease.queue} names task {call.task!r}, "
                f"which this worker does not know (it knows: {known})",
                retriable=False,
                suggestion="deploy a worker whose app defines it, then "
                f"s3queue redrive {lease.queue} {lease.id}",
                metadata={"id": lease.id, "task": call.task},
            )
        return task

    async def _run_async(
        self, task: Task[Any, Any], call: Call, payload: Any, ctx: JobContext
    ) -> Any:
        if call.parent is not None:
            winner = await _linked_step(call.parent, ctx)
            if winner != ctx.message_id:
                # Our parent ran twice: the step it linked first is the one that runs.
                return {"duplicate_of": f"{ctx.queue.name}:{winner}"}
        token = _current.set(ctx)
        try:
            if task.is_async:
                result = await task.fn(*call.args, **call.kwargs)
            else:
                result = await asyncio.to_thread(task.fn, *call.args, **call.kwargs)
        finally:
            _current.reset(token)
        if call.chain and not ctx.cancelled:
            successor = await self._chains.next_step(call.chain[0], call.chain[1:], result, ctx)
            self._successors[f"{ctx.queue.name}:{ctx.message_id}"] = successor
        return result


async def _linked_step(parent: str, ctx: JobContext) -> str:
    """The step the link after ``parent`` names (``ctx``'s own message if none did),
    followed through redrives: a dead step sent back runs as a copy with a new id."""
    parent_queue, _, parent_id = parent.partition(":")
    winner = await ctx.queue.link(parent_queue, parent_id, ctx.message_id)
    seen: set[str] = set()
    while winner != ctx.message_id and winner not in seen:
        seen.add(winner)
        info = await ctx.queue.get(winner)
        if info is None or info.status != "redriven" or info.redriven_to is None:
            break
        winner = info.redriven_to
    return winner


def _run_sync(task: Task[Any, Any], call: Call, payload: Any, ctx: JobContext) -> Any:
    token = _current.set(ctx)
    try:
        return task.fn(*call.args, **call.kwargs)
    finally:
        _current.reset(token)


async def _refuse(error: QueueError, payload: Any, ctx: JobContext) -> Any:
    raise error
