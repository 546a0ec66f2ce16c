"""The reconcile planner: `plan(desired, real) -> actions`, a pure function with no I/O.

It compares what should run (apps and the instances placed for them, from the database)
with what the agents last reported, and returns the smallest list of actions that brings
the two together. The server's executor carries the actions out; tests drive `plan`
directly with thousands of generated cases.

Rules it keeps:
- It acts only on complete information: until every node had its chance to report
  (`real.complete`), it returns no placement or removal at all.
- Placement is memory first: a node is a candidate if it is ready and its capacity minus
  the memory already reserved by its instances fits the app; among candidates it prefers
  the fewest instances of this app (spread), then the most unreserved memory, then name.
- An instance that must go away for a reason other than scaling down (its node is down or
  draining, or it runs an old release) is removed only once enough healthy instances of
  the current release run elsewhere: the app never drops below its healthy count because
  of the planner.
- A rollout (instances of an older release remain) starts at most `surge` new instances
  that are not healthy yet at a time; replacing the instances of a node that went down is
  not limited.
- A node silent for longer than `node_timeout` is marked down; when it reports again it is
  marked ready. A node's containers are never touched here: the agent converges to the
  instance list, so removing an instance row is how a container is stopped.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

READY = "ready"
DOWN = "down"
DRAINING = "draining"


@dataclass(frozen=True, slots=True)
class AppSpec:
    name: str
    instances: int
    memory_mb: int
    release: int
    # During a rollout, at most this many instances of the new release start at once
    # (not yet healthy); 0: no limit.
    surge: int = 0


@dataclass(frozen=True, slots=True)
class Placed:
    """An instance row: the scheduler's decision that `node` runs `app` at `release`."""

    id: str
    app: str
    release: int
    node: str
    memory_mb: int
    created: float = 0.0


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    status: str
    capacity_mb: int


@dataclass(frozen=True, slots=True)
class ContainerReport:
    instance: str
    app: str
    release: int
    running: bool
    healthy: bool
    address: str | None = None  # "host:port" where the instance serves


@dataclass(frozen=True)
class NodeReport:
    node: str
    received_at: float
    capacity_mb: int
    containers: tuple[ContainerReport, ...] = ()

    def heard_again(self, at: float) -> NodeReport:
        """The same report, received `at` (a short heartbeat): its index by instance
        goes along instead of being made again."""
        report = NodeReport(self.node, at, self.capacity_mb, self.containers)
        if "by_instance" in self.__dict__:
            report.__dict__["by_instance"] = self.__dict__["by_instance"]
        return report

    @cached_property
    def by_instance(self) -> dict[str, ContainerReport]:
        """The containers by instance id, made once per report: the planner, the route
        table and the API look instances up by id, and a scan of every container per
        instance is what made a 5,000-node plan take seconds."""
        out: dict[str, ContainerReport] = {}
        for c in self.containers:
            out.setdefault(c.instance, c)  # the first, as a scan would find it
        return out


@dataclass(frozen=True)
class Desired:
    apps: Mapping[str, AppSpec]
    instances: tuple[Placed, ...]
    nodes: Mapping[str, NodeSpec]


@dataclass(frozen=True)
class Real:
    reports: Mapping[str, NodeReport]
    # False until the server has heard from every node it knew, or waited a whole
    # node timeout since it started: before that, silence proves nothing.
    complete: bool
    # Which of the server's report changes these reports are as of (a cache key).
    rev: int = 0

    def container(self, inst: Placed) -> ContainerReport | None:
        report = self.reports.get(inst.node)
        if report is None:
            return None
        return report.by_instance.get(inst.id)

    def healthy(self, inst: Placed) -> bool:
        c = self.container(inst)
        return c is not None and c.running and c.healthy


@dataclass(frozen=True, slots=True)
class Place:
    app: str
    release: int
    node: str
    memory_mb: int


@dataclass(frozen=True, slots=True)
class Remove:
    instance: str
    app: str
    node: str
    reason: str


@dataclass(frozen=True, slots=True)
class SetNodeStatus:
    node: str
    status: str


@dataclass(frozen=True, slots=True)
class Unplaceable:
    """Not an action on state: a report that `missing` instances found no node."""

    app: str
    missing: int
    memory_mb: int


Action = Place | Remove | SetNodeStatus | Unplaceable


@dataclass
class _Ledger:
    """Memory reserved and instance counts per node while one plan is being made.

    Placement looks nodes up in an index instead of scanning them all: the ready nodes
    in placement order (most unreserved memory first, then name), kept sorted as memory
    is reserved and freed. Nodes that fit an app's memory are a prefix of that order, so
    the best node is the first of the prefix with the fewest instances of the app; the
    walk stops at the first node with the app's lowest count over all ready nodes (no
    fitting node can have fewer). It skips only nodes that hold more of the app than
    that, so a placement costs O(nodes the app crowds) instead of O(nodes); in the worst
    case (every node with the lowest count is full) it walks the prefix, as the scan did.
    """

    nodes: dict[str, NodeSpec]
    reserved: Counter[str] = field(default_factory=Counter)
    # Built at the first placement: (-unreserved MB, name) of each ready node, sorted.
    _order: list[tuple[int, str]] | None = None
    # app -> {node: instances of the app there}, for every node that has any.
    _app_nodes: dict[str, Counter[str]] = field(default_factory=dict)
    # app -> {count: ready nodes with that many of the app}, counts above 0 only; made
    # at the app's first placement, kept while the plan goes on.
    _levels: dict[str, Counter[int]] = field(default_factory=dict)

    def _ready(self, node: str) -> bool:
        spec = self.nodes.get(node)
        return spec is not None and spec.status == READY

    def _move(self, node: str, delta: int) -> None:
        """Reserve `delta` MB more on `node`, keeping the order sorted."""
        if self._order is not None and self._ready(node):
            free = self.nodes[node].capacity_mb - self.reserved[node]
            del self._order[bisect.bisect_left(self._order, (-free, node))]
            bisect.insort(self._order, (-(free - delta), node))
        self.reserved[node] += delta

    def load(self, instances: Iterable[Placed]) -> None:
        """Reserve what `instances` hold, before any placement (`add` for each, faster)."""
        reserved, app_nodes = self.reserved, self._app_nodes
        for inst in instances:
            reserved[inst.node] += inst.memory_mb
            counts = app_nodes.get(inst.app)
            if counts is None:
                counts = app_nodes[inst.app] = Counter()
            counts[inst.node] += 1

    def count(self, app: str, node: str) -> int:
        """Instances of `app` on `node`."""
        counts = self._app_nodes.get(app)
        return counts[node] if counts is not None else 0

    def _count(self, node: str, app: str, delta: int) -> None:
        counts = self._app_nodes.setdefault(app, Counter())
        before = counts[node]
        counts[node] = before + delta
        if not counts[node]:
            del counts[node]
        levels = self._levels.get(app)
        if levels is not None and self._ready(node):
            for level, change in ((before, -1), (before + delta, 1)):
                if level > 0:
                    levels[level] += change
                    if not levels[level]:
                        del levels[level]

    def add(self, node: str, app: str, memory_mb: int) -> None:
        self._move(node, memory_mb)
        self._count(node, app, 1)

    def drop(self, node: str, app: str, memory_mb: int) -> None:
        self._move(node, -memory_mb)
        self._count(node, app, -1)

    def _lowest(self, app: str) -> int:
        """The fewest instances of `app` any ready node holds."""
        levels = self._levels.get(app)
        if levels is None:
            levels = self._levels[app] = Counter(
                c for n, c in self._app_nodes.get(app, {}).items() if c > 0 and self._ready(n))
        assert self._order is not None
        if sum(levels.values()) < len(self._order):
            return 0
        return min(levels)

    def choose(self, app: str, memory_mb: int) -> str | None:
        if self._order is None:
            self._order = sorted((-(n.capacity_mb - self.reserved[n.name]), n.name)
                                 for n in self.nodes.values() if n.status == READY)
        # Nodes with at least memory_mb unreserved: the prefix up to -memory_mb.
        fits = bisect.bisect_right(self._order, (-memory_mb, "\U0010ffff"))
        if not fits:
            return None
        lowest = self._lowest(app)
        counts: Mapping[str, int] = self._app_nodes.get(app, {})
        best: tuple[int, str] | None = None
        for i in range(fits):
            name = self._order[i][1]
            count = counts.get(name, 0)
            if count == lowest:
                return name
            if best is None or count < best[0]:
                best = (count, name)
        return best[1] if best is not None else None

    def choose_by_scan(self, app: str, memory_mb: int) -> str | None:
        """The rule the index keeps, as a scan of every node (what tests compare with)."""
        candidates = [
            n
            for n in self.nodes.values()
            if n.status == READY and n.capacity_mb - self.reserved[n.name] >= memory_mb
        ]
        if not candidates:
            return None
        best = min(
            candidates,
            key=lambda n: (
                self.count(app, n.name),
                -(n.capacity_mb - self.reserved[n.name]),
                n.name,
            ),
        )
        return best.name


def node_statuses(desired: Desired, real: Real, *, now: float, node_timeout: float,
                  mark_down: bool = True) -> dict[str, str]:
    """Each node's status after this round: down when silent too long (unless not
    `mark_down`: the server holds a mass silence), ready when back."""
    out: dict[str, str] = {}
    for node in desired.nodes.values():
        report = real.reports.get(node.name)
        alive = report is not None and now - report.received_at <= node_timeout
        status = node.status
        if status == READY and not alive and real.complete and mark_down:
            status = DOWN
        elif status == DOWN and alive:
            status = READY
        out[node.name] = status
    return out


def plan(desired: Desired, real: Real, *, now: float, node_timeout: float,
         mark_down: bool = True) -> list[Action]:
    """The actions that bring `real` to `desired`; empty when they already agree. With
    `mark_down` False no node is marked down, however silent: what is ready stays so."""
    actions: list[Action] = []
    statuses = node_statuses(desired, real, now=now, node_timeout=node_timeout,
                             mark_down=mark_down)
    for name, status in sorted(statuses.items()):
        if status != desired.nodes[name].status:
            actions.append(SetNodeStatus(name, status))
    if not real.complete:
        return actions

    nodes = {
        name: NodeSpec(name, statuses[name], desired.nodes[name].capacity_mb) for name in statuses
    }
    ledger = _Ledger(nodes)
    ledger.load(desired.instances)
    by_app: dict[str, list[Placed]] = {}
    for inst in desired.instances:
        by_app.setdefault(inst.app, []).append(inst)

    for app_name in sorted(set(by_app) - set(desired.apps)):
        for inst in by_app[app_name]:
            actions.append(Remove(inst.id, inst.app, inst.node, "app deleted"))
            ledger.drop(inst.node, inst.app, inst.memory_mb)

    for app in sorted(desired.apps.values(), key=lambda a: a.name):
        actions.extend(_plan_app(app, by_app.get(app.name, []), nodes, real, ledger))
    return actions


def _plan_app(
    app: AppSpec,
    instances: list[Placed],
    nodes: Mapping[str, NodeSpec],
    real: Real,
    ledger: _Ledger,
) -> Iterable[Action]:
    def on_ready_node(i: Placed) -> bool:
        node = nodes.get(i.node)
        return node is not None and node.status == READY

    current = [i for i in instances if i.release == app.release and on_ready_node(i)]
    current_ids = {i.id for i in current}
    leaving = [i for i in instances if i.id not in current_ids]

    if len(current) > app.instances:
        # Scale down one at a time: unhealthy ones first, then from the node that is the
        # most crowded *now* (so what stays is spread), newest first.
        crowd = Counter(i.node for i in current)
        while len(current) > app.instances:
            inst = min(current, key=lambda i: (real.healthy(i), -crowd[i.node], -i.created, i.id))
            current.remove(inst)
            crowd[inst.node] -= 1
            yield Remove(inst.id, app.name, inst.node, "scaled down")
            ledger.drop(inst.node, app.name, inst.memory_mb)

    missing = app.instances - len(current)
    if app.surge and any(i.release != app.release for i in instances):
        # A rollout: a batch at a time; the next once this one is healthy.
        starting = sum(1 for i in current if not real.healthy(i))
        missing = min(missing, max(0, app.surge - starting))
    for placed in range(missing):
        node = ledger.choose(app.name, app.memory_mb)
        if node is None:
            yield Unplaceable(app.name, missing - placed, app.memory_mb)
            break
        ledger.add(node, app.name, app.memory_mb)
        yield Place(app.name, app.release, node, app.memory_mb)

    if not leaving:
        return  # (a settled app: its health is not looked at, 150,000 times a pass)
    # Replaced instances go once enough current ones serve; unhealthy ones go first.
    keep = max(0, app.instances - sum(1 for i in current if real.healthy(i)))
    ranked_leaving = sorted(leaving, key=lambda i: (real.healthy(i), i.created, i.id))
    for inst in ranked_leaving[: max(0, len(leaving) - keep)]:
        spec = nodes.get(inst.node)
        reason = (
            "old release" if inst.release != app.release
            else f"node {inst.node} is {spec.status if spec else 'gone'}"
        )
        yield Remove(inst.id, app.name, inst.node, reason)
        ledger.drop(inst.node, app.name, inst.memory_mb)


# The most lines a plan is logged in; the rest is counted in one more line.
SUMMARY_LINES = 40
# The most node names a line of node changes lists.
SUMMARY_NAMES = 10


def _names(nodes: Iterable[str]) -> str:
    shown = sorted(nodes)
    more = len(shown) - SUMMARY_NAMES
    return ", ".join(shown[:SUMMARY_NAMES]) + (f" and {more} more" if more > 0 else "")


def summary(actions: Iterable[Action]) -> list[str]:
    """A plan in a few lines for the log: placements and removals counted per app (and
    release, or reason), node changes per status. A line per instance made placing
    10,000 of them spend more time logging than planning; a line per node and per
    instance of a node that went down made a wave of 1,900 silent nodes 12,000 lines.
    The events table keeps every action; the log says what happened in SUMMARY_LINES
    lines at most."""
    places: Counter[tuple[str, int]] = Counter()
    place_nodes: dict[tuple[str, int], set[str]] = {}
    removes: Counter[tuple[str, str]] = Counter()
    remove_nodes: dict[tuple[str, str], set[str]] = {}
    statuses: dict[str, list[str]] = {}
    for a in actions:
        if isinstance(a, Place):
            places[(a.app, a.release)] += 1
            place_nodes.setdefault((a.app, a.release), set()).add(a.node)
        elif isinstance(a, Remove):
            # "node n9 is down" for each node: one reason per status, the nodes counted.
            node_reason = a.reason.startswith("node ") and a.reason.endswith(
                tuple(f" is {s}" for s in (DOWN, DRAINING, "gone")))
            key = (a.app, a.reason.rpartition(" is ")[2] if node_reason else a.reason)
            removes[key] += 1
            if node_reason:
                remove_nodes.setdefault(key, set()).add(a.node)
        elif isinstance(a, SetNodeStatus):
            statuses.setdefault(a.status, []).append(a.node)
    # (line, instances placed, instances removed)
    lines: list[tuple[str, int, int]] = []
    for status, changed in sorted(statuses.items()):
        lines.append((f"node {changed[0]} is {status}" if len(changed) == 1 else
                      f"{len(changed)} nodes are {status}: {_names(changed)}", 0, 0))
    for (app, release), n in sorted(places.items()):
        nodes = place_nodes[(app, release)]
        where = next(iter(nodes)) if len(nodes) == 1 else f"{len(nodes)} nodes"
        lines.append((f"place {n} instance(s) of {app} release {release} on {where}", n, 0))
    for (app, reason), n in sorted(removes.items()):
        nodes = remove_nodes.get((app, reason), set())
        if nodes:
            reason = (f"node {next(iter(nodes))} is {reason}" if len(nodes) == 1
                      else f"{len(nodes)} of its nodes are {reason}")
        lines.append((f"remove {n} instance(s) of {app}: {reason}", 0, n))
    if len(lines) > SUMMARY_LINES:
        shown, rest = lines[:SUMMARY_LINES - 1], lines[SUMMARY_LINES - 1:]
        return [line for line, _, _ in shown] + [
            f"and {len(rest)} more line(s): {sum(r[1] for r in rest)} more placement(s), "
            f"{sum(r[2] for r in rest)} more removal(s) (the events list each)"]
    return [line for line, _, _ in lines]
