"""Validation of object keys at the storage boundary.

Invariant: a key that passes :func:`check_key` maps to the same object on S3 and
to a path strictly inside the root of the local backend (no ``..``, no absolute
paths, no empty segments), so one key format serves every backend.
"""

from __future__ import annotations

import re

from s3queue.errors import ConfigurationError

_SEGMENT = re.compile(r"^[A-Za-z0-9._=\-]+$")
MAX_KEY_LENGTH = 1000


def check_key(key: str) -> str:
    """Return ``key`` if it is safe for every backend, else raise ConfigurationError."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ConfigurationError(
            f"invalid object key {key!r}: must be 1 to {MAX_KEY_LENGTH} characters",
            suggestion="this is a bug in s3queue; please report it",
        )
    for segment in key.split("/"):
        if not _SEGMENT.match(segment) or segment in {".", ".."} or segment.startswith(".tmp"):
            raise ConfigurationError(
                f"invalid object key {key!r}: segment {segment!r} is empty or unsafe",
                suggestion="keys use letters, digits, '.', '_', '-' and '=' between '/'",
            )
    return key
