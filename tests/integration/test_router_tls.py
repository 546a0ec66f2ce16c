"""HTTPS at the router, against real TLS clients (Python's ssl, aiohttp, curl) that verify
the chain against a throwaway CA and the host name; PROXY protocol headers on raw
sockets; HTTPS policies and ACME challenges; certificates coming and going through a
private Redis. Every scenario runs on asyncio and on uvloop (the fixture of
test_router.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import socket
import ssl
import tempfile
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from dinp.errors import Unavailable
from dinp.router import Router
from dinp.routes import HttpsPolicy, RouteTable
from tests.integration.test_router import (
    MB,
    Backend,
    RawClient,
    Response,
    backends,
    block,
    event_loop_kind,  # noqa: F401 - every scenario on asyncio and uvloop
    eventually,
    follow,
    publish,
    run,
    table,
)
from tests.support import CertAuthority, RedisServer, proxy_v1, proxy_v2

DOMAIN = "apps.test"
CA = CertAuthority.make()
SHOP = CA.issue("shop.example.com")
BLOG = CA.issue("blog.example.org", "www.blog.example.org")
SECURE = HttpsPolicy(redirect=True, hsts=31536000).to_json()


@pytest.fixture(scope="module")
def wildcard(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The operator's wildcard certificate for *.apps.test, as files."""
    cert, key = CA.files(tmp_path_factory.mktemp("tls"), "wildcard", f"*.{DOMAIN}")
    return {"tls_cert_file": str(cert), "tls_key_file": str(key)}


def tls_table(apps: dict[str, list[Backend] | list[str]], *,
              cnames: dict[str, str] | None = None, **https: Any) -> RouteTable:
    """A table serving app `a` at `a.apps.test`, with certs, https and challenges."""
    return dataclasses.replace(table(apps, domain=DOMAIN, cnames=cnames), **https)


async def start_tls_router(stack: contextlib.AsyncExitStack, routes: RouteTable | None,
                           *, proxy_protocol: bool = False, http_proxy_protocol: bool = False,
                           wait: bool = True, ticket_secret: bytes | None = None,
                           **config: Any) -> Router:
    """A router with a plain and a TLS listener (and the admin port), fed `routes`."""
    router = Router(**config)
    router.ticket_secret = ticket_secret
    if routes is not None:
        router.set_table(routes)
    stack.push_async_callback(router.close)
    await router.start_http("127.0.0.1", 0, proxy_protocol=http_proxy_protocol)
    await router.start_https("127.0.0.1", 0, proxy_protocol=proxy_protocol)
    await router.start_admin("127.0.0.1", 0)
    if wait:
        await asyncio.wait_for(router.https_open.wait(), 5)
    return router


class TlsClient(RawClient):
    """A RawClient over TLS, verifying the router's certificate against the test CA and
    `name` (the SNI it sends)."""

    @classmethod
    async def connect(cls, stack: contextlib.AsyncExitStack, router: Router, name: str | None,
                      *, context: ssl.SSLContext | None = None,
                      before: bytes = b"") -> TlsClient:
        """`before`: raw bytes sent ahead of the ClientHello (a PROXY header)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", router.bound_https_port)
        client = cls(reader, writer)
        try:
            if before:
                await client.send(before)
            await writer.start_tls(context or CA.client_context(), server_hostname=name)
        except BaseException:
            writer.transport.abort()
            raise
        stack.push_async_callback(client.close)
        return client

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()

    @property
    def ssl_object(self) -> ssl.SSLObject:
        obj = self.writer.get_extra_info("ssl_object")
        assert obj is not None
        return obj  # type: ignore[no-any-return]

    def names(self) -> list[str]:
        """The DNS names of the certificate the router gave."""
        cert = self.ssl_object.getpeercert()
        assert cert
        return [v for k, v in cert["subjectAltName"] if k == "DNS"]

    async def get(self, host: str, path: str = "/", headers: bytes = b"") -> Response:
        await self.send(b"GET %b HTTP/1.1\r\nHost: %b\r\n%b\r\n" % (path.encode(), host.encode(),
                                                                    headers))
        return await self.response()


def no_verify() -> ssl.SSLContext:
    """A client that takes any certificate: a handshake it cannot finish got none."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def echoed(resp: Response) -> dict[str, Any]:
    """The backend's echo: its name, path and the request headers (lowercase names)."""
    seen = resp.json()
    seen["headers"] = {k.lower(): v for k, v in seen["headers"].items()}
    return dict(seen)


# -- the certificate for each name ----------------------------------------------------------

def test_each_name_gets_its_certificate_by_sni(wildcard: dict[str, str]) -> None:
    """Two custom domains each get their own certificate; the apps' hosts get the
    operator's wildcard; the client verifies the chain and the name every time."""

    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        web, shop = await backends(stack, "web", "shop")
        routes = tls_table({"web": [web], "shop": [shop]},
                           cnames={"shop.example.com": "shop", "blog.example.org": "web"},
                           certs={"shop.example.com": SHOP, "blog.example.org": BLOG})
        router = await start_tls_router(stack, routes, **wildcard)
        for name, names, app in [
            ("shop.example.com", ["shop.example.com"], "shop"),
            ("blog.example.org", ["blog.example.org", "www.blog.example.org"], "web"),
            ("web.apps.test", ["*.apps.test"], "web"),
            ("shop.apps.test", ["*.apps.test"], "shop"),
            ("SHOP.Example.COM", ["shop.example.com"], "shop"),  # names ignore case
        ]:
            client = await TlsClient.connect(stack, router, name)
            assert client.names() == names, name
            assert client.ssl_object.version() == "TLSv1.3"
            resp = await client.get(name)
            assert resp.status == 200 and echoed(resp)["name"] == app, name
        # A name the wildcard covers but no app has: the handshake is fine, the app 404.
        client = await TlsClient.connect(stack, router, "nope.apps.test")
        assert (await client.get("nope.apps.test")).status == 404

    run(scenario)


@pytest.mark.parametrize("name", [
    "unknown.example.net",  # nobody's
    "apps.test",  # the wildcard's parent: not covered by *.apps.test
    "a.web.apps.test",  # two labels below the wildcard
    "x.shop.example.com",  # below a custom domain with an exact certificate only
    None,  # no SNI at all
])
def test_a_name_without_a_certificate_is_refused_with_an_alert(
        wildcard: dict[str, str], name: str | None) -> None:
    """Never another app's certificate, never a default one: the handshake ends with an
    unrecognized_name alert, even for a client that would accept any certificate."""

    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (shop,) = await backends(stack, "shop")
        routes = tls_table({"shop": [shop]}, cnames={"shop.example.com": "shop"},
                           certs={"shop.example.com": SHOP})
        router = await start_tls_router(stack, routes, **wildcard)
        with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
            await TlsClient.connect(stack, router, name, context=no_verify())
        assert router.stats()["tls_refused"] == 1
        # And the router serves on.
        client = await TlsClient.connect(stack, router, "shop.example.com")
        assert (await client.get("shop.example.com")).status == 200

    run(scenario)


def test_a_table_wildcard_covers_one_label_and_an_exact_name_wins() -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (web,) = await backends(stack, "web")
        star = CA.issue("*.shop.example.com")
        routes = tls_table({"web": [web]}, cnames={"a.shop.example.com": "web",
                                                   "b.shop.example.com": "web"},
                           certs={"*.shop.example.com": star, "b.shop.example.com":
                                  CA.issue("b.shop.example.com")})
        router = await start_tls_router(stack, routes)  # no operator wildcard
        assert (await TlsClient.connect(stack, router, "a.shop.example.com")).names() == [
            "*.shop.example.com"]
        assert (await TlsClient.connect(stack, router, "b.shop.example.com")).names() == [
            "b.shop.example.com"]
        for refused in ("shop.example.com", "x.a.shop.example.com", "web.apps.test"):
            with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
                await TlsClient.connect(stack, router, refused, context=no_verify())

    run(scenario)


# -- protocol settings --------------------------------------------------------------------

@contextlib.contextmanager
def old_tls_allowed() -> Iterator[None]:
    """Python warns about TLS 1.0/1.1 (the suite turns warnings into errors)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def tls11_client() -> ssl.SSLContext:
    with old_tls_allowed():
        ctx = no_verify()
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def weak_cipher_client() -> ssl.SSLContext:
    ctx = no_verify()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA:AES128-SHA:@SECLEVEL=0")  # CBC, or no PFS
    return ctx


async def permissive_server(stack: contextlib.AsyncExitStack, cert: tuple[str, str]) -> int:
    """A TLS server that accepts anything: proof that the old clients above really speak
    what the router must refuse (else refusing them would prove nothing)."""
    with old_tls_allowed():
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    with tempfile.TemporaryDirectory() as private:
        Path(private, "c.pem").write_text(cert[0])
        Path(private, "k.pem").write_text(cert[1])
        ctx.load_cert_chain(Path(private, "c.pem"), Path(private, "k.pem"))

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=ctx)
    stack.push_async_callback(server.wait_closed)
    stack.callback(server.close)
    return int(server.sockets[0].getsockname()[1])


def test_only_tls_12_and_13_with_strong_ciphers_and_alpn_http11() -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (web,) = await backends(stack, "web")
        routes = tls_table({"web": [web]}, cnames={"shop.example.com": "web"},
                           certs={"shop.example.com": SHOP})
        router = await start_tls_router(stack, routes)
        control = await permissive_server(stack, SHOP)
        for client, alert in [(tls11_client(), "PROTOCOL_VERSION"),
                              (weak_cipher_client(), "HANDSHAKE_FAILURE")]:
            # The control server takes this client: it really offers the old thing ...
            _, writer = await asyncio.open_connection(
                "127.0.0.1", control, ssl=client, server_hostname="shop.example.com")
            spoken = writer.get_extra_info("ssl_object")
            assert spoken.version() in ("TLSv1.1", "TLSv1.2"), spoken.version()
            writer.close()
            # ... and the router refuses it, with an alert that says why.
            with pytest.raises(ssl.SSLError, match=alert):
                await TlsClient.connect(stack, router, "shop.example.com", context=client)

        # TLS 1.2 with a modern client: an AEAD cipher with forward secrecy.
        modern = CA.client_context()
        modern.maximum_version = ssl.TLSVersion.TLSv1_2
        client = await TlsClient.connect(stack, router, "shop.example.com", context=modern)
        name, version, _ = client.ssl_object.cipher()  # type: ignore[misc]
        assert version == "TLSv1.2" and name.startswith("ECDHE-ECDSA-") and (
            "GCM" in name or "CHACHA20" in name), name
        # TLS 1.3: Mozilla's order, AES-128 first, whatever order the client offers
        # (OpenSSL's own clients put AES-256 first).
        client = await TlsClient.connect(stack, router, "shop.example.com")
        assert client.ssl_object.cipher()[:2] == ("TLS_AES_128_GCM_SHA256", "TLSv1.3")
        # ALPN: HTTP/1.1 is what the router speaks, whatever else the client offers.
        offers = CA.client_context()
        offers.set_alpn_protocols(["h2", "http/1.1"])
        client = await TlsClient.connect(stack, router, "shop.example.com", context=offers)
        assert client.ssl_object.selected_alpn_protocol() == "http/1.1"
        assert (await client.get("shop.example.com")).status == 200

    run(scenario)


def resumed(port: int, name: str, version: ssl.TLSVersion,
            again_port: int | None = None) -> tuple[bool, bool]:
    """Two connections (blocking sockets, in a thread), the second to `again_port` if
    given: whether the second resumed the first one's session, and whether the first was
    a resumption (it must not be)."""
    ctx = CA.client_context()
    ctx.maximum_version = version
    ctx.minimum_version = version
    request = b"GET / HTTP/1.1\r\nHost: %b\r\n\r\n" % name.encode()
    with socket.create_connection(("127.0.0.1", port), 5) as raw, \
            ctx.wrap_socket(raw, server_hostname=name) as tls:
        tls.sendall(request)
        tls.recv(65536)  # a TLS 1.3 ticket comes after the handshake, with the data
        session, first = tls.session, tls.session_reused
    with socket.create_connection(("127.0.0.1", again_port or port), 5) as raw, \
            ctx.wrap_socket(raw, server_hostname=name, session=session) as tls:
        tls.sendall(request)
        assert tls.recv(65536).startswith(b"HTTP/1.1 200")
        return tls.session_reused, first


def test_sessions_resume(wildcard: dict[str, str]) -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (web,) = await backends(stack, "web")
        router = await start_tls_router(stack, tls_table({"web": [web]}), **wildcard)
        port = router.bound_https_port
        assert port is not None
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            again, first = await asyncio.to_thread(resumed, port, "web.apps.test", version)
            assert (again, first) == (True, False), version

    run(scenario)


def test_routers_with_the_same_ticket_secret_resume_each_others_sessions(
        wildcard: dict[str, str]) -> None:
    """As the worker processes of one router do (the supervisor gives them one secret):
    a session begun on one resumes on another, also under TLS 1.2; a router with another
    secret cannot resume it."""

    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (web,) = await backends(stack, "web")
        routes = tls_table({"web": [web]})
        one, two, other = [
            await start_tls_router(stack, routes, ticket_secret=secret, **wildcard)
            for secret in (b"s" * 32, b"s" * 32, b"o" * 32)]
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            for target, expected in ((two, True), (other, False)):
                again, first = await asyncio.to_thread(
                    resumed, one.bound_https_port or 0, "web.apps.test", version,
                    target.bound_https_port)
                assert (again, first) == (expected, False), (version, expected)

    run(scenario)


# -- HTTP over TLS behaves as over plain HTTP -----------------------------------------------

class StaticResolver(AbstractResolver):
    """Every name resolves to 127.0.0.1: aiohttp then sends the name as SNI and Host."""

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [{"hostname": host, "host": "127.0.0.1", "port": port,
                 "family": socket.AF_INET, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        pass


async def tls_session(stack: contextlib.AsyncExitStack) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(resolver=StaticResolver(), ssl=CA.client_context())
    return await stack.enter_async_context(aiohttp.ClientSession(connector=connector))


def test_keep_alive_pipelining_big_bodies_and_websocket_over_tls(
        wildcard: dict[str, str]) -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (web,) = await backends(stack, "web")
        router = await start_tls_router(stack, tls_table({"web": [web]}), **wildcard)
        host = "web.apps.test"
        # Keep-alive: five requests on one TLS connection, one pooled backend connection.
        client = await TlsClient.connect(stack, router, host)
        ports = set()
        for i in range(5):
            seen = echoed(await client.get(host, f"/k{i}"))
            assert seen["path"] == f"/k{i}"
            ports.add(seen["peer_port"])
        assert len(ports) == 1
        # Pipelined, answered in order.
        await client.send(b"GET /p1 HTTP/1.1\r\nHost: web.apps.test\r\n\r\n"
                          b"POST /p2 HTTP/1.1\r\nHost: web.apps.test\r\nContent-Length: 5\r\n"
                          b"\r\nhello"
                          b"GET /p3 HTTP/1.1\r\nHost: web.apps.test\r\n\r\n")
        assert echoed(await client.response())["path"] == "/p1"
        second = echoed(await client.response())
        assert (second["path"], second["body"]) == ("/p2", "hello")
        assert echoed(await client.response())["path"] == "/p3"

        http = await tls_session(stack)
        base = f"https://{host}:{router.bound_https_port}"
        expected = hashlib.sha256(b"".join(block(i) for i in range(50))).hexdigest()

        async def body() -> AsyncIterator[bytes]:
            for i in range(50):
                yield block(i)

        async with http.post(f"{base}/upload", data=body(),
                             headers={"Content-Length": str(50 * MB)}) as resp:
            assert resp.status == 200
            got = await resp.json()
        assert (got["size"], got["sha256"]) == (50 * MB, expected)
        digest = hashlib.sha256()
        size = 0
        async with http.get(f"{base}/stream?size={50 * MB}") as resp:
            assert resp.status == 200 and resp.headers["Transfer-Encoding"] == "chunked"
            async for chunk in resp.content.iter_chunked(MB):
                digest.update(chunk)
                size += len(chunk)
        assert (size, digest.hexdigest()) == (50 * MB, expected)

        async with http.ws_connect(f"wss://{host}:{router.bound_https_port}/ws") as ws:
            for word in ("hello", "again"):
                await ws.send_str(word)
                assert (await ws.receive_str()) == f"web:{word}"

    run(scenario, timeout=60)


def test_back_pressure_and_half_closes_over_tls(wildcard: dict[str, str]) -> None:
    """A TLS client that stops reading stops the backend, one whose upload the backend
    does not read is stopped in turn (the router holds neither body); a client that
    half-closes after its request still gets the answer; an early answer (431) reaches a
    client still sending."""

    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (b,) = await backends(stack, "web")
        router = await start_tls_router(stack, tls_table({"web": [b]}), **wildcard)
        host = "web.apps.test"

        # A 1 GB download the client does not read for a while.
        client = await TlsClient.connect(stack, router, host)
        await client.send(b"GET /stream?size=%d&length HTTP/1.1\r\nHost: %b\r\n\r\n"
                          % (1024 * MB, host.encode()))
        await asyncio.sleep(1.0)
        stalled = b.streamed
        await asyncio.sleep(0.3)
        assert b.streamed == stalled  # the backend is held, not buffered into the router
        assert stalled < 128 * MB
        client.writer.transport.abort()  # the client goes away

        async def no_connections() -> bool:
            return not router.proxy.connections and router.proxy.pool.idle_count() == 0

        assert await eventually(no_connections)

        # A 256 MB upload to a backend that reads nothing for a second.
        client = await TlsClient.connect(stack, router, host)
        sent = 0

        async def upload() -> None:
            nonlocal sent
            await client.send(b"POST /upload?hold=1 HTTP/1.1\r\nHost: %b\r\n"
                              b"Content-Length: %d\r\n\r\n" % (host.encode(), 256 * MB))
            for i in range(256):
                await client.send(block(i))
                sent += MB

        task = asyncio.create_task(upload())
        await asyncio.sleep(0.8)
        assert sent < 128 * MB
        await task
        resp = await client.response()
        assert resp.status == 200 and resp.json()["size"] == 256 * MB

        # Half-closed (FIN after the request, no close_notify): still answered.
        port = router.bound_https_port
        assert port is not None

        def half_closed() -> bytes:
            ctx = CA.client_context()
            with socket.create_connection(("127.0.0.1", port), 5) as raw, \
                    ctx.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(b"GET /half HTTP/1.1\r\nHost: %b\r\n\r\n" % host.encode())
                socket.socket.shutdown(tls, socket.SHUT_WR)  # TCP only: TLS stays on
                answer = b""
                while chunk := tls.recv(65536):
                    answer += chunk
                    if b"\r\n\r\n" in answer and answer.endswith(b"}"):
                        break
                return answer

        answer = await asyncio.to_thread(half_closed)
        assert answer.startswith(b"HTTP/1.1 200") and b'"/half"' in answer

        # An early answer: the head grows past the limit while the client still sends.
        client = await TlsClient.connect(stack, router, host)
        await client.send(b"GET / HTTP/1.1\r\nHost: web.apps.test\r\nX-Big: ")
        await client.send(b"a" * 200_000)
        resp = await client.response()
        assert resp.status == 431
        assert await client.at_eof()

    run(scenario, timeout=40)


def test_forwarded_headers_over_tls(wildcard: dict[str, str]) -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (web,) = await backends(stack, "web")
        router = await start_tls_router(stack, tls_table({"web": [web]}), **wildcard)
        client = await TlsClient.connect(stack, router, "web.apps.test")
        seen = echoed(await client.get("web.apps.test", headers=(
            b"X-Forwarded-Proto: http\r\nX-Forwarded-For: 203.0.113.9\r\n"
            b"X-Forwarded-Port: 1\r\n")))["headers"]
        # An untrusted client's claims are replaced by what the router knows.
        assert seen["x-forwarded-proto"] == "https"
        assert seen["x-forwarded-for"] == "127.0.0.1"
        assert seen["x-forwarded-port"] == "443"  # no port in Host: https's
        assert seen["x-forwarded-host"] == "web.apps.test"
        seen = echoed(await client.get("web.apps.test:8443"))["headers"]
        assert seen["x-forwarded-port"] == "8443"
        # Plain HTTP still says http.
        plain = await RawClient.open(stack, router)
        await plain.send(b"GET / HTTP/1.1\r\nHost: web.apps.test\r\n\r\n")
        seen = echoed(await plain.response())["headers"]
        assert (seen["x-forwarded-proto"], seen["x-forwarded-port"]) == ("http", "80")

    run(scenario)


def test_timeouts_error_pages_and_graceful_stop_over_tls(wildcard: dict[str, str]) -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (web,) = await backends(stack, "web")
        router = await start_tls_router(stack, tls_table({"web": [web], "empty": []}),
                                        header_timeout=0.3, client_timeout=0.5, **wildcard)
        # The router's own pages.
        client = await TlsClient.connect(stack, router, "empty.apps.test")
        resp = await client.get("empty.apps.test")
        assert resp.status == 503 and resp.headers["x-dinp-error"] == "503"
        assert b"app empty has no healthy instance" in resp.body
        resp = await client.get("nope.apps.test")  # SNI and Host need not agree
        assert resp.status == 404
        # A head trickling in past header_timeout: 408, then closed.
        slow = await TlsClient.connect(stack, router, "web.apps.test")
        await slow.send(b"GET / HTTP/1.1\r\nHost: web.apps")
        started = time.monotonic()
        resp = await slow.response()
        assert resp.status == 408 and 0.25 < time.monotonic() - started < 1.5
        assert await slow.at_eof()
        # An idle keep-alive connection is closed after client_timeout.
        idle = await TlsClient.connect(stack, router, "web.apps.test")
        assert (await idle.get("web.apps.test")).status == 200
        started = time.monotonic()
        assert await idle.at_eof()
        assert 0.4 < time.monotonic() - started < 1.5
        # A bad request: 400 and closed.
        bad = await TlsClient.connect(stack, router, "web.apps.test")
        await bad.send(b"GET / HTTP/1.1\r\nHost web.apps.test\r\n\r\n")
        assert (await bad.response()).status == 400
        assert await bad.at_eof()
        # Stopping: the request in flight finishes, then nothing listens.
        busy = await TlsClient.connect(stack, router, "web.apps.test")
        await busy.send(b"GET /slow?s=0.4 HTTP/1.1\r\nHost: web.apps.test\r\n\r\n")
        await asyncio.sleep(0.1)
        closing = asyncio.create_task(router.close(grace=5))
        resp = await busy.response()
        assert resp.status == 200 and resp.headers.get("connection") == "close"
        await closing
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", router.bound_https_port)

    run(scenario)


# -- HTTPS policies and ACME --------------------------------------------------------------

def test_redirect_and_hsts_per_app(wildcard: dict[str, str]) -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        secure, plain = await backends(stack, "secure", "plain")
        routes = tls_table(
            {"secure": [secure], "plain": [plain], "bare": []},
            cnames={"shop.example.com": "secure", "nocert.example.com": "secure"},
            certs={"shop.example.com": SHOP},
            https={f"secure.{DOMAIN}": SECURE, f"bare.{DOMAIN}": SECURE,
                   f"plain.{DOMAIN}": HttpsPolicy(hsts=0).to_json()})
        router = await start_tls_router(stack, routes, **wildcard)
        port = router.bound_https_port
        http = await RawClient.open(stack, router)
        # Plain HTTP to an app that asks for HTTPS: 308 to the same URL, its port named.
        for host, path in [("secure.apps.test", "/a/b?c=d&e"),
                           (f"secure.apps.test:{router.bound_http_port}", "/"),
                           ("shop.example.com", "/cart"),  # a custom domain: its app's policy
                           ("bare.apps.test", "/x")]:  # even with no instance up
            await http.send(b"POST %b HTTP/1.1\r\nHost: %b\r\nContent-Length: 2\r\n\r\nhi"
                            % (path.encode(), host.encode()))
            resp = await http.response()
            assert resp.status == 308, (host, resp)
            name = host.split(":")[0]
            assert resp.headers["location"] == f"https://{name}:{port}{path}"
            assert "strict-transport-security" not in resp.headers
        # Absolute-form request lines keep their path.
        await http.send(b"GET http://secure.apps.test/p?q HTTP/1.1\r\nHost: secure.apps.test"
                        b"\r\n\r\n")
        assert (await http.response()).headers["location"] == (
            f"https://secure.apps.test:{port}/p?q")
        # Not redirected: an app without the policy, and a name the router holds no
        # certificate for (a redirect there would end in a refused handshake).
        await http.send(b"GET / HTTP/1.1\r\nHost: plain.apps.test\r\n\r\n")
        assert echoed(await http.response())["name"] == "plain"
        await http.send(b"GET / HTTP/1.1\r\nHost: nocert.example.com\r\n\r\n")
        assert echoed(await http.response())["name"] == "secure"

        # Over TLS: served, with HSTS (replacing the app's own), never redirected.
        client = await TlsClient.connect(stack, router, "secure.apps.test")
        resp = await client.get("secure.apps.test", "/x")
        assert resp.status == 200 and echoed(resp)["name"] == "secure"
        assert resp.headers["strict-transport-security"] == "max-age=31536000"
        assert echoed(resp)["headers"]["x-forwarded-proto"] == "https"
        client = await TlsClient.connect(stack, router, "shop.example.com")
        resp = await client.get("shop.example.com")
        assert resp.headers["strict-transport-security"] == "max-age=31536000"
        client = await TlsClient.connect(stack, router, "bare.apps.test")
        resp = await client.get("bare.apps.test")  # the router's own page gets it too
        assert resp.status == 503
        assert resp.headers["strict-transport-security"] == "max-age=31536000"
        client = await TlsClient.connect(stack, router, "plain.apps.test")
        assert "strict-transport-security" not in (await client.get("plain.apps.test")).headers
        # The redirect is counted as the app's.
        assert router.stats()["apps"]["secure"]["codes"]["308"] == 4

    run(scenario)


def test_hsts_from_the_app_passes_without_a_policy(wildcard: dict[str, str]) -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nStrict-Transport-Security: max-age=60\r\n"
                             b"Content-Length: 2\r\n\r\nok")

        server = await asyncio.start_server(app, "127.0.0.1", 0)
        stack.push_async_callback(server.wait_closed)
        stack.callback(server.close)
        addr = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        routes = tls_table({"own": [addr], "policy": [addr]},
                           https={f"policy.{DOMAIN}": HttpsPolicy(hsts=600).to_json()})
        router = await start_tls_router(stack, routes, **wildcard)
        client = await TlsClient.connect(stack, router, "own.apps.test")
        assert (await client.get("own.apps.test")).headers["strict-transport-security"] == (
            "max-age=60")
        client = await TlsClient.connect(stack, router, "policy.apps.test")
        await client.send(b"GET / HTTP/1.1\r\nHost: policy.apps.test\r\n\r\n")
        raw = await client.reader.readuntil(b"\r\n\r\n")
        assert raw.lower().count(b"strict-transport-security") == 1
        assert b"Strict-Transport-Security: max-age=600\r\n" in raw

    run(scenario)


def test_acme_challenges_are_answered_for_any_host_on_plain_http(
        wildcard: dict[str, str]) -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (secure,) = await backends(stack, "secure")
        routes = tls_table({"secure": [secure]}, cnames={"shop.example.com": "secure"},
                           https={f"secure.{DOMAIN}": SECURE},
                           challenges={"tok_en-1": "tok_en-1.thumbprint"})
        router = await start_tls_router(stack, routes, **wildcard)
        http = await RawClient.open(stack, router)
        path = b"/.well-known/acme-challenge/tok_en-1"
        # Any Host: the app's (whose policy redirects), a custom domain not yet served,
        # a name the table does not know at all.
        for host in (b"secure.apps.test", b"shop.example.com", b"new.example.net",
                     b"new.example.net:80"):
            await http.send(b"GET %b HTTP/1.1\r\nHost: %b\r\n\r\n" % (path, host))
            resp = await http.response()
            assert resp.status == 200, (host, resp)
            assert resp.body == b"tok_en-1.thumbprint"
            assert resp.headers["content-type"] == "text/plain"
            assert "location" not in resp.headers
        await http.send(b"HEAD %b HTTP/1.1\r\nHost: x.example\r\n\r\n" % path)
        head = await http.response(head_only=True)
        assert head.status == 200 and head.headers["content-length"] == "19"
        for unknown in (b"/.well-known/acme-challenge/other",
                        b"/.well-known/acme-challenge/", b"/.well-known/acme-challenge/tok"):
            await http.send(b"GET %b HTTP/1.1\r\nHost: secure.apps.test\r\n\r\n" % unknown)
            resp = await http.response()
            assert resp.status == 404 and "location" not in resp.headers, unknown
        # Over TLS the path is the app's, like any other.
        client = await TlsClient.connect(stack, router, "secure.apps.test")
        resp = await client.get("secure.apps.test", path.decode())
        assert resp.status == 200 and echoed(resp)["path"] == path.decode()

    run(scenario)


# -- the PROXY protocol -------------------------------------------------------------------

@pytest.mark.parametrize("listener", ["http", "https"])
def test_proxy_protocol_gives_the_client_address(wildcard: dict[str, str], listener: str,
                                                 tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"

    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (web,) = await backends(stack, "web")
        router = await start_tls_router(
            stack, tls_table({"web": [web]}), proxy_protocol=listener == "https",
            http_proxy_protocol=listener == "http", access_log=str(log_path), **wildcard)

        async def through(header: bytes, extra: bytes = b"") -> dict[str, Any]:
            request = b"GET / HTTP/1.1\r\nHost: web.apps.test\r\n%b\r\n" % extra
            if listener == "https":
                client: RawClient = await TlsClient.connect(stack, router, "web.apps.test",
                                                            before=header)
                await client.send(request)
            else:
                client = await RawClient.open(stack, router)
                await client.send(header + request)  # in one write: nothing of it is lost
            seen = echoed(await client.response())
            # Keep-alive: the next request on the connection keeps the header's client.
            await client.send(request)
            again = echoed(await client.response())
            assert again["headers"]["x-forwarded-for"] == seen["headers"]["x-forwarded-for"]
            return dict(seen["headers"])

        cases = [
            (proxy_v1("203.0.113.7", 40001), "203.0.113.7"),
            (proxy_v1("2001:db8::7", 40002), "2001:db8::7"),
            (proxy_v2("198.51.100.8", 40003), "198.51.100.8"),
            (proxy_v2("2001:db8::8", 40004, tlvs=b"\xea\x00\x04vpce"), "2001:db8::8"),
            (b"PROXY UNKNOWN\r\n", "127.0.0.1"),
            (proxy_v2(None, local=True), "127.0.0.1"),  # the balancer's own health check
        ]
        for header, client_address in cases:
            headers = await through(header)
            assert headers["x-forwarded-for"] == client_address, header
            assert headers["x-forwarded-proto"] == ("https" if listener == "https" else "http")
        # A client's own X-Forwarded-For is replaced (the PROXY source is not trusted).
        headers = await through(proxy_v1("203.0.113.7", 1), b"X-Forwarded-For: 10.9.9.9\r\n")
        assert headers["x-forwarded-for"] == "203.0.113.7"
        # The header arriving byte by byte is read whole, without a byte of what follows.
        raw = await asyncio.open_connection("127.0.0.1", router.bound_https_port
                                            if listener == "https" else router.bound_http_port)
        header = proxy_v2("192.0.2.99", 5)
        for i in range(len(header)):
            raw[1].write(header[i:i + 1])
            await raw[1].drain()
            await asyncio.sleep(0.002)
        if listener == "https":
            client = TlsClient(*raw)
            stack.push_async_callback(client.close)
            await raw[1].start_tls(CA.client_context(), server_hostname="web.apps.test")
            resp = await client.get("web.apps.test")
        else:
            client = RawClient(*raw)
            stack.push_async_callback(client.close)
            await client.send(b"GET / HTTP/1.1\r\nHost: web.apps.test\r\n\r\n")
            resp = await client.response()
        assert echoed(resp)["headers"]["x-forwarded-for"] == "192.0.2.99"
        await router.close()  # flushes the access log
        lines = log_path.read_text().splitlines()
        assert [line.split(" ", 1)[0] for line in lines[:2]] == ["203.0.113.7"] * 2
        assert lines[-1].startswith("192.0.2.99 ")
        assert router.stats()["proxy_protocol_errors"] == 0

    run(scenario)


@pytest.mark.parametrize("listener", ["http", "https"])
def test_connections_without_a_good_proxy_header_are_closed_and_counted(
        wildcard: dict[str, str], listener: str) -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (web,) = await backends(stack, "web")
        router = await start_tls_router(
            stack, tls_table({"web": [web]}), proxy_protocol=listener == "https",
            http_proxy_protocol=listener == "http", header_timeout=0.3, **wildcard)
        port = router.bound_https_port if listener == "https" else router.bound_http_port
        bad = [
            b"GET / HTTP/1.1\r\nHost: web.apps.test\r\n\r\n",  # missing
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",  # a ClientHello: missing
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",  # malformed
            b"PROXY TCP4 " + b"9" * 120,  # oversized
            b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x08" + bytes(8),  # addresses cut short
            b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff",  # v2 announcing 64 KB
        ]
        for data in bad:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(data)
            started = time.monotonic()
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(), 3) == b"", data
            writer.close()
            assert time.monotonic() - started < 1.0, data  # refused at once, not timed out
        # Truncated: the start of a header, then nothing (closed after header_timeout).
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(proxy_v1("203.0.113.7", 1)[:20])
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 3) == b""
        assert 0.25 < time.monotonic() - started < 1.5
        writer.close()
        # A TCP check that connects and closes is no error.
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        await asyncio.sleep(0.1)
        async def all_counted() -> bool:
            return router.stats()["proxy_protocol_errors"] == len(bad) + 1

        assert await eventually(all_counted)
        # And a good one still works.
        request = b"GET / HTTP/1.1\r\nHost: web.apps.test\r\n\r\n"
        if listener == "https":
            client: RawClient = await TlsClient.connect(stack, router, "web.apps.test",
                                                        before=proxy_v1("203.0.113.7", 2))
            await client.send(request)
        else:
            client = await RawClient.open(stack, router)
            await client.send(proxy_v1("203.0.113.7", 2) + request)
        assert echoed(await client.response())["headers"]["x-forwarded-for"] == "203.0.113.7"
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{router.bound_admin_port}/metrics") as resp:
            text = await resp.text()
        assert f"dinp_router_proxy_protocol_errors_total {len(bad) + 1}" in text

    run(scenario)


def test_trusted_proxies_behind_the_proxy_protocol(wildcard: dict[str, str]) -> None:
    """Trust is decided on the client the PROXY header names: a trusted one's
    X-Forwarded-For is appended to and its -Proto kept; anyone else's replaced."""

    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (web,) = await backends(stack, "web")
        router = await start_tls_router(stack, tls_table({"web": [web]}),
                                        http_proxy_protocol=True,
                                        trusted_proxies=("198.51.100.0/24",), **wildcard)
        claims = b"X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Proto: https\r\n"
        for source, xff, proto in [("198.51.100.7", "192.0.2.1, 198.51.100.7", "https"),
                                   ("203.0.113.7", "203.0.113.7", "http")]:
            client = await RawClient.open(stack, router)
            await client.send(proxy_v1(source, 1) + b"GET / HTTP/1.1\r\nHost: web.apps.test\r\n"
                              + claims + b"\r\n")
            seen = echoed(await client.response())["headers"]
            assert (seen["x-forwarded-for"], seen["x-forwarded-proto"]) == (xff, proto), source

    run(scenario)


# -- certificates from the table, coming and going ------------------------------------------

def test_certificates_come_and_go_through_redis(redis_server: RedisServer) -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (web,) = await backends(stack, "web")
        base = tls_table({"web": [web]}, cnames={"shop.example.com": "web",
                                                 "blog.example.org": "web"})
        await publish(redis_server.url, dataclasses.replace(
            base, certs={"shop.example.com": SHOP}))
        router = await start_tls_router(stack, None, wait=False)
        await follow(stack, router, redis_server.url)
        await asyncio.wait_for(router.https_open.wait(), 5)
        assert (await TlsClient.connect(stack, router, "shop.example.com")).names() == [
            "shop.example.com"]

        async def refused(name: str) -> bool:
            try:
                client = await TlsClient.connect(stack, router, name, context=no_verify())
            except ssl.SSLError as exc:
                return "UNRECOGNIZED_NAME" in str(exc)
            await client.close()
            return False

        assert await refused("blog.example.org")
        # A domain's certificate added: served from the next handshake on.
        await publish(redis_server.url, dataclasses.replace(
            base, certs={"shop.example.com": SHOP, "blog.example.org": BLOG}))
        assert await eventually(lambda: _not(refused("blog.example.org")), timeout=5)
        # Renewed: the new one is served.
        renewed = CA.issue("shop.example.com")
        await publish(redis_server.url, dataclasses.replace(
            base, certs={"shop.example.com": renewed, "blog.example.org": BLOG}))

        async def serves_renewed() -> bool:
            client = await TlsClient.connect(stack, router, "shop.example.com")
            der = client.ssl_object.getpeercert(binary_form=True)
            return der == ssl.PEM_cert_to_DER_cert(renewed[0].split("-----END")[0]
                                                   + "-----END CERTIFICATE-----\n")

        assert await eventually(serves_renewed, timeout=5)
        # Removed: refused with an alert from the next handshake on.
        await publish(redis_server.url, dataclasses.replace(
            base, certs={"blog.example.org": BLOG}))
        assert await eventually(lambda: refused("shop.example.com"), timeout=5)
        assert not await refused("blog.example.org")

    run(scenario)


async def _not(check: Any) -> bool:
    return not await check


def test_the_tls_listener_opens_only_with_the_first_table(wildcard: dict[str, str]) -> None:
    """Before its first table a router does not take TLS connections at all (a
    handshake then could not have the table's certificates); the port is bound."""

    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (shop,) = await backends(stack, "shop")
        router = await start_tls_router(stack, None, wait=False, **wildcard)
        assert router.bound_https_port
        await asyncio.sleep(0.2)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", router.bound_https_port)
        # A port another socket listens on fails the start, naming the key.
        other = Router()
        stack.push_async_callback(other.close)
        with pytest.raises(Unavailable, match="cannot listen") as info:
            await other.start_https("127.0.0.1", router.bound_http_port)
        assert "https_listen" in str(info.value.hint)
        router.set_table(tls_table({"shop": [shop]}, cnames={"shop.example.com": "shop"},
                                   certs={"shop.example.com": SHOP}))
        await asyncio.wait_for(router.https_open.wait(), 5)
        client = await TlsClient.connect(stack, router, "shop.example.com")
        assert (await client.get("shop.example.com")).status == 200

    run(scenario)


def test_a_broken_certificate_is_logged_once_and_left_out(
        wildcard: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (web,) = await backends(stack, "web")
        other_key = CA.issue("blog.example.org")[1]
        encrypted = _encrypted_key(BLOG[1])
        certs = {
            "shop.example.com": SHOP,
            "blog.example.org": (BLOG[0], other_key),  # the key of another certificate
            "www.blog.example.org": (BLOG[0], encrypted),  # encrypted: must not prompt
            "bad.example.com": ("-----BEGIN CERTIFICATE-----\nnot one\n", SHOP[1]),
            "stolen.example.com": SHOP,  # a certificate filed under a name it is not for
        }
        routes = tls_table({"web": [web]}, cnames={d: "web" for d in certs}, certs=certs)
        with caplog.at_level(logging.WARNING, logger="dinp.router"):
            router = await start_tls_router(stack, routes, **wildcard)
            for refused in ("blog.example.org", "www.blog.example.org", "bad.example.com",
                            "stolen.example.com"):
                with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
                    await TlsClient.connect(stack, router, refused, context=no_verify())
            # The others serve on.
            assert (await TlsClient.connect(stack, router, "shop.example.com")).names() == [
                "shop.example.com"]
            assert (await TlsClient.connect(stack, router, "web.apps.test")).names() == [
                "*.apps.test"]
            assert router.stats()["tls_certificates"] == 1
            assert router.stats()["tls_certificates_refused"] == 4
            # The same table again, and one with another route: not logged again.
            router.set_table(dataclasses.replace(routes, rev=7))
            router.set_table(dataclasses.replace(routes, hosts={**routes.hosts, "x": "x"}))
            await router.proxy.certs.settled()
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 4, errors
        for domain in ("blog.example.org", "www.blog.example.org", "bad.example.com",
                       "stolen.example.com"):
            assert sum(f" for {domain} cannot" in e for e in errors) == 1, (domain, errors)
        assert "it is for shop.example.com" in " ".join(errors)
        for secret in (other_key, encrypted, SHOP[1], BLOG[1]):
            body = secret.splitlines()[1]
            assert body not in caplog.text

    run(scenario)


def _encrypted_key(pem: str) -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pem.encode(), None)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(b"secret")).decode()


def test_a_broken_operator_certificate_stops_the_start(tmp_path: Path) -> None:
    from dinp.errors import ConfigError

    cert, key = CA.files(tmp_path, "w", f"*.{DOMAIN}")
    other = CA.files(tmp_path, "o", "other.test")[1]
    with pytest.raises(ConfigError, match="cannot use the TLS certificate") as info:
        Router(tls_cert_file=str(cert), tls_key_file=str(other))
    assert other.read_text().splitlines()[1] not in str(info.value)
    with pytest.raises(ConfigError, match="No such file"):
        Router(tls_cert_file=str(tmp_path / "missing.pem"), tls_key_file=str(key))
    # The key in the certificate's file, as some tools write them.
    both = tmp_path / "both.pem"
    both.write_text(cert.read_text() + key.read_text())
    Router(tls_cert_file=str(both))


def test_metrics_count_refused_handshakes(wildcard: dict[str, str]) -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (web,) = await backends(stack, "web")
        router = await start_tls_router(stack, tls_table(
            {"web": [web]}, cnames={"shop.example.com": "web"},
            certs={"shop.example.com": SHOP}), **wildcard)
        for _ in range(3):
            with pytest.raises(ssl.SSLError):
                await TlsClient.connect(stack, router, "nobody.example", context=no_verify())
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{router.bound_admin_port}/metrics") as resp:
            values = dict(line.rsplit(" ", 1) for line in (await resp.text()).splitlines()
                          if line and not line.startswith("#"))
        assert values["dinp_router_tls_refused_total"] == "3"
        assert values["dinp_router_tls_certificates"] == "1"
        assert values["dinp_router_tls_certificates_refused"] == "0"

    run(scenario)


def test_thread_safety_of_a_table_change_during_handshakes(wildcard: dict[str, str]) -> None:
    """Tables (and their certificates) change while clients keep handshaking: every
    handshake gets a certificate valid for its name, none fails."""

    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (web,) = await backends(stack, "web")
        routes = tls_table({"web": [web]}, cnames={"shop.example.com": "web"},
                           certs={"shop.example.com": SHOP})
        router = await start_tls_router(stack, routes, **wildcard)
        stop = threading.Event()
        failures: list[str] = []
        done = 0

        def hammer() -> None:
            nonlocal done
            ctx = CA.client_context()
            while not stop.is_set():
                try:
                    with socket.create_connection(("127.0.0.1", router.bound_https_port), 5) \
                            as raw, ctx.wrap_socket(raw, server_hostname="shop.example.com"):
                        done += 1
                except OSError as exc:
                    failures.append(repr(exc))

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            for i in range(20):
                pair = SHOP if i % 2 else CA.issue("shop.example.com")
                router.set_table(dataclasses.replace(routes, certs={"shop.example.com": pair},
                                                     rev=i + 1))
                await asyncio.sleep(0.03)
            await router.proxy.certs.settled()
        finally:
            stop.set()
            await asyncio.to_thread(thread.join, 10)
        assert failures == [] and done > 10, (failures[:3], done)

    run(scenario)


class _CountingTransport:
    """A socket transport whose writes are recorded (everything else passes through)."""

    def __init__(self, raw: asyncio.Transport, writes: list[bytes]) -> None:
        self._raw = raw
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._raw.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


@pytest.mark.parametrize("version", ["TLSv1_3", "TLSv1_2"])
def test_a_closing_response_and_its_close_notify_share_one_send(
        wildcard: dict[str, str], monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    """Each write to the socket is a system call (on loopback, the receiver's work too):
    a response that ends its connection goes out with its close_notify in one, while
    keep-alive responses each go out at once, nothing held back."""
    from dinp.router import tls_stream

    sends: list[list[bytes]] = []
    made = tls_stream.TlsStream.connection_made

    def counted(stream: tls_stream.TlsStream, transport: asyncio.BaseTransport) -> None:
        sends.append([])
        made(stream, _CountingTransport(transport, sends[-1]))  # type: ignore[arg-type]

    monkeypatch.setattr(tls_stream.TlsStream, "connection_made", counted)

    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (web,) = await backends(stack, "web")
        router = await start_tls_router(stack, tls_table({"web": [web]}), **wildcard)

        def exchange(requests: int, host: str = "web.apps.test") -> tuple[list[bytes], bool]:
            """`requests` on one connection, the last with Connection: close: what came
            back, and whether the router ended with a close_notify (not a bare FIN)."""
            ctx = CA.client_context()
            ctx.maximum_version = ssl.TLSVersion[version]
            with socket.create_connection(("127.0.0.1", router.bound_https_port), 5) as raw, \
                    ctx.wrap_socket(raw, server_hostname=host,
                                    suppress_ragged_eofs=False) as conn:
                bodies = []
                for i in range(requests):
                    last = i == requests - 1
                    conn.sendall(b"GET /n%d HTTP/1.1\r\nHost: %s\r\n%s\r\n"
                                 % (i, host.encode(), b"Connection: close\r\n" if last else b""))
                    got = b""
                    while b"\r\n\r\n" not in got:
                        got += (more := conn.recv(65536))
                        assert more, f"closed before the response head: {got!r}"
                    head, _, body = got.partition(b"\r\n\r\n")
                    assert b"content-length:" in head.lower(), head
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    while len(body) < length:
                        body += (more := conn.recv(65536))
                        assert more, f"closed before the response body: {got!r}"
                    bodies.append(head)
                try:
                    notified = conn.recv(65536) == b""  # close_notify (a FIN alone raises)
                except ssl.SSLEOFError:
                    notified = False
                return bodies, notified

        for requests in (1, 3):
            sends.clear()
            bodies, notified = await asyncio.to_thread(exchange, requests)
            assert len(bodies) == requests and all(b.startswith(b"HTTP/1.1 200") for b in bodies)
            assert notified
            (writes,) = sends
            # The server's handshake flight (TLS 1.2: and its Finished), one send per
            # keep-alive response, and the last response with the close_notify (the test
            # backend, aiohttp, sends each small response in one write: one read here).
            handshake = 1 if version == "TLSv1_3" else 2
            assert len(writes) == handshake + requests, [len(w) for w in writes]

        # The router's own answer (no app at this name: 404) the same way.
        sends.clear()
        bodies, notified = await asyncio.to_thread(exchange, 2, "nope.apps.test")
        assert [b[:12] for b in bodies] == [b"HTTP/1.1 404"] * 2 and notified
        (writes,) = sends
        assert len(writes) == (1 if version == "TLSv1_3" else 2) + 2, [len(w) for w in writes]

    run(scenario)


def test_a_closed_connection_leaves_no_garbage_cycle(wildcard: dict[str, str]) -> None:
    """Connections (plain and TLS) are freed by their reference counts as they close: a
    cycle would leave each to the collector, which then frees hundreds at once (OpenSSL's
    state with them), a pause of about 100 ms every thousand connections."""
    import gc

    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (web,) = await backends(stack, "web")
        router = await start_tls_router(stack, tls_table({"web": [web]}), **wildcard)
        ports = {"plain": router.bound_http_port, "tls": router.bound_https_port}

        def connections(kind: str, count: int) -> None:
            ctx = CA.client_context()
            request = b"GET / HTTP/1.1\r\nHost: web.apps.test\r\nConnection: close\r\n\r\n"
            for _ in range(count):
                with socket.create_connection(("127.0.0.1", ports[kind] or 0), 5) as raw:
                    conn = ctx.wrap_socket(raw, server_hostname="web.apps.test") \
                        if kind == "tls" else raw
                    conn.sendall(request)
                    while conn.recv(65536):
                        pass
                    conn.close()

        for kind in ("plain", "tls"):
            await asyncio.to_thread(connections, kind, 5)  # pools and caches filled
            gc.collect()
            gc.disable()
            try:
                await asyncio.to_thread(connections, kind, 40)
                await asyncio.sleep(0.2)
                gc.set_debug(gc.DEBUG_SAVEALL)
                found = gc.collect()
                kinds = sorted({type(o).__name__ for o in gc.garbage})
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
                gc.enable()
            # None of the router's objects (asyncio's selector transports make cycles of
            # their own; uvloop's do not, and it is what `dinp router` runs on).
            ours = {"TlsStream", "ClientConnection", "TlsClientConnection", "Request",
                    "HttpRequestParser", "HttpResponseParser", "SSLObject", "_SSLSocket",
                    "MemoryBIO", "BackendConnection"}
            assert not ours & set(kinds), (kind, found, kinds)
            if type(asyncio.get_running_loop()).__module__.startswith("uvloop"):
                assert found < 40, (kind, found, kinds)  # one cycle per connection: > 500

    run(scenario)
