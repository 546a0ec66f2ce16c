"""The certificate rules (acme_orders.py): when to order, renew, retry and revoke."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dinp import acme_orders as ao

POLICY = ao.Policy(renew_after=2 / 3, retry_base=60.0, retry_max=3600.0)
DAY = 86400.0


def test_retries_back_off_exponentially_up_to_the_cap() -> None:
    assert [ao.retry_delay(n, POLICY) for n in range(1, 9)] == [
        60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert ao.retry_delay(10_000, POLICY) == 3600  # no overflow


@given(st.integers(1, 200), st.floats(0.1, 1e4), st.floats(1.0, 1e6))
def test_a_retry_waits_at_least_the_base_at_most_the_cap_never_less_than_before(
        attempts: int, base: float, cap: float) -> None:
    policy = ao.Policy(retry_base=min(base, cap), retry_max=cap)
    delay = ao.retry_delay(attempts, policy)
    assert policy.retry_base <= delay <= policy.retry_max
    assert ao.retry_delay(attempts + 1, policy) >= delay


def test_an_issued_certificate_is_renewed_at_two_thirds_of_its_lifetime() -> None:
    cert = ao.Cert(ao.ISSUED, not_before=0.0, not_after=90 * DAY)
    assert ao.renew_at(0.0, 90 * DAY, POLICY) == 60 * DAY
    assert not ao.due(cert, 60 * DAY - 1, POLICY)
    assert ao.due(cert, 60 * DAY, POLICY)
    assert ao.due(cert, 61 * DAY, ao.Policy(renew_after=0.5)) and not ao.due(
        cert, 44 * DAY, ao.Policy(renew_after=0.5))
    # Without dates (a row written by hand): ordered again at once.
    assert ao.due(ao.Cert(ao.ISSUED), 0.0, POLICY)


def test_pending_failed_and_renewing_wait_for_their_next_attempt() -> None:
    for state in (ao.PENDING, ao.FAILED, ao.RENEWING):
        cert = ao.Cert(state, attempts=2, next_attempt_at=500.0)
        assert not ao.due(cert, 499.0, POLICY) and ao.due(cert, 500.0, POLICY), state
    assert ao.due(ao.Cert(ao.PENDING), 0.0, POLICY)  # new: at once
    assert ao.due(ao.Cert(ao.REVOKING), 0.0, POLICY)  # removed: at once
    assert ao.due_at(ao.Cert(ao.REVOKING, next_attempt_at=9e9), POLICY) == 0.0


def test_a_failure_keeps_a_valid_certificate_serving_and_backs_off() -> None:
    valid = ao.Cert(ao.RENEWING, not_before=0.0, not_after=100.0, attempts=1)
    out = ao.failed(valid, "  connection refused\n", 50.0, POLICY)
    assert out == ao.Outcome(ao.RENEWING, 2, 50.0 + 120.0, "connection refused", 50.0)
    assert out.retry_in == 120.0
    assert ao.serve(valid, 50.0)
    first = ao.failed(ao.Cert(ao.PENDING), "", 10.0, POLICY)
    assert first == ao.Outcome(ao.FAILED, 1, 70.0, "unknown error", 10.0)
    expired = ao.failed(valid, "x" * 5000, 200.0, POLICY)
    assert expired.state == ao.FAILED and len(expired.last_error) == ao.MAX_ERROR
    assert not ao.serve(valid, 200.0)
    assert ao.issued() == ao.Outcome(ao.ISSUED, 0, 0.0, "")


def test_what_an_order_makes_of_each_state() -> None:
    assert ao.ordering(ao.Cert(ao.ISSUED, 0.0, 100.0), 70.0) == ao.RENEWING
    assert ao.ordering(ao.Cert(ao.PENDING), 0.0) == ao.PENDING
    assert ao.ordering(ao.Cert(ao.FAILED), 0.0) == ao.FAILED
    assert ao.ordering(ao.Cert(ao.FAILED, 0.0, 100.0), 50.0) == ao.RENEWING
    assert ao.ordering(ao.Cert(ao.RENEWING, 0.0, 100.0), 50.0) == ao.RENEWING


def test_a_removed_domain_is_never_served() -> None:
    assert not ao.serve(ao.Cert(ao.REVOKING, 0.0, 100.0), 50.0)
    assert not ao.serve(ao.Cert(ao.PENDING), 50.0)


def test_the_state_in_words() -> None:
    now = 1000.0
    assert ao.describe(ao.Cert(ao.ISSUED, 0.0, now + 30 * DAY), "", now) == \
        "issued, expires in 30 d"
    assert ao.describe(ao.Cert(ao.PENDING), "", now) == "pending: being ordered"
    assert ao.describe(ao.Cert(ao.FAILED, attempts=3, next_attempt_at=now + 240), "DNS",
                       now) == "failed 3 time(s), next try in 4 min: DNS"
    assert ao.describe(ao.Cert(ao.RENEWING, 0.0, now - 7200, 5, now + 60), "refused",
                       now) == ("renewing (expired 2 h ago): failed 5 time(s), next try "
                                "in 1 min: refused")
    assert ao.describe(ao.Cert(ao.RENEWING, 0.0, now + 10), "", now) == \
        "renewing, expires in 10 s"
    assert ao.describe(ao.Cert(ao.REVOKING), "", now).startswith("revoking")


def test_the_server_refuses_a_policy_that_makes_no_sense() -> None:
    import pytest

    from dinp.config import ServerConfig
    from dinp.errors import ConfigError
    from dinp.roles.certificates import policy

    assert policy(ServerConfig()) == ao.Policy(2 / 3, 60.0, 21600.0)
    for bad, word in (({"acme_renew_after": 1.0}, "acme_renew_after"),
                      ({"acme_renew_after": 0.0}, "acme_renew_after"),
                      ({"acme_retry_base": 0.0}, "acme_retry_base"),
                      ({"acme_retry_base": 10.0, "acme_retry_max": 5.0}, "acme_retry_max"),
                      ({"acme_ca_bundle": "/nonexistent/ca.pem"}, "acme_ca_bundle")):
        with pytest.raises(ConfigError, match=word):
            policy(ServerConfig(**bad))


def test_attention_calls_out_failed_expiring_and_failing_renewals_only() -> None:
    now = 1_000_000_000.0
    assert ao.attention(ao.Cert(ao.ISSUED, 0.0, now + 60 * DAY), "", now) == ""
    assert ao.attention(ao.Cert(ao.PENDING), "", now) == ""
    assert ao.attention(ao.Cert(ao.FAILED, attempts=2), "DNS problem: NXDOMAIN", now) == \
        "no certificate: DNS problem: NXDOMAIN"
    assert ao.attention(ao.Cert(ao.ISSUED, 0.0, now + 3 * DAY), "", now) == \
        "expires in 3 d"
    assert ao.attention(ao.Cert(ao.RENEWING, 0.0, now + 5 * DAY, 4), "refused", now) == \
        "expires in 5 d; renewal failed: refused"
    assert ao.attention(ao.Cert(ao.RENEWING, 0.0, now + 50 * DAY, 1), "timeout", now) == \
        "renewal failed 1 time(s): timeout"
    assert ao.attention(ao.Cert(ao.RENEWING, 0.0, now + 50 * DAY), "", now) == ""
    assert ao.attention(ao.Cert(ao.REVOKING, 0.0, now + DAY), "", now) == ""


def test_a_short_lived_certificate_is_called_out_only_when_renewals_lag() -> None:
    """A 6-day certificate has less than 14 days left from the start: it is called out
    only once it is near its end (a sixth of its lifetime), not while fresh."""
    now = 1_000_000_000.0
    fresh = ao.Cert(ao.ISSUED, now - DAY, now + 5 * DAY)
    assert ao.attention(fresh, "", now) == ""
    late = ao.Cert(ao.RENEWING, now - 5.5 * DAY, now + 0.5 * DAY, 3)
    assert ao.attention(late, "timeout", now) == "expires in 12 h; renewal failed: timeout"
    # Without its start, the fixed threshold.
    assert ao.attention(ao.Cert(ao.ISSUED, None, now + 5 * DAY), "", now) == "expires in 5 d"
