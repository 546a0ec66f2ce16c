"""HealthState: the pure bookkeeping behind an instance's reported health."""

from __future__ import annotations

from dinp.health import FAILURES, HealthState


def test_starting_until_the_first_success_then_unhealthy_after_failures_in_a_row() -> None:
    h = HealthState(since=0.0)
    assert not h.record(False) and h.status == "starting"  # failures while starting
    assert h.record(True) and h.status == "healthy"
    for _ in range(FAILURES - 1):
        assert not h.record(False)
    assert h.status == "healthy"  # one blip is not a verdict
    assert h.record(False) and h.status == "unhealthy"
    assert h.record(True) and h.status == "healthy" and h.failures == 0


def test_stuck_only_when_not_healthy_for_longer_than_the_timeout() -> None:
    h = HealthState(since=100.0)
    assert h.stuck(now=159.0, timeout=60) is None
    reason = h.stuck(now=161.0, timeout=60)
    assert reason is not None and "never became healthy in 60 s" in reason
    h.record(True)
    assert h.stuck(now=h.since + 1000, timeout=60) is None  # healthy is never stuck
    for _ in range(FAILURES):
        h.record(False)
    assert h.status == "unhealthy"
    assert h.stuck(now=h.since + 59, timeout=60) is None  # its own clock restarted
    assert h.stuck(now=h.since + 61, timeout=60) == "unhealthy for 60 s"
