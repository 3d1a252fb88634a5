from __future__ import annotations

import asyncio
import math
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

from s3queue import Backoff, Polling, Queue, Worker, WorkerEvent
from s3queue.runtime.worker import EventName
from tests.azurite import AzuriteServer, azurite_executable, start_azurite
from tests.fakegcs import FakeGCS, fake_gcs_executable, start_fake_gcs
from tests.s3server import S3Server, start_s3_server
from tests.seaweed import start_seaweed, weed_executable

#: Workers in tests poll every 10 ms: an idle check costs nothing on a test server,
#: and tests await events rather than sleeping through poll intervals.
FAST = Polling(poll_interval=0.01)

BUCKET = "s3queue-test"
T = TypeVar("T")


def started(what: str, find: Callable[[], object], start: Callable[[], T]) -> T:
    """``start()``'s server. Its tests are skipped only where it is not installed
    (``find`` raises RuntimeError): `make test` installs every one, so one that is
    installed and does not start (a port taken, a timeout under load) is an error,
    not a run that skips, unnoticed, every test on that store."""
    try:
        find()
    except RuntimeError as error:
        pytest.skip(f"{what} is not installed here: {error}")
    return start()


# moto accepts any credentials unless told otherwise; the S3 backend still needs some.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_REGION", "us-east-1")


def pythonpath(first: Path) -> str:
    """PYTHONPATH for an s3queue subprocess: ``first`` (where a test's handler modules
    are), then the caller's own, from which the code under test may come."""
    return os.pathsep.join(p for p in (str(first), os.environ.get("PYTHONPATH")) if p)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_s3_server(tmp_path_factory.mktemp("moto") / "moto.log")
    server.create_bucket(BUCKET)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def strict_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A moto server that checks credentials (only keys it issued are valid)."""
    server = start_s3_server(
        tmp_path_factory.mktemp("moto-auth") / "moto.log",
        extra_env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"},
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def seaweed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS: a second real S3 server, whose ETags are MD5s as AWS's are."""
    server = started(
        "SeaweedFS",
        weed_executable,
        lambda: start_seaweed(tmp_path_factory.mktemp("seaweed"), BUCKET),
    )
    yield server
    server.stop()


class StoreServer(Protocol):
    """What a server fixture gives: the URL of a store under ``prefix`` in ``bucket``."""

    def url(self, bucket: str, prefix: str) -> str: ...


#: The stores served by a server process, by the name tests give them, with the
#: session fixture that starts each. A store added here is one more param of every
#: fixture that runs on all of them (``[*SERVERS]``).
SERVERS = {"s3": "s3_server", "seaweedfs": "seaweed_server", "azure": "azurite"}


def server_store_url(kind: str, request: pytest.FixtureRequest, prefix: str) -> str:
    """A fresh, empty store on the server of ``kind`` (a key of :data:`SERVERS`),
    under a unique key prefix starting with ``prefix``."""
    server: StoreServer = request.getfixturevalue(SERVERS[kind])
    return server.url(BUCKET, f"{prefix}-{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["memory", "file", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store of each backend kind."""
    if backend == "memory":
        return f"memory://test-{uuid.uuid4().hex[:12]}"
    if backend == "file":
        return f"file://{tmp_path / 'store'}"
    return server_store_url(backend, request, "t")


@pytest.fixture
async def queue(store_url: str) -> AsyncIterator[Queue]:
    """A queue of two shards on every backend, with retries 10-50 ms apart."""
    q = await Queue.open(
        store_url, "jobs", shards=2, skew_margin=0.2, backoff=Backoff(initial=0.01, max=0.05)
    )
    yield q
    await q.close()


async def run_until(worker: Worker, *names: EventName, count: int = 1) -> list[WorkerEvent]:
    """Run ``worker`` until it has emitted ``count`` events called any of ``names``;
    those events. Stops it (draining) either way."""
    seen: list[WorkerEvent] = []
    enough = asyncio.Event()

    def note(event: WorkerEvent) -> None:
        seen.append(event)
        if len(seen) >= count:
            enough.set()

    for name in names:
        worker.on(name, note)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(enough.wait(), 60)
    finally:
        await worker.stop()
        await task
    return seen


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    """Azurite's blob service with the test container, started once per session."""
    server = started(
        "Azurite", azurite_executable, lambda: start_azurite(tmp_path_factory.mktemp("azurite"))
    )
    server.create_container(BUCKET)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGCS]:
    server = started(
        "fake-gcs-server",
        fake_gcs_executable,
        lambda: start_fake_gcs(tmp_path_factory.mktemp("fake-gcs") / "root", [BUCKET]),
    )
    yield server
    server.stop()


async def count_backlog(worker: Worker, queue: str) -> None:
    """Have ``worker``, the coordinator, count ``queue``'s backlog as if an interval
    had passed, and publish the count: it counts beside a step, and the next
    renewal carries what it counted."""
    seat = worker.cluster.seats[queue]
    seat.counted_at = -math.inf
    await worker.cluster.step()
    assert seat.counting is not None
    await seat.counting
    await worker.cluster.step()
