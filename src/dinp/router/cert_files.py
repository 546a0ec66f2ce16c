"""The operator's certificate files (`tls_cert_file`, `tls_key_file`), watched: a renewed
certificate serves from the next handshake on, without a restart or a signal.

Renewals replace these files while the router runs: certbot points the symlinks of
`live/` at new files, a Kubernetes secret volume swaps its directory, an operator copies a
certificate and then its key. A router that kept the certificate it started with would
serve it until it expired, the failure nobody sees coming (nginx and HAProxy need a reload
for it). So every CHECK_INTERVAL seconds each worker reads both files in a thread
(through symlinks; a few kilobytes) and compares them with the pair in use: timestamps
would miss a file rewritten within their granularity, and would reload a file merely
touched. A change is loaded once it has held still for one more look, so a pair written
one file after the other is not tried half-way, and what is loaded is the very text that
was compared, in a thread, never on a handshake.

Files that do not load (the key of another certificate, a broken or empty file, a file
gone) never replace a certificate that works: the one loaded before serves on, each
worker logs once what is wrong with those files, and `dinp_router_tls_file_stale` is 1
until files that load are there. The supervisor of several workers watches them too,
quietly, and hands the pair in use to a worker it (re)starts, so a worker restarted while
the files are broken still serves. `dinp_router_tls_file_expiry_timestamp_seconds` is when
the certificate in use expires, for an alert well before it does; one process per router
also logs a warning when it is 14 days or less away, at start and once a day.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable

from dinp.errors import ConfigError
from dinp.router.tls import Certificate, load_files, read_files

log = logging.getLogger("dinp.router")

CHECK_INTERVAL = 2.0  # seconds between two looks at the files
EXPIRY_WARNING = datetime.timedelta(days=14)  # a certificate this close to its end is logged
WARN_EVERY = 86400.0  # seconds between two such warnings

Texts = tuple[str, str]  # (certificate chain, key) PEM
# What a look finds: the files' texts, or why they cannot be read.
Found = Texts | str


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
    """The operator's certificate, loaded now (ConfigError if it does not load) from its
    files, or from `texts` (the pair a supervisor holds), and again whenever the files
    change, once `start`ed. `tell`: log what changes and what does not load (a worker
    does, its supervisor does not). One process per router warns of the expiry
    (`warn_for_router`)."""

    def __init__(self, cert_file: str, key_file: str, *, texts: Texts | None = None,
                 tell: bool = True) -> None:
        self.cert_file, self.key_file = cert_file, key_file
        self.tell = tell
        self.warn_daily = False  # see warn_for_router
        self.texts: Texts = texts or read_files(cert_file, key_file)  # the pair in use
        self.certificate = load_files(cert_file, key_file, self.texts)
        self.stale = False  # the files changed and do not load: the one before serves
        self._seen: Found | None = None  # a change seen at the last look, not yet loaded
        self._refused: Found | None = None  # files that did not load (said once)
        self._serve: Callable[[Certificate], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._warned = time.monotonic()

    @property
    def expires(self) -> float | None:
        """When the certificate in use expires (a Unix time), if it says."""
        expires = self.certificate.expires
        return expires.timestamp() if expires is not None else None

    def warn_for_router(self) -> None:
        """Be the process of the router that warns of the expiry: now, and daily."""
        self.warn_daily = True
        self.warn_expiry()

    def warn_expiry(self) -> None:
        """Log a warning if the certificate in use has expired or soon will."""
        self._warned = time.monotonic()
        warning = expiry_warning(self.certificate, self.cert_file)
        if warning:
            log.warning("%s", warning)

    def start(self, serve: Callable[[Certificate], None] | None = None) -> None:
        """Look at the files from now on (on the running loop); `serve` is given each
        certificate reloaded."""
        if self._task is None:
            self._serve = serve
            self._task = asyncio.get_running_loop().create_task(self._watch(),
                                                                name="dinp-tls-files")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            try:
                await self.look()
            except Exception:  # a bug must not stop the watching for good
                log.exception("router bug while watching %s", self.cert_file)
            if self.warn_daily and time.monotonic() - self._warned >= WARN_EVERY:
                self.warn_expiry()

    def _read(self) -> Found:
        try:
            return read_files(self.cert_file, self.key_file)
        except ConfigError as exc:
            return exc.message

    async def look(self) -> None:
        """One look at the files: load them if they changed and have held still since
        the last look."""
        now = await asyncio.to_thread(self._read)
        if now == self.texts:  # the pair in use (again)
            self._seen, self.stale = None, False
        elif now == self._refused:  # already tried, and said why
            self._seen, self.stale = None, True
        elif now != self._seen:  # changed since the last look: wait until it holds still
            self._seen = now
        else:
            self._seen = None
            await self._load(now)

    async def _load(self, now: Found) -> None:
        try:
            if isinstance(now, str):  # not readable: why
                raise ConfigError(now)
            cert = await asyncio.to_thread(load_files, self.cert_file, self.key_file, now)
        except ConfigError as exc:
            self._refused, self.stale = now, True
            if self.tell:
                log.error("%s; the certificate loaded before serves on until files that "
                          "load are there", exc.message)
            return
        self.texts, self.certificate = now, cert
        self._refused, self.stale = None, False
        if self._serve is not None:
            self._serve(cert)
        if self.tell:
            until = (cert.expires.strftime("%Y-%m-%d %H:%M UTC") if cert.expires
                     else "no expiry given")
            log.info("the TLS certificate %s changed: serving it (%s; valid until %s)",
                     self.cert_file, ", ".join(cert.names), until)
        if self.warn_daily:
            self.warn_expiry()
