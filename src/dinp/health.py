"""Instance health checks: a TCP connect to the published port, or an HTTP GET of the
app's health path. An instance is `starting` until its first success, `healthy` after it,
and `unhealthy` after `FAILURES` checks in a row fail. One that stays `starting` or
`unhealthy` too long is stuck: the agent replaces it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field

FAILURES = 3
CHECK_TIMEOUT = 2.0
# Docker's userland proxy accepts a connection on a published port before the app in the
# container listens, then closes it: a connection must stay open this long to count.
SETTLE = 0.15


@dataclass(frozen=True)
class Answer:
    """One check's outcome; `detail` says what the check saw when it failed, in words
    (it reaches `dinp app show` and the reason a deploy failed)."""

    ok: bool
    detail: str = ""


@dataclass
class HealthState:
    status: str = "starting"
    failures: int = 0
    # When the current status began (monotonic seconds).
    since: float = field(default_factory=time.monotonic)
    detail: str = ""  # the last failed check's answer; "" once a check passes

    def record(self, answer: Answer) -> bool:
        """Record one check; return True when the reported status changed."""
        before = self.status
        if answer.ok:
            self.status, self.failures, self.detail = "healthy", 0, ""
        else:
            self.failures += 1
            self.detail = answer.detail
            if self.status == "healthy" and self.failures >= FAILURES:
                self.status = "unhealthy"
        if self.status != before:
            self.since = time.monotonic()
        return self.status != before

    def stuck(self, now: float, timeout: float) -> str | None:
        """Why the instance should be replaced, if it has been starting or unhealthy for
        longer than `timeout`; else None."""
        return self.snapshot().stuck(now, timeout)

    def snapshot(self) -> Health:
        return Health(self.status, self.since, self.detail)


@dataclass(frozen=True)
class Health:
    """An instance's health at one moment: what a plan is made from."""

    status: str
    since: float  # when this status began (monotonic seconds)
    detail: str = ""

    def stuck(self, now: float, timeout: float) -> str | None:
        """Why the instance should be replaced, if it has been starting or unhealthy for
        longer than `timeout`; else None."""
        if self.status == "healthy" or now - self.since < timeout:
            return None
        last = f"; last check: {self.detail}" if self.detail else ""
        if self.status == "starting":
            return f"never became healthy in {timeout:.0f} s{last}"
        return f"unhealthy for {timeout:.0f} s{last}"


async def check(host: str, port: int, path: str | None, *,
                timeout: float = CHECK_TIMEOUT) -> Answer:
    """One check: ok if the instance accepts a connection that stays open (and answers
    `path` with a status below 400); else what was seen instead."""
    what = f"GET {path}" if path else f"TCP port {port}"
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        return Answer(False, f"{what}: no connection within {timeout:g} s")
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        return Answer(False, f"{what}: {why} (does the app listen on $PORT?)")
    try:
        if path is None:
            try:
                if await asyncio.wait_for(reader.read(1), SETTLE) == b"":
                    return Answer(False, f"{what}: the connection was closed at once (does "
                                  "the app listen on $PORT?)")
                return Answer(True)
            except TimeoutError:
                return Answer(True)  # open and quiet, as an HTTP server waiting for a request
        request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                   "User-Agent: dinp-health\r\nConnection: close\r\n\r\n")
        writer.write(request.encode())
        status_line = await asyncio.wait_for(reader.readline(), timeout)
        parts = status_line.split()
        if len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400:
            return Answer(True)
        if not status_line:
            return Answer(False, f"{what}: the connection was closed without an answer")
        shown = status_line.decode("latin-1").strip()[:80]
        return Answer(False, f"{what} answered {shown!r}")
    except TimeoutError:
        return Answer(False, f"{what}: no answer within {timeout:g} s")
    except (OSError, ValueError) as exc:
        return Answer(False, f"{what}: {exc}")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
