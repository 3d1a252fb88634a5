"""The guarantees under real concurrency: several OS processes on one queue, on the
local directory and on S3 served by moto and by SeaweedFS, with an exact account of
every message."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from s3queue import Queue
from tests.conftest import BUCKET, SERVERS, server_store_url
from tests.s3server import S3Server

ROOT = Path(__file__).resolve().parent.parent


def mp_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store of ``kind``: "file" or a key of SERVERS."""
    if kind == "file":
        return f"file://{tmp_path / 'store'}"
    return server_store_url(kind, request, "mp")


@pytest.fixture(params=["file", *SERVERS])
def mp_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return mp_store(request.param, request, tmp_path)


@pytest.fixture(params=list(SERVERS))
def server_url(request: pytest.FixtureRequest) -> str:
    """A fresh store on every server: for the tests that model a deployment."""
    return server_store_url(request.param, request, "deploy")


@dataclass
class Proc:
    process: subprocess.Popen[str]
    log: Path
    report: Path


def start(url: str, queue: str, tmp: Path, name: str, *extra: str) -> Proc:
    log, report = tmp / f"{name}.log", tmp / f"{name}.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.workerproc",
            url,
            queue,
            str(log),
            "--report",
            str(report),
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return Proc(process, log, report)


def wait_for(condition: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)  # watching other processes: no event crosses the boundary


def stats(url: str, queue: str) -> dict[str, int]:
    async def read() -> dict[str, int]:
        q = await Queue.open(url, queue, verify_store=False)
        try:
            s = await q.stats()
            return {"completed": s.completed, "active": s.pending + s.delayed + s.processing}
        finally:
            await q.close()

    return asyncio.run(read())


def stop_all(procs: list[Proc]) -> None:
    for proc in procs:
        if proc.process.poll() is None:
            proc.process.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.process.kill()


@dataclass
class Ledger:
    claims: list[tuple[str, str, str, int]]  # worker, id, token, attempt
    acks: list[tuple[str, str, str]]  # worker, id, token
    lost: list[tuple[str, str, str]]


def read_logs(procs: dict[str, Proc]) -> Ledger:
    ledger = Ledger([], [], [])
    for name, proc in procs.items():
        if not proc.log.exists():
            continue
        for line in proc.log.read_text().splitlines():
            kind, *rest = line.split()
            if kind == "claim":
                ledger.claims.append((name, rest[0], rest[1], int(rest[2])))
            elif kind == "ack":
                ledger.acks.append((name, rest[0], rest[1]))
            elif kind == "lost":
                ledger.lost.append((name, rest[0], rest[1]))
    return ledger


def enqueue(url: str, queue: str, count: int, shards: int = 4) -> tuple[list[str], dict[str, int]]:
    async def run() -> tuple[list[str], dict[str, int]]:
        q = await Queue.open(url, queue, shards=shards)
        ids: list[str] = []
        for start in range(0, count, 100):
            ids += await q.enqueue_many([{"n": n} for n in range(start, min(count, start + 100))])
        counts = q.storage.counts.snapshot()
        await q.close()
        return ids, counts

    return asyncio.run(run())


def test_every_message_completes_exactly_once_with_four_workers(
    mp_url: str, tmp_path: Path
) -> None:
    ids, _ = enqueue(mp_url, "mp", 2000)
    procs = {f"w{i}": start(mp_url, "mp", tmp_path, f"w{i}") for i in range(4)}
    try:
        wait_for(lambda: stats(mp_url, "mp")["completed"] == 2000)
    finally:
        stop_all(list(procs.values()))
    ledger = read_logs(procs)
    acked = Counter(mid for _, mid, _ in ledger.acks)
    assert set(acked) == set(ids)
    assert set(acked.values()) == {1}
    # No crash and long leases: no message was ever handed out twice.
    assert len(ledger.claims) == 2000
    assert not ledger.lost
    assert stats(mp_url, "mp") == {"completed": 2000, "active": 0}


def test_a_killed_workers_leases_are_recovered_and_completed_by_others(
    mp_url: str, tmp_path: Path
) -> None:
    ids, _ = enqueue(mp_url, "crash", 1200)
    timing = ("--visibility", "2", "--skew-margin", "0.3")
    victim = start(mp_url, "crash", tmp_path, "victim", *timing, "--stall-after", "200")
    assert victim.process.stdout is not None
    assert victim.process.stdout.readline().strip() == "stalled"
    survivors = {
        f"w{i}": start(mp_url, "crash", tmp_path, f"w{i}", *timing, "--work-ms", "2")
        for i in range(2)
    }
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(timeout=30)
    try:
        wait_for(lambda: stats(mp_url, "crash")["completed"] == 1200)
    finally:
        stop_all(list(survivors.values()))
    ledger = read_logs({"victim": victim, **survivors})
    acks_by_id: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for worker, mid, token in ledger.acks:
        acks_by_id[mid].append((worker, token))
    assert set(acks_by_id) == set(ids)
    assert all(len(acks) == 1 for acks in acks_by_id.values())
    stranded = {mid for worker, mid, _, _ in ledger.claims if worker == "victim"} - {
        mid for worker, mid, _ in ledger.acks if worker == "victim"
    }
    assert stranded, "the victim must have died holding leases"
    retaken = {(mid, attempt) for worker, mid, _, attempt in ledger.claims if worker != "victim"}
    assert all((mid, 2) in retaken for mid in stranded)
    assert stats(mp_url, "crash") == {"completed": 1200, "active": 0}


#: A real worker pool: ``s3queue worker`` running eight jobs at once, each recorded
#: by tests.handled.record, and looking for work every 0.1 s when it has none.
WORKER = ["-q", "worker", "real", "tests.handled:record", "-c", "8", "--poll-interval", "0.1"]


def start_workers(
    url: str, files: list[Path], args: list[str] = WORKER
) -> list[subprocess.Popen[str]]:
    """One worker (``s3queue ARGS``) per file it records in, started together; once
    every one is ready."""
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "s3queue", "--url", url, *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "S3QUEUE_TEST_HANDLED": str(path)},
        )
        for path in files
    ]
    for worker in workers:
        assert worker.stdout is not None
        assert worker.stdout.readline().startswith("worker ")
    return workers


def terminate(processes: list[subprocess.Popen[str]]) -> list[int | None]:
    """Stop each the way a deployment does (SIGTERM); their exit codes, None for one
    killed after a minute without exiting."""
    for process in processes:
        process.send_signal(signal.SIGTERM)
    exits: list[int | None] = []
    for process in processes:
        try:
            exits.append(process.wait(timeout=60))
        except subprocess.TimeoutExpired:
            process.kill()
            exits.append(None)
    return exits


def test_four_real_workers_of_eight_handle_every_message_exactly_once(
    server_url: str, tmp_path: Path
) -> None:
    files = [tmp_path / f"w{i}.handled" for i in range(4)]
    enqueue(server_url, "real", 0)  # creates the queue, with its four shards
    # Waiting before the messages come, so that all four share them (a worker that
    # started first would otherwise be through them before the last one is up).
    workers = start_workers(server_url, files)
    try:
        ids, _ = enqueue(server_url, "real", 2000)
        wait_for(lambda: stats(server_url, "real")["completed"] == 2000)
    finally:
        exits = terminate(workers)
    assert exits == [0] * 4
    runs: Counter[str] = Counter()
    for path, worker in zip(files, workers, strict=True):
        lines = path.read_text().splitlines() if path.exists() else []
        assert lines, f"worker {worker.pid} handled nothing"
        for line in lines:
            message_id, pid = line.split()
            assert int(pid) == worker.pid
            runs[message_id] += 1
    assert set(runs) == set(ids)
    assert set(runs.values()) == {1}
    assert stats(server_url, "real") == {"completed": 2000, "active": 0}


def test_requests_per_message_stay_under_the_bar(s3_server: S3Server, tmp_path: Path) -> None:
    """10,000 messages, enqueue_many by 100, four worker processes on moto S3."""
    url = s3_server.url(BUCKET, f"cost-{uuid.uuid4().hex[:8]}")
    total = 10_000
    _, producer = enqueue(url, "cost", total)
    procs = {f"w{i}": start(url, "cost", tmp_path, f"w{i}", "--batch", "32") for i in range(4)}
    try:
        wait_for(lambda: stats(url, "cost")["completed"] == total, timeout=300)
    finally:
        stop_all(list(procs.values()))
    reports = [json.loads(proc.report.read_text()) for proc in procs.values()]
    requests = producer["total"] + sum(r["total"] for r in reports)
    per_message = requests / total
    breakdown = {
        kind: producer[kind] + sum(r[kind] for r in reports)
        for kind in ("get", "put", "conditional_put", "delete", "list", "precondition_failed")
    }
    (tmp_path / "requests.json").write_text(json.dumps({"per_message": per_message, **breakdown}))
    print(f"\nrequests per message: {per_message:.3f} {breakdown}")
    assert per_message <= 0.3


def test_single_enqueues_from_fifty_tasks_stay_under_half_a_request(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """50 concurrent tasks each calling enqueue() one message at a time, then two
    worker processes: at most 0.5 requests per message, enqueue and processing."""
    url = s3_server.url(BUCKET, f"single-{uuid.uuid4().hex[:8]}")
    total = 2000

    async def produce() -> dict[str, int]:
        q = await Queue.open(url, "single", shards=4)

        async def task(t: int) -> None:
            for n in range(total // 50):
                await q.enqueue({"task": t, "n": n})

        await asyncio.gather(*(task(t) for t in range(50)))
        counts = q.storage.counts.snapshot()
        await q.close()
        return counts

    producer = asyncio.run(produce())
    procs = {f"w{i}": start(url, "single", tmp_path, f"w{i}") for i in range(2)}
    try:
        wait_for(lambda: stats(url, "single")["completed"] == total)
    finally:
        stop_all(list(procs.values()))
    requests = producer["total"] + sum(
        json.loads(proc.report.read_text())["total"] for proc in procs.values()
    )
    print(f"\nrequests per message: {requests / total:.3f} (producer {producer['total']})")
    assert requests / total <= 0.5
