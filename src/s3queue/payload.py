"""Payloads, results and progress values as JSON: encoded once, checked for size,
for NaN and Infinity, and for depth.

Invariant: a value that cannot be stored, or that a worker could fail to decode,
raises PayloadError before anything is written.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

import msgspec

from s3queue.errors import PayloadError

#: Payloads, results and progress values nest at most this many lists and dicts deep.
#: Real payloads rarely pass ten. The bound keeps every decoder inside its recursion
#: budget: msgspec, like ``json``, recurses once per level and gives up near Python's
#: limit of 1,000 levels *minus the stack of whoever decodes*, and a segment holds its
#: payloads a level deeper still, so one payload too deep would make a whole segment,
#: every message in it, unreadable for every worker. (serde_json stops at 128.)
MAX_DEPTH = 64

_json = msgspec.json.Encoder()
#: Values that hold nothing to check (a tuple: isinstance with one is the fastest form).
_LEAVES = (str, int, type(None))
#: For the depth check: braces count as brackets (only the nesting matters), every
#: other byte but a quote is dropped, and a string is a quoted run without quotes.
_BRACKETS_ONLY = bytes.maketrans(b"{}", b"[]")
_DROPPED = bytes(sorted(set(range(256)) - set(b'[]{}"')))
_STRING = re.compile(rb'"[^"]*"')


def encode_json(value: Any, *, limit: int, what: str) -> msgspec.Raw:
    try:
        data = _json.encode(value)
    except RecursionError:
        raise _too_deep(what) from None
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
    # Both checks below look at the bytes first, in C, because every enqueue pays for
    # them: a value cannot nest deeper than it has brackets, and msgspec writes NaN and
    # infinity as ``null`` (silently), so a value without a null holds neither. A short
    # payload without a null, the common case, costs one scan.
    if (
        len(data) > 2 * MAX_DEPTH
        and data.count(b"[") + data.count(b"{") > MAX_DEPTH
        and _nests_deeper(data)
    ):
        raise _too_deep(what)
    if b"null" in data and not _decodes_to(data, value):
        check_value(value, what)  # finds the NaN and its path, or passes a tuple or Struct
    return msgspec.Raw(data)


def check_value(value: Any, what: str) -> None:
    """Raise PayloadError if ``value`` holds NaN or infinity, or nests deeper than
    MAX_DEPTH. ``what`` names it in the error ("the payload", "the result")."""
    root = what.removeprefix("the ").split()[0]
    if isinstance(value, float) and not math.isfinite(value):
        raise _not_finite(what, value, root)
    # A loop, not recursion: the value may be as deep as Python's stack allows.
    stack: list[tuple[Any, int, tuple[Any, ...]]] = [(value, 1, ())]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict):
            items: Iterable[tuple[Any, Any]] = node.items()
        elif isinstance(node, list | tuple):
            items = enumerate(node)
        else:
            # A Struct, dataclass or set: walk the dicts and lists it encodes to (a
            # date or UUID becomes a string, and is done).
            plain = _builtins(node, what)
            if isinstance(plain, dict | list | tuple):
                stack.append((plain, depth, path))
            continue
        if depth > MAX_DEPTH:
            raise _too_deep(what)
        for key, item in items:
            if isinstance(item, float):
                if not math.isfinite(item):
                    raise _not_finite(what, item, root + _path((*path, key)))
            elif not isinstance(item, _LEAVES):
                stack.append((item, depth + 1, (*path, key)))


def _nests_deeper(data: bytes) -> bool:
    """Whether the JSON ``data`` nests deeper than MAX_DEPTH, by passes over bytes in C
    (a walk of the value costs several times more): drop the escapes that could hide
    a quote, keep only brackets and quotes, drop the strings, then peel one level of
    empty pairs per pass."""
    if b"\\" in data:  # only an escaped quote, or an escaped backslash before a quote, matter
        if b"\\\\" in data:
            data = data.replace(b"\\\\", b"")
        if b'\\"' in data:
            data = data.replace(b'\\"', b"")
    # Quotes alternate open and close, so removing two adjacent ones keeps them paired:
    # that drops every string without a bracket in it in one pass.
    structure = data.translate(_BRACKETS_ONLY, _DROPPED).replace(b'""', b"")
    if b'"' in structure:
        structure = _STRING.sub(b"", structure)
    for _ in range(MAX_DEPTH):
        if not structure:
            return False
        # Non-overlapping, left to right, never rescanned: one level per pass.
        structure = structure.replace(b"[]", b"")
    return bool(structure)


def _decodes_to(data: bytes, value: Any) -> bool:
    """Whether ``data`` decodes back to ``value``; a NaN or infinity that became null
    never does (nor do tuples, sets and Structs, which the walk then clears)."""
    try:
        return bool(msgspec.json.decode(data) == value)
    except Exception:  # an __eq__ that raises (or returns an array): let the walk decide
        return False


def _builtins(node: Any, what: str) -> Any:
    try:
        return msgspec.to_builtins(node)
    except RecursionError:
        raise _too_deep(what) from None


def decode_json(raw: msgspec.Raw | bytes | None) -> Any:
    if raw is None or len(raw) == 0:
        return None
    return msgspec.json.decode(bytes(raw))


def _path(keys: tuple[Any, ...]) -> str:
    return "".join(
        f"[{msgspec.json.encode(key).decode()}]" if isinstance(key, str) else f"[{key!r}]"
        for key in keys
    )


def _not_finite(what: str, number: float, where: str) -> PayloadError:
    return PayloadError(
        f"{what} holds {number!r} at {where}",
        suggestion="JSON has no NaN or Infinity: send None, or the number as a string",
        metadata={"path": where},
    )


def _too_deep(what: str) -> PayloadError:
    return PayloadError(
        f"{what} nests lists and dicts more than {MAX_DEPTH} levels deep",
        suggestion="flatten it, or store it as its own object and put its key in the payload",
        metadata={"limit": MAX_DEPTH},
    )
