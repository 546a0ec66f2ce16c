"""The node planner, driven directly: examples for each rule, then generated nodes.

The rules are those of `dinp.node_plan`'s module docstring and the design's "Agent ↔
server" section. The helpers here build views and apply a plan's actions the way the agent
would (a Stop removes its container, a Start adds a running one, the bookkeeping is kept);
they never decide anything the planner decides.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dinp.container import Container
from dinp.health import Health
from dinp.node_plan import (
    DRAIN_SECONDS,
    DUPLICATE,
    FRESH_SECONDS,
    NOT_PUBLISHED,
    NOT_RUNNING,
    STUCK,
    UNASSIGNED,
    Action,
    ForgetFailure,
    KickLater,
    MarkUnassigned,
    NodeView,
    Reassigned,
    Start,
    Stop,
    Stuck,
    live,
    plan,
)
from dinp.wire import Assignment

NOW = 1_000.0
TIMEOUT = 60.0  # start_timeout


# --- building inputs -------------------------------------------------------------------


def assigned(instance: str, app: str = "web") -> Assignment:
    return Assignment(id=instance, app=app, release=1, image=f"reg/{app}:1", memory_mb=64,
                      port=8080, env={}, health_path=None)


_ports = itertools.count(32768)


def container(instance: str, cid: str | None = None, *, state: str = "running",
              port: int | None = -1, legacy: bool = False, app: str = "web") -> Container:
    """A container of `instance`; published on a new port unless `port` is given."""
    return Container(
        id=cid or f"c-{instance}-{next(_ports)}", name=f"dinp-{app}-{instance}", app=app,
        instance=instance, release=1, state=state,
        host_port=next(_ports) if port == -1 else port, legacy=legacy,
    )


def view(assignment: Iterable[Assignment] | None, *containers: Container,
         **fields: Any) -> NodeView:
    """A node that heard its assignment from a reachable server just now (fresh)."""
    base = NodeView(assignment=None if assignment is None else tuple(assignment),
                    containers=containers, received_at=NOW, server_ok=True)
    return replace(base, **fields)


def run(v: NodeView, *, now: float = NOW) -> list[Action]:
    return plan(v, now=now, start_timeout=TIMEOUT)


def starts(actions: Iterable[Action]) -> list[str]:
    return [a.assignment.id for a in actions if isinstance(a, Start)]


def stops(actions: Iterable[Action]) -> list[Stop]:
    return [a for a in actions if isinstance(a, Stop)]


def stopped(actions: Iterable[Action]) -> set[str]:
    return {s.container.id for s in stops(actions)}


_new_ids = itertools.count()


def apply(v: NodeView, actions: Sequence[Action], *, now: float = NOW) -> NodeView:
    """What the agent does with a plan, once its work has finished: no container per Stop
    (and no unassigned mark for its instance), a new running one per Start (starting),
    a failure recorded per Stuck (two seconds of backoff, its health forgotten)."""
    containers = {c.id: c for c in v.containers}
    health, backoff = dict(v.health), dict(v.backoff)
    unassigned = dict(v.unassigned_since)
    for action in actions:
        if isinstance(action, Stop):
            assert action.container.id in containers, f"{action} stops a stranger"
            del containers[action.container.id]
            unassigned.pop(action.container.instance, None)
        elif isinstance(action, Start):
            new = container(action.assignment.id, f"new{next(_new_ids)}",
                            app=action.assignment.app)
            containers[new.id] = new
            health[new.instance] = Health("starting", now)
        elif isinstance(action, Stuck):
            backoff[action.instance] = now + 2.0
            health.pop(action.instance, None)
        elif isinstance(action, ForgetFailure):
            backoff.pop(action.instance, None)
        elif isinstance(action, MarkUnassigned):
            unassigned[action.instance] = action.since
        elif isinstance(action, Reassigned):
            unassigned.pop(action.instance, None)
    return replace(v, containers=tuple(containers.values()), health=health, backoff=backoff,
                   unassigned_since=unassigned, busy=frozenset())


# --- examples: starting and replacing --------------------------------------------------


def test_nothing_at_all_without_an_assignment() -> None:
    dead, unassigned = container("i1", state="exited"), container("i2")
    v = view(None, dead, unassigned, backoff={"i3": 0.0}, unassigned_since={"i2": 0.0})

    assert run(v) == []


def test_assigned_instances_without_a_container_are_started_in_order() -> None:
    a1, a2 = assigned("i1"), assigned("i2", app="api")

    assert run(view([a1, a2])) == [Start(a1), Start(a2)]


def test_nothing_to_do_when_each_assigned_instance_has_one_live_container() -> None:
    v = view([assigned("i1"), assigned("i2")], container("i1"), container("i2"),
             health={"i1": Health("healthy", 0.0), "i2": Health("starting", NOW)})

    assert run(v) == []


def test_a_dead_container_is_stopped_and_its_instance_started_again() -> None:
    a = assigned("i1")
    dead = container("i1", state="exited")

    assert run(view([a], dead)) == [Stop(dead, NOT_RUNNING), Start(a)]


def test_a_container_not_published_on_the_nodes_address_is_replaced() -> None:
    a = assigned("i1")
    unpublished = container("i1", port=None)  # the node's advertise address changed

    assert run(view([a], unpublished)) == [Stop(unpublished, NOT_PUBLISHED), Start(a)]


def test_of_two_live_containers_of_one_instance_the_first_is_kept() -> None:
    a = assigned("i1")
    first, second, dead = container("i1"), container("i1"), container("i1", state="created")

    assert run(view([a], first, dead, second)) == [
        Stop(dead, NOT_RUNNING), Stop(second, DUPLICATE),
    ]


@pytest.mark.parametrize("status", ["starting", "unhealthy"])
def test_an_instance_starting_or_unhealthy_too_long_is_stuck_and_not_started_at_once(
    status: str,
) -> None:
    a = assigned("i1")
    c, dead = container("i1"), container("i1", state="exited")
    v = view([a], c, dead, health={"i1": Health(status, NOW - TIMEOUT - 1)})

    actions = run(v)

    [stuck] = [x for x in actions if isinstance(x, Stuck)]
    assert (stuck.instance, stuck.app) == ("i1", "web")
    assert stuck.reason == Health(status, 0.0).stuck(TIMEOUT + 1, TIMEOUT)
    assert stops(actions) == [Stop(c, STUCK), Stop(dead, NOT_RUNNING)]
    assert starts(actions) == []  # its recorded failure holds the start back


def test_not_stuck_while_healthy_or_within_the_start_timeout() -> None:
    v = view([assigned("i1"), assigned("i2")], container("i1"), container("i2"),
             health={"i1": Health("healthy", 0.0), "i2": Health("starting", NOW - TIMEOUT + 1)})

    assert run(v) == []


def test_a_dead_container_is_never_stuck_it_is_replaced() -> None:
    a = assigned("i1")
    dead = container("i1", state="exited")
    v = view([a], dead, health={"i1": Health("unhealthy", 0.0)})

    assert run(v) == [Stop(dead, NOT_RUNNING), Start(a)]


def test_an_instance_in_backoff_waits_for_its_time() -> None:
    a = assigned("i1")

    assert run(view([a], backoff={"i1": NOW + 0.5})) == []
    assert run(view([a], backoff={"i1": NOW})) == [Start(a)]


def test_work_under_way_is_left_alone() -> None:
    a1, a2, a3 = assigned("i1"), assigned("i2"), assigned("i3")
    stopping = container("i2", "stopping", state="exited")
    being_started = container("i3", state="created")  # its start is under way
    v = view([a1, a2, a3], stopping, being_started,
             busy=frozenset({"i1", "stopping", "i3"}))

    # i1 is being started, i2's old container is being stopped (its replacement comes
    # after), and i3's new container is not stopped while its start runs.
    assert run(v) == []


def test_a_stuck_instance_is_recorded_even_while_its_container_is_being_stopped() -> None:
    c = container("i1", "c1")
    v = view([assigned("i1")], c, health={"i1": Health("starting", 0.0)},
             busy=frozenset({"c1"}))

    assert [type(x) for x in run(v)] == [Stuck]


# --- examples: unassigned containers ---------------------------------------------------


def test_an_unassigned_running_container_drains_then_is_stopped() -> None:
    c = container("old")
    first = run(view([], c))
    assert first == [MarkUnassigned("old", NOW), KickLater(DRAIN_SECONDS)]

    half = NOW + DRAIN_SECONDS / 2
    v = view([], c, unassigned_since={"old": NOW}, received_at=half)
    assert run(v, now=half) == [KickLater(DRAIN_SECONDS / 2)]

    later = NOW + DRAIN_SECONDS
    assert run(replace(v, received_at=later), now=later) == [Stop(c, UNASSIGNED)]


def test_an_unassigned_dead_container_is_removed_at_once() -> None:
    dead = container("old", state="exited")

    assert run(view([], dead)) == [MarkUnassigned("old", NOW), Stop(dead, UNASSIGNED)]


@pytest.mark.parametrize("fields", [
    {"server_ok": False},
    {"received_at": NOW - FRESH_SECONDS},
], ids=["server-unreachable", "assignment-too-old"])
def test_without_a_fresh_assignment_only_assigned_instances_are_repaired(
    fields: dict[str, Any],
) -> None:
    a = assigned("i1")
    dead, unassigned_dead = container("i1", state="exited"), container("old", state="exited")
    v = view([a], dead, unassigned_dead, container("old2"),
             unassigned_since={"old2": 0.0}, backoff={"gone": 0.0}, **fields)

    assert run(v) == [Stop(dead, NOT_RUNNING), Start(a)]


def test_a_fresh_assignment_is_younger_than_fresh_seconds() -> None:
    dead = container("old", state="exited")
    v = view([], dead, received_at=NOW - FRESH_SECONDS + 0.5, unassigned_since={"old": 0.0})

    assert run(v) == [Stop(dead, UNASSIGNED)]


def test_foreign_instances_are_never_stopped() -> None:
    v = view([], container("f1"), container("f1", state="exited"),
             foreign=frozenset({"f1"}), unassigned_since={"f1": 0.0})

    assert run(v) == []


def test_unlabelled_legacy_containers_are_stopped_only_once_adopted() -> None:
    legacy = container("old", legacy=True, state="exited")
    v = view([], legacy, container("old"), unassigned_since={"old": 0.0})

    assert run(v) == []  # maybe another cluster's
    assert stopped(run(replace(v, adopted=frozenset({"old"})))) == {
        c.id for c in v.containers}


def test_an_assigned_legacy_container_is_kept() -> None:
    v = view([assigned("old")], container("old", legacy=True), adopted=frozenset({"old"}))

    assert run(v) == []


def test_failures_of_instances_no_longer_assigned_are_forgotten_on_a_fresh_assignment() -> None:
    a = assigned("i1")
    c = container("i1")
    v = view([a], c, backoff={"i1": NOW + 5, "gone2": NOW + 5, "gone1": 0.0})

    assert run(v) == [ForgetFailure("gone1"), ForgetFailure("gone2")]
    assert run(replace(v, server_ok=False)) == []


def test_an_instance_assigned_again_is_no_longer_marked_unassigned() -> None:
    v = view([assigned("i1")], container("i1"), unassigned_since={"i1": NOW - 0.5})

    assert run(v) == [Reassigned("i1")]


# --- generated nodes -------------------------------------------------------------------

INSTANCES = ("i0", "i1", "i2", "i3", "i4", "i5")
STATES = ("running", "running", "running", "exited", "created", "dead")


@st.composite
def views(draw: st.DrawFn, *, with_assignment: bool = True) -> NodeView:
    """Random assignments and containers (dead, unpublished, duplicated, unlabelled, of an
    unlabelled `""` instance), with random health, backoff, drains, freshness, foreign and
    adopted instances and work under way."""
    subset = st.sets(st.sampled_from(INSTANCES))
    ids = draw(st.lists(st.sampled_from(INSTANCES), unique=True, max_size=5))
    assignment = tuple(assigned(i, app=f"a{int(i[1:]) % 2}") for i in ids)
    containers = tuple(
        Container(
            id=f"c{k}", name=f"dinp-c{k}", app="web", release=1,
            instance=draw(st.sampled_from((*INSTANCES, ""))),
            state=draw(st.sampled_from(STATES)),
            host_port=draw(st.sampled_from((None, 32768 + k, 32768 + k))),
            legacy=draw(st.sampled_from((False, False, False, True))),
        )
        for k in range(draw(st.integers(0, 9)))
    )
    ages = st.sampled_from((0.0, 1.0, TIMEOUT - 1, TIMEOUT, TIMEOUT + 1, 10 * TIMEOUT))
    health = {i: Health(draw(st.sampled_from(("starting", "healthy", "unhealthy"))),
                        NOW - draw(ages)) for i in draw(subset)}
    backoff = {i: NOW + draw(st.sampled_from((-5.0, 0.0, 0.5, 10.0))) for i in draw(subset)}
    since = {i: NOW - draw(st.sampled_from((0.0, 0.5, DRAIN_SECONDS, 5.0)))
             for i in draw(subset)}
    busy = draw(st.sets(st.sampled_from((*INSTANCES, *(c.id for c in containers)))))
    return NodeView(
        assignment=assignment if with_assignment or draw(st.booleans()) else None,
        containers=containers,
        received_at=NOW - draw(st.sampled_from((0.0, 1.0, FRESH_SECONDS - 1, FRESH_SECONDS,
                                                100.0))),
        server_ok=draw(st.booleans()), health=health, backoff=backoff,
        unassigned_since=since, foreign=frozenset(draw(subset)),
        adopted=frozenset(draw(subset)), busy=frozenset(busy),
    )


def wanted(v: NodeView) -> set[str]:
    return {a.id for a in v.assignment or ()}


def fresh(v: NodeView) -> bool:
    return v.server_ok and NOW - v.received_at < FRESH_SECONDS


def of(v: NodeView, instance: str) -> list[Container]:
    return [c for c in v.containers if c.instance == instance]


def busy(v: NodeView, instance: str) -> bool:
    return instance in v.busy or any(c.id in v.busy for c in of(v, instance))


def stuck_instances(actions: Iterable[Action]) -> set[str]:
    return {a.instance for a in actions if isinstance(a, Stuck)}


PROPERTY = settings(max_examples=300, deadline=None)


@PROPERTY
@given(views(with_assignment=False))
def test_plan_without_an_assignment_is_empty(v: NodeView) -> None:
    assert run(replace(v, assignment=None)) == []


@PROPERTY
@given(views())
def test_plan_stops_each_container_at_most_once_and_only_the_nodes(v: NodeView) -> None:
    ids = [s.container.id for s in stops(run(v))]

    assert len(ids) == len(set(ids))
    assert set(ids) <= {c.id for c in v.containers}


@PROPERTY
@given(views())
def test_plan_never_stops_a_live_assigned_container_unless_duplicate_or_stuck(
    v: NodeView,
) -> None:
    actions = run(v)
    gone = stopped(actions)
    stuck = stuck_instances(actions)

    for s in stops(actions):
        c = s.container
        if c.instance not in wanted(v) or not live(c):
            continue
        if c.instance in stuck:
            assert s.reason == STUCK
        else:  # another live container of the instance stays
            assert s.reason == DUPLICATE
            assert any(live(k) and k.id not in gone for k in of(v, c.instance))


@PROPERTY
@given(views())
def test_plan_stops_unassigned_containers_only_on_a_fresh_assignment(v: NodeView) -> None:
    actions = run(v)

    if not fresh(v):
        assert all(s.container.instance in wanted(v) for s in stops(actions))
        assert not [a for a in actions
                    if isinstance(a, ForgetFailure | MarkUnassigned | KickLater)]


@PROPERTY
@given(views())
def test_plan_never_touches_foreign_or_unadopted_legacy_containers(v: NodeView) -> None:
    actions = run(v)

    for s in stops(actions):
        instance = s.container.instance
        if instance in wanted(v):
            continue
        assert instance not in v.foreign
        assert instance in v.adopted or not any(c.legacy for c in of(v, instance))


@PROPERTY
@given(views())
def test_plan_drains_running_unassigned_containers_before_stopping_them(
    v: NodeView,
) -> None:
    actions = run(v)

    for s in stops(actions):
        instance = s.container.instance
        if instance not in wanted(v) and any(c.running for c in of(v, instance)):
            assert NOW - v.unassigned_since[instance] >= DRAIN_SECONDS
    for kick in (a for a in actions if isinstance(a, KickLater)):
        assert 0 < kick.delay <= DRAIN_SECONDS


@PROPERTY
@given(views())
def test_plan_starts_only_what_may_start_and_each_instance_once(v: NodeView) -> None:
    started = starts(run(v))

    assert len(started) == len(set(started))
    for instance in started:
        assert instance in wanted(v)
        assert not any(live(c) for c in of(v, instance))
        assert not busy(v, instance)
        assert v.backoff.get(instance, NOW) <= NOW


@PROPERTY
@given(views())
def test_plan_starts_every_assigned_instance_that_may_start(v: NodeView) -> None:
    started = set(starts(run(v)))

    for instance in wanted(v):
        if (not any(live(c) for c in of(v, instance)) and not busy(v, instance)
                and v.backoff.get(instance, NOW) <= NOW):
            assert instance in started


@PROPERTY
@given(views())
def test_plan_never_touches_work_under_way(v: NodeView) -> None:
    actions = run(v)

    for s in stops(actions):
        assert s.container.id not in v.busy and s.container.instance not in v.busy
    assert not [i for i in starts(actions) if busy(v, i)]


@PROPERTY
@given(views())
def test_plan_leaves_at_most_one_container_per_assigned_instance(v: NodeView) -> None:
    actions = run(v)
    gone = stopped(actions)
    stuck = stuck_instances(actions)

    for instance in wanted(v):
        if busy(v, instance):
            continue
        left = [c for c in of(v, instance) if c.id not in gone]
        assert len(left) <= 1, (instance, left)
        assert all(live(c) for c in left) and not (left and instance in stuck)


@PROPERTY
@given(views())
def test_plan_reports_stuck_only_live_instances_past_the_start_timeout(v: NodeView) -> None:
    for instance in stuck_instances(run(v)):
        assert instance in wanted(v)
        assert any(live(c) for c in of(v, instance))
        health = v.health[instance]
        assert health.status != "healthy" and NOW - health.since >= TIMEOUT


@PROPERTY
@given(views(), st.randoms(use_true_random=False))
def test_plan_does_not_depend_on_the_order_of_containers(
    v: NodeView, rnd: random.Random,
) -> None:
    containers = list(v.containers)
    rnd.shuffle(containers)
    shuffled = replace(v, containers=tuple(containers))

    # Which of two live duplicates is kept may follow the order (and so whether the one
    # to stop is being stopped already); what is done may not.
    def summary(actions: list[Action]) -> Counter[tuple[str, str]]:
        return Counter(
            (type(a).__name__, a.container.instance + a.reason) if isinstance(a, Stop)
            else (type(a).__name__, repr(a)) for a in actions
            if not (isinstance(a, Stop) and a.reason == DUPLICATE
                    and busy(v, a.container.instance)))

    assert summary(run(shuffled)) == summary(run(v))


def everything_healthy(v: NodeView, *, at: float) -> NodeView:
    """The work is done: every live container passes its checks, the server answered."""
    health = {c.instance: Health("healthy", at) for c in v.containers if live(c)}
    return replace(v, health=health, received_at=at, server_ok=True, busy=frozenset())


@PROPERTY
@given(views())
def test_plan_converges(v: NodeView) -> None:
    """Applied round after round (once backoffs and drains are over, every container
    healthy), the plan runs out of stops and starts, and then the node runs one live
    container per assigned instance, and of the others only foreign or unadopted ones."""
    v = replace(v, assignment=v.assignment or ())
    now = NOW
    for _ in range(3):
        v = apply(v, run(v, now=now), now=now)
        now += 60.0
        v = everything_healthy(v, at=now)

    actions = run(v, now=now)
    assert stops(actions) == [] and starts(actions) == []
    for instance in wanted(v):
        assert len(of(v, instance)) == 1 and live(of(v, instance)[0])
    for c in v.containers:
        if c.instance not in wanted(v):
            assert c.instance in v.foreign or (c.instance not in v.adopted and any(
                k.legacy for k in of(v, c.instance)))
