"""Helpers shared by the integration and end-to-end tests: free ports, private Redis
servers, throwaway MariaDB databases, dinp processes and HTTP through the router."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

DINP = str(Path(sys.executable).parent / "dinp")
# Label for containers a test starts itself (not through dinp), so teardown finds them.
TEST_LABEL = "io.dinp.test"
# The app network of this test session (`app_network`): every runtime and dinp process the
# tests start uses it, not an operator's `dinp`, and it is removed when the session ends.
TEST_NETWORK = f"dinp-test-{secrets.token_hex(4)}"
MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll until `predicate()` is truthy (an exception counts as not yet) or `timeout`
    passed; return its last answer (falsy on a timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            last = predicate()
        except Exception as exc:  # the thing polled may not be up yet
            last = None
            error: Exception | None = exc
        else:
            error = None
            if last:
                return last
        if time.monotonic() >= deadline:
            return error if error is not None and not last else last
        time.sleep(interval)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.1) -> Any:
    """Poll until `predicate()` is truthy; fail the test saying what did not happen."""
    last = wait_until(predicate, timeout, interval)
    if not last or isinstance(last, Exception):
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")
    return last


class RedisServer:
    """A private `redis-server` on 127.0.0.1:<port>, without persistence, that a test may
    stop and start again on the same port (it comes back empty, like a restarted cache)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        assert self.proc is None, "already running"
        exe = shutil.which("redis-server")
        if exe is None:
            import pytest

            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited at start")
            socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            return True

        wait_for(up, 10, f"redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port: empty, as a restarted Redis is."""
        self.stop()
        self.start()

    def client(self) -> Any:
        """A synchronous client (decoded strings); the caller closes it (or uses `with`)."""
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5, decode_responses=True)


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A private, disposable Redis on a free port, stopped afterwards."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def mysql_database() -> Iterator[str]:
    """A fresh, uniquely named MariaDB database (utf8mb4), dropped afterwards. Skips the
    test when MariaDB cannot be reached (a failure in CI, see tests/conftest.py)."""
    name = f"dinp_test_{secrets.token_hex(6)}"
    try:
        conn = pymysql.connect(**MYSQL, connect_timeout=5)  # type: ignore[arg-type]
    except pymysql.err.OperationalError as exc:
        import pytest

        pytest.skip(f"MariaDB at {MYSQL['host']}:{MYSQL['port']} is unreachable: {exc}")
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    finally:
        conn.close()
    try:
        yield f"mysql+pymysql://root@{MYSQL['host']}:{MYSQL['port']}/{name}"
    finally:
        # A new connection: a long test may have outlived the first.
        conn = pymysql.connect(**MYSQL, connect_timeout=5)  # type: ignore[arg-type]
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()


def http_request(addr: str, host: str, path: str = "/",
                 timeout: float = 5) -> tuple[int, dict[str, str], str]:
    """GET through the router at `addr` (host:port) with a Host header, as a browser would."""
    h, _, p = addr.rpartition(":")
    conn = http.client.HTTPConnection(h, int(p), timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        return resp.status, headers, resp.read().decode(errors="replace")
    finally:
        conn.close()


def http_get(addr: str, host: str, path: str = "/", timeout: float = 5) -> tuple[int, str]:
    status, _, body = http_request(addr, host, path, timeout)
    return status, body


def delete_from_registry(registry: str, repo: str) -> None:
    """Remove every tag of `repo` from the registry (its blobs wait for garbage
    collection); nothing happens if the registry cannot be reached."""
    with contextlib.suppress(OSError):
        tags = json.load(urllib.request.urlopen(
            f"http://{registry}/v2/{repo}/tags/list", timeout=5)).get("tags") or []
        for tag in tags:
            head = urllib.request.Request(
                f"http://{registry}/v2/{repo}/manifests/{tag}", method="HEAD",
                headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
            digest = urllib.request.urlopen(head, timeout=5).headers["Docker-Content-Digest"]
            urllib.request.urlopen(urllib.request.Request(
                f"http://{registry}/v2/{repo}/manifests/{digest}", method="DELETE"), timeout=5)


# An app for the logs tests: serves $PORT (so it is healthy) and prints
# "<instance> <n>" every 0.1 s on stdout, every fifth n also "<instance> err <n>" on
# stderr; with CRASH_AFTER=N it says why on stderr and exits 3 after line N; with
# CHATTY=1 it also prints bursts of 5000 lines (for readers that fall behind).
TICKER_SCRIPT = r"""#!/bin/sh
httpd -f -p "${PORT:-8080}" -h /tmp &
trap 'echo "$DINP_INSTANCE stopping" >&2; exit 0' TERM INT
n=0
while :; do
    if [ -n "${CHATTY:-}" ]; then seq 1 5000; fi
    echo "$DINP_INSTANCE $n"
    if [ $((n % 5)) -eq 0 ]; then echo "$DINP_INSTANCE err $n" >&2; fi
    if [ -n "${CRASH_AFTER:-}" ] && [ "$n" -ge "$CRASH_AFTER" ]; then
        echo "$DINP_INSTANCE dying: boom" >&2
        exit 3
    fi
    n=$((n + 1))
    sleep 0.1
done
"""


@contextlib.contextmanager
def ticker_image(workdir: Path) -> Iterator[str]:
    """Build the ticker app (TICKER_SCRIPT) from dinp/busybox:1 as a local image, removed
    afterwards; agents on this engine start it without a registry."""
    (workdir / "ticker.sh").write_text(TICKER_SCRIPT)
    (workdir / "Dockerfile").write_text(
        'FROM dinp/busybox:1\nCOPY ticker.sh /ticker.sh\nCMD ["/bin/sh", "/ticker.sh"]\n')
    tag = f"dinp-test/ticker:{secrets.token_hex(3)}"
    subprocess.run(["docker", "build", "-q", "-t", tag, str(workdir)], check=True,
                   capture_output=True)
    try:
        yield tag
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], check=False, capture_output=True)


def docker_ids(*labels: str) -> list[str]:
    args = ["docker", "ps", "-q", "--no-trunc"]
    for label in labels:
        args += ["--filter", f"label={label}"]
    return sorted(subprocess.run(args, check=True, capture_output=True, text=True).stdout.split())


def remove_test_network() -> None:
    """Remove this session's app network, if it was made and no container uses it any more
    (never raises: it runs at the end of the session)."""
    with contextlib.suppress(Exception):
        import docker

        client = docker.from_env(timeout=30)
        try:
            for net in client.api.networks(names=[TEST_NETWORK]):
                if net.get("Name") == TEST_NETWORK:
                    with contextlib.suppress(docker.errors.DockerException):
                        client.api.remove_network(net["Id"])
        finally:
            client.close()


def remove_node_containers(node: str) -> None:
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=io.dinp.node={node}"],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], check=False, capture_output=True)


@dataclass
class Proc:
    """A dinp process with its log file; `stop()` is SIGTERM, `kill()` is SIGKILL."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen([DINP, *self.args], env=self.env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 15) -> bool:
        """SIGTERM; True if the process exited by itself, False if it had to be killed."""
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return False
        return True

    def kill(self) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.kill()
            self.popen.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Dinp:
    """Runs `dinp` user verbs with a private HOME, as a user or a CI step would."""

    env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)

    def run(self, *args: str, check: bool = True, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([DINP, *args], env=self.env, capture_output=True, text=True,
                                timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"dinp {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)


def base_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DINP_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), COLUMNS="200",
               PYTHONUNBUFFERED="1", DINP_APP_NETWORK=TEST_NETWORK)
    env.update(extra)
    return env


class TcpProxy:
    """A TCP forwarder on a free local port, to put a network fault between a dinp
    process and a real service: `cut()` drops every connection and refuses new ones at
    once, `hang()` accepts and never answers (a hung server), `heal()` forwards again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        import asyncio
        import threading

        self.target = (target_host, target_port)
        self.port = free_port()
        self.mode = "pass"
        self.loop = asyncio.new_event_loop()
        self._writers: set[Any] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tcp-proxy")
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("the TCP proxy did not start")

    def _run(self) -> None:
        import asyncio

        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        self.loop.run_forever()

    async def _handle(self, reader: Any, writer: Any) -> None:
        import asyncio

        if self.mode == "cut":
            writer.transport.abort()
            return
        self._writers.add(writer)
        try:
            if self.mode == "hang":
                while await reader.read(65536):
                    pass
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self._writers.add(up_writer)

            async def pipe(src: Any, dst: Any) -> None:
                try:
                    while data := await src.read(65536):
                        if self.mode != "pass":
                            if self.mode == "hang":
                                continue  # swallowed: the server seems to hang
                            break
                        dst.write(data)
                        await dst.drain()
                except (ConnectionError, OSError):
                    pass
                finally:
                    dst.transport.abort() if self.mode == "cut" else dst.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except (ConnectionError, OSError):
            writer.transport.abort()
        finally:
            self._writers.discard(writer)

    def _set(self, mode: str) -> None:
        def apply() -> None:
            self.mode = mode
            if mode == "cut":
                for w in list(self._writers):
                    w.transport.abort()
                self._writers.clear()

        self.loop.call_soon_threadsafe(apply)
        time.sleep(0.05)

    def cut(self) -> None:
        self._set("cut")

    def hang(self) -> None:
        self._set("hang")

    def heal(self) -> None:
        self._set("pass")

    def close(self) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@dataclass
class Prober:
    """Sends GET / for `host` through the router every `interval` seconds on a keep-alive
    connection (a new one after any error), and keeps (time, status) of every answer;
    status 0 for a connection error or timeout."""

    addr: str
    host: str
    interval: float = 0.02
    answers: list[tuple[float, int]] = field(default_factory=list)
    bodies: list[str] = field(default_factory=list)  # the first line of each 200
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Prober:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)

    def _run(self) -> None:
        host, _, port = self.addr.rpartition(":")
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            status = 0
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, int(port), timeout=5)
                conn.request("GET", "/", headers={"Host": self.host})
                resp = conn.getresponse()
                body = resp.read()
                status = resp.status
                if status == 200:
                    self.bodies.append(body.decode(errors="replace").split("\n", 1)[0])
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
            self.answers.append((time.monotonic(), status))
            self._stop.wait(self.interval)
        if conn is not None:
            conn.close()

    def failed_since(self, t0: float) -> list[tuple[float, int]]:
        return [(t, s) for t, s in self.answers if t >= t0 and s != 200]

    def sent_since(self, t0: float) -> int:
        return sum(1 for t, _ in self.answers if t >= t0)
