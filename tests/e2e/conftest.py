"""End-to-end fixtures: dinp as processes, the way an operator starts it."""

from __future__ import annotations

import contextlib
import json
import secrets
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    FAULT_PROPERTY,
    MYSQL,
    Dinp,
    Proc,
    RedisServer,
    TcpProxy,
    base_env,
    free_port,
    http_get,
    mysql_database,
    redis_server,
    remove_node_containers,
    wait_for,
)

IMAGE = "127.0.0.1:5000/hello:2"  # through the local registry, as a team would deploy
# The test running now, whose report carries the rows `fault_row` records: reports reach
# the process that prints the summary (tests/conftest.py) even from workers (pytest -n).
_CURRENT: list[pytest.Item] = []


@pytest.fixture(autouse=True)
def _current_item(request: pytest.FixtureRequest) -> Iterator[None]:
    _CURRENT.append(request.node)
    yield
    _CURRENT.remove(request.node)


def fault_row(fault: str, failed: str, recovery: str) -> None:
    """Record a row of the faults table (fault, failed requests, recovery) measured by the
    running test; it is printed after the run."""
    _CURRENT[-1].user_properties.append((FAULT_PROPERTY, (fault, failed, recovery)))


@dataclass
class Cluster:
    """`dinp server`, three `dinp agent`s as three nodes, one `dinp router`."""

    workdir: Path
    env: dict[str, str]
    router_addr: str
    cli: Dinp
    server: Proc
    router: Proc
    agents: dict[str, Proc] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    redis: RedisServer | None = None  # the cluster's own, which tests may restart
    # Between the server and MariaDB, when the cluster was started with `db_proxy`.
    db_proxy: TcpProxy | None = None
    # Where the server (127.0.0.1) and each agent (its own address) serve /metrics.
    metrics_port: int = 0
    # Further servers on the same database and Redis (`running_cluster(servers=2)`).
    standbys: list[Proc] = field(default_factory=list)

    def agent(self, name: str) -> Proc:
        # Its logs listener on any free port: the heartbeat tells the server which.
        env = dict(self.env, DINP_NODE_NAME=name, DINP_ADVERTISE=self.addresses[name],
                   DINP_CAPACITY_MB="1024", DINP_LOGS_LISTEN=f"{self.addresses[name]}:0",
                   DINP_METRICS_LISTEN=f"{self.addresses[name]}:{self.metrics_port}")
        proc = Proc(name, ["agent"], env, self.workdir / f"{name}.log")
        self.agents[name] = proc
        return proc

    def get(self, host: str, path: str = "/") -> tuple[int, str]:
        return http_get(self.router_addr, host, path)

    def logs(self) -> str:
        procs = [self.server, *self.standbys, self.router, *self.agents.values()]
        return "\n".join(f"--- {p.name}\n{p.output()[-3000:]}" for p in procs)


@contextlib.contextmanager
def running_cluster(workdir: Path, prefix: str, *, db_proxy: bool = False,
                    env: dict[str, str] | None = None, servers: int = 1) -> Iterator[Cluster]:
    """Start the cluster (private MariaDB database and Redis) and stop it afterwards,
    removing the containers of its nodes. Shared by the tests and `make bench`. With
    `db_proxy`, the server reaches MariaDB through a TcpProxy the caller can cut; `env`
    adds settings (DINP_*) for every process. With `servers`, more servers share the
    database: the first one started leads, and agents and the CLI know them all."""
    extra = env or {}
    api_port, router_port, admin_port = free_port(), free_port(), free_port()
    metrics_port = free_port()
    api_ports = [api_port] + [free_port() for _ in range(servers - 1)]
    urls = ",".join(f"http://127.0.0.1:{p}" for p in api_ports)
    proxy = TcpProxy(str(MYSQL["host"]), int(MYSQL["port"])) if db_proxy else None
    with mysql_database() as db_url, redis_server() as redis:
        redis_url = redis.url
        if proxy is not None:
            db_url = db_url.replace(f":{MYSQL['port']}/", f":{proxy.port}/")
        env = base_env(
            workdir,
            DINP_DATABASE_URL=db_url, DINP_REDIS_URL=redis_url,
            DINP_CLUSTER_TOKEN=secrets.token_hex(16), DINP_ADMIN_TOKEN=secrets.token_hex(16),
            DINP_API_LISTEN=f"127.0.0.1:{api_port}",
            DINP_ROUTER_URL=f"http://127.0.0.1:{router_port}",
            DINP_SERVER=urls,
            DINP_HTTP_LISTEN=f"127.0.0.1:{router_port}",
            DINP_ADMIN_LISTEN=f"127.0.0.1:{admin_port}",
            DINP_DOMAIN="apps.test", DINP_STATE_DIR=str(workdir / "agent-state"), **extra,
        )
        cli_env = dict(env, DINP_TOKEN=env["DINP_ADMIN_TOKEN"])
        server = Proc("server", ["server"],
                      dict(env, DINP_METRICS_LISTEN=f"127.0.0.1:{metrics_port}"),
                      workdir / "server.log").start()
        standbys = [Proc(f"server{i + 2}", ["server"],
                         dict(env, DINP_API_LISTEN=f"127.0.0.1:{port}"),
                         workdir / f"server{i + 2}.log") for i, port in enumerate(api_ports[1:])]
        router = Proc("router", ["router"], env, workdir / "router.log").start()
        c = Cluster(workdir, env, f"127.0.0.1:{router_port}", Dinp(cli_env), server, router,
                    redis=redis, db_proxy=proxy, metrics_port=metrics_port,
                    standbys=standbys)
        names = [f"{prefix}-n{i}" for i in (1, 2, 3)]
        c.addresses = {n: f"127.0.0.{i}" for i, n in zip((2, 3, 4), names, strict=True)}
        try:
            wait_for(lambda: c.cli.run("node", "list", check=False).returncode == 0, 20,
                     "the server to answer")
            for standby in standbys:  # after the first: it leads
                standby.start()
            for name in names:
                c.agent(name).start()
            wait_for(lambda: len([n for n in c.cli.json("node", "list")
                                  if n["status"] == "ready"]) == 3, 20, "three ready nodes")
            wait_for(lambda: http_get(c.router_addr, "nothing.apps.test")[0] == 404, 10,
                     "the router to answer")
            yield c
        except BaseException:
            print(c.logs())
            raise
        finally:
            for proc in [*c.agents.values(), c.router, *c.standbys, c.server]:
                proc.stop()
            for name in names:
                remove_node_containers(name)
            if proxy is not None:
                proxy.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("cluster"),
                         f"e2e{secrets.token_hex(3)}") as c:
        yield c


@dataclass
class ServerProc:
    proc: Proc
    url: str
    admin_token: str
    cluster_token: str
    port: int


@contextlib.contextmanager
def server_process(work: Path) -> Iterator[ServerProc]:
    port = free_port()
    admin, cluster = secrets.token_hex(16), secrets.token_hex(16)
    with redis_server() as redis:
        env = base_env(work, DINP_DATABASE_URL=f"sqlite:///{work / 'dinp.db'}",
                       DINP_REDIS_URL=redis.url, DINP_CLUSTER_TOKEN=cluster,
                       DINP_ADMIN_TOKEN=admin, DINP_API_LISTEN=f"127.0.0.1:{port}")
        proc = Proc("server", ["server"], env, work / "server.log").start()
        try:
            wait_for(lambda: http_get(f"127.0.0.1:{port}", "127.0.0.1",
                                      "/api/v1/health")[0] == 200, 20, "the server")
            yield ServerProc(proc, f"http://127.0.0.1:{port}", admin, cluster, port)
        finally:
            assert proc.stop(), "dinp server must exit by itself on SIGTERM"


def call(server: ServerProc, method: str, path: str, body: Any = None) -> Any:
    """The API as the admin, for setting a test up."""
    req = urllib.request.Request(f"{server.url}/api/v1{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {server.admin_token}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())
