"""HealthState: the pure bookkeeping behind an instance's reported health."""

from __future__ import annotations

from dinp.health import FAILURES, Answer, HealthState

OK = Answer(True)
REFUSED = Answer(False, "TCP port 8080: Connection refused")
ERROR = Answer(False, "GET /health answered 'HTTP/1.1 500 Oops'")


def test_starting_until_the_first_success_then_unhealthy_after_failures_in_a_row() -> None:
    h = HealthState(since=0.0)
    assert not h.record(REFUSED) and h.status == "starting"  # failures while starting
    assert h.detail == REFUSED.detail
    assert h.record(OK) and h.status == "healthy" and h.detail == ""
    for _ in range(FAILURES - 1):
        assert not h.record(ERROR)
    assert h.status == "healthy"  # one blip is not a verdict
    assert h.record(ERROR) and h.status == "unhealthy" and h.detail == ERROR.detail
    assert h.record(OK) and h.status == "healthy" and h.failures == 0 and h.detail == ""


def test_stuck_only_when_not_healthy_for_longer_than_the_timeout() -> None:
    h = HealthState(since=100.0)
    assert h.stuck(now=159.0, timeout=60) is None
    reason = h.stuck(now=161.0, timeout=60)
    assert reason == "never became healthy in 60 s"
    h.record(REFUSED)
    assert h.stuck(now=161.0, timeout=60) == (
        "never became healthy in 60 s; last check: TCP port 8080: Connection refused")
    h.record(OK)
    assert h.stuck(now=h.since + 1000, timeout=60) is None  # healthy is never stuck
    for _ in range(FAILURES):
        h.record(ERROR)
    assert h.status == "unhealthy"
    assert h.stuck(now=h.since + 59, timeout=60) is None  # its own clock restarted
    assert h.stuck(now=h.since + 61, timeout=60) == (
        f"unhealthy for 60 s; last check: {ERROR.detail}")
