"""`dinp router` as operators run it: a process (with its worker processes), driven by real
clients (curl, wrk) against aiohttp backends, following a private redis-server that the
tests stop and start again.

What only a process can show is tested here: the router's own memory while 1 GB crosses it
each way, several workers sharing one port, and wrk soaks with zero failed requests while
routes change and while Redis goes away and comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from dinp.routes import HttpsPolicy, RedisRouteStore, RouteTable
from tests.integration.test_router import backends, run, table
from tests.support import DINP, CertAuthority, RedisServer, free_port

GB = 1 << 30


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (apt-get install {tool})")
    return path


def rss_kb(pid: int) -> int:
    """The resident memory of a process, in KB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


async def publish(url: str, new: RouteTable) -> int:
    store = RedisRouteStore(url)
    try:
        return await asyncio.to_thread(store.publish, new)
    finally:
        store.client.close()


@dataclass
class RouterProcess:
    """`dinp router` started by a test; `stop()` is SIGTERM and waits for the exit."""

    proc: subprocess.Popen[bytes]
    port: int
    admin: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def health(self) -> dict[str, Any]:
        return (await self.health_status())[1]

    async def health_status(self) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{self.admin}/health") as resp:
            return resp.status, dict(await resp.json())

    async def metrics(self) -> dict[str, float]:
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{self.admin}/metrics") as resp:
            text = await resp.text()
        return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in text.splitlines()
                                         if line and not line.startswith("#"))}

    def workers(self) -> list[int]:
        """The worker processes (not multiprocessing's resource tracker)."""
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        children = [int(p) for p in path.read_text().split()]
        return [pid for pid in children
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]

    async def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, 20)


@contextlib.asynccontextmanager
async def router_process(tmp_path: Path, redis_url: str, *args: str, ready: bool = True,
                         **env: str) -> AsyncIterator[RouterProcess]:
    """Start `dinp router`; wait until /health says ok (`ready`) or merely answers."""
    port, admin = free_port(), free_port()
    log = tmp_path / f"router-{port}.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DINP_")}
    environ.update(DINP_RESYNC_INTERVAL="1", PYTHONUNBUFFERED="1", **env)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [DINP, "router", "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}",
             "--redis-url", redis_url, *args],
            env=environ, stdout=out, stderr=subprocess.STDOUT,
        )
    router = RouterProcess(proc, port, admin, log)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, log.read_text()
            with contextlib.suppress(aiohttp.ClientError):
                if (await router.health())["status"] in ({"ok"} if ready else {"ok",
                                                                                "starting"}):
                    break
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.05)
        yield router
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class WrkResult:
    requests: int
    non_2xx: int
    socket_errors: int
    output: str


class Wrk:
    """A wrk run in the background: started now, its result awaited later."""

    def __init__(self, url: str, host: str, *, seconds: float, connections: int = 16) -> None:
        self.args = [need("wrk"), "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
                     "-H", f"Host: {host}", url]
        self._task: asyncio.Task[WrkResult] | None = None

    def start(self) -> Wrk:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> WrkResult:
        proc = await asyncio.create_subprocess_exec(*self.args, stdout=subprocess.PIPE,
                                                    stderr=subprocess.STDOUT)
        out = (await proc.communicate())[0].decode()
        requests = re.search(r"(\d+) requests in", out)
        non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                           r"timeout (\d+)", out)
        assert requests, out
        return WrkResult(int(requests.group(1)), int(non_2xx.group(1)) if non_2xx else 0,
                         sum(map(int, errors.groups())) if errors else 0, out)

    async def result(self) -> WrkResult:
        assert self._task is not None
        return await self._task


def no_failures(result: WrkResult) -> None:
    assert result.requests > 500, result.output  # it did run under load
    assert (result.non_2xx, result.socket_errors) == (0, 0), result.output


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    yield redis_server


# -- memory -----------------------------------------------------------------------------------

class Sink:
    """Routes for bulk transfers: a body of any size out, and one counted on the way in."""

    def __init__(self) -> None:
        self.received: list[tuple[int, str | None]] = []

    async def start(self, stack: contextlib.AsyncExitStack) -> str:
        app = web.Application(client_max_size=2 * GB)
        app.router.add_get("/zeros", self.zeros)
        app.router.add_put("/sink", self.sink)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        stack.push_async_callback(runner.cleanup)
        return f"127.0.0.1:{runner.addresses[0][1]}"

    async def zeros(self, request: web.Request) -> web.StreamResponse:
        size = int(request.query["size"])
        resp = web.StreamResponse()
        resp.content_length = size
        await resp.prepare(request)
        chunk = bytes(1 << 20)
        for _ in range(size >> 20):
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def sink(self, request: web.Request) -> web.Response:
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
        self.received.append((size, request.headers.get("Transfer-Encoding")))
        return web.Response(text=str(size))


async def curl(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(need("curl"), "-sS", *args,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def shell(command: str) -> str:
    proc = await asyncio.create_subprocess_shell(command, stdout=subprocess.PIPE,
                                                 stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


def test_1_gb_each_way_in_a_few_mb(redis: RedisServer, tmp_path: Path) -> None:
    """A 1 GB download, a 1 GB upload with a Content-Length and a 1 GB chunked upload cross
    the router while its resident memory stays within a few MB of where it started."""

    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        sink = Sink()
        addr = await sink.start(stack)
        await publish(redis.url, table({"big": [addr]}))
        router = await stack.enter_async_context(
            router_process(tmp_path, redis.url, "--workers", "1"))
        host = ["-H", "Host: big.localhost"]
        sparse = tmp_path / "1g"
        with sparse.open("wb") as f:
            f.truncate(GB)  # a sparse file: 1 GB of zeros that takes no disk
        small = tmp_path / "small"
        small.write_bytes(bytes(8 << 20))
        # Warm up (allocator arenas, buffers), then measure from there.
        await curl(*host, "-o", "/dev/null", f"{router.url}/zeros?size={16 << 20}")
        await curl(*host, "-T", str(small), f"{router.url}/sink")
        baseline = rss_kb(router.proc.pid)
        peak = baseline
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_kb(router.proc.pid))
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample())
        started = time.monotonic()
        got = await curl(*host, "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                         f"{router.url}/zeros?size={GB}")
        assert got == f"200 {GB}"
        assert await curl(*host, "-T", str(sparse), f"{router.url}/sink") == str(GB)
        chunked = await shell(f"head -c {GB} /dev/zero | curl -sS -T - -H 'Host: big.localhost' "
                              f"{router.url}/sink")
        assert chunked == str(GB)
        elapsed = time.monotonic() - started
        done.set()
        await sampler
        assert sink.received[-2:] == [(GB, None), (GB, "chunked")]
        grown = (peak - baseline) / 1024
        print(f"3 GB through the router in {elapsed:.1f} s; RSS {baseline / 1024:.1f} MB, "
              f"peak +{grown:.1f} MB")
        assert grown < 8, f"the router grew by {grown:.1f} MB while 3 GB crossed it"

    run(scenario, timeout=60)


# -- several workers ----------------------------------------------------------------------------

def established_by(pid: int, port: int) -> int:
    """How many established TCP connections to local `port` process `pid` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == "01" and fields[9] in inodes:
            count += 1
    return count


def test_workers_share_the_port_and_stop_together(redis: RedisServer, tmp_path: Path) -> None:
    access_log = tmp_path / "access.log"

    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (b,) = await backends(stack, "web")
        await publish(redis.url, table({"web": [b]}))
        router = await stack.enter_async_context(
            router_process(tmp_path, redis.url, "--workers", "2",
                           "--access-log", str(access_log)))
        workers = router.workers()
        assert len(workers) == 2
        health = await router.health()
        assert (health["workers"], health["routes"], health["redis"]) == (2, 1, True)

        # 32 keep-alive clients: the kernel spreads them over both workers.
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(connector=connector) as http:
            async def get() -> int:
                async with http.get(router.url, headers={"Host": "web.localhost"}) as resp:
                    await resp.read()
                    return resp.status

            assert await asyncio.gather(*(get() for _ in range(32))) == [200] * 32
            assert await asyncio.gather(*(get() for _ in range(32))) == [200] * 32
            spread = [established_by(pid, router.port) for pid in workers]
            assert all(n > 0 for n in spread) and sum(spread) >= 16, spread
        metrics = await router.metrics()
        assert metrics['dinp_router_requests_total{app="web",code="200"}'] == 64
        assert metrics["dinp_router_workers"] == 2

        assert await router.stop() == 0
        for pid in workers:
            assert not Path(f"/proc/{pid}").exists() or \
                "zombie" in Path(f"/proc/{pid}/status").read_text()
        lines = access_log.read_text().splitlines()
        assert len(lines) == 64 and all(' "GET / HTTP/1.1" 200 ' in line for line in lines)

    run(scenario, timeout=40)


# -- soaks under wrk ----------------------------------------------------------------------------

def test_route_changes_under_load_fail_no_request(redis: RedisServer, tmp_path: Path) -> None:
    """A change is served within 100 ms of its notification, and while routes change
    every 100 ms under wrk, not one request fails."""

    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        a, b, c = await backends(stack, "a", "b", "c")
        await publish(redis.url, table({"web": [a]}, cnames={"www.example.com": "web"}))
        router = await stack.enter_async_context(
            router_process(tmp_path, redis.url, "--workers", "1"))

        async with aiohttp.ClientSession() as http:
            async def name() -> str:
                async with http.get(router.url, headers={"Host": "www.example.com"}) as resp:
                    return str((await resp.json())["name"])

            assert await name() == "a"
            delays = []
            for to in (b, c, a):
                await publish(redis.url, table({"web": [to]}, cnames={"www.example.com": "web"}))
                published = time.monotonic()
                while await name() != to.name:
                    assert time.monotonic() - published < 2
                delays.append(time.monotonic() - published)
            assert max(delays) < 0.1, delays

        wrk = Wrk(router.url, "web.localhost", seconds=3).start()
        tables = [[a], [b], [a, b], [c], [b, c], [a, b, c]]
        for i in range(25):
            await asyncio.sleep(0.1)
            await publish(redis.url, table({"web": tables[i % len(tables)]}))
        result = await wrk.result()
        no_failures(result)
        assert (await router.health())["rev"] >= 28

    run(scenario, timeout=40)


def test_redis_stopped_and_restarted_under_load(redis: RedisServer, tmp_path: Path) -> None:
    """While Redis is away the router serves its last table, says so on /health, and
    reconnects when Redis is back (empty, until the server rewrites the table): not one
    request fails meanwhile."""

    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        a, b = await backends(stack, "a", "b")
        await publish(redis.url, table({"web": [a, b]}))
        router = await stack.enter_async_context(
            router_process(tmp_path, redis.url, "--workers", "1"))
        wrk = Wrk(router.url, "web.localhost", seconds=4).start()
        await asyncio.sleep(0.7)
        await asyncio.to_thread(redis.stop)
        deadline = time.monotonic() + 3
        while (await router.health())["redis"] is not False:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.8)
        await asyncio.to_thread(redis.start)  # back, empty
        await asyncio.sleep(0.3)
        await publish(redis.url, table({"web": [a, b]}))  # what the server does
        deadline = time.monotonic() + 5
        while (health := await router.health())["redis"] is not True:
            assert time.monotonic() < deadline, health
            await asyncio.sleep(0.05)
        no_failures(await wrk.result())
        assert "Redis at redis://127.0.0.1" in router.log.read_text()  # it said so

    run(scenario, timeout=40)


def test_metrics_after_a_soak(redis: RedisServer, tmp_path: Path) -> None:
    """The latency histogram and counters add up after a short wrk run."""

    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (b,) = await backends(stack, "web")
        await publish(redis.url, table({"web": [b]}))
        router = await stack.enter_async_context(
            router_process(tmp_path, redis.url, "--workers", "1"))
        result = await Wrk(router.url, "web.localhost", seconds=1, connections=8).start().result()
        no_failures(result)
        metrics = await router.metrics()
        count = metrics['dinp_router_request_duration_seconds_count{app="web"}']
        assert count == metrics['dinp_router_requests_total{app="web",code="200"}']
        assert count >= result.requests  # wrk counts only the responses it completed
        assert metrics['dinp_router_request_duration_seconds_bucket{app="web",le="+Inf"}'] \
            == count
        assert json.dumps(await router.health())  # still answers

    run(scenario, timeout=30)


def test_a_router_without_a_table_is_not_ready_and_answers_503(
    redis: RedisServer, tmp_path: Path
) -> None:
    """Started while Redis is down, a router has no table: a load balancer must not send
    it traffic (/health 503), and a request that comes anyway gets 503 with Retry-After,
    never 404 "no such app". Redis back but empty changes nothing; the first table does."""

    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (a,) = await backends(stack, "a")
        await asyncio.to_thread(redis.stop)
        router = await stack.enter_async_context(
            router_process(tmp_path, redis.url, "--workers", "2", ready=False))

        async def get() -> tuple[int, dict[str, str]]:
            async with aiohttp.ClientSession() as http, http.get(
                    router.url, headers={"Host": "web.localhost"}) as resp:
                return resp.status, dict(resp.headers)

        for _ in range(2):
            status, health = await router.health_status()
            assert (status, health["status"]) == (503, "starting"), health
            status, headers = await get()
            assert status == 503 and headers["Retry-After"] == "1"
            assert headers["X-Dinp-Error"] == "503"
            if redis.proc is not None:
                break
            await asyncio.to_thread(redis.start)  # back, but nothing published yet
            deadline = time.monotonic() + 5
            while (await router.health())["redis"] is not True:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)

        await publish(redis.url, table({"web": [a]}))
        deadline = time.monotonic() + 5
        while (await router.health_status())[0] != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert (await get())[0] == 200
        async with aiohttp.ClientSession() as http, http.get(
                router.url, headers={"Host": "nothing.localhost"}) as resp:
            assert resp.status == 404  # with a table, an unknown host is a 404 again
        assert "not ready" in router.log.read_text()

    run(scenario, timeout=60)


def test_a_second_signal_ends_the_grace_period_at_once(redis: RedisServer,
                                                      tmp_path: Path) -> None:
    """The first SIGTERM lets a request in flight finish (5 s of grace); a second one ends
    the wait: the router exits with code 1 at once, through its `finally` blocks (no
    traceback), instead of being killed mid-way."""

    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (a,) = await backends(stack, "a")
        await publish(redis.url, table({"web": [a]}))
        router = await stack.enter_async_context(
            router_process(tmp_path, redis.url, "--workers", "1"))
        http = await stack.enter_async_context(aiohttp.ClientSession())
        slow = asyncio.create_task(http.get(f"{router.url}/slow?s=30",
                                            headers={"Host": "web.localhost"}))
        await asyncio.sleep(0.5)
        router.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert router.proc.poll() is None  # waiting for the request in flight
        router.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(router.proc.wait, 10)
        slow.cancel()
        log = router.log.read_text()
        assert code == 1, log
        assert "exiting now" in log and "Traceback" not in log
        # close() went on past the grace period it no longer waited for: its `finally`
        # work ran (os._exit would have skipped it).
        assert "cutting 1 connection(s) still busy" in log

    run(scenario, timeout=40)


# -- HTTPS --------------------------------------------------------------------------------------

def test_two_workers_serve_tls(redis: RedisServer, tmp_path: Path) -> None:
    """`dinp router --workers 2` with a TLS listener: curl, verifying the chain and the
    name, gets a custom domain's own certificate and the wildcard for an app's host, over
    both workers; a name without a certificate is refused; a plain request to an app that
    asks for HTTPS is redirected; the certificates follow Redis; SIGTERM stops it all."""
    ca = CertAuthority.make()
    wildcard_cert, wildcard_key = ca.files(tmp_path, "wildcard", "*.apps.test")
    (tmp_path / "ca.pem").write_text(ca.cert_pem)
    https_port = free_port()

    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (b,) = await backends(stack, "web")
        routes = dataclasses.replace(
            table({"web": [b]}, domain="apps.test", cnames={"shop.example.com": "web"}),
            certs={"shop.example.com": ca.issue("shop.example.com")},
            https={"web.apps.test": HttpsPolicy(redirect=True, hsts=60).to_json()})
        await publish(redis.url, routes)
        router = await stack.enter_async_context(router_process(
            tmp_path, redis.url, "--workers", "2", "--https-listen",
            f"127.0.0.1:{https_port}", "--tls-cert", str(wildcard_cert), "--tls-key",
            str(wildcard_key)))
        workers = router.workers()
        assert len(workers) == 2

        def https(name: str, *args: str) -> list[str]:
            return ["--cacert", str(tmp_path / "ca.pem"), "--resolve",
                    f"{name}:{https_port}:127.0.0.1", *args, f"https://{name}:{https_port}/"]

        for name in ("shop.example.com", "web.apps.test"):
            out = await curl("-w", "\n%{http_code} %{ssl_verify_result}", *https(name))
            body, status = out.rsplit("\n", 1)
            assert status == "200 0", out
            assert json.loads(body)["headers"]["X-Forwarded-Proto"] == "https"
        proc = await asyncio.create_subprocess_exec(
            need("curl"), "-sS", *https("nope.example.net"), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        _, err = await proc.communicate()
        assert proc.returncode == 35 and b"unrecognized name" in err, err
        redirect = await curl("-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                              "-H", "Host: web.apps.test", f"{router.url}/x?y")
        assert redirect == f"308 https://web.apps.test:{https_port}/x?y"

        # Keep-alive TLS connections spread over both workers.
        connector = aiohttp.TCPConnector(limit=0, ssl=ca.client_context(),
                                         resolver=_Localhost())
        async with aiohttp.ClientSession(connector=connector) as http:
            async def get() -> int:
                async with http.get(f"https://shop.example.com:{https_port}/") as resp:
                    await resp.read()
                    return resp.status

            assert await asyncio.gather(*(get() for _ in range(32))) == [200] * 32
            spread = [established_by(pid, https_port) for pid in workers]
            assert all(n > 0 for n in spread), spread

        # A session resumes whichever worker takes the next connection (they share their
        # ticket keys): with keys of their own, about half of these would not.
        reused = await asyncio.to_thread(_resumptions, ca, https_port, "shop.example.com", 12)
        assert reused == [True] * 12, reused

        # A domain removed from Redis is refused by every worker from then on.
        await publish(redis.url, dataclasses.replace(routes, certs={}))
        deadline = time.monotonic() + 5
        while True:
            codes = []
            for _ in range(8):  # new connections: the kernel spreads them over both
                proc = await asyncio.create_subprocess_exec(
                    need("curl"), "-sS", "-o", "/dev/null", *https("shop.example.com"),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                await proc.communicate()
                codes.append(proc.returncode)
            if codes == [35] * 8:
                break
            assert time.monotonic() < deadline, codes
            await asyncio.sleep(0.1)
        metrics = await router.metrics()
        assert metrics["dinp_router_tls_refused_total"] >= 9
        assert metrics["dinp_router_tls_certificates"] == 0
        assert await router.stop() == 0

    run(scenario, timeout=60)


def _resumptions(ca: CertAuthority, port: int, name: str, count: int) -> list[bool]:
    """One TLS session, then `count` new connections offering it: whether each resumed."""

    ctx = ca.client_context()
    request = b"GET / HTTP/1.1\r\nHost: %b\r\n\r\n" % name.encode()
    with socket.create_connection(("127.0.0.1", port), 5) as raw, \
            ctx.wrap_socket(raw, server_hostname=name) as tls:
        tls.sendall(request)
        tls.recv(65536)  # the TLS 1.3 tickets come with the first data
        session = tls.session
    reused = []
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), 5) as raw, \
                ctx.wrap_socket(raw, server_hostname=name, session=session) as tls:
            tls.sendall(request)
            tls.recv(65536)
            reused.append(tls.session_reused)
    return reused


def test_renewed_certificate_files_serve_without_a_restart(redis: RedisServer,
                                                           tmp_path: Path) -> None:
    """The operator's certificate renewed while `dinp router --workers 2` runs, both ways
    renewals happen: files rewritten one after the other (the certificate first: until
    its key follows, the pair does not load, and the one before serves on, said once in
    the log and by a metric), and certbot's symlinks pointed at new files. Each time every
    worker serves the new one within seconds, and a connection made before keeps
    working."""
    from cryptography import x509

    ca = CertAuthority.make()
    archive, live = tmp_path / "archive", tmp_path / "live"
    archive.mkdir()
    live.mkdir()
    cert_file, key_file = live / "fullchain.pem", live / "privkey.pem"
    first_cert, first_key = ca.files(archive, "1", "*.apps.test")
    cert_file.symlink_to(first_cert)
    key_file.symlink_to(first_key)
    (tmp_path / "ca.pem").write_text(ca.cert_pem)
    https_port = free_port()

    def leaf(chain: str) -> x509.Certificate:
        return x509.load_pem_x509_certificates(chain.encode())[0]

    def served(connections: int = 8) -> set[int]:
        """The serials new connections get (the kernel spreads them over both workers)."""
        ctx = ca.client_context()
        serials = set()
        for _ in range(connections):
            with socket.create_connection(("127.0.0.1", https_port), 5) as raw, \
                    ctx.wrap_socket(raw, server_hostname="web.apps.test") as tls:
                der = tls.getpeercert(binary_form=True)
                assert der is not None
                serials.add(x509.load_der_x509_certificate(der).serial_number)
        return serials

    async def until(check: Any, what: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not await check():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.2)

    async def scenario(stack: contextlib.AsyncExitStack) -> None:
        (b,) = await backends(stack, "web")
        await publish(redis.url, table({"web": [b]}, domain="apps.test"))
        router = await stack.enter_async_context(router_process(
            tmp_path, redis.url, "--workers", "2", "--https-listen",
            f"127.0.0.1:{https_port}", "--tls-cert", str(cert_file), "--tls-key",
            str(key_file)))
        first = leaf(first_cert.read_text())
        assert await asyncio.to_thread(served) == {first.serial_number}
        metrics = await router.metrics()
        assert metrics["dinp_router_tls_file_expiry_timestamp_seconds"] == \
            first.not_valid_after_utc.timestamp()
        assert metrics["dinp_router_tls_file_stale"] == 0

        # A keep-alive connection from before the renewals: it keeps the certificate
        # it began with, and keeps working.
        kept = http.client.HTTPConnection("web.apps.test", https_port, timeout=5)
        kept.sock = ca.client_context().wrap_socket(
            socket.create_connection(("127.0.0.1", https_port), 5),
            server_hostname="web.apps.test")
        stack.callback(kept.close)
        tls = kept.sock

        def ask() -> tuple[int, int]:
            kept.request("GET", "/")
            resp = kept.getresponse()
            resp.read()
            assert kept.sock is tls  # the same connection, not a new one
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return resp.status, x509.load_der_x509_certificate(der).serial_number

        assert await asyncio.to_thread(ask) == (200, first.serial_number)

        # Rewritten in place, the certificate first, its key not yet: the new certificate
        # with the old key does not load, and the old pair serves on.
        chain, key = ca.issue("*.apps.test", days=60)
        second = leaf(chain)
        first_cert.write_text(chain)

        async def stale() -> bool:
            return (await router.metrics())["dinp_router_tls_file_stale"] == 1

        await until(stale, "the stale files to be seen")
        assert await asyncio.to_thread(served) == {first.serial_number}
        await asyncio.sleep(5)  # two more looks: the failure is not logged again
        refusals = router.log.read_text().count("the certificate loaded before serves on")
        assert refusals == 2, router.log.read_text()  # once per worker

        first_key.write_text(key)  # the key follows: the pair loads in every worker

        async def serving(cert: x509.Certificate) -> bool:
            metrics = await router.metrics()
            return (await asyncio.to_thread(served) == {cert.serial_number}
                    and metrics["dinp_router_tls_file_stale"] == 0
                    and metrics["dinp_router_tls_file_expiry_timestamp_seconds"]
                    == cert.not_valid_after_utc.timestamp())

        await until(lambda: serving(second), "the rewritten pair to serve")
        assert await asyncio.to_thread(ask) == (200, first.serial_number)

        # certbot's way: new files in the archive, the live symlinks pointed at them.
        third_chain, third_pem = ca.issue("*.apps.test", days=90)
        third_cert, third_key = archive / "3.crt", archive / "3.key"
        third_cert.write_text(third_chain)
        third_key.write_text(third_pem)
        for link, target in ((cert_file, third_cert), (key_file, third_key)):
            link.with_suffix(".new").symlink_to(target)
            os.replace(link.with_suffix(".new"), link)
        await until(lambda: serving(leaf(third_cert.read_text())), "the new links to serve")
        assert await asyncio.to_thread(ask) == (200, first.serial_number)

        async def logged() -> bool:  # two renewals, two workers
            return router.log.read_text().count("changed: serving it") == 4

        await until(logged, "each worker to log each renewal")

        # The files broken, then a worker killed: the one its supervisor starts in its
        # place gets the pair in use from it, and serves.
        third_key.write_text("not a key")
        await until(stale, "the broken files to be seen")
        killed = router.workers()[0]
        os.kill(killed, signal.SIGKILL)

        async def replaced() -> bool:
            workers = router.workers()
            return (len(workers) == 2 and killed not in workers
                    and (await router.metrics())["dinp_router_workers"] == 2
                    and (await router.health_status())[0] == 200)

        await until(replaced, "the killed worker to be replaced", timeout=30)
        third = leaf(third_chain)
        # 32 new connections: all of them on the old worker would be a 1 in 2**31 chance.
        assert await asyncio.to_thread(served, 32) == {third.serial_number}
        log = router.log.read_text()
        assert "BEGIN" not in log and "PRIVATE" not in log
        assert await router.stop() == 0

    run(scenario, timeout=120)


class _Localhost(AbstractResolver):
    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [{"hostname": host, "host": "127.0.0.1", "port": port,
                 "family": socket.AF_INET, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        pass
