"""Changing a queue's stored settings after it was created (only its retention).

``queue.json`` is rewritten by compare-and-swap with its ``revision`` counted up, so
two processes changing it at once cannot both win with stale values, and equal
settings never have equal bytes (no ETag ABA). Processes that have the queue open
keep the settings they read; the sweeper reads them fresh on every pass, and
retention is its business alone.
"""

from __future__ import annotations

import msgspec

from s3queue.core import layout
from s3queue.core.records import QueueSettings, decode, encode
from s3queue.core.retention import Retention
from s3queue.errors import ConfigurationError, PreconditionFailed, QueueNotFound
from s3queue.storage import Storage, UpdateVersion

#: Compare-and-swap attempts before giving up (only another ``config`` can race).
ATTEMPTS = 8


async def reconfigure(storage: Storage, name: str, retention: Retention) -> QueueSettings:
    """Store ``retention`` in the settings of queue ``name``; return the new settings."""
    key = layout.settings_key(name)
    for _ in range(ATTEMPTS):
        stored = await storage.get(key)
        if stored is None:
            raise QueueNotFound(
                f"queue {name!r} does not exist", suggestion="create it first: s3queue create"
            )
        current = decode(stored.data, QueueSettings, what="queue settings", key=key)
        updated = msgspec.structs.replace(
            current,
            result_ttl=retention.result_ttl,
            dead_ttl=retention.dead_ttl,
            revision=current.revision + 1,
        )
        try:
            await storage.put(key, encode(updated), mode=UpdateVersion(stored.etag))
        except PreconditionFailed:
            continue
        return updated
    raise ConfigurationError(
        f"the settings of queue {name!r} kept changing while they were written",
        suggestion="retry when no other s3queue config runs on this queue",
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
