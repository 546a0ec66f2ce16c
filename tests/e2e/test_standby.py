"""Two servers on one database: one leads (the lease), the other forwards to it and takes
over when it dies. The leader is killed (`kill -9`, no goodbye) in the middle of a deploy
and of a scale-up, while a client counts every answer through the router: the standby
finishes what was asked, placing nothing twice, and no request fails."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import IMAGE, Cluster, fault_row, running_cluster
from tests.support import Dinp, Prober, docker_ids, http_get, wait_for

APP = "ha"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("standby"), f"s{secrets.token_hex(3)}",
                         servers=2, env={"DINP_LEASE_TTL": "3"}) as c:
        c.cli.run("app", "create", APP, "--image", IMAGE, "--instances", "3", "--memory",
                  "32m", "--surge", "1", "--wait", "--timeout", "60")
        yield c


def only(c: Cluster, index: int) -> Dinp:
    """The CLI pointed at one server alone (0: the first started, 1: the second)."""
    urls = c.env["DINP_SERVER"].split(",")
    return Dinp(dict(c.cli.env, DINP_SERVER=urls[index]))


def settled(c: Cluster, instances: int, release: int) -> bool:
    app = c.cli.json("app", "show", APP)
    return bool(app["status"]["healthy"] == app["status"]["routed"] == instances
                and {i["release"] for i in app["instance_list"]} == {release}
                and len(app["instance_list"]) == instances
                and len(docker_ids(f"io.dinp.app={APP}")) == instances)


def leads(c: Cluster, index: int) -> bool | None:
    """Whether server `index` leads (its health says); None if it does not answer."""
    url = c.env["DINP_SERVER"].split(",")[index].removeprefix("http://")
    try:
        status, body = http_get(url, "x", "/api/v1/health")
    except OSError:
        return None
    return bool(json.loads(body)["leader"]) if status == 200 else None


def leader(c: Cluster) -> int:
    return wait_for(lambda: next((i for i in (0, 1) if leads(c, i)), None) is not None and
                    next(i for i in (0, 1) if leads(c, i)) + 1, 20, "a leader") - 1


def test_a_follower_forwards_reads_and_writes_to_the_leader(cluster: Cluster) -> None:
    c = cluster
    first = leader(c)
    follower = only(c, 1 - first)
    assert [a["name"] for a in follower.json("app", "list")] == [APP]
    shown = follower.json("app", "show", APP)
    assert shown["status"]["healthy"] == 3  # real state: the leader's, not the follower's
    follower.run("app", "settings", APP, "--stop-grace", "5")
    assert only(c, first).json("app", "settings", APP)["stop_grace"] == 5
    events = c.cli.json("events", "--app", APP)
    assert events[0]["source"] == "127.0.0.1"  # the client's address, not the follower's


def kill_the_leader_during(c: Cluster, what: str, args: tuple[str, ...],
                          before: tuple[int, int], after: tuple[int, int]) -> None:
    """Start `what`, kill -9 the leading server while it is under way, and check that the
    standby takes over and finishes it: `after` (instances, release), every one healthy
    and routed, none placed twice, no request failed; then start the killed one again."""
    procs = [c.server, *c.standbys]
    wait_for(lambda: settled(c, *before), 60, "the app settled before the fault")
    first = leader(c)
    with Prober(c.router_addr, f"{APP}.apps.test") as probe:
        time.sleep(0.5)
        t0 = time.monotonic()
        c.cli.run(*args)
        time.sleep(1.0)  # under way: placements made, not all healthy yet
        procs[first].kill()
        killed = time.monotonic()
        wait_for(lambda: leads(c, 1 - first), 30, "the standby to take over")
        took_over = time.monotonic() - killed
        wait_for(lambda: settled(c, *after), 90, f"the {what} to finish under the new leader")
        done = time.monotonic() - killed
        time.sleep(1.0)
    failed = probe.failed_since(t0)
    fault_row(f"the leading server killed during a {what}",
              f"{len(failed)} of {probe.sent_since(t0)}",
              f"standby led after {took_over:.1f} s; {what} done {done:.1f} s after the kill")
    assert failed == [], failed[:5]
    assert len(c.cli.json("app", "show", APP)["instance_list"]) == after[0]  # none twice
    procs[first].start()  # it comes back as the standby: two servers again
    wait_for(lambda: leads(c, first) is False, 20, "the restarted server to follow")
    assert leads(c, 1 - first) is True


def test_the_leader_killed_during_a_deploy_and_a_scale_up(cluster: Cluster) -> None:
    kill_the_leader_during(cluster, "deploy", ("app", "deploy", APP, "--env", "COLOR=blue"),
                           (3, 1), (3, 2))
    kill_the_leader_during(cluster, "scale-up", ("app", "scale", APP, "6"), (3, 2), (6, 2))
