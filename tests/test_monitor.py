"""Prometheus metrics and health endpoints of a worker, over real HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from s3queue import JobContext, Queue, Worker
from s3queue.ops.monitor import WorkerMonitor
from s3queue.storage import RetryingStorage, RetryPolicy, open_raw_storage
from s3queue.storage.faults import Fault, FaultyStorage
from tests.conftest import FAST
from tests.httpget import fetch, get


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def serve(monitor: WorkerMonitor) -> tuple[asyncio.Server, int]:
    server = await monitor.serve("127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_metrics_count_every_outcome(queue: Queue) -> None:
    await queue.enqueue_many([{"n": n} for n in range(20)])
    everything_done = asyncio.Event()
    outcomes: list[str] = []

    async def flaky(payload: dict[str, int], ctx: JobContext) -> None:
        if payload["n"] < 3 and ctx.attempt == 1:
            raise RuntimeError("first attempt fails")

    worker = Worker(queue, flaky, concurrency=4, polling=FAST)

    def note(event: Any) -> None:
        outcomes.append(event.name)
        if outcomes.count("completed") == 20:
            everything_done.set()

    worker.on("completed", note)
    worker.on("retry", note)
    monitor = WorkerMonitor(worker)
    server, port = await serve(monitor)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(everything_done.wait(), 60)
    status, text = await get(port, "/metrics")
    await worker.stop()
    await task
    server.close()

    assert status == 200
    values = samples(text)
    q = ("queue", queue.name)
    assert values[("s3queue_jobs_finished_total", (("outcome", "completed"), q))] == 20
    assert values[("s3queue_jobs_finished_total", (("outcome", "retry"), q))] == 3
    assert values[("s3queue_jobs_claimed_total", (q,))] == 23
    assert values[("s3queue_job_duration_seconds_count", (("outcome", "completed"), q))] == 20
    assert values[("s3queue_worker_concurrency", (q,))] == 4
    assert values[("s3queue_storage_requests_total", (("kind", "conditional_put"), q))] > 0
    # Measured against the store when the queue opened: this machine's own clock.
    assert abs(values[("s3queue_clock_skew_seconds", (q,))]) <= 1.0
    assert 0 <= values[("s3queue_clock_skew_uncertainty_seconds", (q,))] <= 1.0


async def test_health_follows_the_worker_lifecycle(queue: Queue) -> None:
    async def handler(payload: Any, ctx: JobContext) -> None:
        return None

    worker = Worker(queue, handler, concurrency=1, polling=FAST)
    monitor = WorkerMonitor(worker)
    server, port = await serve(monitor)

    status, body = await get(port, "/healthz")
    assert status == 503
    assert body["problem"] == "not running"
    assert (await get(port, "/livez"))[0] == 200

    started = asyncio.Event()
    worker.on("workers_started", lambda e: started.set())
    task = asyncio.create_task(worker.run())
    await started.wait()
    status, body = await get(port, "/healthz")
    assert status == 200
    assert body["healthy"] is True

    await worker.stop()
    await task
    status, body = await get(port, "/readyz")
    assert status == 503
    assert (await get(port, "/nowhere"))[0] == 404
    server.close()


async def test_metrics_answer_any_host_name_and_forbid_sniffing(queue: Queue) -> None:
    async def handler(payload: Any, ctx: JobContext) -> None:
        return None

    server, port = await serve(WorkerMonitor(Worker(queue, handler, concurrency=1, polling=FAST)))
    # Prometheus scrapes by pod address or by a service name the worker cannot know.
    for host in ("10.0.3.7:9191", "workers.jobs.svc.cluster.local:9191", None):
        answer = await fetch(port, "/metrics", host=host)
        assert answer.status == 200, host
        assert answer.headers["x-content-type-options"] == "nosniff"
    server.close()


async def test_health_fails_when_storage_stops_answering(store_url: str) -> None:
    faulty = FaultyStorage(open_raw_storage(store_url))
    storage = RetryingStorage(faulty, RetryPolicy(attempts=2, initial=0.001, max_delay=0.002))
    q = await Queue.open(storage, "cut-off", shards=1)

    async def handler(payload: Any, ctx: JobContext) -> None:
        return None

    worker = Worker(q, handler, concurrency=1, polling=FAST)
    monitor = WorkerMonitor(worker, unhealthy_after=0.0)
    faulty.inject(Fault("get", times=10**9))  # every read fails from now on
    task = asyncio.create_task(worker.run())

    async def until_unhealthy() -> dict[str, Any]:
        while True:
            healthy, facts = monitor.health()
            if not healthy:
                return facts
            await asyncio.sleep(0.01)  # the failing claim loop has no event to await

    facts = await asyncio.wait_for(until_unhealthy(), 30)
    assert "every claim has failed" in facts["problem"]
    faulty.faults.clear()  # storage is back: the next good claim makes it healthy again

    async def until_healthy() -> None:
        while True:
            if monitor.health()[0]:
                return
            await asyncio.sleep(0.01)  # as above

    await asyncio.wait_for(until_healthy(), 30)
    await worker.stop()
    await task
    await q.close()
