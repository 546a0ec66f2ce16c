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
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

DINP = str(Path(sys.executable).parent / "dinp")
MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.1) -> Any:
    """Poll until `predicate()` is truthy; fail the test saying what did not happen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # the thing polled may not be up yet
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, subprocess.Popen[bytes], int]]:
    """A private, disposable Redis on a free port: tests may stop and restart it."""
    port = free_port()
    proc = start_redis(port)
    try:
        yield f"redis://127.0.0.1:{port}/0", proc, port
    finally:
        proc.terminate()
        proc.wait(10)


def start_redis(port: int) -> subprocess.Popen[bytes]:
    redis_bin = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = subprocess.Popen(
        [redis_bin, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: socket.create_connection(("127.0.0.1", port), 0.2).close() or True,
             10, f"redis on port {port}")
    return proc


@contextlib.contextmanager
def mysql_database() -> Iterator[str]:
    """A fresh MariaDB database, dropped afterwards."""
    name = f"dinp_test_{secrets.token_hex(4)}"
    conn = pymysql.connect(**MYSQL)  # type: ignore[arg-type]
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
        yield f"mysql+pymysql://root@127.0.0.1:3306/{name}"
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
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


def docker_ids(*labels: str) -> list[str]:
    args = ["docker", "ps", "-q", "--no-trunc"]
    for label in labels:
        args += ["--filter", f"label={label}"]
    return sorted(subprocess.run(args, check=True, capture_output=True, text=True).stdout.split())


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

    def run(self, *args: str, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([DINP, *args], env=self.env, capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"dinp {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)


def base_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DINP_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), COLUMNS="200",
               PYTHONUNBUFFERED="1")
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
