"""The server's brain: desired state from the database, real state from heartbeats,
the reconcile loop that plans and executes, and the route table it publishes.

HTTP lives in `roles/api.py`; this module holds no request handling. All database and
Redis calls run in one worker thread (`Server.db`) so the event loop never blocks and
writes are serialised.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import logging
import os
import random
import secrets
import socket
import statistics
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from dinp import acme_orders, const, rollouts, routes, scheduler
from dinp.accounts import Accounts
from dinp.config import ServerConfig, split_hostport
from dinp.errors import (
    Contended,
    DinpError,
    NodeTaken,
    NotFound,
    ReportNeeded,
    Unavailable,
    WrongCluster,
)
from dinp.logs import LogStats
from dinp.metrics import ServerMetrics
from dinp.models import AppRow
from dinp.pace import Pace
from dinp.releases import ReleaseSpec
from dinp.roles.certificates import Certifier
from dinp.scheduler import ContainerReport, NodeReport, Real, Remove, Unplaceable
from dinp.store import NotLeader, Snapshot, Store, newest
from dinp.wire import (
    Assignment,
    Beat,
    Heartbeat,
    assignment_text,
    assignments_rev,
    assignments_rev_of,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
# One instance of a node's assignment as it is made: its row, its release, its app's
# stop grace.
AssignmentInput = tuple[scheduler.Placed, ReleaseSpec, float]
# An instance whose container exited this many times in a row is crash-looping.
CRASH_LOOP = 3
# Threads for the API's and the heartbeats' database calls (a server's MySQL pool
# holds 5 connections and lends 10 more).
API_DB_THREADS = 4
# Tries of a database call that ended in a deadlock.
CONTENDED_TRIES = 4
# The reconcile's own reads and writes may take longer than an API call's (a large
# cluster's snapshot); a hung database still pauses it within this.
RECONCILE_DB_SECONDS = 30.0
# Nodes silent together (a mass silence) are held up at most this many node timeouts.
MASS_SILENCE_HOLDS = 5
# How often the event loop's lateness is sampled (watch_lag).
LAG_TICK = 0.25
# heard_late: the fewest gaps between heartbeats it counts, and the most it reads.
GAP_SAMPLES = 20
GAP_SAMPLES_USED = 2000
# Heartbeats' events are gathered this long and written together.
EVENT_BATCH_SECONDS = 0.25


@dataclass(frozen=True)
class NodeOwner:
    """The agent process that reports for a node, and when it last did (monotonic)."""

    agent: str
    seen: float


@dataclass(frozen=True)
class NodeAssignment:
    rev: str
    instances: list[Assignment]
    # What it was made from (the instance rows, their releases, the app's stop grace):
    # the next snapshot's equal inputs keep this one.
    inputs: list[AssignmentInput] = dataclasses.field(default_factory=list)

    @classmethod
    def made(cls, inputs: list[AssignmentInput], items: AssignmentItems) -> NodeAssignment:
        made = [items.get(i) for i in inputs]
        return cls(assignments_rev_of([text for _, text in made]), [a for a, _ in made],
                   inputs)

    def to_json(self, node: str, status: str, heartbeat_interval: float,
                foreign: list[str], cluster: str, *, same: bool = False) -> dict[str, Any]:
        """The reply; `same`: the agent holds this revision, so its instances are left
        out (`"same": true`)."""
        body: dict[str, Any] = {"node": node, "status": status, "rev": self.rev,
                                "cluster": cluster, "heartbeat_interval": heartbeat_interval,
                                "foreign": foreign}
        if same:
            body["same"] = True
        else:
            body["instances"] = [a.to_json() for a in self.instances]
        return body


class AssignmentItems:
    """Each instance's Assignment and its part of the revision's digest, made once per
    instance row, release and stop grace: a placement changes the assignment of every
    node it touches (of 10,000 new instances, 5,000 nodes of 30 instances each), and
    the instances already there need not be made again."""

    def __init__(self) -> None:
        self.held: dict[str, tuple[AssignmentInput, Assignment, str]] = {}

    def get(self, item: AssignmentInput) -> tuple[Assignment, str]:
        was = self.held.get(item[0].id)
        if was is not None and was[0] == item:
            return was[1], was[2]
        inst, release, grace = item
        made = Assignment(
            id=inst.id, app=inst.app, release=inst.release, image=release.image,
            memory_mb=inst.memory_mb, port=release.port, env=dict(release.env),
            health_path=release.health_path, stop_grace=grace)
        text = assignment_text(made)
        self.held[inst.id] = (item, made, text)
        return made, text

    def keep(self, ids: Mapping[str, Any]) -> None:
        """Forget the instances not in `ids`."""
        self.held = {k: v for k, v in self.held.items() if k in ids}


def _retried(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn`, made again when the database ended it in a deadlock (rolled back whole):
    InnoDB ends one of two transactions that lock rows in crossed order, and the API's
    threads write at once. The last try's error stands."""
    for attempt in range(1, CONTENDED_TRIES):
        try:
            return fn(*args, **kwargs)
        except Contended:
            time.sleep(random.uniform(0, 0.02 * attempt))
    return fn(*args, **kwargs)


def kept(before: Mapping[Any, Any], now: Mapping[Any, Any]) -> bool:
    """Whether every entry `before` is in `now`, equal (what `now` adds besides is new)."""
    return all(k in now and now[k] == v for k, v in before.items())


def same_inputs(last: tuple[Any, ...] | None, inputs: tuple[Any, ...]) -> bool:
    """Whether `inputs` are the `last` a result was made from: the first (the instance
    rows, a tuple of 150,000) the same object, the rest equal."""
    return last is not None and last[0] is inputs[0] and last[1:] == inputs[1:]


def server_id() -> str:
    """This server process: host, pid and a random part (as agents are named)."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{secrets.token_hex(4)}"


def advertise_url(config: ServerConfig) -> str:
    """How the other servers reach this one: advertise_url, else its API address (this
    machine's name in place of an every-address listen)."""
    if config.advertise_url:
        return config.advertise_url.rstrip("/")
    host, port = split_hostport(config.api_listen, default_port=7070)
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()
    return f"http://{host}:{port}"


def _agent_host(agent: str) -> str:
    """The machine in an agent id (`host:pid:random`, see roles/agent.agent_id)."""
    return agent.rsplit(":", 2)[0]


def container_report(hb: Heartbeat) -> tuple[ContainerReport, ...]:
    return tuple(
        ContainerReport(
            instance=c.instance, app=c.app, release=c.release, running=c.state == "running",
            healthy=c.health == "healthy",
            address=f"{hb.address}:{c.port}" if c.port else None,
        )
        for c in hb.containers
    )


class Server:
    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        route_store: routes.RouteStore,
        *,
        inherited: routes.RouteTable | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.accounts = Accounts(store)
        self.metrics = ServerMetrics()
        self.metrics.watch(self._gauges)
        self.route_store = route_store
        self.started = time.monotonic()
        self._first_report_at = self.started  # the last first report of a node
        self.cluster_id = store.cluster_id()
        self.snapshot: Snapshot = store.snapshot()
        self.heartbeats: dict[str, Heartbeat] = {}
        # As recorded, counted as heard at this start: a second agent waits as long
        # after a server restart as it would have without one.
        self.owners: dict[str, NodeOwner] = {
            n.name: NodeOwner(n.agent, self.started)
            for n in self.snapshot.nodes.values() if n.agent}
        self._refusals_logged: dict[tuple[str, str], float] = {}
        self.reports: dict[str, NodeReport] = {}
        self.assignments: dict[str, NodeAssignment] = {}
        self.routes = routes.RouteTable()
        # The table published before this server started (see _carry_over).
        self.inherited = inherited or routes.RouteTable()
        self.routes_published = False
        # The reconcile's reads and writes take one thread; the API's calls and the
        # heartbeats' take others, so a create does not wait behind a 10,000-row plan
        # (nor behind another create's commit). SQLite takes one writer at a time: one
        # thread for all.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="dinp-db")
        self._api_executor = self._executor if store.engine.dialect.name == "sqlite" \
            else ThreadPoolExecutor(API_DB_THREADS, thread_name_prefix="dinp-api")
        # The lease's own thread: a renewal queued behind a flood of API calls would make a
        # lone, healthy server give up leading (and answer 503) for no reason.
        self._lease_executor = ThreadPoolExecutor(1, thread_name_prefix="dinp-lease")
        self._wake = asyncio.Event()
        self._assignments_changed = asyncio.Event()
        self._unplaceable_logged: dict[str, float] = {}
        self._failing: dict[str, str] = {}  # what fails now ("database", "routes"): why
        self._sync_since: dict[int, float] = {}  # table rev -> since when routers lag
        # Router id -> (the table revision it reported serving, when that was read).
        self.routers_seen: dict[str, tuple[int, float]] = {}
        self.unplaceable: dict[str, str] = {}  # app -> why some of it cannot be placed
        self._tasks: set[asyncio.Future[Any]] = set()
        # When the event loop woke late, and by how much (watch_lag).
        self._lags: collections.deque[tuple[float, float]] = collections.deque()
        self._pace = Pace(config.heartbeat_interval, config.node_timeout,
                          config.max_heartbeats_per_second)
        # The instance states of /metrics, and the rows and reports they were counted at.
        self._states: tuple[tuple[scheduler.Placed, ...], int, dict[str, float]] | None = None
        # When a node was heard again, and how long after the time before (heard).
        self._gaps: collections.deque[tuple[float, float]] = collections.deque()
        self._held_since: float | None = None  # since when a mass silence is held up
        # Nodes the plans marked down lately, and when: a mass silence that arrives in
        # waves (a few hundred nodes a pass) counts as one.
        self._downed: dict[str, float] = {}
        # Heartbeats' events (message, app, node, when) waiting for their batch's write.
        self._events: list[tuple[str, str | None, str | None, float]] = []
        self._events_flush: asyncio.Future[None] | None = None
        self.closing = False
        # Leadership: several servers share a database, the lease holder leads (runs the
        # reconcile loop, takes the agents' reports); the others forward to it. A Server
        # made without the lease loop (tests, `dinp up` before run) leads.
        self.server_id = server_id()
        self.url = advertise_url(config)
        self.leading = True
        self.epoch: int | None = None  # of the lease, when it holds one
        self.leader_url = self.url
        self._lease_at = 0.0  # when the lease was last renewed (monotonic)
        # Counts take-overs and step-downs: a reconcile pass that saw it change while it
        # waited on the database drops its plan (made from reports cleared meanwhile).
        self.term = 0
        self.log_stats = LogStats()  # what `GET /apps/{name}/logs` sent (roles/logs_api.py)
        # ACME HTTP-01 answers of the orders under way (token -> key authorization),
        # published with the table; and one writer of the table at a time.
        self.challenges: dict[str, str] = {}
        self._publishing = asyncio.Lock()
        self.certifier = Certifier(self)
        # Counts reports whose containers changed (and nodes heard first or forgotten):
        # a pass with the inputs of the last quiet one reuses its plan and route table.
        self._reports_rev = 0
        self._last_plan: tuple[tuple[Any, ...], tuple[scheduler.Action, ...]] | None = None
        self._last_routes: tuple[tuple[Any, ...], routes.RouteTable] | None = None
        # The read of desired state writers share (desired_changed), and whether it began.
        self._refresh: tuple[asyncio.Future[Snapshot], threading.Event] | None = None
        # The instance rows, releases and app settings the assignments were made from.
        self._assigned_from: tuple[tuple[scheduler.Placed, ...],
                                   Mapping[tuple[str, int], ReleaseSpec],
                                   dict[str, tuple[Any, ...]]] | None = None
        # Those instance rows by id, and by node then id (for the nodes a change touches).
        self._assigned_rows: dict[str, scheduler.Placed] = {}
        self._assigned_by_node: dict[str, dict[str, scheduler.Placed]] = {}
        self._assignment_items = AssignmentItems()
        self._update_assignments()

    # -- helpers ----------------------------------------------------------------------

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking store call for an API request or a heartbeat on the API's
        database threads: given up after database_timeout (a hung database answers 503
        in seconds, not after the driver's own timeouts)."""
        return await self._run_within(self._api_executor, self.config.database_timeout,
                                      fn, *args, **kwargs)

    async def db_within(self, seconds: float, fn: Callable[..., T], *args: Any,
                        **kwargs: Any) -> T:
        """Run a blocking store call of the reconcile on its own database thread,
        giving up after `seconds`."""
        return await self._run_within(self._executor, seconds, fn, *args, **kwargs)

    async def _run_within(self, executor: ThreadPoolExecutor, seconds: float,
                          fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` on `executor`, giving up after `seconds`. A call still waiting its
        turn then is cancelled and never runs, so a refused request changes nothing
        later; only a call the database was already running may still complete, and
        the error says so."""
        loop = asyncio.get_running_loop()
        future = executor.submit(_retried, fn, *args, **kwargs)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future, loop=loop), seconds)
        except TimeoutError:
            started = not future.cancel()  # False: it had not started, and now never will
            raise Unavailable(
                f"the database ({self.store.safe_url}) did not answer within {seconds:g} s"
                + ("; this change may still be made once it does: check before trying "
                   "again" if started else "; nothing was changed"),
                hint="Check the database server (database_timeout in [server] bounds the "
                "wait).") from None

    def wake(self) -> None:
        """Ask for a reconcile now instead of at the next tick."""
        self._wake.set()

    async def desired_changed(self, shows: Callable[[Snapshot], bool] | None = None) -> None:
        """After a write: take the new desired state (the API answers from it) and
        reconcile now.

        A write the store brought into the rows it holds (an app created: `shows` tells
        whether a snapshot has it) is answered from them at once, with no read. Else
        writers that arrive together share one read, made on the reconcile's thread: a
        read that has not begun yet sees every write made before it, so a writer joins
        it instead of queueing its own (a hundred `app create`s at once read the state
        a few times, not a hundred). A writer waits for that read at most
        database_timeout: its write is made, so it answers all the same (and the
        server's reads show the change once the read ends) rather than a 503 that would
        make its client send a done write again."""
        if shows is not None:
            held = self.store.held_snapshot()
            if held is not None and shows(held):
                self.snapshot = held
                self.wake()
                return
        pending = self._refresh
        if pending is None or pending[1].is_set() or pending[0].done():
            begun = threading.Event()
            task = asyncio.ensure_future(self.db_within(
                RECONCILE_DB_SECONDS, self._snapshot_from_now, begun))
            task.add_done_callback(self._refreshed)
            pending = self._refresh = (task, begun)
        try:
            await asyncio.wait_for(asyncio.shield(pending[0]), self.config.database_timeout)
        except TimeoutError:
            log.info("the read of desired state after a write takes longer than %g s: "
                     "answered before it ends", self.config.database_timeout)
        finally:
            if self._refresh is pending and pending[0].done():
                self._refresh = None
        self.wake()

    def _refreshed(self, task: asyncio.Future[Snapshot]) -> None:
        """A shared read after writes ended: the server answers from it (its error, if
        any, went to the writers waiting for it)."""
        if not task.cancelled() and task.exception() is None:
            self._install(task.result())

    def _install(self, snapshot: Snapshot) -> None:
        """Answer from `snapshot`, or from the rows the store holds now when they make
        one (they are never older); else from what is newest of it and the snapshot
        answered from so far: a snapshot read before a write committed must not hide
        it (an app just created must not vanish from the API)."""
        held = self.store.held_snapshot()
        self.snapshot = held if held is not None else newest(self.snapshot, snapshot)

    def _snapshot_from_now(self, begun: threading.Event) -> Snapshot:
        """A snapshot, marking `begun` as it starts (in the database thread): writers
        that come later need a read of their own."""
        begun.set()
        return self.store.snapshot()

    def real(self) -> Real:
        """What the agents reported, and whether that is enough to act on.

        After a start (or a take-over) silence proves nothing until every node the
        database knows as ready reported, or a whole node timeout passed *and* the first
        reports stopped coming in for two heartbeat intervals (at most a node timeout):
        while nodes are still reporting for the first time the server is catching up
        (5,000 whole reports take it seconds), and a node whose report still waits in
        the server's queue is not down."""
        now, pace = time.monotonic(), self.pace()
        quiet = min(2 * pace.heartbeat_interval, pace.node_timeout)
        waited = (now - self.started >= pace.node_timeout
                  and now - self._first_report_at >= quiet)
        known_ready = {n.name for n in self.snapshot.nodes.values() if n.status == "ready"}
        complete = waited or known_ready <= set(self.reports)
        return Real(reports=dict(self.reports), complete=complete, rev=self._reports_rev)

    # -- heartbeats -------------------------------------------------------------------

    def _check_owner(self, node: str, agent: str | None) -> None:
        """Refuse a second live agent for `node`: two agents converging one node fight
        over its containers. The owner is whoever reported last; another agent takes
        over once the owner has been silent past node_timeout, or, from the same machine
        (a restarted agent), past two heartbeat intervals: a live agent reports every
        interval, and a restart must not cost the node its instances."""
        owner = self.owners.get(node)
        if agent is None or owner is None or owner.agent == agent:
            return
        silent, pace = time.monotonic() - owner.seen, self.pace()
        if silent >= pace.node_timeout:
            return
        if (_agent_host(agent) == _agent_host(owner.agent)
                and silent >= min(2 * pace.heartbeat_interval, pace.node_timeout)):
            return
        key, now = (node, agent), time.monotonic()
        if now - self._refusals_logged.get(key, -1e9) >= 60:
            self._refusals_logged[key] = now
            log.warning("refusing agent %s for node %s: agent %s runs it (reported %.1f s "
                        "ago)", agent, node, owner.agent, silent)
        raise NodeTaken(
            f"node {node} is already run by another agent ({owner.agent}), which reported "
            f"{silent:.1f} s ago",
            hint=f"Stop that agent, or give this one another --node-name (DINP_NODE_NAME). "
            f"This agent is accepted once the other has been silent for "
            f"{pace.node_timeout:g} s.")

    def _claim(self, node: str, agent: str | None) -> None:
        if agent is None:  # an agent older than agent ids: nothing to check it against
            return
        owner = self.owners.get(node)
        if owner is None or owner.agent != agent:
            message = None
            if owner is not None:
                message = (f"agent {agent} takes node {node} over from agent {owner.agent}, "
                           f"silent for {time.monotonic() - owner.seen:.1f} s")
                log.warning(message)
            self._background(self.db(self.store.set_node_agent, node, agent, message))
        self.owners[node] = NodeOwner(agent, time.monotonic())

    def _check_cluster(self, hb: Heartbeat | Beat) -> None:
        if hb.cluster is None or hb.cluster == self.cluster_id:
            return
        listed = f"of cluster {hb.cluster}" if hb.cluster else "before knowing its cluster"
        raise WrongCluster(f"this server runs cluster {self.cluster_id}; the agent listed "
                           f"containers {listed}", cluster=self.cluster_id)

    async def heartbeat(self, hb: Heartbeat | Beat) -> dict[str, Any]:
        """Record a node's real state and answer with the instances it must run.
        Nothing is recorded from a second agent for a live node, nor from an agent that
        listed another cluster's containers (it is told this cluster's id instead)."""
        started = time.perf_counter()
        try:
            reply = await (self._heartbeat(hb) if isinstance(hb, Heartbeat)
                           else self._beat(hb))
        except (NodeTaken, WrongCluster, ReportNeeded):
            self.metrics.heartbeats.labels("refused").inc()
            raise
        self.metrics.heartbeats.labels("ok").inc()
        self.metrics.heartbeat_seconds.observe(time.perf_counter() - started)
        return reply

    async def _heartbeat(self, hb: Heartbeat) -> dict[str, Any]:
        self._check_owner(hb.node, hb.agent)
        self._check_cluster(hb)
        known = self.snapshot.nodes.get(hb.node)
        if known is None or known.address != hb.address or known.capacity_mb != hb.capacity_mb:
            await self.db(self.store.upsert_node, name=hb.node, address=hb.address,
                          capacity_mb=hb.capacity_mb,
                          running=[c.instance for c in hb.containers])
            await self.desired_changed()
        self._claim(hb.node, hb.agent)
        before = self.heartbeats.get(hb.node)
        previous = self.reports.get(hb.node)
        if previous is None:
            self._first_report_at = time.monotonic()
        containers = container_report(hb)
        self.heartbeats[hb.node] = hb
        now = time.monotonic()
        if previous is not None:
            self._gaps.append((now, now - previous.received_at))
        self.reports[hb.node] = NodeReport(hb.node, now, hb.capacity_mb, containers)
        self._record_changes(hb, before)
        came_back = self.snapshot.nodes[hb.node].status == scheduler.DOWN
        if previous is None or previous.containers != containers or came_back:
            self._reports_rev += 1
            self.wake()
        return self.assignment_reply(hb.node, hb.rev, hb.digest)

    async def _beat(self, beat: Beat) -> dict[str, Any]:
        """A short heartbeat: the node's report is the one held, heard again now. Taken
        only from the agent whose full report it names, of this cluster; else the agent
        is asked for its whole report (ReportNeeded)."""
        self._check_owner(beat.node, beat.agent)
        self._check_cluster(beat)
        held = self.heartbeats.get(beat.node)
        report = self.reports.get(beat.node)
        if (held is None or report is None or held.digest != beat.same_as
                or held.agent != beat.agent or beat.node not in self.snapshot.nodes):
            raise ReportNeeded(f"this server does not hold the report {beat.same_as} of "
                               f"node {beat.node}: send the whole report")
        self._claim(beat.node, beat.agent)
        if held.free_mb != beat.free_mb:
            self.heartbeats[beat.node] = dataclasses.replace(held, free_mb=beat.free_mb)
        now = time.monotonic()
        self._gaps.append((now, now - report.received_at))
        self.reports[beat.node] = report.heard_again(now)
        if self.snapshot.nodes[beat.node].status == scheduler.DOWN:
            self.wake()
        return self.assignment_reply(beat.node, beat.rev, beat.same_as)

    def _record_changes(self, hb: Heartbeat, before: Heartbeat | None) -> None:
        """Events for what changed on the node since its last report: a container that
        started, an instance that became healthy or unhealthy, a new reason one cannot
        start or crashed (each once, not per beat). Written in the background, in one
        transaction: a slow database never delays a heartbeat."""
        events: list[tuple[str, str | None]] = []  # (message, app)
        was = before.by_instance if before is not None else {}
        # The first report this server gets from a node (at its start, or a take-over)
        # lists what ran already: only containers that started lately are news, else a
        # restarted server would record every instance of the cluster as started.
        lately = time.time() - 2 * self.pace().heartbeat_interval
        for c in hb.containers:
            old = was.get(c.instance)
            if c.state == "running" and (old.state != "running" if old is not None else (
                    before is not None or (c.started_at or 0) >= lately)):
                events.append((f"instance {c.instance} started (release {c.release})", c.app))
            if old is not None and old.health != c.health and c.state == "running":
                if c.health == "healthy":
                    events.append((f"instance {c.instance} is healthy", c.app))
                elif c.health == "unhealthy":
                    why = f": {c.health_detail}" if c.health_detail else ""
                    events.append((f"instance {c.instance} is unhealthy{why}", c.app))
        for instance, failure in hb.failures.items():
            seen = before.failures.get(instance) if before is not None else None
            if seen is not None and seen.message == failure.message:
                continue
            what = "crashed" if failure.crash else "cannot start"
            message = f"instance {instance} {what}: {failure.message}"
            if failure.count > 1:
                message += f" ({failure.count} times in a row)"
            log.warning("node %s: %s", hb.node, message)
            app = next((i.app for i in self.snapshot.desired.instances if i.id == instance),
                       None)
            events.append((message, app))
        if events:
            now = time.time()
            self._events.extend((message, app, hb.node, now) for message, app in events)
            if self._events_flush is None:
                self._events_flush = asyncio.ensure_future(self._flush_events())
                self._tasks.add(self._events_flush)
                self._events_flush.add_done_callback(self._tasks.discard)

    async def _flush_events(self) -> None:
        """Write the heartbeats' events of the last EVENT_BATCH_SECONDS in one
        transaction: a node's every start or health change as a transaction of its own
        queued thousands of them ahead of the API's writes while 10,000 instances
        started. A database error loses these events only."""
        await asyncio.sleep(EVENT_BATCH_SECONDS)
        self._events_flush = None
        try:
            await self.write_events()
        except Unavailable as exc:
            log.debug("event(s) not recorded: %s", exc)
        except Exception:  # a bug loses these events, never the heartbeats after them
            log.exception("event(s) not recorded")

    async def write_events(self) -> None:
        """Write the heartbeats' events gathered so far, now (the event list's readers
        call it: what happened is listed at once, not a batch later)."""
        batch, self._events = self._events, []
        if batch:
            await self.db(self.store.add_events, batch)

    def flush_events(self) -> None:
        """Write the events still waiting for their batch (at shutdown)."""
        batch, self._events = self._events, []
        if batch:
            with contextlib.suppress(Unavailable):
                self.store.add_events(batch)

    def _background(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run `work` without waiting for it; a database error there only loses an event."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)

        def done(t: asyncio.Future[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and isinstance(t.exception(), Unavailable):
                log.debug("event not recorded: %s", t.exception())

        task.add_done_callback(done)

    def assignment_reply(self, node: str, held: str | None = None,
                         report: str | None = None) -> dict[str, Any]:
        """The node's assignment; without its instances when the agent `held` this
        revision already, and saying which `report` (digest) the server now holds, so
        the agent's next beats may be short."""
        assignment = self.assignments.get(node) or NodeAssignment(assignments_rev([]), [])
        row = self.snapshot.nodes.get(node)
        reply = assignment.to_json(node, row.status if row else "unknown",
                                   self.pace().heartbeat_interval,
                                   row.foreign if row else [], self.cluster_id,
                                   same=held == assignment.rev)
        if report is not None:
            reply["report"] = report
        return reply

    async def wait_assignment(self, node: str, rev: str, timeout: float,
                              agent: str | None = None) -> dict[str, Any]:
        """Long-poll: return as soon as the node's assignment differs from `rev`. Only
        the node's live agent gets it (`agent` None: an agent older than agent ids)."""
        self._check_owner(node, agent)
        deadline = time.monotonic() + timeout
        while not self.closing:
            current = self.assignments.get(node)
            if (current.rev if current else assignments_rev([])) != rev:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            event = self._assignments_changed
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                break
        return self.assignment_reply(node)

    def _update_assignments(self) -> None:
        """Hand each node the instances its rows in the current snapshot place there,
        each with its own release's image, env, port and health check.

        Made again only where its inputs changed: not at all when the snapshot's
        instance rows, releases and app settings are the ones of the last call (a
        steady pass); only for the nodes of the rows added or removed when just the
        rows changed (a placement changes the assignment of the nodes it touches, and
        only theirs get a new revision and JSON); for every node else (a release or
        an app's settings changed)."""
        snapshot = self.snapshot
        apps, releases = snapshot.apps, snapshot.releases
        # (Stop grace first: each instance's assignment takes it from here.)
        settings = {name: (a.stop_grace, a.image, a.env_json, a.port, a.memory_mb,
                           a.health_path) for name, a in apps.items()}
        instances = snapshot.desired.instances
        last = self._assigned_from
        if same_inputs(last, (instances, releases, settings)):
            return
        rows = {i.id: i for i in instances if i.app in apps}
        held, by_node = self._assigned_rows, self._assigned_by_node
        touched: set[str] | None = None  # None: every node
        if last is not None and kept(last[1], releases) and kept(last[2], settings):
            added, gone = rows.keys() - held.keys(), held.keys() - rows.keys()
            touched = {rows[k].node for k in added} | {held[k].node for k in gone}
            for k in gone:
                node_rows = by_node[held[k].node]
                del node_rows[k]
                if not node_rows:
                    del by_node[held[k].node]
                self._assignment_items.held.pop(k, None)
            for k in added:
                by_node.setdefault(rows[k].node, {})[k] = rows[k]
        else:
            by_node = {}
            for inst in instances:
                if inst.id in rows:
                    by_node.setdefault(inst.node, {})[inst.id] = inst
            self._assignment_items.keep(rows)
        self._assigned_from = (instances, releases, settings)
        self._assigned_rows, self._assigned_by_node = rows, by_node
        before = self.assignments
        new = dict(before) if touched is not None else {}
        for node in touched if touched is not None else by_node:
            placed = by_node.get(node)
            if not placed:
                new.pop(node, None)
                continue
            wanted: list[AssignmentInput] = []
            for inst in sorted(placed.values(), key=lambda i: i.id):
                release = releases.get((inst.app, inst.release))
                if release is None:
                    # A missing release row must not unassign a running instance: the
                    # app's own settings stand in.
                    app = apps[inst.app]
                    release = ReleaseSpec(app.image, app.env, app.port, app.memory_mb,
                                          app.health_path)
                wanted.append((inst, release, settings[inst.app][0]))
            old = before.get(node)
            new[node] = old if old is not None and old.inputs == wanted else \
                NodeAssignment.made(wanted, self._assignment_items)
        changed = {n for n in (touched if touched is not None else set(new) | set(before))
                   if (new.get(n) and new[n].rev) != (before.get(n) and before[n].rev)}
        self.assignments = new
        if changed:
            event, self._assignments_changed = self._assignments_changed, asyncio.Event()
            event.set()

    # -- reconcile --------------------------------------------------------------------

    async def reconcile_once(self) -> None:
        """Plan against fresh desired state and execute.

        The route table without the instances a plan removes is published, and served by
        every live router, before their rows are deleted: agents stop what their rows no
        longer place, so no router sends a request to an instance that is stopping.
        Without Redis, the plan's placements and node changes are carried out all the
        same; its removals wait, in the database, for a table that can be written.
        Without the database nothing changes."""
        started = time.perf_counter()
        try:
            await self._reconcile()
        finally:
            self.metrics.reconcile_seconds.observe(time.perf_counter() - started)

    async def _reconcile(self) -> None:
        term = self.term
        try:
            snapshot = await self.db_within(RECONCILE_DB_SECONDS, self.store.snapshot)
            if self.term != term or not self.leading:
                return  # it stepped down (or took over again) meanwhile: plan next pass
            real = self.real()
            actions = await self._plan(snapshot, real)
            changes = [a for a in actions if not isinstance(a, Unplaceable)]
            if real.complete and not await self._unrouted(snapshot, real, changes):
                changes = [a for a in changes if not isinstance(a, Remove)]
            if changes and self.term != term:
                return  # the routers' wait outlasted its leadership: nothing is done
            if changes:
                for line in scheduler.summary(changes):
                    log.info("reconcile: %s", line)
                await self.db_within(RECONCILE_DB_SECONDS, self.store.apply, changes,
                                     fence=self._fence())
                for action in changes:
                    self.metrics.actions.labels(type(action).__name__.lower()).inc()
                snapshot = await self.db_within(RECONCILE_DB_SECONDS, self.store.snapshot)
            self._install(snapshot)
            self._paused("database", "")
        except NotLeader:
            raise
        except DinpError as exc:
            self._paused("database", f"reconcile paused, nothing changed: {exc}")
            self.metrics.reconciles.labels("paused").inc()
            return
        self.metrics.reconciles.labels("done").inc()
        self._update_assignments()
        unplaceable = [a for a in actions if isinstance(a, Unplaceable)]
        self.unplaceable = {a.app: self._unplaceable_words(a) for a in unplaceable}
        with contextlib.suppress(Unavailable):  # the database went away just now
            await self._report_unplaceable(unplaceable)
            if real.complete:
                await self._judge_rollouts(real)

    async def _plan(self, snapshot: Snapshot, real: Real) -> list[scheduler.Action]:
        """The plan for this pass. The planner is pure, so when nothing it reads changed
        since a pass that found nothing to do (the same instance rows, apps and nodes,
        no report that changed, no node that comes or goes now) that empty plan stands:
        a steady 5,000-node cluster is not planned from scratch every second. Else it
        plans (in a thread: heartbeats are answered meanwhile)."""
        now, timeout = time.monotonic(), self.node_timeout()
        desired = snapshot.desired
        statuses = scheduler.node_statuses(desired, real, now=now, node_timeout=timeout)
        going = {name for name, status in statuses.items()
                 if status == scheduler.DOWN != desired.nodes[name].status}
        mark_down = not self._mass_silence(desired, going)
        inputs = (desired.instances, desired.apps, desired.nodes, real.rev, real.complete)
        last = self._last_plan
        if (last is not None and same_inputs(last[0], inputs)
                and all(status == desired.nodes[name].status or (
                    not mark_down and name in going) for name, status in statuses.items())):
            return list(last[1])
        started = time.perf_counter()
        actions = await asyncio.to_thread(scheduler.plan, desired, real, now=now,
                                          node_timeout=timeout, mark_down=mark_down)
        self.metrics.plan_seconds.observe(time.perf_counter() - started)
        # Only a plan that changes nothing stands for later passes: one whose changes
        # wait (removals until the routers serve a table without them) is made again.
        quiet = all(isinstance(a, Unplaceable) for a in actions)
        self._last_plan = (inputs, tuple(actions)) if quiet else None
        return actions

    def _mass_silence(self, desired: scheduler.Desired, going: set[str]) -> bool:
        """True when more than a third of the ready nodes (and more than two) would be
        down within two node timeouts: the ones `going` down now and the ones passes
        marked down in the two node timeouts before. This server's own trouble (its
        network, its overload) is then likelier than that many dead machines, and
        moving their instances onto the rest would not fit anyway. The pass then plans
        without marking any node down (those marked before stay down until they
        report), for MASS_SILENCE_HOLDS node timeouts; nodes still silent after that
        are marked down. (Kubernetes stops evicting in a full disruption for the same
        reason.)

        Counted over a window, not per plan: an overloaded server hears its nodes late
        in waves, and a 5,000-node server on a busy machine marked 1,900 live nodes down
        in passes of a few hundred each, none of them a third."""
        now, timeout = time.monotonic(), self.pace().node_timeout
        cut = now - 2 * timeout
        self._downed = {n: at for n, at in self._downed.items()
                        if at >= cut and n in desired.nodes}
        down = going | set(self._downed)
        ready = sum(1 for n in desired.nodes.values() if n.status == scheduler.READY)
        ready += sum(1 for n in self._downed if desired.nodes[n].status == scheduler.DOWN)
        if len(down) <= max(2, ready // 3):
            self._held_since = None
            held = False
        else:
            if self._held_since is None:
                self._held_since = now
                self.metrics.held_down.inc(len(going))
                log.warning("%d of %d ready nodes fell silent within %.0f s: not marking "
                            "them down for up to %.0f s (a partition or this server's "
                            "overload is likelier than that many dead nodes)", len(down),
                            ready, 2 * timeout, MASS_SILENCE_HOLDS * timeout)
            # Silent for that long, they are down after all.
            held = now - self._held_since < MASS_SILENCE_HOLDS * timeout
        if not held:
            for node in going:
                self._downed.setdefault(node, now)
        return held

    async def _judge_rollouts(self, real: Real) -> None:
        """Record each rollout that ended: deployed, or failed (halted: the app goes back
        to its release before, whose instances still serve)."""
        snapshot, ended = self.snapshot, False
        for name, recent in snapshot.recent.items():
            app, release = snapshot.apps.get(name), recent[-1]
            if app is None or release.version != app.release or \
                    release.status != rollouts.DEPLOYING:
                continue  # no rollout under way: nothing to judge
            instances = snapshot.by_app.get(name, [])
            failures = self._reasons([i for i in instances if i.release == release.version])
            verdict = rollouts.judge(
                release=release.version, status=release.status, made_at=release.created_at,
                now=time.time(), deploy_timeout=app.deploy_timeout,
                first=release.version == 1, failures=failures,
                progress=rollouts.progress(release.version, app.instances, instances, real),
                unplaceable=self.unplaceable.get(name))
            if verdict is not None:
                log.log(logging.INFO if verdict.status == rollouts.DEPLOYED else logging.WARNING,
                        "app %s release %d %s %s", name, release.version, verdict.status,
                        verdict.reason)
                try:
                    await self.db(self.store.record_verdict, name, release.version,
                                  verdict.status, verdict.reason)
                except NotFound:
                    continue  # deleted meanwhile: nothing to record
                self.metrics.rollouts.labels(verdict.status).inc()
                ended = True
        if ended:
            await self.desired_changed()

    def _reasons(self, instances: Sequence[scheduler.Placed]) -> dict[str, str]:
        """Why each of `instances` that is not healthy is not, as its agent said: the
        reason it cannot start or the exit of its crash, else its health check's last
        answer."""
        out: dict[str, str] = {}
        for inst in instances:
            hb = self.heartbeats.get(inst.node)
            if hb is None:
                continue
            failure = hb.failures.get(inst.id)
            if failure is not None:
                out[inst.id] = failure.message
                continue
            c = hb.by_instance.get(inst.id)
            if c is not None and c.health != "healthy" and c.health_detail:
                out[inst.id] = f"health check: {c.health_detail}"
        return out

    def _unplaceable_words(self, item: Unplaceable) -> str:
        """Why instances of an app cannot be placed, with the room there is."""
        free = {n: spec.capacity_mb for n, spec in self.snapshot.desired.nodes.items()
                if spec.status == scheduler.READY}
        for inst in self.snapshot.desired.instances:
            if inst.node in free:
                free[inst.node] -= inst.memory_mb
        if not free:
            return f"{item.missing} instance(s) need {item.memory_mb}m and no node is ready"
        node = max(sorted(free), key=lambda n: free[n])
        return (f"{item.missing} instance(s) need {item.memory_mb}m each; the largest free "
                f"is {max(0, free[node])}m on {node}")

    async def _unrouted(self, snapshot: Snapshot, real: Real,
                        changes: Sequence[scheduler.Action]) -> bool:
        """Publish the table of `snapshot` less the instances `changes` remove; True once
        every live router serves it, so those instances may stop. False (their removal
        waits for a later round) while Redis cannot take the table or a router is behind."""
        leaving = {a.instance for a in changes if isinstance(a, Remove)}
        desired = snapshot.desired
        if leaving:
            desired = dataclasses.replace(desired, instances=tuple(
                i for i in desired.instances if i.id not in leaving))
        try:
            rev = await self.publish_routes(desired, snapshot, real)
            self._paused("routes", "")
            if not leaving:
                await self._observe_routers()  # so a report that vanishes is noticed
                return True
            return await self._routers_serve(rev, len(leaving))
        except Unavailable as exc:
            # Silence while Redis is away proves nothing: it does not count against them.
            now = time.monotonic()
            self.routers_seen = {r: (rev, now) for r, (rev, _) in self.routers_seen.items()}
            self._paused("routes", f"route table not written ({exc}); instances are still "
                         "placed and started, removals wait for it")
            return False

    async def _observe_routers(self) -> dict[str, int]:
        """The revision each router reports serving now; also remembered, with when it
        was seen, for routers whose report vanishes early (see `_routers_serve`)."""
        revisions = await asyncio.to_thread(self.route_store.router_revisions)
        now = time.monotonic()
        self.routers_seen = {r: seen for r, seen in self.routers_seen.items()
                             if now - seen[1] < const.ROUTER_REPORT_TTL}
        self.routers_seen.update({r: (rev, now) for r, rev in revisions.items()})
        return revisions

    async def _routers_serve(self, rev: int, leaving: int) -> bool:
        """Every live router serves `rev` or later; a router still behind after
        router_sync_timeout is not waited for any longer.

        Live: its report is there, or it reported less than its TTL ago and the report
        vanished all the same (Redis restarted empty). Such a router counts as behind
        until it reports again: it cannot have seen a table written since."""
        revisions = await self._observe_routers()
        behind = sorted(r for r in self.routers_seen if revisions.get(r, -1) < rev)
        now = time.monotonic()
        if not behind:
            self._sync_since = {}
            return True
        since = self._sync_since.setdefault(rev, now)
        self._sync_since = {rev: since}
        if now - since >= self.config.router_sync_timeout:
            log.warning("router(s) %s did not take route table rev %d within %g s; "
                        "stopping %d instance(s) all the same", ", ".join(behind), rev,
                        self.config.router_sync_timeout, leaving)
            return True
        log.debug("waiting for router(s) %s to serve route table rev %d before %d "
                  "instance(s) stop", ", ".join(behind), rev, leaving)
        asyncio.get_running_loop().call_later(0.1, self.wake)
        return False

    def _paused(self, what: str, message: str) -> None:
        """Log a failure of `what` once (not every round), and when it works again."""
        last = self._failing.get(what, "")
        if message and message != last:
            log.warning(message)
        elif not message and last:
            log.info("%s works again", "reconcile" if what == "database" else "route table")
        self._failing[what] = message

    async def publish_routes(self, desired: scheduler.Desired, snapshot: Snapshot,
                             real: Real) -> int:
        table = self._carry_over(snapshot, await self._compute_routes(desired, snapshot,
                                                                      real))
        table = dataclasses.replace(
            table, certs={d: (p.chain_pem, p.key_pem) for d, p in snapshot.certs.items()},
            https=self._https_policies(snapshot), challenges=dict(self.challenges))
        # Published on every round even when unchanged: the store's check is cheap and is
        # how an emptied Redis (restarted) gets the whole table back.
        return await self._publish(table)

    async def _compute_routes(self, desired: scheduler.Desired, snapshot: Snapshot,
                              real: Real) -> routes.RouteTable:
        """The routes of `desired` by the agents' reports: computed in a thread, and
        not again while the instance rows, apps, domains and reports are the same."""
        inputs = (desired.instances, desired.apps, snapshot.domains, real.rev)
        last = self._last_routes
        if last is not None and same_inputs(last[0], inputs):
            return last[1]
        table = await asyncio.to_thread(routes.compute, desired, real,
                                        domain=self.config.domain,
                                        custom_domains=snapshot.domains)
        self._last_routes = (inputs, table)
        return table

    async def _publish(self, table: routes.RouteTable) -> int:
        """Write `table` (one writer at a time: the reconcile and the ACME orders both
        publish). Its own thread: a slow Redis must not hold up the database queue."""
        async with self._publishing:
            rev = await asyncio.to_thread(self.route_store.publish, table)
            self.routes = dataclasses.replace(table, rev=rev)
            self.routes_published = True
            return rev

    def _https_policies(self, snapshot: Snapshot) -> dict[str, str]:
        """Each app's HTTPS policy by its host (its custom domains follow it)."""
        return {routes.app_host(a.name, self.config.domain):
                routes.HttpsPolicy(redirect=a.https_redirect, hsts=a.hsts).to_json()
                for a in snapshot.apps.values() if a.https_redirect or a.hsts}

    async def publish_challenges(self, timeout: float) -> int:
        """Publish the table as last published with the current ACME answers; before
        the first reconcile has published one, wait for it, up to `timeout` seconds (a
        table made from less would unroute what the inherited one serves)."""
        deadline = time.monotonic() + timeout
        while not self.routes_published:
            if time.monotonic() >= deadline:
                raise Unavailable("the route table has not been published yet, so the "
                                  "ACME challenge could not be")
            self.wake()
            await asyncio.sleep(0.1)
        return await self._publish(dataclasses.replace(
            self.routes, challenges=dict(self.challenges)))

    async def routers_took(self, rev: int, timeout: float) -> bool:
        """Wait until every live router serves table `rev` or later; False when one is
        still behind after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            revisions = await self._observe_routers()
            behind = sorted(r for r in self.routers_seen if revisions.get(r, -1) < rev)
            if not behind:
                return True
            if time.monotonic() >= deadline:
                log.warning("router(s) %s did not take route table rev %d within %g s",
                            ", ".join(behind), rev, timeout)
                return False
            await asyncio.sleep(0.1)

    def _carry_over(self, snapshot: Snapshot, table: routes.RouteTable) -> routes.RouteTable:
        """Keep the routes published before this server started for the instances of
        nodes that have not reported since: not having heard from them yet is no reason to
        unroute what they serve. Their instance rows still decide which apps they serve."""
        silent = {n.name: n.address for n in snapshot.nodes.values()
                  if n.name not in self.reports}
        if not silent or not self.inherited.backends:
            return table
        backends = {h: list(b) for h, b in table.backends.items()}
        for inst in snapshot.desired.instances:
            address = silent.get(inst.node)
            host = routes.app_host(inst.app, self.config.domain)
            if address is None or host not in table.hosts:
                continue
            for addr in self.inherited.backends.get(host, ()):
                if addr.rsplit(":", 1)[0] == address and addr not in backends.get(host, []):
                    backends.setdefault(host, []).append(addr)
        return dataclasses.replace(table, backends={h: tuple(b) for h, b in backends.items()})

    async def _report_unplaceable(self, items: list[Unplaceable]) -> None:
        now = time.monotonic()
        for item in items:
            if now - self._unplaceable_logged.get(item.app, -1e9) < 60:
                continue
            self._unplaceable_logged[item.app] = now
            message = (f"cannot place {item.missing} instance(s) of {item.app}: no ready node "
                       f"has {item.memory_mb} MB free")
            log.warning(message)
            with contextlib.suppress(Unavailable):
                await self.db(self.store.add_event, message, app=item.app)

    async def run(self) -> None:
        """Hold (or wait for) the leader lease, and while leading reconcile on every
        wake-up and at least every reconcile_interval, until cancelled."""
        lease = asyncio.create_task(self.lease_loop())
        certificates = asyncio.create_task(self.certifier.run())
        lag = asyncio.create_task(self.watch_lag())
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.config.reconcile_interval)
                self._wake.clear()
                if not self.leading:
                    continue
                try:
                    await self.reconcile_once()
                except NotLeader as exc:
                    self._step_down(str(exc))
                except Exception:  # a bug must not stop the loop that keeps apps running
                    log.exception("reconcile failed; trying again")
        finally:
            lease.cancel()
            certificates.cancel()
            lag.cancel()
            await asyncio.gather(lease, certificates, lag, return_exceptions=True)

    async def watch_lag(self) -> None:
        """Note how late the event loop wakes: the time this server spent unable to take
        heartbeats (overloaded, or stopped by the machine). A node's silence counts only
        beyond it (see node_timeout)."""
        while True:
            started = time.monotonic()
            await asyncio.sleep(LAG_TICK)
            late = time.monotonic() - started - LAG_TICK
            if late > 0.02:  # (a few ms is the loop's ordinary work)
                self._lags.append((time.monotonic(), late))
            self.recent_lag()  # (drops what is older than it counts)

    def recent_lag(self) -> float:
        """Seconds the event loop was late over the last two node timeouts."""
        cut = time.monotonic() - 2 * self.pace().node_timeout
        while self._lags and self._lags[0][0] < cut:
            self._lags.popleft()
        return sum(late for _, late in self._lags)

    def heard_late(self) -> float:
        """How much later than every heartbeat interval the nodes were heard lately
        (the median gap between a node's heartbeats, over the last two node timeouts,
        beyond the interval; 0 with fewer than GAP_SAMPLES gaps). An overloaded server
        takes each report late: its queue, not the event loop, holds them (a 5,000-node
        server at its start heard every node every 15 s instead of 5, with a loop that
        was never late, and marked the slowest hundreds down). Dead nodes add no gap:
        the live ones' gaps stay the interval."""
        pace = self.pace()
        cut = time.monotonic() - 2 * pace.node_timeout
        gaps = self._gaps
        while gaps and gaps[0][0] < cut:
            gaps.popleft()
        if len(gaps) < GAP_SAMPLES:
            return 0.0
        step = max(1, len(gaps) // GAP_SAMPLES_USED)  # (a sample is enough)
        median = statistics.median(gap for _, gap in itertools.islice(gaps, 0, None, step))
        return max(0.0, median - pace.heartbeat_interval)

    def node_timeout(self) -> float:
        """How long a node may be silent before it is down: node_timeout, plus the time
        this server itself was late lately: its event loop (recent_lag), or in hearing
        its nodes (heard_late), whichever is more. Replies that wait in an overloaded
        server's queue are not silence: 10,000 placements at once on 5,000 nodes made
        the server answer heartbeats seconds late, and it had marked thousands of live
        nodes down."""
        return self.pace().node_timeout + max(self.recent_lag(), self.heard_late())

    def pace(self) -> Pace:
        """The heartbeat interval handed to agents and the node timeout with it, for
        the cluster's size now (see pace.py)."""
        self._pace.update(len(self.snapshot.nodes), time.monotonic())
        return self._pace

    # -- leadership -------------------------------------------------------------------

    async def claim(self) -> None:
        """Take or renew the leader lease (or learn who holds it): lead, or forward."""
        try:
            lease = await self._run_within(
                self._lease_executor, self.config.database_timeout, self.store.claim_lease,
                self.server_id, self.url, self.config.lease_ttl)
        except Unavailable as exc:
            # Without the database this server cannot prove it still leads: once the
            # lease may have expired for the others, it stops acting.
            if self.leading and self.epoch is not None and time.monotonic() - \
                    self._lease_at > self.config.lease_ttl * 0.6:
                self._step_down(f"the lease cannot be renewed: {exc}")
            return
        self.leader_url = lease.url
        if lease.holder != self.server_id:
            if self.leading:
                self._step_down(f"server {lease.holder} leads now")
            self.leading, self.epoch = False, None
            return
        self._lease_at = time.monotonic()
        if not self.leading or self.epoch != lease.epoch:
            await self._take_over(lease.epoch)

    async def lease_loop(self) -> None:
        while True:
            await self.claim()
            await asyncio.sleep(self.config.lease_ttl / 3)

    async def _take_over(self, epoch: int) -> None:
        """Lead from a clean start, as a restarted server would: what another leader
        knew of the nodes is not ours, so wait for every node to report (or
        node_timeout) before changing anything, keeping the routes published."""
        log.warning("this server (%s) leads now, lease epoch %d", self.server_id, epoch)
        self._forget_reports()
        self._install(await self.db_within(RECONCILE_DB_SECONDS, self.store.snapshot))
        self.owners = {n.name: NodeOwner(n.agent, self.started)
                       for n in self.snapshot.nodes.values() if n.agent}
        with contextlib.suppress(Unavailable):
            self.inherited = await asyncio.to_thread(self.route_store.current)
        self.routes_published = False
        self.leading, self.epoch = True, epoch
        self.term += 1
        self._update_assignments()
        self.wake()

    def _forget_reports(self) -> None:
        """Start over as a restarted server would (a take-over, a step-down): what it
        hears from now on is all it knows, and silence counts from now."""
        self.started = self._first_report_at = time.monotonic()
        self.heartbeats.clear()
        self.reports.clear()
        self._reports_rev += 1

    def _step_down(self, why: str) -> None:
        """Stop acting as the leader at once; agents waiting on a long-poll are answered,
        so they come back through whoever leads."""
        if self.leading:
            log.warning("this server no longer leads: %s", why)
        self.leading, self.epoch = False, None
        self.term += 1
        self._forget_reports()
        event, self._assignments_changed = self._assignments_changed, asyncio.Event()
        event.set()

    def resign(self) -> None:
        """A server that stops gives the lease up, so a standby takes over at once."""
        if self.epoch is not None:
            with contextlib.suppress(DinpError):
                self.store.release_lease(self.server_id)

    def _fence(self) -> tuple[str, int] | None:
        """What the leader's writes are checked against (None: not using the lease)."""
        return (self.server_id, self.epoch) if self.epoch is not None else None

    def fence(self) -> tuple[str, int] | None:
        """For the leader's other writers (the certifier)."""
        return self._fence()

    def step_down(self, why: str) -> None:
        """A writer of the leader found the lease taken over."""
        self._step_down(why)

    def _gauges(self) -> dict[str, tuple[str, str, dict[str, float] | float]]:
        """The state gauges of /metrics, read from what the server knows when scraped."""
        states = self._instance_states()
        nodes: dict[str, float] = dict.fromkeys(
            (scheduler.READY, scheduler.DRAINING, scheduler.DOWN), 0)
        for node in self.snapshot.nodes.values():
            nodes[node.status] = nodes.get(node.status, 0) + 1
        return {
            "dinp_server_instances": ("Instances placed, by what their container does "
                                      "(pending: none reported yet).", "state", states),
            "dinp_server_nodes": ("Nodes, by status.", "status", nodes),
            "dinp_server_apps": ("Apps.", "", float(len(self.snapshot.apps))),
            "dinp_server_routers": ("Routers seen reporting the table they serve.", "",
                                    float(len(self.routers_seen))),
            "dinp_server_route_table_revision": ("The route table's revision.", "",
                                                 float(self.routes.rev)),
            "dinp_server_log_bytes_total": ("Bytes of app logs sent to clients.", "",
                                            float(self.log_stats.bytes)),
            "dinp_server_log_lines_dropped_total": ("Log lines dropped for clients that "
                                                    "fell behind.", "",
                                                    float(self.log_stats.dropped)),
            "dinp_server_leader": ("1 while this server leads.", "", float(self.leading)),
            "dinp_server_heartbeat_interval_seconds": (
                "The heartbeat interval handed to agents now (longer than "
                "heartbeat_interval past max_heartbeats_per_second).", "",
                self.pace().heartbeat_interval),
            "dinp_server_node_timeout_seconds": (
                "How long a node may be silent before it is marked down now: node_timeout "
                "plus how late this server was lately (its loop, or hearing its nodes).",
                "", self.node_timeout()),
            **self._certificate_gauges(),
        }

    def _instance_states(self) -> dict[str, float]:
        """Instances by what their container does; counted again only when the instance
        rows or the reports changed (a scrape of a 5,000-node server walked 150,000
        instances on the event loop)."""
        instances, rev = self.snapshot.desired.instances, self._reports_rev
        cached = self._states
        if cached is not None and cached[0] is instances and cached[1] == rev:
            return dict(cached[2])
        real = Real(self.reports, complete=True)
        states: dict[str, float] = dict.fromkeys(("healthy", "unhealthy", "pending"), 0)
        for inst in instances:
            c = real.container(inst)
            key = "pending" if c is None else "healthy" if c.running and c.healthy \
                else "unhealthy"
            states[key] += 1
        self._states = (instances, rev, states)
        return dict(states)

    def _certificate_gauges(self) -> dict[str, tuple[str, str, dict[str, float] | float]]:
        """The custom domains' certificates as the leader last saw them."""
        now = time.time()
        known = self.certifier.known
        states = dict.fromkeys(acme_orders.STATES, 0.0)
        for cert in known.values():
            states[cert.state] = states.get(cert.state, 0.0) + 1
        return {
            "dinp_certificate_expiry_seconds": (
                "Seconds until each custom domain's certificate expires (negative: "
                "expired).", "domain",
                {d: c.not_after - now for d, c in known.items()
                 if c.not_after is not None and c.state != acme_orders.REVOKING}),
            "dinp_certificates": ("Custom domains' certificates, by state (see `dinp app "
                                  "domains list`).", "state", states),
        }

    def release_waiters(self) -> None:
        """Answer every open long-poll now, so shutting down never waits for them."""
        self.closing = True
        self._assignments_changed.set()

    def close(self) -> None:
        self.certifier.close()
        self.flush_events()
        self._lease_executor.shutdown(wait=True, cancel_futures=True)
        self._api_executor.shutdown(wait=True, cancel_futures=True)
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.store.close()

    # -- views for the API ------------------------------------------------------------

    def app_url(self, name: str) -> str:
        scheme, _, rest = self.config.router_url.partition("://")
        port = rest.rsplit(":", 1)[1].rstrip("/") if ":" in rest else ""
        default = "443" if scheme == "https" else "80"
        suffix = f":{port}" if port and port != default else ""
        return f"{scheme}://{routes.app_host(name, self.config.domain)}{suffix}/"

    def app_view(self, app: AppRow, *, detail: bool, show_env: bool = False) -> dict[str, Any]:
        """An app as the API shows it; env values only with `show_env` (the caller was
        allowed to see them), else only their names."""
        real = Real(self.reports, complete=True)
        host = routes.app_host(app.name, self.config.domain)
        rows = self.snapshot.by_app.get(app.name, [])
        routed = set(self.routes.backends.get(host, ())) if self.routes_published else set()
        instances = []
        running = healthy = 0
        for inst in sorted(rows, key=lambda i: (i.node, i.id)):
            c = real.container(inst)
            hb = self.heartbeats.get(inst.node)
            node = self.snapshot.nodes.get(inst.node)
            running += bool(c and c.running)
            healthy += bool(c and c.running and c.healthy)
            state = ("running" if c.running else "stopped") if c else "pending"
            info = hb.by_instance.get(inst.id) if hb else None
            if c and info:
                state = info.state
            failure = hb.failures.get(inst.id) if hb else None
            instances.append({
                "id": inst.id, "node": inst.node, "release": inst.release,
                "node_status": node.status if node else "unknown",
                "address": c.address if c else None, "state": state,
                "routed": bool(c and c.address in routed),
                "error": failure.message if failure else None,
                "failures": failure.count if failure else 0,
                "crash_looping": bool(failure and failure.crash
                                      and failure.count >= CRASH_LOOP),
                "health": ("healthy" if c.healthy else "unhealthy" if c.running else "-")
                if c else "unknown",
                "health_detail": info.health_detail if info else "",
                "uptime_s": round(time.time() - info.started_at, 1)
                if info and info.started_at and info.state == "running" else None,
                "restarts": info.restarts if info else 0,
                "memory_mb": info.memory_mb if info else None,
            })
        view: dict[str, Any] = {
            "name": app.name, "image": app.image, "instances": app.instances,
            "memory_mb": app.memory_mb, "port": app.port, "health_path": app.health_path,
            "release": app.release, "url": self.app_url(app.name), "host": host,
            "router_url": self.config.router_url, "surge": app.surge,
            "deploy_timeout": app.deploy_timeout, "stop_grace": app.stop_grace,
            "https_redirect": app.https_redirect, "hsts": app.hsts, "team": app.team,
            "created_at": app.created_at, "updated_at": app.updated_at,
            "status": {"placed": len(rows), "running": running, "healthy": healthy,
                       "routed": len(routed)},
            **self._state(app, rows, real, instances),
        }
        if detail:
            view["env"] = app.env if show_env else dict.fromkeys(app.env)
            view["domains"] = self.snapshot.domains.get(app.name, [])
            view["instance_list"] = instances
        return view

    def _state(self, app: AppRow, rows: list[scheduler.Placed], real: Real,
               instances: list[dict[str, Any]]) -> dict[str, Any]:
        """The app's state in words, and its rollout: running, deploying (k of n new
        healthy), deploy failed (why), unschedulable (why), crash-looping (which, how
        often, the last exit), failing (why)."""
        recent = self.snapshot.recent.get(app.name, [])
        current = next((r for r in recent if r.version == app.release), None)
        newest = recent[0] if recent else None
        progress = rollouts.progress(app.release, app.instances, rows, real)
        rollout = {"release": app.release, "status": current.status if current else "-",
                   "wanted": progress.wanted, "placed": progress.placed,
                   "healthy": progress.healthy, "old": progress.old}
        errors = sorted({i["error"] for i in instances if i.get("error")})
        looping = [i for i in instances if i["crash_looping"]]
        if newest is not None and newest.version > app.release and newest.status in (
                rollouts.FAILED, rollouts.CANCELLED):
            rollout.update(failed_release=newest.version, reason=newest.failure)
            state = (f"deploy of release {newest.version} {newest.status}: {newest.failure}; "
                     f"release {app.release} serves")
        elif app.name in self.unplaceable:
            state = f"unschedulable: {self.unplaceable[app.name]}"
        elif current is not None and current.status == rollouts.DEPLOYING:
            state = (f"deploying release {app.release}: {progress.healthy} of "
                     f"{progress.wanted} new instance(s) healthy, {progress.old} old left")
            if errors:
                state += f"; {errors[0]}"
        elif looping:
            worst = max(looping, key=lambda i: i["failures"])
            state = (f"crash-looping: {len(looping)} of {len(instances)} instance(s) keep "
                     f"exiting, restarted with backoff; {worst['id']} {worst['failures']} "
                     f"times in a row, last: {worst['error']}")
        elif errors and progress.healthy < app.instances:
            state = f"failing: {errors[0]}"
        elif progress.healthy < app.instances:
            state = f"starting: {progress.healthy} of {app.instances} healthy"
        else:
            state = "running"
        return {"state": state, "rollout": rollout}

    def router_views(self) -> list[dict[str, Any]]:
        """The routers seen lately and the table revision each said it serves."""
        now = time.monotonic()
        return [{"id": r, "rev": rev, "behind": rev < self.routes.rev,
                 "seen_s": round(now - seen, 1)}
                for r, (rev, seen) in sorted(self.routers_seen.items())]

    def node_views(self) -> list[dict[str, Any]]:
        out = []
        by_node: dict[str, list[scheduler.Placed]] = {}
        for inst in self.snapshot.desired.instances:
            by_node.setdefault(inst.node, []).append(inst)
        for node in sorted(self.snapshot.nodes.values(), key=lambda n: n.name):
            placed = by_node.get(node.name, [])
            hb = self.heartbeats.get(node.name)
            report = self.reports.get(node.name)
            out.append({
                "name": node.name, "address": node.address, "status": node.status,
                "capacity_mb": node.capacity_mb,
                "reserved_mb": sum(i.memory_mb for i in placed),
                "free_mb": hb.free_mb if hb else None,
                "instances": len(placed),
                "containers": len(hb.containers) if hb else None,
                "last_seen_s": round(time.monotonic() - report.received_at, 1)
                if report else None,
            })
        return out
