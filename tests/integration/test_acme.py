"""Certificates by ACME against a real CA: Debian's Pebble, its mock DNS answering
127.0.0.1 for the test domains, `dinp server` ordering and `dinp router` answering the
HTTP-01 challenges on the port Pebble validates. A TLS client (Python's ssl, trusting
Pebble's root only) checks the chain and host name the router serves.

Issue, serve (also from a router started afterwards), renew, revoke on removal and on
app deletion, a failing challenge with its reason and backoff; and, in-process, the
refusals and the HTTPS settings flowing into the route table.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from dinp.routes import HttpsPolicy, RedisRouteStore
from tests.integration.test_api import Api, run
from tests.pebble import Pebble
from tests.support import Dinp, Proc, base_env, free_port, http_get, http_request, wait_for

IMAGE = "127.0.0.1:5000/hello:2"  # never started: no node runs here


@dataclass
class Acme:
    """Pebble, one `dinp router` and `dinp server` (SQLite, a private Redis)."""

    pebble: Pebble
    cli: Dinp
    server: Proc
    router: Proc
    env: dict[str, str]
    workdir: Path
    http_port: int
    https_port: int
    metrics_port: int

    def domains(self, app: str) -> dict[str, dict[str, Any]]:
        return {d["domain"]: d for d in self.cli.json("app", "domains", "list", app)}

    def certificate(self, app: str, domain: str) -> dict[str, Any]:
        cert: dict[str, Any] = self.domains(app)[domain]["certificate"]
        return cert

    def wait_state(self, app: str, domain: str, state: str, timeout: float = 60,
                   **fields: Any) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            cert = self.certificate(app, domain)
            if cert["state"] == state and all(cert[k] == v for k, v in fields.items()):
                return cert
            return None

        found: dict[str, Any] = wait_for(reached, timeout, f"{domain} {state} {fields}")
        return found

    def events(self, app: str) -> list[dict[str, Any]]:
        """The app's events, oldest first."""
        req = urllib.request.Request(
            f"{self.env['DINP_SERVER']}/api/v1/events?app={app}&limit=500",
            headers={"Authorization": f"Bearer {self.env['DINP_ADMIN_TOKEN']}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            rows: list[dict[str, Any]] = json.loads(resp.read())
        return rows[::-1]  # oldest first

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=10) as resp:
            return str(resp.read().decode())

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.output()[-4000:]}"
                         for p in (self.server, self.router))


def handshake(port: int, name: str, root: str) -> x509.Certificate:
    """A TLS handshake with the router as `name`, trusting `root` only and checking the
    host name; the certificate it served."""
    ctx = ssl.create_default_context(cadata=root)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=name) as tls:
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        head = tls.recv(4096)
        assert head.startswith(b"HTTP/1.1 "), head
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def serial(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def refused(port: int, name: str, root: str) -> bool:
    """The router refuses the handshake for `name` (it holds no certificate for it)."""
    try:
        handshake(port, name, root)
    except ssl.SSLError:
        return True
    return False


@contextlib.contextmanager
def acme_cluster(workdir: Path, *, validity: int = 0, database_url: str = "",
                 **settings: str) -> Iterator[Acme]:
    """Start the parts; `validity` is the seconds Pebble's certificates last (0: its
    default, years), `settings` more DINP_* for the server."""
    http_port, https_port, admin_port = free_port(), free_port(), free_port()
    api_port, metrics_port = free_port(), free_port()
    from tests.support import redis_server

    pebble = Pebble.start(workdir / "pebble", http_port=http_port, validity=validity)
    try:
        with redis_server() as redis:
            env = base_env(
                workdir,
                DINP_DATABASE_URL=database_url or f"sqlite:///{workdir / 'dinp.db'}",
                DINP_REDIS_URL=redis.url, DINP_CLUSTER_TOKEN=secrets.token_hex(16),
                DINP_ADMIN_TOKEN=secrets.token_hex(16), DINP_API_LISTEN=f"127.0.0.1:{api_port}",
                DINP_SERVER=f"http://127.0.0.1:{api_port}", DINP_DOMAIN="apps.test",
                DINP_ROUTER_URL=f"http://127.0.0.1:{http_port}",
                DINP_HTTP_LISTEN=f"127.0.0.1:{http_port}",
                DINP_HTTPS_LISTEN=f"127.0.0.1:{https_port}",
                DINP_ADMIN_LISTEN=f"127.0.0.1:{admin_port}", DINP_WORKERS="1",
                DINP_ACME_DIRECTORY=pebble.directory, DINP_ACME_EMAIL="ops@example.com",
                DINP_ACME_CA_BUNDLE=str(pebble.ca_bundle), DINP_ACME_INTERVAL="0.5",
                DINP_ACME_RETRY_BASE="1", DINP_ACME_RETRY_MAX="4", DINP_ACME_TIMEOUT="30",
                **settings)
            cli = Dinp(dict(env, DINP_TOKEN=env["DINP_ADMIN_TOKEN"]))
            server = Proc("server", ["server"],
                          dict(env, DINP_METRICS_LISTEN=f"127.0.0.1:{metrics_port}"),
                          workdir / "server.log").start()
            router = Proc("router", ["router"], env, workdir / "router.log").start()
            acme = Acme(pebble, cli, server, router, env, workdir, http_port, https_port,
                        metrics_port)
            try:
                wait_for(lambda: cli.run("app", "list", check=False).returncode == 0, 20,
                         "the server to answer")
                wait_for(lambda: http_get(f"127.0.0.1:{http_port}", "none.apps.test")[0]
                         == 404, 20, "the router to answer")
                yield acme
            except BaseException:
                print(acme.logs())
                print(pebble.log.read_text()[-3000:])
                raise
            finally:
                router.stop()
                server.stop()
    finally:
        pebble.stop()


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Acme]:
    with acme_cluster(tmp_path_factory.mktemp("acme")) as cluster:
        yield cluster


def create_app(acme: Acme, name: str) -> None:
    acme.cli.run("app", "create", name, "--image", IMAGE, "--instances", "0")


# -- against Pebble --------------------------------------------------------------------

def test_a_domain_added_with_tls_is_issued_and_served_by_every_router(
        acme: Acme, tmp_path: Path) -> None:
    create_app(acme, "shop")
    out = acme.cli.run("app", "domains", "add", "shop", "Shop.Example.COM", "--tls").stdout
    assert "shop.example.com added" in out and "being ordered" in out
    cert = acme.wait_state("shop", "shop.example.com", "issued")
    assert cert["attempts"] == 0 and cert["last_error"] == ""
    assert cert["not_after"] > time.time() + 86400 and cert["summary"].startswith("issued")
    root = acme.pebble.root()
    # The router serves it: the chain leads to Pebble's root, the name matches.
    served = wait_for(lambda: handshake(acme.https_port, "shop.example.com", root), 20,
                      "the router to serve the certificate")
    assert serial(served) == cert["serial"]
    assert acme.pebble.cert_status(cert["serial"])["Status"] == "Valid"
    # Another name is still refused, never given this certificate.
    assert refused(acme.https_port, "other.example.com", root)
    # Visible: the table in words, an event, the metrics.
    table = acme.cli.run("app", "domains", "list", "shop").stdout
    assert re.search(r"shop\.example\.com .*issued", table), table
    assert any(e["message"].startswith("certificate for shop.example.com issued, valid "
                                       "until") for e in acme.events("shop"))
    metrics = acme.metrics()
    expiry = re.search(r'^dinp_certificate_expiry_seconds\{domain="shop.example.com"\} (\S+)$',
                       metrics, re.M)
    assert expiry is not None and float(expiry.group(1)) > 86400, metrics
    assert re.search(r'^dinp_certificates\{state="issued"\} [1-9]', metrics, re.M)
    # The key is in no listing and no log.
    listing = acme.cli.run("app", "domains", "list", "shop", "--json").stdout
    assert "PRIVATE KEY" not in listing + acme.logs()
    # The CA was asked to validate only once the router served the answer.
    assert "did not take route table" not in acme.server.output()
    # The app's HTTPS policy reaches its custom domain: plain HTTP is redirected.
    acme.cli.run("app", "settings", "shop", "--https-redirect", "--hsts", "600")
    router = f"127.0.0.1:{acme.http_port}"
    _, headers, _ = wait_for(
        lambda: (r := http_request(router, "shop.example.com", "/cart?x=1"))[0] == 308 and r,
        20, "the redirect")
    assert headers["location"] == f"https://shop.example.com:{acme.https_port}/cart?x=1"
    # ... but never the ACME challenges (a token the router does not hold: its own 404).
    assert http_get(router, "shop.example.com", "/.well-known/acme-challenge/none")[0] == 404

    # A router started now has the certificate before it takes any TLS connection: its
    # first handshake that completes serves it.
    late_https, late_http, late_admin = free_port(), free_port(), free_port()
    late = Proc("late-router", ["router"], dict(
        acme.env, DINP_HTTPS_LISTEN=f"127.0.0.1:{late_https}",
        DINP_HTTP_LISTEN=f"127.0.0.1:{late_http}",
        DINP_ADMIN_LISTEN=f"127.0.0.1:{late_admin}"), tmp_path / "late.log").start()
    try:
        def first_handshake() -> x509.Certificate | None:
            try:
                return handshake(late_https, "shop.example.com", root)
            except ConnectionRefusedError:
                return None  # not listening yet

        assert serial(wait_for(first_handshake, 30, "the late router")) == cert["serial"]
    finally:
        late.stop()


def test_a_removed_domain_leaves_the_routers_and_is_revoked(acme: Acme) -> None:
    create_app(acme, "blog")
    acme.cli.run("app", "domains", "add", "blog", "blog.example.org", "--tls")
    acme.cli.run("app", "domains", "add", "blog", "www.blog.example.org", "--tls")
    first = acme.wait_state("blog", "blog.example.org", "issued")
    second = acme.wait_state("blog", "www.blog.example.org", "issued")
    root = acme.pebble.root()
    wait_for(lambda: handshake(acme.https_port, "blog.example.org", root), 20, "served")
    acme.cli.run("app", "domains", "remove", "blog", "blog.example.org")
    assert "blog.example.org" not in acme.domains("blog")
    wait_for(lambda: refused(acme.https_port, "blog.example.org", root), 20,
             "the router to drop the certificate")
    wait_for(lambda: acme.pebble.cert_status(first["serial"])["Status"] == "Revoked", 30,
             "the certificate to be revoked")
    wait_for(lambda: any(e["message"] == "certificate for blog.example.org revoked"
                         for e in acme.events("blog")), 10, "the event")
    # The other domain serves on; deleting the app revokes its certificate too.
    assert serial(handshake(acme.https_port, "www.blog.example.org", root)) == \
        second["serial"]
    acme.cli.run("app", "delete", "blog", "--yes")
    wait_for(lambda: acme.pebble.cert_status(second["serial"])["Status"] == "Revoked", 30,
             "the deleted app's certificate to be revoked")
    wait_for(lambda: refused(acme.https_port, "www.blog.example.org", root), 20,
             "the router to drop it")


def test_a_failing_challenge_is_shown_with_its_reason_retried_with_backoff_then_issued(
        acme: Acme) -> None:
    # Its DNS points elsewhere (where nothing listens): Pebble cannot reach a router.
    acme.pebble.resolve("broken.example.net", "127.0.0.2")
    create_app(acme, "broken")
    acme.cli.run("app", "domains", "add", "broken", "broken.example.net", "--tls")
    cert = wait_for(lambda: (c := acme.certificate("broken", "broken.example.net"))["attempts"]
                    >= 3 and c, 60, "three failed orders")
    assert cert["state"] == "failed" and cert["serial"] is None
    assert "127.0.0.2" in cert["last_error"] and "refused" in cert["last_error"], cert
    table = acme.cli.run("app", "domains", "list", "broken").stdout
    assert "failed" in table and "refused" in table, table
    failures = [e for e in acme.events("broken")
                if e["message"].startswith("certificate for broken.example.net failed")]
    assert len(failures) >= 3 and "127.0.0.2" in failures[0]["message"]
    # Backoff: 1 s after the first failure, 2 s after the second (DINP_ACME_RETRY_BASE=1),
    # and no try before its time (each event is at the time of its failure).
    assert "next try in 1 s" in failures[0]["message"]
    assert "next try in 2 s" in failures[1]["message"]
    assert failures[1]["at"] - failures[0]["at"] >= 1.0
    assert failures[2]["at"] - failures[1]["at"] >= 2.0
    assert re.search(r"^dinp_certificate_failures_total [3-9]", acme.metrics(), re.M)
    # No router serves a certificate for it meanwhile.
    root = acme.pebble.root()
    assert refused(acme.https_port, "broken.example.net", root)
    # Once DNS is fixed, the next retry (at most retry_max later) issues it.
    acme.pebble.resolve("broken.example.net", None)
    issued = acme.wait_state("broken", "broken.example.net", "issued", attempts=0)
    assert issued["last_error"] == ""
    wait_for(lambda: handshake(acme.https_port, "broken.example.net", root), 20, "served")


def test_certificates_are_renewed_before_they_expire(tmp_path: Path) -> None:
    # Pebble's certificates last 30 s here; renewed after half of it.
    with acme_cluster(tmp_path, validity=30, DINP_ACME_RENEW_AFTER="0.5") as acme:
        create_app(acme, "cart")
        acme.cli.run("app", "domains", "add", "cart", "cart.example.com", "--tls")
        first = acme.wait_state("cart", "cart.example.com", "issued")
        root = acme.pebble.root()
        wait_for(lambda: serial(handshake(acme.https_port, "cart.example.com", root))
                 == first["serial"], 20, "the first certificate served")
        renewed = wait_for(lambda: (c := acme.certificate("cart", "cart.example.com"))[
            "state"] == "issued" and c["serial"] != first["serial"] and c, 40,
            "the renewal")
        assert renewed["not_after"] > first["not_after"]
        wait_for(lambda: serial(handshake(acme.https_port, "cart.example.com", root))
                 == renewed["serial"], 20, "the renewed certificate served")
        assert any(e["message"].startswith("certificate for cart.example.com renewed")
                   for e in acme.events("cart"))


def test_only_the_leader_orders_and_the_next_one_keeps_the_account(
        tmp_path: Path, mysql_url: str) -> None:
    import sqlalchemy

    with acme_cluster(tmp_path, database_url=mysql_url) as acme:
        standby_port = free_port()
        standby = Proc("standby", ["server"], dict(
            acme.env, DINP_API_LISTEN=f"127.0.0.1:{standby_port}"),
            tmp_path / "standby.log").start()
        standby_cli = Dinp(dict(acme.cli.env,
                                DINP_SERVER=f"http://127.0.0.1:{standby_port}"))
        try:
            wait_for(lambda: standby_cli.run("app", "list", check=False).returncode == 0, 20,
                     "the standby to answer")
            create_app(acme, "news")
            # Asked through the standby, which forwards: the leader orders.
            standby_cli.run("app", "domains", "add", "news", "news.example.com", "--tls")
            acme.wait_state("news", "news.example.com", "issued")
            assert "certificate for news.example.com: ordering" in acme.server.output()
            assert "ordering" not in standby.output()
            engine = sqlalchemy.create_engine(mysql_url)
            try:
                def accounts() -> list[tuple[Any, ...]]:
                    with engine.connect() as conn:
                        return [tuple(r) for r in conn.execute(sqlalchemy.text(
                            "SELECT directory, uri FROM acme_accounts"))]

                (account,) = accounts()
                # The leader stops: the standby leads, and orders as the same account.
                assert acme.server.stop()
                wait_for(lambda: json.loads(http_get(f"127.0.0.1:{standby_port}", "127.0.0.1",
                                                     "/api/v1/health")[1])["leader"], 20,
                         "the standby to lead")
                standby_cli.run("app", "domains", "add", "news", "www.news.example.com",
                                "--tls")
                cert = wait_for(lambda: (c := {d["domain"]: d for d in standby_cli.json(
                    "app", "domains", "list", "news")}["www.news.example.com"][
                    "certificate"])["state"] == "issued" and c, 60, "issued by the standby")
                assert cert["attempts"] == 0
                assert "certificate for www.news.example.com: ordering" in standby.output()
                assert accounts() == [account]
            finally:
                engine.dispose()
        except BaseException:
            print(standby.output()[-4000:])
            raise
        finally:
            standby.stop()


# -- in-process: refusals and settings ---------------------------------------------------

async def _refusals(api: Api) -> None:
    assert (await api.call("POST", "/apps", body={"name": "web", "image": IMAGE,
                                                  "instances": 0}))[0] == 201
    # No acme_directory on this server: --tls is refused, nothing is added.
    status, reply = await api.call("POST", "/apps/web/domains",
                                   body={"domain": "www.example.com", "tls": True})
    assert status == 409 and "no ACME directory" in reply["error"], reply
    assert "acme_directory" in reply["hint"]
    assert (await api.call("GET", "/apps/web/domains"))[1] == []
    for bad in ("yes", 1, None):
        status, reply = await api.call("POST", "/apps/web/domains",
                                       body={"domain": "www.example.com", "tls": bad})
        assert status == 400 and reply["field"] == "tls", bad
    # A domain under the platform's own (the operator's wildcard covers it) is refused.
    status, reply = await api.call("POST", "/apps/web/domains",
                                   body={"domain": "Shop.LOCALHOST", "tls": True})
    assert status == 400 and reply["field"] == "domain", reply
    assert (await api.call("GET", "/apps/web/domains"))[1] == []
    # Without TLS the domain is added, with no certificate.
    status, reply = await api.call("POST", "/apps/web/domains",
                                   body={"domain": "WWW.Example.com"})
    assert status == 201 and reply == {"app": "web", "domain": "www.example.com",
                                       "tls": False}
    (row,) = (await api.call("GET", "/apps/web/domains"))[1]
    assert (row["domain"], row["tls"], row["certificate"]) == ("www.example.com", False, None)


def test_tls_is_refused_without_an_acme_directory_and_for_platform_domains(
        db_url: str, redis_url: str) -> None:
    run(db_url, redis_url, _refusals)


async def _https_settings(api: Api, redis_url: str) -> None:
    assert (await api.call("POST", "/apps", body={"name": "web", "image": IMAGE,
                                                  "instances": 0, "hsts": 600}))[0] == 201
    status, app = await api.call("POST", "/apps/web/settings",
                                 body={"https_redirect": True, "hsts": 31536000})
    assert status == 200 and (app["https_redirect"], app["hsts"]) == (True, 31536000)
    for bad in ({"https_redirect": "yes"}, {"hsts": -1}, {"hsts": 1.5},
                {"hsts": 10 ** 9}, {"https_redirect": 1}):
        status, reply = await api.call("POST", "/apps/web/settings", body=bad)
        assert status == 400 and reply["field"] == next(iter(bad)), bad
    assert (await api.call("GET", "/apps/web"))[1]["hsts"] == 31536000  # unchanged
    await api.server.reconcile_once()
    store = RedisRouteStore(redis_url)
    try:
        table = store.current()
    finally:
        store.client.close()
    assert HttpsPolicy.from_json(table.https["web.localhost"]) == HttpsPolicy(
        redirect=True, hsts=31536000)
    status, app = await api.call("POST", "/apps/web/settings",
                                 body={"https_redirect": False, "hsts": 0})
    await api.server.reconcile_once()
    store = RedisRouteStore(redis_url)
    try:
        assert "web.localhost" not in store.current().https
    finally:
        store.client.close()
    events = [e["message"] for e in (await api.call("GET", "/events?app=web"))[1]]
    assert "settings: hsts 31536000, https_redirect on" in events


def test_https_settings_flow_into_the_route_table(sqlite_url: str, redis_url: str) -> None:
    run(sqlite_url, redis_url, lambda api: _https_settings(api, redis_url))


async def _tls_domains(api: Api) -> None:
    assert (await api.call("POST", "/apps", body={"name": "web", "image": IMAGE,
                                                  "instances": 0}))[0] == 201
    assert (await api.call("POST", "/apps", body={"name": "shop", "image": IMAGE,
                                                  "instances": 0}))[0] == 201
    status, reply = await api.call("POST", "/apps/web/domains",
                                   body={"domain": "WWW.Example.COM", "tls": True})
    assert status == 201 and reply == {"app": "web", "domain": "www.example.com", "tls": True}
    (row,) = (await api.call("GET", "/apps/web/domains"))[1]
    cert = row["certificate"]
    assert row["tls"] and cert["state"] == "pending" and cert["serial"] is None
    assert cert["summary"] == "pending: being ordered" and "key" not in json.dumps(row)
    # One app per domain, whatever its case; TLS once.
    for app, domain in (("shop", "www.example.com"), ("shop", "Www.Example.Com"),
                        ("web", "www.example.com")):
        status, reply = await api.call("POST", f"/apps/{app}/domains",
                                       body={"domain": domain, "tls": True})
        assert status == 409, (app, domain, reply)
    # TLS turned on for a domain added without it.
    assert (await api.call("POST", "/apps/shop/domains",
                           body={"domain": "shop.example.org"}))[0] == 201
    assert (await api.call("POST", "/apps/shop/domains",
                           body={"domain": "shop.example.org", "tls": True}))[0] == 201
    (row,) = (await api.call("GET", "/apps/shop/domains"))[1]
    assert row["certificate"]["state"] == "pending"
    events = [e["message"] for e in (await api.call("GET", "/events?app=shop"))[1]]
    assert "domain shop.example.org: TLS on (certificate ordered)" in events
    # Removed before anything was issued: nothing to revoke, the row goes.
    assert (await api.call("DELETE", "/apps/shop/domains/shop.example.org"))[0] == 200
    assert [c.domain for c in api.store.certificates()] == ["www.example.com"]


def test_tls_domains_are_unique_lowercase_and_their_certificates_go_with_them(
        db_url: str, redis_url: str) -> None:
    run(db_url, redis_url, _tls_domains, acme_directory="https://acme.invalid/dir")


def _pem(acme_ca: Any, name: str) -> tuple[str, str, float, float]:
    from dinp.acme_client import validity

    chain, key = acme_ca.issue(name)
    not_before, not_after, _ = validity(chain)
    return chain, key, not_before, not_after


def test_the_certificate_rows_on_each_database(db_url: str) -> None:
    """Issued certificates reach the snapshot (so every table), removed or expired ones
    do not; a stale leader's write is refused; a key is in no repr."""
    from dinp import acme_orders
    from dinp.store import NotLeader, Store
    from tests.support import CertAuthority

    ca = CertAuthority.make()
    store = Store(db_url)
    try:
        store.create_app(name="web", image=IMAGE, instances=0, memory_mb=64, port=8080,
                         env={}, health_path=None)
        store.add_domain("web", "www.example.com", tls=True)
        store.add_domain("web", "old.example.com", tls=True)
        lease = store.claim_lease("me", "http://me", 30)
        fence = (lease.holder, lease.epoch)
        chain, key, not_before, not_after = _pem(ca, "www.example.com")
        with pytest.raises(NotLeader):
            store.certificate_issued("www.example.com", chain_pem=chain, key_pem=key,
                                     not_before=not_before, not_after=not_after,
                                     fence=("someone else", lease.epoch))
        assert store.snapshot().certs == {}
        assert store.certificate_issued("www.example.com", chain_pem=chain, key_pem=key,
                                        not_before=not_before, not_after=not_after,
                                        fence=fence)
        pair = store.snapshot().certs["www.example.com"]
        assert (pair.chain_pem, pair.key_pem) == (chain, key)
        # Renewed: the next snapshot has the new one (snapshots re-read changed rows only).
        chain, key, not_before, not_after = _pem(ca, "www.example.com")
        assert store.certificate_issued("www.example.com", chain_pem=chain, key_pem=key,
                                        not_before=not_before, not_after=not_after)
        pair = store.snapshot().certs["www.example.com"]
        assert (pair.chain_pem, pair.key_pem) == (chain, key)
        assert "renewed" in store.events(app="web")[0].message
        assert "PRIVATE" not in repr(store.snapshot()) + repr(store.certificates())
        # An expired one is not handed to the routers.
        old_chain, old_key = ca.issue("old.example.com", days=-1)
        from dinp.acme_client import validity

        nb, na, _ = validity(old_chain)
        store.certificate_issued("old.example.com", chain_pem=old_chain, key_pem=old_key,
                                 not_before=nb, not_after=na)
        assert set(store.snapshot().certs) == {"www.example.com"}
        # A failure keeps a valid certificate serving (renewing), backs off.
        row = next(r for r in store.certificates() if r.domain == "www.example.com")
        outcome = acme_orders.failed(acme_orders.Cert(row.state, row.not_before,
                                                      row.not_after), "boom",
                                     time.time(), acme_orders.Policy())
        store.certificate_failed("www.example.com", outcome, fence=fence)
        row = next(r for r in store.certificates() if r.domain == "www.example.com")
        assert (row.state, row.attempts, row.last_error) == ("renewing", 1, "boom")
        assert "www.example.com" in store.snapshot().certs
        # Removed: off the routers at once, kept to be revoked, then forgotten.
        store.remove_domain("web", "www.example.com")
        assert store.snapshot().certs == {}
        (revoking,) = [r for r in store.certificates() if r.state == "revoking"]
        assert revoking.domain == "www.example.com"
        assert not store.certificate_issued("www.example.com", chain_pem=chain,
                                            key_pem=key, not_before=not_before,
                                            not_after=not_after)
        store.certificate_revoked("www.example.com", "", fence=fence)
        assert [r.domain for r in store.certificates()] == ["old.example.com"]
        assert "certificate for www.example.com revoked" in [
            e.message for e in store.events(app="web")]
        # Deleting the app leaves its issued certificates to be revoked.
        store.delete_app("web")
        assert [(r.domain, r.state) for r in store.certificates()] == [
            ("old.example.com", "revoking")]
        # The account: the first key saved is kept.
        first = store.save_acme_account("https://ca/dir", "KEY1", "", "a@example.com")
        again = store.save_acme_account("https://ca/dir", "KEY2", "", "a@example.com")
        assert first.key_pem == again.key_pem == "KEY1" and "KEY1" not in repr(again)
        assert store.save_acme_account("https://ca/dir", "KEY1", "https://ca/acct/1",
                                       "a@example.com").uri == "https://ca/acct/1"
    finally:
        store.close()


def test_the_account_is_found_again_by_its_key_and_follows_acme_email(tmp_path: Path) -> None:
    """Against Pebble alone: a server that restarts (or a new leader) finds the same
    account by the stored key, and a changed acme_email is sent to the CA."""
    from dinp.acme_client import AcmeDirectory, new_account_key

    pebble = Pebble.start(tmp_path / "pebble", http_port=free_port())
    try:
        key = new_account_key()

        def directory(email: str) -> AcmeDirectory:
            return AcmeDirectory(pebble.directory, account_key_pem=key, email=email,
                                 ca_bundle=str(pebble.ca_bundle), timeout=20)

        first = directory("ops@example.com")
        uri = first.connect()
        assert uri.startswith("https://") and first.contact == ("mailto:ops@example.com",)
        again = directory("ops@example.com")
        assert again.connect() == uri and again.contact == first.contact
        moved = directory("certs@example.com")
        assert moved.connect() == uri and moved.contact == ("mailto:certs@example.com",)
        assert directory("certs@example.com").connect() == uri
        other = AcmeDirectory(pebble.directory, account_key_pem=new_account_key(),
                              ca_bundle=str(pebble.ca_bundle))
        assert other.connect() != uri  # another key: another account
    finally:
        pebble.stop()
