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

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

READY = "ready"
DOWN = "down"
DRAINING = "draining"


@dataclass(frozen=True)
class AppSpec:
    name: str
    instances: int
    memory_mb: int
    release: int
    # During a rollout, at most this many instances of the new release start at once
    # (not yet healthy); 0: no limit.
    surge: int = 0


@dataclass(frozen=True)
class Placed:
    """An instance row: the scheduler's decision that `node` runs `app` at `release`."""

    id: str
    app: str
    release: int
    node: str
    memory_mb: int
    created: float = 0.0


@dataclass(frozen=True)
class NodeSpec:
    name: str
    status: str
    capacity_mb: int


@dataclass(frozen=True)
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

    def container(self, inst: Placed) -> ContainerReport | None:
        report = self.reports.get(inst.node)
        if report is None:
            return None
        return next((c for c in report.containers if c.instance == inst.id), None)

    def healthy(self, inst: Placed) -> bool:
        c = self.container(inst)
        return c is not None and c.running and c.healthy


@dataclass(frozen=True)
class Place:
    app: str
    release: int
    node: str
    memory_mb: int


@dataclass(frozen=True)
class Remove:
    instance: str
    app: str
    node: str
    reason: str


@dataclass(frozen=True)
class SetNodeStatus:
    node: str
    status: str


@dataclass(frozen=True)
class Unplaceable:
    """Not an action on state: a report that `missing` instances found no node."""

    app: str
    missing: int
    memory_mb: int


Action = Place | Remove | SetNodeStatus | Unplaceable


@dataclass
class _Ledger:
    """Memory reserved and instance counts per node while one plan is being made."""

    nodes: dict[str, NodeSpec]
    reserved: Counter[str] = field(default_factory=Counter)
    per_app: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, node: str, app: str, memory_mb: int) -> None:
        self.reserved[node] += memory_mb
        self.per_app[(app, node)] += 1

    def drop(self, node: str, app: str, memory_mb: int) -> None:
        self.reserved[node] -= memory_mb
        self.per_app[(app, node)] -= 1

    def choose(self, app: str, memory_mb: int) -> str | None:
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
                self.per_app[(app, n.name)],
                -(n.capacity_mb - self.reserved[n.name]),
                n.name,
            ),
        )
        return best.name


def node_statuses(desired: Desired, real: Real, *, now: float, node_timeout: float) -> dict[
    str, str
]:
    """Each node's status after this round: down when silent too long, ready when back."""
    out: dict[str, str] = {}
    for node in desired.nodes.values():
        report = real.reports.get(node.name)
        alive = report is not None and now - report.received_at <= node_timeout
        status = node.status
        if status == READY and not alive and real.complete:
            status = DOWN
        elif status == DOWN and alive:
            status = READY
        out[node.name] = status
    return out


def plan(desired: Desired, real: Real, *, now: float, node_timeout: float) -> list[Action]:
    """The actions that bring `real` to `desired`; empty when they already agree."""
    actions: list[Action] = []
    statuses = node_statuses(desired, real, now=now, node_timeout=node_timeout)
    for name, status in sorted(statuses.items()):
        if status != desired.nodes[name].status:
            actions.append(SetNodeStatus(name, status))
    if not real.complete:
        return actions

    nodes = {
        name: NodeSpec(name, statuses[name], desired.nodes[name].capacity_mb) for name in statuses
    }
    ledger = _Ledger(nodes)
    by_app: dict[str, list[Placed]] = {}
    for inst in desired.instances:
        ledger.add(inst.node, inst.app, inst.memory_mb)
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
    leaving = [i for i in instances if i not in current]

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
