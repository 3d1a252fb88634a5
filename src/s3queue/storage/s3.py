"""S3 and S3-compatible stores (AWS S3, MinIO, R2, Ceph, moto) through obstore.

Invariant: one call is one HTTP attempt. obstore's own retries are switched off so
that the retry layer above (``storage.retry``) sees every failure and can apply the
ambiguous-write rule; every obstore exception is translated into an s3queue error
in :func:`translate`, the only place that knows obstore's error types.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
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
    LIST_PAGE_SIZE,
    ObjectEntry,
    RequestCounts,
    StoredObject,
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

    @classmethod
    def from_url(cls, url: str) -> S3Storage:
        shown = redact_url(url)
        parts = urlsplit(url)
        _check_authority(parts, shown)
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
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
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
        prefix = parts.path.strip("/")
        try:
            store = S3Store(
                bucket,
                prefix=prefix or None,
                config=config,  # type: ignore[arg-type]
                client_options={
                    "allow_http": allow_http,
                    "connect_timeout": timedelta(seconds=5),
                    "timeout": timedelta(seconds=30),
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

    async def get(self, key: str) -> StoredObject | None:
        check_key(key)
        self._counts.add("get")
        try:
            result = await obstore.get_async(self._store, key)
            data = await result.bytes_async()
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

    async def put(
        self,
        key: str,
        data: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        check_key(key)
        self._counts.add(put_kind(if_match, if_none_match))
        mode: Any = "overwrite"
        if if_none_match:
            mode = "create"
        elif if_match is not None:
            mode = {"e_tag": if_match}
        try:
            result = await obstore.put_async(self._store, key, data, mode=mode)
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
            await obstore.delete_async(self._store, key)
        except FileNotFoundError:
            return
        except _NATIVE as error:
            raise translate(error, endpoint=self._endpoint, key=key) from error

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
            async for batch in stream:
                pages += 1
                for meta in batch:
                    key = str(meta["path"])
                    if not key.startswith(prefix):
                        continue
                    if start_after is not None and key <= start_after:
                        continue
                    out.append(ObjectEntry(key, int(meta["size"])))
                    if limit is not None and len(out) >= limit:
                        break
                if limit is not None and len(out) >= limit:
                    break
        except _NATIVE as error:
            raise translate(error, endpoint=self._endpoint, key=prefix) from error
        finally:
            self._counts.add("list", max(1, pages))
        out.sort(key=lambda entry: entry.key)
        return out

    async def close(self) -> None:
        return None
