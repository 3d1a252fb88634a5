"""Real worker processes in one cluster on moto-served S3: the coordinator is killed
(SIGKILL) twice while they work, the queue grows from 16 to 32 shards between the
kills, and every message is accounted for exactly.

Eight processes here (two cores run the suite); S3QUEUE_TEST_CLUSTER_WORKERS=16 runs
the issue's sixteen (docs/SIMULATION.md records that run).
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from s3queue import Queue
from s3queue.core import layout, registry
from s3queue.core.records import ClusterRecord
from tests.conftest import server_store_url
from tests.test_multiprocess import enqueue, start_workers, stats, terminate, wait_for

WORKERS = int(os.environ.get("S3QUEUE_TEST_CLUSTER_WORKERS", "8"))
MESSAGES = 3000
#: Heartbeats a second apart: a dead worker is dead after 3 s, its lease with it.
WORKER = [
    "-q",
    "worker",
    "real",
    "tests.handled:record_slowly",
    "-c",
    "4",
    "--poll-interval",
    "0.1",
    "--heartbeat-interval",
    "1",
    "--visibility-timeout",
    "5",
]


def cluster(url: str) -> ClusterRecord | None:
    async def read() -> ClusterRecord | None:
        q = await Queue.open(url, "real", verify_store=False)
        try:
            return (await registry.read_cluster(q.storage, "real"))[0]
        finally:
            await q.close()

    return asyncio.run(read())


def pid_of(worker_id: str) -> int:
    """The pid in a default worker id, ``<host>-<pid>-<hex>``."""
    return int(worker_id.rsplit("-", 2)[1])


# Alone: eight worker processes on two cores beside the parallel tests stretch every
# interval of the protocol, and the failover time it prints is a measurement.
@pytest.mark.alone
def test_killing_the_coordinator_twice_loses_and_doubles_nothing(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = server_store_url("s3", request, "cluster")
    enqueue(url, "real", 0, shards=16)
    files = [tmp_path / f"w{i}.handled" for i in range(WORKERS)]
    workers = {process.pid: process for process in start_workers(url, files, WORKER)}
    killed: list[int] = []
    try:
        ids, _ = enqueue(url, "real", MESSAGES, shards=16)
        more: list[str] = []
        epoch = 0
        for _ in range(2):
            wait_for(functools.partial(_held_beyond, url, epoch, killed))
            record = cluster(url)
            assert record is not None
            epoch, holder = record.epoch, pid_of(record.holder)
            workers[holder].send_signal(signal.SIGKILL)
            workers[holder].wait(timeout=30)
            killed.append(holder)
            took = time.monotonic()
            # A new coordinator within two lease lengths (3 s each) of the kill.
            wait_for(functools.partial(_held_beyond, url, epoch, killed), timeout=60)
            print(f"\nnew coordinator {time.monotonic() - took:.1f} s after the kill")
            if not more:
                more = _grow_and_enqueue(url)
                ids += more
        wait_for(lambda: stats(url, "real")["completed"] == len(ids), timeout=180)
    finally:
        survivors = [p for pid, p in workers.items() if pid not in killed]
        exits = terminate(survivors)
    assert exits == [0] * len(survivors)
    assert len(killed) == 2
    runs: Counter[str] = Counter()
    by_survivors: Counter[str] = Counter()
    for path in files:
        for line in path.read_text().splitlines() if path.exists() else []:
            message_id, pid = line.split()
            runs[message_id] += 1
            by_survivors[message_id] += int(pid) not in killed
    assert set(runs) == set(ids)  # every message ran
    # Only a killed process's unacknowledged run is ever repeated.
    assert max(by_survivors.values()) == 1
    assert stats(url, "real") == {"completed": len(ids), "active": 0}
    assert {layout.parse_message_id(m).shard for m in more} & set(range(16, 32))


def _grow_and_enqueue(url: str) -> list[str]:
    """Grow the queue to 32 shards, wait out the notice (three heartbeats and the skew
    margin), and enqueue 1,000 more: the new shards take their turns."""

    async def grow() -> float:
        async with await Queue.open(url, "real", verify_store=False) as q:
            return (await q.reshard(32)).grown_at

    grown_at = asyncio.run(grow())
    wait_for(lambda: time.time() > grown_at + 0.5)  # the store's clock may be a bit ahead
    return enqueue(url, "real", 1000, shards=16)[0]


def _held_beyond(url: str, epoch: int, killed: list[int]) -> bool:
    """Whether a live worker holds the coordinator's lease at an epoch after ``epoch``."""
    record = cluster(url)
    return (
        record is not None
        and record.epoch > epoch
        and record.holder != ""
        and pid_of(record.holder) not in killed
        and record.expires_at > time.time()
    )
