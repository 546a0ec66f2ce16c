"""How far one `dinp server` goes: simulated nodes speaking the real heartbeat protocol.

    .venv/bin/python benchmarks/scale.py [--nodes 100,1000,5000] [--per-node 30]
        [--place 10000] [--seconds 20] [--interval 5] [--workers 2]
        [--max-heartbeats-per-second R] [--update-doc]

(`make bench-scale` runs it with --update-doc, which rewrites the table in
docs/performance.md.)

For each cluster size it starts, from scratch:

- a fresh MariaDB database and a private redis-server, seeded directly (bulk INSERTs, not
  the API: placing 150,000 instances through the planner is what is measured later, in
  part) with N ready nodes, N apps of `--per-node` instances each and their instance rows,
  every node holding `--per-node` instances, and one agent credential per node;
- a real `dinp server` process on them, with heartbeat_interval `--interval`;
- `--workers` processes of fake agents (asyncio + aiohttp, N/workers each). A fake agent
  is what a real one is to the server and nothing more: it authenticates with its node's
  credential (`dinpn_…`), posts the real heartbeat body (every container with its state,
  health, port, start time, memory) at the interval the server hands out in its replies,
  and runs exactly what the reply assigns: a new instance is reported running and healthy
  on the next heartbeat, a removed one is gone from it. Like a real agent, it sends its
  whole report when it changed (or every FULL_REPORT_SECONDS) and otherwise the short
  beat "the same as report <digest>", with the assignment revision it holds, so a steady
  node's reply leaves out its instances. They start with the seeded
  instances of their node running, as after a restart of the server. It does not long-poll (a real
  agent also does, which makes it see new work sooner; the server's heartbeat load is the
  same).

Then it measures:

- heartbeat latency p50/p99, as the fake agents see it (request sent to reply read),
  over `--seconds` of steady state (every instance reported healthy);
- the reconcile pass: the server's own `dinp_server_reconcile_seconds` (mean and the
  bucket under which the slowest fell) over the same window;
- the server's CPU (% of one core, utime+stime from /proc) and RSS over that window;
- the route table: the server's table read back from its Redis (N x per-node routes)
  and written whole into an empty Redis with dinp's RedisRouteStore (what the server does
  at its first start or after Redis restarts), then one app's change written (the usual
  write);
- placement: `--place` new instances (apps of 100 instances created through the API, 8
  requests at a time), the time from the first request until the database holds every
  instance row (placed), and until every fake agent reports them running (delivered:
  up to one heartbeat interval later, as the fakes do not long-poll); the heartbeat p99
  during that time.

Numbers vary with machine load: the fake agents share the machine's two cores with the
server, MariaDB and Redis, so the server has at most one core and a bit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import random
import re
import secrets
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

import aiohttp  # noqa: E402
import pymysql  # noqa: E402
import redis  # noqa: E402
from sqlalchemy import create_engine, insert  # noqa: E402

from dinp import models, tokens  # noqa: E402
from dinp.routes import RedisRouteStore, RouteTable, read_redis  # noqa: E402
from dinp.store import Store  # noqa: E402
from dinp.wire import FULL_REPORT_SECONDS  # noqa: E402
from tests.support import (  # noqa: E402
    MYSQL,
    Proc,
    RedisServer,
    base_env,
    free_port,
    mysql_database,
    redis_server,
    wait_for,
)

DOC = ROOT / "docs" / "performance.md"
MARKER = "bench-scale"
IMAGE = "registry.invalid/bench:1"  # never pulled: the agents are fake
MEMORY_MB = 64
CAPACITY_MB = 128 * 1024  # room for the seeded instances and the new ones
NEW_APP_SIZE = 100  # instances per app created in the placement phase
API = "/api/v1"
TICK = os.sysconf("SC_CLK_TCK")


# -- the fake agents (in worker processes) -------------------------------------------------


@dataclass
class FakeAgent:
    """One node's agent, as far as the server can tell: the real heartbeat body, the
    node's credential, and containers that are exactly what the last reply assigned."""

    node: str
    address: str
    credential: str
    agent: str
    cluster: str
    containers: dict[str, dict[str, Any]] = field(default_factory=dict)
    body: bytes = b""  # the whole report
    short: bytes = b""  # the short beat: "the same as report `digest`"
    digest: str = ""
    reported: str | None = None  # the report the server said it holds
    full_at: float = 0.0  # when the last whole report went
    rev: str | None = None  # the assignment held
    last_reply: bytes = b""
    next_port: int = 30000

    def render(self) -> None:
        used = sum(c["memory_mb"] for c in self.containers.values())
        containers = list(self.containers.values())
        self.digest = hashlib.sha256(json.dumps(containers, sort_keys=True).encode()
                                     ).hexdigest()[:16]
        common = {"free_mb": max(0, CAPACITY_MB - used), "agent": self.agent,
                  "cluster": self.cluster, **({"rev": self.rev} if self.rev else {})}
        self.body = json.dumps({
            "node": self.node, "address": self.address, "capacity_mb": CAPACITY_MB,
            "containers": containers, "failures": [], "digest": self.digest, **common,
        }).encode()
        self.short = json.dumps({"node": self.node, "same_as": self.digest, **common}).encode()

    def next_body(self) -> tuple[bytes, bool]:
        """What a real agent sends now: the short beat while the server holds the report
        (and the last whole one is under FULL_REPORT_SECONDS old), else the whole."""
        if self.reported == self.digest and time.monotonic() - self.full_at < \
                FULL_REPORT_SECONDS:
            return self.short, False
        return self.body, True

    def converge(self, instances: list[dict[str, Any]]) -> None:
        """Run what the reply assigns: new instances start (running, healthy at once),
        instances no longer assigned stop."""
        wanted = {i["id"]: i for i in instances}
        for gone in set(self.containers) - set(wanted):
            del self.containers[gone]
        for iid, item in wanted.items():
            have = self.containers.get(iid)
            if have is not None and have["release"] == item["release"]:
                continue
            self.next_port += 1
            self.containers[iid] = {
                "instance": iid, "app": item["app"], "release": item["release"],
                "state": "running", "health": "healthy", "port": self.next_port,
                "started_at": time.time(), "memory_mb": item["memory_mb"] // 2}
        self.render()


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    ok: int = 0
    failed: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


async def _agent_loop(agent: FakeAgent, session: aiohttp.ClientSession, url: str,
                      tally: Tally, interval: float) -> None:
    agent.render()
    await asyncio.sleep(random.uniform(0, interval))  # agents start at random moments
    headers = {"Authorization": f"Bearer {agent.credential}",
               "Content-Type": "application/json"}
    target = f"{url}{API}/nodes/{agent.node}/heartbeat"
    while True:
        started = time.perf_counter()
        body, full = agent.next_body()
        try:
            async with session.post(target, data=body, headers=headers) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError):
            tally.failed += 1
            agent.reported = None
            await asyncio.sleep(interval)
            continue
        tally.latencies.append(time.perf_counter() - started)
        tally.statuses[status] = tally.statuses.get(status, 0) + 1
        if status == 200:
            tally.ok += 1
            if full:
                agent.full_at = time.monotonic()
            if raw != agent.last_reply:  # the same reply: nothing to parse or change
                agent.last_reply = raw
                reply = json.loads(raw)
                interval = float(reply.get("heartbeat_interval", interval))
                agent.reported = reply.get("report")
                if "instances" in reply:
                    agent.rev = reply["rev"]
                    agent.converge(reply["instances"])
        elif status == 409 and b"report-needed" in raw:
            agent.reported = None
            tally.ok += 1
            continue  # the whole report at once, as a real agent does
        else:
            tally.failed += 1
            agent.reported = None
        await asyncio.sleep(max(0.0, started + interval - time.perf_counter()))


def worker(conn: multiprocessing.connection.Connection, url: str,
           agents: list[FakeAgent], interval: float) -> None:
    """A worker process: its fake agents heartbeat until told to stop; on "stats" it
    sends the latencies since the last "stats" and how many containers its agents run."""
    import uvloop

    async def main() -> None:
        tally = Tally()
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            tasks = [asyncio.create_task(_agent_loop(a, session, url, tally, interval))
                     for a in agents]
            loop = asyncio.get_running_loop()
            while True:
                command = await loop.run_in_executor(None, conn.recv)
                if command == "stop":
                    break
                conn.send({"latencies": tally.latencies, "ok": tally.ok,
                           "failed": tally.failed, "statuses": tally.statuses,
                           "containers": sum(len(a.containers) for a in agents)})
                tally.latencies, tally.ok, tally.failed, tally.statuses = [], 0, 0, {}
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    uvloop.run(main())


class Workers:
    """The worker processes and their pipes, asked together."""

    def __init__(self, url: str, agents: list[FakeAgent], count: int,
                 interval: float) -> None:
        ctx = multiprocessing.get_context("fork")
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.seen: list[float] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for k in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker, args=(child, url, agents[k::count], interval),
                               daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    def stats(self) -> dict[str, Any]:
        """What the agents saw since the last call; the latencies are also kept in
        `seen` until the caller empties it."""
        for pipe in self.pipes:
            pipe.send("stats")
        parts = [pipe.recv() for pipe in self.pipes]
        statuses: dict[int, int] = {}
        for p in parts:
            for k, v in p["statuses"].items():
                statuses[k] = statuses.get(k, 0) + v
        latencies = [x for p in parts for x in p["latencies"]]
        self.seen.extend(latencies)
        return {"latencies": latencies,
                "ok": sum(p["ok"] for p in parts), "failed": sum(p["failed"] for p in parts),
                "containers": sum(p["containers"] for p in parts), "statuses": statuses}

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send("stop")
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


# -- the cluster under test ----------------------------------------------------------------


def node_name(i: int) -> str:
    return f"n{i:05d}"


def seed(db_url: str, nodes: int, per_node: int, cluster_token: str) -> list[FakeAgent]:
    """Nodes, apps, releases and instance rows as a running cluster has them: app k's
    `per_node` instances on `per_node` consecutive nodes, so every node holds `per_node`."""
    store = Store(db_url)  # makes the schema, as the server would
    cluster = store.cluster_id()
    store.close()
    engine = create_engine(db_url)
    now = time.time()
    agents = [FakeAgent(node_name(i), f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                        tokens.node_credential(cluster_token, node_name(i), 1),
                        f"benchhost:{node_name(i)}:1", cluster) for i in range(nodes)]
    apps = [f"app{k:05d}" for k in range(nodes)]
    rows = [{"id": f"{k:05d}{j:05d}", "app": app, "release": 1,
             "node": node_name((k * per_node + j) % nodes), "memory_mb": MEMORY_MB,
             "created_at": now} for k, app in enumerate(apps) for j in range(per_node)]
    for row in rows:  # each node runs its instances already, as after a server restart
        agent = agents[int(row["node"][1:])]  # type: ignore[index]
        agent.next_port += 1
        agent.containers[str(row["id"])] = {
            "instance": row["id"], "app": row["app"], "release": 1, "state": "running",
            "health": "healthy", "port": agent.next_port, "started_at": now,
            "memory_mb": MEMORY_MB // 2}
    with engine.begin() as conn:
        conn.execute(insert(models.TeamRow.__table__), [{"name": "default"}])  # type: ignore[arg-type]
        conn.execute(insert(models.NodeRow.__table__), [  # type: ignore[arg-type]
            {"name": a.node, "address": a.address, "capacity_mb": CAPACITY_MB,
             "status": "ready", "foreign_json": "[]", "first_seen": now, "updated_at": now,
             "agent": a.agent} for a in agents])
        conn.execute(insert(models.NodeCredentialRow.__table__), [  # type: ignore[arg-type]
            {"node": a.node, "generation": 1} for a in agents])
        conn.execute(insert(models.AppRow.__table__), [  # type: ignore[arg-type]
            {"name": app, "image": IMAGE, "instances": per_node, "memory_mb": MEMORY_MB,
             "port": 8080, "health_path": "/", "env_json": "{}", "domains_json": "[]",
             "release": 1, "team": "default", "surge": 0, "deploy_timeout": 120.0,
             "stop_grace": 10.0, "created_at": now, "updated_at": now} for app in apps])
        conn.execute(insert(models.ReleaseRow.__table__), [  # type: ignore[arg-type]
            {"app": app, "version": 1, "image": IMAGE, "env_json": "{}", "port": 8080,
             "memory_mb": MEMORY_MB, "health_path": "/", "change": "seeded",
             "created_by": "bench", "status": "deployed", "failure": "", "created_at": now}
            for app in apps])
        for start in range(0, len(rows), 20000):
            conn.execute(insert(models.InstanceRow.__table__),  # type: ignore[arg-type]
                         rows[start:start + 20000])
    engine.dispose()
    return agents


@dataclass
class ServerUnderTest:
    proc: Proc
    url: str
    metrics_url: str
    admin: str
    cluster_token: str

    @property
    def pid(self) -> int:
        assert self.proc.popen is not None
        return self.proc.popen.pid

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=60) as resp:
            return str(resp.read().decode())

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        req = urllib.request.Request(
            self.url + API + path, method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {token or self.admin}",
                     "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())


@contextlib.contextmanager
def server_process(work: Path, db_url: str, redis_url: str, cluster_token: str,
                   interval: float, max_rate: float | None = None) -> Iterator[ServerUnderTest]:
    work.mkdir(parents=True, exist_ok=True)
    port, metrics_port = free_port(), free_port()
    admin = secrets.token_hex(16)
    env = base_env(work, DINP_DATABASE_URL=db_url, DINP_REDIS_URL=redis_url,
                   DINP_CLUSTER_TOKEN=cluster_token, DINP_ADMIN_TOKEN=admin,
                   DINP_API_LISTEN=f"127.0.0.1:{port}", DINP_DOMAIN="apps.bench",
                   DINP_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
                   DINP_HEARTBEAT_INTERVAL=f"{interval:g}",
                   DINP_NODE_TIMEOUT=f"{3 * interval:g}")
    if max_rate is not None:
        env["DINP_MAX_HEARTBEATS_PER_SECOND"] = f"{max_rate:g}"
    proc = Proc("server", ["server"], env, work / "server.log").start()
    sut = ServerUnderTest(proc, f"http://127.0.0.1:{port}",
                          f"http://127.0.0.1:{metrics_port}/metrics", admin, cluster_token)

    def up() -> bool:
        if not proc.alive():
            raise RuntimeError(f"dinp server exited:\n{proc.output()[-3000:]}")
        return bool(sut.call("GET", "/health"))

    try:
        wait_for(up, 120, "the server to answer")
        yield sut
    finally:
        if not proc.stop(30):
            print("  (the server had to be killed)")


# -- measuring -----------------------------------------------------------------------------


def metric(text: str, name: str, labels: str = "") -> float:
    """One sample of the Prometheus text `text` (0 when missing)."""
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + \
        r" ([0-9.e+-]+|NaN|\+Inf)$"
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else 0.0


def buckets(text: str, name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of histogram `name`."""
    out = []
    for le, value in re.findall(re.escape(name) + r'_bucket\{le="([^"]+)"\} ([0-9.e+]+)',
                                text):
        out.append((float(le), float(value)))
    return out


def slowest_bucket(before: str, after: str, name: str) -> float:
    """The upper bound of the smallest bucket that holds every observation made between
    the two scrapes: what the slowest one stayed under."""
    b0 = dict(buckets(before, name))
    total = metric(after, name + "_count") - metric(before, name + "_count")
    for le, count in buckets(after, name):
        if count - b0.get(le, 0.0) >= total:
            return le
    return float("inf")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Result:
    nodes: int
    instances: int
    interval: float
    handed: float = 0.0  # the interval the server hands out (it stretches past its limit)
    hb_rate: float = 0.0
    hb_p50: float = 0.0
    hb_p99: float = 0.0
    hb_failed: int = 0
    reconcile_mean: float = 0.0
    reconcile_max: float = 0.0
    reconciles: int = 0
    plan_mean: float = 0.0  # passes that planned, over the whole run
    plans: int = 0
    place_reconcile_mean: float = 0.0
    place_reconcile_max: float = 0.0
    cpu: float = 0.0
    rss: float = 0.0
    rss_start: float = 0.0
    routes: int = 0
    route_full: float = 0.0
    route_change: float = 0.0
    route_read: float = 0.0
    placed: int = 0
    place_rows: float = 0.0
    place_delivered: float = 0.0
    place_api: float = 0.0
    place_hb_p99: float = 0.0
    place_cpu: float = 0.0
    converge: float = 0.0
    notes: list[str] = field(default_factory=list)


def count_instances(db_url: str) -> int:
    name = db_url.rsplit("/", 1)[1]
    conn = pymysql.connect(**MYSQL, database=name, connect_timeout=5)  # type: ignore[arg-type]
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM instances")
            row = cur.fetchone()
            return int(row[0]) if row else 0
    finally:
        conn.close()


def measure_routes(sut_redis: RedisServer, result: Result) -> None:
    """The server's table, read back and written whole into an empty Redis, then one
    app's backends changed."""
    client = redis.Redis.from_url(sut_redis.url)
    started = time.perf_counter()
    table = read_redis(client)
    result.route_read = time.perf_counter() - started
    client.close()
    result.routes = sum(len(b) for b in table.backends.values())
    with redis_server() as empty:
        store = RedisRouteStore(empty.url)
        started = time.perf_counter()
        store.publish(RouteTable(backends=table.backends, cnames=table.cnames,
                                 hosts=table.hosts))
        result.route_full = time.perf_counter() - started
        host = sorted(table.backends)[0]
        changed = dict(table.backends)
        changed[host] = (*changed[host][1:], "10.255.255.255:1")
        started = time.perf_counter()
        store.publish(RouteTable(backends=changed, cnames=table.cnames, hosts=table.hosts))
        result.route_change = time.perf_counter() - started
        store.client.close()


async def create_apps(sut: ServerUnderTest, count: int, size: int) -> float:
    """Create `count` apps of `size` instances through the API, 8 requests at a time;
    the seconds until the last answered."""
    started = time.perf_counter()
    gate = asyncio.Semaphore(8)
    retries: list[str] = []
    headers = {"Authorization": f"Bearer {sut.admin}"}

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        async def one(k: int) -> None:
            for attempt in range(5):
                async with gate, session.post(
                        f"{sut.url}{API}/apps", headers=headers,
                        json={"name": f"new{k:04d}", "image": IMAGE, "instances": size,
                              "memory": f"{MEMORY_MB}m", "port": 8080,
                              "health_path": "/"}) as resp:
                    if resp.status == 201 or (resp.status == 409 and attempt):
                        return  # (409: made by the attempt that answered 503)
                    text = await resp.text()
                    if resp.status != 503:
                        raise RuntimeError(f"app create: HTTP {resp.status}: {text}")
                    retries.append(text)
            raise RuntimeError(f"app create: 503 five times: {retries[-1]}")

        await asyncio.gather(*(one(k) for k in range(count)))
    if retries:
        print(f"  ({len(retries)} app create(s) answered 503 and were sent again: "
              f"{retries[0][:160]})")
    return time.perf_counter() - started


def run_size(nodes: int, interval: float, args: argparse.Namespace, work: Path) -> Result:
    total = nodes * args.per_node
    result = Result(nodes, total, interval)
    cluster_token = secrets.token_hex(16)
    print(f"\n== {nodes} nodes, {total} instances", flush=True)
    with mysql_database() as db_url, redis_server() as rs:
        t = time.perf_counter()
        agents = seed(db_url, nodes, args.per_node, cluster_token)
        print(f"  seeded the database in {time.perf_counter() - t:.1f} s", flush=True)
        with server_process(work / f"n{nodes}", db_url, rs.url, cluster_token,
                            interval, args.max_heartbeats_per_second) as sut:
            result.rss_start = sut.rss_mb()
            workers = Workers(sut.url, agents, args.workers, interval)
            try:
                _measure(sut, rs, workers, db_url, result, args)
            finally:
                workers.stop()
    return result


def _wait_healthy(sut: ServerUnderTest, workers: Workers, want: int, timeout: float,
                  what: str) -> float:
    started = time.perf_counter()
    while True:
        stats = workers.stats()
        if stats["containers"] >= want:
            text = sut.metrics()
            if metric(text, "dinp_server_instances", 'state="healthy"') >= want:
                return time.perf_counter() - started
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"{what}: {stats['containers']} of {want} after {timeout:g} s "
                               f"(statuses {stats['statuses']})")
        time.sleep(1.0)


def _measure(sut: ServerUnderTest, rs: RedisServer, workers: Workers, db_url: str,
             result: Result, args: argparse.Namespace) -> None:
    total = result.instances
    try:
        result.converge = _wait_healthy(sut, workers, total, args.converge_timeout,
                                        "the fake agents to run every instance")
        print(f"  every instance healthy after {result.converge:.1f} s", flush=True)
    except TimeoutError as exc:
        result.converge = float("nan")
        result.notes.append(f"{result.nodes:,} nodes: not converged: {exc}")
        print(f"  NOT CONVERGED: {exc}", flush=True)
    text = sut.metrics()
    down = metric(text, "dinp_server_actions_total", 'type="setnodestatus"')
    moved = metric(text, "dinp_server_actions_total", 'type="place"')
    if down or moved:
        result.notes.append(
            f"{result.nodes:,} nodes, at the start: {down:.0f} node status change(s) and "
            f"{moved:.0f} placement(s) (nodes not heard from in time, marked down, their "
            "instances placed elsewhere)")
    time.sleep(result.interval)  # a whole interval of plain heartbeats before measuring
    workers.stats()
    before, cpu0, t0 = sut.metrics(), sut.cpu_seconds(), time.perf_counter()
    time.sleep(args.seconds)
    stats = workers.stats()
    after, cpu1, t1 = sut.metrics(), sut.cpu_seconds(), time.perf_counter()
    lat = stats["latencies"]
    result.hb_rate = len(lat) / (t1 - t0)
    result.hb_p50, result.hb_p99 = percentile(lat, 0.5), percentile(lat, 0.99)
    result.hb_failed = stats["failed"]
    n = metric(after, "dinp_server_reconcile_seconds_count") - \
        metric(before, "dinp_server_reconcile_seconds_count")
    s = metric(after, "dinp_server_reconcile_seconds_sum") - \
        metric(before, "dinp_server_reconcile_seconds_sum")
    result.reconciles = int(n)
    result.reconcile_mean = s / n if n else float("nan")
    result.reconcile_max = slowest_bucket(before, after, "dinp_server_reconcile_seconds")
    result.cpu = 100 * (cpu1 - cpu0) / (t1 - t0)
    result.handed = metric(after, "dinp_server_heartbeat_interval_seconds")
    result.rss = sut.rss_mb()
    print(f"  steady: {result.hb_rate:.0f} heartbeats/s, p50 {1000 * result.hb_p50:.1f} ms, "
          f"p99 {1000 * result.hb_p99:.1f} ms, {result.hb_failed} failed; reconcile "
          f"{result.reconcile_mean:.3f} s mean ({result.reconciles} passes, all under "
          f"{result.reconcile_max:g} s); server CPU {result.cpu:.0f}%, RSS "
          f"{result.rss:.0f} MB", flush=True)

    measure_routes(rs, result)
    print(f"  route table: {result.routes} routes read in {result.route_read:.2f} s, "
          f"written whole in {result.route_full:.2f} s, one app's change in "
          f"{1000 * result.route_change:.1f} ms", flush=True)

    if args.place:
        try:
            _place(sut, workers, db_url, result, args)
        except (TimeoutError, RuntimeError, OSError) as exc:
            result.notes.append(f"{result.nodes:,} nodes: placement not measured: {exc}")
            print(f"  placement failed: {exc}", flush=True)
    result.rss = max(result.rss, sut.rss_mb())
    final = sut.metrics()
    result.plans = int(metric(final, "dinp_server_plan_seconds_count"))
    if result.plans:
        result.plan_mean = metric(final, "dinp_server_plan_seconds_sum") / result.plans


def _place(sut: ServerUnderTest, workers: Workers, db_url: str, result: Result,
           args: argparse.Namespace) -> None:
    """Create apps of `--place` instances in all; time the placements."""
    apps = max(1, args.place // NEW_APP_SIZE)
    rows_before = count_instances(db_url)
    want = rows_before + apps * NEW_APP_SIZE
    running = workers.stats()["containers"] + apps * NEW_APP_SIZE
    workers.seen = []
    cpu0 = sut.cpu_seconds()
    started = time.perf_counter()
    rows: dict[str, float] = {}

    def poll_rows() -> None:
        while time.perf_counter() - started < args.converge_timeout:
            if count_instances(db_url) >= want:
                rows["t"] = time.perf_counter() - started
                return
            time.sleep(0.05)

    before = sut.metrics()
    poller = threading.Thread(target=poll_rows, daemon=True)
    poller.start()
    result.place_api = asyncio.run(create_apps(sut, apps, NEW_APP_SIZE))
    poller.join(args.converge_timeout + 60)
    if "t" not in rows:
        raise TimeoutError(f"{apps * NEW_APP_SIZE} placements not made in "
                           f"{args.converge_timeout:g} s")
    result.place_rows = rows["t"]
    _wait_healthy(sut, workers, running, args.converge_timeout, "the new instances to run")
    result.place_delivered = time.perf_counter() - started
    result.place_cpu = 100 * (sut.cpu_seconds() - cpu0) / result.place_delivered
    after = sut.metrics()
    n = metric(after, "dinp_server_reconcile_seconds_count") - \
        metric(before, "dinp_server_reconcile_seconds_count")
    result.place_reconcile_mean = (metric(after, "dinp_server_reconcile_seconds_sum") -
                                   metric(before, "dinp_server_reconcile_seconds_sum")) \
        / n if n else float("nan")
    result.place_reconcile_max = slowest_bucket(before, after,
                                                "dinp_server_reconcile_seconds")
    workers.stats()
    result.placed = apps * NEW_APP_SIZE
    result.place_hb_p99 = percentile(workers.seen, 0.99)
    print(f"  placed {result.placed} new instances: rows in {result.place_rows:.1f} s "
          f"(API answered in {result.place_api:.1f} s), running on the fake agents "
          f"after {result.place_delivered:.1f} s; heartbeat p99 meanwhile "
          f"{1000 * result.place_hb_p99:.0f} ms", flush=True)


# -- the report ----------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    if not seconds or seconds != seconds:  # not measured (0, NaN)
        return "—"
    return f"{1000 * seconds:.0f} ms" if seconds < 10 else f"{seconds:.0f} s"


def _s(seconds: float) -> str:
    if not seconds or seconds != seconds:
        return "—"
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.0f} s"


def report(results: list[Result], args: argparse.Namespace) -> str:
    cols = [f"{r.nodes:,} nodes" for r in results]
    rows: list[tuple[str, list[str], str]] = [
        ("instances (seeded, healthy)", [f"{r.instances:,}" for r in results], ""),
        ("heartbeats/s (interval the server hands out)",
         [f"{r.hb_rate:,.0f} ({r.handed or r.interval:g} s)" for r in results], ""),
        ("heartbeat latency p50", [f"{1000 * r.hb_p50:.1f} ms" for r in results], ""),
        ("heartbeat latency p99", [f"{1000 * r.hb_p99:.1f} ms" for r in results],
         "< 100 ms"),
        ("reconcile pass, steady: mean (slowest under)",
         [f"{_ms(r.reconcile_mean)} ({_ms(r.reconcile_max)})" for r in results], "< 1 s"),
        ("plan, passes that planned: mean (count)",
         [f"{_ms(r.plan_mean)} ({r.plans})" for r in results], ""),
        ("server CPU, steady (% of one core)", [f"{r.cpu:.0f}%" for r in results], ""),
        ("server RSS", [f"{r.rss:.0f} MB" for r in results], ""),
        ("route table: routes", [f"{r.routes:,}" for r in results], ""),
        ("route table written whole (empty Redis)", [_s(r.route_full) for r in results],
         ""),
        ("route table: one app changed", [_ms(r.route_change) for r in results], ""),
        ("route table read whole (a router's load)", [_s(r.route_read) for r in results],
         ""),
        (f"place {args.place:,} new instances: rows made",
         [_s(r.place_rows) for r in results], "< 5 s"),
        ("  … running on the agents (no long-poll)",
         [_s(r.place_delivered) for r in results], ""),
        ("  … reconcile pass meanwhile, mean (slowest under)",
         [f"{_ms(r.place_reconcile_mean)} ({_ms(r.place_reconcile_max)})" for r in results],
         ""),
        ("  … heartbeat p99 meanwhile", [_ms(r.place_hb_p99) for r in results], ""),
        ("  … server CPU meanwhile",
         [f"{r.place_cpu:.0f}%" if r.placed else "—" for r in results], ""),
    ]
    failed = sum(r.hb_failed for r in results)
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}: `make bench-scale` "
        f"(`benchmarks/scale.py --nodes {','.join(str(r.nodes) for r in results)} "
        f"--per-node {args.per_node} --place {args.place} --seconds {args.seconds:g} "
        f"--interval {args.interval} --workers {args.workers}"
        + (f" --max-heartbeats-per-second {args.max_heartbeats_per_second:g}"
           if args.max_heartbeats_per_second is not None else "")
        + "`). Steady state over "
        f"{args.seconds:g} s; failed heartbeats: {failed}.",
        "",
        "| measure | " + " | ".join(cols) + " | goal |",
        "|---|" + "---:|" * len(cols) + "---|",
    ]
    for label, values, goal in rows:
        lines.append(f"| {label} | " + " | ".join(values) + f" | {goal} |")
    notes = [n for r in results for n in r.notes]
    if notes:
        lines.append("")
        lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines)


def update_doc(text: str) -> None:
    """Write `text` between this benchmark's markers in docs/performance.md."""
    from router import update_doc as write_section  # benchmarks/router.py, beside this

    write_section(MARKER, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="100,1000,5000",
                        help="cluster sizes, comma-separated")
    parser.add_argument("--per-node", type=int, default=30)
    parser.add_argument("--place", type=int, default=10000,
                        help="new instances to place (0: skip)")
    parser.add_argument("--seconds", type=float, default=20.0, help="steady-state window")
    parser.add_argument("--interval", default="5",
                        help="the server's heartbeat_interval in s (node_timeout: 3 times "
                        "it), one for all sizes or one per size, comma-separated")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-heartbeats-per-second", type=float, default=None,
                        help="the server's max_heartbeats_per_second (default: its own, "
                        "500; past it the server hands out a longer interval)")
    parser.add_argument("--converge-timeout", type=float, default=300.0,
                        help="seconds to wait for every instance to be reported healthy")
    parser.add_argument("--update-doc", action="store_true",
                        help=f"rewrite the table in {DOC.relative_to(ROOT)}")
    args = parser.parse_args()
    sizes = [int(x) for x in args.nodes.split(",") if x.strip()]
    work = Path(tempfile.mkdtemp(prefix="dinp-scale-"))
    intervals = [float(x) for x in args.interval.split(",")]
    if len(intervals) == 1:
        intervals *= len(sizes)
    if len(intervals) != len(sizes):
        parser.error("--interval: one value, or one per size of --nodes")
    results = [run_size(n, i, args, work) for n, i in zip(sizes, intervals, strict=True)]
    text = report(results, args)
    print()
    print(text)
    if args.update_doc:
        update_doc(text)


if __name__ == "__main__":
    main()
