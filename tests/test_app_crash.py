"""Chains and groups survive a worker killed with SIGKILL: every step runs to
completion once per successful parent, none is lost, and every handle gets its
result; on the local directory and on moto-served S3."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

import s3queue
from tests import apptasks
from tests.test_multiprocess import ROOT, mp_store, wait_for

CHAINS = 5
MEMBERS = 20


WORKER = ["worker", "-A", "tests.apptasks:app", "-c", "8", "--visibility-timeout", "2"]


def start_worker(url: str, runs: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "s3queue", "--url", url, "-q", *WORKER],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "S3QUEUE_TEST_RUNS": str(runs)},
    )
    assert process.stdout is not None
    assert process.stdout.readline().startswith("worker ")
    return process


def lines(runs: Path) -> list[dict[str, object]]:
    if not runs.exists():
        return []
    return [json.loads(line) for line in runs.read_text().splitlines()]


@pytest.fixture(params=["file", "s3"])
def mp_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Not on every server: what a kill does to a worker's leases is tested on each
    (test_multiprocess), and the app's chains and groups rest on no more of the
    store than the storage contract checks there; this test costs some 6 s a store."""
    return mp_store(request.param, request, tmp_path)


@pytest.fixture
def app(mp_url: str) -> Iterator[s3queue.App]:
    apptasks.app.url = mp_url
    yield apptasks.app
    apptasks.app.close()


def test_chains_and_a_group_survive_a_kill(app: s3queue.App, mp_url: str, tmp_path: Path) -> None:
    step = apptasks.step
    runs = tmp_path / "runs.jsonl"
    chains = [
        s3queue.chain(step.s(0, f"c{i}-1"), step.s(f"c{i}-2"), step.s(f"c{i}-3")).delay()
        for i in range(CHAINS)
    ]
    batch = s3queue.group(step.s(10 * i, f"g{i}") for i in range(MEMBERS)).delay()
    first = start_worker(mp_url, runs)
    wait_for(lambda: len(lines(runs)) >= 8)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert len(lines(runs)) < CHAINS * 3 + MEMBERS  # it died with work left
    second = start_worker(mp_url, runs)
    try:
        assert [flow.result(timeout=120) for flow in chains] == [3] * CHAINS
        assert batch.result(timeout=120) == [10 * i + 1 for i in range(MEMBERS)]
    finally:
        second.terminate()
        second.wait()
    ran: dict[str, set[str]] = defaultdict(set)
    for run in lines(runs):
        ran[str(run["label"])].add(str(run["id"]))
    labels = {f"c{i}-{k}" for i in range(CHAINS) for k in (1, 2, 3)} | {
        f"g{i}" for i in range(MEMBERS)
    }
    assert set(ran) == labels  # none lost
    # One message per step ran it (a re-run after the kill is the same message, on
    # its next attempt); a parent that ran twice left a copy that did not run.
    assert {label: len(ids) for label, ids in ran.items()} == dict.fromkeys(labels, 1)
    for flow in chains:
        assert [job.status() for job in flow.jobs()] == ["completed"] * 3
