"""The router against real things: aiohttp backends on ephemeral ports, real client sockets
(raw ones for what a library client would hide), the aiohttp websocket client, and a
private redis-server on a free port (the `redis_server` fixture) for the table.

Each test is a plain function that runs one scenario with asyncio.run; an AsyncExitStack
closes every server, router and session the scenario opened, even when it fails. The
router runs in the test's process here, on asyncio and on uvloop; test_router_process.py
runs `dinp router` as a process, as operators do.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import html
import json
import random
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import web

from dinp.config import RouterConfig
from dinp.router import Router, serve
from dinp.router.follower import RedisRouteFollower
from dinp.routes import RedisRouteStore, RouteTable
from tests.support import RedisServer, free_port

MB = 1 << 20
_BASE = random.Random(7).randbytes(MB)


def block(i: int) -> bytes:
    """1 MB of test data whose first bytes number it, so a lost or repeated block shows."""
    return i.to_bytes(8, "big") + _BASE[8:]


def run(scenario: Callable[[contextlib.AsyncExitStack], Coroutine[Any, Any, None]],
        timeout: float = 20.0) -> None:
    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            await asyncio.wait_for(scenario(stack), timeout)

    asyncio.run(main())


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)


@pytest.fixture(autouse=True, params=["asyncio", "uvloop"])
def event_loop_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every scenario runs on both loops: `dinp router` runs on uvloop when it can."""
    if request.param == "uvloop":
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        yield str(request.param)
    finally:
        asyncio.set_event_loop_policy(None)


@pytest.fixture
def redis_db(redis_server: RedisServer) -> str:
    """The URL of a private, empty Redis."""
    return redis_server.url


# -- backends ---------------------------------------------------------------------------

@dataclass
class Backend:
    """A real HTTP server standing for one app instance; every answer carries its name."""

    name: str
    port: int = 0
    streamed: int = 0  # bytes /stream has handed to its transport
    runner: web.AppRunner | None = field(default=None, repr=False)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, stack: contextlib.AsyncExitStack) -> Backend:
        app = web.Application()
        app.router.add_get("/ws", self.websocket)
        app.router.add_get("/stream", self.stream)
        app.router.add_post("/upload", self.upload)
        app.router.add_get("/slow", self.slow)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        self.runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                                    shutdown_timeout=1.0)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]
        stack.push_async_callback(self.runner.cleanup)
        return self

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        return web.json_response(
            {"name": self.name, "method": request.method, "path": request.path_qs,
             "headers": dict(request.headers), "body": body.decode(errors="replace"),
             "peer_port": peer[1] if peer else None},
            headers={"X-App": self.name, "Proxy-Agent": "leak"},
        )

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """`size` bytes of numbered blocks; with `length`, a Content-Length, else chunked."""
        size = int(request.query["size"])
        resp = web.StreamResponse()
        if "length" in request.query:
            resp.content_length = size
        await resp.prepare(request)
        i = sent = 0
        while sent < size:
            data = block(i)[: size - sent]
            await resp.write(data)
            sent += len(data)
            self.streamed += len(data)
            i += 1
        await resp.write_eof()
        return resp

    async def upload(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("hold", 0)))
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_chunked(256 * 1024):
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({
            "name": self.name, "size": size, "sha256": digest.hexdigest(),
            "transfer_encoding": request.headers.get("Transfer-Encoding"),
        })

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query["s"]))
        return web.json_response({"name": self.name})

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(f"{self.name}:{msg.data}")
        return ws


async def backends(stack: contextlib.AsyncExitStack, *names: str) -> list[Backend]:
    return [await Backend(name).start(stack) for name in names]


async def start_router(stack: contextlib.AsyncExitStack, table: RouteTable | None = None,
                       **kwargs: Any) -> Router:
    router = Router(**kwargs)
    if table is not None:
        router.set_table(table)
    stack.push_async_callback(router.close)
    await router.start_http("127.0.0.1", 0)
    await router.start_admin("127.0.0.1", 0)
    return router


def table(apps: dict[str, list[Backend] | list[str]], *, domain: str = "localhost",
          cnames: dict[str, str] | None = None) -> RouteTable:
    """A table serving app `a` at `a.<domain>`, from the given backends or addresses."""
    return RouteTable(
        backends={f"{app}.{domain}": tuple(b if isinstance(b, str) else b.addr for b in bs)
                  for app, bs in apps.items() if bs},
        hosts={f"{app}.{domain}": app for app in apps},
        cnames={d: f"{app}.{domain}" for d, app in (cnames or {}).items()},
    )


async def session(stack: contextlib.AsyncExitStack) -> aiohttp.ClientSession:
    return await stack.enter_async_context(aiohttp.ClientSession())


async def fetch(http: aiohttp.ClientSession, router: Router, host: str, path: str = "/",
                **kwargs: Any) -> tuple[int, str]:
    url = f"http://127.0.0.1:{router.bound_http_port}{path}"
    async with http.get(url, headers={"Host": host}, **kwargs) as resp:
        return resp.status, await resp.text()


async def who(http: aiohttp.ClientSession, router: Router, host: str) -> str:
    status, text = await fetch(http, router, host)
    assert status == 200, text
    return str(json.loads(text)["name"])


async def health(http: aiohttp.ClientSession, router: Router) -> dict[str, Any]:
    async with http.get(f"http://127.0.0.1:{router.bound_admin_port}/health") as resp:
        assert resp.status == 200
        return dict(await resp.json())


# -- a raw HTTP/1.x client, for what aiohttp's client would hide ----------------------------

@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class RawClient:
    """One TCP connection to the router; writes bytes as given, parses responses itself."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, stack: contextlib.AsyncExitStack, router: Router) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", router.bound_http_port)
        client = cls(reader, writer)
        stack.push_async_callback(client.close)
        return client

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, *, head_only: bool = False) -> Response:
        status_line = await self.reader.readline()
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        headers: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(status_line.split()[1])
        if head_only or status in (204, 304) or status < 200:
            body = b""
        elif "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            parts = []
            while size := int((await self.reader.readline()).strip(), 16):
                parts.append(await self.reader.readexactly(size))
                assert await self.reader.readexactly(2) == b"\r\n"
            assert await self.reader.readexactly(2) == b"\r\n"
            body = b"".join(parts)
        else:
            body = await self.reader.read()  # until the router closes
        return Response(status, headers, body)

    async def at_eof(self) -> bool:
        return await asyncio.wait_for(self.reader.read(1), 2) == b""


# -- routing ------------------------------------------------------------------------------

def test_routes_by_host_and_custom_domain() -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        web_, api = await backends(stack, "web", "api")
        router = await start_router(
            stack, table({"web": [web_], "api": [api]}, cnames={"shop.example.com": "api"})
        )
        http = await session(stack)
        assert await who(http, router, "web.localhost") == "web"
        # Port stripped and case ignored.
        assert await who(http, router, f"API.Localhost:{router.bound_http_port}") == "api"
        assert await who(http, router, "shop.example.com") == "api"

    run(scenario)


def test_round_robin_over_three_backends() -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        bs = await backends(stack, "b1", "b2", "b3")
        router = await start_router(stack, table({"web": bs}))
        http = await session(stack)
        seen = [await who(http, router, "web.localhost") for _ in range(9)]
        assert sorted(seen[:3]) == ["b1", "b2", "b3"]
        assert seen[3:6] == seen[:3] and seen[6:] == seen[:3]

    run(scenario)


def test_unknown_host_404_and_app_without_instances_503() -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        router = await start_router(stack, table({"empty": []}))
        http = await session(stack)
        status, text = await fetch(http, router, "nope.localhost")
        assert status == 404
        assert "<html>" in text and "<p>no app is served at nope.localhost</p>" in text
        status, text = await fetch(http, router, "empty.localhost")
        assert status == 503
        assert "app empty has no healthy instance" in text

    run(scenario)


def test_dead_backend_502_and_retry_on_the_next_backend() -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (live,) = await backends(stack, "live")
        dead = f"127.0.0.1:{free_port()}"
        router = await start_router(
            stack, table({"gone": [dead], "web": [dead, live.addr]}), connect_timeout=1.0
        )
        http = await session(stack)
        status, text = await fetch(http, router, "gone.localhost")
        assert status == 502
        assert "no instance of app gone accepted a connection" in text
        # Round robin starts on the dead one every other request: each must still succeed.
        assert [await who(http, router, "web.localhost") for _ in range(6)] == ["live"] * 6

    run(scenario)


def test_backend_closing_before_answering_502_and_slow_backend_504() -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.close()

        rude = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        stack.push_async_callback(rude.wait_closed)
        stack.callback(rude.close)
        (slow,) = await backends(stack, "slow")
        rude_addr = f"127.0.0.1:{rude.sockets[0].getsockname()[1]}"
        router = await start_router(
            stack, table({"rude": [rude_addr], "slow": [slow]}), backend_timeout=0.3
        )
        http = await session(stack)
        status, text = await fetch(http, router, "rude.localhost")
        assert status == 502
        assert "an instance of app rude closed the connection before answering" in text
        started = time.monotonic()
        status, text = await fetch(http, router, "slow.localhost", "/slow?s=5")
        assert status == 504
        assert "app slow did not answer within 0.3 s" in text
        assert time.monotonic() - started < 2

    run(scenario)


def test_an_instance_that_hangs_up_on_new_connections_is_passed_over_for_safe_requests(
) -> None:
    """An instance that is stopping may still have its port accepted by Docker's proxy,
    which then closes the connection without a word. Nothing was answered: a GET goes on
    to the next instance; a POST, which the instance may have acted on, gets a 502."""
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.close()

        rude = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        stack.push_async_callback(rude.wait_closed)
        stack.callback(rude.close)
        (live,) = await backends(stack, "live")
        rude_addr = f"127.0.0.1:{rude.sockets[0].getsockname()[1]}"
        router = await start_router(stack, table({"web": [rude_addr, live.addr],
                                                  "rude": [rude_addr, rude_addr]}))
        http = await session(stack)
        # Round robin starts on the rude one every other request: each must still succeed.
        assert [await who(http, router, "web.localhost") for _ in range(6)] == ["live"] * 6
        url = f"http://127.0.0.1:{router.bound_http_port}/upload"
        async with http.post(url, data=b"x" * 10, headers={"Host": "rude.localhost"}) as r:
            assert r.status == 502
        # Every instance hangs up: the last one's failure is the answer, not a loop.
        status, text = await fetch(http, router, "rude.localhost")
        assert status == 502 and "closed the connection before answering" in text

    run(scenario)


# -- headers ------------------------------------------------------------------------------

@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted", "trusted"])
def test_forwarded_headers_and_hop_by_hop_headers(trusted: bool) -> None:
    """From a client that is not a trusted proxy, X-Forwarded-For and -Proto are
    replaced (anyone could write them); from a trusted one (trusted_proxies), its
    X-Forwarded-For is appended to and its -Proto kept. -Host and -Port are always the
    router's."""

    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (b,) = await backends(stack, "web")
        router = await start_router(stack, table({"web": [b]}), trusted_proxies=(
            ("192.0.2.0/24", "127.0.0.0/8") if trusted else ("192.0.2.0/24",)))
        client = await RawClient.open(stack, router)
        host = f"web.localhost:{router.bound_http_port}"
        await client.send(
            f"GET /h?x=1 HTTP/1.1\r\nHost: {host}\r\n"
            "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n"
            "X-Forwarded-Host: evil.example\r\nConnection: keep-alive, X-Secret\r\n"
            "X-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic eDp5\r\n"
            "TE: trailers\r\nX-Kept: yes\r\n\r\n".encode()
        )
        resp = await client.response()
        assert resp.status == 200
        seen = resp.json()
        assert seen["path"] == "/h?x=1"
        headers = {k.lower(): v for k, v in seen["headers"].items()}
        assert headers["host"] == host
        if trusted:
            assert headers["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
            assert headers["x-forwarded-proto"] == "https"
        else:
            assert headers["x-forwarded-for"] == "127.0.0.1"
            assert headers["x-forwarded-proto"] == "http"
        assert headers["x-forwarded-host"] == host
        assert headers["x-forwarded-port"] == str(router.bound_http_port)
        assert headers["x-kept"] == "yes"
        for hop in ("x-secret", "keep-alive", "proxy-authorization", "te"):
            assert hop not in headers, hop
        # And on the way back.
        assert resp.headers["x-app"] == "web"
        assert "proxy-agent" not in resp.headers

    run(scenario)


# -- bodies -------------------------------------------------------------------------------

def test_streams_50_mb_upload_and_download() -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (b,) = await backends(stack, "web")
        router = await start_router(stack, table({"web": [b]}))
        http = await session(stack)
        base = f"http://127.0.0.1:{router.bound_http_port}"
        expected = hashlib.sha256(b"".join(block(i) for i in range(50))).hexdigest()

        async def body() -> AsyncIterator[bytes]:
            for i in range(50):
                yield block(i)

        # Upload with a Content-Length, and with 100-continue on the way.
        async with http.post(f"{base}/upload", data=body(), expect100=True,
                             headers={"Host": "web.localhost",
                                      "Content-Length": str(50 * MB)}) as resp:
            assert resp.status == 200
            got = await resp.json()
        assert (got["size"], got["sha256"]) == (50 * MB, expected)

        # Download of a chunked response.
        digest = hashlib.sha256()
        size = 0
        async with http.get(f"{base}/stream?size={50 * MB}",
                            headers={"Host": "web.localhost"}) as resp:
            assert resp.status == 200
            assert resp.headers["Transfer-Encoding"] == "chunked"
            async for chunk in resp.content.iter_chunked(MB):
                digest.update(chunk)
                size += len(chunk)
        assert (size, digest.hexdigest()) == (50 * MB, expected)

    run(scenario)


def test_back_pressure_both_ways() -> None:
    """A client that stops reading stops the backend, and a backend that stops reading
    stops the client: the router holds neither body."""

    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (b,) = await backends(stack, "web")
        router = await start_router(stack, table({"web": [b]}))

        # Download of 1 GB that the client does not read for a while.
        client = await RawClient.open(stack, router)
        await client.send(b"GET /stream?size=%d&length HTTP/1.1\r\nHost: web.localhost\r\n\r\n"
                          % (1024 * MB))
        await asyncio.sleep(1.0)
        stalled = b.streamed
        await asyncio.sleep(0.3)
        assert b.streamed == stalled  # the backend is held, not buffered into the router
        assert stalled < 128 * MB  # socket buffers only
        await client.close()
        # The client went away: its connection and the backend's are gone, none pooled.
        assert await eventually(_no_connections(router))
        assert router.proxy.pool.idle_count() == 0

        # Upload of 256 MB to a backend that reads nothing for a second.
        client = await RawClient.open(stack, router)
        sent = 0

        async def upload() -> None:
            nonlocal sent
            await client.send(b"POST /upload?hold=1 HTTP/1.1\r\nHost: web.localhost\r\n"
                              b"Content-Length: %d\r\n\r\n" % (256 * MB))
            for i in range(256):
                await client.send(block(i))
                sent += MB

        task = asyncio.create_task(upload())
        await asyncio.sleep(0.8)
        assert sent < 128 * MB
        await task
        resp = await client.response()
        assert resp.status == 200 and resp.json()["size"] == 256 * MB

    run(scenario)


def _no_connections(router: Router) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not router.proxy.connections

    return check


def test_chunked_request_body() -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (b,) = await backends(stack, "web")
        router = await start_router(stack, table({"web": [b]}))
        client = await RawClient.open(stack, router)
        pieces = [b"hello ", b"chunked " * 1000, b"world"]
        await client.send(b"POST /upload HTTP/1.1\r\nHost: web.localhost\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n")
        for piece in pieces:
            await client.send(b"%x\r\n%b\r\n" % (len(piece), piece))
            await asyncio.sleep(0.02)
        await client.send(b"0\r\n\r\n")
        resp = await client.response()
        assert resp.status == 200
        got = resp.json()
        assert got["size"] == sum(map(len, pieces))
        assert got["sha256"] == hashlib.sha256(b"".join(pieces)).hexdigest()
        assert got["transfer_encoding"] == "chunked"

    run(scenario)


# -- connections --------------------------------------------------------------------------

def test_http10_clients() -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (b,) = await backends(stack, "web")
        router = await start_router(stack, table({"web": [b]}))

        # Plain HTTP/1.0: answered, then closed.
        client = await RawClient.open(stack, router)
        await client.send(b"GET /one HTTP/1.0\r\nHost: web.localhost\r\n\r\n")
        resp = await client.response()
        assert resp.status == 200 and resp.json()["path"] == "/one"
        assert resp.headers["connection"] == "close"
        assert await client.at_eof()

        # One that half-closes once its request is sent still gets the answer.
        client = await RawClient.open(stack, router)
        await client.send(b"GET /half HTTP/1.0\r\nHost: web.localhost\r\n\r\n")
        client.writer.write_eof()
        assert (await client.response()).json()["path"] == "/half"

        # HTTP/1.0 asking for keep-alive gets it, as long as the length is known.
        client = await RawClient.open(stack, router)
        for path in ("/a", "/b"):
            await client.send(b"GET %b HTTP/1.0\r\nHost: web.localhost\r\n"
                              b"Connection: keep-alive\r\n\r\n" % path.encode())
            resp = await client.response()
            assert resp.json()["path"] == path
            assert resp.headers["connection"] == "keep-alive"
        # A chunked backend response reaches it unchunked, ended by the close.
        await client.send(b"GET /stream?size=300000 HTTP/1.0\r\nHost: web.localhost\r\n"
                          b"Connection: keep-alive\r\n\r\n")
        resp = await client.response()
        assert "transfer-encoding" not in resp.headers
        assert resp.body == block(0)[:300000]
        assert await client.at_eof()

    run(scenario)


def test_keep_alive_and_pipelining() -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (b,) = await backends(stack, "web")
        router = await start_router(stack, table({"web": [b]}))
        client = await RawClient.open(stack, router)
        ports = set()
        for i in range(5):
            await client.send(b"GET /k%d HTTP/1.1\r\nHost: web.localhost\r\n\r\n" % i)
            resp = await client.response()
            assert resp.json()["path"] == f"/k{i}"
            ports.add(resp.json()["peer_port"])
        assert len(ports) == 1  # one pooled connection from the router to the backend

        # Pipelined, with a HEAD and a body in the middle: answered in order.
        await client.send(
            b"GET /p1 HTTP/1.1\r\nHost: web.localhost\r\n\r\n"
            b"HEAD /p2 HTTP/1.1\r\nHost: web.localhost\r\n\r\n"
            b"POST /p3 HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /p4 HTTP/1.1\r\nHost: nope.localhost\r\n\r\n"
            b"GET /p5 HTTP/1.1\r\nHost: web.localhost\r\n\r\n"
        )
        assert (await client.response()).json()["path"] == "/p1"
        head = await client.response(head_only=True)
        assert head.status == 200 and int(head.headers["content-length"]) > 0
        third = (await client.response()).json()
        assert (third["path"], third["body"]) == ("/p3", "hello")
        assert (await client.response()).status == 404
        assert (await client.response()).json()["path"] == "/p5"

    run(scenario)


def test_stale_pooled_connection_is_retried_only_for_safe_requests() -> None:
    """A backend may close a kept-alive connection just as the router reuses it. A GET
    is then sent again on a new connection; a POST is not (it may have been acted on)."""

    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        accepted = 0

        async def one_answer_per_connection(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            nonlocal accepted
            accepted += 1
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                await reader.readuntil(b"\r\n\r\n")  # the next request: hang up on it
            writer.close()

        backend = await asyncio.start_server(one_answer_per_connection, "127.0.0.1", 0)
        stack.push_async_callback(backend.wait_closed)
        stack.callback(backend.close)
        addr = f"127.0.0.1:{backend.sockets[0].getsockname()[1]}"
        router = await start_router(stack, table({"web": [addr]}))
        http = await session(stack)
        assert await fetch(http, router, "web.localhost") == (200, "ok")
        assert await fetch(http, router, "web.localhost") == (200, "ok")
        assert accepted == 2  # the pooled one, then a new one for the retry
        url = f"http://127.0.0.1:{router.bound_http_port}/"
        async with http.post(url, data=b"x", headers={"Host": "web.localhost"}) as resp:
            assert resp.status == 502
        assert accepted == 2

    run(scenario)


def test_oversized_request_head_431() -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        router = await start_router(stack, table({"web": []}))
        client = await RawClient.open(stack, router)
        await client.send(b"GET / HTTP/1.1\r\nHost: web.localhost\r\nX-Big: ")
        await client.send(b"a" * 200_000)
        resp = await client.response()
        assert resp.status == 431
        assert await client.at_eof()

    run(scenario)


def test_websocket_upgrade() -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (b,) = await backends(stack, "web")
        router = await start_router(stack, table({"web": [b]}))
        http = await session(stack)
        async with http.ws_connect(f"http://127.0.0.1:{router.bound_http_port}/ws",
                                   headers={"Host": "web.localhost"}) as ws:
            for word in ("hello", "again"):
                await ws.send_str(word)
                assert (await ws.receive_str()) == f"web:{word}"

    run(scenario)


def test_close_lets_requests_in_flight_finish() -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (b,) = await backends(stack, "web")
        router = await start_router(stack, table({"web": [b]}))
        http = await session(stack)
        request = asyncio.create_task(fetch(http, router, "web.localhost", "/slow?s=0.5"))
        await asyncio.sleep(0.2)
        await router.close(grace=5)
        assert (await request)[0] == 200
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", router.bound_http_port)

    run(scenario)


# -- the table from Redis -------------------------------------------------------------------

async def follow(stack: contextlib.AsyncExitStack, router: Router, url: str) -> None:
    follower = RedisRouteFollower(url, router.set_table, resync_interval=0.5)
    router.follower = follower
    task = asyncio.create_task(follower.run())

    async def stop() -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await follower.close()

    stack.push_async_callback(stop)


async def publish(url: str, new: RouteTable) -> int:
    store = RedisRouteStore(url)
    try:
        return await asyncio.to_thread(store.publish, new)
    finally:
        store.client.close()


def test_route_change_in_redis_takes_effect(redis_db: str) -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        one, two = await backends(stack, "one", "two")
        await publish(redis_db, table({"web": [one]}, cnames={"www.example.com": "web"}))
        router = await start_router(stack)
        await follow(stack, router, redis_db)
        http = await session(stack)
        assert await eventually(lambda: _answers(http, router, "web.localhost", "one"))
        assert await who(http, router, "www.example.com") == "one"
        rev = await publish(redis_db, table({"web": [two]}, cnames={"www.example.com": "web"}))
        assert await eventually(lambda: _answers(http, router, "www.example.com", "two"))
        got = await health(http, router)
        assert (got["status"], got["routes"], got["rev"], got["redis"]) == ("ok", 1, rev, True)
        assert got["table_age"] < 1 and got["workers"] == 1

    run(scenario)


async def _answers(http: aiohttp.ClientSession, router: Router, host: str, name: str) -> bool:
    status, text = await fetch(http, router, host)
    return status == 200 and json.loads(text)["name"] == name


class Cutter:
    """A TCP relay to Redis that the test can cut, as if Redis went away."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{self.port}/0"

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in self.writers:
                writer.transport.abort()
            await self.server.wait_closed()
            self.server = None


def test_keeps_the_last_table_while_redis_is_away(redis_db: str) -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (b,) = await backends(stack, "web")
        await publish(redis_db, table({"web": [b]}))
        cutter = Cutter(int(redis_db.rsplit(":", 1)[1].split("/")[0]))
        url = await cutter.start()
        stack.push_async_callback(cutter.cut)
        router = await start_router(stack)
        await follow(stack, router, url)
        http = await session(stack)
        assert await eventually(lambda: _answers(http, router, "web.localhost", "web"))
        assert (await health(http, router))["redis"] is True

        await cutter.cut()

        async def redis_down() -> bool:
            return (await health(http, router))["redis"] is False

        assert await eventually(redis_down, timeout=3)
        await asyncio.sleep(0.6)  # past a resync interval
        assert await who(http, router, "web.localhost") == "web"

        # A router whose Redis never answered serves the table it was given.
        other = await start_router(stack, table({"web": [b]}))
        await follow(stack, other, f"redis://127.0.0.1:{free_port()}/0")
        await asyncio.sleep(0.3)
        assert await who(http, other, "web.localhost") == "web"
        assert (await health(http, other))["redis"] is False

    run(scenario)


def test_serve_runs_the_role_until_cancelled(redis_db: str) -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (b,) = await backends(stack, "web")
        await publish(redis_db, table({"web": [b]}))
        http_port, admin_port = free_port(), free_port()
        config = RouterConfig(http_listen=f"127.0.0.1:{http_port}",
                              admin_listen=f"127.0.0.1:{admin_port}", redis_url=redis_db,
                              resync_interval=1.0, connect_timeout=2.0)
        role = asyncio.create_task(serve(config))
        http = await session(stack)

        async def up() -> bool:
            try:
                async with http.get(f"http://127.0.0.1:{admin_port}/health") as resp:
                    return resp.status == 200 and (await resp.json())["redis"] is True
            except aiohttp.ClientConnectionError:
                return False

        try:
            assert await eventually(up, timeout=5)
            async with http.get(f"http://127.0.0.1:{http_port}/",
                                headers={"Host": "web.localhost"}) as resp:
                assert (await resp.json())["name"] == "web"
        finally:
            role.cancel()
            await asyncio.gather(role, return_exceptions=True)
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", http_port)

    run(scenario)


# -- status pages, limits and timeouts --------------------------------------------------------

async def page(client: RawClient, request: bytes) -> Response:
    """Send `request` and read the router's own answer to it."""
    await client.send(request)
    resp = await client.response()
    assert resp.headers["x-dinp-error"] == str(resp.status)
    assert resp.headers["content-type"] == "text/html; charset=utf-8"
    return resp


def test_status_pages_for_bad_requests() -> None:
    """400, 405, 414 and 431 each come with a page saying what was wrong."""

    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (b,) = await backends(stack, "web")
        router = await start_router(stack, table({"web": [b]}), max_request_line=2048,
                                    max_header_size=16 * 1024)
        cases = [
            (b"GET / HTTP/1.0\r\n\r\n", 400, "the request has no Host header"),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400,
             "the request has more than one Host header"),
            (b"GET / HTTP/1.1\r\nHost web.localhost\r\n\r\n", 400,
             "the request is not valid HTTP/1.1"),
            (b"CONNECT web.localhost:443 HTTP/1.1\r\nHost: web.localhost\r\n\r\n", 405,
             "this router does not tunnel CONNECT"),
            (b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: web.localhost\r\n\r\n", 414,
             "the request's URL is longer than 2048 bytes"),
            (b"GET / HTTP/1.1\r\nHost: web.localhost\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n",
             431, "the request head is larger than 16 KB"),
        ]
        for request, status, message in cases:
            client = await RawClient.open(stack, router)
            resp = await page(client, request)
            assert resp.status == status, (request[:40], resp)
            assert f"<p>{html.escape(message)}</p>".encode() in resp.body
            assert await client.at_eof()  # a client that sends such things is cut off

    run(scenario)


def test_slow_head_408_and_idle_clients_are_closed() -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (b,) = await backends(stack, "web")
        router = await start_router(stack, table({"web": [b]}), header_timeout=0.3,
                                    client_timeout=0.5)
        # A head trickling in for longer than header_timeout.
        slow = await RawClient.open(stack, router)
        await slow.send(b"GET / HTTP/1.1\r\nHost: web.local")
        started = time.monotonic()
        resp = await page(slow, b"host\r\n")
        assert resp.status == 408
        assert b"the request head did not arrive within 0.3 s" in resp.body
        assert 0.25 < time.monotonic() - started < 1.5
        assert await slow.at_eof()

        # A connection that never sends anything is closed after header_timeout.
        silent = await RawClient.open(stack, router)
        started = time.monotonic()
        assert await silent.at_eof()
        assert 0.25 < time.monotonic() - started < 1.5

        # A keep-alive connection idle after its response is closed after client_timeout.
        idle = await RawClient.open(stack, router)
        await idle.send(b"GET / HTTP/1.1\r\nHost: web.localhost\r\n\r\n")
        assert (await idle.response()).status == 200
        started = time.monotonic()
        assert await idle.at_eof()
        assert 0.4 < time.monotonic() - started < 1.5

        # A client that stops sending its body gets a 408 after client_timeout.
        stalled = await RawClient.open(stack, router)
        await stalled.send(b"POST /upload HTTP/1.1\r\nHost: web.localhost\r\n"
                           b"Content-Length: 100\r\n\r\nhalf")
        resp = await page(stalled, b"")
        assert resp.status == 408
        assert b"the request body stopped arriving for 0.5 s" in resp.body

    run(scenario)


def test_connect_timeout_then_the_next_instance() -> None:
    """An instance that does not accept in time is given up after connect_timeout, and
    the request goes to the next one; with no other, a 502 says so."""

    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (live,) = await backends(stack, "live")
        # A listener that accepts nothing, its queue full: later SYNs go unanswered.
        hole = socket.socket()
        stack.callback(hole.close)
        hole.bind(("127.0.0.1", 0))
        hole.listen(0)
        fillers = []
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(hole.getsockname())
            fillers.append(filler)
            stack.callback(filler.close)
        await asyncio.sleep(0.1)
        stuck = f"127.0.0.1:{hole.getsockname()[1]}"
        router = await start_router(stack, table({"web": [stuck, live.addr], "stuck": [stuck]}),
                                    connect_timeout=0.3)
        http = await session(stack)
        started = time.monotonic()
        assert await who(http, router, "web.localhost") == "live"
        assert await who(http, router, "web.localhost") == "live"
        status, text = await fetch(http, router, "stuck.localhost")
        assert status == 502 and "no instance of app stuck accepted a connection" in text
        assert time.monotonic() - started < 2.5

    run(scenario)


def test_failing_instance_is_skipped_for_fail_timeout_then_tried_again() -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (live,) = await backends(stack, "live")
        dead = f"127.0.0.1:{free_port()}"
        router = await start_router(stack, table({"web": [dead, live.addr]}),
                                    fail_timeout=0.5)
        http = await session(stack)

        def connect_errors() -> int:
            return router.stats()["apps"]["web"]["errors"].get("connect", 0)

        assert [await who(http, router, "web.localhost") for _ in range(10)] == ["live"] * 10
        assert connect_errors() == 1  # tried once, then skipped
        assert router.stats()["backends_down"] == 1
        await asyncio.sleep(0.6)
        assert [await who(http, router, "web.localhost") for _ in range(4)] == ["live"] * 4
        assert connect_errors() == 2  # tried again once its time was up

    run(scenario)


# -- request ids, metrics, access log ---------------------------------------------------------

def test_request_id_generated_or_kept() -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (b,) = await backends(stack, "web")
        router = await start_router(stack, table({"web": [b]}))
        client = await RawClient.open(stack, router)
        ids = []
        for _ in range(3):
            await client.send(b"GET / HTTP/1.1\r\nHost: web.localhost\r\n\r\n")
            headers = {k.lower(): v for k, v in (await client.response()).json()["headers"].items()}
            ids.append(headers["x-request-id"])
        assert len(set(ids)) == 3 and all(len(i) >= 18 for i in ids)
        await client.send(b"GET / HTTP/1.1\r\nHost: web.localhost\r\nX-Request-ID: abc-123\r\n\r\n")
        headers = (await client.response()).json()["headers"]
        assert [v for k, v in headers.items() if k.lower() == "x-request-id"] == ["abc-123"]

    run(scenario)


def test_metrics_endpoint() -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (b,) = await backends(stack, "web")
        router = await start_router(stack, table({"web": [b], "empty": []}))
        http = await session(stack)
        for _ in range(3):
            await who(http, router, "web.localhost")
        await fetch(http, router, "empty.localhost")
        await fetch(http, router, "nope.localhost")
        async with http.get(f"http://127.0.0.1:{router.bound_admin_port}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await resp.text()
        values = dict(line.rsplit(" ", 1) for line in text.splitlines()
                      if line and not line.startswith("#"))
        assert values['dinp_router_requests_total{app="web",code="200"}'] == "3"
        assert values['dinp_router_requests_total{app="empty",code="503"}'] == "1"
        assert values['dinp_router_requests_total{app="",code="404"}'] == "1"
        assert values['dinp_router_request_duration_seconds_count{app="web"}'] == "3"
        assert values['dinp_router_request_duration_seconds_bucket{app="web",le="+Inf"}'] == "3"
        assert values["dinp_router_routes"] == "2"
        assert values["dinp_router_route_backends"] == "1"
        assert float(values["dinp_router_route_table_age_seconds"]) < 5
        assert values["dinp_router_backend_idle_connections"] == "1"
        assert "# TYPE dinp_router_request_duration_seconds histogram" in text

    run(scenario)


def test_access_log(tmp_path: Path) -> None:
    path = tmp_path / "access.log"

    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (b,) = await backends(stack, "web")
        router = await start_router(stack, table({"web": [b]}), access_log=str(path))
        client = await RawClient.open(stack, router)
        await client.send(b'GET /a?q="x" HTTP/1.1\r\nHost: web.localhost\r\nReferer: http://r/\r\n'
                          b"User-Agent: test/1\r\nX-Request-Id: rid-1\r\n\r\n")
        body = (await client.response()).body
        await client.send(b"GET / HTTP/1.0\r\nHost: nope.localhost\r\n\r\n")
        await client.response()
        await router.close()  # flushes the log
        first, second = path.read_text().splitlines()
        pattern = (r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] '
                   r'"GET /a\?q=\\"x\\" HTTP/1\.1" 200 (\d+) "http://r/" "test/1" '
                   rf"web\.localhost web {re.escape(b.addr)} \d+\.\d{{3}} rid-1")
        match = re.fullmatch(pattern, first)
        assert match, first
        assert int(match.group(1)) == len(body)
        assert re.fullmatch(r'127\.0\.0\.1 - - \[.*\] "GET / HTTP/1\.0" 404 \d+ "-" "-" '
                            r"nope\.localhost - - \d+\.\d{3} [0-9a-f]{16}-[0-9a-f]+", second)

    run(scenario)


# -- route changes ----------------------------------------------------------------------------

def test_table_change_keeps_requests_in_flight() -> None:
    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        one, two = await backends(stack, "one", "two")
        router = await start_router(stack, table({"web": [one]}))
        http = await session(stack)
        assert await who(http, router, "web.localhost") == "one"  # a pooled connection
        slow = asyncio.create_task(fetch(http, router, "web.localhost", "/slow?s=0.5"))
        await asyncio.sleep(0.1)
        router.set_table(table({"web": [two]}))
        assert await who(http, router, "web.localhost") == "two"
        status, text = await slow
        assert (status, json.loads(text)["name"]) == (200, "one")
        assert router.proxy.pool.idle_count() == 1  # only two's: one's was not kept

    run(scenario)
