"""Segments: immutable batches of messages, written once by a producer.

Invariant: a segment's bytes never change after its create-if-absent PUT; its
``writer`` nonce makes every segment's bytes unique, so a retried write can
recognise itself (see ``storage.retry``).
"""

from __future__ import annotations

import msgspec

from s3queue.records import FORMAT, decode, encode

#: A segment holds at most this many messages and about this many bytes, so that
#: one GET stays fast and one PUT stays far below S3's 5 GB single-PUT limit.
MAX_SEGMENT_MESSAGES = 1000
MAX_SEGMENT_BYTES = 8 * 1024 * 1024


class Message(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    payload: msgspec.Raw
    enqueued_at: float
    visible_at: float
    priority: int = 0
    max_attempts: int = 3
    dedup_key: str | None = None


class Segment(msgspec.Struct, frozen=True, kw_only=True):
    format: int = FORMAT
    writer: str
    created_at: float
    messages: list[Message]


def encode_segment(segment: Segment) -> bytes:
    return encode(segment)


def decode_segment(data: bytes, key: str) -> Segment:
    return decode(data, Segment, what="segment", key=key)
