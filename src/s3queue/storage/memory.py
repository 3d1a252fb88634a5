"""An in-process store for tests: the same semantics as S3, nothing persisted.

Invariant: every write gets a fresh ETag (a global counter), so rewriting equal
bytes is never mistaken for "unchanged". A threading lock makes it safe to share
between the event loop and the blocking client's thread.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Callable, Sequence

from s3queue import sources
from s3queue.storage.base import (
    LIST_PAGE_SIZE,
    ObjectEntry,
    PutMode,
    RequestCounts,
    StoredObject,
    precondition_failure,
    put_kind,
)
from s3queue.storage.keys import check_key
from s3queue.storage.redact import redact_url

_registry: dict[str, MemoryStorage] = {}
_registry_lock = threading.Lock()


class MemoryStorage:
    """``memory://name``: stores opened with the same name in one process share data."""

    def __init__(self, name: str = "", *, clock: Callable[[], float] | None = None) -> None:
        self._name = name
        #: The store's own clock, which stamps every write: the machine's wall clock,
        #: or the simulation's true time, which no pod's skewed clock may replace.
        self._clock = clock or sources.SYSTEM.wall
        self._objects: dict[str, tuple[bytes, str, float]] = {}
        self._sorted_keys: list[str] = []
        self._lock = threading.Lock()
        self._etags = itertools.count(1)
        self._counts = RequestCounts()

    @classmethod
    def named(cls, name: str) -> MemoryStorage:
        """The shared store called ``name`` (an empty name is always a fresh store)."""
        if not name:
            return cls()
        with _registry_lock:
            store = _registry.get(name)
            if store is None:
                store = _registry[name] = cls(name)
            return store

    def __repr__(self) -> str:
        return f"MemoryStorage({redact_url(self.url)!r})"

    @property
    def url(self) -> str:
        return f"memory://{self._name}"

    @property
    def counts(self) -> RequestCounts:
        return self._counts

    async def get(self, key: str) -> StoredObject | None:
        check_key(key)
        self._counts.add("get")
        with self._lock:
            found = self._objects.get(key)
        return None if found is None else StoredObject(found[0], found[1], found[2])

    async def put(self, key: str, data: bytes, mode: PutMode = "overwrite") -> str:
        check_key(key)
        self._counts.add(put_kind(mode))
        with self._lock:
            current = self._objects.get(key)
            refused = precondition_failure(mode, key, None if current is None else current[1])
            if refused is not None:
                self._counts.add("precondition_failed")
                raise refused
            etag = f'"m{next(self._etags)}"'
            if current is None:
                bisect.insort(self._sorted_keys, key)
            self._objects[key] = (bytes(data), etag, self._clock())
            return etag

    async def delete(self, key: str) -> None:
        check_key(key)
        self._counts.add("delete")
        with self._lock:
            if self._objects.pop(key, None) is not None:
                index = bisect.bisect_left(self._sorted_keys, key)
                del self._sorted_keys[index]

    async def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            await self.delete(key)

    async def list_prefixes(self, prefix: str) -> list[str]:
        with self._lock:
            index = bisect.bisect_left(self._sorted_keys, prefix)
            found: set[str] = set()
            direct = 0
            for key in itertools.islice(self._sorted_keys, index, None):
                if not key.startswith(prefix):
                    break
                segment, slash, _ = key[len(prefix) :].partition("/")
                if slash:
                    found.add(f"{prefix}{segment}/")
                else:
                    direct += 1
        self._counts.add("list", max(1, -(-(len(found) + direct) // LIST_PAGE_SIZE)))
        return sorted(found)

    async def list(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[ObjectEntry]:
        with self._lock:
            lower = max(prefix, start_after) if start_after is not None else prefix
            index = bisect.bisect_left(self._sorted_keys, lower)
            out: list[ObjectEntry] = []
            for key in itertools.islice(self._sorted_keys, index, None):
                if not key.startswith(prefix):
                    break
                if start_after is not None and key <= start_after:
                    continue
                data, _, modified = self._objects[key]
                out.append(ObjectEntry(key, len(data), modified))
                if limit is not None and len(out) >= limit:
                    break
        self._counts.add("list", max(1, -(-len(out) // LIST_PAGE_SIZE)))
        return out

    async def close(self) -> None:
        return None
