"""Fixtures for integration tests against the real parts: MariaDB, SQLite, Redis, Docker.

Nothing here mocks: each fixture gives a test its own private piece of a real service (a
fresh database, a Redis server on a free port, a unique node name whose containers are
removed afterwards), so tests can run side by side and stop or restart what they own.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.support import TEST_LABEL, RedisServer, mysql_database
from tests.support import redis_server as private_redis

# -- databases ---------------------------------------------------------------------------

@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A fresh, uniquely named MariaDB database; dropped afterwards."""
    with mysql_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'dinp.db'}"


@pytest.fixture(params=["mariadb", "sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test using it runs once on MariaDB and once on SQLite."""
    fixture = "mysql_url" if request.param == "mariadb" else "sqlite_url"
    return str(request.getfixturevalue(fixture))


# -- Redis -------------------------------------------------------------------------------

@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private Redis the test may stop and start again."""
    with private_redis() as server:
        yield server


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
