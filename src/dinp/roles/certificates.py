"""The leader's ACME work: order the certificates of custom domains added with TLS,
renew them, retry failures with backoff, revoke those of removed domains.

Only the leading server orders (one account, one order per domain at a time: the CA's
rate limits count per cluster, not per router). The rules of when are in
acme_orders.py; this module carries them out: the blocking ACME library runs on a
thread of its own (a slow CA must hold up neither the event loop nor the database
queue), the HTTP-01 answers go out in the route table, and an order is answered only
once every live router serves them. Everything an order decides is written with the
leader's fence, so a server that lost the lease without knowing it changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from dinp import acme_orders
from dinp.acme_client import AcmeDirectory, AcmeFailure, Issued, new_account_key, words
from dinp.config import ServerConfig
from dinp.errors import ConfigError, Unavailable
from dinp.metrics import ServerMetrics
from dinp.models import CertificateRow
from dinp.store import NotLeader, Store, cert_rules

log = logging.getLogger(__name__)
T = TypeVar("T")


class Leader(Protocol):
    """What the certifier needs of the server it runs in (roles/server.py's Server)."""

    config: ServerConfig
    store: Store
    metrics: ServerMetrics
    leading: bool
    challenges: dict[str, str]  # the HTTP-01 answers the route table carries

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    def fence(self) -> tuple[str, int] | None: ...

    def step_down(self, why: str) -> None: ...

    async def publish_challenges(self, timeout: float) -> int: ...

    async def routers_took(self, rev: int, timeout: float) -> bool: ...

    async def desired_changed(self) -> None: ...


def policy(config: ServerConfig, *, section: str = "server",
           flags: tuple[str, ...] = ()) -> acme_orders.Policy:
    """The renewal and retry policy of the server's configuration, checked. An error
    names the key where the user sets it: the dinp.toml `section`, and the flag for
    keys in `flags` (`dinp up` takes the ACME keys in [up], some as flags)."""
    def where(key: str) -> str:
        flag = f"--{key.replace('_', '-')}, " if key in flags else ""
        return f"{key} ({flag}[{section}] in dinp.toml, or DINP_{key.upper()})"

    if not 0 < config.acme_renew_after < 1:
        raise ConfigError(f"{where('acme_renew_after')} = {config.acme_renew_after:g} is "
                          "not a fraction between 0 and 1 (the default renews at 2/3 of the "
                          "lifetime)")
    if not 0 < config.acme_retry_base <= config.acme_retry_max:
        raise ConfigError(f"{where('acme_retry_base')} and acme_retry_max must be "
                          "positive, the base no longer than the maximum")
    if config.acme_ca_bundle and not Path(config.acme_ca_bundle).is_file():
        raise ConfigError(f"{where('acme_ca_bundle')} = {config.acme_ca_bundle} is not a "
                          "file")
    return acme_orders.Policy(config.acme_renew_after, config.acme_retry_base,
                              config.acme_retry_max)


class Certifier:
    def __init__(self, server: Leader) -> None:
        self.server = server
        self.config = server.config
        self.policy = policy(server.config)
        self._wake = asyncio.Event()
        self._directory: AcmeDirectory | None = None
        # What the last look at the table found, by domain (for /metrics).
        self.known: dict[str, acme_orders.Cert] = {}

    def wake(self) -> None:
        """Look for work now (a domain added or removed) instead of at the next tick."""
        self._wake.set()

    def close(self) -> None:
        """Nothing to wait for: an ACME call in flight ends with the process."""

    async def run(self) -> None:
        """While leading: act on every certificate that is due, then sleep until the next
        one is (at most acme_interval, to see changes made through other servers)."""
        while True:
            wait = self.config.acme_interval
            if not self.server.leading:
                self.known = {}  # the leader's /metrics say it, not a stale copy here
            else:
                try:
                    wait = min(wait, await self.tick())
                except NotLeader as exc:
                    self.server.step_down(str(exc))
                except Unavailable as exc:
                    log.warning("certificates: nothing done, %s", exc)
                except Exception:  # a bug must not stop renewals for good
                    log.exception("certificate work failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(wait, 0.05))
            self._wake.clear()

    async def tick(self) -> float:
        """Act on what is due now; the seconds until the next certificate is due (0
        after acting: look again at once, with what the work changed)."""
        rows = await self.server.db(self.server.store.certificates)
        self.known = {r.domain: cert_rules(r) for r in rows}
        worked = False
        for row in rows:
            if not self.server.leading:
                break
            if not acme_orders.due(cert_rules(row), time.time(), self.policy):
                continue
            worked = True
            if row.state == acme_orders.REVOKING:
                await self._revoke(row)
            else:
                await self._order(row)
        if worked:
            return 0.0
        later = [acme_orders.due_at(c, self.policy) for c in self.known.values()]
        return min(later, default=self.config.acme_interval) - time.time()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking ACME call on a thread of its own, one call at a time (the
        certifier awaits each). A daemon thread, not an executor's: a server stopping
        while the CA is slow exits at once, instead of waiting up to acme_timeout for
        the call to end (the order is simply made again by the next leader)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(result: T | None, error: BaseException | None) -> None:
            if future.done():  # cancelled: the server is stopping
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]

        def work() -> None:
            try:
                result, error = fn(*args), None
            except Exception as exc:
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(settle, result, error)

        threading.Thread(target=work, name="dinp-acme", daemon=True).start()
        return await future

    async def _connect(self) -> AcmeDirectory:
        """The directory with this cluster's account: its key made once and kept in the
        database (the first leader to make one wins), registered at the CA."""
        if self._directory is not None:
            return self._directory
        url, email, store = self.config.acme_directory, self.config.acme_email, \
            self.server.store
        row = await self.server.db(store.acme_account, url)
        if row is None:
            key = await self._call(new_account_key)
            row = await self.server.db(store.save_acme_account, url, key, "", email)
        directory = AcmeDirectory(url, account_key_pem=row.key_pem, email=email,
                                  ca_bundle=self.config.acme_ca_bundle,
                                  timeout=self.config.acme_timeout)
        uri = await self._call(directory.connect)
        if (uri, email) != (row.uri, row.email):
            await self.server.db(store.save_acme_account, url, row.key_pem, uri, email)
            log.info("ACME account %s at %s", uri, url)
        self._directory = directory
        return directory

    async def _order(self, row: CertificateRow) -> None:
        """Order (or renew) the certificate of `row.domain`; store it, or the failure."""
        store, fence, domain = self.server.store, self.server.fence(), row.domain
        rules = cert_rules(row)
        await self.server.db(store.certificate_ordering, domain,
                             acme_orders.ordering(rules, time.time()), fence=fence)
        log.info("certificate for %s: ordering from %s", domain, self.config.acme_directory)
        try:
            issued = await self._issue(domain)
        except NotLeader:
            raise
        except Exception as exc:  # whatever it was, the domain backs off and says why
            if not isinstance(exc, AcmeFailure | Unavailable):
                log.exception("certificate for %s: order failed unexpectedly", domain)
            self._directory = None  # connect afresh next time (the CA may have lost us)
            outcome = acme_orders.failed(rules, words(exc), time.time(), self.policy)
            log.warning("certificate for %s: order failed (%d time(s) in a row; next try "
                        "in %.0f s): %s", domain, outcome.attempts, outcome.retry_in,
                        outcome.last_error)
            self.server.metrics.certificate_failures.inc()
            await self.server.db(store.certificate_failed, domain, outcome, fence=fence)
            return
        kept = await self.server.db(
            store.certificate_issued, domain, chain_pem=issued.chain_pem,
            key_pem=issued.key_pem, not_before=issued.not_before,
            not_after=issued.not_after, fence=fence)
        if not kept:  # the domain was removed while it was ordered
            await self._revoke_chain(domain, issued.chain_pem)
            return
        log.info("certificate for %s %s (serial %s), valid until %s", domain,
                 "renewed" if row.chain_pem else "issued", issued.serial,
                 time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(issued.not_after)))
        self.server.metrics.certificates_issued.inc()
        await self.server.desired_changed()  # the next table carries it to the routers

    async def _issue(self, domain: str) -> Issued:
        """One ACME order, its HTTP-01 answers served by every router meanwhile."""
        if not self.config.acme_directory:  # TLS was asked for while it was set
            raise AcmeFailure("no acme_directory is configured ([server] of dinp.toml; "
                              "with dinp up: --acme-directory, or [up])")
        directory = await self._connect()
        order = await self._call(directory.begin, domain)
        if not order.answers:  # every authorization was valid already
            return await self._call(directory.finish, order)
        self.server.challenges.update(order.answers)
        try:
            rev = await self.server.publish_challenges(self.config.router_sync_timeout)
            await self.server.routers_took(rev, self.config.router_sync_timeout)
            return await self._call(directory.finish, order)
        finally:
            for token in order.answers:
                self.server.challenges.pop(token, None)
            with contextlib.suppress(Unavailable):
                await self.server.publish_challenges(self.config.router_sync_timeout)

    async def _revoke(self, row: CertificateRow) -> None:
        """A removed domain's certificate: revoked at the CA (best effort: a failure is
        logged and recorded in its event), then forgotten."""
        error = await self._revoke_chain(row.domain, row.chain_pem)
        await self.server.db(self.server.store.certificate_revoked, row.domain, error,
                             fence=self.server.fence())

    async def _revoke_chain(self, domain: str, chain_pem: str) -> str:
        """Revoke; the reason it failed, or "" once revoked."""
        if not self.config.acme_directory:
            error = "no acme_directory is configured"
        else:
            try:
                await self._call((await self._connect()).revoke, chain_pem)
                log.info("certificate for %s revoked (the domain was removed)", domain)
                return ""
            except AcmeFailure as exc:
                self._directory = None
                error = str(exc)
        log.warning("certificate for %s not revoked: %s", domain, error)
        return error
