"""The storage boundary: the few async operations the queue needs from object storage.

Invariant: a backend either applies a conditional write exactly as asked or raises
:class:`~s3queue.errors.PreconditionFailed`. ETags may repeat when bytes repeat, as
S3's MD5 ETags do (AWS, moto, SeaweedFS; our own backends give every write a fresh
one); so every body written under :class:`UpdateVersion` carries something that
never repeats (a version counted up, a commit token, a nonce), and a stale ETag can
never match again (no ABA). Backends raise only the typed errors of
:mod:`s3queue.errors`, never their library's or the OS's exceptions.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Literal, Protocol, runtime_checkable

from s3queue.errors import PreconditionFailed

#: S3 returns at most this many keys per LIST request; every backend counts LIST
#: requests per page of this size so that request accounting matches S3's bill.
LIST_PAGE_SIZE = 1000
#: S3's DeleteObjects removes at most this many keys per request.
DELETE_BATCH = 1000


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object's bytes, its version tag (for :class:`UpdateVersion`), and when the store
    wrote it by the store's own clock (unix seconds; None if the store cannot say).

    ``modified`` may be truncated: the store's clock read ``modified`` plus less than
    ``resolution`` seconds at the write (S3's Last-Modified has whole seconds). This is
    what lets every process measure its clock against one shared clock.
    """

    data: bytes
    etag: str
    modified: float | None = None
    resolution: float = 0.0


@dataclass(frozen=True, slots=True)
class ObjectEntry:
    """One key of a listing, with when the store last wrote it by its own clock
    (unix seconds, None if the store cannot say): what retention ages objects by."""

    key: str
    size: int
    modified: float | None = None


@dataclass(slots=True)
class RequestCounts:
    """Requests sent to the store, by kind, as the store would bill them.

    Every attempt counts, retries included: this is what the bill shows.
    """

    get: int = 0
    put: int = 0
    conditional_put: int = 0
    delete: int = 0
    list: int = 0
    # Outcomes, not requests: they are already counted above.
    precondition_failed: int = 0
    throttled: int = 0
    retried: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, kind: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, kind, getattr(self, kind) + n)

    @property
    def total(self) -> int:
        """Billed requests (outcome counters excluded)."""
        return self.get + self.put + self.conditional_put + self.delete + self.list

    def snapshot(self) -> dict[str, int]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        out["total"] = self.total
        return out

    def reset(self) -> None:
        with self._lock:
            for f in fields(self):
                if not f.name.startswith("_"):
                    setattr(self, f.name, 0)


@dataclass(frozen=True, slots=True)
class UpdateVersion:
    """Replace the object only while it is still the version with this ETag (S3's
    If-Match). The new bytes must differ from every earlier version's: an ETag may
    be the MD5 of the bytes, so equal bytes would let a stale writer match again."""

    etag: str


#: What a put does to an object already at its key: ``"overwrite"`` replaces it,
#: ``"create"`` writes only if there is none (If-None-Match: *), and
#: :class:`UpdateVersion` only if it is still the version read. The two conditional
#: modes raise PreconditionFailed when their condition does not hold.
PutMode = Literal["overwrite", "create"] | UpdateVersion


def put_kind(mode: PutMode) -> str:
    """The request kind a put is billed as."""
    return "put" if mode == "overwrite" else "conditional_put"


def precondition_failure(mode: PutMode, key: str, current: str | None) -> PreconditionFailed | None:
    """Why a put in ``mode`` must be refused when the object's ETag is ``current``
    (None: no object), or None: for backends that check conditions themselves."""
    if mode == "create" and current is not None:
        return PreconditionFailed(f"{key} already exists", status_code=412)
    if isinstance(mode, UpdateVersion) and current != mode.etag:
        return PreconditionFailed(f"{key} changed since it was read", status_code=412)
    return None


@runtime_checkable
class Storage(Protocol):
    """What s3queue needs from an object store. Keys are ``/``-separated strings of
    safe characters; the backend maps them under its own root or prefix."""

    @property
    def url(self) -> str:
        """The URL this store was opened from, without credentials."""
        ...

    @property
    def counts(self) -> RequestCounts: ...

    async def get(self, key: str) -> StoredObject | None:
        """The object at ``key``, or None if there is none."""
        ...

    async def put(self, key: str, data: bytes, mode: PutMode = "overwrite") -> str:
        """Write ``data`` at ``key`` as ``mode`` says and return its new ETag."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""
        ...

    async def delete_many(self, keys: Sequence[str]) -> None:
        """Remove every key of ``keys`` (missing ones are not an error): in requests
        of up to DELETE_BATCH keys where the store deletes in bulk (S3's
        DeleteObjects), one request per key otherwise."""
        ...

    async def list_prefixes(self, prefix: str) -> list[str]:
        """The "directories" directly under ``prefix`` (``""`` or ending in ``/``):
        each distinct next path segment of the keys under it, as ``prefix + segment
        + "/"``, in ascending order. S3's LIST with a delimiter: its cost is the
        number of directories and keys directly under ``prefix``, not of everything
        below them. A directory whose objects were all deleted may still be named
        (SeaweedFS keeps its folders): callers check what they find."""
        ...

    async def list(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[ObjectEntry]:
        """Keys under ``prefix`` in ascending byte order, strictly after ``start_after``,
        at most ``limit`` of them (all when None)."""
        ...

    async def close(self) -> None: ...
