"""The checks on user-given values: what passes, what is refused, and which field is named."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dinp import validation
from dinp.errors import InvalidInput

DIGEST = "sha256:" + "0123456789abcdef" * 4


def field_of(fn: object, value: object) -> str:
    with pytest.raises(InvalidInput) as info:
        fn(value)  # type: ignore[operator]
    return info.value.field


# --- app names -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["web", "a", "my-app-2", "a1", "a--b", "a" * 63, "apis"])
def test_valid_app_names(name: str) -> None:
    assert validation.app_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "a" * 64,  # longer than a DNS label
        "Web",  # uppercase
        "WEB",
        "2web",  # leading digit
        "-web",
        "web-",  # trailing '-'
        "my_app",
        "my.app",
        "my app",
        "",
        None,
        42,
        "api",  # reserved
        "www",
        "dinp",
        "localhost",
    ],
)
def test_invalid_app_names_name_the_field(name: object) -> None:
    assert field_of(validation.app_name, name) == "name"


def test_too_long_name_says_so() -> None:
    with pytest.raises(InvalidInput, match="longer than 63"):
        validation.app_name("a" * 64)


def test_reserved_name_says_so() -> None:
    with pytest.raises(InvalidInput, match="reserved"):
        validation.app_name("admin")


def test_message_starts_with_the_field() -> None:
    with pytest.raises(InvalidInput) as info:
        validation.app_name("Web")
    assert str(info.value).startswith("name: ")
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("check", "value", "field"),
    [
        (validation.app_name, "web\n", "name"),
        (validation.node_name, "node1\n", "node"),
        (validation.image, "registry:5000/web:1\n", "image"),
        (validation.env, {"DEBUG\n": "1"}, "env"),
        (validation.env, {"PORT\n": "1"}, "env"),
    ],
)
def test_trailing_newline_is_refused(check: object, value: object, field: str) -> None:
    assert field_of(check, value) == field


# --- memory ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "mb"),
    [
        ("256m", 256),
        ("256M", 256),
        ("1g", 1024),
        ("1G", 1024),
        ("1gb", 1024),
        ("512MiB", 512),
        ("512mb", 512),
        ("2GiB", 2048),
        ("1.5g", 1536),
        ("0.5g", 512),
        (" 256m ", 256),
        ("256 m", 256),
        ("300", 300),  # a bare number is megabytes
        ("16384k", 16),
        (64, 64),
        (16, 16),  # the bounds are inclusive
        ("64g", 64 * 1024),
    ],
)
def test_memory_sizes(value: object, mb: int) -> None:
    assert validation.memory_mb(value) == mb


@pytest.mark.parametrize(
    "value",
    [
        "",
        "abc",
        "m",
        "256x",
        "256b",  # a byte suffix without a unit
        "256ib",
        "1.5.5g",
        "-256m",
        "1,5g",
        "256 mm",
        True,  # a bool is not a number of megabytes
        False,
        256.0,
        None,
        [256],
    ],
)
def test_bad_memory_sizes(value: object) -> None:
    assert field_of(validation.memory_mb, value) == "memory"


@pytest.mark.parametrize("value", [15, 0, -1, "15m", "1024k", "65g", 65 * 1024, "1t", "0.001g"])
def test_memory_out_of_range(value: object) -> None:
    with pytest.raises(InvalidInput, match="out of range") as info:
        validation.memory_mb(value)
    assert info.value.field == "memory"


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=30), st.integers(), st.floats(), st.booleans(), st.none()))
def test_memory_either_parses_in_range_or_names_the_field(value: object) -> None:
    try:
        mb = validation.memory_mb(value)
    except InvalidInput as exc:
        assert exc.field == "memory"
    else:
        assert isinstance(mb, int)
        assert validation.MIN_MEMORY_MB <= mb <= validation.MAX_MEMORY_MB


def test_huge_memory_number_is_invalid_input() -> None:
    assert field_of(validation.memory_mb, "1" + "0" * 400 + "g") == "memory"


@pytest.mark.parametrize(("low", "high"), [
    (0, 0), (0, 9), (3, 7), (0, 100), (16, 65536), (1, 64), (7, 1000), (99, 101), (100, 199),
    (123, 4567), (1000, 1000), (10, 99), (19, 20), (0, 10_000),
])
def test_int_range_pattern_matches_exactly_the_range(low: int, high: int) -> None:
    pattern = re.compile(validation.int_range_pattern(low, high))
    matched = {n for n in range(0, 100_000) if pattern.fullmatch(str(n))}
    assert matched == set(range(low, high + 1))
    assert not pattern.fullmatch("0" + str(max(low, 1)))  # no leading zeros


@pytest.mark.parametrize(("value", "mb"), [
    (16, 16), (65536, 65536), ("16m", 16), ("256M", 256), ("65536m", 65536), ("1g", 1024),
    ("64G", 65536), (300, 300)])
def test_the_api_memory_field(value: object, mb: int) -> None:
    assert validation.memory_field(value) == mb


@pytest.mark.parametrize("value", [
    15, 65537, "15m", "65537m", "0g", "65g", "1.5g", "512MiB", "256", " 256m", "256m\n",
    "0256m", True, 1.0, None, "1t"])
def test_the_api_memory_field_refuses(value: object) -> None:
    assert field_of(validation.memory_field, value) == "memory"


# --- instances -------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "n"), [(0, 0), (1, 1), (100, 100)])
def test_instances_in_range(value: object, n: int) -> None:
    assert validation.instances(value) == n


@pytest.mark.parametrize("value", [-1, 101, "101", True, False, 2.5, "two", "-1", "1.5", "", None,
                                   "3", " 7 "])
def test_bad_instances(value: object) -> None:
    assert field_of(validation.instances, value) == "instances"


def test_superscript_digit_instances_is_invalid_input() -> None:
    assert field_of(validation.instances, "²") == "instances"


# --- ports and node names --------------------------------------------------------------


@pytest.mark.parametrize("value", [1, 8080, 65535])
def test_ports(value: int) -> None:
    assert validation.port(value) == value


@pytest.mark.parametrize("value", [0, 65536, -1, "8080", True, None])
def test_bad_ports_name_the_given_field(value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        validation.port(value, "container_port")
    assert info.value.field == "container_port"


@pytest.mark.parametrize("value", ["node1", "n", "node-1.example", "10.0.0.1"])
def test_node_names(value: str) -> None:
    assert validation.node_name(value) == value


@pytest.mark.parametrize("value", ["", "Node1", "node_1", "-node", "node.", "a" * 64, None])
def test_bad_node_names(value: object) -> None:
    assert field_of(validation.node_name, value) == "node"


# --- images ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    [
        "nginx",
        "nginx:1.25",
        "library/nginx:latest",
        "registry:5000/web:3",
        "localhost:5000/team/app:v1.2.3",
        "registry.example.com/a/b/c",
        "127.0.0.1:5000/web:12",
        f"registry:5000/web@{DIGEST}",
        f"registry:5000/web:3@{DIGEST}",
        "my_app",
        "my__app",
        "my-app",
        "my.app",
        "app:Tag_1.0-rc",
    ],
)
def test_valid_image_references(ref: str) -> None:
    assert validation.image(ref) == ref


@pytest.mark.parametrize(
    "ref",
    [
        "",
        None,
        5,
        "Nginx",  # repository names are lowercase
        "nginx:",
        "nginx:-1",  # a tag cannot start with '-'
        "nginx:a b",
        ":1",
        "/nginx",
        "nginx/",
        "registry:port/web",
        "web@sha256:abc",  # short digest
        "web@md5:" + "0" * 64,
        "-app",
        "app-",
        "app:" + "t" * 129,  # tag longer than 128
        "a/" * 128 + "a",  # longer than 255 characters
    ],
)
def test_invalid_image_references(ref: object) -> None:
    assert field_of(validation.image, ref) == "image"


# --- env -------------------------------------------------------------------------------


def test_valid_env() -> None:
    env = {"DATABASE_URL": "mysql://db/app", "_private": "", "a1": "x=y", "LANG": "ü"}
    assert validation.env(env) == env


def test_no_env_is_empty() -> None:
    assert validation.env(None) == {}


@pytest.mark.parametrize("key", ["1ABC", "A-B", "", "A B", "Ä", 5])
def test_invalid_env_names(key: object) -> None:
    assert field_of(validation.env, {key: "v"}) == "env"


@pytest.mark.parametrize("key", sorted(validation.RESERVED_ENV))
def test_platform_env_names_are_refused(key: str) -> None:
    with pytest.raises(InvalidInput, match="set by dinp") as info:
        validation.env({key: "1"})
    assert info.value.field == "env"


@pytest.mark.parametrize(
    "value",
    [
        ["A=b"],  # not a mapping
        "A=b",
        {"A": 5},  # values are strings
        {"A": None},
        {"A": "x" * (validation.MAX_ENV_VALUE + 1)},
        {"A": "a\x00b"},
        {f"K{n}": "" for n in range(validation.MAX_ENV_VARS + 1)},
    ],
)
def test_invalid_env(value: object) -> None:
    assert field_of(validation.env, value) == "env"


def test_env_limits_are_inclusive() -> None:
    many = {f"K{n}": "" for n in range(validation.MAX_ENV_VARS)}
    assert validation.env(many) == many
    long = {"A": "x" * validation.MAX_ENV_VALUE}
    assert validation.env(long) == long


def test_env_pairs() -> None:
    assert validation.env_pairs(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}


def test_env_pairs_later_wins() -> None:
    assert validation.env_pairs(["A=1", "A=2"]) == {"A": "2"}


@pytest.mark.parametrize("pairs", [["NOEQUALS"], ["=v"], ["PORT=9000"], ["A=1", "1B=2"]])
def test_bad_env_pairs(pairs: list[str]) -> None:
    with pytest.raises(InvalidInput) as info:
        validation.env_pairs(pairs)
    assert info.value.field == "env"


# --- health path -----------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, ""])
def test_no_health_path(value: object) -> None:
    assert validation.health_path(value) is None


@pytest.mark.parametrize("value", ["/", "/healthz", "/a/b?x=1", "/" + "a" * 199])
def test_health_paths(value: str) -> None:
    assert validation.health_path(value) == value


@pytest.mark.parametrize("value", ["healthz", "/a b", "/a\tb", "/" + "a" * 200, 5, b"/x"])
def test_bad_health_paths(value: object) -> None:
    assert field_of(validation.health_path, value) == "health_path"


def test_a_health_path_stored_under_the_older_rule_still_reads_back() -> None:
    """`/santé` was accepted before paths had to be printable ASCII: an agent reading
    its assignment must not refuse it (it would refuse the whole node's work)."""
    assert validation.health_path("/santé", stored=True) == "/santé"
    assert field_of(validation.health_path, "/santé") == "health_path"  # not for new apps
    assert field_of(lambda v: validation.health_path(v, stored=True), "/a b") == "health_path"

