"""Releases as values: what a change makes of a release, and how it is described."""

from __future__ import annotations

import pytest

from dinp import releases
from dinp.errors import Conflict, InvalidInput
from dinp.releases import Change, ReleaseSpec

V1 = ReleaseSpec("reg/web:1", {"A": "1", "SECRET": "s3"}, 8080, 256, None)


def test_a_change_makes_a_new_spec_and_leaves_the_rest() -> None:
    new = releases.apply(V1, Change(image="reg/web:2", set_env={"B": "2"},
                                    unset_env=frozenset({"A"})))
    assert new == ReleaseSpec("reg/web:2", {"SECRET": "s3", "B": "2"}, 8080, 256, None)
    assert V1.env == {"A": "1", "SECRET": "s3"}  # the old one is untouched


def test_nothing_to_change_is_a_conflict_unless_a_restart() -> None:
    with pytest.raises(Conflict, match="nothing would change"):
        releases.apply(V1, Change())
    with pytest.raises(Conflict):
        releases.apply(V1, Change(image=V1.image, port=8080))
    assert releases.apply(V1, Change(restart=True)) == V1


def test_health_path_set_and_cleared() -> None:
    with_path = releases.apply(V1, Change(health_path="/health"))
    assert with_path.health_path == "/health"
    assert releases.apply(with_path, Change(clear_health_path=True)).health_path is None


def test_describe_says_what_changed_without_values() -> None:
    new = releases.apply(V1, Change(image="reg/web:2", set_env={"B": "2", "SECRET": "x"},
                                    unset_env=frozenset({"A"}), memory_mb=512))
    text = releases.describe(V1, new)
    assert text == "image reg/web:2; set B; changed SECRET; unset A; memory 512m"
    assert "s3" not in text and "=" not in text  # names, never values
    assert releases.describe(V1, V1, restart=True) == "restart"
    assert releases.describe(None, V1) == "created from reg/web:1"


@pytest.mark.parametrize(("body", "field"), [
    ({"image": "NOT AN IMAGE"}, "image"),
    ({"env": {"1X": "y"}}, "env"),
    ({"env": {"PORT": "9"}}, "env"),
    ({"unset": "A"}, "unset"),
    ({"unset": ["not valid"]}, "unset"),
    ({"port": 0}, "port"),
    ({"memory": "1.5g"}, "memory"),
    ({"health_path": "x"}, "health_path"),
    ({"restart": "yes"}, "restart"),
    ({"frobnicate": 1}, "frobnicate"),
])
def test_bad_deploy_bodies_name_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        releases.parse_change(body)
    assert info.value.field == field


def test_a_deploy_body() -> None:
    change = releases.parse_change({"image": "reg/web:2", "env": {"B": "2"},
                                    "unset": ["A"], "memory": "512m", "health_path": None})
    assert change == Change(image="reg/web:2", set_env={"B": "2"},
                            unset_env=frozenset({"A"}), memory_mb=512,
                            clear_health_path=True)


@pytest.mark.parametrize("value", [{}, [], 5, "x"])
def test_a_health_path_that_is_not_a_path_or_null_is_refused(value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        releases.parse_change({"health_path": value})
    assert info.value.field == "health_path"
