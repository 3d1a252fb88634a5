"""Which queues live under a storage URL.

Listing every key would read every segment the queues ever wrote. Instead the
listing skips from one queue to the next: one LIST of a single key finds the next
queue's first key, and the following LIST starts after everything under that
queue's prefix. Cost: two requests per queue (the skip and a GET of its settings),
whatever the queues hold.
"""

from __future__ import annotations

from s3queue.core import layout
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
