"""Which queues live under a storage URL.

Listing every key would read every segment the queues ever wrote. Instead one
delimited LIST names the top-level "directories" (a page per 1,000 on S3), and a GET
of each one's queue.json tells a queue from a foreign folder. Cost: about one
request per queue, whatever the queues hold; on every store, since it needs no
"list after this key" (which Azure's API lacks before its 2026 versions).
"""

from __future__ import annotations

from s3queue.core import layout
from s3queue.core.records import QueueSettings, decode
from s3queue.errors import QueueNotFound
from s3queue.storage import Storage


async def list_queues(storage: Storage) -> list[str]:
    """Names of the queues under ``storage``, in order."""
    names: list[str] = []
    for prefix in await storage.list_prefixes(""):
        name = prefix.rstrip("/")
        if not layout.QUEUE_NAME.match(name):
            continue  # a folder no queue could be named after is someone else's
        if await storage.get(layout.settings_key(name)) is not None:
            names.append(name)
    return names


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
