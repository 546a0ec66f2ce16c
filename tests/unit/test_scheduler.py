"""The reconcile planner, driven directly: examples for each rule, then generated worlds.

The rules are those of `dinp.scheduler`'s module docstring and the design's "Placement" and
"Safety rules". The helpers here build inputs and apply a plan's actions the way the
executor would (add a row per Place, delete the row of each Remove, set node statuses);
they never decide anything the planner decides.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dinp.scheduler import (
    DOWN,
    DRAINING,
    READY,
    SUMMARY_LINES,
    Action,
    AppSpec,
    ContainerReport,
    Desired,
    NodeReport,
    NodeSpec,
    Place,
    Placed,
    Real,
    Remove,
    SetNodeStatus,
    Unplaceable,
    plan,
    summary,
)

NOW = 1_000.0
TIMEOUT = 10.0


# --- building inputs -------------------------------------------------------------------


def nodes(*specs: NodeSpec) -> dict[str, NodeSpec]:
    return {n.name: n for n in specs}


def apps(*specs: AppSpec) -> dict[str, AppSpec]:
    return {a.name: a for a in specs}


def container(inst: Placed, *, running: bool = True, healthy: bool = True) -> ContainerReport:
    return ContainerReport(
        instance=inst.id, app=inst.app, release=inst.release, running=running,
        healthy=healthy, address=f"10.0.0.1:{30000 + abs(hash(inst.id)) % 1000}",
    )


def report(
    node: NodeSpec, *containers: ContainerReport, at: float = NOW
) -> tuple[str, NodeReport]:
    return node.name, NodeReport(node.name, at, node.capacity_mb, tuple(containers))


def fresh_real(
    node_specs: Iterable[NodeSpec],
    instances: Iterable[Placed] = (),
    *,
    unhealthy: Iterable[str] = (),
    silent: Iterable[str] = (),
    complete: bool = True,
) -> Real:
    """Every node not in `silent` reported just now, with a container per instance row on
    it; containers whose id is in `unhealthy` run but fail their health check."""
    bad, quiet = set(unhealthy), set(silent)
    rows = list(instances)
    reports = dict(
        report(n, *(container(i, healthy=i.id not in bad) for i in rows if i.node == n.name))
        for n in node_specs
        if n.name not in quiet
    )
    return Real(reports, complete)


def run(desired: Desired, real: Real, *, now: float = NOW) -> list[Action]:
    return plan(desired, real, now=now, node_timeout=TIMEOUT)


def places(actions: Iterable[Action]) -> list[Place]:
    return [a for a in actions if isinstance(a, Place)]


def removes(actions: Iterable[Action]) -> list[Remove]:
    return [a for a in actions if isinstance(a, Remove)]


def statuses(actions: Iterable[Action]) -> list[SetNodeStatus]:
    return [a for a in actions if isinstance(a, SetNodeStatus)]


_fresh_ids = itertools.count()


def apply(desired: Desired, actions: Sequence[Action], *, now: float = NOW) -> Desired:
    """What the executor does with a plan: a row per Place (fresh id), no row per Remove,
    node statuses set. Removing an id that is not a row fails the test."""
    rows = {i.id: i for i in desired.instances}
    node_map = dict(desired.nodes)
    for action in actions:
        if isinstance(action, Place):
            new_id = f"new{next(_fresh_ids)}"
            rows[new_id] = Placed(
                new_id, action.app, action.release, action.node, action.memory_mb, now
            )
        elif isinstance(action, Remove):
            assert action.instance in rows, f"{action} removes an instance with no row"
            del rows[action.instance]
        elif isinstance(action, SetNodeStatus):
            node_map[action.node] = replace(node_map[action.node], status=action.status)
    return Desired(desired.apps, tuple(rows.values()), node_map)


def everything_healthy(desired: Desired, *, now: float = NOW) -> Real:
    """Every node that is not down reports now, every row on it running and healthy;
    down nodes stay silent."""
    up = [n for n in desired.nodes.values() if n.status != DOWN]
    return fresh_real(up, desired.instances)


# --- examples: placement ---------------------------------------------------------------


def test_three_instances_spread_over_three_equal_nodes() -> None:
    ns = nodes(NodeSpec("a", READY, 1024), NodeSpec("b", READY, 1024), NodeSpec("c", READY, 1024))
    desired = Desired(apps(AppSpec("web", 3, 256, 1)), (), ns)

    actions = run(desired, fresh_real(ns.values()))

    assert actions == [
        Place("web", 1, "a", 256), Place("web", 1, "b", 256), Place("web", 1, "c", 256),
    ]


def test_node_without_room_is_skipped_even_when_spread_prefers_it() -> None:
    ns = nodes(NodeSpec("small", READY, 200), NodeSpec("big", READY, 1024))
    desired = Desired(apps(AppSpec("web", 2, 256, 1)), (), ns)

    actions = run(desired, fresh_real(ns.values()))

    assert actions == [Place("web", 1, "big", 256), Place("web", 1, "big", 256)]


def test_memory_reserved_by_other_apps_counts_against_a_node() -> None:
    ns = nodes(NodeSpec("a", READY, 1024), NodeSpec("b", READY, 1024))
    other = Placed("o1", "other", 1, "a", 900)
    desired = Desired(apps(AppSpec("other", 1, 900, 1), AppSpec("web", 2, 256, 1)), (other,), ns)

    actions = run(desired, fresh_real(ns.values(), [other]))

    # a has 124 MB left: both instances go to b rather than spreading.
    assert actions == [Place("web", 1, "b", 256), Place("web", 1, "b", 256)]


def test_reservation_exactly_filling_a_node_fits() -> None:
    ns = nodes(NodeSpec("a", READY, 512))
    desired = Desired(apps(AppSpec("web", 2, 256, 1)), (), ns)

    assert run(desired, fresh_real(ns.values())) == [
        Place("web", 1, "a", 256), Place("web", 1, "a", 256),
    ]


def test_tie_break_prefers_most_unreserved_memory_then_name() -> None:
    ns = nodes(NodeSpec("a", READY, 1024), NodeSpec("c", READY, 2048), NodeSpec("b", READY, 2048))
    desired = Desired(apps(AppSpec("web", 1, 256, 1)), (), ns)

    # b and c have the same room, more than a: the name decides between them.
    assert run(desired, fresh_real(ns.values())) == [Place("web", 1, "b", 256)]


def test_tie_break_by_unreserved_memory_counts_other_apps() -> None:
    ns = nodes(NodeSpec("a", READY, 2048), NodeSpec("b", READY, 2048))
    other = Placed("o1", "other", 1, "a", 512)
    desired = Desired(apps(AppSpec("other", 1, 512, 1), AppSpec("web", 1, 256, 1)), (other,), ns)

    assert run(desired, fresh_real(ns.values(), [other])) == [Place("web", 1, "b", 256)]


def test_spread_comes_before_memory() -> None:
    ns = nodes(NodeSpec("big", READY, 8192), NodeSpec("small", READY, 1024))
    first = Placed("w1", "web", 1, "big", 256)
    desired = Desired(apps(AppSpec("web", 2, 256, 1)), (first,), ns)

    assert run(desired, fresh_real(ns.values(), [first])) == [Place("web", 1, "small", 256)]


def test_no_placement_on_down_or_draining_nodes() -> None:
    ns = nodes(
        NodeSpec("down", DOWN, 8192), NodeSpec("drain", DRAINING, 8192), NodeSpec("ok", READY, 512),
    )
    desired = Desired(apps(AppSpec("web", 2, 256, 1)), (), ns)

    actions = run(desired, fresh_real([ns["drain"], ns["ok"]]))

    assert actions == [Place("web", 1, "ok", 256), Place("web", 1, "ok", 256)]


def test_unplaceable_reports_what_did_not_fit() -> None:
    ns = nodes(NodeSpec("a", READY, 300))
    desired = Desired(apps(AppSpec("web", 3, 256, 1)), (), ns)

    assert run(desired, fresh_real(ns.values())) == [
        Place("web", 1, "a", 256), Unplaceable("web", 2, 256),
    ]


def test_unplaceable_without_any_node() -> None:
    desired = Desired(apps(AppSpec("web", 3, 256, 7)), (), {})

    assert run(desired, Real({}, complete=True)) == [Unplaceable("web", 3, 256)]


# --- examples: scaling and deletion ----------------------------------------------------


def test_scale_up_adds_only_the_missing_instances() -> None:
    ns = nodes(NodeSpec("a", READY, 1024), NodeSpec("b", READY, 1024), NodeSpec("c", READY, 1024))
    w1 = Placed("w1", "web", 1, "a", 256)
    desired = Desired(apps(AppSpec("web", 3, 256, 1)), (w1,), ns)

    actions = run(desired, fresh_real(ns.values(), [w1]))

    assert actions == [Place("web", 1, "b", 256), Place("web", 1, "c", 256)]


def test_scale_down_removes_unhealthy_first_then_from_the_most_crowded_node() -> None:
    ns = nodes(NodeSpec("a", READY, 4096), NodeSpec("b", READY, 4096), NodeSpec("c", READY, 4096))
    rows = (
        Placed("a1", "web", 1, "a", 256, created=1.0),
        Placed("a2", "web", 1, "a", 256, created=2.0),
        Placed("a3", "web", 1, "a", 256, created=3.0),
        Placed("b1", "web", 1, "b", 256, created=4.0),
        Placed("c1", "web", 1, "c", 256, created=5.0),
    )
    desired = Desired(apps(AppSpec("web", 3, 256, 1)), rows, ns)

    actions = run(desired, fresh_real(ns.values(), rows, unhealthy=["c1"]))

    assert [(r.instance, r.reason) for r in removes(actions)] == [
        ("c1", "scaled down"),  # the unhealthy one, though its node is the least crowded
        ("a3", "scaled down"),  # then the most crowded node, newest first
    ]
    assert places(actions) == []


def test_scale_down_keeps_what_stays_spread() -> None:
    """a:3, b:2 scaled to 2 must leave one on each node, not both on b."""
    ns = nodes(NodeSpec("a", READY, 4096), NodeSpec("b", READY, 4096))
    rows = (
        Placed("a0", "web", 1, "a", 256, created=1.0),
        Placed("a1", "web", 1, "a", 256, created=2.0),
        Placed("a2", "web", 1, "a", 256, created=3.0),
        Placed("b0", "web", 1, "b", 256, created=4.0),
        Placed("b1", "web", 1, "b", 256, created=5.0),
    )
    desired = Desired(apps(AppSpec("web", 2, 256, 1)), rows, ns)

    actions = run(desired, fresh_real(ns.values(), rows))

    removed = {r.instance for r in removes(actions)}
    left = [r for r in rows if r.id not in removed]
    assert sorted(r.node for r in left) == ["a", "b"]
    assert removed == {"a2", "a1", "b1"}  # newest first on the node that is fullest then


def test_scale_to_zero_removes_every_instance() -> None:
    ns = nodes(NodeSpec("a", READY, 4096))
    rows = (Placed("w1", "web", 1, "a", 256), Placed("w2", "web", 1, "a", 256))
    desired = Desired(apps(AppSpec("web", 0, 256, 1)), rows, ns)

    actions = run(desired, fresh_real(ns.values(), rows))

    assert {r.instance for r in removes(actions)} == {"w1", "w2"}
    assert places(actions) == []


def test_deleted_apps_instances_are_removed_and_their_memory_reused() -> None:
    ns = nodes(NodeSpec("a", READY, 512))
    rows = (Placed("g1", "gone", 1, "a", 256), Placed("g2", "gone", 3, "a", 256))
    desired = Desired(apps(AppSpec("web", 1, 512, 1)), rows, ns)

    actions = run(desired, fresh_real(ns.values(), rows))

    assert actions == [
        Remove("g1", "gone", "a", "app deleted"),
        Remove("g2", "gone", "a", "app deleted"),
        Place("web", 1, "a", 512),
    ]


def test_nothing_to_do_when_desired_and_real_agree() -> None:
    ns = nodes(NodeSpec("a", READY, 1024), NodeSpec("b", READY, 1024))
    rows = (Placed("w1", "web", 2, "a", 256), Placed("w2", "web", 2, "b", 256))
    desired = Desired(apps(AppSpec("web", 2, 256, 2)), rows, ns)

    assert run(desired, fresh_real(ns.values(), rows)) == []


# --- examples: nodes that go silent, come back, or drain -------------------------------


def test_silent_node_is_marked_down_and_replaced_before_its_rows_go() -> None:
    ns = nodes(NodeSpec("a", READY, 1024), NodeSpec("b", READY, 1024), NodeSpec("c", READY, 1024))
    rows = (Placed("x1", "web", 1, "a", 256), Placed("y1", "web", 1, "b", 256))
    desired = Desired(apps(AppSpec("web", 2, 256, 1)), rows, ns)
    # a's last report (with x1 healthy) is older than the timeout.
    real = Real(
        dict([
            report(ns["a"], container(rows[0]), at=NOW - TIMEOUT - 1),
            report(ns["b"], container(rows[1])),
            report(ns["c"]),
        ]),
        complete=True,
    )

    first = run(desired, real)

    assert first == [SetNodeStatus("a", DOWN), Place("web", 1, "c", 256)]

    # The replacement has a row but is not healthy yet: x1's row stays.
    desired = apply(desired, first)
    replacement = next(i for i in desired.instances if i.node == "c")
    up = [desired.nodes["b"], desired.nodes["c"]]
    starting = fresh_real(up, desired.instances, unhealthy=[replacement.id])
    assert run(desired, starting) == []

    # Once it is healthy, x1's row goes.
    serving = fresh_real(up, desired.instances)
    assert run(desired, serving) == [Remove("x1", "web", "a", "node a is down")]


def test_silent_node_rows_stay_when_no_replacement_fits() -> None:
    ns = nodes(NodeSpec("a", READY, 1024), NodeSpec("b", READY, 256))
    rows = (Placed("x1", "web", 1, "a", 256), Placed("y1", "web", 1, "b", 256))
    desired = Desired(apps(AppSpec("web", 2, 256, 1)), rows, ns)

    actions = run(desired, fresh_real([ns["b"]], rows, silent=["a"]))

    assert actions == [SetNodeStatus("a", DOWN), Unplaceable("web", 1, 256)]


def test_node_silent_exactly_the_timeout_is_still_alive() -> None:
    ns = nodes(NodeSpec("a", READY, 1024))
    real = Real(dict([report(ns["a"], at=NOW - TIMEOUT)]), complete=True)

    assert run(Desired({}, (), ns), real) == []


def test_returning_node_is_marked_ready_and_used_again() -> None:
    ns = nodes(NodeSpec("a", DOWN, 1024))
    desired = Desired(apps(AppSpec("web", 1, 256, 1)), (), ns)

    actions = run(desired, fresh_real(ns.values()))

    assert actions == [SetNodeStatus("a", READY), Place("web", 1, "a", 256)]


def test_down_node_with_stale_report_stays_down() -> None:
    ns = nodes(NodeSpec("a", DOWN, 1024))
    real = Real(dict([report(ns["a"], at=NOW - 5 * TIMEOUT)]), complete=True)

    assert run(Desired({}, (), ns), real) == []


def test_draining_node_instances_move_elsewhere() -> None:
    ns = nodes(NodeSpec("old", DRAINING, 8192), NodeSpec("new", READY, 1024))
    rows = (Placed("x1", "web", 1, "old", 256),)
    desired = Desired(apps(AppSpec("web", 1, 256, 1)), rows, ns)

    first = run(desired, fresh_real(ns.values(), rows))
    assert first == [Place("web", 1, "new", 256)]  # x1 keeps serving meanwhile

    desired = apply(desired, first)
    second = run(desired, fresh_real(desired.nodes.values(), desired.instances))
    assert second == [Remove("x1", "web", "old", "node old is draining")]


def test_instance_on_a_node_no_longer_known_is_replaced() -> None:
    ns = nodes(NodeSpec("a", READY, 1024))
    rows = (Placed("x1", "web", 1, "vanished", 256),)
    desired = Desired(apps(AppSpec("web", 1, 256, 1)), rows, ns)

    first = run(desired, fresh_real(ns.values()))
    assert first == [Place("web", 1, "a", 256)]

    desired = apply(desired, first)
    second = run(desired, fresh_real(ns.values(), desired.instances))
    assert second == [Remove("x1", "web", "vanished", "node vanished is gone")]


# --- examples: rolling release ---------------------------------------------------------


def test_release_change_places_new_and_removes_old_only_once_new_are_healthy() -> None:
    ns = nodes(NodeSpec("a", READY, 2048), NodeSpec("b", READY, 2048))
    old = (
        Placed("o1", "web", 1, "a", 256, created=1.0),
        Placed("o2", "web", 1, "b", 256, created=2.0),
    )
    desired = Desired(apps(AppSpec("web", 2, 256, 2)), old, ns)

    first = run(desired, fresh_real(ns.values(), old))
    assert sorted(first, key=repr) == [Place("web", 2, "a", 256), Place("web", 2, "b", 256)]

    desired = apply(desired, first)
    new_ids = [i.id for i in desired.instances if i.release == 2]

    # New ones starting: nothing old goes.
    starting = fresh_real(ns.values(), desired.instances, unhealthy=new_ids)
    assert run(desired, starting) == []

    # One new one healthy: exactly one old one goes.
    half = fresh_real(ns.values(), desired.instances, unhealthy=new_ids[:1])
    second = run(desired, half)
    assert len(second) == 1
    [gone] = removes(second)
    assert gone.instance in {"o1", "o2"}
    assert gone.reason == "old release"

    # Both healthy: the rest goes.
    desired = apply(desired, second)
    third = run(desired, fresh_real(ns.values(), desired.instances))
    assert [r.instance for r in removes(third)] == list({"o1", "o2"} - {gone.instance})
    assert places(third) == []


def test_a_rollout_starts_a_surge_of_new_instances_at_a_time() -> None:
    """4 instances, surge 1: one new one starts; only once it is healthy does an old one
    leave and the next new one start; healthy instances never drop below 4."""
    ns = nodes(NodeSpec("a", READY, 4096), NodeSpec("b", READY, 4096))
    old = tuple(Placed(f"o{i}", "web", 1, "ab"[i % 2], 256, created=float(i))
                for i in range(4))
    desired = Desired(apps(AppSpec("web", 4, 256, 2, surge=1)), old, ns)
    for round_no in range(4):
        new_ids = [i.id for i in desired.instances if i.release == 2]
        starting = run(desired, fresh_real(ns.values(), desired.instances))
        assert len(places(starting)) == 1, round_no  # one at a time
        desired = apply(desired, starting)
        started = [i.id for i in desired.instances if i.release == 2 and i.id not in new_ids]
        unhealthy = fresh_real(ns.values(), desired.instances, unhealthy=started)
        assert run(desired, unhealthy) == []  # nothing more while it is not healthy
        healthy = fresh_real(ns.values(), desired.instances)
        after = run(desired, healthy)
        assert len(removes(after)) == 1 and all(r.reason == "old release"
                                                for r in removes(after))
        desired = apply(desired, [a for a in after if isinstance(a, Remove)])
        assert len(desired.instances) == 4  # all healthy: never fewer than asked for
    assert {i.release for i in desired.instances} == {2} and len(desired.instances) == 4


def test_surge_does_not_slow_the_replacement_of_a_dead_node() -> None:
    ns = nodes(NodeSpec("a", READY, 4096), NodeSpec("b", READY, 4096))
    rows = tuple(Placed(f"i{i}", "web", 1, "a", 256) for i in range(3))
    desired = Desired(apps(AppSpec("web", 3, 256, 1, surge=1)), rows, ns)
    real = fresh_real([ns["b"]], (), silent=["a"])
    real = Real({**real.reports, "a": NodeReport("a", NOW - 2 * TIMEOUT, 4096, ())},
                complete=True)
    actions = run(desired, real)
    assert len(places(actions)) == 3  # all at once: no rollout, a node is gone


def test_old_release_unhealthy_instances_go_before_healthy_ones() -> None:
    # One new instance serves, so one of the two old ones may go: it must be the broken
    # one, or the app drops from two healthy instances to one.
    ns = nodes(NodeSpec("n1", READY, 1000), NodeSpec("n2", READY, 1000))
    rows = (
        Placed("new", "a", 2, "n1", 100),
        Placed("oldA", "a", 1, "n1", 100),
        Placed("oldB", "a", 1, "n2", 100),
    )
    desired = Desired(apps(AppSpec("a", 2, 100, 2)), rows, ns)

    actions = run(desired, fresh_real(ns.values(), rows, unhealthy=["oldB"]))

    assert [r.instance for r in removes(actions)] == ["oldB"]


# --- examples: incomplete information --------------------------------------------------


def test_incomplete_information_means_no_placement_or_removal() -> None:
    ns = nodes(NodeSpec("a", READY, 4096), NodeSpec("b", READY, 4096), NodeSpec("c", DOWN, 4096))
    rows = (
        Placed("g1", "gone", 1, "a", 256),  # deleted app
        Placed("w1", "web", 1, "a", 256),  # one more than wanted
        Placed("w2", "web", 1, "a", 256),
        Placed("o1", "api2", 1, "b", 256),  # old release
    )
    desired = Desired(
        apps(AppSpec("web", 1, 256, 1), AppSpec("api2", 1, 256, 2), AppSpec("new", 2, 256, 1)),
        rows,
        ns,
    )
    # b is silent (it is not marked down: silence proves nothing yet); c came back.
    real = fresh_real([ns["a"], ns["c"]], rows, complete=False)

    assert run(desired, real) == [SetNodeStatus("c", READY)]


# --- generated worlds ------------------------------------------------------------------

NODE_NAMES = ("n0", "n1", "n2", "n3", "n4")
APP_NAMES = ("a0", "a1", "a2", "a3")
MEMORIES = (64, 128, 256, 512)


@st.composite
def worlds(draw: st.DrawFn, *, complete: bool | None = None) -> tuple[Desired, Real]:
    """Random nodes, apps, instance rows (some of deleted apps, old releases, or on unknown
    nodes, possibly over-committing a node) and reports with random age and health."""
    node_count = draw(st.integers(0, len(NODE_NAMES)))
    node_map = {
        name: NodeSpec(
            name,
            draw(st.sampled_from((READY, READY, DOWN, DRAINING))),
            draw(st.sampled_from((0, 128, 256, 512, 1024, 2048, 4096))),
        )
        for name in NODE_NAMES[:node_count]
    }
    app_map = {
        name: AppSpec(
            name, draw(st.integers(0, 6)), draw(st.sampled_from(MEMORIES)), draw(st.integers(1, 3))
        )
        for name in draw(st.sets(st.sampled_from(APP_NAMES), max_size=len(APP_NAMES)))
    }
    row_count = draw(st.integers(0, 14))
    rows = []
    for n in range(row_count):
        app = draw(st.sampled_from((*sorted(app_map), "deleted")))
        spec = app_map.get(app)
        rows.append(
            Placed(
                id=f"i{n}",
                app=app,
                release=draw(st.integers(1, 3)),
                node=draw(st.sampled_from((*NODE_NAMES[: max(node_count, 1)], "ghost"))),
                memory_mb=spec.memory_mb if spec else draw(st.sampled_from(MEMORIES)),
                created=draw(st.integers(0, 5)),
            )
        )
    reports = {}
    for name, node in node_map.items():
        if not draw(st.booleans()) and node.status != READY:
            continue  # a node that never reported
        age = draw(st.sampled_from((0.0, 1.0, TIMEOUT, TIMEOUT + 1, 10 * TIMEOUT)))
        containers = []
        for row in rows:
            if row.node != name:
                continue
            kind = draw(st.sampled_from(("healthy", "healthy", "unhealthy", "stopped", "absent")))
            if kind != "absent":
                containers.append(
                    container(row, running=kind != "stopped", healthy=kind == "healthy")
                )
        reports[name] = NodeReport(name, NOW - age, node.capacity_mb, tuple(containers))
    is_complete = draw(st.booleans()) if complete is None else complete
    return Desired(app_map, tuple(rows), node_map), Real(reports, is_complete)


def statuses_after(desired: Desired, actions: Iterable[Action]) -> dict[str, str]:
    out = {name: n.status for name, n in desired.nodes.items()}
    out.update({a.node: a.status for a in statuses(actions)})
    return out


PROPERTY = settings(max_examples=300, deadline=None)


@PROPERTY
@given(worlds())
def test_plan_never_places_on_a_node_without_room(world: tuple[Desired, Real]) -> None:
    desired, real = world
    actions = run(desired, real)

    status = statuses_after(desired, actions)
    rows = {i.id: i for i in desired.instances}
    reserved = Counter[str]()
    for row in desired.instances:
        reserved[row.node] += row.memory_mb
    # Walk the plan in order: a Remove frees its row's memory, a Place must fit then.
    for action in actions:
        if isinstance(action, Remove):
            reserved[action.node] -= rows[action.instance].memory_mb
        elif isinstance(action, Place):
            assert status.get(action.node) == READY, action
            capacity = desired.nodes[action.node].capacity_mb
            assert reserved[action.node] + action.memory_mb <= capacity, action
            reserved[action.node] += action.memory_mb


@PROPERTY
@given(worlds())
def test_plan_removes_each_row_at_most_once_and_only_existing_rows(
    world: tuple[Desired, Real],
) -> None:
    desired, real = world
    removed = [r.instance for r in removes(run(desired, real))]

    assert len(removed) == len(set(removed))
    assert set(removed) <= {i.id for i in desired.instances}


@PROPERTY
@given(worlds(), st.randoms(use_true_random=False))
def test_plan_does_not_depend_on_the_order_of_rows_and_nodes(
    world: tuple[Desired, Real], rnd: random.Random
) -> None:
    desired, real = world
    rows = list(desired.instances)
    rnd.shuffle(rows)
    node_items = list(desired.nodes.items())
    rnd.shuffle(node_items)
    shuffled = Desired(desired.apps, tuple(rows), dict(node_items))

    # The order of actions of one kind may follow the rows' order; their set may not.
    assert Counter(run(shuffled, real)) == Counter(run(desired, real))


@PROPERTY
@given(worlds(complete=True))
def test_plan_converges(world: tuple[Desired, Real]) -> None:
    """After the plan is applied and every placed instance serves, a second plan places
    nothing more (for apps that found room) and removes only rows that were waiting for
    their replacements; after that one is applied, the third plan is empty."""
    desired, real = world
    first = run(desired, real)
    short = {u.app for u in first if isinstance(u, Unplaceable)}

    after_first = apply(desired, first)
    second = run(after_first, everything_healthy(after_first))

    assert statuses(second) == []
    assert [p for p in places(second) if p.app not in short] == []
    ready = {name for name, n in after_first.nodes.items() if n.status == READY}
    rows = {i.id: i for i in after_first.instances}
    for r in removes(second):
        row = rows[r.instance]
        app = after_first.apps[row.app]  # deleted apps' rows all went in the first plan
        assert row.release != app.release or row.node not in ready, r

    if not short:
        after_second = apply(after_first, second)
        assert run(after_second, everything_healthy(after_second)) == []


@PROPERTY
@given(
    st.integers(1, 6),
    st.lists(st.tuples(st.integers(0, 20), st.sampled_from(MEMORIES)), min_size=1, max_size=4),
)
def test_an_app_placed_from_zero_on_equal_nodes_is_spread_evenly(
    node_count: int, wanted: list[tuple[int, int]]
) -> None:
    room = sum(count * mem for count, mem in wanted)  # every node could hold everything
    ns = nodes(*(NodeSpec(f"n{k}", READY, room) for k in range(node_count)))
    app_map = apps(*(AppSpec(f"a{k}", count, mem, 1) for k, (count, mem) in enumerate(wanted)))
    desired = Desired(app_map, (), ns)

    actions = run(desired, fresh_real(ns.values()))

    placed = places(actions)
    assert placed == actions
    for app in app_map.values():
        per_node = Counter(p.node for p in placed if p.app == app.name)
        counts = [per_node[name] for name in ns]
        assert sum(counts) == app.instances
        assert max(counts) - min(counts) <= 1, (app, per_node)


@PROPERTY
@given(worlds(complete=False))
def test_incomplete_information_never_places_nor_removes(world: tuple[Desired, Real]) -> None:
    desired, real = world
    actions = run(desired, real)

    # At most nodes that reported are marked ready again; nothing is marked down.
    assert statuses(actions) == actions
    for a in statuses(actions):
        assert a.status == READY
        assert desired.nodes[a.node].status == DOWN


@PROPERTY
@given(worlds(complete=True))
def test_current_instances_on_ready_nodes_go_only_when_there_are_too_many(
    world: tuple[Desired, Real],
) -> None:
    desired, real = world
    actions = run(desired, real)

    status = statuses_after(desired, actions)
    removed = {r.instance for r in removes(actions)}
    for app in desired.apps.values():
        current = [
            i for i in desired.instances
            if i.app == app.name and i.release == app.release and status.get(i.node) == READY
        ]
        gone = [i for i in current if i.id in removed]
        assert len(gone) == max(0, len(current) - app.instances), (app, gone)


# The smallest world where a planner that ranked leaving rows healthy-first dropped the
# app below its healthy count: wanted 2, one new instance healthy, two old ones of which
# one is healthy. One old row may go, and it must be the broken one.
_HEALTHY_OLD_REMOVED = (
    Desired(
        apps(AppSpec("a", 2, 100, 2)),
        (
            Placed("new", "a", 2, "n1", 100),
            Placed("oldA", "a", 1, "n1", 100),
            Placed("oldB", "a", 1, "n2", 100),
        ),
        nodes(NodeSpec("n1", READY, 1000), NodeSpec("n2", READY, 1000)),
    ),
    Real(
        {
            "n1": NodeReport("n1", NOW, 1000, (
                ContainerReport("new", "a", 2, True, True),
                ContainerReport("oldA", "a", 1, True, True),
            )),
            "n2": NodeReport("n2", NOW, 1000, (ContainerReport("oldB", "a", 1, True, False),)),
        },
        complete=True,
    ),
)


@PROPERTY
@given(worlds())
@example(_HEALTHY_OLD_REMOVED)
def test_plan_never_drops_healthy_instances_below_wanted(world: tuple[Desired, Real]) -> None:
    desired, real = world
    removed = {r.instance for r in removes(run(desired, real))}

    for app in desired.apps.values():
        healthy = [i for i in desired.instances if i.app == app.name and real.healthy(i)]
        remaining = [i for i in healthy if i.id not in removed]
        assert len(remaining) >= min(app.instances, len(healthy)), (app, removed)


@pytest.mark.parametrize("complete", [True, False])
def test_plan_of_an_empty_world_is_empty(complete: bool) -> None:
    assert run(Desired({}, (), {}), Real({}, complete)) == []


def test_a_plan_is_logged_in_a_few_lines_not_one_per_instance() -> None:
    actions: list[Action] = [Place("web", 2, f"n{i % 3}", 64) for i in range(300)]
    actions += [Place("api", 1, "n1", 64), SetNodeStatus("n9", "down"),
                Unplaceable("api", 2, 64)]
    actions += [Remove(f"i{i}", "web", "n1", "old release") for i in range(40)]
    actions += [Remove("j1", "api", "n9", "node n9 is down")]
    assert summary(actions) == [
        "node n9 is down",
        "place 1 instance(s) of api release 1 on n1",
        "place 300 instance(s) of web release 2 on 3 nodes",
        "remove 1 instance(s) of api: node n9 is down",
        "remove 40 instance(s) of web: old release",
    ]


def test_a_wave_of_silent_nodes_is_logged_in_a_few_lines() -> None:
    """1,900 nodes down, their instances of 3,000 apps replaced: at most SUMMARY_LINES
    lines, the nodes counted per status and per app, the rest counted in the last."""
    nodes = [f"n{i:04d}" for i in range(1900)]
    actions: list[Action] = [SetNodeStatus(n, "down") for n in nodes]
    actions += [SetNodeStatus("back", "ready")]
    actions += [Remove(f"i{i}", "web", n, f"node {n} is down")
                for i, n in enumerate(nodes[:5])]
    actions += [Remove("d1", "api", "n0007", "node n0007 is draining")]
    actions += [Place(f"app{k:04d}", 1, "n1", 64) for k in range(3000)]
    lines = summary(actions)
    assert len(lines) == SUMMARY_LINES
    assert lines[0] == ("1900 nodes are down: n0000, n0001, n0002, n0003, n0004, n0005, "
                        "n0006, n0007, n0008, n0009 and 1890 more")
    assert lines[1] == "node back is ready"
    assert lines[-1] == ("and 2965 more line(s): 2963 more placement(s), 6 more "
                         "removal(s) (the events list each)")
    few = summary([Remove(f"i{i}", "web", n, f"node {n} is down")
                   for i, n in enumerate(nodes[:5])]
                  + [Remove("d1", "api", "n0007", "node n0007 is draining")])
    assert few == ["remove 1 instance(s) of api: node n0007 is draining",
                   "remove 5 instance(s) of web: 5 of its nodes are down"]
