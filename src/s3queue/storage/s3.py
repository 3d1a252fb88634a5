"""S3 and S3-compatible stores (AWS S3, MinIO, R2, Ceph, moto) through obstore.

Invariant: one call is one HTTP attempt. obstore's own retries are switched off so
that the retry layer above (``storage.retry``) sees every failure and can apply the
ambiguous-write rule; every obstore exception is translated into an s3queue error
in :func:`translate`, the only place that knows obstore's error types.

Second invariant: no obstore thread calls into Python once the interpreter has begun
to finalize. Every request a store starts is tracked until its result has been
delivered, even when its caller was cancelled, and ``close()`` waits for them; an exit
hook waits for obstore's threads to return from delivering results (see
:func:`_wait_for_deliveries` for the upstream bug this works around).
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
from collections.abc import Awaitable, Sequence
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

import obstore
import obstore.exceptions as oe
from obstore.store import S3Store

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
    DELETE_BATCH,
    LIST_PAGE_SIZE,
    ObjectEntry,
    PutMode,
    RequestCounts,
    StoredObject,
    UpdateVersion,
    put_kind,
)
from s3queue.storage.keys import check_key
from s3queue.storage.redact import redact, redact_url, url_secrets

QUERY_OPTIONS = ("endpoint", "region", "virtual_hosted", "allow_http")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>([^<]+)</Code>")
_MESSAGE = re.compile(r"<Message>([^<]+)</Message>")
#: What obstore raises: its own errors, and OSError subclasses (FileNotFoundError...).
_NATIVE = (oe.BaseError, OSError)
_CREDENTIALS = "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the key in the URL)"
#: obstore's own limits: every request ends, one way or another, within their sum, so
#: that is how long ``close()`` may have to wait for one started just before it.
_CONNECT_TIMEOUT = 5.0
_REQUEST_TIMEOUT = 30.0
_CLOSE_TIMEOUT = _CONNECT_TIMEOUT + _REQUEST_TIMEOUT + 1.0
#: A delivering thread needs only the GIL to finish, so this is ample; it bounds the
#: exit of a process whose event loop died with requests still running.
_EXIT_TIMEOUT = 5.0
_log = logging.getLogger(__name__)
T = TypeVar("T")


def _flag(name: str, value: str, shown: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise ConfigurationError(
        f"invalid value {value!r} for {name} in {shown!r}",
        suggestion=f"use {name}=true or {name}=false",
    )


def translate(error: Exception, *, endpoint: str, key: str = "") -> StorageError:
    """The one place where obstore's errors become s3queue's."""
    text = str(error)
    status_match = _STATUS.search(text)
    status = int(status_match[1]) if status_match else None
    code_match, message_match = _CODE.search(text), _MESSAGE.search(text)
    code = code_match[1] if code_match else ""
    detail = (
        f"{code}: {message_match[1]}"
        if code and message_match
        else (code or text.splitlines()[0][:300])
    )
    where = f"{endpoint}" + (f" ({key})" if key else "")
    if isinstance(error, oe.AlreadyExistsError | oe.PreconditionError) or status in (409, 412):
        return PreconditionFailed(
            f"conditional write to {key} lost: {detail}", status_code=status or 412
        )
    if code == "NoSuchBucket":
        return NotFound(
            f"the bucket does not exist at {where}: {detail}",
            status_code=404,
            suggestion="create the bucket, or fix the bucket name in the URL",
        )
    if isinstance(error, oe.PermissionDeniedError | oe.UnauthenticatedError) or status in (
        401,
        403,
    ):
        return StorageAuthError(
            f"access denied by {where}: {detail}", status_code=status, suggestion=_CREDENTIALS
        )
    if status == 503 or code == "SlowDown":
        return Throttled(f"{where} asked to slow down: {detail}", status_code=503)
    if status is not None and status >= 500:
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
    the polling.
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


def _check_authority(parts: SplitResult, shown: str) -> None:
    """Refuse credentials holding an unencoded '/', '?', '#' or '@': the parser
    would end them early and take the rest of the secret for the bucket or prefix,
    which are sent to S3 and printed as the store's URL."""
    host = parts.netloc.rpartition("@")[2]
    if ":" in host or (parts.password is not None and "@" in parts.path):
        raise ConfigurationError(
            f"invalid storage URL {shown!r}: cannot tell the credentials from the bucket",
            suggestion="percent-encode '/', '?', '#' and '@' in the key and secret "
            "(%2F, %3F, %23, %40); a bucket takes no port",
        )


def _check_endpoint(endpoint: str, shown: str) -> None:
    try:
        scheme, netloc = urlsplit(endpoint)[:2]
    except ValueError:  # an unbalanced '[' or ']'
        scheme = netloc = ""
    # Credentials in the endpoint would be printed in every storage error.
    if scheme not in ("http", "https") or not netloc or "@" in endpoint:
        raise ConfigurationError(
            f"invalid endpoint {redact_url(endpoint)!r} in {shown!r}",
            suggestion="the endpoint is a URL such as http://127.0.0.1:9000, without "
            "credentials (they go before the bucket name, or in AWS_* variables)",
        )


class S3Storage:
    """``s3://bucket/prefix?endpoint=...&region=...``; keys are relative to the prefix."""

    def __init__(self, store: S3Store, url: str, endpoint: str) -> None:
        self._store = store
        self._url = url
        self._endpoint = endpoint
        self._counts = RequestCounts()
        self._in_flight = InFlight()
        _wait_for_deliveries_at_exit()

    @classmethod
    def from_url(cls, url: str) -> S3Storage:
        shown = redact_url(url)
        parts = urlsplit(url)
        _check_authority(parts, shown)
        bucket = _bucket_of(parts, shown)
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        config, allow_http = _config(parts, options, shown)
        endpoint = options.get("endpoint", "")
        prefix = parts.path.strip("/")
        try:
            store = S3Store(
                bucket,
                prefix=prefix or None,
                config=config,  # type: ignore[arg-type]
                client_options={
                    "allow_http": allow_http,
                    "connect_timeout": timedelta(seconds=_CONNECT_TIMEOUT),
                    "timeout": timedelta(seconds=_REQUEST_TIMEOUT),
                },
                retry_config={
                    "max_retries": 0,
                    "retry_timeout": timedelta(seconds=1),
                    "backoff": {
                        "init_backoff": timedelta(milliseconds=10),
                        "max_backoff": timedelta(milliseconds=10),
                        "base": 2,
                    },
                },
            )
        except Exception as error:
            # obstore's message may quote the configuration, and a chained cause is
            # printed whole in tracebacks: keep only its scrubbed first line.
            detail = redact(str(error).splitlines()[0], url_secrets(url))
            raise ConfigurationError(
                f"cannot configure S3 for {shown!r}: {detail}",
                suggestion="check the URL options and the AWS_* environment variables",
            ) from None
        clean = f"s3://{bucket}/{prefix}" + (f"?{parts.query}" if parts.query else "")
        return cls(store, clean, endpoint or f"s3://{bucket}")

    def __repr__(self) -> str:
        return f"S3Storage({redact_url(self._url)!r})"

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

    async def get(self, key: str) -> StoredObject | None:
        check_key(key)
        self._counts.add("get")
        try:
            result = await self._in_flight.run(obstore.get_async(self._store, key))
            data = await self._in_flight.run(result.bytes_async())
        except FileNotFoundError as error:
            if "NoSuchBucket" in str(error):
                raise translate(error, endpoint=self._endpoint, key=key) from error
            return None
        except _NATIVE as error:
            raise translate(error, endpoint=self._endpoint, key=key) from error
        etag = result.meta.get("e_tag") or ""
        modified = result.meta.get("last_modified")
        stamp = modified.timestamp() if modified is not None else None
        # Last-Modified is an HTTP date: whole seconds.
        return StoredObject(bytes(data), etag, stamp, 1.0)

    async def put(self, key: str, data: bytes, mode: PutMode = "overwrite") -> str:
        check_key(key)
        self._counts.add(put_kind(mode))
        native: Any = {"e_tag": mode.etag} if isinstance(mode, UpdateVersion) else mode
        try:
            result = await self._in_flight.run(
                obstore.put_async(self._store, key, data, mode=native)
            )
        except _NATIVE as error:
            translated = translate(error, endpoint=self._endpoint, key=key)
            if isinstance(translated, PreconditionFailed):
                self._counts.add("precondition_failed")
            raise translated from error
        return str(result["e_tag"] or "")

    async def delete(self, key: str) -> None:
        check_key(key)
        self._counts.add("delete")
        try:
            await self._in_flight.run(obstore.delete_async(self._store, key))
        except FileNotFoundError:
            return
        except _NATIVE as error:
            raise translate(error, endpoint=self._endpoint, key=key) from error

    async def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            check_key(key)
        for start in range(0, len(keys), DELETE_BATCH):
            batch = list(keys[start : start + DELETE_BATCH])
            # obstore sends a list of paths as one DeleteObjects request per 1,000.
            self._counts.add("delete")
            try:
                await self._in_flight.run(obstore.delete_async(self._store, batch))
            except FileNotFoundError:
                continue
            except _NATIVE as error:
                raise translate(error, endpoint=self._endpoint, key=batch[0]) from error

    async def list(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[ObjectEntry]:
        # obstore lists by path segments; S3 prefixes are plain string prefixes, so
        # list the enclosing "directory" and filter.
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        out: list[ObjectEntry] = []
        pages = 0
        try:
            stream = obstore.list(
                self._store, directory or None, offset=start_after, chunk_size=LIST_PAGE_SIZE
            )
            # One tracked request per page. obstore fetches a page only when asked for
            # the next chunk, so stopping at the limit leaves nothing running.
            while limit is None or len(out) < limit:
                try:
                    batch = await self._in_flight.run(anext(stream))
                except StopAsyncIteration:
                    break
                pages += 1
                for meta in batch:
                    key = str(meta["path"])
                    if key.startswith(prefix) and (start_after is None or key > start_after):
                        modified = meta.get("last_modified")
                        stamp = modified.timestamp() if modified is not None else None
                        out.append(ObjectEntry(key, int(meta["size"]), stamp))
        except _NATIVE as error:
            raise translate(error, endpoint=self._endpoint, key=prefix) from error
        finally:
            self._counts.add("list", max(1, pages))
        out = out[:limit]
        out.sort(key=lambda entry: entry.key)
        return out

    async def close(self) -> None:
        """Wait until every request this store started has ended (see :class:`InFlight`)."""
        running = await self._in_flight.drain(_CLOSE_TIMEOUT)
        if running:
            _log.warning(
                "closing %s with %d request(s) still running after %.0f s; the process "
                "may abort at exit (Fatal Python error: Aborted)",
                self._url,
                running,
                _CLOSE_TIMEOUT,
            )


def _bucket_of(parts: SplitResult, shown: str) -> str:
    bucket = parts.hostname or ""
    if not bucket:
        raise ConfigurationError(
            f"invalid storage URL {shown!r}: no bucket name",
            suggestion="use s3://bucket/prefix?region=...",
        )
    if not _BUCKET.match(bucket):
        raise ConfigurationError(
            f"invalid bucket name {bucket!r} in {shown!r}",
            suggestion="bucket names are 3 to 63 lowercase letters, digits, '.' and '-'",
        )
    return bucket


def _config(parts: SplitResult, options: dict[str, str], shown: str) -> tuple[dict[str, Any], bool]:
    """obstore's S3 configuration from the URL's options and credentials, and
    whether plain HTTP is allowed."""
    unknown = sorted(set(options) - set(QUERY_OPTIONS))
    if unknown:
        raise ConfigurationError(
            f"unknown option {unknown[0]!r} in {shown!r}",
            suggestion=f"valid options are: {', '.join(QUERY_OPTIONS)}",
        )
    config: dict[str, Any] = {}
    endpoint = options.get("endpoint", "")
    if endpoint:
        _check_endpoint(endpoint, shown)
        config["endpoint"] = endpoint
        # Local servers and most S3-compatible stores want path-style requests.
        config["virtual_hosted_style_request"] = False
    if "virtual_hosted" in options:
        config["virtual_hosted_style_request"] = _flag(
            "virtual_hosted", options["virtual_hosted"], shown
        )
    if "region" in options:
        config["region"] = options["region"]
    if parts.username:
        config["access_key_id"] = unquote(parts.username)
        config["secret_access_key"] = unquote(parts.password or "")
    allow_http = endpoint.startswith("http://")
    if "allow_http" in options:
        allow_http = _flag("allow_http", options["allow_http"], shown)
    return config, allow_http
