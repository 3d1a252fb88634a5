"""The read-only dashboard, over real HTTP, on every backend."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from s3queue import Polling, Queue, Worker
from s3queue.core import layout
from s3queue.ops import dashboard, workers_view
from s3queue.ops.dashboard import AllowedHosts, Dashboard
from s3queue.storage import Storage, open_storage
from tests.httpget import Answer, fetch, get


@pytest.fixture
async def storage(store_url: str) -> AsyncIterator[Storage]:
    store = open_storage(store_url)
    yield store
    await store.close()


@pytest.fixture
async def port(storage: Storage) -> AsyncIterator[int]:
    board = Dashboard(storage, refresh=0.01, allowed_hosts=["queue.example.com"])
    server = await board.serve("127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await board.close()


async def test_overview_counts_every_queue(storage: Storage, port: int) -> None:
    emails = await Queue.open(storage, "emails", shards=2)
    ids = await emails.enqueue_many([{"n": n} for n in range(5)])
    [lease] = await emails.claim(1, 30)
    await emails.ack(lease)
    [lease] = await emails.claim(1, 30)
    await emails.fail(lease, "smtp said no", retriable=False)
    await emails.cancel(ids[-1:])
    reports = await Queue.open(storage, "reports", shards=1)
    await reports.enqueue({"month": 11}, delay=3600)

    status, data = await get(port, "/api/queues")
    assert status == 200
    by_name = {q["name"]: q for q in data["queues"]}
    assert set(by_name) == {"emails", "reports"}
    assert by_name["emails"]["pending"] == 2
    assert by_name["emails"]["completed"] == 1
    assert by_name["emails"]["dead"] == 1
    assert by_name["emails"]["cancelled"] == 1
    assert len(by_name["emails"]["shards"]) == 2
    assert by_name["reports"]["delayed"] == 1

    status, dead = await get(port, "/api/queues/emails/dead")
    assert status == 200
    [letter] = dead["dead"]
    assert letter["errors"][-1]["message"] == "smtp said no"
    status, info = await get(port, f"/api/queues/emails/messages/{letter['id']}")
    assert status == 200
    assert info["status"] == "dead"
    await emails.close()
    await reports.close()


async def test_workers_of_a_queue_and_its_coordinator(storage: Storage, port: int) -> None:
    q = await Queue.open(storage, "jobs", shards=2)
    polling = Polling(heartbeat_interval=30.0)
    pods = [Worker(q, lambda p, ctx: None, polling=polling, worker_id=f"pod-{n}") for n in (1, 2)]
    for pod in pods:
        await pod.cluster.step()
    await storage.put(layout.worker_key("jobs", "pod-3"), b"not json")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dashboard, "WORKER_DETAILS", 2)
        status, view = await get(port, "/api/queues/jobs/workers")
    assert status == 200
    by_id = {row["id"]: row for row in view["workers"]}
    assert set(by_id) == {"pod-1", "pod-2", "pod-3"}
    assert by_id["pod-1"]["alive"] is True
    assert by_id["pod-1"]["concurrency"] == 10
    # Beyond the details limit: listed, alive by the cluster's TTL, not read.
    assert by_id["pod-3"]["host"] is None
    assert by_id["pod-3"]["problem"] is None
    assert view["coordinator"]["id"] == "pod-1"
    assert view["coordinator"]["epoch"] == 1
    status, full = await get(port, "/api/queues/jobs/workers")
    assert full == view, "read at most once per WORKERS_REFRESH"
    await q.close()


async def test_a_corrupt_heartbeat_is_shown_as_unreadable(storage: Storage) -> None:
    q = await Queue.open(storage, "jobs", shards=1)
    empty = await workers_view.read(storage, "jobs", q.clock())
    assert empty["workers"] == []
    assert empty["coordinator"] is None
    await storage.put(layout.worker_key("jobs", "pod-9"), b"not json")
    view = await workers_view.read(storage, "jobs", q.clock())
    [row] = view["workers"]
    assert row["id"] == "pod-9"
    assert row["alive"] is None
    assert "pod-9" in row["problem"]
    await q.close()


async def test_page_and_errors(storage: Storage, port: int) -> None:
    status, page = await get(port, "/")
    assert status == 200
    assert "<title>s3queue dashboard</title>" in page
    q = await Queue.open(storage, "known", shards=1)
    await q.close()

    status, body = await get(port, "/api/queues/unknown/dead")
    assert status == 404
    assert "no queue named 'unknown'" in body["error"]
    # Looking at an unknown queue must not create it.
    assert [x["name"] for x in (await get(port, "/api/queues"))[1]["queues"]] == ["known"]
    status, body = await get(port, "/api/queues/known/messages/not-an-id")
    assert status == 400
    assert "invalid message id" in body["error"]
    status, body = await get(port, "/api/queues/known/messages/0-L9-9")
    assert status == 404
    status, body = await get(port, "/api/queues/known/dead?limit=0")
    assert status == 400
    assert "limit" in body["error"]
    status, _ = await get(port, "/nothing/here")
    assert status == 404


async def test_a_foreign_host_is_refused_and_sees_no_queue_data(
    storage: Storage, port: int
) -> None:
    # A page on evil.example whose name rebinds to 127.0.0.1 sends exactly this Host.
    q = await Queue.open(storage, "payroll", shards=1)
    message_id = await q.enqueue({"salary": "confidential"})
    [lease] = await q.claim(1, 30)
    await q.fail(lease, "bank said no", retriable=False)
    await q.close()
    paths = [
        "/",
        "/api/queues",
        "/api/queues/payroll/dead",
        f"/api/queues/payroll/messages/{message_id}",
    ]
    for path in paths:
        answer = await fetch(port, path, host="evil.example:8321")
        assert answer.status == 421, path
        assert answer.headers["content-type"].startswith("text/plain"), path
        assert "evil.example" in answer.body
        assert "--allowed-host evil.example" in answer.body
        for secret in ("payroll", "confidential", "bank said no", "s3queue dashboard"):
            assert secret not in answer.body, (path, secret)
    # A name that merely ends like an allowed one is someone else's.
    assert (await fetch(port, "/api/queues", host="queue.example.com.evil.example")).status == 421


async def test_a_request_without_host_is_refused(port: int) -> None:
    answer = await fetch(port, "/api/queues", host=None)
    assert answer.status == 400
    assert "Host" in answer.body
    assert (await fetch(port, "/api/queues", host="")).status == 400
    assert (await fetch(port, "/api/queues", host="evil.example:80:80")).status == 400


async def test_bound_address_localhost_ip_literals_and_allowed_names_are_served(port: int) -> None:
    hosts = [
        f"127.0.0.1:{port}",
        "127.0.0.1",
        f"localhost:{port}",
        "LOCALHOST",
        f"[::1]:{port}",
        "10.1.2.3:8321",  # an address: no name for an attacker to rebind
        "queue.example.com",  # --allowed-host
        "Queue.Example.COM.:443",
    ]
    for host in hosts:
        answer = await fetch(port, "/api/queues", host=host)
        assert answer.status == 200, host
        assert "queues" in answer.body


async def test_an_absolute_request_target_is_checked_like_a_host(port: int) -> None:
    # HTTP/1.1 lets the target carry the authority, which then overrides Host.
    answer = await fetch(port, "http://evil.example:8321/api/queues", host=f"127.0.0.1:{port}")
    assert answer.status == 421


def test_binding_every_interface_serves_addresses_localhost_and_allowed_names() -> None:
    # 0.0.0.0 includes loopback, so localhost is served; any other name must be allowed.
    hosts = AllowedHosts.for_bind("0.0.0.0", ["queue.example.com"])
    for served in ("localhost:8321", "192.168.1.20:8321", "[fd00::1]", "queue.example.com"):
        assert hosts.refusal(served) is None, served
    refused = hosts.refusal("build-box.lan:8321")
    assert refused is not None
    assert refused.status == 421
    assert b"--allowed-host build-box.lan" in refused.body


def test_binding_an_address_or_a_name_serves_what_was_bound() -> None:
    # Bound to a LAN address, localhost reaches nothing here: it is not a name of ours.
    lan = AllowedHosts.for_bind("192.168.1.20", [])
    assert lan.refusal("192.168.1.20:8321") is None
    assert lan.refusal("localhost:8321") is not None
    named = AllowedHosts.for_bind("queue-box", [])
    assert named.refusal("queue-box:8321") is None
    assert named.refusal("other-box:8321") is not None


SECURITY_HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def assert_locked_down(answer: Answer, what: str) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert answer.headers.get(name) == value, (what, name, answer.headers)
    policy = [d.strip() for d in answer.headers["content-security-policy"].split(";")]
    assert "default-src 'self'" in policy, what
    assert "frame-ancestors 'none'" in policy, what
    assert "unsafe-inline" not in answer.headers["content-security-policy"], what


async def test_every_answer_carries_the_security_headers(storage: Storage, port: int) -> None:
    q = await Queue.open(storage, "known", shards=1)
    await q.close()
    here = f"127.0.0.1:{port}"
    answers = {
        "page": await fetch(port, "/", host=here),
        "api": await fetch(port, "/api/queues", host=here),
        "not found": await fetch(port, "/nothing/here", host=here),
        "bad limit": await fetch(port, "/api/queues/known/dead?limit=0", host=here),
        "foreign host": await fetch(port, "/", host="evil.example"),
        "no host": await fetch(port, "/", host=None),
        "wrong method": await fetch(port, "/", host=here, method="POST"),
    }
    assert [a.status for a in answers.values()] == [200, 200, 404, 400, 421, 400, 405]
    for what, answer in answers.items():
        assert_locked_down(answer, what)


class PageParts(HTMLParser):
    """What a page loads, and any code or style written into it."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.stylesheets: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.inline += [f"{tag} {name}=" for name in attributes if name.startswith("on")]
        self.inline += [f"{tag} style=" for name in attributes if name == "style"]
        if tag == "style":
            self.inline.append("<style>")
        if tag == "script":
            self._in_script = attributes.get("src") is None
            if attributes.get("src"):
                self.scripts.append(str(attributes["src"]))
        if tag == "link" and attributes.get("rel") == "stylesheet":
            self.stylesheets.append(str(attributes["href"]))

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("<script>" + data[:40])

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False


async def test_the_page_works_under_its_policy(port: int) -> None:
    # The policy forbids inline code, so the page may only load files the dashboard serves.
    status, page = await get(port, "/")
    assert status == 200
    parts = PageParts()
    parts.feed(page)
    assert parts.inline == []
    assert parts.scripts
    assert parts.stylesheets
    for src, kind in [(s, "text/javascript") for s in parts.scripts] + [
        (s, "text/css") for s in parts.stylesheets
    ]:
        assert not src.startswith(("http:", "https:", "//")), src
        answer = await fetch(port, "/" + src, host=f"127.0.0.1:{port}")
        assert answer.status == 200, src
        assert answer.headers["content-type"].startswith(kind), src
        assert_locked_down(answer, src)


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--allowed-host", "queue.example.com"], {}),
        ([], {"S3QUEUE_DASHBOARD_ALLOWED_HOSTS": "other.example,queue.example.com"}),
    ],
    ids=["flag", "env"],
)
def test_cli_dashboard_serves_allowed_hosts(
    tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    url = f"file://{tmp_path / 'store'}"
    board = subprocess.Popen(
        [sys.executable, "-m", "s3queue", "--url", url, "dashboard", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    try:
        assert board.stdout is not None
        assert board.stderr is not None
        line = board.stdout.readline()
        assert line.startswith("dashboard on http://127.0.0.1:"), line + board.stderr.read()
        port = int(line.split()[2].rstrip("/").rsplit(":", 1)[1])
        statuses = {}
        for host in ("queue.example.com", "evil.example"):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("GET", "/api/queues", headers={"Host": host})
            statuses[host] = connection.getresponse().status
            connection.close()
        assert statuses == {"queue.example.com": 200, "evil.example": 421}
        board.send_signal(signal.SIGTERM)
        assert board.wait(timeout=60) == 0
    finally:
        board.kill()


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
        assert board.stderr is not None
        line = board.stdout.readline()
        assert line.startswith("dashboard on http://127.0.0.1:"), line + board.stderr.read()
        base = line.split()[2]
        with urllib.request.urlopen(base + "api/queues", timeout=30) as answer:
            [queue] = json.loads(answer.read())["queues"]
        assert queue["name"] == "jobs"
        assert queue["pending"] == 1
        board.send_signal(signal.SIGTERM)
        assert board.wait(timeout=60) == 0
    finally:
        board.kill()
