"""The agent <-> server messages: what a newer field carries, and what an older peer
without it gets."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

import pytest

from dinp.errors import InvalidInput
from dinp.wire import (
    Assignment,
    Beat,
    ContainerInfo,
    Failure,
    Heartbeat,
    assignments_rev,
    parse_assignments,
    parse_beat,
    parse_heartbeat,
)

CONTAINER = ContainerInfo("3f2a9c01de", "web", 2, "running", "starting", 32768,
                          health_detail="GET /health answered 'HTTP/1.1 500 Oops'")


def test_a_heartbeat_round_trips_with_health_details_and_failure_counts() -> None:
    hb = Heartbeat(node="n1", address="127.0.0.2", capacity_mb=1024, free_mb=900,
                   containers=(CONTAINER,),
                   failures={"3f2a9c01de": Failure("exited with code 3", count=4, crash=True)},
                   agent="host:1:ab", cluster="5f0c2a9e7d314b66", logs_port=7072)
    assert parse_heartbeat("n1", hb.to_json()) == hb


def test_fields_older_agents_do_not_send_take_their_old_meaning() -> None:
    body: dict[str, Any] = {
        "address": "127.0.0.2", "capacity_mb": 1, "free_mb": 1,
        "containers": [{"instance": "a1", "app": "web", "release": 1, "state": "running",
                        "health": "healthy", "port": 1}],
        "failures": [{"instance": "a1", "message": "cannot start"}]}
    hb = parse_heartbeat("n1", body)
    assert hb.containers[0].health_detail == ""
    assert hb.logs_port is None  # an agent that serves no logs
    assert hb.failures == {"a1": Failure("cannot start", count=1, crash=False)}


@pytest.mark.parametrize("failure", [
    {"count": 0}, {"count": "2"}, {"count": 1.5}, {"crash": "yes"}, {"crash": 1}])
def test_a_malformed_failure_is_refused(failure: dict[str, Any]) -> None:
    body = {"address": "a", "capacity_mb": 1, "free_mb": 1, "containers": [],
            "failures": [{"instance": "a1", "message": "m", **failure}]}
    with pytest.raises(InvalidInput):
        parse_heartbeat("n1", body)


def test_a_health_detail_is_bounded() -> None:
    body = {"address": "a", "capacity_mb": 1, "free_mb": 1, "containers": [
        {**CONTAINER.to_json(), "health_detail": "x" * 301}]}
    with pytest.raises(InvalidInput, match="health_detail"):
        parse_heartbeat("n1", body)


def test_an_assignment_carries_the_stop_grace_and_an_older_server_none() -> None:
    a = Assignment(id="a1", app="web", release=1, image="reg/web:1", memory_mb=64, port=8080,
                   env={}, health_path=None, stop_grace=2.5)
    assert parse_assignments({"rev": "r", "instances": [a.to_json()]}) == ("r", [a])
    older = {k: v for k, v in a.to_json().items() if k != "stop_grace"}
    assert parse_assignments({"rev": "r", "instances": [older]})[1][0].stop_grace is None
    for bad in (-1, "10", True, 1e9):
        with pytest.raises(InvalidInput, match="stop_grace"):
            parse_assignments({"instances": [{**a.to_json(), "stop_grace": bad}]})


@pytest.mark.parametrize("port", [0, 65536, "7072", True, -1])
def test_a_logs_port_that_is_not_a_port_is_refused(port: object) -> None:
    body = {"address": "127.0.0.2", "capacity_mb": 1, "free_mb": 1, "containers": [],
            "logs_port": port}
    with pytest.raises(InvalidInput) as err:
        parse_heartbeat("n1", body)
    assert err.value.field == "logs_port"


def test_a_short_beat_round_trips_and_a_bad_digest_is_refused() -> None:
    beat = Beat(node="n1", same_as="0123abcd", free_mb=5, agent="h:1:ab",
                cluster="5f0c2a9e7d314b66", rev="ffee")
    assert parse_beat("n1", beat.to_json()) == beat
    for bad in ("", "ABCD", "12 3", "x" * 65, 12):
        with pytest.raises(InvalidInput, match="same_as"):
            parse_beat("n1", {**beat.to_json(), "same_as": bad})
    hb = Heartbeat(node="n1", address="a", capacity_mb=1, free_mb=1, containers=(CONTAINER,),
                   digest="0123abcd", rev="ffee")
    assert parse_heartbeat("n1", hb.to_json()) == hb


def test_the_report_digest_ignores_memory_figures_and_nothing_else() -> None:
    hb = Heartbeat(node="n1", address="a", capacity_mb=1024, free_mb=900,
                   containers=(replace(CONTAINER, memory_mb=40),))
    same = replace(hb, free_mb=10, containers=(replace(CONTAINER, memory_mb=41),))
    assert hb.state_digest() == same.state_digest()
    for changed in (replace(hb, containers=(replace(CONTAINER, health="healthy"),)),
                    replace(hb, containers=()), replace(hb, capacity_mb=2048),
                    replace(hb, failures={"x": Failure("boom")}), replace(hb, logs_port=7)):
        assert changed.state_digest() != hb.state_digest()


def test_an_assignment_revision_is_the_digest_of_its_whole_json() -> None:
    """Made from each instance's own text (the server keeps those), the revision is
    still the digest of the whole list as JSON: a server of an earlier dinp gave the
    same one, so agents holding it are not sent their instances again on an upgrade."""
    items = [Assignment(id=f"a{k}", app="web", release=k, image="reg/web:1", memory_mb=64,
                        port=8080, env={"B": "2", "A": "1"}, health_path=None,
                        stop_grace=None if k else 3.0) for k in range(3)]
    whole = json.dumps([a.to_json() for a in items], sort_keys=True).encode()
    assert assignments_rev(items) == hashlib.sha256(whole).hexdigest()[:16]
    assert assignments_rev([]) == hashlib.sha256(b"[]").hexdigest()[:16]
    assert assignments_rev(items[:2]) != assignments_rev(items)
