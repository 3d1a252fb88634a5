"""The stores obstore speaks (S3 and S3-compatible servers, Azure Blob, GCS) behind
the one storage protocol. ``s3``, ``azure`` and ``gcs`` parse their URLs and build
obstore's store; everything they share lives here.

Invariant: one call is one HTTP attempt. obstore's own retries are switched off so
that the retry layer above (``storage.retry``) sees every failure and can apply the
ambiguous-write rule; every obstore exception is translated into an s3queue error
in :func:`translate`, the only place that knows obstore's error types.

Second invariant: no obstore thread calls into Python once the interpreter has begun
to finalize. Every request a store starts is tracked until its result has been
delivered, even when its caller was cancelled, and ``close()`` waits for them; an exit
hook waits for obstore's threads to return from delivering results (see
:func:`_wait_for_deliveries` for the upstream bug this works around).

Where the stores differ, a :class:`Dialect` says how: how many keys one bulk delete
takes, how many keys one LIST page holds, which error codes mean the bucket or
container is missing, and which of obstore's tags identifies a version.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import re
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar
from urllib.parse import SplitResult, parse_qsl, urlsplit

import obstore
import obstore.exceptions as oe

from s3queue.errors import (
    ConfigurationError,
    NotFound,
    PreconditionFailed,
    StorageAuthError,
    StorageError,
    StorageUnavailable,
    Throttled,
)
from s3queue.storage.base import (
    ObjectEntry,
    PutMode,
    RequestCounts,
    StoredObject,
    UpdateVersion,
    put_kind,
)
from s3queue.storage.keys import check_key
from s3queue.storage.redact import redact, redact_url, url_secrets

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

#: The HTTP status of an answer, or of one key of an Azure blob batch, whose failures
#: obstore words "Bulk delete request failed for key K: REASON (code: NNN)".
_STATUS = re.compile(r"status code: (\d{3})|\(code: (\d{3})\)")
#: The codes of a 409 or 412 that is a lost condition: the key exists (Azure's
#: If-None-Match), or a precondition failed. Other 409s refuse the write for another
#: reason (a container being deleted, an immutability policy), and a 412 about a lease
#: on the blob is not the If-Match either; "" where the store sent no code.
_LOST = ("", "BlobAlreadyExists", "PreconditionFailed", "ConditionNotMet")
#: 409s that ask for a retry: S3's conditional write meeting another in progress.
_CONFLICT_RETRY = ("ConditionalRequestConflict", "OperationAborted")
#: Codes that refuse a request before it is applied because of the request rate.
#: A bare 503 (from a proxy, say) is not one of them: it may follow a write that
#: landed, and the retry layer must then treat the outcome as unknown.
_THROTTLE_CODES = ("SlowDown", "ServerBusy", "TooManyRequests")
_CODE = re.compile(r"<Code>([^<]+)</Code>")
_MESSAGE = re.compile(r"<Message>([^<\n]+)")
_JSON_MESSAGE = re.compile(r'"message":\s*"([^"]+)"')
#: What obstore raises: its own errors, and OSError subclasses (FileNotFoundError...).
NATIVE = (oe.BaseError, OSError)
#: obstore's own limits: every request ends, one way or another, within their sum, so
#: that is how long ``close()`` may have to wait for one started just before it.
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 30.0
_CLOSE_TIMEOUT = CONNECT_TIMEOUT + REQUEST_TIMEOUT + 1.0
#: A delivering thread needs only the GIL to finish, so this is ample; it bounds the
#: exit of a process whose event loop died with requests still running.
_EXIT_TIMEOUT = 5.0
_log = logging.getLogger(__name__)
T = TypeVar("T")

#: obstore's own retries are off: the retry layer above sees every failure.
NO_RETRIES: RetryConfig = {
    "max_retries": 0,
    "retry_timeout": timedelta(seconds=1),
    "backoff": {
        "init_backoff": timedelta(milliseconds=10),
        "max_backoff": timedelta(milliseconds=10),
        "base": 2,
    },
}


def client_options(*, allow_http: bool) -> ClientConfig:
    """The HTTP options every store gets: obstore's timeouts, and whether plain
    HTTP is allowed (local servers and emulators)."""
    return {
        "allow_http": allow_http,
        "connect_timeout": timedelta(seconds=CONNECT_TIMEOUT),
        "timeout": timedelta(seconds=REQUEST_TIMEOUT),
    }


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one kind of store differs behind obstore."""

    #: "bucket" or "container".
    container: str
    #: Keys one bulk-delete request takes (S3's DeleteObjects 1,000, Azure's blob
    #: batch 256); 1 where the store has no bulk delete (GCS through obstore).
    delete_batch: int
    #: Keys one LIST response holds (S3 and GCS 1,000, Azure 5,000): the unit the
    #: store bills, so the unit requests are counted in.
    list_page: int
    #: Error codes that mean the bucket or container itself is missing.
    missing: tuple[str, ...]
    #: What to check when the store denies access.
    credentials: str
    #: GCS conditions on the object's generation (obstore's ``version``), not its ETag.
    generation: bool = False
    #: The reasons that say the same where no code is given (Azure's blob batch, by
    #: which obstore deletes, answers each key with a status and a reason only).
    missing_reasons: tuple[str, ...] = ()

    def is_missing(self, text: str) -> bool:
        """Whether the error ``text`` says the bucket or container itself is missing."""
        return _detail(text)[0] in self.missing or any(
            reason in text for reason in self.missing_reasons
        )


def flag(name: str, value: str, shown: str) -> bool:
    """A boolean URL option: true/false, yes/no or 1/0."""
    lowered = value.lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise ConfigurationError(
        f"invalid value {value!r} for {name} in {shown!r}",
        suggestion=f"use {name}=true or {name}=false",
    )


def query_options(
    parts: SplitResult, allowed: tuple[str, ...], shown: str, where_else: str = ""
) -> dict[str, str]:
    """The URL's query as options by name, refusing one this store does not take (a
    typo must not be ignored) and one given twice (one of the two would be);
    ``where_else`` says where what is refused belongs."""
    options: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in options:
            raise ConfigurationError(
                f"option {redact_url('?' + name)[1:]!r} is given twice in {shown!r}",
                suggestion="give each option once",
            )
        options[name] = value
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigurationError(
            f"unknown option {unknown[0]!r} in {shown!r}",
            suggestion=f"valid options are: {', '.join(allowed)}{where_else}",
        )
    return options


def allows_http(endpoint: str, options: dict[str, str], shown: str) -> bool:
    """Plain HTTP only to an http:// endpoint (a local server), unless the URL says."""
    if "allow_http" in options:
        return flag("allow_http", options["allow_http"], shown)
    return endpoint.startswith("http://")


def clean_url(scheme: str, name: str, prefix: str, parts: SplitResult) -> str:
    """The URL a store was opened from, as it shows it: without credentials."""
    return f"{scheme}://{name}/{prefix}" + (f"?{parts.query}" if parts.query else "")


def host_of(parts: SplitResult) -> str:
    """The bucket or container as written, with any port, which no name may hold:
    ``SplitResult.hostname`` lowercases it, which would turn a mistyped name into
    another one, and ``SplitResult.port`` raises ValueError on a port that is not a
    number from 0 to 65535."""
    return parts.netloc.rpartition("@")[2]


def check_endpoint(endpoint: str, shown: str) -> None:
    """Refuse an endpoint that is not an http(s) URL, or that holds credentials (they
    would be printed in every storage error): a userinfo, or a query (a SAS)."""
    try:
        scheme, netloc, _, query, fragment = urlsplit(endpoint)
    except ValueError:  # an unbalanced '[' or ']'
        scheme = netloc = query = fragment = ""
    if scheme not in ("http", "https") or not netloc or "@" in endpoint or query or fragment:
        raise ConfigurationError(
            f"invalid endpoint {redact_url(endpoint)!r} in {shown!r}",
            suggestion="the endpoint is a URL such as http://127.0.0.1:9000, without "
            "credentials (they go in the environment)",
        )


def configure(kind: str, url: str, suggestion: str, make: Callable[[], T]) -> T:
    """``make()``'s store, or a ConfigurationError that quotes nothing secret.

    obstore's message may quote the configuration, and a chained cause is printed
    whole in tracebacks: keep only its scrubbed first line.
    """
    try:
        return make()
    except Exception as error:
        detail = redact(str(error).splitlines()[0], url_secrets(url))
        raise ConfigurationError(
            f"cannot configure {kind} for {redact_url(url)!r}: {detail}", suggestion=suggestion
        ) from None


def _detail(text: str) -> tuple[str, str]:
    """The store's error code (S3 and Azure answer in XML) and a one-line detail."""
    code_match = _CODE.search(text)
    message_match = _MESSAGE.search(text) or _JSON_MESSAGE.search(text)
    code = code_match[1] if code_match else ""
    if code and message_match:
        return code, f"{code}: {message_match[1].strip()}"
    if message_match:
        return code, message_match[1].strip()
    return code, code or text.splitlines()[0][:300]


def _status(text: str) -> int | None:
    found = _STATUS.search(text)
    return int(found[1] or found[2]) if found else None


def _lost_condition(error: Exception, status: int | None, code: str) -> bool:
    """Whether the store refused a conditional write because its condition failed.

    obstore says so (AlreadyExists, Precondition) for every 409 or 412 answering a
    conditional put, by status alone; the code tells which are not. Only a put
    carries a condition: a 412 of a blob batch (a delete) is about a lease.
    """
    if not isinstance(error, oe.AlreadyExistsError | oe.PreconditionError):
        return False
    if status == 409:
        return code in _LOST
    return not code.startswith("Lease")


def translate(error: Exception, *, dialect: Dialect, endpoint: str, key: str = "") -> StorageError:
    """The one place where obstore's errors become s3queue's."""
    text = str(error)
    status = _status(text)
    code, detail = _detail(text)
    where = f"{endpoint}" + (f" ({key})" if key else "")
    if _lost_condition(error, status, code):
        return PreconditionFailed(
            f"conditional write to {key} lost: {detail}", status_code=status or 412
        )
    if status == 409 and code in _CONFLICT_RETRY:
        return StorageUnavailable(f"{where} met a conflicting request: {detail}", status_code=409)
    if dialect.is_missing(text):
        return NotFound(
            f"the {dialect.container} does not exist at {where}: {detail}",
            status_code=404,
            suggestion=f"create the {dialect.container}, or fix its name in the URL",
        )
    if isinstance(error, oe.PermissionDeniedError | oe.UnauthenticatedError) or status in (
        401,
        403,
    ):
        return StorageAuthError(
            f"access denied by {where}: {detail}",
            status_code=status,
            suggestion=dialect.credentials,
        )
    if status == 429 or code in _THROTTLE_CODES:
        return Throttled(f"{where} asked to slow down: {detail}", status_code=status)
    if status is not None and status >= 500 and status != 501:
        return StorageUnavailable(f"{where} failed: {detail}", status_code=status)
    if status is None:
        return StorageUnavailable(
            f"cannot reach {where}: {text.splitlines()[0][:300]}",
            suggestion="check the endpoint and that the server is running",
        )
    return StorageError(
        f"{where} refused the request: {detail}", status_code=status, retriable=False
    )


class InFlight:
    """The obstore requests a store has started whose result has not been delivered yet.

    A request is shielded from its caller's cancellation: cancelling obstore's future
    does not stop its thread from calling back into Python later (to check the
    cancellation), and nothing tells us when it has. Let run, every request ends with
    a delivery to its event loop, which we can see and wait for.
    """

    def __init__(self) -> None:
        self._futures: set[asyncio.Future[Any]] = set()

    def __len__(self) -> int:
        return len(self._futures)

    async def run(self, call: Awaitable[T]) -> T:
        future: asyncio.Future[T] = asyncio.ensure_future(call)
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        return await asyncio.shield(future)

    async def drain(self, wait_at_most: float) -> int:
        """Wait until every request started on this event loop has delivered its
        result, or ``wait_at_most`` seconds; return how many are still running."""
        loop = asyncio.get_running_loop()
        mine = {future for future in self._futures if future.get_loop() is loop}
        if mine:
            await asyncio.wait(mine, timeout=wait_at_most)
        return len(self._futures)


def _delivering_threads() -> int:
    """Threads Python did not start (obstore's) that are inside an event loop's
    ``call_soon_threadsafe``, delivering a result."""
    python_threads = {
        thread.ident
        for thread in threading.enumerate()
        if not isinstance(thread, threading._DummyThread)
    }
    count = 0
    for ident, frame in sys._current_frames().items():
        if ident in python_threads:
            continue
        while frame.f_back is not None:
            frame = frame.f_back
        if frame.f_code.co_name == "call_soon_threadsafe":
            count += 1
    return count


def _wait_for_deliveries(timeout: float = _EXIT_TIMEOUT) -> None:
    """At exit, before the interpreter finalizes: let obstore's threads finish
    delivering results.

    Upstream bug (obstore 0.12.1, which bundles pyo3-async-runtimes 0.30 and pyo3
    0.30; CPython before 3.14). When a request completes, pyo3-async-runtimes'
    ``future_into_py_with_locals`` attaches a tokio blocking-pool thread to Python and
    calls ``loop.call_soon_threadsafe(...)``. asyncio's selector loop schedules the
    callback, then wakes itself with ``socket.send`` on its self-pipe, which releases
    the GIL. The loop may run the callback, and the program finish and start
    finalizing, before that thread takes the GIL back; CPython then ends the thread
    with ``pthread_exit`` from ``take_gil``, and the forced unwind through the Rust
    frames aborts the process ("Fatal Python error: Aborted", status 134), after all
    its work is done. pyo3 guards only ``PyGILState_Ensure`` against this (it parks
    the thread), not a GIL release inside the Python code it calls. A gdb backtrace of
    the aborting thread: ``take_gil`` < ``PyEval_RestoreThread`` < ``sock_send`` <
    ``pyo3_async_runtimes::generic::set_result`` < tokio ``BlockingTask``.
    Reproduce: a script that only does ``asyncio.run`` of one ``await
    obstore.put_async(store, "k", b"v")`` against moto_server on loopback aborted 7
    times in 100 runs on 2 cores. CPython 3.14 parks such threads instead of exiting
    them (gh-87135); related: pyo3-async-runtimes#40 and #90.

    A thread in that window is visible in ``sys._current_frames()``; all it needs to
    leave is the GIL, which sleeping releases. There is no event to wait on, hence
    the polling. The wait reads the real clock, not :mod:`s3queue.sources`: it waits
    for real threads, which no simulated clock moves.
    """
    deadline = time.monotonic() + timeout
    while _delivering_threads():
        if time.monotonic() >= deadline:
            _log.warning(
                "an obstore thread is still delivering a result after %.0f s; the "
                "interpreter may abort at exit (Fatal Python error: Aborted)",
                timeout,
            )
            return
        time.sleep(0.001)


@functools.cache
def _wait_for_deliveries_at_exit() -> None:
    atexit.register(_wait_for_deliveries)


def _stamp(meta: Any) -> float | None:
    modified = meta.get("last_modified")
    return modified.timestamp() if modified is not None else None


class CloudStorage:
    """An obstore store behind the storage protocol; keys are relative to the
    store's prefix. Subclasses only parse their URL (``from_url``) and hand what
    they found to :meth:`_open`."""

    dialect: Dialect
    #: How messages name the kind of store, its URL scheme, and obstore's class.
    kind: ClassVar[str]
    scheme: ClassVar[str]
    store_type: ClassVar[Callable[..., Any]]

    @classmethod
    def _open(
        cls,
        url: str,
        name: str,
        config: dict[str, Any],
        allow_http: bool,
        suggestion: str,
        endpoint: str,
    ) -> Self:
        """The store for bucket or container ``name`` under the URL's path, with
        obstore configured as ``config`` says; ``endpoint`` names it in errors."""
        parts = urlsplit(url)
        prefix = parts.path.strip("/")
        store = configure(
            cls.kind,
            url,
            suggestion,
            lambda: cls.store_type(
                name,
                prefix=prefix or None,
                config=config,
                client_options=client_options(allow_http=allow_http),
                retry_config=NO_RETRIES,
            ),
        )
        shown = clean_url(cls.scheme, name, prefix, parts)
        return cls(store, shown, endpoint or f"{cls.scheme}://{name}")

    def __init__(self, store: Any, url: str, endpoint: str) -> None:
        self._store = store
        self._url = url
        self._endpoint = endpoint
        self._counts = RequestCounts()
        self._in_flight = InFlight()
        _wait_for_deliveries_at_exit()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact_url(self._url)!r})"

    @property
    def url(self) -> str:
        return self._url

    @property
    def counts(self) -> RequestCounts:
        return self._counts

    @property
    def in_flight(self) -> int:
        """Requests started and not yet delivered (cancelled callers' included)."""
        return len(self._in_flight)

    def _translate(self, error: Exception, key: str) -> StorageError:
        return translate(error, dialect=self.dialect, endpoint=self._endpoint, key=key)

    def _missing_container(self, error: Exception) -> bool:
        """A "not found" that is about the bucket or container, not the object."""
        return self.dialect.is_missing(str(error))

    def _tag(self, meta: Any) -> str:
        """The one version tag handed out for an object, whichever call returned it.

        Azure quotes the ETag in put, get and head but not in list: always quoted
        here. GCS conditions writes on the generation, so that is the tag there.
        """
        if self.dialect.generation:
            generation = meta.get("version")
            if not generation:
                # Without it no compare-and-swap can be made: say so, not "".
                raise StorageError(
                    f"{self._endpoint} answered without an object generation",
                    retriable=False,
                    suggestion="GCS support is experimental: use it through its own "
                    "endpoint, not an emulator or proxy that drops x-goog-generation",
                )
            return str(generation)
        etag = str(meta.get("e_tag") or "")
        return etag if etag.startswith(('"', 'W/"')) or not etag else f'"{etag}"'

    def _native_mode(self, mode: PutMode) -> Any:
        if not isinstance(mode, UpdateVersion):
            return mode
        if self.dialect.generation:
            return {"version": mode.etag}
        return {"e_tag": mode.etag}

    async def get(self, key: str) -> StoredObject | None:
        check_key(key)
        self._counts.add("get")
        try:
            result = await self._in_flight.run(obstore.get_async(self._store, key))
            data = await self._in_flight.run(result.bytes_async())
        except FileNotFoundError as error:
            if self._missing_container(error):
                raise self._translate(error, key) from error
            return None
        except NATIVE as error:
            raise self._translate(error, key) from error
        # Last-Modified is an HTTP date: whole seconds.
        return StoredObject(bytes(data), self._tag(result.meta), _stamp(result.meta), 1.0)

    async def put(self, key: str, data: bytes, mode: PutMode = "overwrite") -> str:
        check_key(key)
        self._counts.add(put_kind(mode))
        try:
            result = await self._in_flight.run(
                obstore.put_async(self._store, key, data, mode=self._native_mode(mode))
            )
        except NATIVE as error:
            translated = self._translate(error, key)
            if isinstance(translated, PreconditionFailed):
                self._counts.add("precondition_failed")
            raise translated from error
        return self._tag(result)

    async def delete(self, key: str) -> None:
        check_key(key)
        self._counts.add("delete")
        try:
            await self._in_flight.run(obstore.delete_async(self._store, key))
        except FileNotFoundError as error:
            # Azure and GCS answer 404 for a missing key; S3 does not.
            if self._missing_container(error):
                raise self._translate(error, key) from error
        except NATIVE as error:
            raise self._translate(error, key) from error

    async def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            check_key(key)
        size = self.dialect.delete_batch
        for start in range(0, len(keys), size):
            batch = list(keys[start : start + size])
            if len(batch) == 1:
                await self.delete(batch[0])
                continue
            # obstore sends a list of paths as one bulk request per batch.
            self._counts.add("delete")
            try:
                await self._in_flight.run(obstore.delete_async(self._store, batch))
            except FileNotFoundError as error:
                if self._missing_container(error):
                    raise self._translate(error, batch[0]) from error
                # Azure fails a batch on a key that is already gone, and reports only
                # the first failure: delete the rest one by one, where a missing key
                # is not an error. Only a key deleted before (a rerun pass) costs this.
                for key in batch:
                    await self.delete(key)
            except NATIVE as error:
                raise self._translate(error, batch[0]) from error

    async def list_prefixes(self, prefix: str) -> list[str]:
        # obstore pages through the delimited listing itself: count its pages by
        # what came back.
        try:
            found = await self._in_flight.run(
                obstore.list_with_delimiter_async(self._store, prefix.rstrip("/") or None)
            )
        except NATIVE as error:
            self._counts.add("list")
            raise self._translate(error, prefix) from error
        listed = len(found["common_prefixes"]) + len(found["objects"])
        self._counts.add("list", max(1, -(-listed // self.dialect.list_page)))
        return sorted(f"{path}/" for path in found["common_prefixes"])

    async def list(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[ObjectEntry]:
        # obstore lists by path segments; the protocol's prefixes are plain string
        # prefixes, so list the enclosing "directory" and filter.
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        out: list[ObjectEntry] = []
        pages = 0
        try:
            stream = obstore.list(
                self._store,
                directory or None,
                offset=start_after,
                chunk_size=self.dialect.list_page,
            )
            # One tracked request per page. obstore fetches a page only when asked for
            # the next chunk, so stopping at the limit leaves nothing running.
            while limit is None or len(out) < limit:
                try:
                    batch = await self._in_flight.run(anext(stream))
                except StopAsyncIteration:
                    break
                pages += 1
                # Azure has no start-after: obstore filters the offset itself, or
                # not at all, so filter here too.
                out += [
                    ObjectEntry(str(meta["path"]), int(meta["size"]), _stamp(meta))
                    for meta in batch
                    if str(meta["path"]).startswith(prefix)
                    and (start_after is None or str(meta["path"]) > start_after)
                ]
        except NATIVE as error:
            raise self._translate(error, prefix) from error
        finally:
            self._counts.add("list", max(1, pages))
        out.sort(key=lambda entry: entry.key)
        return out[:limit]

    async def close(self) -> None:
        """Wait until every request this store started has ended (see :class:`InFlight`)."""
        running = await self._in_flight.drain(_CLOSE_TIMEOUT)
        if running:
            _log.warning(
                "closing %s with %d request(s) still running after %.0f s; the process "
                "may abort at exit (Fatal Python error: Aborted)",
                redact_url(self._url),
                running,
                _CLOSE_TIMEOUT,
            )
