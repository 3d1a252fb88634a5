"""How a worker runs one message: which handler, with which per-message settings.

A worker built with one handler runs every message with it; a worker built with a
:class:`Router` (the task app's) asks it for each message. A router that cannot run a
message raises a non-retriable :class:`~s3queue.errors.QueueError`, and the worker
dead-letters the message at once with that error (redrivable once a worker that
knows it is deployed). Invariant: routing happens inside the job, so a routing error
is the job's failure, never the worker's.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from s3queue.backoff import Backoff
from s3queue.errors import ConfigurationError
from s3queue.info import Lease
from s3queue.runtime.worker_log import handler_name

if TYPE_CHECKING:
    from s3queue.runtime.worker import JobContext, Worker

Handler = Callable[[Any, "JobContext"], Any]


@dataclass(frozen=True, slots=True)
class Route:
    """One message's handler and the settings that override the worker's for it
    (None: the worker's)."""

    handler: Handler
    name: str
    is_async: bool
    timeout: float | None = None
    backoff: Backoff | None = None
    max_attempts: int | None = None


@runtime_checkable
class Router(Protocol):
    """Chooses the route of each message (see the module docstring)."""

    def route(self, lease: Lease) -> Route: ...

    def describe(self) -> str:
        """What the worker's banner says it runs."""
        ...

    def bind(self, worker: Worker) -> None:
        """Called once by the worker it serves (to subscribe to its events)."""
        ...


class OneHandler:
    """The router of a worker built with one handler."""

    def __init__(self, handler: Handler) -> None:
        self._route = Route(handler, handler_name(handler), is_async(handler))

    def route(self, lease: Lease) -> Route:
        return self._route

    def describe(self) -> str:
        return self._route.name

    def bind(self, worker: Worker) -> None:
        pass

    @property
    def is_async(self) -> bool:
        return self._route.is_async


def is_async(handler: object) -> bool:
    """Whether ``handler`` is async: an object whose ``__call__`` is async counts too."""
    if not callable(handler):
        raise ConfigurationError(
            f"handler {handler!r} is not callable", suggestion="pass a function"
        )
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        type(handler).__call__
    )
