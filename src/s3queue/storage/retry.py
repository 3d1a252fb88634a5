"""Retries for transient storage failures, and the ambiguous-write rule.

Invariant: a conditional write is reported as lost (PreconditionFailed) only when no
attempt of it can have landed. When an earlier attempt's outcome was unknown and the
retry's condition fails, the object is re-read: if it holds exactly our bytes, the
first attempt won (success); otherwise :class:`~s3queue.errors.AmbiguousWrite` tells
the caller to look for its own commit token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from s3queue import sources
from s3queue.errors import (
    AmbiguousWrite,
    PreconditionFailed,
    StorageUnavailable,
    Throttled,
)
from s3queue.storage.base import ObjectEntry, PutMode, RequestCounts, Storage, StoredObject

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter for throttling and transient failures."""

    attempts: int = 8
    initial: float = 0.05
    factor: float = 2.0
    max_delay: float = 5.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        ceiling = min(self.max_delay, self.initial * self.factor ** (attempt - 1))
        return sources.uniform(0, ceiling)


class RetryingStorage:
    """Wraps a backend; retries Throttled and StorageUnavailable with backoff.

    Errors that retrying cannot fix (auth, not found, configuration) pass at once.
    """

    def __init__(self, inner: Storage, policy: RetryPolicy | None = None) -> None:
        self.inner = inner
        self.policy = policy or RetryPolicy()

    def __repr__(self) -> str:
        return f"RetryingStorage({self.inner!r})"

    @property
    def url(self) -> str:
        return self.inner.url

    @property
    def counts(self) -> RequestCounts:
        return self.inner.counts

    async def _retry(self, call: Callable[[], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                return await call()
            except (Throttled, StorageUnavailable) as error:
                if attempt >= self.policy.attempts:
                    raise
                if isinstance(error, Throttled):
                    self.counts.add("throttled")
                self.counts.add("retried")
                await asyncio.sleep(self.policy.delay(attempt))

    async def get(self, key: str) -> StoredObject | None:
        return await self._retry(lambda: self.inner.get(key))

    async def delete(self, key: str) -> None:
        await self._retry(lambda: self.inner.delete(key))

    async def delete_many(self, keys: Sequence[str]) -> None:
        await self._retry(lambda: self.inner.delete_many(keys))

    async def list_prefixes(self, prefix: str) -> list[str]:
        return await self._retry(lambda: self.inner.list_prefixes(prefix))

    async def list(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[ObjectEntry]:
        return await self._retry(
            lambda: self.inner.list(prefix, start_after=start_after, limit=limit)
        )

    async def put(self, key: str, data: bytes, mode: PutMode = "overwrite") -> str:
        conditional = mode != "overwrite"
        outcome_unknown = False
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self.inner.put(key, data, mode)
            except PreconditionFailed:
                if not (conditional and outcome_unknown):
                    raise
                return await self._resolve_ambiguous(key, data)
            except (Throttled, StorageUnavailable) as error:
                if attempt >= self.policy.attempts:
                    raise
                if isinstance(error, Throttled):
                    self.counts.add("throttled")
                else:
                    # A 503 SlowDown is refused before anything is written; a 5xx,
                    # timeout or reset may hide a write that landed.
                    outcome_unknown = True
                self.counts.add("retried")
                await asyncio.sleep(self.policy.delay(attempt))

    async def _resolve_ambiguous(self, key: str, data: bytes) -> str:
        current = await self.get(key)
        if current is not None and current.data == data:
            return current.etag
        raise AmbiguousWrite(
            f"conditional write to {key} failed after a retried request whose outcome "
            "was unknown; the first attempt may have landed and been overwritten since",
            status_code=412,
            metadata={"key": key},
        )

    async def close(self) -> None:
        await self.inner.close()
