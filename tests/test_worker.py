"""The worker pool, on every backend: handlers, leases, retries, shutdown, events."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from s3queue import (
    JobContext,
    Leases,
    Polling,
    Queue,
    QueueError,
    Scaling,
    Worker,
    WorkerEvent,
)
from s3queue.runtime.pacing import Pacing
from tests.conftest import FAST, run_until


async def until_idle(q: Queue) -> None:
    """Wait until nothing is pending, delayed or processing (other tasks do the work)."""
    while True:
        s = await q.stats()
        if s.pending + s.delayed + s.processing == 0:
            return
        await asyncio.sleep(0.02)  # polling shared storage: there is no event to await


async def run_until_idle(worker: Worker) -> None:
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(until_idle(worker.queue), 60)
    finally:
        await worker.stop()
        await task


async def test_async_handler_results_are_stored(queue: Queue) -> None:
    ids = await queue.enqueue_many([{"n": n} for n in range(50)])

    async def double(payload: dict[str, int], ctx: JobContext) -> int:
        return payload["n"] * 2

    await run_until_idle(Worker(queue, double, concurrency=8, polling=FAST))
    infos = [await queue.get(mid) for mid in ids]
    assert [i.result for i in infos if i] == [n * 2 for n in range(50)]
    assert all(i is not None and i.status == "completed" for i in infos)


async def test_sync_handler_runs_in_a_thread(queue: Queue) -> None:
    await queue.enqueue_many([{"n": n} for n in range(20)])
    threads: set[str] = set()
    main = threading.current_thread().name

    def record(payload: dict[str, int], ctx: JobContext) -> None:
        threads.add(threading.current_thread().name)

    worker = Worker(queue, record, concurrency=4, polling=FAST)
    await run_until_idle(worker)
    assert worker.processed == 20
    assert main not in threads


async def test_failed_attempt_is_retried_then_completes(queue: Queue) -> None:
    mid = await queue.enqueue({"x": 1})
    attempts: list[int] = []

    async def flaky(payload: Any, ctx: JobContext) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionError("upstream reset")
        return "ok"

    await run_until_idle(Worker(queue, flaky, polling=FAST))
    info = await queue.get(mid)
    assert attempts == [1, 2]
    assert info is not None
    assert info.status == "completed"
    assert info.result == "ok"
    assert [e.type for e in info.errors] == ["ConnectionError"]


async def test_non_retriable_error_dead_letters_at_once(queue: Queue) -> None:
    mid = await queue.enqueue({"x": 1})

    async def gone(payload: Any, ctx: JobContext) -> None:
        raise QueueError("410 Gone", retriable=False)

    await run_until_idle(Worker(queue, gone, polling=FAST))
    info = await queue.get(mid)
    assert info is not None
    assert info.status == "dead"
    assert info.attempts == 1
    await queue.committers[0].close()
    await queue.committers[1].close()
    dead = await queue.dead_letters()
    assert [d.id for d in dead] == [mid]
    assert dead[0].errors[0].message == "410 Gone"


async def test_exhausted_attempts_keep_every_error(queue: Queue) -> None:
    mid = await queue.enqueue({"x": 1}, max_attempts=3)

    async def broken(payload: Any, ctx: JobContext) -> None:
        raise ValueError(f"bad {ctx.attempt}")

    await run_until_idle(Worker(queue, broken, polling=FAST))
    info = await queue.get(mid)
    assert info is not None
    assert info.status == "dead"
    assert [e.message for e in info.errors] == ["bad 1", "bad 2", "bad 3"]


async def test_job_timeout_counts_as_a_failed_attempt(queue: Queue) -> None:
    mid = await queue.enqueue({"x": 1}, max_attempts=2)
    release = asyncio.Event()

    async def stuck(payload: Any, ctx: JobContext) -> None:
        await release.wait()

    await run_until_idle(Worker(queue, stuck, leases=Leases(job_timeout=0.05), polling=FAST))
    info = await queue.get(mid)
    assert info is not None
    assert info.status == "dead"
    assert [e.type for e in info.errors] == ["JobTimeout", "JobTimeout"]


async def test_long_job_is_extended_and_runs_once_with_two_workers(queue: Queue) -> None:
    """A 3 s job with a 1 s visibility timeout: the heartbeat keeps the lease."""
    mid = await queue.enqueue({"x": 1})
    runs: list[str] = []

    async def slow(payload: Any, ctx: JobContext) -> None:
        runs.append(ctx.worker_id)
        await asyncio.sleep(3)  # the job itself: simulated work, not synchronisation

    a = Worker(queue, slow, leases=Leases(visibility_timeout=1.0), worker_id="a", polling=FAST)
    b = Worker(queue, slow, leases=Leases(visibility_timeout=1.0), worker_id="b", polling=FAST)
    tasks = [asyncio.create_task(a.run()), asyncio.create_task(b.run())]
    try:
        await asyncio.wait_for(until_idle(queue), 30)
    finally:
        await asyncio.gather(a.stop(), b.stop())
        await asyncio.gather(*tasks)
    info = await queue.get(mid)
    assert len(runs) == 1
    assert info is not None
    assert info.status == "completed"
    assert info.attempts == 1


async def test_graceful_stop_finishes_running_and_releases_unstarted(queue: Queue) -> None:
    await queue.enqueue_many([{"n": n} for n in range(6)])
    started = asyncio.Event()
    finish = asyncio.Event()
    done: list[int] = []

    async def job(payload: dict[str, int], ctx: JobContext) -> None:
        started.set()
        await finish.wait()
        done.append(payload["n"])

    # Two run, four wait in the prefetch buffer with long leases.
    worker = Worker(
        queue,
        job,
        concurrency=2,
        polling=Polling(poll_interval=0.01, prefetch=4),
        leases=Leases(visibility_timeout=600),
    )
    claimed: list[str] = []
    all_claimed = asyncio.Event()

    def on_claimed(event: WorkerEvent) -> None:
        claimed.append(event.message_id or "")
        if len(claimed) == 6:
            all_claimed.set()

    worker.on("claimed", on_claimed)
    task = asyncio.create_task(worker.run())
    await started.wait()
    await all_claimed.wait()
    assert len(worker._buffer) == 4
    stopping = asyncio.create_task(worker.stop(drain=True))
    await asyncio.sleep(0)
    finish.set()
    await stopping
    await task
    assert len(done) == 2
    # The four unstarted messages are claimable at once, not after 600 s.
    other = await queue.claim(10, 30)
    assert len(other) == 4
    assert all(lease.attempt == 1 for lease in other)


async def test_events_describe_each_outcome(queue: Queue) -> None:
    ok = await queue.enqueue({"kind": "ok"})
    bad = await queue.enqueue({"kind": "bad"}, max_attempts=2)
    events: list[WorkerEvent] = []

    async def handler(payload: dict[str, str], ctx: JobContext) -> str:
        if payload["kind"] == "bad":
            raise RuntimeError("nope")
        return "fine"

    worker = Worker(queue, handler, polling=FAST)
    for name in ("claimed", "processing", "completed", "retry", "dead", "workers_started"):
        worker.on(name, events.append)
    stopped: list[WorkerEvent] = []
    worker.on("workers_stopped", stopped.append)
    await run_until_idle(worker)
    by_name = {(e.name, e.message_id) for e in events}
    assert ("completed", ok) in by_name
    assert ("retry", bad) in by_name
    assert ("dead", bad) in by_name
    retry = next(e for e in events if e.name == "retry")
    assert retry.error == "RuntimeError: nope"
    assert retry.next_visible_at is not None
    assert len(stopped) == 1


async def test_unknown_event_name_is_rejected(queue: Queue) -> None:
    async def handler(payload: Any, ctx: JobContext) -> None:
        return None

    with pytest.raises(QueueError, match="unknown event"):
        Worker(queue, handler).on("finished", print)  # type: ignore[arg-type]


async def test_progress_is_visible_while_running(queue: Queue) -> None:
    mid = await queue.enqueue({"x": 1})
    seen = asyncio.Event()
    proceed = asyncio.Event()

    async def job(payload: Any, ctx: JobContext) -> None:
        await ctx.progress(0.5)
        seen.set()
        await proceed.wait()

    worker = Worker(queue, job, polling=FAST)
    task = asyncio.create_task(worker.run())
    await seen.wait()
    info = await queue.get(mid)
    proceed.set()
    await worker.stop()
    await task
    assert info is not None
    assert info.status == "processing"
    assert info.progress == 0.5


class Checks:
    """Counts a worker's idle checks, and lets a test wait for the next few."""

    def __init__(self, worker: Worker) -> None:
        self.count = 0
        self._waiters: list[tuple[int, asyncio.Event]] = []
        real = worker._check

        async def check() -> bool:
            found = await real()
            self.count += 1
            for target, event in self._waiters:
                if self.count >= target:
                    event.set()
            return found

        worker._check = check  # type: ignore[method-assign]

    async def next(self, count: int) -> None:
        event = asyncio.Event()
        self._waiters.append((self.count + count, event))
        await event.wait()


async def noop(payload: Any, ctx: JobContext) -> None:
    return None


async def test_an_idle_worker_costs_one_request_per_poll_interval_whatever_the_shards(
    store_url: str,
) -> None:
    q = await Queue.open(store_url, "wide", shards=16)
    worker = Worker(q, noop, polling=Polling(poll_interval=0.02))
    checks = Checks(worker)
    cluster = ClusterRequests(worker)
    task = asyncio.create_task(worker.run())
    await checks.next(3)  # past the first look at every shard
    while q.store_clock is not None and q.store_clock.narrowing:
        await checks.next(1)  # and past the clock's first samples (S3: a second or so)
    q.storage.counts.reset()
    cluster.made = 0
    started = time.monotonic()
    await checks.next(40)  # two sweeps included
    elapsed = time.monotonic() - started
    requests = q.storage.counts.total - cluster.made
    await worker.stop()
    await task
    await q.close()
    # A cost bound, not a speed test: a slower machine only makes fewer requests.
    # The cluster's steps (heartbeat, lease, the coordinator's count) come on top,
    # once a heartbeat interval (and at 1, 2, 4... s at the start): README's formula.
    assert requests <= elapsed / 0.02 + 4
    assert q.storage.counts.get >= requests - 2  # reads: the cheapest kind


class ClusterRequests:
    """Counts the requests made while the worker's cluster steps (an idle check
    that overlaps one is counted with it: the bound on the others only tightens)."""

    def __init__(self, worker: Worker) -> None:
        self.made = 0
        step = worker.cluster.step
        counts = worker.queue.storage.counts

        async def counted(*, listing: bool = False) -> None:
            before = counts.total
            try:
                await step(listing=listing)
            finally:
                # Reset while it stepped: what it made since the reset counts.
                self.made += counts.total - before if counts.total >= before else counts.total

        worker.cluster.step = counted  # type: ignore[method-assign]


async def checks_until_done(consumer: Queue, act: Callable[[], Awaitable[Any]]) -> int:
    """Idle checks an idle worker on ``consumer`` makes between ``act()`` (another
    process making a message claimable) and that message's completion."""
    done = asyncio.Event()
    worker = Worker(consumer, noop, polling=Polling(poll_interval=0.02))
    worker.on("completed", lambda e: done.set())
    checks = Checks(worker)
    task = asyncio.create_task(worker.run())
    await checks.next(3)
    before = checks.count
    await act()
    await asyncio.wait_for(done.wait(), 30)
    await worker.stop()
    await task
    return checks.count - before


async def test_an_idle_worker_wakes_when_another_process_enqueues(store_url: str) -> None:
    consumer = await Queue.open(store_url, "bell", shards=16)
    producer = await Queue.open(store_url, "bell")  # its own cursors: no in-process hint
    # Found by reading the wake object: a sweep (one request every 5 checks, 3 per
    # shard) would take up to 240 checks to reach the right one of 16 shards.
    assert await checks_until_done(consumer, lambda: producer.enqueue({"x": 1})) < 10
    await producer.close()
    await consumer.close()


async def test_a_released_message_wakes_an_idle_worker(store_url: str) -> None:
    first = await Queue.open(store_url, "handover", shards=16)
    second = await Queue.open(store_url, "handover")
    await first.enqueue({"x": 1})
    [lease] = await first.claim(1, 60)  # then released, e.g. by a worker shutting down
    assert await checks_until_done(second, lambda: first.release(lease)) < 10
    await first.close()
    await second.close()


async def test_an_idle_worker_takes_over_the_lease_of_a_dead_one(store_url: str) -> None:
    dead = await Queue.open(store_url, "orphan", shards=2, skew_margin=0.05)
    alive = await Queue.open(store_url, "orphan", skew_margin=0.05)
    await dead.enqueue({"x": 1})
    [lease] = await dead.claim(1, visibility_timeout=0.3)  # then never heard from again
    done = asyncio.Event()
    worker = Worker(alive, noop, polling=FAST)
    worker.on("completed", lambda e: done.set())
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(done.wait(), 30)
    await worker.stop()
    await task
    info = await alive.get(lease.id)
    assert info is not None
    assert info.status == "completed"
    assert info.attempts == 2
    await dead.close()
    await alive.close()


async def test_buffered_jobs_start_highest_priority_first(queue: Queue) -> None:
    await queue.enqueue_many([{"p": 0}] * 6)
    await queue.enqueue_many([{"p": 5}] * 2, priority=5)
    await queue.enqueue_many([{"p": -1}] * 2, priority=-1)
    started: list[int] = []

    async def note(payload: Any, ctx: JobContext) -> None:
        started.append(payload["p"])

    worker = Worker(queue, note, concurrency=1, polling=Polling(poll_interval=0.01, prefetch=9))
    await run_until_idle(worker)
    assert started == [5, 5, 0, 0, 0, 0, 0, 0, -1, -1]


@pytest.mark.parametrize("shards", [4, 16])
async def test_a_priority_message_enqueued_behind_a_backlog_starts_first(
    store_url: str, shards: int
) -> None:
    q = await Queue.open(store_url, f"urgent{shards}", shards=shards)
    await q.enqueue_many([{"n": n} for n in range(2000)])
    urgent = await q.enqueue({"urgent": True}, priority=10)
    order: list[str] = []
    enough = asyncio.Event()

    async def note(payload: Any, ctx: JobContext) -> None:
        order.append(ctx.message_id)
        if len(order) >= 20:
            enough.set()

    worker = Worker(q, note, concurrency=4, polling=FAST)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(enough.wait(), 60)
    await worker.stop()
    await task
    await q.close()
    assert urgent in order[:4]  # the first claim: concurrency jobs, no prefetch yet


async def test_autoscaling_grows_under_backlog(queue: Queue) -> None:
    await queue.enqueue_many([{"n": n} for n in range(200)])

    async def job(payload: Any, ctx: JobContext) -> None:
        await asyncio.sleep(0.002)  # simulated work

    worker = Worker(
        queue,
        job,
        concurrency=1,
        scaling=Scaling(min_concurrency=1, max_concurrency=4, scale_cooldown=0.0),
        polling=FAST,
    )
    levels: list[int] = []
    worker.on("processing", lambda e: levels.append(worker.concurrency))
    await run_until_idle(worker)
    assert worker.processed == 200
    assert max(levels) == 4


async def test_work_enqueued_by_a_handler_is_announced(queue: Queue) -> None:
    first = await queue.enqueue({"step": 1})
    announced: list[str] = []

    async def chain(payload: dict[str, int], ctx: JobContext) -> None:
        if payload["step"] == 1:
            await ctx.queue.enqueue({"step": 2})

    worker = Worker(queue, chain, polling=FAST)
    worker.on("enqueued", lambda e: announced.append(e.message_id or ""))
    await run_until_idle(worker)
    assert len(announced) == 1
    assert announced[0] != first
    info = await queue.get(announced[0])
    assert info is not None
    assert info.status == "completed"


async def test_unstorable_result_dead_letters_with_the_reason(queue: Queue) -> None:
    [mid] = await queue.enqueue_many([{"n": 1}])

    async def returns_an_object(payload: Any, ctx: JobContext) -> Any:
        return object()

    worker = Worker(queue, returns_an_object, concurrency=1, polling=FAST)
    await run_until_idle(worker)
    info = await queue.get(mid)
    assert info is not None
    assert info.status == "dead"
    assert "JSON" in info.errors[-1].message
    assert info.attempts == 1  # retrying could not help: dead at once


async def test_plain_function_returning_a_coroutine_is_awaited(queue: Queue) -> None:
    [mid] = await queue.enqueue_many([{"n": 21}])

    async def double(payload: dict[str, int]) -> int:
        return payload["n"] * 2

    worker = Worker(queue, lambda payload, ctx: double(payload), concurrency=1, polling=FAST)
    await run_until_idle(worker)
    info = await queue.get(mid)
    assert info is not None
    assert info.status == "completed"
    assert info.result == 42


async def test_fast_jobs_share_cursor_writes(queue: Queue) -> None:
    await queue.enqueue_many([{"n": n} for n in range(400)])

    async def noop(payload: Any, ctx: JobContext) -> None:
        return None

    queue.storage.counts.reset()
    worker = Worker(queue, noop, concurrency=8, polling=FAST)
    await run_until_idle(worker)
    assert worker.processed == 400
    # Each message needs a claim and an ack: a write per message without batching.
    # Claims wait for half the pipeline (8 + a prefetch of 8 to 32), acks ride on
    # them: 12 writes here. Claiming a few slots at a time took about 50.
    assert queue.storage.counts.conditional_put <= 400 / 16


def test_prefetch_adapts_to_how_fast_jobs_finish() -> None:
    async def handler(payload: Any, ctx: JobContext) -> None:
        return None

    queue: Any = object()
    fixed = Worker.__new__(Worker)  # only the sizing state matters here
    fixed.pacing = Pacing(min_concurrency=8, max_concurrency=8, fixed_prefetch=3)
    fixed.concurrency = 8
    assert fixed.prefetch == 3

    worker = Worker.__new__(Worker)
    worker.pacing, worker.concurrency = Pacing(min_concurrency=8, max_concurrency=8), 8
    assert worker.prefetch == 0  # nothing measured yet: take only what can run
    now = time.monotonic()
    worker.pacing.claim_rtt = 0.05
    worker.pacing.finish_times.extend(now - 1.0 + i / 64 for i in range(64))  # 64 jobs/s
    assert worker.prefetch == 7  # 3.2 jobs per claim round trip, twice that in hand
    worker.pacing.finish_times.extend(now - 0.05 + i / 1280 for i in range(64))  # 1,280 jobs/s
    assert worker.prefetch == 32  # 64 per round trip: capped at 4 x concurrency
    worker.pacing.finish_times.clear()
    worker.pacing.finish_times.extend(now - 0.1 + i / 640 for i in range(64))  # 640 jobs/s
    worker.pacing.claim_rtt = 0.01
    assert worker.prefetch == 13  # 6.4 per round trip, twice that in hand

    with pytest.raises(QueueError, match="prefetch"):
        Worker(queue, handler, polling=Polling(prefetch=-1))


async def test_a_small_batch_is_shared_by_every_idle_worker(store_url: str) -> None:
    """Four idle workers of 4 slots each, 40 messages in one enqueue_many: all 16
    slots fill at once (each worker takes what it can run, not the whole batch)."""
    first = await Queue.open(store_url, "shared", shards=4)
    queues = [first, *[await Queue.open(store_url, "shared") for _ in range(3)]]
    running, all_busy = 0, asyncio.Event()
    ran_by: dict[str, int] = {}

    async def job(payload: Any, ctx: JobContext) -> None:
        nonlocal running
        running += 1
        ran_by[ctx.worker_id] = ran_by.get(ctx.worker_id, 0) + 1
        if running >= 16:
            all_busy.set()
        await all_busy.wait()  # held until every slot of every worker is busy

    workers = [Worker(q, job, concurrency=4, polling=Polling(poll_interval=0.02)) for q in queues]
    checks = Checks(workers[0])
    tasks = [asyncio.create_task(w.run()) for w in workers]
    await checks.next(2)  # idle, listening
    await first.enqueue_many([{"n": n} for n in range(40)])
    await asyncio.wait_for(all_busy.wait(), 60)
    for worker in workers:
        await worker.stop()
    await asyncio.gather(*tasks)
    for q in queues:
        await q.close()
    assert len(ran_by) == 4


async def test_a_lease_that_expired_while_its_job_waited_is_not_started() -> None:
    # Found by the simulation (bench/sim): at 100 pods a worker's extensions kept
    # losing to other writers of a busy cursor, its prefetched lease expired, another
    # worker took the message back and completed it, and the first worker then
    # started it anyway, a minute late. A waiting lease is checked before its start.
    now = [1000.0]
    q = await Queue.open("memory://", "jobs", shards=1, clock=lambda: now[0], skew_margin=0.2)
    await q.enqueue_many([{"n": 0}, {"n": 1}])
    timeline: list[tuple[str, int | str | None, int]] = []
    first_running, go_on = asyncio.Event(), asyncio.Event()

    async def handle(payload: Any, ctx: JobContext) -> None:
        timeline.append(("start", payload["n"], ctx.attempt))
        if not first_running.is_set():
            first_running.set()
            await go_on.wait()

    worker = Worker(q, handle, concurrency=1, polling=Polling(poll_interval=0.01, prefetch=1))
    worker.on("lease_lost", lambda e: timeline.append(("lost", e.message_id, 0)))

    async def expire_the_waiting_lease() -> None:
        await first_running.wait()
        now[0] += 100  # every lease held is now expired by the queue's clock
        go_on.set()

    helper = asyncio.create_task(expire_the_waiting_lease())
    await run_until(worker, "completed", count=2)
    await helper
    await q.close()
    waiting = next(n for kind, n, _ in timeline if kind == "start" and n != timeline[0][1])
    starts = [(n, attempt) for kind, n, attempt in timeline if kind == "start" and n == waiting]
    # The waiting message never ran on the lease that expired: its first run is the
    # attempt after the one that was taken back.
    assert starts[0][1] == 2, timeline
    assert any(kind == "lost" for kind, _, _ in timeline)
