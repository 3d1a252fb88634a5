"""The task app: tasks called from anywhere, handles that wait, workers that route,
chains and groups, on every backend."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import s3queue
from s3queue import App, Backoff, Leases, Queue, Worker
from s3queue.app.app import _task_name
from s3queue.errors import ConfigurationError, JobFailed, JobNotFound, PayloadError
from tests.conftest import FAST, run_until


@dataclass
class Tasks:
    app: App
    add: s3queue.Task[..., int]
    slow_add: s3queue.Task[..., Any]
    fail: s3queue.Task[..., None]
    email: s3queue.Task[..., Any]
    where: s3queue.Task[..., dict[str, object]]
    hang: s3queue.Task[..., Any]
    spin: s3queue.Task[..., str]
    runs: list[str]


def make_tasks(url: str) -> Tasks:
    app = App(url)
    runs: list[str] = []

    @app.task(name="add")
    def add(a: int, b: int = 1) -> int:
        runs.append(f"add({a},{b})")
        return a + b

    @app.task(name="slow_add", timeout=0.05, max_attempts=1)
    async def slow_add(a: int, b: int = 1) -> int:
        await asyncio.sleep(5)
        return a + b

    @app.task(name="fail", max_attempts=2, backoff=Backoff(initial=0.01, max=0.02))
    def fail(x: int) -> None:
        raise ValueError(f"bad {x}")

    @app.task(name="email", queue="emails", priority=3)
    async def email(to: str, subject: str = "") -> dict[str, str]:
        return {"to": to, "subject": subject}

    @app.task(name="hang")
    async def hang() -> None:
        runs.append("hang")
        await asyncio.Event().wait()

    @app.task(name="spin")
    def spin() -> str:
        runs.append("spin")
        while not s3queue.current_job().cancelled:
            time.sleep(0.01)
        return "stopped"

    @app.task(name="where")
    def where() -> dict[str, object]:
        ctx = s3queue.current_job()
        ctx.progress(0.5)
        return {"id": ctx.message_id, "attempt": ctx.attempt}

    return Tasks(app, add, slow_add, fail, email, where, hang, spin, runs)


@pytest.fixture
def tasks(store_url: str) -> Iterator[Tasks]:
    made = make_tasks(store_url)
    yield made
    made.app.close()


@pytest.fixture
async def worker(tasks: Tasks, store_url: str) -> AsyncIterator[Worker]:
    """A worker serving every queue of the app, running in the test's loop."""
    queues = [await Queue.open(store_url, name) for name in ("default", "emails")]
    # Short leases: renewed (and cancel requests learned) every third of a second.
    leases = Leases(visibility_timeout=1.0)
    pool = Worker(queues, tasks.app.router(), concurrency=4, polling=FAST, leases=leases)
    running = asyncio.create_task(pool.run())
    yield pool
    await pool.stop()
    await running
    for q in queues:
        await q.close()


async def test_delay_enqueue_and_apply_round_trip(tasks: Tasks, worker: Worker) -> None:
    blocking = await asyncio.to_thread(tasks.add.delay, 2, b=3)
    awaited = await tasks.add.enqueue(10)
    applied = await tasks.add.aapply(args=(1,), kwargs={"b": 1}, priority=5)
    assert await blocking.wait(timeout=30) == 5
    assert await asyncio.to_thread(awaited.result, 30) == 11
    assert await applied.wait(timeout=30) == 2
    assert (await applied.ainfo()).priority == 5
    assert await tasks.email.enqueue("ada@example.com", subject="hi") != blocking


async def test_a_task_goes_to_its_queue_with_its_priority(tasks: Tasks, worker: Worker) -> None:
    job = await tasks.email.enqueue("ada@example.com")
    assert job.queue == "emails"
    assert job.id == f"emails:{job.message_id}"
    assert await job.wait(timeout=30) == {"to": "ada@example.com", "subject": ""}
    info = await job.ainfo()
    assert (info.priority, info.payload["task"]) == (3, "email")


async def test_any_process_can_look_a_job_up_by_its_id(
    tasks: Tasks, worker: Worker, store_url: str
) -> None:
    job = await tasks.add.enqueue(1, 1)
    other = App(store_url)  # another process's app: no tasks needed to look up
    try:
        assert await other.job(job.id).wait(timeout=30) == 2
        assert await other.job(job.id).astatus() == "completed"
    finally:
        await other.aclose()


async def test_a_failing_task_raises_job_failed_with_every_attempt(
    tasks: Tasks, worker: Worker
) -> None:
    job = await tasks.fail.enqueue(7)
    with pytest.raises(JobFailed) as raised:
        await job.wait(timeout=30)
    assert [(e.attempt, e.type, e.message) for e in raised.value.errors] == [
        (1, "ValueError", "bad 7"),
        (2, "ValueError", "bad 7"),
    ]
    assert all("raise ValueError" in (e.traceback or "") for e in raised.value.errors)
    assert await job.astatus() == "dead"


async def test_a_task_timeout_fails_the_attempt(tasks: Tasks, worker: Worker) -> None:
    job = await tasks.slow_add.enqueue(1)
    with pytest.raises(JobFailed, match="JobTimeout"):
        await job.wait(timeout=30)


async def test_waiting_past_the_timeout_raises_and_leaves_the_job(tasks: Tasks) -> None:
    job = await tasks.add.enqueue(1)  # no worker runs
    with pytest.raises(TimeoutError, match="still pending"):
        await job.wait(timeout=0.2)
    with pytest.raises(TimeoutError):
        await asyncio.to_thread(job.result, 0.1)
    assert await job.astatus() == "pending"


async def test_blocking_calls_work_inside_a_running_event_loop(tasks: Tasks) -> None:
    job = tasks.add.delay(1, 2)  # called on this test's loop: blocks it, never fails
    assert job.status() == "pending"
    assert tasks.app.job(job.id).info().payload == {
        "task": "add",
        "args": [1, 2],
        "kwargs": {},
    }


async def test_threads_send_at_once_like_the_views_of_a_web_server(
    tasks: Tasks, worker: Worker
) -> None:
    def view(n: int) -> list[s3queue.Job]:
        return [tasks.add.delay(n, k) for k in range(10)]

    sent = await asyncio.gather(*(asyncio.to_thread(view, n) for n in range(8)))
    jobs = [job for batch in sent for job in batch]
    assert len({job.id for job in jobs}) == 80
    assert [await job.wait(timeout=30) for job in jobs] == [
        n + k for n in range(8) for k in range(10)
    ]


async def test_waiting_costs_one_get_per_poll_and_no_write(tasks: Tasks) -> None:
    job = await tasks.add.enqueue(1)  # no worker runs
    store = tasks.app._storage
    assert store is not None
    before = store.counts.snapshot()
    with pytest.raises(TimeoutError):
        await job.wait(timeout=1.0)
    after = store.counts.snapshot()
    made = {kind: after[kind] - before[kind] for kind in after}
    # Polls at 0, 0.05, 0.15, 0.35, 0.75 and 1.0 s: the backoff bounds them to six.
    assert made["get"] <= 6
    assert made["total"] == made["get"]


async def test_delay_and_at_set_when_a_job_may_run(tasks: Tasks) -> None:
    later = await tasks.add.aapply(args=(1,), delay=3600)
    at = datetime.now(UTC) + timedelta(hours=2)
    scheduled = await tasks.add.aapply(args=(1,), at=at)
    naive = await tasks.add.aapply(args=(1,), at=at.replace(tzinfo=None))  # read as UTC
    past = await tasks.add.aapply(args=(1,), at=datetime(2001, 1, 1, tzinfo=UTC))
    assert await later.astatus() == "delayed"
    for job in (scheduled, naive):
        visible_at = (await job.ainfo()).visible_at
        assert visible_at is not None
        assert abs(visible_at - at.timestamp()) < 5
    assert await past.astatus() == "pending"
    with pytest.raises(ConfigurationError, match="both a delay and a time"):
        await tasks.add.aapply(args=(1,), delay=1, at=at)


async def test_a_dedup_key_returns_the_first_job(tasks: Tasks) -> None:
    first = await tasks.add.aapply(args=(1,), dedup_key="once")
    again = await tasks.add.aapply(args=(2,), dedup_key="once")
    assert again == first


async def test_arguments_are_checked_when_the_call_is_made(tasks: Tasks) -> None:
    with pytest.raises(PayloadError, match=r"to \(an argument of email\).*datetime"):
        await tasks.email.enqueue(datetime.now(UTC))
    with pytest.raises(PayloadError, match=r'subject\["x"\]'):
        await tasks.email.enqueue("a", subject={"x": {1, 2}})
    with pytest.raises(ConfigurationError, match="cannot take these arguments"):
        await tasks.add.enqueue(1, 2, 3)
    with pytest.raises(ConfigurationError, match="unknown option"):
        await tasks.add.aapply(args=(1,), eta=5)
    assert tasks.add(1, 2) == 3  # called directly, it is the function
    async with await Queue.open(tasks.app.url, "default") as q:
        assert (await q.stats()).pending == 0  # nothing was written


async def test_a_task_sees_its_job_through_current_job(tasks: Tasks, worker: Worker) -> None:
    job = await tasks.where.enqueue()
    assert await job.wait(timeout=30) == {"id": job.message_id, "attempt": 1}
    assert await job.aprogress() == 0.5
    with pytest.raises(s3queue.QueueError, match="outside a running task"):
        s3queue.current_job()


async def test_a_message_naming_an_unknown_task_is_dead_lettered_at_once(
    tasks: Tasks, store_url: str
) -> None:
    raw = await Queue.open(store_url, "default")
    try:
        stray = await raw.enqueue({"task": "resize", "args": [1], "kwargs": {}})
        junk = await raw.enqueue({"hello": "world"})
        pool = Worker(raw, tasks.app.router(), polling=FAST)
        await run_until(pool, "dead", count=2)
        await raw.settle()
        dead = {info.id: info for info in await raw.dead_letters()}
    finally:
        await raw.close()
    assert dead[stray].attempts == 1
    message = dead[stray].errors[0].message
    assert "'resize'" in message
    assert "(it knows: add, email, fail, hang, slow_add, spin, where)" in message
    assert "not a task call" in dead[junk].errors[0].message


async def test_a_chain_passes_each_result_to_the_next_step(tasks: Tasks, worker: Worker) -> None:
    flow = await s3queue.chain(tasks.add.s(1, 2), tasks.add.s(10), tasks.add.s(b=100)).enqueue()
    assert await flow.wait(timeout=30) == 113
    steps = await flow.ajobs()
    assert [(await job.ainfo()).result for job in steps] == [3, 13, 113]
    again = await tasks.app.achain_job(flow.id)  # as another process would
    assert again.queues == flow.queues
    assert await again.wait(timeout=30) == 113
    assert tasks.runs == ["add(1,2)", "add(3,10)", "add(13,100)"]


async def test_a_chain_step_whose_parent_ran_twice_runs_once(
    tasks: Tasks, worker: Worker, store_url: str
) -> None:
    # What a worker killed between enqueueing the next step and acking its own step
    # leaves behind: two copies of the next step, the second linked by the retry.
    payload = {"task": "add", "args": [1], "kwargs": {}, "parent": "default:0-L9-9"}
    # The linked copy is enqueued and linked before the other exists: the running
    # worker cannot take the other for the first one (which would link itself).
    async with await Queue.open(store_url, "default") as raw:
        linked = await raw.enqueue(payload)
        await raw.link("default", "0-L9-9", linked)
        stray = await raw.enqueue(payload)
    assert await tasks.app.job(f"default:{linked}").wait(timeout=30) == 2
    assert await tasks.app.job(f"default:{stray}").wait(timeout=30) == {
        "duplicate_of": f"default:{linked}"
    }
    assert tasks.runs == ["add(1,1)"]


async def test_a_failed_step_stops_the_chain(tasks: Tasks, worker: Worker) -> None:
    flow = await s3queue.chain(tasks.add.s(1), tasks.fail.s(), tasks.add.s()).enqueue()
    with pytest.raises(JobFailed, match="bad 2"):
        await flow.wait(timeout=30)
    steps = await flow.ajobs()
    assert len(steps) == 2
    assert await steps[1].astatus() == "dead"
    assert tasks.runs == ["add(1,1)"]


async def test_a_group_returns_every_result_in_order(tasks: Tasks, worker: Worker) -> None:
    batch = await s3queue.group(tasks.add.s(i, i) for i in range(20)).enqueue()
    assert len(batch) == 20
    assert await batch.wait(timeout=30) == [2 * i for i in range(20)]
    assert await batch.astatuses() == ["completed"] * 20


def test_bad_definitions_and_ids_are_refused(store_url: str) -> None:
    app = App(store_url)

    @app.task(name="t")
    def t() -> None: ...

    with pytest.raises(ConfigurationError, match="two tasks are named 't'"):
        app.task(name="t")(lambda: None)
    with pytest.raises(ConfigurationError, match="invalid queue name"):
        app.task(queue="no/slash")(lambda: None)
    with pytest.raises(ConfigurationError, match="max_attempts"):
        app.task(max_attempts=0)(lambda: None)
    with pytest.raises(ConfigurationError, match="invalid job id"):
        app.job("0-L0-0")
    with pytest.raises(ConfigurationError, match="a chain takes"):
        s3queue.chain()
    with pytest.raises(ConfigurationError, match="a group takes"):
        s3queue.group([])
    with pytest.raises(JobNotFound):
        app.job("default:0-L9-9").status()
    app.close()


def test_a_task_is_named_after_its_module_and_function() -> None:
    def local() -> None: ...

    assert _task_name(local) == (
        "tests.test_app.test_a_task_is_named_after_its_module_and_function.<locals>.local"
    )


async def test_a_cancelled_job_never_runs(tasks: Tasks, store_url: str) -> None:
    job = await tasks.add.enqueue(1)
    flow = await s3queue.chain(tasks.add.s(1), tasks.add.s()).enqueue()
    assert (await job.acancel()).status == "cancelled"
    assert (await flow.acancel()).status == "cancelled"
    async with await Queue.open(store_url, "default") as q:
        await Worker(q, tasks.app.router(), polling=FAST).run(burst=True)
    assert tasks.runs == []
    with pytest.raises(s3queue.JobCancelled):
        await job.wait(timeout=30)
    with pytest.raises(s3queue.JobCancelled):
        await flow.wait(timeout=30)
    assert await job.astatus() == "cancelled"
    again = await job.acancel()
    assert (again.status, again.finished_status) == ("finished", "cancelled")


async def test_a_running_async_task_is_cancelled(tasks: Tasks, worker: Worker) -> None:
    seen = asyncio.Event()
    worker.on("processing", lambda event: seen.set())
    job = await tasks.hang.enqueue()
    await seen.wait()
    assert (await job.acancel()).status == "cancelling"
    with pytest.raises(s3queue.JobCancelled):
        await job.wait(timeout=30)
    assert worker.failed == 0  # its CancelledError is not a failure


async def test_a_running_sync_task_sees_it_is_cancelled(tasks: Tasks, worker: Worker) -> None:
    seen = asyncio.Event()
    worker.on("processing", lambda event: seen.set())
    job = await tasks.spin.enqueue()
    await seen.wait()
    assert (await job.acancel()).status == "cancelling"
    with pytest.raises(s3queue.JobCancelled):
        await job.wait(timeout=30)
    assert tasks.runs == ["spin"]


async def test_cancelling_a_completed_job_says_so(tasks: Tasks, worker: Worker) -> None:
    job = await tasks.add.enqueue(1)
    assert await job.wait(timeout=30) == 2
    outcome = await job.acancel()
    assert (outcome.status, outcome.finished_status) == ("finished", "completed")
    assert await job.wait(timeout=30) == 2


async def test_a_redriven_chain_step_runs_and_the_chain_goes_on(
    tasks: Tasks, store_url: str
) -> None:
    broken = True

    @tasks.app.task(name="flaky", max_attempts=1)
    def flaky(x: int) -> int:
        tasks.runs.append(f"flaky({x})")
        if broken:
            raise RuntimeError("bug")
        return 10 * x

    flow = await s3queue.chain(tasks.add.s(1), flaky.s(), tasks.add.s()).enqueue()
    async with await Queue.open(store_url, "default") as q:
        await Worker(q, tasks.app.router(), polling=FAST).run(burst=True)
        with pytest.raises(JobFailed, match="bug"):
            await flow.wait(timeout=30)
        broken = False  # the fix is deployed: send the dead step back
        assert len(await q.redrive()) == 1
        await Worker(q, tasks.app.router(), polling=FAST).run(burst=True)
    assert await flow.wait(timeout=30) == 21
    assert tasks.runs == ["add(1,1)", "flaky(2)", "flaky(2)", "add(20,1)"]


async def test_bad_options_refuse_a_group_or_chain_before_anything_is_written(
    tasks: Tasks,
) -> None:
    with pytest.raises(ConfigurationError, match="priority"):
        tasks.add.s(1).set(priority="high")
    with pytest.raises(ConfigurationError, match="at="):
        s3queue.group([tasks.add.s(1), tasks.add.s(2).set(at="tomorrow")])
    with pytest.raises(ConfigurationError, match="only the first step"):
        await s3queue.chain(tasks.add.s(1), tasks.add.s().set(delay=60)).enqueue()
    with pytest.raises(ConfigurationError, match="result of the step before it"):
        await s3queue.chain(tasks.add.s(1), tasks.add.s(1, 2)).enqueue()
    with pytest.raises(ConfigurationError, match="as a list or tuple"):
        await tasks.add.aapply(args="ab")
    with pytest.raises(ConfigurationError, match="not a function"):
        tasks.app.task("emails")  # type: ignore[call-overload]
    async with await Queue.open(tasks.app.url, "default") as q:
        assert (await q.stats()).pending == 0


async def test_a_task_rate_limit_holds_back_its_own_messages_only(store_url: str) -> None:
    async with await Queue.open(store_url, "limited", shards=1):
        pass  # one shard: its bucket is the whole limit
    app = App(store_url)

    @app.task(name="slow", queue="limited", rate_limit="1/h")
    def slow(n: int) -> int:
        return n

    @app.task(name="free", queue="limited")
    def free(n: int) -> int:
        return n

    held = [await slow.enqueue(n) for n in range(3)]
    others = [await free.enqueue(n) for n in range(3)]
    async with await Queue.open(store_url, "limited") as q:
        pool = Worker(q, app.router(), polling=FAST)
        assert q.rate_limits == {"slow": s3queue.RateLimit.parse("1/h")}
        await run_until(pool, "completed", count=4)  # one token, and the free ones
    assert sorted([await job.astatus() for job in held]) == ["completed", "pending", "pending"]
    assert [await job.astatus() for job in others] == ["completed"] * 3
    await app.aclose()


async def test_a_queue_rate_limit_holds_back_every_task_of_the_queue(store_url: str) -> None:
    async with await Queue.open(store_url, "limited", shards=1):
        pass
    app = App(store_url)
    app.set_rate_limit("limited", "1/h")

    @app.task(name="free", queue="limited")
    def free(n: int) -> int:
        return n

    jobs = [await free.enqueue(n) for n in range(3)]
    async with await Queue.open(store_url, "limited") as q:
        await run_until(Worker(q, app.router(), polling=FAST), "completed", count=1)
    assert sorted([await job.astatus() for job in jobs]) == ["completed", "pending", "pending"]
    with pytest.raises(ConfigurationError, match="100/s"):
        app.task(name="bad", rate_limit="100 per second")(lambda: None)
    with pytest.raises(ConfigurationError, match="unknown task option"):
        app.task(name="bad", ratelimit="1/s")(lambda: None)
    await app.aclose()
