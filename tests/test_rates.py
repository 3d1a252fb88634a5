"""Rate limits, pure: how a limit is written, the token arithmetic of a shard's
bucket, and the claim that spends the tokens (on the cursor, no I/O). Through the
Queue and the Worker: tests/test_rate_limit.py."""

from __future__ import annotations

import itertools
import math

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from s3queue import ConfigurationError
from s3queue.core.cursor import (
    Claim,
    Claimed,
    Cursor,
    Ingest,
    apply,
    best_waiting,
    count_candidates,
    decode_cursor,
    encode_cursor,
    rate_due,
)
from s3queue.core.layout import SegmentRef
from s3queue.core.rates import QUEUE_WIDE, Bucket, RateLimit, ShardRate, arrival, held_keys, level
from s3queue.core.segment import Message, Segment

T0 = 1_800_000_000.0

# --- how a limit is written ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("100/s", 100.0), ("30/m", 0.5), ("2/h", 2 / 3600), ("0.5/s", 0.5), ("1/h", 1 / 3600)],
)
def test_a_rate_is_n_per_second_minute_or_hour(text: str, per_second: float) -> None:
    limit = RateLimit.parse(text)
    assert limit.per_second == pytest.approx(per_second)
    assert str(limit) == text
    assert RateLimit.parse(str(limit)) == limit


@pytest.mark.parametrize(
    "text",
    ["100", "100/sec", "100/min", "100 /s", " 100/s", "1e3/s", "-1/s", "/s", "", "9/d", "1,000/s"],
)
def test_anything_else_is_refused_naming_the_string_and_the_forms(text: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        RateLimit.parse(text)
    assert repr(text) in str(raised.value)
    assert "N/s, N/m or N/h" in str(raised.value)


@pytest.mark.parametrize("text", ["0/s", "0.0/m", "100001/s", "0.5/h"])
def test_a_rate_beyond_one_an_hour_to_100000_a_second_is_refused(text: str) -> None:
    with pytest.raises(ConfigurationError, match=r"from 1/h to 100,000/s"):
        RateLimit.parse(text)


def test_a_rate_limit_checks_itself_when_built() -> None:
    assert RateLimit(5, "m").per_second == pytest.approx(5 / 60)
    for count, unit in [(math.nan, "s"), (math.inf, "s"), (True, "s"), (5, "d")]:
        with pytest.raises(ConfigurationError):
            RateLimit(count, unit)  # type: ignore[arg-type]


# --- a shard's bucket ---------------------------------------------------------------------------


def test_each_shard_gets_its_share_of_the_rate_and_about_one_token_of_burst() -> None:
    share = ShardRate.share(QUEUE_WIDE, RateLimit.parse("50/s"), shards=4)
    assert (share.rate, share.shards) == (12.5, 4)
    # One token and 10 ms of the rate: a claim up to 10 ms late loses nothing.
    assert share.burst == pytest.approx(1.125)
    # A fast limit holds 50 ms of its rate, so one claim per round trip keeps up.
    assert ShardRate.share("k", RateLimit.parse("4000/s"), shards=4).burst == pytest.approx(50)


def test_a_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    rate = ShardRate("k", rate=10.0, burst=1.5)
    assert level(None, rate, T0) == 1.0  # never written: one token
    bucket = Bucket(tokens=0.2, at=T0)
    assert level(bucket, rate, T0 + 0.05) == pytest.approx(0.7)
    assert level(bucket, rate, T0 + 10.0) == 1.5


def test_time_before_a_buckets_last_spend_refills_nothing() -> None:
    # A process whose clock is behind the last spender's must not mint tokens.
    bucket = Bucket(tokens=0.2, at=T0)
    assert level(bucket, ShardRate("k", 10.0, 1.5), T0 - 3.0) == pytest.approx(0.2)


def test_a_token_arrives_when_the_bucket_holds_a_whole_one() -> None:
    rate = ShardRate("k", rate=10.0, burst=1.5)
    assert arrival(Bucket(tokens=0.2, at=T0), rate) == pytest.approx(T0 + 0.08)
    assert arrival(Bucket(tokens=1.2, at=T0), rate) == T0
    assert arrival(None, rate) == -math.inf
    due = arrival(Bucket(tokens=0.2, at=T0), rate)
    assert level(Bucket(tokens=0.2, at=T0), rate, due) >= 1.0  # not 0.9999999


def test_a_bucket_is_left_to_another_process_that_spent_from_it_lately_and_kept_up() -> None:
    rate = ShardRate("k", rate=10.0, burst=1.0)
    theirs = Bucket(tokens=0.0, at=T0)
    assert held_keys({"k": theirs}, [rate], {}, seen_at=T0 + 1.0) == ("k",)
    assert held_keys({"k": theirs}, [rate], {"k": theirs}, seen_at=T0 + 1.0) == ()  # mine
    assert held_keys({"k": theirs}, [rate], {}, seen_at=T0 + 6.0) == ()  # it stopped
    lagging = Bucket(tokens=0.0, at=T0, overflowed=True)
    assert held_keys({"k": lagging}, [rate], {}, seen_at=T0 + 1.0) == ()  # needs help


# --- the claim that spends them ------------------------------------------------------------

#: 12.5 tokens a second on each shard, a burst of 1.125.
QUEUE_50 = ShardRate.share(QUEUE_WIDE, RateLimit.parse("50/s"), shards=4)


def window(*keys: str | None, shard: int = 0) -> tuple[Cursor, dict[str, Segment]]:
    """A cursor whose window holds one segment with a message per key given."""
    ref = SegmentRef.log(0)
    messages = [
        Message(payload=msgspec.Raw(b"1"), enqueued_at=T0, visible_at=0.0, rate_key=key)
        for key in keys
    ]
    segments = {str(ref): Segment(writer="w", created_at=T0, messages=messages)}
    t = apply(
        Cursor(shard=shard),
        [Ingest(ref, len(messages))],
        segments,
        now=T0,
        commit="c0",
        new_token=lambda: "t",
    )
    return t.cursor, segments


def claim(
    cursor: Cursor,
    segments: dict[str, Segment],
    now: float,
    *rates: ShardRate,
    count: int = 100,
    hold: tuple[str, ...] = (),
) -> tuple[Cursor, list[Claimed]]:
    op = Claim("w", count, 60.0, rates=rates, hold=hold)
    t = apply(cursor, [op], segments, now=now, commit=f"c{now}", new_token=lambda: "t")
    result = t.results[0]
    assert isinstance(result, list)
    return t.cursor, result


def keys_of(claimed: list[Claimed]) -> list[str | None]:
    return [c.message.rate_key for c in claimed]


def test_a_claim_under_a_queue_limit_takes_whole_tokens_only() -> None:
    cursor, segments = window(*[None] * 20)
    cursor, taken = claim(cursor, segments, T0, QUEUE_50)
    assert len(taken) == 1  # a new bucket: one token
    assert cursor.buckets == {QUEUE_WIDE: Bucket(tokens=0.0, at=T0)}
    cursor, taken = claim(cursor, segments, T0 + 0.07, QUEUE_50)
    assert taken == []  # 0.875: the next token comes at T0 + 0.08
    cursor, taken = claim(cursor, segments, T0 + 0.09, QUEUE_50)
    assert len(taken) == 1  # 10 ms late: 1.125 tokens
    cursor, taken = claim(cursor, segments, T0 + 0.15, QUEUE_50)
    assert taken == []  # 0.875: the next comes at T0 + 0.16, as if it had been on time
    cursor, taken = claim(cursor, segments, T0 + 0.16, QUEUE_50)
    assert len(taken) == 1
    cursor, taken = claim(cursor, segments, T0 + 10.0, QUEUE_50)
    assert len(taken) == 1  # up to the burst only: the others were lost, and it says so
    overflowed = Bucket(tokens=pytest.approx(0.125), at=T0 + 10.0, overflowed=True)  # type: ignore[arg-type]
    assert cursor.buckets == {QUEUE_WIDE: overflowed}


def test_new_buckets_keep_the_shards_tokens_one_after_the_other() -> None:
    """The four shards' buckets, all new at one instant: their next tokens come 1/R
    apart across the cluster, not four at once, and none sooner than a full step."""
    now = T0 + 0.013
    dues = []
    for shard in range(4):
        cursor, segments = window(None, None, shard=shard)
        cursor, _ = claim(cursor, segments, now, QUEUE_50)
        due = rate_due(cursor, segments, now, (QUEUE_50,))
        assert due is not None
        assert due >= now + 0.08
        dues.append(due)
    dues.sort()
    assert [b - a for a, b in itertools.pairwise(dues)] == pytest.approx([0.02] * 3)


def test_a_claim_that_takes_nothing_for_want_of_tokens_changes_nothing() -> None:
    cursor, segments = window(*[None] * 5)
    cursor, _ = claim(cursor, segments, T0, QUEUE_50)
    op = Claim("w", 10, 60.0, rates=(QUEUE_50,))
    t = apply(cursor, [op], segments, now=T0 + 0.01, commit="c", new_token=lambda: "t")
    assert t.results == [[]]
    assert t.cursor.buckets == cursor.buckets
    assert t.cursor.flights == cursor.flights


def test_messages_of_a_key_without_tokens_are_passed_over_and_the_rest_taken() -> None:
    per_key = ShardRate("email", rate=1.0, burst=1.0)
    cursor, segments = window("email", "email", None, "sms", "email", None)
    cursor, taken = claim(cursor, segments, T0, per_key)
    assert keys_of(taken) == ["email", None, "sms", None]
    assert cursor.buckets == {"email": Bucket(tokens=0.0, at=T0)}
    cursor, taken = claim(cursor, segments, T0 + 1.0, per_key)
    assert keys_of(taken) == ["email"]


def test_a_message_needs_a_token_of_the_queue_and_of_its_key() -> None:
    queue_wide = ShardRate(QUEUE_WIDE, rate=1.0, burst=3.0)
    per_key = ShardRate("email", rate=1.0, burst=1.0)
    cursor, segments = window("email", "email", None, None, None)
    three = Bucket(tokens=3.0, at=T0)
    cursor = msgspec.structs.replace(cursor, buckets={QUEUE_WIDE: three})
    cursor, taken = claim(cursor, segments, T0, queue_wide, per_key)
    assert keys_of(taken) == ["email", None, None]  # the key's one token, the queue's three
    assert cursor.buckets == {
        QUEUE_WIDE: Bucket(tokens=0.0, at=T0),
        "email": Bucket(tokens=0.0, at=T0),
    }


def test_a_claim_takes_no_message_under_a_bucket_it_leaves_to_another_process() -> None:
    per_key = ShardRate("email", rate=1.0, burst=1.0)
    cursor, segments = window("email", None, "email", None)
    cursor, taken = claim(cursor, segments, T0, per_key, hold=("email",))
    assert keys_of(taken) == [None, None]
    assert cursor.buckets is msgspec.UNSET


def test_buckets_of_limits_the_claimant_does_not_know_are_kept_and_full_ones_dropped() -> None:
    cursor, segments = window(None, None, None)
    stranger = Bucket(tokens=0.5, at=T0)
    refilled = Bucket(tokens=0.0, at=T0 - 60)
    cursor = msgspec.structs.replace(cursor, buckets={"other": stranger, "email": refilled})
    per_key = ShardRate("email", rate=1.0, burst=1.0)
    cursor, taken = claim(cursor, segments, T0, QUEUE_50, per_key)
    assert len(taken) == 1
    # "email" is full again (60 s at 1/s): as good as no bucket at all.
    assert cursor.buckets == {"other": stranger, QUEUE_WIDE: Bucket(tokens=0.0, at=T0)}


def test_a_cursor_with_buckets_encodes_them_and_reads_them_back() -> None:
    cursor, segments = window(None, None)
    cursor, _ = claim(cursor, segments, T0, QUEUE_50)
    data = encode_cursor(cursor)
    assert b'"buckets":{"":{"tokens":0.0,"at":1800000000.0}}' in data
    assert decode_cursor(data, "k") == cursor
    assert b"buckets" not in encode_cursor(window(None)[0])


def test_the_best_waiting_message_is_one_that_would_get_its_tokens() -> None:
    per_key = ShardRate("email", rate=1.0, burst=1.0)
    cursor, segments = window("email", "email")
    cursor, _ = claim(cursor, segments, T0, per_key)
    assert best_waiting(cursor, segments, T0) == 0  # without limits: the second message
    assert best_waiting(cursor, segments, T0, (per_key,)) is None
    assert best_waiting(cursor, segments, T0 + 1.0, (per_key,)) == 0
    assert best_waiting(cursor, segments, T0 + 1.0, (per_key,), hold=("email",)) is None


def test_rate_due_is_when_the_first_waiting_message_gets_its_tokens() -> None:
    cursor, segments = window(None, None, None)
    assert rate_due(cursor, segments, T0, (QUEUE_50,)) == -math.inf  # a token: due already
    cursor, _ = claim(cursor, segments, T0, QUEUE_50)
    assert rate_due(cursor, segments, T0, (QUEUE_50,)) == pytest.approx(T0 + 0.08)
    per_key = ShardRate("email", rate=0.5, burst=1.0)
    assert rate_due(cursor, segments, T0, (per_key,)) is None  # nothing waits for it
    keyed, segments = window("email", "email")
    keyed, _ = claim(keyed, segments, T0, per_key)
    assert rate_due(keyed, segments, T0, (per_key,)) == pytest.approx(T0 + 2.0)


def test_messages_of_a_key_without_tokens_are_not_candidates_for_a_claim() -> None:
    per_key = ShardRate("email", rate=1.0, burst=1.0)
    cursor, segments = window("email", "email", "email", None)
    cursor, _ = claim(cursor, segments, T0, per_key, count=1)
    # The claim reads further into the log when the window lacks candidates.
    assert count_candidates(cursor, segments, T0, 10) == 3
    assert count_candidates(cursor, segments, T0, 10, (per_key,)) == 1
    # The queue's own bucket does not count: empty, the log could give nothing either.
    assert count_candidates(cursor, segments, T0, 10, (QUEUE_50,)) == 3


@given(
    gaps=st.lists(st.floats(min_value=0.0, max_value=0.3), min_size=1, max_size=60),
    counts=st.lists(st.integers(min_value=0, max_value=5), min_size=60, max_size=60),
    skews=st.lists(st.floats(min_value=-0.5, max_value=0.0), min_size=60, max_size=60),
    per_second=st.floats(min_value=0.5, max_value=200.0),
)
def test_claims_never_take_more_than_the_burst_plus_the_rate_times_the_time(
    gaps: list[float], counts: list[int], skews: list[float], per_second: float
) -> None:
    """Whatever the claims, and however far behind the latest clock seen the
    claimants' clocks are (up to half a second), a shard gives no more than its
    burst plus its rate times the span of the claims' times."""
    rate = ShardRate.share(QUEUE_WIDE, RateLimit(per_second), shards=2)
    cursor, segments = window(*[None] * 400)
    latest, taken = T0, 0
    times: list[float] = []
    for gap, count, skew in zip(gaps, counts, skews, strict=False):
        latest += gap
        times.append(latest + skew)
        cursor, claimed = claim(cursor, segments, times[-1], rate, count=count)
        taken += len(claimed)
        assert taken <= rate.burst + rate.rate * (max(times) - min(times)) + 1e-6
