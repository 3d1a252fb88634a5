"""A sweeper killed (kill -9) in the middle of a pass, on moto-served S3 and the
local directory: no live message is lost, and a later pass finishes the job."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from s3queue import Queue, Retention
from s3queue.core import layout
from tests.conftest import server_store_url

ROOT = Path(__file__).resolve().parent.parent
TTL = 60.0
AHEAD = 3 * TTL  # the sweepers' clocks: past every TTL and SEGMENT_MIN_AGE


@pytest.fixture(params=["file", "s3", "azure"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The local directory, S3, and Azure, whose blob batches fail on a key that a
    killed pass already deleted (the rerun then deletes them one by one)."""
    if request.param == "file":
        return f"file://{tmp_path / 'store'}"
    return server_store_url(request.param, request, "crash")


async def prepare(url: str) -> tuple[list[str], list[str]]:
    """60 finished messages (half with a result), then 20 that stay pending; a
    first pass sees the frontiers now (ripe a TTL from now). Their ids."""
    q = await Queue.open(url, "q", shards=2, retention=Retention(result_ttl=TTL, dead_ttl=TTL))
    done = [await q.enqueue({"n": i}) for i in range(60)]
    finished = 0
    while finished < len(done):
        for lease in await q.claim(16):
            await q.ack(lease, lease.payload if lease.payload["n"] % 2 else None)
            finished += 1
    await q.settle()
    live = [await q.enqueue({"live": i}) for i in range(20)]
    await q.collect()
    await q.close()
    return done, live


async def check(url: str, done: list[str], live: list[str]) -> None:
    ahead = await Queue.open(url, "q", clock=lambda: time.time() + AHEAD)
    # Mid-pass: some segments are gone, some not; every live message is there.
    for mid in live:
        info = await ahead.get(mid)
        assert info is not None
        assert info.status == "pending"
    for mid in done:
        info = await ahead.get(mid)
        assert info is not None
        assert info.status in ("completed", "expired")
    # A later pass (the killed one's lease taken over) finishes the job.
    report = await ahead.collect()
    assert report.complete
    for mid in done:
        assert (await ahead.get(mid)).status == "expired"  # type: ignore[union-attr]
    left = [e.key for e in await ahead.storage.list("q/")]
    kinds = {layout.classify("q", key) for key in left}
    assert kinds <= {"settings", "cursor", "sweeper", "clock", "wake", "log"}, left
    segments = [k for k in left if layout.classify("q", k) == "log"]
    assert len(segments) == len(live)  # one segment per enqueue, all live
    # And every live message still runs, exactly once.
    claimed: list[str] = []
    while len(claimed) < len(live):
        batch = await ahead.claim(20)
        assert batch
        claimed += [lease.id for lease in batch]
        for lease in batch:
            await ahead.ack(lease)
    assert sorted(claimed) == sorted(live)
    await ahead.close()


def test_a_sweeper_killed_mid_pass_loses_nothing(url: str) -> None:
    done, live = asyncio.run(prepare(url))
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.sweepproc", url, "q", str(AHEAD)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # blocks until the pass is mid-deletion
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert line == "deleting\n"
    asyncio.run(check(url, done, live))
