"""The task app's own event loop, in a daemon thread: where its queues live.

Blocking calls (``task.delay()``, ``job.result()``) and their asyncio twins
(``await task.enqueue()``, ``await job.wait()``) both run their storage work here,
so one set of open queues (and their group commits) serves plain scripts, Django or
Flask views, worker threads and any running event loop alike; a blocking call made
inside a running loop blocks that loop's thread for its duration but never fails
with "event loop is already running". Invariant: every coroutine that touches the
app's queues runs on this loop, and a forked child starts a loop of its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from s3queue.errors import ConfigurationError

T = TypeVar("T")

#: Seconds ``stop`` waits for the calls it cancelled to end.
CANCEL_TIMEOUT = 10.0


class LoopThread:
    """Starts on first use; :meth:`stop` ends it (it starts again if used after)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0
        #: Calls waiting for their outcome now (from any thread).
        self.in_flight = 0
        #: The tasks running those calls (touched on the loop's thread only).
        self._calls: set[asyncio.Task[Any]] = set()

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                # Threads do not survive fork: a child (a prefork server's worker)
                # gets a loop and queues of its own.
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=self._loop.run_forever, name="s3queue-app", daemon=True
                )
                self._thread.start()
                self._pid = os.getpid()
            return self._loop

    def in_loop(self) -> bool:
        """Whether the caller runs on this loop's thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` here and wait for its outcome (a blocking call)."""
        if self.in_loop():
            coroutine.close()
            raise ConfigurationError(
                "a blocking s3queue call was made from the app's own event loop",
                suggestion="await the asyncio twin instead (enqueue, wait, acancel...)",
            )
        future = asyncio.run_coroutine_threadsafe(self._tracked(coroutine), self.loop())
        self._count(1)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise _closed() from None
        except BaseException:
            # Ctrl-C while waiting: the work stops too, rather than going on unseen.
            future.cancel()
            raise
        finally:
            self._count(-1)

    async def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Await ``coroutine`` run here, from any event loop."""
        if self.in_loop():
            return await coroutine
        future = asyncio.run_coroutine_threadsafe(self._tracked(coroutine), self.loop())
        self._count(1)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if future.cancelled() and (current is None or not current.cancelling()):
                raise _closed() from None  # the app closed under it, not our caller
            future.cancel()
            raise
        finally:
            self._count(-1)

    async def _tracked(self, coroutine: Coroutine[Any, Any, T]) -> T:
        task = asyncio.current_task()
        assert task is not None
        self._calls.add(task)
        try:
            return await coroutine
        finally:
            self._calls.discard(task)

    async def _shut_down(self, closing: Coroutine[Any, Any, None] | None) -> None:
        """End the calls still running (their callers get an error saying the app
        was closed, rather than waiting forever), then run ``closing``."""
        calls = list(self._calls)
        for task in calls:
            task.cancel()
        if calls:
            await asyncio.wait(calls, timeout=CANCEL_TIMEOUT)
        if closing is not None:
            await closing

    def _count(self, step: int) -> None:
        with self._lock:
            self.in_flight += step

    def stop(self, closing: Coroutine[Any, Any, None] | None = None) -> None:
        """Run ``closing`` (if any), then stop the loop and its thread."""
        with self._lock:
            loop, thread, pid = self._loop, self._thread, self._pid
            self._loop = self._thread = None
        if loop is None or thread is None or pid != os.getpid():
            if closing is not None:
                closing.close()
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shut_down(closing), loop).result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            if not thread.is_alive():
                loop.close()


def _closed() -> ConfigurationError:
    return ConfigurationError(
        "the app was closed while this call was in flight (its outcome is unknown: a "
        "message it was sending may or may not be stored)",
        suggestion="close the app after its calls have returned",
    )
