"""Processes on S3 exit cleanly: no obstore thread is inside Python when the
interpreter finalizes, so a process that did its work never aborts (SIGABRT) at exit.

At random, in about 1 run in 20, obstore's thread was still returning from handing a
result to the event loop when the interpreter began to finalize, and the process
aborted after printing the id it had stored. These tests make each way of getting
there deterministic instead of waiting for it to happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from s3queue.storage import open_raw_storage
from s3queue.storage.s3 import S3Storage
from tests.conftest import BUCKET
from tests.s3server import S3Server

ROOT = Path(__file__).resolve().parent.parent

#: obstore's thread parks where asyncio's self-pipe ``socket.send`` releases the GIL,
#: for up to 2 s instead of microseconds. The parking loop is a test device; the
#: window is real, and this is the backtrace of every abort we caught.
EXIT_WHILE_DELIVERING = textwrap.dedent(
    """
    import _thread
    import asyncio
    import sys
    import types

    from s3queue.storage import open_storage

    MAIN = _thread.get_ident()


    class Gates:
        def __init__(self):
            self.finalizing = _thread.allocate_lock()
            self.finalizing.acquire()
            self.left = _thread.allocate_lock()
            self.left.acquire()
            self.parked = False


    class WideWindowLoop(asyncio.SelectorEventLoop):
        gates = Gates()

        def call_soon_threadsafe(self, callback, *args, context=None):
            handle = super().call_soon_threadsafe(callback, *args, context=context)
            gates = WideWindowLoop.gates
            if _thread.get_ident() != MAIN and not gates.parked:
                gates.parked = True
                gates.finalizing.acquire(timeout=2)
                gates.left.release()
            return handle


    class AtFinalization:
        def __init__(self, gates):
            self.gates = gates

        def __del__(self):
            self.gates.finalizing.release()
            self.gates.left.acquire(timeout=10)


    # Freed when the finalizing interpreter empties sys.modules. (Not a global of
    # __main__: the parked thread's frame keeps __main__'s globals alive.)
    holder = types.ModuleType("_exit_trigger")
    holder.at_finalization = AtFinalization(WideWindowLoop.gates)
    sys.modules["_exit_trigger"] = holder
    del holder


    async def main():
        storage = open_storage(sys.argv[1])
        await storage.put("exit/key", b"stored")
        await storage.close()
        print("stored", flush=True)


    with asyncio.Runner(loop_factory=WideWindowLoop) as runner:
        runner.run(main())
    """
)


def run_script(tmp_path: Path, source: str, url: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(source)
    return subprocess.run(
        [sys.executable, str(script), url],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )


def test_process_exits_cleanly_while_obstore_is_still_delivering_a_result(
    s3_server: S3Server, tmp_path: Path
) -> None:
    url = s3_server.url(BUCKET, f"exit-{uuid.uuid4().hex[:12]}")
    done = run_script(tmp_path, EXIT_WHILE_DELIVERING, url)
    assert (done.returncode, done.stdout) == (0, "stored\n"), done.stderr


class HeldProxy:
    """A TCP proxy in front of moto that holds each connection's first request until
    released, and records when it starts answering."""

    def __init__(self, upstream: str, events: list[str]) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.events = events
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()
        self.handlers: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        request = await reader.read(65536)
        self.arrived.set()
        await self.release.wait()
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        up_writer.write(request)
        with contextlib.suppress(ConnectionError):
            await asyncio.gather(self.pipe(reader, up_writer), self.answer(up_reader, writer))

    async def pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = True
        while data := await reader.read(65536):
            if first:
                self.events.append("answered")
                first = False
            writer.write(data)
        writer.close()


@pytest.fixture
async def held(s3_server: S3Server) -> AsyncIterator[tuple[HeldProxy, S3Storage]]:
    events: list[str] = []
    proxy = HeldProxy(s3_server.endpoint, events)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = (
        f"s3://{BUCKET}/held-{uuid.uuid4().hex[:12]}"
        f"?endpoint=http://127.0.0.1:{port}&region=us-east-1"
    )
    storage = open_raw_storage(url)
    assert isinstance(storage, S3Storage)
    yield proxy, storage
    proxy.release.set()
    await storage.close()
    server.close()
    for task in proxy.handlers:
        task.cancel()
    await asyncio.gather(*proxy.handlers, return_exceptions=True)


async def test_close_waits_for_a_request_whose_caller_was_cancelled(
    held: tuple[HeldProxy, S3Storage],
) -> None:
    proxy, storage = held
    getting = asyncio.create_task(storage.get("exit/absent"))
    await proxy.arrived.wait()
    getting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getting

    async def close() -> None:
        await storage.close()
        proxy.events.append("closed")

    closing = asyncio.create_task(close())
    proxy.release.set()
    await closing
    assert proxy.events == ["answered", "closed"]
    assert storage.in_flight == 0


async def test_listing_with_a_limit_leaves_no_request_running(s3_server: S3Server) -> None:
    storage = open_raw_storage(s3_server.url(BUCKET, f"list-{uuid.uuid4().hex[:12]}"))
    assert isinstance(storage, S3Storage)
    for n in range(3):
        await storage.put(f"k/{n}", b"x")
    assert [entry.key for entry in await storage.list("k/", limit=1)] == ["k/0"]
    assert storage.in_flight == 0
    await storage.close()
