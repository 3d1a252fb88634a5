"""Blobs: payloads and results too large for their segment or cursor, stored as
objects of their own (``blobs/p-<random>``, ``blobs/r-<message id>-<random>``; see
layout.py) and referenced by key.

Invariant: a blob is written, with create-if-absent under a fresh random key, before
anything that references it, and never changes; so a reference always names
complete bytes, and a reader that finds no object there knows the blob was deleted
(collected, or by hand) and says so, naming the key and the message: a payload or a
result is never silently read as null.

The collection contract (``layout.BLOB_GRACE``) is kept by the producer: see
:class:`PayloadBlobs`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from s3queue import sources
from s3queue.core import layout
from s3queue.core.segment import Message
from s3queue.errors import CorruptData
from s3queue.payload import decode_json
from s3queue.storage import Storage

#: The JSON of a payload that is in a blob, as its segment holds it.
NULL = msgspec.Raw(b"null")


async def write_blob(storage: Storage, key: str, data: bytes) -> None:
    """Create the blob ``key`` (create-if-absent: a fresh key is never taken, and a
    retried write that landed is recognised by the retry layer)."""
    await storage.put(key, data, mode="create")


def missing_blob(key: str, message_id: str, what: str) -> CorruptData:
    return CorruptData(
        f"the {what} of message {message_id} is missing: its blob {key} does not exist",
        suggestion="blobs are deleted only once nothing needs them; one deleted by hand or "
        "by a bucket lifecycle rule shorter than the queue's retention cannot be recovered",
        metadata={"key": key, "id": message_id, "missing": True},
    )


async def read_blob(storage: Storage, key: str, message_id: str, what: str) -> bytes:
    """The bytes of the blob ``key`` (``what`` of ``message_id``: "payload",
    "result"), or CorruptData naming both when it is gone."""
    stored = await storage.get(key)
    if stored is None:
        raise missing_blob(key, message_id, what)
    return stored.data


async def payload_json(storage: Storage, message: Message, message_id: str) -> msgspec.Raw:
    """The JSON of a message's payload, read from its blob if it has one."""
    if message.blob is None:
        return message.payload
    return msgspec.Raw(await read_blob(storage, message.blob, message_id, "payload"))


async def payload_of(storage: Storage, message: Message, message_id: str) -> Any:
    """A message's payload, decoded (read from its blob if it has one)."""
    if message.blob is None:
        return decode_json(message.payload)
    return decode_json(await read_blob(storage, message.blob, message_id, "payload"))


async def result_of(
    storage: Storage, raw: msgspec.Raw | None, blob: str | None, message_id: str
) -> Any:
    """A result, inline (``raw``) or in the blob ``blob``, decoded."""
    if blob is None:
        return decode_json(raw)
    return decode_json(await read_blob(storage, blob, message_id, "result"))


@dataclass
class _Written:
    data: bytes
    #: When its PUT started, by the producer's monotonic clock.
    started: float


@dataclass
class PayloadBlobs:
    """A producer's payload blobs between their write and that of their segment.

    It keeps the collection contract: a segment is never written referencing a
    payload blob whose PUT started more than ``layout.BLOB_GRACE / 2`` seconds
    earlier (a producer retrying a long time, or waiting its turn behind other
    writes to the same log); :meth:`refresh` writes such a blob again under a new
    key first. The margin left (``BLOB_GRACE / 2``) covers the segment's own PUT and
    its retries, and the collector's view of object ages."""

    storage: Storage
    queue: str
    threshold: int
    #: The monotonic clock the ages are measured on (tests give their own).
    monotonic: Callable[[], float] = sources.monotonic
    _written: dict[str, _Written] = field(default_factory=dict)
    #: Blobs written again under a new key: old key -> new key.
    _replaced: dict[str, str] = field(default_factory=dict)

    async def externalize(self, messages: list[Message]) -> list[Message]:
        """``messages``, each payload over the threshold moved to a blob of its own,
        written now (one at a time: a batch of large payloads does not open a
        connection per payload)."""
        out: list[Message] = []
        try:
            for message in messages:
                if message.blob is None and len(message.payload) > self.threshold:
                    message = await self._write(message, bytes(message.payload))
                out.append(message)
        except BaseException:
            self.forget(out)  # the batch is not written: keep none of its bytes
            raise
        return out

    async def refresh(self, messages: list[Message]) -> list[Message] | None:
        """``messages`` with every blob written too long ago written again under a
        new key (or replaced by the blob that replaced it before); None when none
        was (then the segment as encoded may be written)."""
        horizon = self.monotonic() - layout.BLOB_GRACE / 2
        out: list[Message] = []
        changed = False
        for message in messages:
            key = self._current(message.blob)
            if key is not None and key != message.blob:
                message = msgspec.structs.replace(message, blob=key)
                changed = True
            written = self._written.get(key) if key is not None else None
            if key is not None and written is not None and written.started < horizon:
                message = await self._write(message, written.data)
                self._replaced[key] = message.blob or ""
                del self._written[key]
                changed = True
            out.append(message)
        return out if changed else None

    def forget(self, messages: list[Message]) -> None:
        """Their segment is written (or failed): the bytes are not needed any more."""
        for message in messages:
            key = message.blob
            while key is not None:
                self._written.pop(key, None)
                key = self._replaced.pop(key, None)

    def _current(self, key: str | None) -> str | None:
        while key is not None and key in self._replaced:
            key = self._replaced[key]
        return key

    async def _write(self, message: Message, data: bytes) -> Message:
        key = layout.payload_blob_key(self.queue)
        started = self.monotonic()
        await write_blob(self.storage, key, data)
        self._written[key] = _Written(data, started)
        return msgspec.structs.replace(message, payload=NULL, blob=key)
