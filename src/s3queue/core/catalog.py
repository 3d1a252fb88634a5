"""Which queues live under a storage URL.

Listing every key would read every segment the queues ever wrote. Instead the
listing skips from one queue to the next: one LIST of a single key finds the next
queue's first key, and the following LIST starts after everything under that
queue's prefix. Cost: two requests per queue (the skip and a GET of its settings),
whatever the queues hold.
"""

from __future__ import annotations

from s3queue.core import layout
from s3queue.core.records import QueueSettings, decode
from s3queue.errors import QueueNotFound
from s3queue.storage import Storage

#: Sorts after every key under a prefix: S3 and the local backend list keys in
#: code point (UTF-8 byte) order, and U+10FFFF is the last code point.
_PAST_EVERYTHING = "\U0010ffff"


async def list_queues(storage: Storage) -> list[str]:
    """Names of the queues under ``storage``, in order."""
    names: list[str] = []
    after: str | None = None
    while True:
        entries = await storage.list("", start_after=after, limit=1)
        if not entries:
            return names
        key = entries[0].key
        name = layout.queue_of(key)
        if name is not None and await storage.get(layout.settings_key(name)) is not None:
            names.append(name)
        after = f"{layout.queue_prefix(key if name is None else name)}{_PAST_EVERYTHING}"


async def read_settings(storage: Storage, name: str) -> QueueSettings | None:
    """The settings of queue ``name`` (its queue.json), None if there is none."""
    key = layout.settings_key(name)
    stored = await storage.get(key)
    if stored is None:
        return None
    return decode(stored.data, QueueSettings, what="queue settings", key=key)


async def ensure_exists(storage: Storage, name: str) -> None:
    """Raise QueueNotFound unless the queue's settings are there (one GET).

    Called where a process finds an object of the queue missing that it would
    otherwise create afresh (a cursor that vanished, a first cursor or segment): a
    queue deleted under a running worker or producer is then reported, never
    recreated in part."""
    if await storage.get(layout.settings_key(name)) is None:
        raise QueueNotFound(
            f"queue {name!r} was deleted (its queue.json is gone from {storage.url})",
            suggestion="stop using it, or open it again to create a fresh queue of that name",
            metadata={"queue": name},
        )
