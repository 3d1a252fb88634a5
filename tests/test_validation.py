"""Hostile numbers and payloads (issue 10, item 11): each is refused with a one-line error
that names the argument and the fix (exit 2 on the command line), and after each one
the queue is still readable and still works.

Only public names are imported at the top, so that this file also runs against code
from before the fix and shows which of these cases it failed.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import enum
import json
import logging
import math
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3queue import (
    Backoff,
    ConfigurationError,
    Cron,
    Lease,
    Leases,
    PayloadError,
    Polling,
    Queue,
    QueueError,
    Scaling,
    Worker,
    connect,
)
from s3queue.core.cursor import Claim, Cursor, Flight, encode_cursor
from s3queue.core.cursor import Lease as CursorLease
from s3queue.core.records import QueueSettings, encode
from s3queue.core.segment import Message, Segment, encode_segment
from s3queue.ops import cli
from s3queue.ops.dashboard import Dashboard
from s3queue.ops.monitor import WorkerMonitor
from tests.conftest import FAST, run_until
from tests.test_cli import cli as run_cli
from tests.test_cli import one_line_error

NAN, INF = float("nan"), float("inf")
HUGE = 10**25
NAME = "q"

#: Bad values by kind of parameter. Each list holds NaN, the infinities, 1e25 (float and
#: int), the wrong sign, a bool and a string where they apply.
SECONDS = [NAN, INF, -INF, 1e25, HUGE, -1.0, True, "30", None]
POSITIVE_SECONDS = [*SECONDS, 0.0]
COUNT = [NAN, INF, 1e25, HUGE, 0, -1, True, 2.5, "3"]  # an int >= 1
SIZE = [NAN, INF, 1e25, HUGE, -1, True, 2.5, "3"]  # an int >= 0
PRIORITY = [NAN, INF, 1e25, HUGE, -HUGE, True, 2.5, "3"]
PORT = [-1, 65536, 99999, NAN, True]


def deep(levels: int) -> Any:
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


BAD_PAYLOADS = [
    pytest.param({"a": [1, 2, 3, NAN]}, 'payload["a"][3]', id="nan-nested"),
    pytest.param({"ratio": INF}, 'payload["ratio"]', id="inf"),
    pytest.param([{"x": -INF}], 'payload[0]["x"]', id="minus-inf"),
    pytest.param(NAN, "nan", id="nan-alone"),
    pytest.param(deep(5000), "levels deep", id="5000-deep"),
    pytest.param(deep(100), "levels deep", id="100-deep"),
]


def one_line_naming(error: BaseException, argument: str) -> None:
    text = str(error)
    assert "\n" not in text, text
    assert argument in text, text
    assert isinstance(error, QueueError)
    assert error.suggestion, "the error says what to do"


async def assert_works(url: str, name: str = NAME) -> None:
    """The queue reads (settings, every cursor, the backlog) and runs a message through."""
    q = await Queue.open(url, name)
    try:
        await q.stats()
        mid = await q.enqueue({"after": "the bad call"})
        leases = await q.claim(100, 30)
        assert mid in [lease.id for lease in leases]
        for lease in leases:
            await q.ack(lease)
        info = await q.get(mid)
        assert info is not None
        assert info.status == "completed"
    finally:
        await q.close()


@pytest.fixture
def url() -> str:
    return f"memory://validation-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def held(url: str) -> AsyncIterator[tuple[Queue, Lease]]:
    """The queue, with one message claimed (for extend, fail, ack and progress)."""
    q = await Queue.open(url, NAME)
    await q.enqueue({"first": True})
    [lease] = await q.claim(1, 30)
    yield q, lease
    await q.close()


# --- the Python API --------------------------------------------------------------------------

Call = Callable[[Queue, Lease, Any], Awaitable[Any]]


async def _open(q: Queue, **settings: Any) -> None:
    """Create the queue "other" in the same store (queue.json is written only then)."""
    other = await Queue.open(q.storage, "other", **settings)
    await other.close()


async def _worker(q: Queue, **settings: Any) -> None:
    Worker(q, lambda payload, ctx: None, **settings)


async def _monitor(q: Queue, **settings: Any) -> None:
    WorkerMonitor(Worker(q, lambda payload, ctx: None), **settings)


async def _serve_monitor(q: Queue, port: Any) -> None:
    server = await WorkerMonitor(Worker(q, lambda payload, ctx: None)).serve("127.0.0.1", port)
    server.close()


async def _serve_dashboard(q: Queue, port: Any) -> None:
    board = Dashboard(q.storage)
    server = await board.serve("127.0.0.1", port)
    server.close()


async def _dashboard(q: Queue, refresh: Any) -> None:
    Dashboard(q.storage, refresh=refresh)


async def _backoff(**settings: Any) -> None:
    Backoff(**settings)


async def _cron(priority: Any) -> None:
    Cron("* * * * *", priority=priority)


API: list[tuple[str, list[Any], Call]] = [
    ("delay", SECONDS, lambda q, lease, v: q.enqueue({"x": 1}, delay=v)),
    ("delay", SECONDS, lambda q, lease, v: q.enqueue_many([{"x": 1}], delay=v)),
    ("priority", PRIORITY, lambda q, lease, v: q.enqueue({"x": 1}, priority=v)),
    ("priority", PRIORITY, lambda q, lease, v: q.enqueue_many([{"x": 1}], priority=v)),
    ("max_attempts", COUNT, lambda q, lease, v: q.enqueue({"x": 1}, max_attempts=v)),
    ("max_attempts", COUNT, lambda q, lease, v: q.enqueue_many([{"x": 1}], max_attempts=v)),
    ("max_messages", SIZE, lambda q, lease, v: q.claim(v, 30)),
    ("visibility_timeout", POSITIVE_SECONDS, lambda q, lease, v: q.claim(1, v)),
    ("seconds", POSITIVE_SECONDS, lambda q, lease, v: q.extend(lease, v)),
    ("backoff", [NAN, INF, -1.0, 1e25, True], lambda q, lease, v: q.fail(lease, "x", backoff=v)),
    ("shards", COUNT, lambda q, lease, v: _open(q, shards=v)),
    ("max_attempts", COUNT, lambda q, lease, v: _open(q, max_attempts=v)),
    ("dedup_retention", SECONDS, lambda q, lease, v: _open(q, dedup_retention=v)),
    ("skew_margin", SECONDS, lambda q, lease, v: _open(q, skew_margin=v)),
    ("concurrency", COUNT, lambda q, lease, v: _worker(q, concurrency=v)),
    (
        "visibility_timeout",
        POSITIVE_SECONDS,
        lambda q, lease, v: _worker(q, leases=Leases(visibility_timeout=v)),
    ),
    ("max_attempts", COUNT, lambda q, lease, v: _worker(q, leases=Leases(max_attempts=v))),
    (
        "poll_interval",
        POSITIVE_SECONDS,
        lambda q, lease, v: _worker(q, polling=Polling(poll_interval=v)),
    ),
    (
        "job_timeout",
        [NAN, INF, -1.0, 0.0, 1e25, True],
        lambda q, lease, v: _worker(q, leases=Leases(job_timeout=v)),
    ),
    (
        "shutdown_timeout",
        SECONDS,
        lambda q, lease, v: _worker(q, leases=Leases(shutdown_timeout=v)),
    ),
    ("prefetch", SIZE, lambda q, lease, v: _worker(q, polling=Polling(prefetch=v))),
    ("min_concurrency", COUNT, lambda q, lease, v: _worker(q, scaling=Scaling(min_concurrency=v))),
    ("max_concurrency", COUNT, lambda q, lease, v: _worker(q, scaling=Scaling(max_concurrency=v))),
    ("scale_cooldown", SECONDS, lambda q, lease, v: _worker(q, scaling=Scaling(scale_cooldown=v))),
    (
        "unhealthy_after",
        [NAN, INF, -1.0, 1e25, True],
        lambda q, lease, v: _monitor(q, unhealthy_after=v),
    ),
    ("port", PORT, lambda q, lease, v: _serve_monitor(q, v)),
    ("port", PORT, lambda q, lease, v: _serve_dashboard(q, v)),
    ("refresh", POSITIVE_SECONDS, lambda q, lease, v: _dashboard(q, v)),
    ("Backoff.initial", SECONDS, lambda q, lease, v: _backoff(initial=v)),
    ("Backoff.factor", [NAN, INF, 0.5, 1e25, True], lambda q, lease, v: _backoff(factor=v)),
    ("Backoff.max", SECONDS, lambda q, lease, v: _backoff(max=v)),
    ("priority", PRIORITY, lambda q, lease, v: _cron(v)),
]


def _api_cases() -> Iterator[Any]:
    for index, (argument, values, call) in enumerate(API):
        for value in values:
            shown = "huge" if value in (HUGE, -HUGE) else repr(value)
            yield pytest.param(argument, value, call, id=f"{index}-{argument}={shown}")


@pytest.mark.parametrize(("argument", "value", "call"), list(_api_cases()))
async def test_a_bad_number_is_refused_by_name_and_the_queue_keeps_working(
    url: str, held: tuple[Queue, Lease], argument: str, value: Any, call: Call
) -> None:
    q, lease = held
    with pytest.raises(ConfigurationError) as refused:
        await call(q, lease, value)
    one_line_naming(refused.value, argument)
    await q.ack(lease)  # the lease survived the refused call
    await assert_works(url)
    await assert_works(url, "other")  # a queue the refused open did not create badly


@pytest.mark.parametrize(("payload", "where"), BAD_PAYLOADS)
@pytest.mark.parametrize("how", ["enqueue", "enqueue_many", "result", "progress"])
async def test_a_payload_with_nan_infinity_or_deep_nesting_is_refused(
    url: str, held: tuple[Queue, Lease], payload: Any, where: str, how: str
) -> None:
    q, lease = held
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "enqueue": lambda: q.enqueue(payload),
        "enqueue_many": lambda: q.enqueue_many([{"fine": 1}, payload]),
        "result": lambda: q.ack(lease, result=payload),
        "progress": lambda: q.progress(lease, payload),
    }
    with pytest.raises(PayloadError) as refused:
        await calls[how]()
    root = {"result": "result", "progress": "progress"}.get(how, "payload")
    one_line_naming(refused.value, where.replace("payload", root))
    await q.ack(lease)
    await assert_works(url)
    stats = await q.stats()
    assert stats.pending == 0, "enqueue_many wrote nothing of a batch it refused"


async def test_plain_values_with_null_come_back_as_sent(url: str) -> None:
    q = await Queue.open(url, NAME)
    try:
        payloads = [{"cc": None}, ["a", None, 1.5], {"s": "[[{{ null"}, deep(64), 2**70]
        ids = await q.enqueue_many(payloads)
        received = {lease.id: lease.payload for lease in await q.claim(10, 30)}
        assert [received[mid] for mid in ids] == payloads
    finally:
        await q.close()


class Point(msgspec.Struct):
    x: float


class Colour(enum.Enum):
    RED = "red"


CHANGED_BY_JSON = [
    ({"when": datetime.datetime(2026, 11, 30)}, 'a datetime at payload["when"]', "a str"),
    ({"blob": b"\x00"}, 'a bytes at payload["blob"]', "a str"),
    ({"pair": (1, 2)}, 'a tuple at payload["pair"]', "a list"),
    ({"ids": [{3}]}, 'a set at payload["ids"][0]', "a list"),
    ({"price": decimal.Decimal("9.99")}, 'a Decimal at payload["price"]', "a str"),
    ({"id": uuid.UUID(int=7)}, 'a UUID at payload["id"]', "a str"),
    ({"colour": Colour.RED}, 'a Colour at payload["colour"]', "a str"),
    ({7: "seven"}, "an int key 7 at payload", "a string key"),
    (Point(1.0), "is a Point", "a dict"),
    (("a", 1), "is a tuple", "a list"),
]


@pytest.mark.parametrize(("payload", "found", "becomes"), CHANGED_BY_JSON)
async def test_a_value_json_would_change_is_refused_by_its_path(
    url: str, payload: Any, found: str, becomes: str
) -> None:
    q = await Queue.open(url, NAME)
    try:
        with pytest.raises(PayloadError) as refused:
            await q.enqueue(payload)
        message = refused.value.message
        assert found in message, message
        assert f"would come back as {becomes}" in message, message
        assert refused.value.suggestion is not None
        assert ".isoformat()" in refused.value.suggestion
        await q.enqueue({"next": "one"})  # nothing was written; the queue keeps working
        [lease] = await q.claim(10, 30)
        assert lease.payload == {"next": "one"}
    finally:
        await q.close()


async def test_results_and_progress_are_stored_as_json_makes_them_and_said_so(
    url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Refusing them would fail a job whose work is done: they are stored, with a warning
    # (once per place in a process: forget the places warned of by earlier tests).
    monkeypatch.setattr("s3queue.payload._warned", set())
    q = await Queue.open(url, NAME)
    try:
        await q.enqueue({"n": 1})
        [lease] = await q.claim(1, 30)
        with caplog.at_level(logging.WARNING, "s3queue.payload"):
            await q.progress(lease, {"done": (1, 2)})
            await q.ack(lease, {"at": datetime.datetime(2026, 11, 30, tzinfo=datetime.UTC)})
        assert 'progress value holds a tuple at progress["done"]' in caplog.text
        assert 'result holds a datetime at result["at"]' in caplog.text
        await q.settle()
        info = await q.get(lease.id)
        assert info is not None
        assert info.status == "completed"
        assert info.result == {"at": "2026-11-30T00:00:00Z"}
        assert info.progress == {"done": [1, 2]}
    finally:
        await q.close()


async def test_a_handler_returning_a_tuple_completes(url: str) -> None:
    q = await Queue.open(url, NAME)
    try:
        mid = await q.enqueue({"n": 1})
        worker = Worker(q, lambda payload, ctx: ("ok", payload["n"]), polling=FAST)
        await run_until(worker, "completed", "dead")
        await q.settle()
        info = await q.get(mid)
        assert info is not None
        assert info.status == "completed"
        assert info.result == ["ok", 1]
    finally:
        await q.close()


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.integers() | st.text(alphabet='[]{}"\\ab\n'),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=10,
    ),
    st.integers(0, 80),
)
def test_the_depth_limit_is_exact(value: Any, wraps: int) -> None:
    from s3queue.payload import MAX_DEPTH, encode_json

    def levels(v: Any) -> int:
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        return 0 if children is None else 1 + max(map(levels, children), default=0)

    for n in range(wraps):
        value = [value, "]]"] if n % 2 else {'"{': value}
    if levels(value) > MAX_DEPTH:
        with pytest.raises(PayloadError, match="levels deep"):
            encode_json(value, limit=1 << 20, what="the payload")
    else:
        encode_json(value, limit=1 << 20, what="the payload")


# --- the blocking client forwards, and refuses the same --------------------------------------


@pytest.mark.parametrize(
    ("argument", "call"),
    [
        ("dedup_retention", lambda url: connect(url, NAME, dedup_retention=NAN).close()),
        ("skew_margin", lambda url: connect(url, NAME, skew_margin=INF).close()),
        ("delay", lambda url: _blocking(url, lambda b: b.enqueue({"x": 1}, delay=NAN))),
        ("priority", lambda url: _blocking(url, lambda b: b.enqueue({"x": 1}, priority=HUGE))),
        ("visibility_timeout", lambda url: _blocking(url, lambda b: b.claim(1, INF))),
    ],
)
def test_the_blocking_client_refuses_the_same(
    url: str, argument: str, call: Callable[[str], Any]
) -> None:
    with pytest.raises(ConfigurationError) as refused:
        call(url)
    one_line_naming(refused.value, argument)
    asyncio.run(assert_works(url))


def _blocking(url: str, use: Callable[[Any], Any]) -> None:
    with connect(url, NAME) as client:
        use(client)


# --- the net below: nothing that cannot be decoded is written --------------------------------


@pytest.mark.parametrize(
    ("record", "write"),
    [
        pytest.param(
            QueueSettings(name="q", shards=1, created_at=1.0, dedup_retention=NAN),
            encode,
            id="settings",
        ),
        pytest.param(
            Segment(
                writer="w",
                created_at=1.0,
                messages=[Message(payload=msgspec.Raw(b"1"), enqueued_at=1.0, visible_at=INF)],
            ),
            encode_segment,
            id="segment",
        ),
        pytest.param(
            Cursor(
                shard=0,
                flights={
                    "0-L0-0": Flight(
                        attempt=1,
                        lease=CursorLease(token="t", owner="w", claimed_at=1.0, expires_at=NAN),
                    )
                },
            ),
            encode_cursor,
            id="cursor",
        ),
    ],
)
def test_a_record_that_would_not_decode_is_never_encoded(
    record: Any, write: Callable[[Any], bytes]
) -> None:
    with pytest.raises(QueueError, match="would not decode"):
        write(record)


async def test_a_nan_that_escapes_every_check_fails_its_commit_not_the_queue(url: str) -> None:
    q = await Queue.open(url, NAME, shards=1)
    try:
        await q.enqueue({"x": 1})
        with pytest.raises(QueueError, match="would not decode"):
            await q.committers[0].submit(Claim("rogue", 1, NAN))  # below the checks
    finally:
        await q.close()
    await assert_works(url)


async def test_a_clock_gone_nan_writes_nothing(url: str) -> None:
    q = await Queue.open(url, NAME, shards=1)
    await q.close()
    broken = await Queue.open(url, NAME, clock=lambda: NAN)
    try:
        with pytest.raises(QueueError, match="would not decode"):
            await broken.enqueue({"x": 1})
    finally:
        await broken.close()
    await assert_works(url)


def test_the_largest_worker_never_claims_more_than_a_claim_allows() -> None:
    from s3queue import limits
    from s3queue.runtime.worker import MAX_PREFETCH_FACTOR

    most = limits.CONCURRENCY.high
    pipeline = most + max(limits.PREFETCH.high, MAX_PREFETCH_FACTOR * most)
    assert pipeline <= limits.CLAIM_MESSAGES.high


def test_backoff_delays_stay_finite_at_the_last_attempt() -> None:
    steep = Backoff(initial=1.0, factor=100.0, max=3600.0, jitter=False)
    assert steep.delay(1000) == 3600.0
    assert Backoff(initial=0.0, factor=100.0, jitter=False).delay(1000) == 0.0
    assert math.isfinite(Backoff(factor=100.0).delay(10**6))


# --- the command line ------------------------------------------------------------------------

CLI_CASES = [
    ("--delay", ["enqueue", NAME, "1", "--delay=nan"]),
    ("--delay", ["enqueue", NAME, "1", "--delay=inf"]),
    ("--delay", ["enqueue", NAME, "1", "--delay=-inf"]),
    ("--delay", ["enqueue", NAME, "1", "--delay=-1"]),
    ("--delay", ["enqueue", NAME, "1", "--delay=1e25"]),
    ("--priority", ["enqueue", NAME, "1", f"--priority={HUGE}"]),
    ("--priority", ["enqueue", NAME, "1", "--priority=abc"]),
    ("--priority", ["enqueue", NAME, "1", "--priority=1.5"]),
    ("--max-attempts", ["enqueue", NAME, "1", f"--max-attempts={HUGE}"]),
    ("--max-attempts", ["enqueue", NAME, "1", "--max-attempts=0"]),
    ("NaN", ["enqueue", NAME, '{"a": [1, NaN]}']),
    ("Infinity", ["enqueue", NAME, '{"a": Infinity}']),
    ("payload", ["enqueue", NAME, "[" * 5000 + "]" * 5000]),
    ("payload", ["enqueue", NAME, "[" * 100 + "]" * 100]),
    ("--concurrency", ["worker", NAME, "json:loads", "--concurrency=0"]),
    ("--concurrency", ["worker", NAME, "json:loads", "--concurrency=abc"]),
    ("--visibility-timeout", ["worker", NAME, "json:loads", "--visibility-timeout=inf"]),
    ("--visibility-timeout", ["worker", NAME, "json:loads", "--visibility-timeout=nan"]),
    ("--visibility-timeout", ["worker", NAME, "json:loads", "--visibility-timeout=0"]),
    ("--max-attempts", ["worker", NAME, "json:loads", f"--max-attempts={HUGE}"]),
    ("--poll-interval", ["worker", NAME, "json:loads", "--poll-interval=nan"]),
    ("--poll-interval", ["worker", NAME, "json:loads", "--poll-interval=0"]),
    ("--job-timeout", ["worker", NAME, "json:loads", "--job-timeout=-1"]),
    ("--job-timeout", ["worker", NAME, "json:loads", "--job-timeout=nan"]),
    ("--shutdown-timeout", ["worker", NAME, "json:loads", "--shutdown-timeout=-1"]),
    ("--shutdown-timeout", ["worker", NAME, "json:loads", "--shutdown-timeout=inf"]),
    ("--min-concurrency", ["worker", NAME, "json:loads", "--min-concurrency=0"]),
    ("--max-concurrency", ["worker", NAME, "json:loads", f"--max-concurrency={HUGE}"]),
    ("--prefetch", ["worker", NAME, "json:loads", "--prefetch=-1"]),
    ("--prefetch", ["worker", NAME, "json:loads", f"--prefetch={HUGE}"]),
    ("--backoff-initial", ["worker", NAME, "json:loads", "--backoff-initial=nan"]),
    ("--backoff-max", ["worker", NAME, "json:loads", "--backoff-max=inf"]),
    ("--metrics-port", ["worker", NAME, "json:loads", "--metrics-port=99999"]),
    ("--metrics-port", ["worker", NAME, "json:loads", "--metrics-port=-1"]),
    ("--cron", ["worker", NAME, "json:loads", "--cron", '* * * * * {"x": NaN}']),
    ("--interval", ["stats", NAME, "--interval=0"]),
    ("--interval", ["stats", NAME, "--interval=nan"]),
    ("--limit", ["dead", NAME, "--limit=0"]),
    ("--port", ["dashboard", "--port=99999"]),
    ("--refresh", ["dashboard", "--refresh=nan"]),
    ("--refresh", ["dashboard", "--refresh=0"]),
    ("--workers", ["demo", "--workers=0"]),
    ("--jobs", ["demo", "--jobs=-1"]),
    ("--concurrency", ["demo", "--concurrency=0"]),
]


def run_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str, *args: str
) -> tuple[int, str, str]:
    """``s3queue --url URL ARGS`` in this process (a subprocess per case would take a
    minute); its exit code, stdout and stderr."""
    monkeypatch.setattr(sys, "argv", ["s3queue", "--url", url, *args])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    captured = capsys.readouterr()
    return int(exited.value.code or 0), captured.out, captured.err


@pytest.fixture
def file_url(tmp_path: Path) -> str:
    url = f"file://{tmp_path / 'store'}"

    async def create() -> None:
        q = await Queue.open(url, NAME)
        await q.close()

    asyncio.run(create())
    return url


@pytest.mark.timeout(60)  # before the fix, some of these started a worker that never ended
@pytest.mark.parametrize(
    ("option", "args"), CLI_CASES, ids=[f"{a[0]} {a[-1][:24]}" for _, a in CLI_CASES]
)
def test_a_bad_option_is_one_line_naming_it_and_exit_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    file_url: str,
    option: str,
    args: list[str],
) -> None:
    code, _, stderr = run_in_process(monkeypatch, capsys, file_url, *args)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert option in lines[0], lines[0]
    assert code == 2
    code, stdout, stderr = run_in_process(monkeypatch, capsys, file_url, "stats", NAME, "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["pending"] == 0, "nothing was enqueued"
    asyncio.run(assert_works(file_url))


def test_the_probe_cases_as_a_user_runs_them(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    assert run_cli(url, "create", NAME).returncode == 0
    port = run_cli(url, "worker", NAME, "json:loads", "--metrics-port", "99999")
    assert "--metrics-port" in one_line_error(port)
    assert port.returncode == 2
    word = run_cli(url, "enqueue", NAME, "1", "--priority", "abc")
    assert "--priority" in one_line_error(word)
    assert word.returncode == 2
    nan = run_cli(url, "enqueue", NAME, '{"a": NaN}')
    assert "NaN" in one_line_error(nan)
    assert nan.returncode == 2
    assert run_cli(url, "stats", NAME, "--json").returncode == 0
    asyncio.run(assert_works(url))


def test_a_payload_nested_too_deep_in_a_file_names_its_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    file_url: str,
    tmp_path: Path,
) -> None:
    lines = tmp_path / "jobs.jsonl"
    lines.write_text('{"n": 1}\n' + "[" * 70 + "]" * 70 + "\n")
    code, _, stderr = run_in_process(
        monkeypatch, capsys, file_url, "enqueue", NAME, "-f", str(lines)
    )
    assert code == 2
    assert "line 2" in stderr
    assert "levels deep" in stderr
