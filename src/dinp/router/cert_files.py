"""The operator's certificate files (`tls_cert_file`, `tls_key_file`), watched: a renewed
certificate serves from the next handshake on, without a restart or a signal.

Renewals replace these files while the router runs: certbot points the symlinks of
`live/` at new files, a Kubernetes secret volume swaps its directory, an operator copies a
certificate and then its key. A router that kept the certificate it started with would
serve it until it expired, the failure nobody sees coming (nginx and HAProxy need a reload
for it). So every CHECK_INTERVAL seconds each worker reads both files (through symlinks;
a few kilobytes) and compares their digest with that of the files in use: timestamps
would miss a file rewritten within their granularity, and would reload a file merely
touched. A change is loaded once it has held still for one more look, so a pair written
one file after the other is not tried half-way, and it is loaded in a thread, never on a
handshake.

Files that do not load (the key of another certificate, a broken or empty file, a file
gone) never replace a certificate that works: the one loaded before serves on, the log
says once what is wrong with those files, and `dinp_router_tls_file_stale` is 1 until
files that load are there. `dinp_router_tls_file_expiry_timestamp_seconds` is when the
certificate in use expires, for an alert well before it does.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from dinp.errors import ConfigError
from dinp.router.tls import Certificate, load_files

log = logging.getLogger("dinp.router")

CHECK_INTERVAL = 2.0  # seconds between two looks at the files
EXPIRY_WARNING = datetime.timedelta(days=14)  # a certificate this close to its end is logged

# The files' contents, as a digest per file (None: it cannot be read).
Stamp = tuple[bytes | None, ...]


def stamp(*paths: str) -> Stamp:
    out: list[bytes | None] = []
    for path in paths:
        try:
            out.append(hashlib.sha256(Path(path).read_bytes()).digest())
        except OSError:
            out.append(None)
    return tuple(out)


def expiry_warning(cert: Certificate, cert_file: str, now: datetime.datetime | None = None,
                   ) -> str | None:
    """What to warn of when the certificate has expired or soon will, else None."""
    if cert.expires is None:
        return None
    now = now or datetime.datetime.now(datetime.UTC)
    day = cert.expires.date().isoformat()
    if cert.expires <= now:
        return f"the TLS certificate {cert_file} expired on {day}: clients refuse it"
    if cert.expires - now <= EXPIRY_WARNING:
        return f"the TLS certificate {cert_file} expires on {day}: renew it"
    return None


class CertFiles:
    """The operator's certificate, loaded from its files now (ConfigError if they do not
    load) and again whenever they change, once `start`ed."""

    def __init__(self, cert_file: str, key_file: str) -> None:
        self.cert_file, self.key_file = cert_file, key_file
        self._paths = (cert_file, key_file) if key_file else (cert_file,)
        # Taken before reading: a change made while the files are read is seen after.
        self._stamp = stamp(*self._paths)
        self.certificate = load_files(cert_file, key_file)
        self.stale = False  # the files changed and do not load: the one before serves
        self._seen: Stamp | None = None  # a change seen at the last look, not yet loaded
        self._refused: Stamp | None = None  # files that did not load (said once)
        self._serve: Callable[[Certificate], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def expires(self) -> float | None:
        """When the certificate in use expires (a Unix time), if it says."""
        expires = self.certificate.expires
        return expires.timestamp() if expires is not None else None

    def warn_expiry(self) -> None:
        """Log a warning if the certificate in use has expired or soon will."""
        warning = expiry_warning(self.certificate, self.cert_file)
        if warning:
            log.warning("%s", warning)

    def start(self, loop: asyncio.AbstractEventLoop,
              serve: Callable[[Certificate], None]) -> None:
        """Look at the files from now on; `serve` is given each certificate reloaded."""
        if self._loop is not None:
            return
        self._loop, self._serve = loop, serve
        self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
        self._loop = None

    def _schedule(self) -> None:
        if self._loop is not None:
            self._timer = self._loop.call_later(CHECK_INTERVAL, self._look)

    def _look(self) -> None:
        now = stamp(*self._paths)
        if now == self._stamp:  # the files in use (again)
            self._seen, self.stale = None, False
        elif now == self._refused:  # already tried, and said why
            self._seen = None
        elif now != self._seen:  # changed since the last look: wait until it holds still
            self._seen = now
        else:
            assert self._loop is not None
            self._seen = None
            self._task = self._loop.create_task(self._load(now), name="dinp-tls-files")
            return  # _load schedules the next look
        self._schedule()

    async def _load(self, now: Stamp) -> None:
        try:
            cert = await asyncio.to_thread(load_files, self.cert_file, self.key_file)
        except ConfigError as exc:
            self._refused, self.stale = now, True
            log.error("%s; the certificate loaded before serves on until files that load "
                      "are there", exc.message)
        except Exception:  # a bug must not stop the watching for good
            log.exception("router bug while reloading %s", self.cert_file)
            self._refused, self.stale = now, True
        else:
            self._stamp, self._refused, self.stale = now, None, False
            self.certificate = cert
            if self._serve is not None:
                self._serve(cert)
            until = (cert.expires.strftime("%Y-%m-%d %H:%M UTC") if cert.expires
                     else "no expiry given")
            log.info("the TLS certificate %s changed: serving it (%s; valid until %s)",
                     self.cert_file, ", ".join(cert.names), until)
            self.warn_expiry()
        finally:
            self._task = None
            self._schedule()
