"""S3 and S3-compatible stores (AWS S3, MinIO, R2, Ceph, SeaweedFS, moto):
``s3://[KEY:SECRET@]bucket/prefix?endpoint=...&region=...``.

Only the URL is S3's own; requests, error translation and the exit workaround are
shared with the other obstore stores (``storage.cloud``).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

from obstore.store import S3Store

from s3queue.errors import ConfigurationError
from s3queue.storage.cloud import (
    CloudStorage,
    Dialect,
    allows_http,
    check_endpoint,
    flag,
    host_of,
    query_options,
)
from s3queue.storage.redact import redact_url

QUERY_OPTIONS = ("endpoint", "region", "virtual_hosted", "allow_http")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
DIALECT = Dialect(
    container="bucket",
    delete_batch=1000,
    list_page=1000,
    missing=("NoSuchBucket",),
    credentials="check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the key in the URL)",
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


class S3Storage(CloudStorage):
    """``s3://bucket/prefix?endpoint=...&region=...``; keys are relative to the prefix."""

    dialect = DIALECT
    kind = "S3"
    scheme = "s3"
    store_type = S3Store

    @classmethod
    def from_url(cls, url: str) -> S3Storage:
        shown = redact_url(url)
        parts = urlsplit(url)
        _check_authority(parts, shown)
        bucket = _bucket_of(parts, shown)
        options = query_options(parts, QUERY_OPTIONS, shown)
        config, allow_http = _config(parts, options, shown)
        suggestion = "check the URL options and the AWS_* environment variables"
        endpoint = options.get("endpoint", "")
        return cls._open(url, bucket, config, allow_http, suggestion, endpoint)


def _bucket_of(parts: SplitResult, shown: str) -> str:
    bucket = host_of(parts)
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
    config: dict[str, Any] = {}
    endpoint = options.get("endpoint", "")
    if endpoint:
        check_endpoint(endpoint, shown)
        config["endpoint"] = endpoint
        # Local servers and most S3-compatible stores want path-style requests.
        config["virtual_hosted_style_request"] = False
    if "virtual_hosted" in options:
        config["virtual_hosted_style_request"] = flag(
            "virtual_hosted", options["virtual_hosted"], shown
        )
    if "region" in options:
        config["region"] = options["region"]
    if parts.username:
        config["access_key_id"] = unquote(parts.username)
        config["secret_access_key"] = unquote(parts.password or "")
    return config, allows_http(endpoint, options, shown)
