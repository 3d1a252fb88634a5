"""Setting aside segments that cannot be read, so their shard keeps working.

Invariant: before a segment leaves a cursor's window (or is stepped over in its
lane), a record under ``quarantine/`` says which segment, why, when, and which
unfinished messages went with it, and the bytes found are kept beside it. Lost
messages are therefore never lost silently: stats and the dashboard list the
records, and ``get`` of such a message says its status cannot be told.
"""

from __future__ import annotations

import logging

from s3queue.core import layout
from s3queue.core.cursor import OpenSegment, unfinished_indices
from s3queue.core.layout import SegmentRef
from s3queue.core.records import QuarantineRecord, encode
from s3queue.errors import PreconditionFailed
from s3queue.storage import Storage

log = logging.getLogger("s3queue.quarantine")


def unfinished(shard: int, segment: OpenSegment | None) -> list[str] | None:
    """Ids of the messages of a window segment that had not finished; None for a
    segment outside the window (never read: nobody can tell)."""
    if segment is None:
        return None
    prefix = f"{shard}-{segment.ref}-"
    return [prefix + str(i) for i in unfinished_indices(segment)]


async def record(
    storage: Storage,
    queue: str,
    shard: int,
    ref: SegmentRef,
    reason: str,
    at: float,
    lost: list[str] | None,
) -> None:
    """Write the quarantine record of one segment (its bytes, if any, beside it).
    ``lost``: the unfinished messages it held, None when nobody can tell (it was
    never read). The first record stays: whoever sets the segment aside again later
    knows less (its window no longer holds the segment)."""
    segment_key = ref.key(queue, shard)
    key = layout.quarantine_key(queue, shard, ref)
    found = await storage.get(segment_key)
    copied = found is not None and bool(found.data)
    if found is not None and copied:
        await storage.put(layout.quarantine_copy_key(queue, shard, ref), found.data)
    entry = QuarantineRecord(
        key=segment_key,
        shard=shard,
        ref=str(ref),
        reason=reason,
        at=at,
        lost=lost or [],
        lost_unknown=lost is None,
        copied=copied,
    )
    try:
        await storage.put(key, encode(entry), mode="create")
    except PreconditionFailed:
        return
    count = "an unknown number of" if lost is None else str(len(lost))
    log.error(
        "set aside %s (%s): %s unfinished messages in it are lost; see: s3queue doctor %s",
        segment_key,
        reason,
        count,
        queue,
    )
