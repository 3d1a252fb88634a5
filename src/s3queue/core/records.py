"""The small JSON documents of a queue besides segments and cursors.

Invariant: each type is encoded and decoded only by the functions here, and each
carries a ``format`` version so a newer s3queue can read what an older one wrote.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import msgspec

from s3queue.errors import CorruptData, QueueError

FORMAT = 1

#: The largest payload or result (JSON-encoded) s3queue stores, as an object of its
#: own (a blob). 256 MiB, because of what carries it, not of S3 (a single PUT takes up
#: to 5 GB, and obstore sends bytes in one PUT, without multipart, which moto serves
#: too): every request of the S3 backend must end within its 30 s timeout
#: (storage/cloud.py), so a blob this large already needs about 9 MB/s to the store; and
#: a value is held whole in memory several times over (the value, its JSON, the
#: check that it decodes back; a worker's lease, the handler's copy), per message in
#: flight. Larger data belongs in an object of the caller's, with its key in the
#: payload.
MAX_BLOB_BYTES = 256 * 1024 * 1024
#: A payload (JSON-encoded) may be at most this large.
MAX_PAYLOAD_BYTES = MAX_BLOB_BYTES
#: A handler's JSON-encoded return value may be at most this large.
MAX_RESULT_BYTES = MAX_BLOB_BYTES
#: Whatever ``blob_threshold`` says, a payload larger than this goes to a blob: a
#: segment (8 MiB, one GET by every worker that reads it) holds small payloads only.
MAX_INLINE_PAYLOAD_BYTES = 1024 * 1024
#: Likewise for a result: until its record is written it sits in the cursor, which
#: is rewritten on every commit of its shard.
MAX_INLINE_RESULT_BYTES = 256 * 1024

#: msgspec cannot decode ``Raw | None``; this empty Raw means "none". Fields default
#: to this very object, which ``omit_defaults`` leaves out of the JSON.
NO_RAW = msgspec.Raw(b"")


#: How long finished messages are kept by default (see :class:`QueueSettings`).
RESULT_TTL = 7 * 24 * 3600.0
DEAD_TTL = 14 * 24 * 3600.0
#: Payloads and results larger than this (JSON-encoded) are stored as objects of
#: their own by default, referenced from their segment or result record.
BLOB_THRESHOLD = 256 * 1024


class QueueSettings(msgspec.Struct, frozen=True, kw_only=True):
    """``queue.json``: written when the queue is created. ``name`` and
    ``max_attempts`` are fixed; ``shards`` may grow (never shrink) and the retention
    settings may change later (by compare-and-swap, ``revision`` counting the
    changes so that no two versions have the same bytes).

    Retention: a finished message's status, result and segment are kept at least
    ``result_ttl`` seconds after it finished, a dead letter (and the record of its
    redrive) at least ``dead_ttl`` after it died; then they are collected, and
    ``get`` says "expired". Payloads and results over ``blob_threshold`` bytes are
    stored as objects of their own (see :func:`inline_payload_limit`)."""

    format: int = FORMAT
    name: str
    shards: int
    created_at: float
    max_attempts: int = 3
    dedup_retention: float = 24 * 3600.0
    result_ttl: float = RESULT_TTL
    dead_ttl: float = DEAD_TTL
    blob_threshold: int = BLOB_THRESHOLD
    revision: int = 0
    #: Result records are keyed by segment (layout.result_key): False in queues
    #: created before, whose records stay keyed by message id.
    results_by_segment: bool = False
    #: The last reshard (``s3queue reshard``): producers write to the first
    #: ``grown_from`` shards only until store time ``grown_at``, so that every
    #: worker claims from the new shards before messages go there (0: never grown).
    grown_from: int = 0
    grown_at: float = 0.0

    def writable(self, now: float) -> int:
        """How many shards (the first ones) producers write to at store time ``now``."""
        return self.grown_from if self.grown_from and now < self.grown_at else self.shards


def inline_payload_limit(settings: QueueSettings) -> int:
    """The largest payload (JSON-encoded) a segment holds inline; larger ones are
    blobs (``blobs/p-...``)."""
    return max(0, min(settings.blob_threshold, MAX_INLINE_PAYLOAD_BYTES))


def inline_result_limit(settings: QueueSettings) -> int:
    """The largest result (JSON-encoded) kept inline in the cursor and result record;
    larger ones are blobs (``blobs/r-...``)."""
    return max(0, min(settings.blob_threshold, MAX_INLINE_RESULT_BYTES))


class ErrorRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One failed attempt: what was raised, where, when."""

    attempt: int
    at: float
    type: str
    message: str
    traceback: str | None = None
    worker: str | None = None


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``dead/<id>``: a message that exhausted its attempts, with every error and the
    last progress value its handler recorded (omitted when none).

    The payload is always inline, even one that was a blob in its segment: a letter
    lives ``dead_ttl``, however long the blob does. A blob that was missing when the
    letter was written leaves a null payload, and an error naming the blob's key."""

    format: int = FORMAT
    id: str
    payload: msgspec.Raw
    attempts: int
    errors: list[ErrorRecord]
    enqueued_at: float
    died_at: float
    priority: int = 0
    max_attempts: int = 3
    dedup_key: str | None = None
    progress: msgspec.Raw = NO_RAW
    #: Kept so that a redriven copy falls under the same rate limit.
    rate_key: str | None = None


class RedriveRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``redriven/<id>``: a dead letter sent back to the queue, and its new id.

    Written with create-if-absent before the copy is enqueued (``redriven_to`` empty:
    a reservation, so two redrives of one letter cannot both enqueue it), then
    completed with the new id before the dead letter is deleted.
    """

    format: int = FORMAT
    letter: DeadLetter
    nonce: str
    reserved_at: float
    redriven_to: str = ""
    redriven_at: float = 0.0


class QuarantineRecord(msgspec.Struct, frozen=True, kw_only=True):
    """``quarantine/<shard>-<ref>``: a segment that could not be read, set aside so
    its shard keeps working. Its messages are lost to the queue (not silently: they
    are listed here when the cursor knew them, and stats reports the record)."""

    format: int = FORMAT
    key: str
    shard: int
    ref: str
    reason: str
    at: float
    #: Ids of the messages that had not finished, when the window held the segment.
    lost: list[str] = []
    #: The segment was never read (it was ahead of the window): how many messages
    #: it held cannot be told.
    lost_unknown: bool = False
    #: Whether the segment's bytes were copied next to this record (key + ".data").
    copied: bool = False


class ResultRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``results/<id>``: how a message that did not die ended. A completed one keeps
    its return value (omitted when None), the errors of the attempts before the one
    that succeeded, and the last progress value its handler recorded (omitted when
    none). A cancelled one says so in ``status``, with no result.

    Cancellations share this record rather than a prefix of their own: it already
    holds what a finished message leaves (attempts, errors, progress), ``get`` reads
    it anyway, purge and lifecycle rules already cover it, and records written before
    ``status`` existed read as completed, which they are."""

    format: int = FORMAT
    id: str
    status: Literal["completed", "cancelled"] = "completed"
    result: msgspec.Raw = NO_RAW
    #: Where a result over the blob threshold is (``blobs/r-<id>-<random>``); then
    #: ``result`` is empty.
    result_blob: str | None = None
    #: When it completed (or was cancelled).
    completed_at: float
    attempts: int
    errors: list[ErrorRecord] = []
    progress: msgspec.Raw = NO_RAW


class DedupMarker(msgspec.Struct, frozen=True, kw_only=True):
    """``dedup/<hash>``: the message that owns a dedup key, and since when.

    ``id`` is empty while the producer that reserved the key is still writing it.
    """

    format: int = FORMAT
    key: str
    id: str = ""
    reserved_at: float
    nonce: str
    finished_at: float | None = None


class Link(msgspec.Struct, frozen=True, kw_only=True):
    """``links/<parent queue>/<parent id>``: the one message that follows a finished
    one (the next step of a chain). Created once, with create-if-absent, by whoever
    comes first: the worker that finished the parent, after enqueueing the next step,
    or that step itself before it runs. A step that finds another id here is a
    duplicate (its parent ran twice) and does not run."""

    format: int = FORMAT
    id: str
    at: float


class WorkerBeat(msgspec.Struct, frozen=True, kw_only=True):
    """``workers/<id>``: one worker process serving the queue, rewritten every
    heartbeat interval and deleted when it stops. Liveness is read from the
    object's Last-Modified (the store's clock), not from ``last_seen``."""

    format: int = FORMAT
    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    running: int
    version: str
    started_at: float
    last_seen: float
    interval: float


class Backlog(msgspec.Struct, frozen=True, kw_only=True):
    """A queue's counts when the coordinator last looked (see :class:`ClusterRecord`)."""

    pending: int
    delayed: int
    processing: int
    dead: int
    at: float


class ClusterRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``cluster``: the coordinator's lease and the cluster snapshot, one object.

    Written only by compare-and-swap. ``epoch`` goes up by one each time another
    worker takes the lease; ``expires_at`` (store time) ends it unless renewed;
    ``token`` tells a holder whether an answer it lost was its own write. The
    snapshot half (``workers``, ``backlog``) is what the holder saw at ``at``:
    every worker reads the live set from here instead of listing it.
    """

    format: int = FORMAT
    epoch: int = 0
    holder: str = ""
    token: str = ""
    expires_at: float = 0.0
    at: float = 0.0
    ttl: float = 0.0
    workers: list[str] = msgspec.field(default_factory=list)
    backlog: Backlog | None = None
    #: The revision of queue.json the holder last read: a worker that holds an
    #: older one reads queue.json again (a reshard, a retention change).
    revision: int = 0


T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_decoders: dict[type, msgspec.json.Decoder[Any]] = {}


def encode(record: Any) -> bytes:
    """``record`` as JSON; refused (QueueError, nothing written) if it would not decode.

    msgspec writes a NaN or infinite float as ``null``, which the float field then
    refuses to read, and one such cursor, segment or queue.json would stop every worker
    of the queue. The arguments that lead here are checked first (``limits``); this is
    the net below them, for a bad clock or a check that is missing.
    """
    data = _encoder.encode(record)
    # A NaN hides only in a null, so a record without one decodes. The round trip
    # costs about twice the encode; a cursor pays it only while it holds a null (an
    # error without a traceback, a progress value's own), which is cheap beside the
    # write that follows. (Telling a float field's null from the others by its key
    # measured barely cheaper than the decode.)
    if b"null" in data:
        kind = type(record)
        decoder = _decoders.get(kind)
        if decoder is None:
            decoder = _decoders[kind] = msgspec.json.Decoder(kind)
        try:
            decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as error:
            raise QueueError(
                f"refusing to write a {kind.__name__} that would not decode: {error}",
                retriable=False,
                suggestion="a number in it is NaN or infinite, from a clock or a value "
                "that escaped validation; nothing was written: please report it",
            ) from error
    return data


def decode(data: bytes, kind: type[T], *, what: str, key: str) -> T:
    """``data`` (the object at ``key``) as a ``kind``, or CorruptData naming the key
    and what was expected there."""
    try:
        record = msgspec.json.decode(data, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        fields = ", ".join(getattr(kind, "__struct_fields__", ()))
        raise CorruptData(
            f"corrupt {what} at {key}: {error}; expected a JSON object with {fields}",
            suggestion="it was damaged, truncated or written by something else than "
            "s3queue; run: s3queue doctor <queue>",
            metadata={"key": key, "expected": kind.__name__},
        ) from error
    version = getattr(record, "format", FORMAT)
    if isinstance(version, int) and version > FORMAT:
        raise QueueError(
            f"{what} at {key} has format {version}, newer than this s3queue reads ({FORMAT})",
            retriable=False,
            suggestion="upgrade s3queue on this machine",
            metadata={"key": key},
        )
    return record
