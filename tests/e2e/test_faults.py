"""Faults under a steady client: every answer through a real router is counted.

One cluster (server on MariaDB through a TCP proxy the tests can cut, Redis, three agents,
a router) serves `steady` at 3 instances. A prober thread sends a request every 20 ms
through the router. Each test injects one fault, waits for the platform to recover, and
records how many requests failed and how long recovery took; the table is printed at the
end of the run (docs/operating.md, "Tried under faults", quotes it). The asserted bounds
are counts, never times.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import IMAGE, Cluster, fault_row, running_cluster
from tests.support import Prober as BaseProber
from tests.support import Proc, SecondEngine, TcpProxy, docker_ids, wait_for

APP, HOST = "steady", "steady.apps.test"


def Prober(addr: str) -> BaseProber:
    return BaseProber(addr, HOST)


def record(fault: str, failed: int, sent: int, recovery: str) -> None:
    fault_row(fault, f"{failed} of {sent}", recovery)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("faults"), f"f{secrets.token_hex(3)}",
                         db_proxy=True) as c:
        c.cli.run("app", "create", APP, "--image", IMAGE, "--instances", "3", "--memory",
                  "64m", "--wait", "--timeout", "60")
        yield c


def show(c: Cluster) -> dict[str, Any]:
    data: dict[str, Any] = c.cli.json("app", "show", APP)
    return data


def full_strength(c: Cluster) -> bool:
    s = show(c)["status"]
    return bool(s["healthy"] == 3 and s["routed"] == 3)


def settle(c: Cluster) -> None:
    wait_for(lambda: full_strength(c), 30, f"{APP} at full strength")


def test_an_instance_killed(cluster: Cluster) -> None:
    c = cluster
    settle(c)
    victim = show(c)["instance_list"][0]
    (container,) = docker_ids(f"io.dinp.instance={victim['id']}")
    with Prober(c.router_addr) as probe:
        time.sleep(0.5)
        t0 = time.monotonic()
        subprocess.run(["docker", "kill", container], check=True, capture_output=True)

        def replaced() -> bool:
            inst = next(i for i in show(c)["instance_list"] if i["id"] == victim["id"])
            return bool(inst["routed"] and inst["address"] != victim["address"])

        wait_for(replaced, 20, "the instance to be replaced and routed")
        recovered = time.monotonic() - t0
        time.sleep(0.5)
    failed = probe.failed_since(t0)
    record("an instance killed (docker kill)", len(failed), probe.sent_since(t0),
           f"replacement routed after {recovered:.1f} s")
    assert len(failed) <= 2, failed


def test_an_agent_killed_and_restarted(cluster: Cluster) -> None:
    """The agent dies, its containers do not: nothing is lost, and the agent that
    comes back adopts them instead of restarting them."""
    c = cluster
    settle(c)
    node = show(c)["instance_list"][0]["node"]
    before = docker_ids(f"io.dinp.node={node}")
    with Prober(c.router_addr) as probe:
        t0 = time.monotonic()
        c.agents[node].kill()
        time.sleep(3)  # within node_timeout
        c.agent(node).start()
        wait_for(lambda: next(n for n in c.cli.json("node", "list")
                              if n["name"] == node)["last_seen_s"] < 2, 20,
                 "the agent to report again")
        recovered = time.monotonic() - t0
        time.sleep(1)
    failed = probe.failed_since(t0)
    record("an agent killed, back after 3 s", len(failed), probe.sent_since(t0),
           f"reporting again after {recovered:.1f} s; 0 containers recreated")
    assert failed == []
    assert docker_ids(f"io.dinp.node={node}") == before


def test_the_server_restarted(cluster: Cluster) -> None:
    c = cluster
    settle(c)
    before = docker_ids(f"io.dinp.app={APP}")
    with Prober(c.router_addr) as probe:
        t0 = time.monotonic()
        assert c.server.stop()
        c.server.start()
        wait_for(lambda: c.cli.run("app", "show", APP, check=False).returncode == 0, 20,
                 "the server to answer")
        recovered = time.monotonic() - t0
        time.sleep(8)  # past node_timeout: the restarted server has acted by now
    failed = probe.failed_since(t0)
    record("the server restarted", len(failed), probe.sent_since(t0),
           f"API back after {recovered:.1f} s; 0 containers recreated")
    assert failed == []
    assert docker_ids(f"io.dinp.app={APP}") == before


def test_redis_restarted_empty(cluster: Cluster) -> None:
    c = cluster
    settle(c)
    with Prober(c.router_addr) as probe:
        t0 = time.monotonic()
        assert c.redis is not None
        c.redis.restart()
        # The router keeps serving its last table; the server writes the table again.
        wait_for(lambda: full_strength(c) and c.cli.run("app", "list",
                                                        check=False).returncode == 0,
                 20, "the route table to be written again")
        wait_for(lambda: subprocess.run(
            ["redis-cli", "-p", str(c.redis.port), "LLEN", f"/rs/{HOST}"],
            capture_output=True, text=True).stdout.strip() == "3", 20,
            "the table back in Redis")
        recovered = time.monotonic() - t0
        time.sleep(0.5)
    failed = probe.failed_since(t0)
    record("Redis restarted empty", len(failed), probe.sent_since(t0),
           f"table rewritten after {recovered:.1f} s")
    assert failed == []


def test_scaling_up_while_redis_is_down(cluster: Cluster) -> None:
    """Placement and starting do not wait for the route store; routing does."""
    c = cluster
    settle(c)
    assert c.redis is not None
    with Prober(c.router_addr) as probe:
        t0 = time.monotonic()
        c.redis.stop()
        c.cli.run("app", "scale", APP, "5")
        wait_for(lambda: len(docker_ids(f"io.dinp.app={APP}")) == 5
                 and show(c)["status"]["healthy"] == 5, 30,
                 "5 healthy instances while Redis is down")
        started = time.monotonic() - t0
        c.redis.start()
        wait_for(lambda: show(c)["status"]["routed"] == 5, 20, "all 5 routed")
        routed = time.monotonic() - t0
        c.cli.run("app", "scale", APP, "3")
        wait_for(lambda: full_strength(c) and len(docker_ids(f"io.dinp.app={APP}")) == 3,
                 30, "back to 3")
    failed = probe.failed_since(t0)
    record("scale 3 → 5 while Redis is down", len(failed), probe.sent_since(t0),
           f"5 healthy after {started:.1f} s; routed {routed - started:.1f} s after "
           "Redis is back")
    assert failed == []


def test_mysql_gone_then_back(cluster: Cluster) -> None:
    c = cluster
    settle(c)
    assert c.db_proxy is not None
    before = docker_ids(f"io.dinp.app={APP}")
    with Prober(c.router_addr) as probe:
        t0 = time.monotonic()
        c.db_proxy.cut()
        t1 = time.monotonic()
        result = c.cli.run("app", "scale", APP, "4", check=False)
        answered = time.monotonic() - t1
        assert result.returncode == 6, result.stderr  # Unavailable, clearly
        assert "database" in result.stderr and "Traceback" not in result.stderr
        time.sleep(60)  # a minute without the database: nothing may be lost meanwhile
        c.db_proxy.heal()
        wait_for(lambda: c.cli.run("app", "show", APP, check=False).returncode == 0, 30,
                 "the API to work again")
        recovered = time.monotonic() - t0
        time.sleep(1)
    failed = probe.failed_since(t0)
    record("MySQL unreachable for 60 s", len(failed), probe.sent_since(t0),
           f"API said 503 in {answered:.1f} s; works again {recovered - 60:.1f} s after")
    assert failed == []
    assert docker_ids(f"io.dinp.app={APP}") == before  # nothing stopped or started
    assert show(c)["instances"] == 3


# How long the API must keep answering to count as working again: the server's lease
# (lease_ttl 5 s) could not be renewed while the database hung, so it may step down a
# moment after its first answer, and lead again once its stuck reads return.
STEADY_SECONDS = 5.0


def works_again(c: Cluster, since: float, timeout: float = 60.0) -> float:
    """Seconds from `since` until `app show` answered and went on answering for
    STEADY_SECONDS."""
    streak: float | None = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        asked = time.monotonic()
        if c.cli.run("app", "show", APP, check=False).returncode == 0:
            streak = asked if streak is None else streak
            if time.monotonic() - streak >= STEADY_SECONDS:
                return streak - since
        else:
            streak = None
        time.sleep(0.3)
    raise AssertionError(f"the API did not work steadily again within {timeout:g} s")


def test_mysql_hung_then_back(cluster: Cluster) -> None:
    c = cluster
    settle(c)
    assert c.db_proxy is not None
    before = docker_ids(f"io.dinp.app={APP}")
    with Prober(c.router_addr) as probe:
        t0 = time.monotonic()
        c.db_proxy.hang()
        t1 = time.monotonic()
        result = c.cli.run("app", "scale", APP, "4", check=False, timeout=120)
        answered = time.monotonic() - t1
        c.db_proxy.heal()
        recovered = works_again(c, t0)
    failed = probe.failed_since(t0)
    record("MySQL hung (accepts, never answers)", len(failed), probe.sent_since(t0),
           f"API answered (exit {result.returncode}) in {answered:.1f} s; works again "
           f"{recovered - answered:.1f} s after")
    assert result.returncode == 6 and "did not answer within 2 s" in result.stderr, \
        result.stderr
    # Within database_timeout (2 s) and the CLI's start, not the driver's 20 s.
    assert answered < 10, answered
    assert failed == []
    assert docker_ids(f"io.dinp.app={APP}") == before
    assert show(c)["instances"] == 3  # the refused scale was not done once it came back


def test_the_router_restarted(cluster: Cluster) -> None:
    """One router, no load balancer: requests fail while it is down. What must not
    happen is a wrong answer once it listens again (404 for an app that exists)."""
    c = cluster
    settle(c)
    with Prober(c.router_addr) as probe:
        time.sleep(0.3)
        t0 = time.monotonic()
        assert c.router.stop()
        down = time.monotonic()
        c.router.start()
        wait_for(lambda: probe.answers and probe.answers[-1][1] == 200, 20,
                 "the router to serve again")
        recovered = time.monotonic() - t0
        time.sleep(0.5)
    after = [(t, s) for t, s in probe.answers if t >= down]
    wrong = [(t, s) for t, s in after if s not in (0, 200, 503)]
    refused = [(t, s) for t, s in after if s != 200]
    fault_row("the router restarted (a single router)", f"{len(refused)} refused",
              f"serving again after {recovered:.1f} s; {len(wrong)} wrong answers")
    assert wrong == []


def test_a_node_dies(cluster: Cluster) -> None:
    """Agent and containers gone at once, as when a machine loses power."""
    c = cluster
    settle(c)
    node = show(c)["instance_list"][0]["node"]
    with Prober(c.router_addr) as probe:
        time.sleep(0.3)
        t0 = time.monotonic()
        c.agents[node].popen.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        c.agents[node].popen.wait()  # type: ignore[union-attr]
        ids = docker_ids(f"io.dinp.node={node}")
        if ids:
            subprocess.run(["docker", "kill", *ids], check=False, capture_output=True)

        def moved() -> bool:
            a = show(c)
            return (node not in {i["node"] for i in a["instance_list"]}
                    and a["status"]["routed"] == 3)

        wait_for(moved, 30, "the node's instances to serve elsewhere")
        recovered = time.monotonic() - t0
        time.sleep(0.5)
    failed = probe.failed_since(t0)
    record("a node dies (agent and containers)", len(failed), probe.sent_since(t0),
           f"served elsewhere after {recovered:.1f} s (node_timeout 6 s)")
    assert len(failed) <= 3, failed
    c.agent(node).start()
    wait_for(lambda: {n["name"]: n["status"] for n in c.cli.json("node", "list")}[node]
             == "ready", 20, "the node to come back")


def test_a_node_cut_off_then_back(cluster: Cluster) -> None:
    """The agent loses the server (a partition) while its containers go on running: after
    node_timeout its instances are placed elsewhere and, once those serve, unrouted. When
    the node comes back, the first answer to its first report tells it to stop them: no
    duplicate outlives that heartbeat."""
    c = cluster
    settle(c)
    node = show(c)["instance_list"][0]["node"]
    api = int(c.env["DINP_SERVER"].split(",")[0].rsplit(":", 1)[1])
    link = TcpProxy("127.0.0.1", api)  # the node's only way to the server
    c.agents[node].stop()
    agent = Proc(node, ["agent"], dict(c.env, DINP_NODE_NAME=node,
                                      DINP_ADVERTISE=c.addresses[node],
                                      DINP_CAPACITY_MB="1024",
                                      DINP_SERVER=f"http://127.0.0.1:{link.port}"),
                 c.workdir / f"{node}-proxied.log").start()
    try:
        wait_for(lambda: full_strength(c) and next(
            n for n in c.cli.json("node", "list") if n["name"] == node)["last_seen_s"] < 3,
            30, "the node to report through the link")
        mine = {i["id"] for i in show(c)["instance_list"] if i["node"] == node}
        assert mine, "the node runs an instance of the app"
        with Prober(c.router_addr) as probe:
            t0 = time.monotonic()
            link.cut()
            wait_for(lambda: not mine & {i["id"] for i in show(c)["instance_list"]}
                     and full_strength(c), 40, "the instances to be replaced elsewhere")
            # Cut off, the node still runs the replaced instances' containers.
            assert docker_ids(f"io.dinp.node={node}", f"io.dinp.app={APP}")
            healed = time.monotonic()
            link.heal()
            wait_for(lambda: next(n for n in c.cli.json("node", "list")
                                  if n["name"] == node)["status"] == "ready", 20,
                     "the node to report again")
            reported = time.monotonic()
            wait_for(lambda: not docker_ids(f"io.dinp.node={node}", f"io.dinp.app={APP}"),
                     10, "the duplicates to stop")
            gone = time.monotonic()
            time.sleep(0.5)
        failed = probe.failed_since(t0)
        record("a node cut off from the server, then back", len(failed),
               probe.sent_since(t0), f"replaced after {healed - t0:.1f} s; duplicates "
               f"stopped {gone - reported:.1f} s after its first report")
        assert failed == []
        assert len(docker_ids(f"io.dinp.app={APP}")) == 3
        # The first heartbeat back answers with the assignment that lacks them; stopping
        # one takes the drain (1 s) and the app's stop.
        assert gone - reported < 5, gone - reported
    finally:
        agent.stop()
        link.close()
        c.agent(node).start()
        wait_for(lambda: next(n for n in c.cli.json("node", "list")
                              if n["name"] == node)["last_seen_s"] < 3, 20,
                 "the node's own agent back")


def test_a_nodes_docker_engine_restarted(cluster: Cluster) -> None:
    """A fourth node on a Docker engine of its own, which is restarted (its containers
    stop with it): its instance is replaced elsewhere or comes back on it; no request
    fails, and the app ends with its count of instances, no duplicates."""
    c = cluster
    settle(c)
    engine = SecondEngine().start()
    engine.load(IMAGE)
    engine.load("dinp/busybox:1")
    node = "engine-node"
    agent = Proc(node, ["agent"], dict(c.env, DINP_NODE_NAME=node,
                                      DINP_ADVERTISE=engine.ADDRESS, DINP_CAPACITY_MB="1024",
                                      DINP_DOCKER_HOST=engine.url),
                 c.workdir / f"{node}.log").start()
    try:
        wait_for(lambda: any(n["name"] == node and n["status"] == "ready"
                             for n in c.cli.json("node", "list")), 20, "the fourth node")
        c.cli.run("app", "scale", APP, "4", "--wait", "--timeout", "60")
        assert node in {i["node"] for i in show(c)["instance_list"]}  # spread: it has one
        with Prober(c.router_addr) as probe:
            time.sleep(0.5)
            t0 = time.monotonic()
            engine.stop()
            time.sleep(2)
            engine.start()
            wait_for(lambda: show(c)["status"]["routed"] == 4
                     and show(c)["status"]["healthy"] == 4, 60,
                     "four instances serving again")
            recovered = time.monotonic() - t0
            time.sleep(0.5)
        failed = probe.failed_since(t0)
        where = "on it again" if node in {i["node"] for i in show(c)["instance_list"]} \
            else "elsewhere"
        record("a node's Docker engine restarted", len(failed), probe.sent_since(t0),
               f"4 serving again after {recovered:.1f} s ({where})")
        assert failed == []
        running = docker_ids(f"io.dinp.app={APP}") + [
            cid for cid in engine.docker("ps", "-q", "--filter",
                                         f"label=io.dinp.app={APP}").stdout.split()]
        assert len(running) == 4, running  # no duplicate
    finally:
        c.cli.run("app", "scale", APP, "3", check=False)
        wait_for(lambda: node not in {i["node"] for i in show(c)["instance_list"]}
                 or len(show(c)["instance_list"]) == 3, 30, "back to 3")
        agent.stop()
        engine.close()
        c.cli.run("node", "drain", node, check=False)


def test_a_second_agent_for_a_live_node(cluster: Cluster) -> None:
    c = cluster
    settle(c)
    # A node of one of the cluster's own agents (an earlier test's engine node may run
    # instances too, and has no address here).
    node = next(i["node"] for i in show(c)["instance_list"] if i["node"] in c.addresses)
    env = dict(c.env, DINP_NODE_NAME=node, DINP_ADVERTISE=c.addresses[node],
               DINP_CAPACITY_MB="1024")
    intruder = Proc("intruder", ["agent"], env, c.workdir / "intruder2.log")
    before = docker_ids(f"io.dinp.app={APP}")
    with Prober(c.router_addr) as probe:
        t0 = time.monotonic()
        intruder.start()
        try:
            wait_for(lambda: "refuses this agent" in intruder.output(), 15, "the refusal")
            time.sleep(5)
        finally:
            intruder.stop()
    failed = probe.failed_since(t0)
    record("a second agent started for a live node", len(failed), probe.sent_since(t0),
           "refused with a message on both sides; 0 containers touched")
    assert failed == []
    assert docker_ids(f"io.dinp.app={APP}") == before
