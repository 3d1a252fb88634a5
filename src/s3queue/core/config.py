"""Changing a queue's stored settings after it was created: its retention and its
shard count (growing only).

``queue.json`` is rewritten by compare-and-swap with its ``revision`` counted up, so
two processes changing it at once cannot both win with stale values, and equal
settings never have equal bytes (no ETag ABA). Processes that have the queue open
read them again when the coordinator's snapshot names a newer revision (workers)
or at most every ``Queue.SETTINGS_INTERVAL`` when they enqueue (producers); the
sweeper reads them fresh on every pass.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from s3queue import limits
from s3queue.core import layout
from s3queue.core.records import QueueSettings, decode, encode
from s3queue.core.retention import Retention
from s3queue.errors import ConfigurationError, PreconditionFailed, QueueNotFound
from s3queue.storage import Storage, UpdateVersion

#: Compare-and-swap attempts before giving up (only another ``config`` can race).
ATTEMPTS = 8


async def reconfigure(storage: Storage, name: str, retention: Retention) -> QueueSettings:
    """Store ``retention`` in the settings of queue ``name``; return the new settings."""

    def change(current: QueueSettings) -> QueueSettings:
        return msgspec.structs.replace(
            current, result_ttl=retention.result_ttl, dead_ttl=retention.dead_ttl
        )

    return await _rewrite(storage, name, change)


async def reshard(
    storage: Storage, name: str, shards: int, *, now: float, notice: float
) -> QueueSettings:
    """Grow queue ``name`` to ``shards`` shards; return the new settings.

    The new shards exist at once for claims (their cursors and logs start empty);
    producers write to them from store time ``now + notice``, by when every live
    worker has read the new count. Shrinking is refused: a producer that has not
    read the new count yet would keep writing to a shard being retired, and
    nothing would claim those messages once it was. The same count changes nothing.
    """
    shards = limits.SHARDS.check(shards, "shards")

    def change(current: QueueSettings) -> QueueSettings:
        if shards == current.shards:
            return current  # (another reshard to the same count won a race)
        if shards < current.shards:
            raise ConfigurationError(
                f"queue {name!r} has {current.shards} shards; shrinking it to {shards} "
                "is refused: producers that have not yet read the new count would "
                "keep writing to the shards given up",
                suggestion=f"keep {current.shards} shards (idle shards cost only "
                "their share of idle polling), or move producers to a new queue",
            )
        return msgspec.structs.replace(
            current,
            shards=shards,
            grown_from=current.writable(now),
            grown_at=now + notice,
        )

    return await _rewrite(storage, name, change)


def _missing(name: str) -> QueueNotFound:
    return QueueNotFound(
        f"queue {name!r} does not exist", suggestion="create it first: s3queue create"
    )


async def _rewrite(
    storage: Storage, name: str, change: Callable[[QueueSettings], QueueSettings]
) -> QueueSettings:
    """Write ``change(current settings)`` by compare-and-swap with the revision
    counted up, reading again after each lost race; nothing if ``change`` returns
    the settings it was given."""
    key = layout.settings_key(name)
    for _ in range(ATTEMPTS):
        stored = await storage.get(key)
        if stored is None:
            raise _missing(name)
        current = decode(stored.data, QueueSettings, what="queue settings", key=key)
        changed = change(current)
        if changed is current:
            return current
        updated = msgspec.structs.replace(changed, revision=current.revision + 1)
        try:
            await storage.put(key, encode(updated), mode=UpdateVersion(stored.etag))
        except PreconditionFailed:
            continue
        return updated
    raise ConfigurationError(
        f"the settings of queue {name!r} kept changing while they were written",
        suggestion="retry when no other s3queue config or reshard runs on this queue",
    )


def check_retention(settings: QueueSettings, retention: Retention | None) -> None:
    """Refuse a retention that differs from the stored one when a queue is reopened:
    it is changed on purpose (``s3queue config``, ``Queue.configure``), not by
    whichever process opened the queue last."""
    if retention is None or retention == Retention.of(settings):
        return
    raise ConfigurationError(
        f"queue {settings.name!r} keeps results {settings.result_ttl:g} s and dead "
        f"letters {settings.dead_ttl:g} s, not {retention.result_ttl:g} s and "
        f"{retention.dead_ttl:g} s",
        suggestion=f"change it with s3queue config {settings.name} --result-ttl ... "
        "--dead-ttl ... (or Queue.configure), or omit retention when opening",
    )
