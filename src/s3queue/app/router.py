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
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from s3queue.app.calls import Call, Step, read_call
from s3queue.errors import QueueError
from s3queue.info import Lease
from s3queue.runtime.routes import Route
from s3queue.runtime.worker import JobContext

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


#: Enqueues the next step of a chain after ``ctx``'s message, with ``result`` as its
#: first argument; returns its message id (the app provides it).
NextStep = Callable[[Step, list[Step], Any, JobContext], Any]


class TaskRouter:
    """The router of a worker serving an app's tasks (see the module docstring)."""

    def __init__(self, tasks: Mapping[str, Task[Any, Any]], next_step: NextStep) -> None:
        self.tasks = dict(tasks)
        self._next_step = next_step

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
            parent_queue, _, parent_id = call.parent.partition(":")
            winner = await ctx.queue.link(parent_queue, parent_id, ctx.message_id)
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
        if call.chain:
            await self._next_step(call.chain[0], call.chain[1:], result, ctx)
        return result


def _run_sync(task: Task[Any, Any], call: Call, payload: Any, ctx: JobContext) -> Any:
    token = _current.set(ctx)
    try:
        return task.fn(*call.args, **call.kwargs)
    finally:
        _current.reset(token)


async def _refuse(error: QueueError, payload: Any, ctx: JobContext) -> Any:
    raise error
