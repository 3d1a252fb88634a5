"""What a worker logs on ``s3queue.worker``: its start banner, one line per finished
job with the job's facts as record fields, warnings for retries and lost leases."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

import s3queue
from s3queue import (
    Backoff,
    Cron,
    JobContext,
    Leases,
    Polling,
    Queue,
    QueueError,
    Scaling,
    Worker,
)
from s3queue.runtime.worker_log import handler_name
from tests.conftest import FAST, run_until

LOGGER = "s3queue.worker"


@pytest.fixture
async def queue() -> AsyncIterator[Queue]:
    """A fresh in-memory queue of three shards whose retries wait 0.2 s."""
    q = await Queue.open(
        f"memory://out-{uuid.uuid4().hex[:8]}", "mail", shards=3, backoff=Backoff(initial=0.2)
    )
    yield q
    await q.close()


def job_records(caplog: pytest.LogCaptureFixture, outcome: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if vars(r).get("outcome") == outcome]


def field(record: logging.LogRecord, name: str) -> Any:
    """A field the worker passed with ``extra=`` (a record attribute)."""
    return vars(record)[name]


async def send_email(payload: Any, ctx: JobContext) -> str:
    if payload == "reset" and ctx.attempt == 1:
        raise ConnectionError("upstream reset\nsecond line of the error")
    if payload == "gone":
        raise QueueError("410 Gone", retriable=False)
    return "sent"


# --- the banner ------------------------------------------------------------------------------


async def test_the_banner_names_version_store_queue_handler_and_concurrency(
    caplog: pytest.LogCaptureFixture,
) -> None:
    q = await Queue.open(f"memory://KEY:hunter22@banner-{uuid.uuid4().hex[:8]}", "mail", shards=3)
    worker = Worker(
        q,
        send_email,
        concurrency=4,
        scaling=Scaling(min_concurrency=2, max_concurrency=8),
        polling=FAST,
    )
    with caplog.at_level(logging.INFO, LOGGER):
        await run_until(worker, "workers_started")
    await q.close()
    records = [r for r in caplog.records if r.name == LOGGER][:7]
    banner = [r.getMessage() for r in records]
    assert banner[0] == f"s3queue {s3queue.__version__} worker {worker.worker_id} starting"
    text = "\n".join(banner)
    assert "store        memory://KEY:***@banner-" in text
    assert "queue        mail (3 shards)" in text
    assert "handler      tests.test_worker_output:send_email (async)" in text
    assert "concurrency  4 (autoscaling 2 to 8)" in text
    assert "prefetch adaptive (at most 32)" in text
    assert "visibility timeout 30 s" in text
    assert "hunter22" not in caplog.text
    fields = {k: v for r in records for k, v in vars(r).items()}
    assert fields["version"] == s3queue.__version__
    assert fields["store"].startswith("memory://KEY:***@banner-")
    assert (fields["queue"], fields["shards"], fields["concurrency"]) == ("mail", 3, 4)
    assert fields["handler"] == "tests.test_worker_output:send_email"


async def test_the_banner_shows_a_sync_handlers_threads_fixed_prefetch_and_cron(
    queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    def resize(payload: Any, ctx: JobContext) -> None:
        return None

    worker = Worker(
        queue,
        resize,
        concurrency=6,
        polling=Polling(poll_interval=0.01, prefetch=5),
        leases=Leases(visibility_timeout=60, job_timeout=120, max_attempts=4),
        cron=[Cron("0 3 * * *", name="cleanup")],
    )
    with caplog.at_level(logging.INFO, LOGGER):
        await run_until(worker, "workers_started")
    text = caplog.text
    assert ".<locals>.resize (sync, in up to 6 threads)" in text
    assert "concurrency  6\n" in text
    assert "every 0.01 s when idle, prefetch 5" in text
    assert "visibility timeout 60 s, job timeout 120 s, max attempts 4" in text
    assert "cron         cleanup (0 3 * * *)" in text


def test_a_handler_is_named_by_module_and_qualname_or_else_by_its_repr() -> None:
    class Resize:
        def __call__(self, payload: Any, ctx: JobContext) -> None:
            return None

        def __repr__(self) -> str:
            return "Resize(width=100)"

    assert handler_name(send_email) == "tests.test_worker_output:send_email"
    assert handler_name(Resize()) == "Resize(width=100)"
    assert handler_name(Resize().__call__) == (
        "tests.test_worker_output:"
        "test_a_handler_is_named_by_module_and_qualname_or_else_by_its_repr.<locals>.Resize.__call__"
    )


# --- one line per job ------------------------------------------------------------------------


async def test_a_completed_job_logs_one_info_line_with_id_duration_and_attempt(
    queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    mid = await queue.enqueue("hello", max_attempts=5)
    with caplog.at_level(logging.INFO, LOGGER):
        [event] = await run_until(Worker(queue, send_email, polling=FAST), "completed")
    [record] = job_records(caplog, "completed")
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        f"tests.test_worker_output:send_email[{mid}] completed in {event.duration:.3f} s"
        " (attempt 1/5)"
    )
    fields = {
        "message_id": mid,
        "handler": "tests.test_worker_output:send_email",
        "outcome": "completed",
        "duration": event.duration,
        "attempt": 1,
        "max_attempts": 5,
    }
    assert {key: field(record, key) for key in fields} == fields


async def test_a_retry_logs_a_warning_with_the_error_and_when_it_runs_again(
    queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    mid = await queue.enqueue("reset")
    with caplog.at_level(logging.INFO, LOGGER):
        await run_until(Worker(queue, send_email, polling=FAST), "completed")
    [retry] = job_records(caplog, "retry")
    assert retry.levelno == logging.WARNING
    text = retry.getMessage()
    assert text.startswith(f"tests.test_worker_output:send_email[{mid}] failed in ")
    assert "(attempt 1/3), retry in 0." in text
    assert text.endswith(" s: ConnectionError: upstream reset")  # its first line only
    assert field(retry, "error") == "ConnectionError: upstream reset\nsecond line of the error"
    assert field(retry, "next_visible_at") is not None
    [done] = job_records(caplog, "completed")
    assert "(attempt 2/3)" in done.getMessage()


async def test_a_dead_letter_logs_an_error_with_the_error(
    queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    mid = await queue.enqueue("gone")
    with caplog.at_level(logging.INFO, LOGGER):
        await run_until(Worker(queue, send_email, polling=FAST), "dead")
    [dead] = job_records(caplog, "dead")
    assert dead.levelno == logging.ERROR
    assert dead.getMessage().endswith("(attempt 1/3), dead-lettered: QueueError: 410 Gone")
    assert field(dead, "message_id") == mid


async def test_a_cancelled_job_logs_one_info_line(
    queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    mid = await queue.enqueue("hello")

    async def cancels_itself(payload: Any, ctx: JobContext) -> None:
        await ctx.queue.cancel([ctx.message_id])

    with caplog.at_level(logging.INFO, LOGGER):
        [event] = await run_until(Worker(queue, cancels_itself, polling=FAST), "cancelled")
    [record] = job_records(caplog, "cancelled")
    assert record.levelno == logging.INFO
    assert record.getMessage().endswith(
        f"cancels_itself[{mid}] cancelled after {event.duration:.3f} s (attempt 1/3)"
    )
    assert job_records(caplog, "completed") == []


async def test_a_lost_lease_logs_a_warning(queue: Queue, caplog: pytest.LogCaptureFixture) -> None:
    mid = await queue.enqueue("hello")
    other = await Queue.open(queue.storage.url, "mail")  # another worker's client

    async def overtaken(payload: Any, ctx: JobContext) -> None:
        # As if this lease had expired: another worker takes the message and completes it.
        await ctx.queue.release(ctx.lease)
        [taken] = await other.claim(1, 60)
        await other.ack(taken)

    # One slot and no prefetch: the worker cannot claim the message back itself.
    worker = Worker(
        queue, overtaken, concurrency=1, polling=Polling(poll_interval=0.01, prefetch=0)
    )
    with caplog.at_level(logging.INFO, LOGGER):
        await run_until(worker, "lease_lost")
    await other.close()
    [lost] = job_records(caplog, "lease_lost")
    assert lost.levelno == logging.WARNING
    assert lost.getMessage().startswith(
        f"tests.test_worker_output:test_a_lost_lease_logs_a_warning.<locals>.overtaken[{mid}]"
        f" lost its lease (attempt 1/3): cannot ack message {mid}"
    )
    assert not job_records(caplog, "completed")


async def test_a_lease_taken_back_from_a_dead_worker_logs_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"memory://orphan-{uuid.uuid4().hex[:8]}"
    dead = await Queue.open(url, "mail", shards=2, skew_margin=0.05)
    alive = await Queue.open(url, "mail", skew_margin=0.05)
    mid = await dead.enqueue("hello")
    await dead.claim(1, visibility_timeout=0.3, owner="gone-worker")  # never heard of again
    with caplog.at_level(logging.INFO, LOGGER):
        await run_until(Worker(alive, send_email, polling=FAST), "completed")
    await dead.close()
    await alive.close()
    [taken] = job_records(caplog, "recovered")
    assert taken.levelno == logging.WARNING
    assert taken.getMessage() == (
        f"message {mid} taken back (attempt 1): the lease of worker gone-worker expired"
    )
    [done] = job_records(caplog, "completed")
    assert "(attempt 2/3)" in done.getMessage()


async def test_a_lease_taken_back_on_its_last_attempt_logs_a_dead_letter_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"memory://orphan-{uuid.uuid4().hex[:8]}"
    dead = await Queue.open(url, "mail", shards=1, skew_margin=0.05)
    alive = await Queue.open(url, "mail", skew_margin=0.05)
    mid = await dead.enqueue("hello", max_attempts=1)
    await dead.claim(1, visibility_timeout=0.3, owner="gone-worker")  # its only attempt
    with caplog.at_level(logging.WARNING, LOGGER):  # errors show even with -q
        await run_until(Worker(alive, send_email, polling=FAST), "recovered")
    await dead.close()
    await alive.close()
    [taken] = job_records(caplog, "dead")
    assert taken.levelno == logging.ERROR
    assert taken.getMessage() == (
        f"message {mid} taken back (attempt 1): the lease of worker gone-worker expired"
        " and it had no attempts left: dead-lettered"
    )


async def test_at_warning_a_completed_job_logs_nothing(
    queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    await queue.enqueue("hello")
    await queue.enqueue("reset")
    with caplog.at_level(logging.WARNING, LOGGER):
        await run_until(Worker(queue, send_email, polling=FAST), "completed", count=2)
    assert [field(r, "outcome") for r in caplog.records] == ["retry"]


async def test_a_completed_jobs_duration_is_its_handlers_time_without_the_ack(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for a failed attempt (and as the metrics histogram says): the store's time
    to commit the ack is not the job's."""
    ack = queue.ack
    slow = 0.5

    async def slow_ack(*args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(slow)  # a slow store, not synchronisation
        await ack(*args, **kwargs)

    monkeypatch.setattr(queue, "ack", slow_ack)
    await queue.enqueue("hello")
    [event] = await run_until(Worker(queue, send_email, polling=FAST), "completed")
    assert event.duration is not None
    assert event.duration < slow  # send_email returns at once
