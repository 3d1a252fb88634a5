"""What a worker logs on ``s3queue.worker``: a banner when it starts, one line per
finished job, and a line when it stops.

The banner says what this process is about to do (version, store, queue, handler,
concurrency, leases), one fact a line as RQ does, so that each line keeps the log
format's prefix. A job's line names the message, the handler, the outcome, the
duration and the attempt; a completed or cancelled job logs at INFO, a retry, a
lost lease or a lease taken back from a dead worker at WARNING, a dead letter at
ERROR. Every line
also carries its facts as ``extra`` record attributes (``message_id``, ``outcome``,
``duration``, ...), for log formatters that write them as fields.

Invariant: the banner and a job's line are built only when their level is enabled
(the worker checks before it builds the event), and the store URL is shown only
through :func:`~s3queue.storage.redact_url`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from s3queue.runtime.pacing import MAX_PREFETCH_FACTOR
from s3queue.storage import redact_url
from s3queue.version import __version__

if TYPE_CHECKING:
    from s3queue.runtime.worker import Worker, WorkerEvent

#: The level of each job outcome's line: a retry or a lost lease may need a look,
#: a dead letter needs one (it stays until redriven or purged).
LEVELS: dict[str, int] = {
    "completed": logging.INFO,
    "cancelled": logging.INFO,
    "retry": logging.WARNING,
    "dead": logging.ERROR,
    "lease_lost": logging.WARNING,
    "recovered": logging.WARNING,
}
#: Longest error summary in a job's line (the ``error`` field has all of it).
ERROR_CHARS = 200


def handler_name(handler: object) -> str:
    """``module:qualname`` of a function or method, the repr of anything else (an
    object with ``__call__``, a ``functools.partial``)."""
    module = getattr(handler, "__module__", None)
    qualname = getattr(handler, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str):
        return f"{module}:{qualname}"
    return repr(handler)


def banner(worker: Worker) -> list[tuple[str, dict[str, Any]]]:
    """The lines logged when ``worker`` starts, each with its facts as fields."""
    pacing, leases = worker.pacing, worker.leases
    store = redact_url(worker.queue.storage.url)
    scaling = ""
    if pacing.min_concurrency != pacing.max_concurrency:
        scaling = f" (autoscaling {pacing.min_concurrency} to {pacing.max_concurrency})"
    prefetch = worker.polling.prefetch
    ahead = (
        f"adaptive (at most {MAX_PREFETCH_FACTOR * pacing.max_concurrency})"
        if prefetch is None
        else str(prefetch)
    )
    runs = "async" if worker.is_async else f"sync, in up to {pacing.max_concurrency} threads"
    timeout = "none" if leases.job_timeout is None else f"{leases.job_timeout:g} s"
    attempts = "as enqueued" if leases.max_attempts is None else str(leases.max_attempts)
    lines: list[tuple[str, dict[str, Any]]] = [
        (
            f"s3queue {__version__} worker {worker.worker_id} starting",
            {"version": __version__, "worker_id": worker.worker_id},
        ),
        (f"  store        {store}", {"store": store}),
        _queues_line(worker),
        (f"  handler      {worker.handler_name} ({runs})", {"handler": worker.handler_name}),
        (
            f"  concurrency  {worker.concurrency}{scaling}",
            {
                "concurrency": worker.concurrency,
                "min_concurrency": pacing.min_concurrency,
                "max_concurrency": pacing.max_concurrency,
            },
        ),
        (
            f"  polling      every {worker.polling.poll_interval:g} s when idle, prefetch {ahead}",
            {"poll_interval": worker.polling.poll_interval, "prefetch": prefetch},
        ),
        (
            f"  leases       visibility timeout {leases.visibility_timeout:g} s, "
            f"job timeout {timeout}, max attempts {attempts}",
            {
                "visibility_timeout": leases.visibility_timeout,
                "job_timeout": leases.job_timeout,
                "max_attempts": leases.max_attempts,
            },
        ),
    ]
    crons = worker.scheduler.crons
    if crons:
        names = ", ".join(f"{cron.name} ({cron.schedule})" for cron in crons)
        lines.append((f"  cron         {names}", {"cron": [cron.name for cron in crons]}))
    return lines


def log_banner(log: logging.Logger, worker: Worker) -> None:
    """Log :func:`banner` at INFO (nothing is built when INFO is off)."""
    if log.isEnabledFor(logging.INFO):
        for text, fields in banner(worker):
            log.info("%s", text, extra=fields)


def job_record(
    event: WorkerEvent, handler: str, now: float
) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """The line of a job's outcome (an event named in :data:`LEVELS`): its format, its
    arguments (one format per outcome, so that log tools group lines by it) and its
    fields. ``now`` is the store's time, to say when a retry runs."""
    attempt = str(event.attempt)
    if event.max_attempts is not None:
        attempt += f"/{event.max_attempts}"
    fields: dict[str, Any] = {
        "message_id": event.message_id,
        "handler": handler,
        "outcome": "dead" if event.dead else event.name,
        "duration": event.duration,
        "attempt": event.attempt,
        "max_attempts": event.max_attempts,
    }
    if event.error is not None:
        fields["error"] = event.error
    if event.queue is not None:
        fields["queue"] = event.queue  # a message id is unique within its queue only
    job = (handler, event.message_id)
    took = event.duration or 0.0
    error = _summary(event.error)
    if event.name == "completed":
        return "%s[%s] completed in %.3f s (attempt %s)", (*job, took, attempt), fields
    if event.name == "cancelled":
        # Asked for: not a failure, even when the handler raised as it stopped.
        form = "%s[%s] cancelled after %.3f s (attempt %s)"
        return form, (*job, took, attempt), fields
    if event.name == "retry":
        fields["next_visible_at"] = event.next_visible_at
        wait = max(0.0, (event.next_visible_at or now) - now)
        form = "%s[%s] failed in %.3f s (attempt %s), retry in %.1f s: %s"
        return form, (*job, took, attempt, wait, error), fields
    if event.name == "dead":
        form = "%s[%s] failed in %.3f s (attempt %s), dead-lettered: %s"
        return form, (*job, took, attempt, error), fields
    if event.name == "lease_lost":
        return "%s[%s] lost its lease (attempt %s): %s", (*job, attempt, error), fields
    return "message %s taken back (attempt %s): %s", (event.message_id, attempt, error), fields


def _queues_line(worker: Worker) -> tuple[str, dict[str, Any]]:
    queues = worker.queues.queues
    if len(queues) == 1:
        shards = queues[0].settings.shards
        text = f"{queues[0].name} ({shards} shard{'s' if shards != 1 else ''})"
        return f"  queue        {text}", {"queue": queues[0].name, "shards": shards}
    text = ", ".join(f"{q.name} ({q.settings.shards})" for q in queues)
    return f"  queues       {text}", {"queues": [q.name for q in queues]}


def log_job(log: logging.Logger, event: WorkerEvent, handler: str, now: float) -> None:
    """Log ``event``'s line at its outcome's level (the caller checked it is enabled)."""
    form, args, fields = job_record(event, handler, now)
    # A lease taken back on the message's last attempt made a dead letter: an error.
    level = logging.ERROR if event.dead else LEVELS[event.name]
    log.log(level, form, *args, extra=fields)


def log_stopped(log: logging.Logger, worker: Worker) -> None:
    """The last line of a run: how many jobs completed and how many attempts failed."""
    log.info(
        "worker %s stopped: %d jobs completed, %d attempts failed",
        worker.worker_id,
        worker.processed,
        worker.failed,
        extra={
            "worker_id": worker.worker_id,
            "completed": worker.processed,
            "failed": worker.failed,
        },
    )


def _summary(error: str | None) -> str:
    """The first line of an error's text, cut to :data:`ERROR_CHARS`."""
    if not error:
        return ""
    lines = error.strip().splitlines()
    first = lines[0] if lines else ""
    return first if len(first) <= ERROR_CHARS else first[: ERROR_CHARS - 3] + "..."
