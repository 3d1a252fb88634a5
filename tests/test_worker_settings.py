"""The worker's settings objects: checked when built, stored as checked, frozen.
(Each out-of-range number is in test_validation.py.)"""

from __future__ import annotations

import dataclasses

import pytest

from s3queue import ConfigurationError, Leases, Polling, Scaling


def test_numbers_are_stored_as_checked() -> None:
    leases = Leases(visibility_timeout=60, job_timeout=5, shutdown_timeout=0)
    assert type(leases.visibility_timeout) is float
    assert leases.visibility_timeout == 60.0
    assert type(leases.job_timeout) is float
    assert type(leases.shutdown_timeout) is float
    assert type(Polling(poll_interval=2).poll_interval) is float
    assert type(Scaling(scale_cooldown=1).scale_cooldown) is float


def test_settings_cannot_change_once_built() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Polling().poll_interval = 0.0  # type: ignore[misc]


def test_concurrency_bounds_default_to_the_concurrency() -> None:
    assert Scaling().bounds(10) == (10, 10)
    assert Scaling(max_concurrency=20).bounds(10) == (10, 20)
    assert Scaling(min_concurrency=2).bounds(10) == (2, 10)
    assert Scaling(min_concurrency=5, max_concurrency=3).bounds(5) == (5, 5)


def test_a_concurrency_outside_the_bounds_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"concurrency=1 is outside \[2, 4\]"):
        Scaling(min_concurrency=2, max_concurrency=4).bounds(1)
    with pytest.raises(ConfigurationError, match=r"concurrency=5 is outside \[2, 4\]"):
        Scaling(min_concurrency=2, max_concurrency=4).bounds(5)
