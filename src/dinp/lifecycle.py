"""Start-up and shut-down shared by every role (after uvicorn's server lifecycle).

SIGINT/SIGTERM ask for a graceful stop; a second one forces the exit.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from dinp.errors import Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
_forced = threading.Event()  # a second signal arrived: stopping without grace
# After a second signal, what still waits (not on a grace period) is cancelled this late.
FORCE_CANCEL_AFTER = 1.0


def forced() -> bool:
    """True once a second SIGINT/SIGTERM asked to stop without waiting: grace periods
    (requests in flight) end at once."""
    return _forced.is_set()


def stop_event() -> asyncio.Event:
    """Set by the first SIGINT/SIGTERM. A second one sets `forced()`, which ends the grace
    periods, and cancels the role's main task a second later if it is still waiting on
    something else: either way the `finally` blocks still close the database, the Docker
    client and open files (os._exit would skip them), and the exit code is 1."""
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    main = asyncio.current_task()

    def on_signal(sig: signal.Signals) -> None:
        if event.is_set():
            log.warning("%s again: exiting now, without waiting for requests in flight",
                        sig.name)
            _forced.set()
            if main is not None:
                loop.call_later(FORCE_CANCEL_AFTER, main.cancel)
            return
        log.info("%s received: shutting down", sig.name)
        event.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    return event


async def run_until_stopped(*tasks: Awaitable[object]) -> None:
    """Run the role's tasks until a signal arrives or one of them fails."""
    stop = stop_event()
    running = [asyncio.ensure_future(t) for t in tasks]
    stopper = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([*running, stopper], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and not task.cancelled() and task.exception():
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in [*running, stopper]:
            task.cancel()
        await asyncio.gather(*running, stopper, return_exceptions=True)


class BadRequestLogFilter(logging.Filter):
    """aiohttp logs every malformed request (a 10 KB request line, a broken header) as an
    ERROR with a traceback: anyone could fill the log. Such a request is the client's
    fault: one short WARNING line at most every `interval` seconds, saying how many were
    left out. Errors of dinp's own handlers still log in full."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self.interval = interval
        self._last = -interval
        self._skipped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        now = time.monotonic()
        if now - self._last < self.interval:
            self._skipped += 1
            return False
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        reason = (getattr(exc, "message", "") or type(exc).__name__).splitlines()[0][:120]
        more = f" ({self._skipped} more since)" if self._skipped else ""
        record.msg, record.args = "bad HTTP request from %s: %s%s", (remote, reason, more)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
        self._last, self._skipped = now, 0
        return True


def quiet_bad_requests() -> None:
    """Install BadRequestLogFilter on aiohttp's server logger (once per process)."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, BadRequestLogFilter) for f in logger.filters):
        logger.addFilter(BadRequestLogFilter())


async def start_site(app: web.Application, host: str, port: int,
                     setting: str = "") -> web.AppRunner:
    """Serve `app`; a port it cannot take is an error naming `setting` (see cannot_listen)."""
    quiet_bad_requests()
    # Requests still open after 5 s of shutdown are cut: nothing here is worth waiting for.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except OSError as exc:
        await runner.cleanup()
        raise cannot_listen(host, port, exc, setting) from exc
    return runner


def cannot_listen(host: str, port: int, exc: OSError, key: str = "") -> Unavailable:
    """The one error for a port a role cannot take (in use, no such address, …)."""
    where = f"another {key}" if key else "another address or port"
    return Unavailable(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                       hint=f"Another process uses that port? Choose {where}.")


def run(main: Callable[[], Coroutine[Any, Any, T]], *, fast_loop: bool = True) -> T:
    """asyncio.run with uvloop when it is installed (it is a dependency); a forced stop
    (a second signal) exits with code 1 once the `finally` blocks have run."""
    try:
        result = _run(main, fast_loop=fast_loop)
    except asyncio.CancelledError:
        if not _forced.is_set():
            raise
        raise SystemExit(1) from None
    if _forced.is_set():
        raise SystemExit(1)
    return result


def _run(main: Callable[[], Coroutine[Any, Any, T]], *, fast_loop: bool) -> T:
    if fast_loop and sys.platform != "win32":
        try:
            import uvloop

            result: T = uvloop.run(main())
            return result
        except ImportError:  # pragma: no cover
            pass
    return asyncio.run(main())
