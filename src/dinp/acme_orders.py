"""When a custom domain's certificate is ordered, renewed, retried or revoked: pure rules,
no I/O (the leading server carries them out, see roles/certificates.py).

The states of a certificate (the `certificates` table):

- `pending`: asked for (`dinp app domains add … --tls`), not issued yet; ordered at once.
- `issued`: valid and served by every router; renewed once `renew_after` (two thirds
  by default) of its lifetime has passed.
- `renewing`: still valid and served, but due: a new one is being ordered, or the last
  order failed and is retried with backoff.
- `failed`: no valid certificate (the first order failed, or the certificate expired
  while renewals failed); retried with backoff. The domain is served over plain HTTP only.
- `revoking`: its domain was removed: no router serves it any more; it is revoked (best
  effort), then the row goes.

Retries wait `retry_base` seconds after the first failure, doubling with each failure
in a row up to `retry_max`, so a domain whose DNS points elsewhere does not hit the
CA's rate limits, yet is tried again within `retry_max` once it is fixed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

PENDING = "pending"
ISSUED = "issued"
RENEWING = "renewing"
FAILED = "failed"
REVOKING = "revoking"
STATES = (PENDING, ISSUED, RENEWING, FAILED, REVOKING)
# The longest error text kept (a CA's problem document can be long).
MAX_ERROR = 1000
# A certificate this close to its end is called out (`attention`): renewals start at two
# thirds of the lifetime (30 days before the end of a 90-day one), so one this close has
# failed to renew for weeks.
EXPIRES_SOON = 14 * 86400.0
# ... or, for a short-lived one (Let's Encrypt's 6-day certificates), this part of its
# lifetime: half of the time renewals have had, so a fresh one is never called out.
EXPIRES_SOON_PART = 1 / 6


@dataclass(frozen=True)
class Policy:
    """How early to renew (a fraction of the lifetime) and how to back off on failure."""

    renew_after: float = 2 / 3
    retry_base: float = 60.0
    retry_max: float = 6 * 3600.0


@dataclass(frozen=True)
class Cert:
    """What the rules need of a certificate row."""

    state: str
    not_before: float | None = None
    not_after: float | None = None
    attempts: int = 0
    next_attempt_at: float = 0.0

    def valid(self, now: float) -> bool:
        """It holds a certificate that has not expired."""
        return self.not_after is not None and now < self.not_after


@dataclass(frozen=True)
class Outcome:
    """A row's state after an order: the new state, failures in a row, the next try;
    for a failure, when it was decided (the next try is `retry_in` seconds later)."""

    state: str
    attempts: int
    next_attempt_at: float
    last_error: str
    at: float = 0.0

    @property
    def retry_in(self) -> float:
        return self.next_attempt_at - self.at


def retry_delay(attempts: int, policy: Policy) -> float:
    """Seconds to wait after `attempts` (1 or more) failures in a row: retry_base,
    doubled with each further failure, at most retry_max."""
    exponent = min(max(attempts, 1) - 1, 62)  # 2**63 seconds is past any cap
    return float(min(policy.retry_base * 2 ** exponent, policy.retry_max))


def renew_at(not_before: float, not_after: float, policy: Policy) -> float:
    """When a certificate valid from `not_before` to `not_after` is due for renewal."""
    return not_before + policy.renew_after * (not_after - not_before)


def due(cert: Cert, now: float, policy: Policy) -> bool:
    """Whether the leader should act on the certificate now (order, or revoke): a
    removed domain's at once, an issued one at its renewal time (at once when it has no
    dates), the others at their next attempt."""
    return now >= due_at(cert, policy)


def due_at(cert: Cert, policy: Policy) -> float:
    """When the certificate is next due (0: now)."""
    if cert.state == REVOKING:
        return 0.0
    if cert.state == ISSUED:
        if cert.not_before is None or cert.not_after is None:
            return 0.0
        return renew_at(cert.not_before, cert.not_after, policy)
    return cert.next_attempt_at


def ordering(cert: Cert, now: float) -> str:
    """The state while an order runs: an issued certificate goes on serving (renewing);
    a pending or failed one stays as it is until the order ends."""
    if cert.state == ISSUED or (cert.state == FAILED and cert.valid(now)):
        return RENEWING
    return cert.state


def failed(cert: Cert, error: str, now: float, policy: Policy) -> Outcome:
    """After an order failed: retried with backoff; a certificate that is still valid
    keeps serving (renewing), else the domain has none (failed)."""
    attempts = cert.attempts + 1
    state = RENEWING if cert.valid(now) else FAILED
    return Outcome(state, attempts, now + retry_delay(attempts, policy),
                   error.strip()[:MAX_ERROR] or "unknown error", now)


def issued() -> Outcome:
    return Outcome(ISSUED, 0, 0.0, "")


def serve(cert: Cert, now: float) -> bool:
    """Whether routers should serve it: it holds a valid certificate, and its domain has
    not been removed."""
    return cert.state != REVOKING and cert.valid(now)


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def describe(cert: Cert, last_error: str, now: float | None = None) -> str:
    """The certificate's state in words, for `dinp app domains list`."""
    now = time.time() if now is None else now
    expiry = ""
    if cert.not_after is not None:
        left = cert.not_after - now
        expiry = (f"expires in {_duration(left)}" if left > 0
                  else f"expired {_duration(-left)} ago")
    retry = f"next try in {_duration(cert.next_attempt_at - now)}"
    if cert.state == ISSUED:
        return f"issued, {expiry}"
    if cert.state == PENDING:
        return "pending: being ordered" if not cert.attempts else f"pending, {retry}"
    if cert.state == RENEWING:
        if cert.attempts:
            return (f"renewing ({expiry}): failed {cert.attempts} time(s), {retry}: "
                    f"{last_error}")
        return f"renewing, {expiry}"
    if cert.state == FAILED:
        return f"failed {cert.attempts} time(s), {retry}: {last_error}"
    return "revoking: the domain was removed"


def attention(cert: Cert, last_error: str, now: float | None = None) -> str:
    """Why the certificate needs someone to look, in words ("" when it does not): it
    failed (the domain is served over plain HTTP only), it expires within EXPIRES_SOON
    (a short-lived one: within EXPIRES_SOON_PART of its lifetime) or has expired, or its
    renewal keeps failing. `dinp app show` and the Dashboard
    show it in their warning colour."""
    now = time.time() if now is None else now
    if cert.state == REVOKING:
        return ""
    if cert.state == FAILED:
        return f"no certificate: {last_error or 'the order failed'}"
    soon = EXPIRES_SOON
    if cert.not_before is not None and cert.not_after is not None:
        soon = min(soon, EXPIRES_SOON_PART * (cert.not_after - cert.not_before))
    if cert.not_after is not None and cert.not_after - now < soon:
        left = cert.not_after - now
        when = (f"expires in {_duration(left)}" if left > 0
                else f"expired {_duration(-left)} ago")
        return when + (f"; renewal failed: {last_error}" if cert.attempts and last_error
                       else "")
    if cert.state == RENEWING and cert.attempts:
        return f"renewal failed {cert.attempts} time(s): {last_error}"
    return ""
