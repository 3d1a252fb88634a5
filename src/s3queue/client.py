"""A blocking facade over :class:`~s3queue.queue.Queue` for sync producers (Django,
Flask, scripts): the same methods, without ``await``.

It runs one private event loop in a daemon thread, so concurrent calls from many
threads still share group commits. Invariant: each call returns or raises exactly
what the async method would.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from s3queue.backoff import Backoff
from s3queue.info import CancelOutcome, Failure, Lease, MessageInfo, Stats
from s3queue.queue import Queue

T = TypeVar("T")


class BlockingQueue:
    """Made by :func:`connect`; close it (or use ``with``) when done."""

    def __init__(self, url: str, name: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="s3queue-client", daemon=True
        )
        self._thread.start()
        try:
            self.queue: Queue = self._run(Queue.open(url, name, **options))
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    @property
    def name(self) -> str:
        return self.queue.name

    def enqueue(
        self,
        payload: Any,
        *,
        delay: float = 0.0,
        priority: int = 0,
        dedup_key: str | None = None,
        max_attempts: int | None = None,
        rate_key: str | None = None,
    ) -> str:
        return self._run(
            self.queue.enqueue(
                payload,
                delay=delay,
                priority=priority,
                dedup_key=dedup_key,
                max_attempts=max_attempts,
                rate_key=rate_key,
            )
        )

    def enqueue_many(
        self,
        payloads: Iterable[Any],
        *,
        delay: float = 0.0,
        priority: int = 0,
        max_attempts: int | None = None,
        rate_key: str | None = None,
    ) -> list[str]:
        return self._run(
            self.queue.enqueue_many(
                list(payloads),
                delay=delay,
                priority=priority,
                max_attempts=max_attempts,
                rate_key=rate_key,
            )
        )

    def claim(self, max_messages: int = 10, visibility_timeout: float = 30.0) -> list[Lease]:
        return self._run(self.queue.claim(max_messages, visibility_timeout))

    def ack(self, lease: Lease, result: Any = None) -> None:
        self._run(self.queue.ack(lease, result))

    def fail(
        self,
        lease: Lease,
        error: BaseException | str,
        retriable: bool = True,
        backoff: Backoff | float | None = None,
    ) -> Failure:
        return self._run(self.queue.fail(lease, error, retriable, backoff))

    def extend(self, lease: Lease, seconds: float) -> float:
        return self._run(self.queue.extend(lease, seconds))

    def release(self, lease: Lease) -> None:
        self._run(self.queue.release(lease))

    def cancel(self, ids: Iterable[str]) -> list[CancelOutcome]:
        return self._run(self.queue.cancel(list(ids) if not isinstance(ids, str) else ids))

    def get(self, message_id: str) -> MessageInfo | None:
        return self._run(self.queue.get(message_id))

    def stats(self) -> Stats:
        return self._run(self.queue.stats())

    def dead_letters(self, limit: int | None = 100) -> list[MessageInfo]:
        return self._run(self.queue.dead_letters(limit))

    def redrive(self, ids: Iterable[str] | None = None) -> list[str]:
        return self._run(self.queue.redrive(None if ids is None else list(ids)))

    def purge(self) -> None:
        self._run(self.queue.purge())

    def delete(self) -> None:
        self._run(self.queue.delete())

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._run(self.queue.close())
        finally:
            self._stop_loop()

    def __enter__(self) -> BlockingQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(url: str, name: str, **options: Any) -> BlockingQueue:
    """Open queue ``name`` at ``url`` for blocking use (options as for ``Queue.open``)."""
    return BlockingQueue(url, name, **options)
