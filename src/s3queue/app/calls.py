"""The payload of a task message: which task, with which arguments, and what follows.

A task message's payload is a plain JSON object, readable with ``s3queue inspect``::

    {"task": "myapp.tasks.resize", "args": ["a.png"], "kwargs": {"width": 100},
     "chain": [{"task": "myapp.tasks.upload", "queue": "default"}],
     "parent": "images:0-L12-3"}

``chain`` lists the steps still to run after this one (each gets this one's result
as its first argument); ``parent`` names the chain step this message follows.
Invariant: payloads are built by :func:`call_payload` and read by :func:`read_call`
only, and every argument is checked to be plain JSON when the call is made.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from s3queue.errors import ConfigurationError, QueueError
from s3queue.payload import check_value


class Step(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A chain step still to run."""

    task: str
    queue: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    priority: int | None = None
    max_attempts: int | None = None
    rate_key: str | None = None


class Call(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    task: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    chain: list[Step] = []
    parent: str | None = None


def check_arguments(
    name: str, function: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]
) -> None:
    """Refuse, at call time, arguments the function cannot take or that would not
    come back from JSON as they were given, naming the argument."""
    try:
        bound = inspect.signature(function).bind(*args, **kwargs)
    except TypeError as error:
        raise ConfigurationError(
            f"{name}{inspect.signature(function)} cannot take these arguments: {error}",
            suggestion="call it as you would call the function itself",
        ) from None
    except ValueError:  # no signature to read (a builtin): the worker finds out
        bound = None
    names = list(bound.arguments) if bound is not None else []
    for index, value in enumerate(args):
        label = names[index] if index < len(names) else f"args[{index}]"
        check_value(value, f"{label} (an argument of {name})")
    for key, value in kwargs.items():
        check_value(value, f"{key} (an argument of {name})")


def call_payload(
    task: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    chain: Sequence[Step] = (),
    parent: str | None = None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {"task": task, "args": list(args), "kwargs": dict(kwargs)}
    if chain:
        payload["chain"] = [msgspec.to_builtins(step) for step in chain]
    if parent is not None:
        payload["parent"] = parent
    return payload


def read_call(payload: Any, message_id: str) -> Call:
    """The call a message's payload describes; a non-retriable error naming the
    message when it is not a task message (every attempt would fail the same way)."""
    try:
        return msgspec.convert(payload, Call)
    except msgspec.ValidationError as error:
        raise QueueError(
            f"message {message_id} is not a task call ({error}): its payload must be "
            '{"task": name, "args": [...], "kwargs": {...}}',
            retriable=False,
            suggestion="enqueue it with task.delay(), or serve this queue with a "
            "handler worker (s3queue worker QUEUE module:function)",
            metadata={"id": message_id},
        ) from None


__all__ = ["Call", "Step", "call_payload", "check_arguments", "read_call"]
