"""The read-only dashboard, over real HTTP, on every backend."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from s3queue import Queue
from s3queue.dashboard import Dashboard
from s3queue.storage import Storage, open_storage
from tests.httpget import get


@pytest.fixture
async def storage(store_url: str) -> AsyncIterator[Storage]:
    store = open_storage(store_url)
    yield store
    await store.close()


@pytest.fixture
async def port(storage: Storage) -> AsyncIterator[int]:
    board = Dashboard(storage, refresh=0.01)
    server = await board.serve("127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await board.close()


async def test_overview_counts_every_queue(storage: Storage, port: int) -> None:
    emails = await Queue.open(storage, "emails", shards=2)
    await emails.enqueue_many([{"n": n} for n in range(5)])
    [lease] = await emails.claim(1, 30)
    await emails.ack(lease)
    [lease] = await emails.claim(1, 30)
    await emails.fail(lease, "smtp said no", retriable=False)
    reports = await Queue.open(storage, "reports", shards=1)
    await reports.enqueue({"month": 11}, delay=3600)

    status, data = await get(port, "/api/queues")
    assert status == 200
    by_name = {q["name"]: q for q in data["queues"]}
    assert set(by_name) == {"emails", "reports"}
    assert by_name["emails"]["pending"] == 3
    assert by_name["emails"]["completed"] == 1
    assert by_name["emails"]["dead"] == 1
    assert len(by_name["emails"]["shards"]) == 2
    assert by_name["reports"]["delayed"] == 1

    status, dead = await get(port, "/api/queues/emails/dead")
    assert status == 200
    [letter] = dead["dead"]
    assert letter["errors"][-1]["message"] == "smtp said no"
    status, info = await get(port, f"/api/queues/emails/messages/{letter['id']}")
    assert status == 200 and info["status"] == "dead"
    await emails.close()
    await reports.close()


async def test_page_and_errors(storage: Storage, port: int) -> None:
    status, page = await get(port, "/")
    assert status == 200 and "<title>s3queue dashboard</title>" in page
    q = await Queue.open(storage, "known", shards=1)
    await q.close()

    status, body = await get(port, "/api/queues/unknown/dead")
    assert status == 404 and "no queue named 'unknown'" in body["error"]
    # Looking at an unknown queue must not create it.
    assert [x["name"] for x in (await get(port, "/api/queues"))[1]["queues"]] == ["known"]
    status, body = await get(port, "/api/queues/known/messages/not-an-id")
    assert status == 400 and "invalid message id" in body["error"]
    status, body = await get(port, "/api/queues/known/messages/0-L9-9")
    assert status == 404
    status, body = await get(port, "/api/queues/known/dead?limit=0")
    assert status == 400 and "limit" in body["error"]
    status, _ = await get(port, "/nothing/here")
    assert status == 404


def test_cli_dashboard_serves_until_sigterm(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    subprocess.run(
        [sys.executable, "-m", "s3queue", "--url", url, "enqueue", "jobs", "{}"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    board = subprocess.Popen(
        [sys.executable, "-m", "s3queue", "--url", url, "dashboard", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        assert board.stdout is not None
        line = board.stdout.readline()
        assert line.startswith("dashboard on http://127.0.0.1:"), line + board.stderr.read()
        base = line.split()[2]
        with urllib.request.urlopen(base + "api/queues", timeout=30) as answer:
            [queue] = json.loads(answer.read())["queues"]
        assert queue["name"] == "jobs" and queue["pending"] == 1
        board.send_signal(signal.SIGTERM)
        assert board.wait(timeout=60) == 0
    finally:
        board.kill()
