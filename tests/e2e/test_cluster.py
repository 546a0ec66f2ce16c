"""The whole platform as processes: a server, three agents as three nodes, a router.

Each test acts as a user: the `dinp` CLI, `docker`, `kill`, and HTTP through the router.
The tests share one cluster and run in file order; each makes its own app.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from typing import Any

from tests.e2e.conftest import IMAGE, Cluster
from tests.support import Proc, docker_ids, http_request, wait_for


def served_instances(c: Cluster, host: str, requests: int) -> Counter[str]:
    """Which instances answered `requests` requests through the router (by their text)."""
    seen: Counter[str] = Counter()
    for _ in range(requests):
        status, body = c.get(host)
        assert status == 200, (status, body)
        seen[body.split("instance ")[1].split()[0]] += 1
    return seen


def show(c: Cluster, app: str) -> dict[str, Any]:
    data: dict[str, Any] = c.cli.json("app", "show", app)
    return data


def test_create_spreads_across_nodes_and_serves_through_router(cluster: Cluster) -> None:
    c = cluster
    result = c.cli.run("app", "create", "web", "--image", IMAGE, "--instances", "3",
                       "--memory", "64m", "--wait", "--timeout", "60")
    assert "created web" in result.stdout
    app = show(c, "web")
    assert app["url"] == f"http://web.apps.test:{c.router_addr.split(':')[1]}/"
    nodes = Counter(i["node"] for i in app["instance_list"])
    assert sorted(nodes.values()) == [1, 1, 1], nodes  # spread: one per node
    assert {i["health"] for i in app["instance_list"]} == {"healthy"}
    addresses = {i["address"].split(":")[0] for i in app["instance_list"]}
    assert addresses == set(c.addresses.values())
    ids = {i["id"] for i in app["instance_list"]}
    seen = served_instances(c, "web.apps.test", 30)
    assert set(seen) == ids  # every instance answers through the router
    assert min(seen.values()) >= 5  # round robin, not one favourite


def test_unknown_host_is_404_and_app_without_instances_is_503(cluster: Cluster) -> None:
    c = cluster
    status, headers, body = http_request(c.router_addr, "nope.apps.test")
    assert status == 404 and "nope.apps.test" in body
    assert headers["x-dinp-error"] == "404"  # the router answered, not an app
    c.cli.run("app", "create", "idle", "--image", IMAGE, "--instances", "0", "--memory", "32m")
    wait_for(lambda: c.get("idle.apps.test")[0] == 503, 10, "503 for an app with no instance")


def test_bad_input_is_refused_and_creates_nothing(cluster: Cluster) -> None:
    c = cluster
    cases = [
        (["app", "create", "Bad_Name", "--image", IMAGE], "name"),
        (["app", "create", "okname", "--image", IMAGE, "--memory", "lots"], "memory"),
        (["app", "create", "okname", "--image", IMAGE, "--memory", "999g"], "memory"),
        (["app", "create", "okname", "--image", "NOT AN IMAGE"], "image"),
        (["app", "create", "okname", "--image", IMAGE, "--env", "1X=y"], "env"),
        (["app", "create", "okname", "--image", IMAGE, "--instances", "1000"], "instances"),
        (["app", "create", "api", "--image", IMAGE], "reserved"),
    ]
    for args, word in cases:
        result = c.cli.run(*args, check=False)
        assert result.returncode != 0, args
        assert word in (result.stderr + result.stdout).lower(), (args, result.stderr)
        assert "Traceback" not in result.stderr
    names = {a["name"] for a in c.cli.json("app", "list")}
    assert "okname" not in names and "api" not in names


def test_wait_fails_clearly_when_the_image_cannot_run(cluster: Cluster) -> None:
    c = cluster
    result = c.cli.run("app", "create", "broken", "--image", "127.0.0.1:5000/no-such:1",
                       "--instances", "1", "--memory", "32m", "--wait", "--timeout", "8",
                       check=False)
    assert result.returncode == 7, result.stderr  # Timeout
    assert "broken is not serving after 8 s" in result.stderr
    assert "no-such" in result.stderr  # the agent's reason reached the user
    instance = show(c, "broken")["instance_list"][0]
    assert instance["state"] == "pending" and "no-such" in instance["error"]
    c.cli.run("app", "delete", "broken", "--yes")


def test_scale_up_then_down(cluster: Cluster) -> None:
    c = cluster
    c.cli.run("app", "create", "scaly", "--image", IMAGE, "--instances", "2", "--memory", "64m",
              "--wait", "--timeout", "60")
    c.cli.run("app", "scale", "scaly", "5", "--wait", "--timeout", "60")
    app = show(c, "scaly")
    assert len(app["instance_list"]) == 5
    assert max(Counter(i["node"] for i in app["instance_list"]).values()) == 2  # 2+2+1
    assert set(served_instances(c, "scaly.apps.test", 40)) == {i["id"] for i in
                                                                 app["instance_list"]}
    c.cli.run("app", "scale", "scaly", "1", "--wait", "--timeout", "60")
    app = show(c, "scaly")
    (only,) = app["instance_list"]
    wait_for(lambda: len(docker_ids("io.dinp.app=scaly")) == 1, 20, "extra containers to stop")
    assert set(served_instances(c, "scaly.apps.test", 5)) == {only["id"]}


def test_killed_container_is_replaced_and_rerouted(cluster: Cluster) -> None:
    c = cluster
    app = show(c, "web")
    victim = app["instance_list"][0]
    (container,) = docker_ids(f"io.dinp.instance={victim['id']}")
    subprocess.run(["docker", "kill", container], check=True, capture_output=True)
    wait_for(lambda: docker_ids(f"io.dinp.instance={victim['id']}") not in ([], [container]),
             15, "a new container for the killed instance")

    def replaced_and_routed() -> bool:
        a = show(c, "web")
        new = next(i for i in a["instance_list"] if i["id"] == victim["id"])
        return (a["status"]["healthy"] == 3 and a["status"]["routed"] == 3 and new["routed"]
                and new["address"] != victim["address"])

    wait_for(replaced_and_routed, 15, "the killed instance to be replaced and routed")
    assert victim["id"] in served_instances(c, "web.apps.test", 30)


def test_server_restart_recreates_nothing_and_traffic_continues(cluster: Cluster) -> None:
    c = cluster
    before = docker_ids("io.dinp.app=web")
    assert c.server.stop(), "the server must exit by itself on SIGTERM"
    assert c.get("web.apps.test")[0] == 200  # the router keeps its table
    c.server.start()
    wait_for(lambda: c.cli.run("app", "show", "web", check=False).returncode == 0, 20,
             "the server to come back")
    deadline = time.monotonic() + 8  # past the node timeout: the server has acted by now
    failures = 0
    while time.monotonic() < deadline:
        failures += c.get("web.apps.test")[0] != 200
        time.sleep(0.05)
    assert failures == 0
    assert docker_ids("io.dinp.app=web") == before
    assert show(c, "web")["status"]["routed"] == 3


def test_dead_node_instances_move_and_come_back_without_duplicates(cluster: Cluster) -> None:
    c = cluster
    app = show(c, "web")
    victim_node = app["instance_list"][0]["node"]
    moved = [i["id"] for i in app["instance_list"] if i["node"] == victim_node]
    c.agents[victim_node].popen.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    c.agents[victim_node].popen.wait()  # type: ignore[union-attr]

    def moved_elsewhere() -> bool:
        a = show(c, "web")
        nodes = {i["node"] for i in a["instance_list"]}
        return (victim_node not in nodes and a["status"]["healthy"] == 3
                and a["status"]["routed"] == 3)

    wait_for(moved_elsewhere, 6 + 8, "instances of the dead node to serve elsewhere")
    new_ids = {i["id"] for i in show(c, "web")["instance_list"]}
    assert not set(moved) & new_ids
    assert set(served_instances(c, "web.apps.test", 30)) == new_ids
    # The old containers still run on the silent node: the server never deleted them.
    assert docker_ids(f"io.dinp.node={victim_node}", "io.dinp.app=web")

    c.agent(victim_node).start()
    wait_for(lambda: not docker_ids(f"io.dinp.node={victim_node}", "io.dinp.app=web"), 20,
             "the returning node to stop the instances that moved")
    wait_for(lambda: {n["name"]: n["status"] for n in c.cli.json("node", "list")}[victim_node]
             == "ready", 10, "the node to be ready again")
    assert len(docker_ids("io.dinp.app=web")) == 3  # no duplicates


def test_a_second_agent_for_a_live_node_is_refused_and_fights_no_one(cluster: Cluster) -> None:
    c = cluster
    wait_for(lambda: show(c, "web")["status"]["routed"] == 3, 20, "web to serve at full count")
    node = show(c, "web")["instance_list"][0]["node"]
    before = docker_ids(f"io.dinp.node={node}")
    env = dict(c.env, DINP_NODE_NAME=node, DINP_ADVERTISE=c.addresses[node],
               DINP_CAPACITY_MB="1024")
    intruder = Proc("intruder", ["agent"], env, c.workdir / "intruder.log").start()
    try:
        wait_for(lambda: "refuses this agent" in intruder.output(), 15,
                 "the second agent to be refused")
        assert "already run by another agent" in intruder.output()
        assert "--node-name" in intruder.output()
        wait_for(lambda: f"for node {node}" in c.server.output()
                 and "refusing agent" in c.server.output(), 5, "the server to say why")
        # A killed instance on that node comes back as fast as ever: nobody fights over it.
        victim = next(i for i in show(c, "web")["instance_list"] if i["node"] == node)
        (container,) = docker_ids(f"io.dinp.instance={victim['id']}")
        subprocess.run(["docker", "kill", container], check=True, capture_output=True)
        t0 = time.monotonic()
        wait_for(lambda: docker_ids(f"io.dinp.instance={victim['id']}") not in ([], [container]),
                 10, "the killed instance to be replaced")
        replaced_after = time.monotonic() - t0
        time.sleep(4)  # two more heartbeats of each agent
        others = [cid for cid in before if cid != container]
        assert set(others) <= set(docker_ids(f"io.dinp.node={node}"))  # nothing else stopped
        assert len(docker_ids(f"io.dinp.instance={victim['id']}")) == 1
        assert "stopping" not in intruder.output() and "started" not in intruder.output()
        print(f"killed instance replaced in {replaced_after:.2f} s with a second agent running")
    finally:
        intruder.stop()
