"""The agent: makes one node run exactly the instances the server assigned to it.

Two loops that never wait for each other: the heartbeat loop lists this node's
containers (by label) and reports them with their health, receiving the node's whole
assignment in reply; the converge loop starts and stops containers until the node runs
that assignment. A slow stop or image pull therefore never silences the node. A
long-poll to the server and the engine's event stream wake them at once, so new work and
dead containers are handled without waiting for the next heartbeat. What to start and stop
is decided by the pure node plan (`dinp.node_plan`, where its rules are written): this
module gathers what the plan needs and carries out its actions.

Safety: it touches only containers labelled for its node and its cluster; it removes a
container only on a fresh assignment from the server (never on a guess); while the server
is unreachable it keeps every container running and restarts dead assigned ones from the
last assignment. It learns its cluster's id from the server before it lists anything, and
sends an id of its own process with each report: the server refuses a second live agent
for the same node name, and an agent refused stops acting until it is accepted. It sends
the cluster token only to the configured server URL (redirects are refused, not followed).

It also serves its containers' logs to the server, and keeps the last lines of those it
removes (`roles/agent_logs.py`, started by `run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import docker.errors

from dinp import const, machine, node_plan, validation
from dinp.config import AgentConfig, require_secret
from dinp.const import API_PREFIX
from dinp.container import Container, DockerRuntime, StartFailed
from dinp.errors import ConfigError, DinpError, InvalidInput, NodeTaken, Unavailable, WrongCluster
from dinp.health import HealthState, check
from dinp.lifecycle import run_until_stopped
from dinp.logs import LogStats
from dinp.metrics import AgentMetrics, metrics_served
from dinp.node_plan import DRAIN_SECONDS as DRAIN_SECONDS
from dinp.node_plan import FRESH_SECONDS as FRESH_SECONDS
from dinp.roles.agent_logs import AgentLogs
from dinp.sandbox import Policy
from dinp.wire import (
    FULL_REPORT_SECONDS,
    MAX_DETAIL,
    MAX_MESSAGE,
    Assignment,
    Beat,
    ContainerInfo,
    Failure,
    Heartbeat,
    parse_assignments,
)


def parse_ok(data: object) -> bool:
    """A reply the agent can act on; anything else is waited out, not retried at once."""
    try:
        parse_assignments(data)
    except InvalidInput:
        return False
    return True

log = logging.getLogger(__name__)

LONG_POLL_SECONDS = 25.0
MAX_START_BACKOFF = 30.0
# The heartbeat intervals a server may ask for (anything else is ignored).
MIN_INTERVAL, MAX_INTERVAL = 0.1, 600.0


@dataclass
class _Retry:
    failures: int = 0
    next_at: float = 0.0
    message: str = ""
    crash: bool = False  # the last failure was its container exiting


@dataclass
class AgentState:
    """What the agent knows; kept apart from I/O so it can be read in tests and logs."""

    assignment: list[Assignment] | None = None  # None: never heard from the server
    assignment_rev: str = ""
    assignment_at: float = 0.0
    health: dict[str, HealthState] = field(default_factory=dict)
    unassigned_since: dict[str, float] = field(default_factory=dict)
    retries: dict[str, _Retry] = field(default_factory=dict)
    foreign: set[str] = field(default_factory=set)
    server_ok: bool = False
    # The cluster this node belongs to, as the server said ("" until it did).
    cluster: str = ""
    # Why the server refuses this agent right now (another agent runs the node), or "".
    refused: str = ""
    # Containers made before cluster ids whose instance the server assigned here: ours.
    adopted: set[str] = field(default_factory=set)
    # Containers this agent started per instance (restarts: all but the first).
    starts: dict[str, int] = field(default_factory=dict)


class Redirected(DinpError):
    """The server URL answered with a redirect: the agent does not follow it, so the
    cluster token never goes anywhere but the configured URL."""


def agent_id() -> str:
    """This agent process: host, pid and a random part (a pid is reused after a reboot)."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{secrets.token_hex(4)}"


class Agent:
    def __init__(self, config: AgentConfig, runtime: DockerRuntime) -> None:
        self.config = config
        self.runtime = runtime
        self.state = AgentState()
        self.capacity_mb = config.capacity_mb or machine.default_capacity_mb()
        self.agent_id = agent_id()
        self._kick = asyncio.Event()  # converge now
        # The digest of the report the server said it holds, and when the last whole
        # report went: short beats until the report changes (see _post_heartbeat).
        self._reported: str | None = None
        self._full_at = 0.0
        self._report = asyncio.Event()  # report now
        # How often it reports: its own heartbeat_interval until the server says.
        self.interval = config.heartbeat_interval
        self._converge_lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._containers: list[Container] = []
        self.servers = [u.strip() for u in config.server.split(",") if u.strip()] or [
            config.server]
        self._server_index = 0
        self._memory: dict[str, int | None] = {}  # container id -> MB in use
        self._stopping = threading.Event()
        self._engine_error = ""
        # Container ids being stopped and instance ids being started right now.
        self._busy: set[str] = set()
        # Exited containers already recorded as crashes (by container id).
        self._crashes_seen: set[str] = set()
        self.metrics = AgentMetrics()
        self.metrics.watch(self._gauges)
        # Its containers' logs, served to the server (started by `run`), and what it sent.
        self.log_stats = LogStats()
        self.logs: AgentLogs | None = None

    # -- server I/O -------------------------------------------------------------------

    @property
    def server(self) -> str:
        """The server URL in use: one of `server`'s (comma-separated), the next one after
        a failure, so an agent goes on when its server dies (any server forwards to the
        one that leads)."""
        return self.servers[self._server_index % len(self.servers)]

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                base_url=self.server.rstrip("/") + "/",
                headers={"Authorization": f"Bearer {self.config.cluster_token}"},
            )
        return self._session

    def _next_server(self) -> None:
        if len(self.servers) > 1:
            self._server_index += 1
            old, self._session = self._session, None
            if old is not None:
                asyncio.get_running_loop().create_task(old.close())

    def _url(self, suffix: str) -> str:
        return f"{API_PREFIX.lstrip('/')}/nodes/{self.config.node_name}/{suffix}"

    def heartbeat_body(self) -> Heartbeat:
        return Heartbeat(
            node=self.config.node_name, address=self.config.advertise,
            capacity_mb=self.capacity_mb, free_mb=machine.free_mb(),
            containers=tuple(
                self._report_of(c) for c in self._containers
                if c.instance and c.app and c.release
            ),
            failures={i: Failure(r.message[:MAX_MESSAGE], count=r.failures, crash=r.crash)
                      for i, r in self.state.retries.items()},
            agent=self.agent_id, cluster=self.state.cluster,
            logs_port=self.logs.port if self.logs is not None else None,
        )

    def _report_of(self, c: Container) -> ContainerInfo:
        health = self.state.health.get(c.instance, HealthState())
        status = health.status if c.running else "unhealthy"
        return ContainerInfo(
            instance=c.instance, app=c.app, release=c.release, state=c.state,
            health=status, port=c.host_port,
            health_detail=health.detail[:MAX_DETAIL] if status != "healthy" else "",
            started_at=c.created or None,
            restarts=max(0, self.state.starts.get(c.instance, 0) - 1),
            memory_mb=self._memory.get(c.id) if c.running else None)

    def _read_memory(self) -> dict[str, int | None]:
        """Memory each running container uses (thread: it reads cgroup files)."""
        return {c.id: machine.container_memory_mb(c.id) for c in self._containers
                if c.running}

    async def send_heartbeat(self) -> bool:
        """Report; on a reply take the assignment. False when the server did not take it.
        Nothing is reported before the agent knows its cluster: an empty report would
        look like a node whose containers all died."""
        known = self.state.cluster or self.runtime.any_cluster
        if not known and not await self.learn_cluster():
            return False
        for _ in range(2):
            status, data, short = await self._post_heartbeat()
            if status == 200:
                self._server_back()
                self._refused("")
                cluster = data.get("cluster") if isinstance(data, dict) else None
                if self.runtime.any_cluster and validation.is_cluster_id(cluster):
                    await self._join_cluster(cluster)  # the server was upgraded
                    return True  # the next report lists this cluster's containers
                self.take_assignment(data)
                return True
            code = data.get("code") if isinstance(data, dict) else None
            if status == 409 and code == WrongCluster.code and validation.is_cluster_id(
                    data.get("cluster")):
                self._server_back()  # its database is another one now
                await self._join_cluster(data["cluster"])
                continue
            if status and short:
                continue  # refused a short beat (report-needed, or a server that cannot
                # take one): the whole report now, and its answer counts
            if status == 409 and code == NodeTaken.code:
                self._server_back()
                self._refused(f"{data.get('error')}. {data.get('hint') or ''}".strip())
                return False
            if status:
                message = data.get("error") if isinstance(data, dict) else None
                self._server_lost(InvalidInput("heartbeat", f"HTTP {status}: {message}"))
            return False
        return False

    async def learn_cluster(self) -> bool:
        """Ask the server which cluster this node belongs to. A server older than cluster
        ids answers 404: then containers are matched by node name alone, as it expects."""
        try:
            async with self.session.get(self._url("cluster"), allow_redirects=False,
                                        timeout=aiohttp.ClientTimeout(total=10)) as resp:
                self._refuse_redirect(resp)
                data = await resp.json(content_type=None) if resp.status != 404 else None
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError, DinpError) as exc:
            self._server_lost(exc)
            return False
        cluster = data.get("cluster") if isinstance(data, dict) else None
        if status == 200 and validation.is_cluster_id(cluster):
            await self._join_cluster(cluster)
            return True
        if status == 404:
            log.warning("server %s is older than cluster ids: containers are matched by "
                        "node name only until it is upgraded", self.server)
            self.runtime.any_cluster = True
            await self.refresh()
            return True
        self._server_lost(InvalidInput("cluster", f"HTTP {status}: {data!r}"))
        return False

    async def _post_heartbeat(self) -> tuple[int, Any, bool]:
        """(HTTP status, decoded body, whether it was a short beat); status 0 when the
        server did not answer.

        The whole report goes when it changed since the one the server last said it
        holds, or FULL_REPORT_SECONDS after the last whole one; else a short beat ("the
        same as report <digest>"). Either says which assignment the agent holds, so an
        unchanged one comes back without its instances."""
        hb = self.heartbeat_body()
        digest = hb.state_digest()
        rev = self.state.assignment_rev if self.state.assignment is not None else None
        full = (self._reported != digest
                or time.monotonic() - self._full_at >= FULL_REPORT_SECONDS)
        body = (dataclasses.replace(hb, digest=digest, rev=rev).to_json() if full else
                Beat(node=hb.node, same_as=digest, free_mb=hb.free_mb, agent=hb.agent,
                     cluster=hb.cluster, rev=rev).to_json())
        status, data = await self._post(body)
        if status == 200 and isinstance(data, dict):
            self._reported = digest if data.get("report") == digest else None
            if full:
                self._full_at = time.monotonic()
        elif status:
            self._reported = None  # refused: the next report is whole
        return status, data, not full

    async def _post(self, body: dict[str, Any]) -> tuple[int, Any]:
        started = time.perf_counter()
        try:
            async with self.session.post(self._url("heartbeat"), json=body,
                                         allow_redirects=False,
                                         timeout=aiohttp.ClientTimeout(total=10)) as resp:
                self._refuse_redirect(resp)
                reply = resp.status, await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError, DinpError) as exc:
            self._server_lost(exc)
            self.metrics.heartbeats.labels("failed").inc()
            return 0, None
        self.metrics.heartbeat_seconds.observe(time.perf_counter() - started)
        self.metrics.heartbeats.labels("ok" if reply[0] == 200 else "refused").inc()
        return reply

    def _refuse_redirect(self, resp: aiohttp.ClientResponse) -> None:
        if 300 <= resp.status < 400:
            raise Redirected(
                f"{self.server} answered with a redirect to "
                f"{resp.headers.get('Location', '?')}; the agent sends its cluster token "
                "only to the configured URL",
                hint="Set server (DINP_SERVER) to the API's own URL.")

    async def _join_cluster(self, cluster: str) -> None:
        """Take the server's cluster id: from now on only that cluster's containers (and
        older unlabelled ones it assigns) are this agent's."""
        old = self.state.cluster
        if old == cluster and not self.runtime.any_cluster:
            return
        async with self._converge_lock:  # no plan is made from half of each state
            if old:
                log.warning("the server now runs cluster %s, not %s: containers of cluster "
                            "%s on this node are left running, untouched", cluster, old, old)
            else:
                log.info("node %s belongs to cluster %s", self.config.node_name, cluster)
            self.state = AgentState(cluster=cluster)  # nothing known of the old one counts
            self.runtime.cluster, self.runtime.any_cluster = cluster, False
            await self.refresh()
        with contextlib.suppress(Unavailable):
            await self.check_health()

    def _refused(self, message: str) -> None:
        """Another agent runs this node: act on nothing (containers keep running) until
        the server accepts this agent; say so once, not on every beat."""
        if message and message != self.state.refused:
            log.error("the server refuses this agent: %s", message)
        elif not message and self.state.refused:
            log.info("the server accepts this agent for node %s now", self.config.node_name)
        if message:
            self.state.assignment = None
        self.state.refused = message

    def _server_lost(self, exc: BaseException) -> None:
        if self.state.server_ok or self.state.assignment is None:
            log.warning("server %s unreachable (%s); keeping every container running",
                        self.server, exc or type(exc).__name__)
        self.state.server_ok = False
        self._reported = None  # the next server may hold no report of this node
        self._next_server()

    def _server_back(self) -> None:
        if not self.state.server_ok:
            log.info("connected to server %s as node %s", self.server,
                     self.config.node_name)
        self.state.server_ok = True

    def take_assignment(self, data: object) -> None:
        held = self.state.assignment
        if isinstance(data, dict) and data.get("same") is True:  # "the one you hold"
            if held is None or data.get("rev") != self.state.assignment_rev:
                return  # it held another one meanwhile: the next beat asks again
            rev, items = self.state.assignment_rev, held
        else:
            try:
                rev, items = parse_assignments(data)
            except InvalidInput as exc:
                log.warning("ignoring a malformed assignment from the server: %s", exc)
                return
        cluster = data.get("cluster") if isinstance(data, dict) else None
        ours = (cluster == self.state.cluster != "") or (self.runtime.any_cluster
                                                          and cluster is None)
        if self.state.refused or not ours:
            return  # not for this agent's view of the node: the next heartbeat sorts it out
        self._take_interval(data.get("heartbeat_interval") if isinstance(data, dict) else None)
        changed = rev != self.state.assignment_rev
        self.state.assignment, self.state.assignment_rev = items, rev
        self.state.assignment_at = time.monotonic()
        # Instances the server's database never knew (it was empty or another one when
        # this node first reported): not the server's to remove.
        foreign = data.get("foreign") if isinstance(data, dict) else None
        self.state.foreign = {f for f in foreign if isinstance(f, str)} if isinstance(
            foreign, list) else set()
        if changed:
            log.info("assignment %s: %d instance(s)", rev, len(items))
            assigned = {a.id for a in items}
            self.state.starts = {i: n for i, n in self.state.starts.items() if i in assigned}
            self._kick.set()

    def _take_interval(self, value: object) -> None:
        """Heartbeat as often as the server asks: it stretches the interval as its
        cluster grows (max_heartbeats_per_second) and waits for silence in proportion.
        A value out of reason is ignored (this agent's own interval stands)."""
        if (isinstance(value, (int, float)) and not isinstance(value, bool)
                and MIN_INTERVAL <= value <= MAX_INTERVAL and value != self.interval):
            log.info("heartbeat every %g s, as the server asks", value)
            self.interval = float(value)

    async def long_poll(self) -> None:
        """Hold a request open so the server can hand out new work at once."""
        while True:
            try:
                if (self.state.cluster or self.runtime.any_cluster) and not self.state.refused:
                    params = {"rev": self.state.assignment_rev, "wait": str(LONG_POLL_SECONDS),
                              "agent": self.agent_id}
                    async with self.session.get(
                        self._url("assignments"), params=params, allow_redirects=False,
                        timeout=aiohttp.ClientTimeout(total=LONG_POLL_SECONDS + 10),
                    ) as resp:
                        self._refuse_redirect(resp)
                        data = await resp.json(content_type=None)
                        if resp.status == 200 and parse_ok(data):
                            self.take_assignment(data)
                            continue
            except (aiohttp.ClientError, TimeoutError, ValueError, DinpError):
                pass
            except Exception:  # never let the long-poll die silently
                log.exception("long-poll failed")
            await asyncio.sleep(self.config.heartbeat_interval)

    # -- local state ------------------------------------------------------------------

    async def refresh(self) -> None:
        cluster = self.runtime.cluster
        listed = await asyncio.to_thread(self.runtime.list)
        if self.runtime.cluster != cluster:
            return  # listed for a cluster this agent has left meanwhile
        # A container older than cluster ids becomes ours once the server assigns its
        # instance here (instance ids are random: another cluster's cannot match).
        assigned = {a.id for a in self.state.assignment or []}
        self.state.adopted.update(c.instance for c in listed
                                  if c.legacy and c.instance in assigned)
        self._containers = listed

    async def check_health(self, *, only_starting: bool = False) -> bool:
        """Check running containers; True if any reported status changed."""
        by_instance = {a.id: a for a in self.state.assignment or []}
        targets = [
            c for c in self._containers
            if c.running and c.host_port
            and (not only_starting or self.state.health.get(c.instance, HealthState()).status
                 != "healthy")
        ]

        async def one(c: Container) -> bool:
            a = by_instance.get(c.instance)
            answer = await check(self.config.advertise, c.host_port or 0,
                                 a.health_path if a else None)
            health = self.state.health.setdefault(c.instance, HealthState())
            changed = health.record(answer)
            if changed and health.status == "healthy":
                self.state.retries.pop(c.instance, None)  # it works now: no backoff left
            return changed

        results = await asyncio.gather(*(one(c) for c in targets))
        live = {c.instance for c in self._containers}
        for gone in set(self.state.health) - live:
            del self.state.health[gone]
        return any(results)

    # -- converge ---------------------------------------------------------------------

    async def converge(self) -> None:
        """Start what is assigned and missing; stop what is not assigned (fresh info only).
        Returns when that work is done."""
        work = await self._plan_work()
        if work:
            await self._do_work(*work)

    async def _plan_work(self) -> tuple[list[Container], list[Assignment], str] | None:
        """(stops, starts, cluster) for this round, from the node plan (which leaves out
        containers and instances that work still under way, a slow stop or a long pull,
        already handles); its bookkeeping is applied here."""
        async with self._converge_lock:
            await self.refresh()
            await self._note_crashes()
            actions = node_plan.plan(self._view(), now=time.monotonic(),
                                     start_timeout=self.config.start_timeout)
            stops, starts = self._apply(actions)
            if not stops and not starts:
                return None
            self._busy.update(c.id for c in stops)
            self._busy.update(a.id for a in starts)
            return stops, starts, self.runtime.cluster

    async def _note_crashes(self) -> None:
        """A container of an assigned instance that exited is a crash: recorded with its
        exit code and last output (the reason reaches the server), and its next start
        backs off when it keeps crashing (the first one restarts at once)."""
        assigned = {a.id for a in self.state.assignment or []}
        for c in self._containers:
            if c.state in {"exited", "dead"} and c.instance in assigned \
                    and c.id not in self._crashes_seen:
                self._crashes_seen.add(c.id)
                with contextlib.suppress(Unavailable):
                    how = await asyncio.to_thread(self.runtime.exit_info, c)
                    delay = self._failed(c.instance, f"{c.name} {how}", crash=True)
                    self.metrics.crashes.inc()
                    log.warning("%s %s (restarting in %.0f s)", c.name, how, delay)
        live = {c.id for c in self._containers}
        self._crashes_seen &= live  # forget containers that are gone

    def _view(self) -> node_plan.NodeView:
        """What the plan is made from: a frozen copy of what the agent knows now."""
        state = self.state
        return node_plan.NodeView(
            assignment=None if state.assignment is None else tuple(state.assignment),
            containers=tuple(self._containers),
            received_at=state.assignment_at, server_ok=state.server_ok,
            health={i: h.snapshot() for i, h in state.health.items()},
            backoff={i: r.next_at for i, r in state.retries.items()},
            unassigned_since=dict(state.unassigned_since),
            foreign=frozenset(state.foreign), adopted=frozenset(state.adopted),
            busy=frozenset(self._busy),
        )

    def _apply(self, actions: list[node_plan.Action]) -> tuple[list[Container],
                                                                 list[Assignment]]:
        """Apply the plan's bookkeeping at once; return its stops and starts."""
        stops: list[Container] = []
        starts: list[Assignment] = []
        for action in actions:
            if isinstance(action, node_plan.Stop):
                stops.append(action.container)
            elif isinstance(action, node_plan.Start):
                starts.append(action.assignment)
            elif isinstance(action, node_plan.Stuck):
                log.error("%s %s: replacing it",
                          const.container_name(action.app, action.instance), action.reason)
                self._failed(action.instance, action.reason)
                self.metrics.stuck.inc()
            elif isinstance(action, node_plan.ForgetFailure):
                self.state.retries.pop(action.instance, None)
            elif isinstance(action, node_plan.MarkUnassigned):
                self.state.unassigned_since[action.instance] = action.since
            elif isinstance(action, node_plan.Reassigned):
                self.state.unassigned_since.pop(action.instance, None)
            else:
                self._kick_later(action.delay)
        return stops, starts

    async def _do_work(self, stops: list[Container], starts: list[Assignment],
                       cluster: str) -> None:
        """Stop, then start (a dead container goes before its replacement comes)."""
        try:
            if stops:
                await asyncio.gather(*(self._stop(c) for c in stops))
            if starts:
                await asyncio.gather(*(self._start(a, cluster) for a in starts))
        finally:
            self._busy.difference_update(c.id for c in stops)
            self._busy.difference_update(a.id for a in starts)
        await self.refresh()
        self._report.set()
        self._kick.set()  # what changed meanwhile is looked at now

    def _failed(self, instance: str, message: str, *, crash: bool = False) -> float:
        """Record a failure of `instance`: its next start waits, longer each time (a
        `crash` not after the first, as a one-off crash deserves)."""
        retry = self.state.retries.setdefault(instance, _Retry())
        retry.failures += 1
        exponent = retry.failures - 1 if crash else retry.failures
        delay = min(MAX_START_BACKOFF, 2.0 ** exponent) if exponent else 0.0
        retry.next_at = time.monotonic() + delay
        retry.message, retry.crash = message, crash
        self.state.health.pop(instance, None)
        self._kick_later(delay)
        return delay

    async def _start(self, a: Assignment, cluster: str) -> None:
        """Start `a` labelled with `cluster`, the one its plan was made for."""
        try:
            c = await asyncio.to_thread(self.runtime.start, a, cluster)
        except (StartFailed, DinpError) as exc:
            delay = self._failed(a.id, str(exc))
            self.metrics.starts.labels("failed").inc()
            log.error("%s (retrying in %.0f s)", exc, delay)
            return
        self.metrics.starts.labels("ok").inc()
        self.state.starts[a.id] = self.state.starts.get(a.id, 0) + 1
        self.state.health[a.id] = HealthState()
        log.info("started %s (%s) on port %s", c.name, a.image, c.host_port)

    async def _stop(self, c: Container) -> None:
        log.info("stopping %s (%s)", c.name, c.state)
        try:
            await asyncio.to_thread(self.runtime.stop, c,
                                    timeout=c.stop_grace if c.stop_grace is not None
                                    else self.config.stop_timeout)
            self.metrics.stops.inc()
        except (DinpError, docker.errors.APIError) as exc:
            log.error("cannot stop %s: %s", c.name, exc)
        self.state.unassigned_since.pop(c.instance, None)

    def _kick_after_event(self) -> None:
        """Wake now, and again shortly: the engine sends `die` a moment before its
        container list shows the container as exited."""
        self._kick.set()
        self._report.set()
        for delay in (0.05, 0.2, 0.5):
            self._kick_later(delay)

    def _kick_later(self, delay: float) -> None:
        asyncio.get_running_loop().call_later(max(0.05, delay), self._kick.set)

    def _gauges(self) -> dict[str, tuple[str, str, dict[str, float] | float]]:
        states: dict[str, float] = {}
        for c in self._containers:
            key = c.state if not c.running else self.state.health.get(
                c.instance, HealthState()).status
            states[key] = states.get(key, 0) + 1
        return {
            "dinp_agent_containers": ("This node's app containers, by state (running ones "
                                      "by health).", "state", states),
            "dinp_agent_assigned": ("Instances the server assigned to this node.", "",
                                    float(len(self.state.assignment or []))),
            "dinp_agent_server_connected": ("1 while the server answers.", "",
                                            float(self.state.server_ok)),
            "dinp_agent_log_bytes_total": ("Bytes of app logs served to the server.", "",
                                           float(self.log_stats.bytes)),
            "dinp_agent_log_lines_dropped_total": ("Log lines dropped for readers that "
                                                   "fell behind.", "",
                                                   float(self.log_stats.dropped)),
        }

    # -- loops ------------------------------------------------------------------------

    def _watch_events(self, loop: asyncio.AbstractEventLoop) -> None:
        """Thread: wake the main loop when one of our containers dies or starts."""
        while not self._stopping.is_set():
            try:
                for event in self.runtime.events():
                    log.debug("engine event %s %s", event.get("status"),
                              event.get("Actor", {}).get("Attributes", {}).get("name"))
                    if event.get("status") in {"die", "start", "destroy", "oom"}:
                        loop.call_soon_threadsafe(self._kick_after_event)
            except Exception as exc:  # the stream breaks when the engine restarts
                if self._stopping.is_set():
                    return
                log.debug("event stream ended: %s", exc)
            self._stopping.wait(1.0)

    async def health_loop(self) -> None:
        """Check new containers often (fast routing) and healthy ones every interval."""
        last_full = 0.0
        while True:
            await asyncio.sleep(0.2)
            full = time.monotonic() - last_full >= self.config.health_interval
            if full:
                last_full = time.monotonic()
            try:
                if await self.check_health(only_starting=not full):
                    self._report.set()
            except Exception:  # never let health checks die silently
                log.exception("health check failed")

    async def heartbeat_loop(self) -> None:
        """Report every heartbeat interval, and at once when something changed. Without
        the Docker engine there is nothing true to report, so no heartbeat goes out and
        the node will be seen as down."""
        while True:
            try:
                await self.refresh()
                self._memory = await asyncio.to_thread(self._read_memory)
                await self.send_heartbeat()
                if self._engine_error:
                    log.info("Docker engine reachable again")
                    self._engine_error = ""
            except Unavailable as exc:
                if str(exc) != self._engine_error:
                    log.error("%s; not reporting until it is back", exc)
                    self._engine_error = str(exc)
            except Exception:
                log.exception("heartbeat failed")
            await _wait(self._report, self.interval)

    async def converge_loop(self) -> None:
        """Converge on every change of assignment or containers, and every interval. The
        work runs in the background, so a slow stop never holds up a new start."""
        running: set[asyncio.Task[None]] = set()

        def finished(task: asyncio.Task[None]) -> None:
            running.discard(task)
            if not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                if not isinstance(exc, Unavailable):
                    log.error("converge work failed: %r", exc)

        try:
            while True:
                try:
                    work = await self._plan_work()
                    if work:
                        task = asyncio.create_task(self._do_work(*work))
                        running.add(task)
                        task.add_done_callback(finished)
                except Unavailable:
                    pass  # the heartbeat loop says so
                except Exception:
                    log.exception("converge failed; trying again")
                await _wait(self._kick, self.config.heartbeat_interval)
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    def own_containers(self) -> list[Container]:
        """The containers this agent takes care of now (those made before cluster ids
        only once adopted): whose logs it serves."""
        return [c for c in self._containers if not c.legacy or c.instance in self.state.adopted]

    async def run(self) -> None:
        """Run until cancelled."""
        self.logs = AgentLogs(self.config, self.runtime, self.own_containers, self.log_stats)
        await self.logs.start()
        loop = asyncio.get_running_loop()
        watcher = threading.Thread(target=self._watch_events, args=(loop,),
                                   name="dinp-docker-events", daemon=True)
        watcher.start()
        # Adopt what runs: health is known before the first report, so a restarted agent
        # never makes its healthy instances look new.
        with contextlib.suppress(Unavailable):  # the heartbeat loop reports it
            await self.refresh()
            await self.check_health()
        tasks = [asyncio.create_task(t) for t in (
            self.heartbeat_loop(), self.long_poll(), self.health_loop(),
        )]
        try:
            await self.converge_loop()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._stopping.set()
            await self.logs.close()
            if self._session is not None:
                await self._session.close()
            await asyncio.to_thread(self.runtime.close)


async def _wait(event: asyncio.Event, timeout: float) -> None:
    """Until `event` is set or `timeout` passes; then clear it for the next round."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
    event.clear()


async def serve(config: AgentConfig) -> None:
    """`dinp agent`: converge this node until a signal; containers keep running after."""
    if not config.node_name:
        raise ConfigError("the agent needs a node name",
                          hint="Pass --node-name or set DINP_NODE_NAME.")
    validation.node_name(config.node_name)
    require_secret(config.cluster_token, key="cluster_token", section="agent")
    config.logs_address()  # a malformed logs_listen is refused before anything runs
    runtime = await asyncio.to_thread(
        lambda: DockerRuntime(node=config.node_name, advertise=config.advertise,
                              base_url=config.docker_host, policy=Policy.of(config))
    )
    agent = Agent(config, runtime)
    log.info("agent %s advertising %s, %d MB for apps, server %s", config.node_name,
             config.advertise, agent.capacity_mb, config.server)
    async with metrics_served(agent.metrics.registry, config.metrics_listen,
                              key="metrics_listen in [agent]", default_port=7074):
        await run_until_stopped(agent.run())
