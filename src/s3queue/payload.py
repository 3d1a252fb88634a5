"""Payloads, results and progress values as JSON: encoded once, checked for size.

Invariant: a value that cannot be stored raises PayloadError before anything is
written.
"""

from __future__ import annotations

from typing import Any

import msgspec

from s3queue.errors import PayloadError

_json = msgspec.json.Encoder()


def encode_json(value: Any, *, limit: int, what: str) -> msgspec.Raw:
    try:
        data = _json.encode(value)
    except (TypeError, msgspec.EncodeError, OverflowError) as error:
        raise PayloadError(
            f"{what} is not JSON-serialisable: {error}",
            suggestion="pass dicts, lists, strings, numbers, booleans and None "
            "(convert dates, sets and objects first)",
        ) from error
    if len(data) > limit:
        raise PayloadError(
            f"{what} is {len(data)} bytes encoded, over the limit of {limit} bytes",
            suggestion="store large data as its own object and put its key in the payload",
            metadata={"size": len(data), "limit": limit},
        )
    return msgspec.Raw(data)


def decode_json(raw: msgspec.Raw | bytes | None) -> Any:
    if raw is None or len(raw) == 0:
        return None
    return msgspec.json.decode(bytes(raw))
