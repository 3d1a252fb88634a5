"""Google Cloud Storage, experimental: ``gs://bucket/prefix``.

Experimental because no emulator can prove it: fake-gcs-server, the only one, answers
obstore's XML-API writes with 400 and ignores ``ifGenerationMatch`` on its JSON API.
What protects a user is the conditional-write probe every queue runs when it is
opened (``queue.probe_conditional_writes``): a store that cannot do or ignores
create-if-absent and compare-and-swap is refused before anything is written.

GCS conditions a write on the object's generation, not its ETag, so the version tag
handed out here is the generation (``Dialect.generation``). Credentials come from
the variables obstore reads: ``GOOGLE_SERVICE_ACCOUNT`` (a key file's path),
``GOOGLE_SERVICE_ACCOUNT_KEY`` (its JSON), ``GOOGLE_APPLICATION_CREDENTIALS``, or
the metadata server on GCP. ``?endpoint=`` points it at another server.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import SplitResult, urlsplit

from obstore.store import GCSStore

from s3queue.errors import ConfigurationError
from s3queue.storage.cloud import (
    CloudStorage,
    Dialect,
    allows_http,
    check_endpoint,
    host_of,
    query_options,
)
from s3queue.storage.redact import redact_url

QUERY_OPTIONS = ("endpoint", "allow_http")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._\-]{1,220}[a-z0-9]$")
_CREDENTIALS = (
    "check GOOGLE_SERVICE_ACCOUNT, GOOGLE_SERVICE_ACCOUNT_KEY or "
    "GOOGLE_APPLICATION_CREDENTIALS, and the account's role on the bucket"
)
DIALECT = Dialect(
    container="bucket",
    # obstore has no bulk delete for GCS: one request per key.
    delete_batch=1,
    list_page=1000,
    missing=("NoSuchBucket",),
    credentials=_CREDENTIALS,
    generation=True,
)


class GCSStorage(CloudStorage):
    """``gs://bucket/prefix``; keys are relative to the prefix."""

    dialect = DIALECT
    kind = "GCS"
    scheme = "gs"
    store_type = GCSStore

    @classmethod
    def from_url(cls, url: str) -> GCSStorage:
        shown = redact_url(url)
        parts = urlsplit(url)
        bucket = _bucket_of(parts, shown)
        options = query_options(parts, QUERY_OPTIONS, shown)
        config = _config(options, shown)
        endpoint = options.get("endpoint", "")
        allow_http = allows_http(endpoint, options, shown)
        return cls._open(url, bucket, config, allow_http, _CREDENTIALS, endpoint)


def _bucket_of(parts: SplitResult, shown: str) -> str:
    if "@" in parts.netloc:
        raise ConfigurationError(
            f"invalid storage URL {shown!r}: a GCS URL takes no credentials",
            suggestion="set GOOGLE_SERVICE_ACCOUNT to the key file's path",
        )
    bucket = host_of(parts)
    if not bucket or not _BUCKET.match(bucket):
        raise ConfigurationError(
            f"invalid bucket name {bucket!r} in {shown!r}",
            suggestion="use gs://bucket/prefix; bucket names are 3 to 222 lowercase "
            "letters, digits, '.', '_' and '-'",
        )
    return bucket


def _config(options: dict[str, str], shown: str) -> dict[str, Any]:
    config: dict[str, Any] = {}
    endpoint = options.get("endpoint", "")
    if endpoint:
        check_endpoint(endpoint, shown)
        config["base_url"] = endpoint.rstrip("/")
    return config
