"""The worker's pacing on its own: the adaptive prefetch and the autoscaling steps,
driven by numbers (no storage, no event loop, the time passed in)."""

from __future__ import annotations

from s3queue.runtime.pacing import MAX_PREFETCH_FACTOR, Pacing

NOW = 1000.0


def adaptive(concurrency: int = 8) -> Pacing:
    return Pacing(min_concurrency=concurrency, max_concurrency=concurrency)


def finish_at_rate(pacing: Pacing, per_second: float, count: int = 64) -> None:
    """``count`` jobs finished evenly over the time up to NOW."""
    span = count / per_second
    for i in range(count):
        pacing.finished(NOW - span + i / per_second)


def scaling(low: int = 1, high: int = 4, cooldown: float = 5.0) -> Pacing:
    return Pacing(min_concurrency=low, max_concurrency=high, cooldown=cooldown)


# --- prefetch -------------------------------------------------------------------------------


def test_no_prefetch_before_two_jobs_have_finished() -> None:
    pacing = adaptive()
    pacing.claimed(0.05)
    assert pacing.prefetch(8, NOW) == 0
    pacing.finished(NOW - 0.5)
    assert pacing.prefetch(8, NOW) == 0  # one finish gives no rate
    pacing.finished(NOW - 0.25)
    assert pacing.prefetch(8, NOW) > 0


def test_no_prefetch_before_a_claim_has_been_timed() -> None:
    pacing = adaptive()
    finish_at_rate(pacing, 100.0)
    assert pacing.prefetch(8, NOW) == 0


def test_prefetch_is_twice_the_jobs_that_finish_during_one_claim() -> None:
    pacing = adaptive()
    pacing.claimed(0.05)
    finish_at_rate(pacing, 64.0)  # 3.2 jobs per 50 ms claim
    assert pacing.prefetch(8, NOW) == 7


def test_prefetch_grows_with_the_claim_round_trip() -> None:
    quick, slow = adaptive(), adaptive()
    quick.claimed(0.012)
    slow.claimed(0.042)
    for pacing in (quick, slow):
        finish_at_rate(pacing, 100.0)
    assert quick.prefetch(8, NOW) == 3  # 1.2 jobs per round trip, twice that rounded up
    assert slow.prefetch(8, NOW) == 9  # 4.2 jobs per round trip


def test_prefetch_is_capped_at_four_times_the_concurrency() -> None:
    pacing = adaptive()
    pacing.claimed(0.05)
    finish_at_rate(pacing, 1280.0)  # 64 jobs per claim
    assert pacing.prefetch(8, NOW) == MAX_PREFETCH_FACTOR * 8 == 32
    assert pacing.prefetch(2, NOW) == 8  # the cap follows the current concurrency


def test_prefetch_measures_the_last_64_finishes() -> None:
    pacing = adaptive()
    pacing.claimed(0.005)
    for i in range(64):
        pacing.finished(NOW - 100 + i)  # long ago, slowly
    finish_at_rate(pacing, 640.0)  # the last 64 at 640 jobs/s push those out
    assert pacing.prefetch(8, NOW) == 7  # 3.2 jobs per round trip (all 128: 1)


def test_a_fixed_prefetch_is_used_as_given() -> None:
    pacing = Pacing(min_concurrency=2, max_concurrency=2, fixed_prefetch=100)
    assert pacing.prefetch(2, NOW) == 100  # nothing measured, and above the adaptive cap
    pacing.claimed(0.05)
    finish_at_rate(pacing, 1280.0)
    assert pacing.prefetch(2, NOW) == 100


def test_the_claim_round_trip_is_smoothed_after_the_first() -> None:
    pacing = adaptive()
    pacing.claimed(0.1)
    assert pacing.claim_rtt == 0.1
    pacing.claimed(0.6)
    assert abs(pacing.claim_rtt - 0.2) < 1e-12  # 0.8 x 0.1 + 0.2 x 0.6


# --- autoscaling ----------------------------------------------------------------------------


def test_scales_up_when_a_claim_leaves_leases_waiting() -> None:
    pacing = scaling()
    assert pacing.scale(1, busy=True, waiting=3, running=1, now=NOW) == 2


def test_does_not_scale_up_without_leases_waiting() -> None:
    pacing = scaling()
    assert pacing.scale(1, busy=True, waiting=0, running=1, now=NOW) == 1


def test_scales_down_when_a_claim_finds_nothing_and_a_slot_is_free() -> None:
    pacing = scaling()
    assert pacing.scale(3, busy=False, waiting=0, running=1, now=NOW) == 2


def test_does_not_scale_down_while_every_slot_runs_a_job() -> None:
    pacing = scaling()
    assert pacing.scale(3, busy=False, waiting=0, running=3, now=NOW) == 3


def test_one_step_per_cooldown() -> None:
    pacing = scaling(cooldown=5.0)
    assert pacing.scale(1, busy=True, waiting=3, running=1, now=NOW) == 2
    assert pacing.scale(2, busy=True, waiting=3, running=2, now=NOW + 4.9) == 2
    assert pacing.scale(2, busy=True, waiting=3, running=2, now=NOW + 5.0) == 3
    assert pacing.scale(3, busy=False, waiting=0, running=0, now=NOW + 9.9) == 3
    assert pacing.scale(3, busy=False, waiting=0, running=0, now=NOW + 10.0) == 2


def test_a_step_not_taken_does_not_start_the_cooldown() -> None:
    pacing = scaling(cooldown=5.0)
    assert pacing.scale(1, busy=True, waiting=0, running=1, now=NOW) == 1
    assert pacing.scale(1, busy=True, waiting=3, running=1, now=NOW + 1) == 2


def test_never_scales_beyond_the_bounds() -> None:
    pacing = scaling(low=2, high=4, cooldown=0.0)
    concurrency = 2
    for step in range(10):
        concurrency = pacing.scale(
            concurrency, busy=True, waiting=10, running=concurrency, now=NOW + step
        )
    assert concurrency == 4
    for step in range(10):
        concurrency = pacing.scale(concurrency, busy=False, waiting=0, running=0, now=NOW + step)
    assert concurrency == 2


def test_equal_bounds_never_scale() -> None:
    pacing = Pacing(min_concurrency=3, max_concurrency=3, cooldown=0.0)
    assert pacing.scale(3, busy=True, waiting=10, running=3, now=NOW) == 3
    assert pacing.scale(3, busy=False, waiting=0, running=0, now=NOW) == 3
