"""The planner's placement index gives the placements the scan of every node gives.

`_Ledger.choose` walks nodes kept sorted by unreserved memory; `_Ledger.choose_by_scan` is
the rule written as a scan (fewest instances of the app, then most unreserved memory, then
name). Generated clusters — nodes of several sizes and statuses, instances already placed
(some on nodes that are gone), then placements and removals interleaved — must get the
same node from both at every step, including "none fits".
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dinp.scheduler import DOWN, DRAINING, READY, NodeSpec, Placed, _Ledger

APPS = ("a", "b", "c", "d")
NODE_NAMES = [f"n{i}" for i in range(12)]


@st.composite
def worlds(draw: st.DrawFn) -> tuple[dict[str, NodeSpec], list[tuple[str, str, int]],
                                    list[tuple[str, str, int]]]:
    count = draw(st.integers(0, len(NODE_NAMES)))
    nodes = {
        name: NodeSpec(name, draw(st.sampled_from([READY, READY, READY, DOWN, DRAINING])),
                       draw(st.sampled_from([0, 256, 512, 1024, 2048])))
        for name in NODE_NAMES[:count]
    }
    # Existing instances: (node, app, memory); "gone" is a node the cluster lost.
    places = st.sampled_from([*NODE_NAMES[:count], "gone"])
    existing = draw(st.lists(st.tuples(places, st.sampled_from(APPS),
                                       st.sampled_from([64, 128, 256])), max_size=30))
    # Steps: ("place", app, memory) or ("drop", index into what was added, 0).
    steps = draw(st.lists(st.one_of(
        st.tuples(st.just("place"), st.sampled_from(APPS), st.sampled_from([64, 128, 256, 700])),
        st.tuples(st.just("drop"), st.just(""), st.integers(0, 100))), max_size=60))
    return nodes, existing, steps


def _ledgers(nodes: dict[str, NodeSpec]) -> tuple[_Ledger, _Ledger]:
    return _Ledger(dict(nodes)), _Ledger(dict(nodes))


@settings(max_examples=400, deadline=None)
@given(worlds())
def test_index_chooses_what_the_scan_chooses(world: tuple[
        dict[str, NodeSpec], list[tuple[str, str, int]], list[tuple[str, str, int]]]) -> None:
    nodes, existing, steps = world
    indexed, scanned = _ledgers(nodes)
    placed: list[tuple[str, str, int]] = []
    indexed.load(Placed(f"i{k}", app, 1, node, memory) for k, (node, app, memory)
                 in enumerate(existing))
    for node, app, memory in existing:
        scanned.add(node, app, memory)
        placed.append((node, app, memory))
    for kind, app, value in steps:
        if kind == "drop":
            if not placed:
                continue
            node, app, memory = placed.pop(value % len(placed))
            indexed.drop(node, app, memory)
            scanned.drop(node, app, memory)
            continue
        got, want = indexed.choose(app, value), scanned.choose_by_scan(app, value)
        assert got == want, (app, value, dict(scanned.reserved))
        if got is not None:
            indexed.add(got, app, value)
            scanned.add(got, app, value)
            placed.append((got, app, value))


def test_index_spreads_an_app_over_equal_nodes_in_name_order() -> None:
    ledger = _Ledger({n: NodeSpec(n, READY, 1024) for n in ("n1", "n2", "n3")})
    chosen = []
    for _ in range(6):
        node = ledger.choose("a", 100)
        assert node is not None
        ledger.add(node, "a", 100)
        chosen.append(node)
    assert chosen == ["n1", "n2", "n3", "n1", "n2", "n3"]


def test_index_skips_nodes_the_app_crowds_even_with_more_room() -> None:
    ledger = _Ledger({"big": NodeSpec("big", READY, 4096), "small": NodeSpec("small", READY, 512)})
    ledger.add("big", "a", 100)
    assert ledger.choose("a", 100) == "small"
    assert ledger.choose("b", 100) == "big"
    assert ledger.choose("a", 600) == "big"  # the only one it fits
