"""A fault-injecting wrapper, for testing every crash and failure point.

It sits between the retry layer and a real backend and, by rule, fails a request
before it reaches the store (the store is unchanged) or after the store applied it
(the write landed but the caller sees an error: the ambiguous case).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from s3queue.errors import StorageError, StorageUnavailable, Throttled
from s3queue.storage.base import ObjectEntry, PutMode, RequestCounts, Storage, StoredObject


@dataclass
class Fault:
    """Fail the next ``times`` requests of ``op`` ("get", "put", "delete", "list" or
    "*") whose key matches ``when``; ``after=True`` fails them after they applied."""

    op: str
    times: int = 1
    after: bool = False
    error: Callable[[], StorageError] = field(
        default=lambda: StorageUnavailable("injected failure", status_code=500)
    )
    when: Callable[[str], bool] = field(default=lambda key: True)


def slow_down() -> StorageError:
    """The error S3 answers when a prefix is over its request rate."""
    return Throttled("503 SlowDown (injected)", status_code=503)


class FaultyStorage:
    """Wraps a raw backend and injects the faults queued with :meth:`inject`."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.faults: list[Fault] = []
        self.injected = 0

    def __repr__(self) -> str:
        return f"FaultyStorage({self.inner!r})"

    def inject(self, fault: Fault) -> None:
        self.faults.append(fault)

    @property
    def url(self) -> str:
        return self.inner.url

    @property
    def counts(self) -> RequestCounts:
        return self.inner.counts

    def _take(self, op: str, key: str, after: bool) -> StorageError | None:
        for fault in self.faults:
            matches = fault.times > 0 and fault.after == after and fault.op in (op, "*")
            if matches and fault.when(key):
                fault.times -= 1
                self.injected += 1
                return fault.error()
        return None

    async def get(self, key: str) -> StoredObject | None:
        if (error := self._take("get", key, after=False)) is not None:
            raise error
        result = await self.inner.get(key)
        if (error := self._take("get", key, after=True)) is not None:
            raise error
        return result

    async def put(self, key: str, data: bytes, mode: PutMode = "overwrite") -> str:
        if (error := self._take("put", key, after=False)) is not None:
            raise error
        etag = await self.inner.put(key, data, mode)
        if (error := self._take("put", key, after=True)) is not None:
            raise error
        return etag

    async def delete(self, key: str) -> None:
        if (error := self._take("delete", key, after=False)) is not None:
            raise error
        await self.inner.delete(key)

    async def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys[:1]:
            if (error := self._take("delete", key, after=False)) is not None:
                raise error
        await self.inner.delete_many(keys)

    async def list_prefixes(self, prefix: str) -> list[str]:
        if (error := self._take("list", prefix, after=False)) is not None:
            raise error
        return await self.inner.list_prefixes(prefix)

    async def list(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[ObjectEntry]:
        if (error := self._take("list", prefix, after=False)) is not None:
            raise error
        return await self.inner.list(prefix, start_after=start_after, limit=limit)

    async def close(self) -> None:
        await self.inner.close()
