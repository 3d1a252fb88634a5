"""Object storage behind one narrow async protocol, chosen by URL.

``open_storage(url)`` is the only way the rest of s3queue obtains a store:
``s3://bucket/prefix?endpoint=...&region=...``, ``az://container/prefix?account=...``
and ``gs://bucket/prefix`` (obstore), ``file:///path`` (the embedded default) and
``memory://name`` (tests). Every store it returns retries
transient failures and resolves ambiguous conditional writes (see ``retry``). A URL
is printed only through ``redact_url`` (see ``redact``): it may hold a secret.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from s3queue.errors import ConfigurationError
from s3queue.storage.base import (
    LIST_PAGE_SIZE,
    ObjectEntry,
    PutMode,
    RequestCounts,
    Storage,
    StoredObject,
    UpdateVersion,
)
from s3queue.storage.memory import MemoryStorage
from s3queue.storage.redact import redact, redact_url, url_secrets
from s3queue.storage.retry import RetryingStorage, RetryPolicy

SCHEMES = (
    "use s3://bucket/prefix, az://container/prefix, gs://bucket/prefix, "
    "file:///absolute/path or memory://name"
)
#: Anchored: an endpoint in the query (``?endpoint=http://...``) is not a scheme.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")


def open_raw_storage(url: str) -> Storage:
    """The backend for ``url`` without the retry layer (tests and fault injection)."""
    shown = redact_url(url) if isinstance(url, str) else url
    if not isinstance(url, str) or not _SCHEME.match(url):
        raise ConfigurationError(
            f"invalid storage URL {shown!r}: it has no scheme",
            suggestion=SCHEMES,
        )
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        # urllib's message (and so its traceback) may quote the secret: leave it out.
        raise ConfigurationError(
            f"invalid storage URL {shown!r}: its '[' or ']' do not enclose an IP address",
            suggestion="percent-encode '[' and ']' in the key and secret (%5B, %5D)",
        ) from None
    if scheme == "memory":
        return MemoryStorage.named(url.split("://", 1)[1].strip("/"))
    if scheme == "file":
        from s3queue.storage.local import LocalStorage

        return LocalStorage.from_url(url)
    if scheme == "s3":
        from s3queue.storage.s3 import S3Storage

        return S3Storage.from_url(url)
    if scheme in ("az", "azure"):
        from s3queue.storage.azure import AzureStorage

        return AzureStorage.from_url(url)
    if scheme == "gs":
        from s3queue.storage.gcs import GCSStorage

        return GCSStorage.from_url(url)
    raise ConfigurationError(
        f"unknown storage scheme {scheme!r} in {shown!r}",
        suggestion=SCHEMES,
    )


def open_storage(url: str, *, retry: RetryPolicy | None = None) -> Storage:
    """The store for ``url``, with retries for throttling and transient failures."""
    return RetryingStorage(open_raw_storage(url), retry)


__all__ = [
    "LIST_PAGE_SIZE",
    "ObjectEntry",
    "PutMode",
    "RequestCounts",
    "RetryPolicy",
    "RetryingStorage",
    "Storage",
    "StoredObject",
    "UpdateVersion",
    "open_raw_storage",
    "open_storage",
    "redact",
    "redact_url",
    "url_secrets",
]
