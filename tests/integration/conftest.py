"""Fixtures for integration tests against the real parts: MariaDB, SQLite, Redis, Docker.

Nothing here mocks: each fixture gives a test its own private piece of a real service (a
fresh database, a Redis server on a free port, a unique node name whose containers are
removed afterwards), so tests can run side by side and stop or restart what they own.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pymysql
import pytest
import redis

MYSQL_HOST = "127.0.0.1"
MYSQL_PORT = 3306
# Label for containers a test starts itself (not through dinp), so teardown finds them.
TEST_LABEL = "io.dinp.test"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is truthy or `timeout` seconds passed; its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


# -- databases ---------------------------------------------------------------------------

def _mysql_connect() -> pymysql.connections.Connection:  # type: ignore[type-arg]
    return pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user="root", connect_timeout=5)


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A fresh, uniquely named MariaDB database; dropped afterwards."""
    name = f"dinp_test_{secrets.token_hex(6)}"
    try:
        conn = _mysql_connect()
    except pymysql.err.OperationalError as exc:
        pytest.skip(f"MariaDB at {MYSQL_HOST}:{MYSQL_PORT} is unreachable: {exc}")
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    finally:
        conn.close()
    try:
        yield f"mysql+pymysql://root@{MYSQL_HOST}:{MYSQL_PORT}/{name}"
    finally:
        conn = _mysql_connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'dinp.db'}"


@pytest.fixture(params=["mariadb", "sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test using it runs once on MariaDB and once on SQLite."""
    fixture = "mysql_url" if request.param == "mariadb" else "sqlite_url"
    return str(request.getfixturevalue(fixture))


# -- Redis -------------------------------------------------------------------------------

class RedisServer:
    """A private `redis-server` on 127.0.0.1:<port>, without persistence, that a test may
    stop and start again on the same port (it comes back empty, like a restarted cache)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None, "already running"
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        try:
            def up() -> bool:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} exited at start")
                try:
                    return bool(client.ping())
                except redis.RedisError:
                    return False

            if not wait_until(up, timeout=10):
                raise RuntimeError(f"redis-server on port {self.port} did not start")
        finally:
            client.close()

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

    def client(self) -> redis.Redis:
        """A synchronous client; the caller closes it (or uses `with`)."""
        return redis.Redis.from_url(self.url, socket_timeout=5, decode_responses=True)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    try:
        yield client
    finally:
        client.close()


# -- Docker ------------------------------------------------------------------------------

def _remove_test_containers(names: list[str]) -> None:
    """Remove every container labelled for one of the test node names (dinp's node label
    or the plain test label). Runs in teardown, so it must never raise."""
    if not names:
        return
    import docker  # imported here: tests without Docker still load this file

    try:
        client = docker.from_env(timeout=30)
    except docker.errors.DockerException:
        return
    try:
        seen: set[str] = set()
        for name in names:
            for label in (f"io.dinp.node={name}", f"{TEST_LABEL}={name}"):
                for summary in client.api.containers(all=True, filters={"label": label}):
                    if summary["Id"] in seen:
                        continue
                    seen.add(summary["Id"])
                    with contextlib.suppress(docker.errors.DockerException):
                        client.api.remove_container(summary["Id"], force=True)
    finally:
        client.close()


@pytest.fixture
def docker_client() -> Iterator[object]:
    import docker

    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.skip(f"the Docker engine is unreachable (is dockerd running?): {exc}")
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def make_node_name() -> Iterator[Callable[[], str]]:
    """Makes unique node names `t-<random>`; their containers are removed afterwards."""
    made: list[str] = []

    def make() -> str:
        name = f"t-{secrets.token_hex(5)}"
        made.append(name)
        return name

    try:
        yield make
    finally:
        _remove_test_containers(made)


@pytest.fixture
def node_name(make_node_name: Callable[[], str]) -> str:
    return make_node_name()


# The build tests' fixtures (engine, base_images, archives, config, app_name, …), shared by
# test_build.py and test_build_remote.py. Imported last: builds.py uses TEST_LABEL above.
from tests.integration.builds import app_name, archives, base_images, build_tmp, config, engine  # noqa: E402, F401
