"""Payloads, results and progress values as JSON: encoded once, checked for size,
for NaN and Infinity, for depth, and for coming back as they went in.

Invariant: a value that cannot be stored, or that a worker could fail to decode,
raises PayloadError naming the path inside it before anything is written; so does a
payload that would decode to something else than was sent. Values are plain JSON:
dicts with string keys, lists, strings, integers, finite floats, booleans and None.
A datetime, bytes, a tuple, a set, a Decimal, a UUID, an Enum or an object would
come back as a string, a list or a dict: the handler would get something other than
was enqueued, so such a payload is refused, and the caller converts them
(``when.isoformat()``, ``list(ids)``) where it knows how to convert them back. Int
and str enums (IntEnum, StrEnum) and dict subclasses compare equal to the plain int,
str or dict that comes back, and are accepted as those.

A handler's result or progress value is stored as JSON makes it (``exact=False``):
refusing it would fail a job whose work is done. What JSON changed is logged once
per process and place, as a warning naming the path.
"""

from __future__ import annotations

import logging
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

log = logging.getLogger("s3queue.payload")

_json = msgspec.json.Encoder()
#: (path, type) of the results and progress values JSON changed that were logged.
_warned: set[tuple[object, object]] = set()
#: Values JSON holds exactly (bool is an int; an int or str subclass, such as an
#: IntEnum, compares equal to what comes back).
_PLAIN_LEAVES = (str, int, float, type(None))
_PLAIN = (
    "pass plain JSON: dicts with string keys, lists, strings, numbers, booleans and "
    "None; convert other values yourself (a datetime with .isoformat(), a set or "
    "tuple with list(), bytes with base64) so that what comes back is what was sent"
)
#: For the depth check: braces count as brackets (only the nesting matters), every
#: other byte but a quote is dropped, and a string is a quoted run without quotes.
_BRACKETS_ONLY = bytes.maketrans(b"{}", b"[]")
_DROPPED = bytes(sorted(set(range(256)) - set(b'[]{}"')))
_STRING = re.compile(rb'"[^"]*"')


def encode_json(value: Any, *, limit: int, what: str, exact: bool = True) -> msgspec.Raw:
    try:
        data = _json.encode(value)
    except RecursionError:
        raise _too_deep(what) from None
    except (TypeError, msgspec.EncodeError, OverflowError) as error:
        check_value(value, what)  # names the path of what JSON cannot hold, if it can
        raise PayloadError(
            f"{what} is not JSON-serialisable: {error}",
            suggestion=_PLAIN,
        ) from error
    if len(data) > limit:
        raise PayloadError(
            f"{what} is {len(data)} bytes encoded, over the limit of {limit} bytes",
            suggestion="store large data as its own object and put its key in the payload",
            metadata={"size": len(data), "limit": limit},
        )
    # The depth check looks at the bytes first, in C, because every enqueue pays for it:
    # a value cannot nest deeper than it has brackets.
    if (
        len(data) > 2 * MAX_DEPTH
        and data.count(b"[") + data.count(b"{") > MAX_DEPTH
        and _nests_deeper(data)
    ):
        raise _too_deep(what)
    # One decode and one comparison, both in C, tell whether the value comes back as
    # it went in (msgspec writes NaN as null, a tuple as a list, a date as a string);
    # only a value that does not is walked, to name what and where.
    if not _decodes_to(data, value):
        try:
            check_value(value, what)
        except PayloadError as error:
            if exact or not error.metadata.get("changed"):
                raise
            _warn_once(error)
        else:
            raise PayloadError(f"{what} does not decode back to the value given", suggestion=_PLAIN)
    return msgspec.Raw(data)


def _warn_once(error: PayloadError) -> None:
    place = (error.metadata.get("path"), error.metadata.get("type"))
    if place not in _warned:
        _warned.add(place)
        log.warning("%s; stored as JSON made it (%s)", error.message, error.suggestion)


def check_value(value: Any, what: str) -> None:
    """Raise PayloadError if ``value`` holds NaN or infinity, a value that is not
    plain JSON (see the module's docstring), or nests deeper than MAX_DEPTH. ``what``
    names it in the error ("the payload", "the result")."""
    root = what.removeprefix("the ").split()[0]
    # A loop, not recursion: the value may be as deep as Python's stack allows.
    stack: list[tuple[Any, int, tuple[Any, ...]]] = [(value, 1, ())]
    while stack:
        node, depth, path = stack.pop()
        where = root + _path(path)
        if type(node) is dict:
            items: Iterable[tuple[Any, Any]] = node.items()
            for key in node:
                if type(key) is not str:
                    raise _not_plain(what, key, where, key=True)
        elif type(node) is list:
            items = enumerate(node)
        elif isinstance(node, float) and not math.isfinite(node):
            raise _not_finite(what, node, where)
        elif not isinstance(node, _PLAIN_LEAVES):
            raise _not_plain(what, node, where)
        else:
            continue
        if depth > MAX_DEPTH:
            raise _too_deep(what)
        stack.extend((item, depth + 1, (*path, key)) for key, item in items)


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


def _not_plain(what: str, node: Any, where: str, *, key: bool = False) -> PayloadError:
    kind = type(node).__name__
    # "an int", "an Order", but "a UUID" (an acronym is read letter by letter).
    spoken_vowel = kind[0] in "aeiou" or (kind[0] in "AEIOU" and kind[1:2].islower())
    article = "an" if spoken_vowel else "a"
    if key:
        found = f"holds {article} {kind} key {node!r} at {where}"
    elif "[" in where:
        found = f"holds {article} {kind} at {where}"
    else:
        found = f"is {article} {kind}"
    becomes = "a string key" if key else _becomes(node)
    outcome = (
        "which is not JSON-serialisable"
        if becomes is None
        else f"which would come back as {becomes}"
    )
    return PayloadError(
        f"{what} {found}, {outcome}",
        suggestion=_PLAIN,
        metadata={"path": where, "type": kind, "changed": becomes is not None},
    )


def _becomes(node: Any) -> str | None:
    """What a value would decode to, in words; None if JSON cannot hold it."""
    try:
        back = msgspec.json.decode(_json.encode(node))
    except (TypeError, ValueError, msgspec.EncodeError, msgspec.DecodeError, RecursionError):
        return None
    return "null" if back is None else f"a {type(back).__name__}"


def _too_deep(what: str) -> PayloadError:
    return PayloadError(
        f"{what} nests lists and dicts more than {MAX_DEPTH} levels deep",
        suggestion="flatten it, or store it as its own object and put its key in the payload",
        metadata={"limit": MAX_DEPTH},
    )
