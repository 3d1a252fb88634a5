"""What refusing NaN, Infinity and deep nesting costs on the hot encode paths.

``python -m bench.validation [--number N]`` times, in one process and without I/O:

- ``encode_json`` of a small dict payload (the common enqueue), of one holding a
  ``None`` (msgspec writes ``null`` for None and for NaN alike, so it is walked), and of
  a list of 100 small dicts (more than 64 brackets, so it is walked for depth);
- ``records.encode`` of a cursor with 100 leases (encoded on every commit), without
  and with ``null`` in it (error records without a traceback: a record with a null is
  decoded back before it is written), and of a segment of 1,000 messages whose
  payloads hold a None (encoded once per producer batch).

Each line is the best of five runs, in microseconds per call. Only public module
functions are used, so the same file measures the code before and after a change
(run it with ``PYTHONPATH`` pointing at the other tree's ``src``).
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable

import msgspec

from s3queue.core.cursor import Cursor, Flight, Lease, OpenSegment
from s3queue.core.records import ErrorRecord, encode
from s3queue.core.segment import Message, Segment
from s3queue.payload import encode_json

SMALL = {"to": "ada@example.com", "template": "welcome", "user_id": 48213, "retry": True}
WITH_NONE = {**SMALL, "cc": None}
LIST_OF_DICTS = [{"n": n, "score": n * 0.5, "tags": ["a", "b"]} for n in range(100)]


def _cursor(errors: bool) -> Cursor:
    error = ErrorRecord(attempt=1, at=1.8e9, type="Error", message="boom", worker="w")
    flights = {
        f"0-L{n // 100}-{n % 100}": Flight(
            attempt=2 if errors else 1,
            lease=Lease(token=f"t{n:08d}", owner="worker-1", claimed_at=1.8e9, expires_at=1.8e9),
            errors=[error] if errors else [],
        )
        for n in range(100)
    }
    window = [OpenSegment(ref="L0", count=100, done=bytes(13))]
    return Cursor(shard=0, version=7, commit="c", open=window, flights=flights)


def _segment() -> Segment:
    payload = encode_json(WITH_NONE, limit=1 << 20, what="the payload")
    messages = [Message(payload=payload, enqueued_at=1.8e9, visible_at=1.8e9)] * 1000
    return Segment(writer="w", created_at=1.8e9, messages=messages)


def cases() -> list[tuple[str, Callable[[], object]]]:
    limit = 1 << 20
    plain, with_errors, segment = _cursor(False), _cursor(True), _segment()
    return [
        ("encode_json small dict", lambda: encode_json(SMALL, limit=limit, what="the payload")),
        ("encode_json dict with None", lambda: encode_json(WITH_NONE, limit=limit, what="x")),
        ("encode_json 100 dicts", lambda: encode_json(LIST_OF_DICTS, limit=limit, what="x")),
        ("encode cursor, 100 leases", lambda: encode(plain)),
        ("encode cursor, 100 leases + errors", lambda: encode(with_errors)),
        ("encode segment, 1000 messages", lambda: encode(segment)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.validation")
    parser.add_argument("--number", type=int, default=100_000, help="calls per run (small cases)")
    args = parser.parse_args()
    print(f"msgspec {msgspec.__version__}; best of 5 runs; microseconds per call")
    for name, call in cases():
        number = args.number if "segment" not in name else max(1, args.number // 100)
        best = min(timeit.repeat(call, number=number, repeat=5)) / number
        print(f"{name:<38} {best * 1e6:10.2f}")


if __name__ == "__main__":
    main()
