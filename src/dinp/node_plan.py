"""The node planner: `plan(view, now=…, start_timeout=…) -> actions`, a pure function with
no I/O.

It compares the instances the server assigned to one node with the containers the node
has, and returns what its agent must do: containers to stop, instances to start, and the
bookkeeping that goes with them (a failure to record, an instance to mark unassigned, a
wake-up to ask for). The agent (`roles/agent.py`) gathers the view (its containers from
Docker, their health, its retries and timers) and carries the actions out; tests drive
`plan` directly with thousands of generated cases.

Rules it keeps:
- Nothing at all without an assignment: an agent that has not heard from the server (or
  that the server refuses) neither starts nor stops anything.
- It starts only assigned instances, each at most once, and only one that has no live
  container (running and published on the node's address), is not in backoff after a
  failure, and is not busy.
- At most one container per instance: an assigned instance's dead containers, and those
  not published on the node's address (it changed), are stopped and replaced; of several
  live ones the first is kept and the others are stopped.
- An assigned instance whose live container has been `starting` or `unhealthy` for longer
  than `start_timeout` is stuck: its failure is recorded (which puts it in backoff, so it is
  not started again in the same round) and its containers are stopped.
- Containers of unassigned instances are stopped only on a fresh assignment (the server is
  reachable and answered less than `FRESH_SECONDS` ago); never those of a foreign instance
  (one the server's database never knew: it may be empty or the wrong one), nor unlabelled
  containers made before cluster ids whose instance was never assigned here (adopted): they
  may be another cluster's. A running one is marked unassigned and keeps running for
  `DRAIN_SECONDS` (the server has unrouted it; requests in flight finish), and the plan asks
  to be made again when that ends; a dead one goes at once.
- Never what work still under way handles (busy): no stop of a container being stopped or
  of an instance being started, no start of an instance being started or one of whose
  containers is being stopped.
- On a fresh assignment the failures of instances no longer assigned are forgotten (they
  are not worth reporting); an instance assigned again is no longer marked unassigned.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from dinp.container import Container
from dinp.health import Health
from dinp.wire import Assignment

# A removal needs an assignment at most this old: older ones are not "fresh information".
FRESH_SECONDS = 15.0
# Unrouted instances keep running this long so requests in flight can finish.
DRAIN_SECONDS = 1.0

# Why a container is stopped (Stop.reason).
NOT_RUNNING = "not running"
NOT_PUBLISHED = "not published on the node's address"
DUPLICATE = "another container runs its instance"
STUCK = "stuck"
UNASSIGNED = "unassigned"


@dataclass(frozen=True)
class NodeView:
    """What the agent knows when it plans."""

    # The server's last assignment; None: never heard from it (or refused by it).
    assignment: tuple[Assignment, ...] | None
    containers: tuple[Container, ...] = ()
    # When the assignment arrived (monotonic seconds), and whether the server answers now.
    received_at: float = 0.0
    server_ok: bool = False
    health: Mapping[str, Health] = field(default_factory=dict)
    # Instances with a recorded failure: when each may be started again.
    backoff: Mapping[str, float] = field(default_factory=dict)
    # Instances found unassigned, and since when (they drain until DRAIN_SECONDS later).
    unassigned_since: Mapping[str, float] = field(default_factory=dict)
    foreign: frozenset[str] = frozenset()
    # Instances of unlabelled (legacy) containers that were assigned here: ours.
    adopted: frozenset[str] = frozenset()
    # Ids of containers being stopped and of instances being started right now.
    busy: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Start:
    assignment: Assignment


@dataclass(frozen=True)
class Stop:
    container: Container
    reason: str


@dataclass(frozen=True)
class Stuck:
    """Record a failure of `instance` (it starts again only after a backoff)."""

    instance: str
    app: str
    reason: str


@dataclass(frozen=True)
class ForgetFailure:
    """Drop the recorded failures of an instance no longer assigned here."""

    instance: str


@dataclass(frozen=True)
class MarkUnassigned:
    """Remember that `instance` is unassigned since `since`: its drain starts then."""

    instance: str
    since: float


@dataclass(frozen=True)
class Reassigned:
    """`instance`, once marked unassigned, is assigned again: forget that mark."""

    instance: str


@dataclass(frozen=True)
class KickLater:
    """Plan again in `delay` seconds (a drain ends then)."""

    delay: float


Action = Start | Stop | Stuck | ForgetFailure | MarkUnassigned | Reassigned | KickLater


def is_fresh(view: NodeView, now: float) -> bool:
    """Whether the assignment is recent enough to remove containers on."""
    return view.server_ok and now - view.received_at < FRESH_SECONDS


def live(c: Container) -> bool:
    """Running and published on the node's address: it can serve."""
    return c.running and bool(c.host_port)


def plan(view: NodeView, *, now: float, start_timeout: float) -> list[Action]:
    """What the node must do now to run its assignment; empty when it does."""
    if view.assignment is None:
        return []
    fresh = is_fresh(view, now)
    wanted = {a.id for a in view.assignment}
    by_instance: dict[str, list[Container]] = {}
    for c in view.containers:
        by_instance.setdefault(c.instance, []).append(c)

    actions: list[Action] = []
    if fresh:
        actions.extend(ForgetFailure(i) for i in sorted(set(view.backoff) - wanted))
    for a in view.assignment:
        actions.extend(_assigned(a, by_instance.get(a.id, []), view, now, start_timeout))
    for instance, containers in by_instance.items():
        if instance not in wanted:
            actions.extend(_unassigned(instance, containers, view, now, fresh))
        elif instance in view.unassigned_since:
            actions.append(Reassigned(instance))
    # Not what is being stopped already, nor the container of an instance being started
    # (it is `created` for a moment, not yet running).
    return [a for a in actions if not (isinstance(a, Stop) and (
        a.container.id in view.busy or a.container.instance in view.busy))]


def _assigned(a: Assignment, existing: Sequence[Container], view: NodeView, now: float,
              start_timeout: float) -> Iterator[Action]:
    alive = [c for c in existing if live(c)]
    health = view.health.get(a.id)
    stuck = health.stuck(now, start_timeout) if alive and health else None
    if stuck:
        yield Stuck(a.id, a.app, stuck)
        yield from (Stop(c, STUCK if live(c) else _why_dead(c)) for c in existing)
    else:
        yield from (Stop(c, _why_dead(c)) for c in existing if c not in alive)
        yield from (Stop(c, DUPLICATE) for c in alive[1:])
    busy = a.id in view.busy or any(c.id in view.busy for c in existing)
    # A stuck instance had a live container: its recorded failure holds its start back.
    if not alive and not busy and now >= view.backoff.get(a.id, now):
        yield Start(a)


def _why_dead(c: Container) -> str:
    return NOT_RUNNING if not c.running else NOT_PUBLISHED


def _unassigned(instance: str, containers: Sequence[Container], view: NodeView, now: float,
                fresh: bool) -> Iterator[Action]:
    if not fresh or instance in view.foreign:
        return
    if any(c.legacy for c in containers) and instance not in view.adopted:
        return  # unlabelled and never assigned here: maybe another cluster's
    since = view.unassigned_since.get(instance)
    if since is None:
        since = now
        yield MarkUnassigned(instance, now)
    if not any(c.running for c in containers) or now - since >= DRAIN_SECONDS:
        yield from (Stop(c, UNASSIGNED) for c in containers)
    else:
        yield KickLater(DRAIN_SECONDS - (now - since))
