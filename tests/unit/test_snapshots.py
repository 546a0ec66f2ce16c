"""Which snapshot the server answers from when an older one arrives after a newer one."""

from __future__ import annotations

from dinp.models import AppRow
from dinp.scheduler import AppSpec, Desired, Placed
from dinp.store import Snapshot, newest


def snap(apps: list[str], instances: list[str], *, rows: int, rest: int) -> Snapshot:
    placed = tuple(Placed(i, apps[0], 1, "n1", 8) for i in instances)
    specs = {a: AppSpec(a, len(instances), 8, 1, 1) for a in apps}
    return Snapshot(Desired(apps=specs, instances=placed, nodes={}),
                    {a: AppRow(name=a, image="img", instances=1, memory_mb=8, port=80,
                               env_json="{}", release=1) for a in apps},
                    {}, instances_rev=rows, desired_rev=rest)


def test_each_part_comes_from_the_snapshot_further_along() -> None:
    held = snap(["web", "shop"], ["a"], rows=5, rest=8)  # "shop" just created
    read_before = snap(["web"], ["a"], rows=5, rest=7)  # a pass read before the create
    assert newest(held, read_before) is held

    placed_since = snap(["web"], ["a", "b"], rows=6, rest=7)  # read before, placed after
    mixed = newest(held, placed_since)
    assert sorted(mixed.apps) == ["shop", "web"] and sorted(mixed.desired.apps) == \
        ["shop", "web"]
    assert [i.id for i in mixed.desired.instances] == ["a", "b"]
    assert [i.id for i in mixed.by_app["web"]] == ["a", "b"]
    assert (mixed.instances_rev, mixed.desired_rev) == (6, 8)
    assert newest(mixed, held) is mixed  # (held is behind it in rows)

    later = snap(["web"], ["a", "b"], rows=6, rest=9)  # "shop" deleted since
    assert newest(mixed, later) is later


def test_snapshots_without_counters_are_taken_as_they_come() -> None:
    counted = snap(["web", "shop"], ["a"], rows=5, rest=8)
    uncounted = snap(["web"], [], rows=-1, rest=-1)
    assert newest(counted, uncounted) is uncounted
    assert newest(uncounted, counted) is counted
