"""The public asyncio client: enqueue, claim, ack, fail, extend, look up, redrive.

``Queue`` ties the producer (segments), one group-commit loop per shard (cursors)
and the side records (dead letters, results, dedup markers) together. Invariant:
every call that returns has made its change durable in object storage; a call that
raises has changed nothing the caller can observe (or, for a write whose outcome
was unknown, settled it by reading it back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import traceback
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from s3queue import limits, sources
from s3queue.backoff import Backoff
from s3queue.core import layout, registry
from s3queue.core.blobs import payload_of, write_blob
from s3queue.core.catalog import list_queues, read_settings
from s3queue.core.clock import Clock, StoreClock
from s3queue.core.commit import CommitContext, ShardCommitter
from s3queue.core.config import check_retention, reconfigure, reshard
from s3queue.core.cursor import (
    Ack,
    Cancel,
    Cancellation,
    Cancelled,
    Claim,
    Claimed,
    Extend,
    Fail,
    Progress,
    Release,
    Rules,
    Stale,
    Yielded,
    purge_of,
)
from s3queue.core.layout import check_queue_name
from s3queue.core.outcomes import OutcomeRecords
from s3queue.core.producer import Producer
from s3queue.core.rates import QUEUE_WIDE, RateLimit, ShardRate, check_rate_key
from s3queue.core.reader import QueueReader, all_segments
from s3queue.core.records import (
    MAX_PAYLOAD_BYTES,
    MAX_RESULT_BYTES,
    DedupMarker,
    ErrorRecord,
    Link,
    QueueSettings,
    decode,
    encode,
    inline_result_limit,
)
from s3queue.core.redrive import Redrive
from s3queue.core.retention import Retention
from s3queue.core.segment import Message, SegmentCache
from s3queue.core.sweep import Budget, Sweeper, SweepReport
from s3queue.errors import (
    ConfigurationError,
    CorruptData,
    LeaseLost,
    PreconditionFailed,
    QueueError,
    QueueNotFound,
    StorageError,
)
from s3queue.info import CancelOutcome, Failure, Lease, MessageInfo, Stats
from s3queue.payload import decode_json, encode_json
from s3queue.storage import Storage, UpdateVersion, open_storage, redact_url

log = logging.getLogger("s3queue.queue")

DEFAULT_SHARDS = 4
#: The sweeper lease a pass run by hand takes: long enough for a large pass, short
#: enough that the workers' sweeper takes over soon after.
COLLECT_LEASE = 300.0
#: Seconds between two log lines about one shard whose cursor cannot be read.
BROKEN_LOG_INTERVAL = 60.0
#: Seconds between two reads of the high wake object by a claiming process: how soon
#: a busy worker sees a priority message written to a shard it is not claiming from.
HIGH_CHECK_INTERVAL = 1.0
MAX_SHARDS = limits.SHARDS.high
#: A dedup reservation whose producer has not finished within this many seconds
#: belongs to a producer that died mid-enqueue, and may be taken over.
DEDUP_RESERVATION_TIMEOUT = 60.0


def error_record(
    error: BaseException | str, attempt: int, at: float, worker: str | None
) -> ErrorRecord:
    if isinstance(error, BaseException):
        summary = "".join(traceback.format_exception(error, limit=8))[-4000:]
        return ErrorRecord(
            attempt=attempt,
            at=at,
            type=type(error).__name__,
            message=str(error)[:2000],
            traceback=summary,
            worker=worker,
        )
    return ErrorRecord(
        attempt=attempt, at=at, type="Error", message=str(error)[:2000], worker=worker
    )


#: What the probe tells a user whose store fails it.
_PROBE_FIX = (
    "s3queue needs create-if-absent (If-None-Match: *) and compare-and-swap (If-Match) "
    "writes that the store honours, or two workers could hold one message; use AWS S3, "
    "Azure Blob, MinIO, R2, SeaweedFS or another store that supports them (README: "
    "Supported stores)"
)


async def probe_conditional_writes(storage: Storage, queue: str) -> None:
    """Refuse a store that cannot do conditional writes, or accepts them but ignores
    them, before anything else is written. Leaves nothing behind."""
    key = layout.probe_key(queue, sources.token_hex(8))
    failed = True
    try:
        await _probe(storage, key)
        failed = False
    except StorageError as error:
        # Auth, a missing bucket, a wrong region and outages say best what they
        # are; a store that calls the request bad or not implemented lacks the
        # feature.
        lacks = error.status_code in (400, 405, 501) and not error.retriable
        if type(error) is not StorageError or not lacks:
            raise
        raise ConfigurationError(
            f"{storage.url} failed the conditional-write probe: {error.message}",
            suggestion=_PROBE_FIX,
        ) from None
    finally:
        try:
            await storage.delete(key)
        except StorageError:
            # Not sys.exception(): inside this handler that is the delete's own error.
            if not failed:  # else do not hide why the probe failed
                raise


async def _probe(storage: Storage, key: str) -> None:
    async def must_fail(attempt: Awaitable[str], what: str) -> None:
        try:
            await attempt
        except PreconditionFailed:
            return
        raise ConfigurationError(f"{storage.url} {what}", suggestion=_PROBE_FIX)

    etag = await storage.put(key, b"probe-1", mode="create")
    await must_fail(
        storage.put(key, b"probe-2", mode="create"),
        "overwrote an object with If-None-Match: * (create-if-absent is ignored)",
    )
    await storage.put(key, b"probe-3", mode=UpdateVersion(etag))
    await must_fail(
        storage.put(key, b"probe-4", mode=UpdateVersion(etag)),
        "accepted a stale If-Match (compare-and-swap is ignored)",
    )


async def _create_settings(
    storage: Storage, fresh: QueueSettings, retention: Retention
) -> QueueSettings:
    name = fresh.name
    fresh = msgspec.structs.replace(
        fresh, result_ttl=retention.result_ttl, dead_ttl=retention.dead_ttl
    )
    try:
        await storage.put(layout.settings_key(name), encode(fresh), mode="create")
        return fresh
    except PreconditionFailed:  # someone created it first: use theirs
        settings = await read_settings(storage, name)
        assert settings is not None
        return settings


async def _clock_for(
    clock: Clock | None, storage: Storage, name: str, skew_margin: float, *, measure: bool
) -> Clock:
    """The queue's clock: the store's (see clock.py), measured now unless the queue is
    opened read-only, or the clock the caller gave."""
    clock = StoreClock() if clock is None else clock
    if measure and isinstance(clock, StoreClock):
        await clock.sync(storage, layout.clock_key(name))
        _check_margin(clock, skew_margin)
    return clock


def _check_margin(clock: StoreClock, skew_margin: float) -> None:
    # Two processes' store times differ by up to the sum of their uncertainties; a
    # lease must outlive that by the margin, or both could hold it.
    if 2 * clock.uncertainty > skew_margin:
        log.warning(
            "skew_margin=%.2f s is below twice this process's clock uncertainty (%.2f s): "
            "two workers could both hold a lease near its expiry; use skew_margin >= %.1f",
            skew_margin,
            clock.uncertainty,
            2 * clock.uncertainty,
        )


def _check_shards(settings: QueueSettings, shards: int | None) -> None:
    """A reopening that asks for other shards than the queue has is an error, but
    for the fewer shards of a queue grown since (the code that created it)."""
    if shards is None or shards == settings.shards:
        return
    if settings.grown_from and shards < settings.shards:
        return
    raise ConfigurationError(
        f"queue {settings.name!r} has {settings.shards} shards, not {shards}",
        suggestion="omit shards when reopening a queue (s3queue reshard grows it)",
    )


async def _missing(storage: Storage, name: str) -> QueueNotFound:
    """The error for a queue that does not exist, naming the ones that do."""
    names = await list_queues(storage)
    here = f"queues here: {', '.join(names)}" if names else "there are no queues here"
    return QueueNotFound(
        f"no queue named {name!r} at {storage.url} ({here})",
        suggestion="check the name and --url; producers and workers create queues, "
        "or run: s3queue create " + name,
        metadata={"queue": name, "queues": names},
    )


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Steal:
    """When a claim may take from shards this process does not own: nobody wrote
    the shard's cursor for ``quiet`` seconds (its owner idles or is gone: whoever
    hears of new work first takes it), or, with ``waited``, work there has waited
    that long untaken while a lease there was held that long (its owner is busy
    with long jobs). A look at a shard reads its cursor (one
    GET), and only then, for a quiet shard or with ``waited``, what the cursor has
    not taken in and the segments it needs to tell how long work waited."""

    quiet: float
    waited: float | None = None
    #: Look at every other shard; else (without ``waited``) only at those found
    #: quiet by the last look (their owners idle or dead), one cursor read each.
    everywhere: bool = True


@dataclass
class ClaimRound:
    """What one :meth:`Queue.claim_round` took."""

    leases: list[Lease]
    #: A shard was given way to another process writing it: an empty claim does
    #: not mean there is nothing to claim.
    contended: bool
    #: Work waits for rate-limit tokens (see :meth:`Queue.set_rate_limit`): an
    #: empty claim does not mean there is nothing to claim either, and
    #: :meth:`Queue.next_due` says when the next token comes.
    throttled: bool = False
    #: Leases were taken from shards this process does not own.
    stolen: bool = False


class Queue:
    """A named queue in a store. Open with :meth:`open`; close with :meth:`close`
    (or ``async with``)."""

    def __init__(
        self,
        storage: Storage,
        settings: QueueSettings,
        *,
        clock: Clock | None = None,
        rules: Rules | None = None,
        backoff: Backoff | None = None,
        owns_storage: bool = True,
    ) -> None:
        self.storage = storage
        self.settings = settings
        self.name = settings.name
        clock = StoreClock() if clock is None else clock
        #: Store time (see :mod:`s3queue.core.clock`), or the clock the caller gave.
        self.clock: Clock = clock
        #: Set when the clock is measured against the store's.
        self.store_clock = clock if isinstance(clock, StoreClock) else None
        self.backoff = backoff or Backoff()
        self.owner = f"client-{sources.token_hex(4)}"
        self._owns_storage = owns_storage
        self.segments = SegmentCache(storage, settings.name)
        self.context = CommitContext(
            storage=storage,
            settings=settings,
            segments=self.segments,
            clock=clock,
            rules=rules or Rules(),
            outcomes=OutcomeRecords(storage, settings, self.segments),
        )
        self.committers = [ShardCommitter(self.context, k) for k in range(settings.shards)]
        self.producer = Producer(
            storage,
            settings,
            clock,
            self.segments,
            self.committers,
        )
        # Shards this process claims from, best first. A shard whose cursor another
        # process just wrote (a CAS conflict) moves to the back, so processes drift
        # apart onto different shards and each cursor mostly has one writer.
        self._reader = QueueReader(storage, settings, self.committers, self.segments, clock)
        self._enqueued_listeners: list[Callable[[list[str]], None]] = []
        self._preference = sources.shuffled(range(settings.shards))
        #: Rung after changes that make work appear; watched by idle workers (wake.py).
        self.wake = self.producer.wake
        self._high_checked_at = -math.inf
        self._broken_logged: dict[int, float] = {}
        self._look_everywhere = False
        self._rate_limits: dict[str, RateLimit] = {}
        #: The shards this process claims from (None: all); see :meth:`own`.
        self._owned: frozenset[int] | None = None
        #: sources.monotonic() when queue.json was last read (see :meth:`reload`).
        self._settings_read_at = sources.monotonic()
        #: The shard count the rate limits are shared out over (see _share_rates).
        self._rates_over = settings.shards

    def __repr__(self) -> str:
        return f"Queue({self.name!r}, url={redact_url(self.storage.url)!r})"

    # --- opening and closing ----------------------------------------------------------

    @classmethod
    async def open(  # noqa: PLR0913 - the public entry point's keyword-only options
        cls,
        url: str | Storage,
        name: str,
        *,
        shards: int | None = None,
        max_attempts: int = 3,
        dedup_retention: float = 24 * 3600.0,
        retention: Retention | None = None,
        clock: Clock | None = None,
        skew_margin: float = 2.0,
        backoff: Backoff | None = None,
        verify_store: bool = True,
        create: bool = True,
    ) -> Queue:
        """Open the queue ``name`` in the store at ``url``, creating it on first use.

        ``shards``, ``max_attempts``, ``dedup_retention`` and ``retention`` (how long
        results and dead letters are kept: :class:`~s3queue.Retention`) are stored
        when the queue is created; reopening reads them (a different ``retention``,
        or ``shards``, is an error, but fewer shards than :meth:`reshard` grew it
        to; :meth:`configure` changes the retention). With ``create=False`` (read-
        only views) a missing queue raises QueueNotFound and nothing is written.

        ``clock`` defaults to a :class:`~s3queue.core.clock.StoreClock` (this machine's
        clock corrected by its measured offset to the store's); a plain function is
        trusted as is: pass one only when every process shares it (tests).
        """
        shards = limits.SHARDS.optional(shards, "shards")
        max_attempts = limits.MAX_ATTEMPTS.check(max_attempts, "max_attempts")
        dedup_retention = limits.DEDUP_RETENTION.check(dedup_retention, "dedup_retention")
        skew_margin = limits.SKEW_MARGIN.check(skew_margin, "skew_margin")
        storage = open_storage(url) if isinstance(url, str) else url
        try:
            settings = await read_settings(storage, check_queue_name(name))
            if settings is None and not create:
                raise await _missing(storage, name)
            if create and verify_store:
                # Before anything is written: a store that ignores conditions must
                # not be left holding a queue it cannot run.
                await probe_conditional_writes(storage, name)
            clock = await _clock_for(clock, storage, name, skew_margin, measure=create)
            if settings is None:
                fresh = QueueSettings(
                    name=name,
                    shards=shards or DEFAULT_SHARDS,
                    created_at=clock(),
                    max_attempts=max_attempts,
                    dedup_retention=dedup_retention,
                    results_by_segment=True,
                )
                settings = await _create_settings(storage, fresh, retention or Retention())
            _check_shards(settings, shards)
            check_retention(settings, retention)
        except BaseException:
            if isinstance(url, str):
                await storage.close()
            raise
        rules, owns = Rules(skew_margin=skew_margin), isinstance(url, str)
        return cls(storage, settings, clock=clock, rules=rules, backoff=backoff, owns_storage=owns)

    async def settle(self) -> None:
        """Wait until the records of every message this process finished so far
        (dead letters, results, dedup markers) are written. Commits report a
        message finished at once and write its records just after; tests and
        scripts that read those records straight away call this first."""
        for committer in self.committers:
            await committer.settle()

    async def close(self) -> None:
        try:
            await self.producer.close()
            for committer in self.committers:
                await committer.close()
        finally:
            # Even when flushing failed or was interrupted: closing the store is what
            # waits for its requests still running (see storage.cloud).
            if self._owns_storage:
                await self.storage.close()

    async def __aenter__(self) -> Queue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def on_recovered(self, listener: Any) -> None:
        """Call ``listener(Recovered)`` when this process takes back an expired lease."""
        self.context.on_recovered.append(listener)

    def on_enqueued(self, listener: Callable[[list[str]], None]) -> None:
        """Call ``listener(ids)`` after messages enqueued through this object are durable."""
        self._enqueued_listeners.append(listener)

    def _enqueued(self, ids: list[str]) -> list[str]:
        for listener in self._enqueued_listeners:
            try:
                listener(ids)
            except Exception:  # a listener's bug must not fail an enqueue that landed
                log.exception("on_enqueued listener failed")
        return ids

    async def sync_clock(self) -> None:
        """Measure the clock's offset to the store again if the last measurement is
        old (or there is none). Every write calls it before it uses the time (the
        commit loop too); a no-op for a plain clock. Raises ClockSkewError when the
        skew is over the limit."""
        if self.store_clock is None:
            return
        key = layout.clock_key(self.name)
        if self.context.rates and self.store_clock.narrowing:
            # Tokens are counted on this clock: an estimate still moving by tenths
            # of a second would mint some (the first second of a process on S3).
            await self.store_clock.settle(self.storage, key)
        else:
            await self.store_clock.sync(self.storage, key)

    # --- enqueue -----------------------------------------------------------------------

    def _message(
        self,
        payload: Any,
        *,
        delay: float,
        priority: int,
        max_attempts: int | None,
        dedup_key: str | None,
        rate_key: str | None,
        now: float,
    ) -> Message:
        delay = limits.DELAY.check(delay, "delay")
        priority = limits.PRIORITY.check(priority, "priority")
        attempts = limits.MAX_ATTEMPTS.optional(max_attempts, "max_attempts")
        if attempts is None:
            attempts = self.settings.max_attempts
        if dedup_key is not None and (
            not isinstance(dedup_key, str) or not 0 < len(dedup_key) <= 1024
        ):
            raise ConfigurationError(
                f"dedup_key={dedup_key!r}",
                suggestion="a dedup key is a string of 1 to 1024 characters",
            )
        if rate_key is not None:
            check_rate_key(rate_key)
        return Message(
            payload=encode_json(payload, limit=MAX_PAYLOAD_BYTES, what="the payload"),
            enqueued_at=now,
            # Without a delay, claimable at once by every process, whatever the
            # small differences between their estimates of the store's time.
            visible_at=now + delay if delay > 0 else 0.0,
            priority=priority,
            max_attempts=attempts,
            dedup_key=dedup_key,
            rate_key=rate_key,
        )

    async def enqueue(
        self,
        payload: Any,
        *,
        delay: float = 0.0,
        priority: int = 0,
        dedup_key: str | None = None,
        max_attempts: int | None = None,
        rate_key: str | None = None,
    ) -> str:
        """Store one message; return its id once it is durable.

        With ``dedup_key``, a second enqueue of the same key returns the first
        message's id and stores nothing, until the first message finished more than
        the queue's ``dedup_retention`` ago. With ``rate_key`` (1 to 256 characters,
        e.g. a task's name) the message falls under that key's rate limit, if the
        workers set one (:meth:`set_rate_limit`).
        """
        await self.sync_clock()
        message = self._message(
            payload,
            delay=delay,
            priority=priority,
            max_attempts=max_attempts,
            dedup_key=dedup_key,
            rate_key=rate_key,
            now=self.clock(),
        )
        await self._reload_if_due()
        if dedup_key is not None:
            return await self._enqueue_unique(message, dedup_key)
        return self._enqueued([await self.producer.enqueue(message)])[0]

    async def enqueue_many(
        self,
        payloads: Iterable[Any],
        *,
        delay: float = 0.0,
        priority: int = 0,
        max_attempts: int | None = None,
        rate_key: str | None = None,
    ) -> list[str]:
        """Store many messages in as few writes as their size allows; ids in order.
        Every payload is checked before anything is written. ``rate_key`` as for
        :meth:`enqueue`, for every message."""
        await self.sync_clock()
        now = self.clock()
        messages = [
            self._message(
                payload,
                delay=delay,
                priority=priority,
                max_attempts=max_attempts,
                dedup_key=None,
                rate_key=rate_key,
                now=now,
            )
            for payload in payloads
        ]
        if not messages:
            return []
        await self._reload_if_due()
        return self._enqueued(await self.producer.write(messages))

    async def _enqueue_unique(self, message: Message, dedup_key: str) -> str:
        key = layout.dedup_key(self.name, dedup_key)
        nonce = sources.token_hex(8)
        reservation = DedupMarker(key=dedup_key, reserved_at=self.clock(), nonce=nonce)
        waited = 0
        while True:
            try:
                etag = await self.storage.put(key, encode(reservation), mode="create")
                break
            except PreconditionFailed:
                stored = await self.storage.get(key)
                if stored is None:
                    continue
                marker = decode(stored.data, DedupMarker, what="dedup marker", key=key)
                now = self.clock()
                if marker.id and (
                    marker.finished_at is None
                    or marker.finished_at + self.settings.dedup_retention > now
                ):
                    return marker.id
                if not marker.id and marker.reserved_at + DEDUP_RESERVATION_TIMEOUT > now:
                    # Another producer is writing this key's message right now.
                    waited += 1
                    await asyncio.sleep(min(1.0, 0.01 * 2**waited))
                    continue
                try:
                    reservation = DedupMarker(key=dedup_key, reserved_at=now, nonce=nonce)
                    etag = await self.storage.put(
                        key, encode(reservation), mode=UpdateVersion(stored.etag)
                    )
                    break
                except PreconditionFailed:
                    continue
        mid = await self.producer.enqueue(message)
        owned = DedupMarker(key=dedup_key, id=mid, reserved_at=reservation.reserved_at, nonce=nonce)
        await self.storage.put(key, encode(owned), mode=UpdateVersion(etag))
        return self._enqueued([mid])[0]

    # --- links between messages ------------------------------------------------------------

    async def link(self, parent_queue: str, parent_id: str, message_id: str) -> str:
        """Record ``message_id`` (of this queue) as the one message that follows
        ``parent_id`` of ``parent_queue``, unless one is recorded already; return the
        one recorded (create-if-absent: the first to record wins, see
        :class:`~s3queue.core.records.Link`)."""
        key = layout.link_key(self.name, parent_queue, parent_id)
        record = Link(id=message_id, at=self.clock())
        for _ in range(3):
            try:
                await self.storage.put(key, encode(record), mode="create")
                return message_id
            except PreconditionFailed:
                # Written before, or by our own request that timed out and was retried.
                linked = await self.linked(parent_queue, parent_id)
                if linked is not None:
                    return linked
                # Deleted in between (a purge): create it again.
        raise PreconditionFailed(
            f"the link {key} kept changing (purged while it was written?)",
            suggestion="retry when the queue is no longer being purged",
            metadata={"key": key},
        )

    async def linked(self, parent_queue: str, parent_id: str) -> str | None:
        """The message recorded by :meth:`link` as following ``parent_id``, if any."""
        key = layout.link_key(self.name, parent_queue, parent_id)
        stored = await self.storage.get(key)
        if stored is None:
            return None
        return decode(stored.data, Link, what="chain link", key=key).id

    # --- consume -------------------------------------------------------------------------

    async def claim(
        self,
        max_messages: int = 10,
        visibility_timeout: float = 30.0,
        *,
        owner: str | None = None,
    ) -> list[Lease]:
        """Lease up to ``max_messages`` messages for ``visibility_timeout`` seconds.

        Higher priority first across every shard (a message with priority > 0 goes
        before the whole backlog of lower ones), then roughly in enqueue order.
        Returns an empty list when nothing is claimable now. Under rate limits
        (:meth:`set_rate_limit`) a message is taken only with its tokens, and a claim
        takes from one shard at most.
        """
        return (await self.claim_round(max_messages, visibility_timeout, owner=owner)).leases

    async def claim_round(
        self,
        max_messages: int = 10,
        visibility_timeout: float = 30.0,
        *,
        owner: str | None = None,
        steal: Steal | None = None,
    ) -> ClaimRound:
        """:meth:`claim`, and whether a shard was given way to another process
        writing it (then an empty claim does not mean there is no work).

        When this process owns shards (:meth:`own`), it claims from those only,
        unless ``steal`` is given: then, if they leave the claim short, it looks at
        the other shards (reads only) and takes from those ``steal`` allows."""
        max_messages = limits.CLAIM_MESSAGES.check(max_messages, "max_messages")
        visibility_timeout = limits.VISIBILITY_TIMEOUT.check(
            visibility_timeout, "visibility_timeout"
        )
        await self.sync_clock()
        if self.context.rates and self._rates_over != self.settings.writable(self.clock()):
            self._share_rates()  # a reshard's notice ran out: the new shards get shares
        owner = owner or self.owner
        await self._look_around(owner)
        round_ = ClaimRound([], contended=False)
        mine = [k for k in self._preference if self._claims_from(k)]
        await self._claim_best(mine, owner, max_messages, visibility_timeout, round_)
        short = not self._round_done(round_, max_messages)
        if steal is not None and self._owned is not None and short and not self.context.rates:
            await self._steal(owner, max_messages, visibility_timeout, steal, round_)
        if self.context.rates:
            now = self.clock()
            round_.throttled = any(c.rate_due(now) is not None for c in self.committers)
        return round_

    async def _claim_best(
        self,
        shards: list[int],
        owner: str,
        max_messages: int,
        visibility_timeout: float,
        round_: ClaimRound,
    ) -> None:
        """Claim from ``shards`` (best first) into ``round_``."""
        now = self.clock()
        best = {k: self.committers[k].best_waiting(now) for k in shards}
        # Best first across shards: take from the shard holding the best message, no
        # lower than the best any other shard holds, then look again.
        for _ in range(2 * len(best)):
            known = [k for k in shards if best[k] is not None]
            if not known or self._round_done(round_, max_messages):
                break
            remaining = max_messages - len(round_.leases)
            shard = max(known, key=lambda k: best[k] or 0)
            others = [b for k in known if k != shard and (b := best[k]) is not None]
            floor = max(others) if others else None
            claim = self._claim_op(shard, owner, remaining, visibility_timeout, floor)
            taken = await self._claim_from(shard, claim, round_)
            # Nothing taken (the shard was given way): move on to the others.
            best[shard] = self.committers[shard].best_waiting(now) if taken else None
        # Then shards with nothing known to claim: their logs may hold more (a look
        # just made costs nothing again: an empty log is not read twice in a row),
        # unless whatever they hold waits for tokens of the queue's limit.
        for shard in shards:
            if self._round_done(round_, max_messages):
                break
            remaining = max_messages - len(round_.leases)
            if best.get(shard) is None and not self.committers[shard].starved(now):
                claim = self._claim_op(shard, owner, remaining, visibility_timeout)
                await self._claim_from(shard, claim, round_)

    async def _steal(
        self,
        owner: str,
        max_messages: int,
        visibility_timeout: float,
        steal: Steal,
        round_: ClaimRound,
    ) -> None:
        """Claim from shards this process does not own whose work waits untaken (see
        :class:`Steal`): an owner at work keeps its shard to itself, a busy, idle or
        dead one does not."""
        owned = self._owned or frozenset()
        narrow = not steal.everywhere and steal.waited is None
        now = self.clock()
        others = [
            k
            for k in self._preference
            if k not in owned and (not narrow or self._seems_quiet(k, now, steal.quiet))
        ]
        if not others:
            return
        read = await asyncio.gather(
            *(self.committers[k].refresh() for k in others), return_exceptions=True
        )
        now = self.clock()
        quiet = {
            k
            for k, outcome in zip(others, read, strict=True)
            if self._looked(k, outcome) and self._seems_quiet(k, now, steal.quiet)
        }
        candidates = [k for k in others if k in quiet or steal.waited is not None]
        looked = await asyncio.gather(
            *(self.committers[k].submit(Claim(owner, 0, 1.0)) for k in candidates),
            return_exceptions=True,
        )
        ripe = []
        for shard, outcome in zip(candidates, looked, strict=True):
            since = (
                self.committers[shard].waiting_since(now) if self._looked(shard, outcome) else None
            )
            if since is None:
                continue
            if shard in quiet or self._owner_swamped(shard, now, since, steal.waited):
                ripe.append(shard)
        if ripe:
            round_.stolen = True
            await self._claim_best(ripe, owner, max_messages, visibility_timeout, round_)

    def _owner_swamped(self, shard: int, now: float, since: float, waited: float | None) -> bool:
        """Whether work in ``shard`` has waited ``waited`` seconds while nobody wrote
        its cursor for that long (its owner is gone, or not yet known to be its
        owner), or while its holders were busy that long with jobs they hold (long
        jobs fill the owner's slots: other workers' help is welcome). An owner that
        takes work and finishes it at once (short jobs, the cursor its limit) is
        left alone: more writers would only cost it conflicts."""
        if waited is None or since > now - waited:
            return False
        if self._seems_quiet(shard, now, waited):
            return True
        held = self.committers[shard].held_since(now)
        return held is not None and held <= now - waited

    def _seems_quiet(self, shard: int, now: float, quiet: float) -> bool:
        """Whether ``shard``'s cursor, as last read, had gone unwritten ``quiet``
        seconds by ``now`` (its owner idle or dead); true if never read."""
        written = self.committers[shard].written_at
        return written is None or written <= now - quiet

    def _looked(self, shard: int, outcome: object) -> bool:
        """Whether a look at ``shard`` answered (an unreadable cursor is logged and
        passed over; a store error fails the claim)."""
        if isinstance(outcome, CorruptData):
            self._broken_shard(shard, outcome)
            return False
        if isinstance(outcome, BaseException):
            raise outcome
        return True

    def _claims_from(self, shard: int) -> bool:
        """Whether claims (and idle due times) look at ``shard`` first. Every shard
        under rate limits: their token buckets are shared out among the processes
        spending them already (rates.held_keys), and a shard's tokens must be
        claimed as they come, whoever can."""
        return self._owned is None or shard in self._owned or bool(self.context.rates)

    def own(self, shards: frozenset[int] | None) -> None:
        """Claim from ``shards`` only (None: from every shard, the default), but for
        stealing (see :meth:`claim_round`); idle due times and sweeps look at them
        only. Set by a worker from the shard ownership of its cluster."""
        self._owned = shards

    @property
    def owned(self) -> frozenset[int] | None:
        return self._owned

    def _round_done(self, round_: ClaimRound, max_messages: int) -> bool:
        """Whether a claim round has what it wants. With rate limits, it ends at the
        first shard that gave leases: those are a message or two, and the worker
        starts them at once rather than after the writes of other shards' claims,
        which would bunch together start times the limit spaces out."""
        got = len(round_.leases)
        return got >= max_messages or (got > 0 and bool(self.context.rates))

    def _claim_op(
        self,
        shard: int,
        owner: str,
        max_messages: int,
        visibility_timeout: float,
        min_priority: int | None = None,
    ) -> Claim:
        """A claim on ``shard``, carrying this process's rate limits if it has any."""
        rates = self.context.rates
        if not rates:
            return Claim(owner, max_messages, visibility_timeout, min_priority)
        hold = self.committers[shard].held()
        return Claim(owner, max_messages, visibility_timeout, min_priority, rates, hold)

    async def _claim_from(self, shard: int, claim: Claim, round_: ClaimRound) -> int:
        try:
            result = await self.committers[shard].submit(claim)
        except CorruptData as error:
            # One unreadable cursor must not stop the other shards.
            self._broken_shard(shard, error)
            return 0
        taken = [] if isinstance(result, Yielded) else result
        if not taken:
            # Another process writes this shard (a conflict) or it had nothing: try
            # it last next time, so processes drift onto different shards.
            self._preference.remove(shard)
            self._preference.append(shard)
        round_.contended = round_.contended or isinstance(result, Yielded)
        leases = [self._lease(c, claim.owner) for c in taken]
        if any(c.message.blob is not None for c in taken):
            leases = await self._read_blobs(taken, leases)
        round_.leases.extend(leases)
        return len(taken)

    async def _read_blobs(self, taken: list[Claimed], leases: list[Lease]) -> list[Lease]:
        """The leases with the payloads of their blobs. A message whose blob is gone
        can never run: it is dead-lettered at once (not retriable) with the error
        naming the blob, and left out; its letter's payload is null."""

        async def read(claimed: Claimed, lease: Lease) -> Lease | None:
            if claimed.message.blob is None:
                return lease
            try:
                lease.payload = await payload_of(self.storage, claimed.message, lease.id)
            except CorruptData as error:
                if not error.metadata.get("missing"):
                    raise
                log.error("message %s is dead-lettered: %s", lease.id, error)
                with contextlib.suppress(LeaseLost):  # then whoever holds it does this
                    await self.fail(lease, error, retriable=False)
                return None
            except QueueError as error:
                # The store failed (after its retries): give the message back
                # unprocessed rather than lose the round's other leases with it.
                log.warning(
                    "message %s released: its payload blob cannot be read: %s", lease.id, error
                )
                with contextlib.suppress(QueueError):
                    await self.release(lease)
                return None
            return lease

        read_ = await asyncio.gather(
            *(read(c, lease) for c, lease in zip(taken, leases, strict=True))
        )
        return [lease for lease in read_ if lease is not None]

    async def _look_around(self, owner: str) -> None:
        """Before claiming: learn of express-lane messages written to any shard (one
        GET of the high wake object a second at most), and read every shard this
        process knows nothing of yet, all at once, so the claim can take the best
        first."""
        if sources.monotonic() - self._high_checked_at >= HIGH_CHECK_INTERVAL:
            self._high_checked_at = sources.monotonic()
            if await self.wake.changed(high=True):
                for committer in self.committers:
                    committer.expect_high()
        everywhere, self._look_everywhere = self._look_everywhere, False
        blind = [
            c
            for c in self.committers
            if self._claims_from(c.shard) and (everywhere or c.cached is None or c.high_pending)
        ]
        looked = await asyncio.gather(
            *(c.submit(Claim(owner, 0, 1.0)) for c in blind), return_exceptions=True
        )
        for committer, outcome in zip(blind, looked, strict=True):
            if isinstance(outcome, CorruptData):
                self._broken_shard(committer.shard, outcome)
            elif isinstance(outcome, BaseException):
                raise outcome

    def _broken_shard(self, shard: int, error: CorruptData) -> None:
        now = sources.monotonic()
        if now - self._broken_logged.get(shard, -math.inf) >= BROKEN_LOG_INTERVAL:
            self._broken_logged[shard] = now
            log.error(
                "shard %d of queue %r is out of use: %s (run: s3queue doctor %s)",
                shard,
                self.name,
                error,
                self.name,
            )

    def _lease(self, claimed: Claimed, owner: str) -> Lease:
        message = claimed.message
        return Lease(
            id=claimed.id,
            # A blob's payload is read by _read_blobs.
            payload=None if message.blob is not None else decode_json(message.payload),
            attempt=claimed.attempt,
            max_attempts=message.max_attempts,
            token=claimed.token,
            owner=owner,
            claimed_at=claimed.claimed_at,
            expires_at=claimed.expires_at,
            enqueued_at=message.enqueued_at,
            priority=message.priority,
            errors=list(claimed.errors),
            queue=self.name,
        )

    def _committer(self, lease: Lease) -> ShardCommitter:
        return self.committers[layout.parse_message_id(lease.id).shard]

    @staticmethod
    def _held(result: T | Stale, lease: Lease, action: str) -> T:
        """The result of an operation of the lease's holder; LeaseLost when the lease
        was not held."""
        if isinstance(result, Stale):
            raise LeaseLost(
                f"cannot {action} message {lease.id}: {result.reason}",
                suggestion="the message was (or will be) delivered again; make handlers "
                "idempotent, and extend leases of long jobs before they expire",
                metadata={"id": lease.id, "token": lease.token},
            )
        return result

    async def ack(self, lease: Lease, result: Any = None, *, linger: float = 0.0) -> None:
        """Complete the message; store ``result`` (if not None) for :meth:`get`. If the
        message was cancelled while it ran, it ends "cancelled" instead (no result is
        kept) and ``lease.cancel_requested`` is set.

        ``linger`` (seconds) lets the ack wait for other operations of this process
        on the same shard, a claim above all, so that they share one cursor write.
        The Worker acks with a linger: it costs nothing while the lease is covered.
        """
        raw = (
            None
            if result is None
            else encode_json(result, limit=MAX_RESULT_BYTES, what="the result", exact=False)
        )
        blob = None
        if raw is not None and len(raw) > inline_result_limit(self.settings):
            # Written before the ack that names it: the cursor (rewritten on every
            # commit) and the result record hold only its key.
            blob = layout.result_blob_key(self.name, lease.id)
            await write_blob(self.storage, blob, bytes(raw))
            raw = None
        outcome = await self._committer(lease).submit(
            Ack(lease.id, lease.token, raw, blob), linger=linger
        )
        if self._held(outcome, lease, "ack") is not None:
            lease.cancel_requested = True  # it ended cancelled, not completed

    async def fail(
        self,
        lease: Lease,
        error: BaseException | str,
        retriable: bool = True,
        backoff: Backoff | float | None = None,
        *,
        linger: float = 0.0,
    ) -> Failure:
        """Record a failed attempt: retry after a backoff delay, or dead-letter the
        message when it is not ``retriable`` or has used all its attempts; or, if it
        was cancelled while it ran, end it "cancelled" (status "cancelled", and
        ``lease.cancel_requested`` set). ``linger`` as for :meth:`ack`."""
        if not isinstance(backoff, Backoff | None):
            delay = limits.RETRY_DELAY.check(backoff, "backoff")
        else:
            delay = (backoff or self.backoff).delay(lease.attempt)
        record = error_record(error, lease.attempt, self.clock(), lease.owner)
        outcome = await self._committer(lease).submit(
            Fail(lease.id, lease.token, record, retriable, delay), linger=linger
        )
        if isinstance(outcome, Cancelled):
            lease.cancel_requested = True
            return Failure("cancelled", self.clock())
        failure = self._held(outcome, lease, "fail")
        if failure.status == "retry":
            # Another worker may be idle when the retry falls due (this one may stop).
            self.wake.ring()
        return failure

    async def extend(self, lease: Lease, seconds: float) -> float:
        """Keep the lease for ``seconds`` more from now; return the new expiry. Sets
        ``lease.cancel_requested`` when the message was cancelled meanwhile: stop
        working on it, then ack (or fail) it, which ends it cancelled."""
        seconds = limits.VISIBILITY_TIMEOUT.check(seconds, "seconds")
        outcome = await self._committer(lease).submit(Extend(lease.id, lease.token, seconds))
        extended = self._held(outcome, lease, "extend")
        lease.expires_at = extended.expires_at
        if extended.cancelled:
            lease.cancel_requested = True
        return extended.expires_at

    async def release(self, lease: Lease) -> None:
        """Give the message back unprocessed: claimable at once, the attempt not
        counted; or ended "cancelled" if it was cancelled meanwhile."""
        outcome = await self._committer(lease).submit(Release(lease.id, lease.token))
        if self._held(outcome, lease, "release") is not None:
            lease.cancel_requested = True
            return
        self.wake.ring()  # claimable again now: idle workers should look

    async def progress(self, lease: Lease, value: Any) -> None:
        """Record progress (any JSON value, e.g. 0.0 to 1.0) visible through :meth:`get`."""
        raw = encode_json(value, limit=16 * 1024, what="the progress value", exact=False)
        outcome = await self._committer(lease).submit(Progress(lease.id, lease.token, raw))
        self._held(outcome, lease, "record progress of")

    # --- cancelling ------------------------------------------------------------------------

    async def cancel(self, ids: Iterable[str]) -> list[CancelOutcome]:
        """Cancel messages: one :class:`~s3queue.info.CancelOutcome` per id, in order.

        A message that has not started never will ("cancelled"); a running one is
        "cancelling": its worker learns it at its next lease renewal (within a third of
        the visibility timeout), and the message ends "cancelled" however that attempt
        ends. One that had finished is left as it is ("finished"). Each shard's cancels
        share one cursor write. A malformed id raises ConfigurationError, and then
        nothing is cancelled."""
        if isinstance(ids, str):
            raise ConfigurationError(
                f"cancel takes a list of ids, not the string {ids!r}",
                suggestion=f"queue.cancel([{ids!r}])",
            )
        given = list(ids)
        wanted = list(dict.fromkeys(given))
        await self._know_shards_of(wanted)
        by_shard: dict[int, list[Cancel]] = {}
        for mid in wanted:
            shard = layout.parse_message_id(mid).shard
            if shard < self.settings.shards:
                by_shard.setdefault(shard, []).append(Cancel(mid))
        await self.sync_clock()
        done = await asyncio.gather(
            *(self.committers[k].submit_all(ops) for k, ops in by_shard.items())
        )
        found = {c.id: c for shard in done for c in shard}
        outcomes = await asyncio.gather(*(self._cancel_outcome(m, found.get(m)) for m in wanted))
        by_id = {outcome.id: outcome for outcome in outcomes}
        return [by_id[mid] for mid in given]

    async def _cancel_outcome(self, mid: str, done: Cancellation | None) -> CancelOutcome:
        status = "not_found" if done is None else done.status
        if status == "cancelled":
            return CancelOutcome(mid, "cancelled", "cancelled; it will not run")
        if status == "cancelling":
            return CancelOutcome(
                mid, "cancelling", "running: its worker is told to stop, and it ends cancelled"
            )
        if status == "finished":
            if done is not None and done.finished is not None:
                return CancelOutcome(mid, "finished", f"already {done.finished}", done.finished)
            # The cursor is past it: only its records tell how it ended.
            try:
                info = await self.get(mid)
            except CorruptData as error:
                return CancelOutcome(mid, "finished", f"its status cannot be told: {error}")
            if info is not None:
                return CancelOutcome(mid, "finished", f"already {info.status}", info.status)
        return CancelOutcome(mid, "not_found", f"no message {mid} in queue {self.name!r}")

    # --- rate limits --------------------------------------------------------------------------

    def set_rate_limit(self, limit: RateLimit | str | None, *, key: str | None = None) -> None:
        """Start at most ``limit`` jobs (``"100/s"``, ``"30/m"``, ``"2/h"`` or a
        :class:`RateLimit`) across every worker process of the queue: of all its
        messages, or with ``key``, of those enqueued with that ``rate_key``. None
        removes the limit. A message falls under the queue's limit and its key's.

        The limit is this process's configuration: give every worker process the
        same (a process without it claims as if there were none). It is kept as
        each shard's share of the rate in the shard's cursor, spent by the claims
        themselves, so it costs no request; a queue whose backlog sits on few
        shards runs below the limit (see docs/GUIDE.md, "Rate limits").
        """
        bucket = QUEUE_WIDE if key is None else check_rate_key(key, "key")
        if limit is None:
            self._rate_limits.pop(bucket, None)
        else:
            self._rate_limits[bucket] = RateLimit.of(limit)
        self._share_rates()

    def _share_rates(self) -> None:
        # Over the shards producers write to: during a reshard's notice the new
        # ones are empty, and a share of the limit there would be lost.
        shards = self._rates_over = self.settings.writable(self.clock())
        self.context.rates = tuple(
            ShardRate.share(name, rate, shards) for name, rate in sorted(self._rate_limits.items())
        )

    @property
    def rate_limits(self) -> dict[str | None, RateLimit]:
        """The limits set in this process: None for the queue's own, else by key."""
        return {(None if k == QUEUE_WIDE else k): v for k, v in self._rate_limits.items()}

    # --- what an idle worker polls --------------------------------------------------------

    async def arm_wake(self) -> None:
        """Before going idle: ask whoever adds work next to announce it (one GET, and
        a PUT unless another worker listens already). Claim once more after this:
        that claim looks at every log and cursor afresh, for a ring that came just
        before the arming found nobody listening and wrote nothing."""
        await self.wake.arm()
        for committer in self.committers:
            committer.forget_misses()

    async def wake_changed(self) -> bool:
        """One GET: whether anyone announced new work since the last call (True on the
        first call). See :mod:`s3queue.core.wake`."""
        if not await self.wake.changed():
            return False
        # New work may be anywhere: the next claim first looks at every shard at
        # once (its logs however recently found empty, its cursor if old), and at
        # the express lanes' wake object.
        for committer in self.committers:
            committer.forget_misses()
        self._high_checked_at = -math.inf
        self._look_everywhere = True
        return True

    def next_due(self, after: float = -math.inf, *, quiet: float | None = None) -> float | None:
        """When, by the store's clock, something this process knows of needs a
        claim (a delay or retry ends, a lease can be recovered, a timer bucket falls
        due, a dead process's records are overdue, work waiting for rate-limit
        tokens gets one); None if nothing. Times up to
        ``after`` are passed over: pass when a claim last found nothing. With
        ``quiet``, the shards of others read before and then unwritten that long
        count too (their owners idle or dead: a steal takes what falls due). No I/O."""
        now = self.clock()
        mine = [c for c in self.committers if self._claims_from(c.shard)]
        dues = [due for c in mine if (due := c.next_due(now, after)) is not None]
        if quiet is not None:
            dues += self._quiet_dues(now, after, quiet)
        return min(dues) if dues else None

    def _quiet_dues(self, now: float, after: float, quiet: float) -> list[float]:
        """When work falls due in the shards of others as last read, but not before
        their cursor has gone unwritten ``quiet`` seconds (only then may it be
        stolen): the leases of a dead owner, once they expire and it stays silent."""
        out = []
        for c in self.committers:
            written = c.written_at
            if self._claims_from(c.shard) or c.cached is None or written is None:
                continue
            due = c.next_due(now)
            if due is not None and (due := max(due, written + quiet)) > after:
                out.append(due)
        return out

    #: The steps of a sweep of one shard, one request each.
    SWEEP_STEPS = ("cursor", "log", "high")

    async def sweep(self, shard: int, step: str) -> bool:
        """One request of a sweep of ``shard`` (see SWEEP_STEPS): re-read its cursor
        (then what others released, retried or let expire is known: ``next_due``
        tells when), or look for a segment nobody announced in its log or express
        lane. Whether there is something to claim now."""
        committer = self.committers[shard]
        try:
            if step == "cursor":
                await committer.refresh()
                # Segments others took in: without them the leases and retries of
                # the window are known, but not whether its messages are claimable.
                await committer.load_window()
                return committer.best_waiting(self.clock()) is not None
            return await committer.lane_has_more(high=step == "high")
        except CorruptData as error:
            if "ref" in error.metadata:
                return True  # an unreadable segment: a claim sets it aside
            self._broken_shard(shard, error)  # one unreadable cursor stops no worker
            return False

    # --- look-ups ----------------------------------------------------------------------------

    async def get(self, message_id: str) -> MessageInfo | None:
        """The status of one message, or None if there is no such message."""
        await self._know_shards_of([message_id])
        return await self._reader.get(message_id)

    async def stats(self, *, listing: bool = True) -> Stats:
        """Counts by status across all shards (reads every cursor and the unread
        backlog). With ``listing=False`` a lane's unread backlog is found by reading
        its next segment, listed only when there is one (a GET instead of a LIST
        per lane of an idle shard, a LIST costing as much as 12 GETs; how the
        cluster's coordinator counts once an interval). A long-lived reader (the
        dashboard, ``stats --watch``) rereads queue.json at most every
        SETTINGS_INTERVAL, so shards added by a reshard are counted too."""
        await self._reload_if_due()
        return await self._reader.stats(listing=listing)

    # --- dead letters ---------------------------------------------------------------------------

    async def dead_letters(self, limit: int | None = 100) -> list[MessageInfo]:
        """Dead messages with their error history, oldest id first."""
        limit = limits.LIST_LIMIT.optional(limit, "limit")
        return await self._reader.dead_letters(limit)

    async def dead_letter_ids(self, limit: int | None = None) -> list[str]:
        """Ids of the dead letters, oldest id first, from one listing (no reads)."""
        return await self._reader.dead_letter_ids(limit)

    async def redrive(self, ids: Iterable[str] | None = None) -> list[str]:
        """Send dead letters back to the queue as new messages (all of them when
        ``ids`` is None); return the new ids, in the order of ``ids``. Each copy has a
        fresh id and attempt count; ``get(old id)`` then reports status "redriven"
        with ``redriven_to``. An id that is not a dead letter raises
        :class:`~s3queue.core.redrive.NotDeadLetter` and nothing is redriven."""
        chosen = None if ids is None else list(ids)
        return await Redrive(self.storage, self.name, self.producer, self.clock).run(chosen)

    # --- retention ---------------------------------------------------------------------------

    async def configure(self, retention: Retention) -> QueueSettings:
        """Change how long the queue keeps results and dead letters (stored in
        queue.json; the sweeper applies it from its next pass, to everything
        finished, not only to what finishes from now on)."""
        self._adopt(await reconfigure(self.storage, self.name, retention))
        return self.settings

    # --- settings that change while the queue runs --------------------------------------

    #: Seconds between the reads of queue.json by a process that enqueues: a
    #: reshard reaches producers within this (workers learn it from the cluster).
    SETTINGS_INTERVAL = 30.0

    async def reshard(self, shards: int) -> QueueSettings:
        """Grow the queue to ``shards`` shards while producers and workers run.

        Workers learn of the new shards from the coordinator's snapshot within
        two heartbeat intervals and claim from them at once; producers write to
        them only after a notice of three (``grown_at`` in queue.json), so that
        messages do not wait in a shard nobody claims from yet. Nothing moves:
        the old shards keep their messages and take new ones too. Shrinking
        raises ConfigurationError."""
        await self.sync_clock()
        record, _ = await registry.read_cluster(self.storage, self.name)
        notice = registry.notice(record) + self.context.rules.skew_margin
        now = self.clock()
        self._adopt(await reshard(self.storage, self.name, shards, now=now, notice=notice))
        return self.settings

    async def reload(self) -> bool:
        """Read queue.json again and take it if it is newer than the settings this
        process holds (more shards after a reshard, another retention); True when
        it was. Raises what the store raised, QueueNotFound if the queue is gone."""
        self._settings_read_at = sources.monotonic()
        settings = await read_settings(self.storage, self.name)
        if settings is None:
            raise await _missing(self.storage, self.name)
        return self._adopt(settings)

    async def _know_shards_of(self, message_ids: list[str]) -> None:
        """Reread queue.json if an id names a shard this process does not know (one
        added by a reshard since it read it): not "not found" for a message that is."""
        shards = self.settings.shards
        if any(layout.parse_message_id(m).shard >= shards for m in message_ids):
            await self.reload()

    async def _reload_if_due(self) -> None:
        if sources.monotonic() - self._settings_read_at < self.SETTINGS_INTERVAL:
            return
        try:
            await self.reload()
        except QueueError as error:  # the write itself tells if the queue is gone
            log.warning("could not read the settings of queue %s again: %s", self.name, error)

    def _adopt(self, settings: QueueSettings) -> bool:
        """Hold ``settings`` from now on if they are newer; shards are only ever
        added (the committers, reader and producer share one list of them)."""
        if settings.revision <= self.settings.revision:
            return False
        grown = range(len(self.committers), settings.shards)
        self.settings = self.context.settings = self.producer.settings = settings
        self._reader.settings = settings
        self.committers.extend(ShardCommitter(self.context, k) for k in grown)
        self._preference.extend(sources.shuffled(grown))
        self._share_rates()
        return True

    def sweeper(self, owner: str | None = None) -> Sweeper:
        """A sweeper of this queue for ``owner`` (this process by default); each
        :meth:`Sweeper.run` is one collection pass (see :mod:`s3queue.core.sweep`)."""
        margin = self.context.rules.skew_margin
        return Sweeper(self.storage, self.name, self.clock, owner or self.owner, skew_margin=margin)

    async def collect(self, *, budget: int | None = None) -> SweepReport:
        """One collection pass now, by hand (taking the sweeper lease over from a
        worker if need be): delete what retention says is over and report it."""
        sweeper = self.sweeper()
        try:
            return await sweeper.run(lease_for=COLLECT_LEASE, budget=Budget(budget), steal=True)
        finally:
            # Given back at once: the workers' sweeper goes on at its next interval.
            await sweeper.release()

    async def purge(self) -> None:
        """Drop every pending, delayed and in-flight message, every dead letter,
        stored result, dedup key, chain link, quarantine record and large payload,
        deleting their objects (segments too, in DeleteObjects batches on S3).

        Each shard drops exactly the segments its listing found, once its cursor
        has stepped past them: a segment written after that listing (messages
        enqueued during the purge) is neither dropped nor deleted. Producers in
        other processes that wrote to the queue before the purge may remember a
        segment number it freed: see docs/ARCHITECTURE.md ("Purge and delete")."""
        doomed: list[str] = []
        # A message enqueued after a shard's listing stays: a payload blob it may
        # reference is at most BLOB_GRACE / 2 older than its segment, so only blobs
        # older than that (with room for the clocks) go now; the sweeper takes the
        # rest once no segment left can reference them.
        blobs_before = self.clock() - layout.BLOB_GRACE
        await self.reload()  # every shard, those added by a reshard too
        for shard in range(self.settings.shards):
            doomed.extend(await self._purge_shard(shard))
        self.producer.forget_sequences()
        for prefix in (
            layout.dead_prefix(self.name),
            layout.redriven_prefix(self.name),
            layout.results_prefix(self.name),
            layout.dedup_prefix(self.name),
            layout.links_prefix(self.name),
            layout.quarantine_prefix(self.name),
        ):
            doomed.extend(entry.key for entry in await self.storage.list(prefix))
        for entry in await self.storage.list(layout.blobs_prefix(self.name)):
            if entry.modified is not None and entry.modified < blobs_before:
                doomed.append(entry.key)
        await self.storage.delete_many(doomed)

    async def _purge_shard(self, shard: int) -> list[str]:
        """Commit a purge of the segments ``shard`` holds now; their keys, to delete
        (the cursor no longer needs any of them once the purge is committed)."""
        listed = await all_segments(self.storage, self.name, shard)
        await self.committers[shard].submit(purge_of(ref for ref, _ in listed))
        for ref, _ in listed:
            self.segments.forget(shard, ref)
        # A segment younger than SEGMENT_MIN_AGE may be the next number a producer
        # in another process remembers: deleted, its create-if-absent would succeed
        # behind the cursor. The sweeper deletes those once they are old enough.
        young = self.clock() - layout.SEGMENT_MIN_AGE
        return [ref.key(self.name, shard) for ref, at in listed if at is None or at <= young]

    async def delete(self) -> None:
        """Remove the queue: every object under its prefix, queue.json first.

        With queue.json gone, every process still using the queue learns of it
        where it would otherwise recreate part of it: a worker whose cursor
        vanished or that would create one, a producer at its next check (within
        EXISTS_CHECK_INTERVAL seconds) or when a cursor is missing; each gets
        :class:`~s3queue.errors.QueueNotFound` ("queue X was deleted"). Deleting
        queue.json last would instead let them recreate cursors and segments under
        a queue that is half gone. Opening the queue again with ``create=True``
        (after this returns) creates a fresh, empty queue. This object is unusable
        afterwards: close it."""
        # This process's own writes in progress land before, not after, the delete.
        await self.settle()
        await self.producer.close()
        await self.storage.delete(layout.settings_key(self.name))
        entries = await self.storage.list(layout.queue_prefix(self.name))
        await self.storage.delete_many([entry.key for entry in entries])
        self.segments.clear()


__all__ = ["Queue"]
