"""`dinp app logs` on the platform as processes (a server, three agents as three nodes,
a router), as a user runs it: instances on several nodes merged in time order, a follow
that sees new lines and a new instance and ends on Ctrl-C, a crashed container's last
lines and exit shown once it is gone (and after its agent restarted), a node that is down
named rather than skipped, stalled readers that cost the node's heartbeats nothing, and
who may read what.

The app is the ticker of tests/support.py: each instance prints "<instance> <n>" every
0.1 s (and "<instance> err <n>" on stderr every fifth n). The tests share one cluster and
run in file order."""

from __future__ import annotations

import itertools
import json
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Cluster
from tests.support import DINP, TEST_LABEL, Dinp, base_env, ticker_image, wait_for

APP = "tick"


@pytest.fixture(scope="module")
def ticker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with ticker_image(tmp_path_factory.mktemp("ticker")) as tag:
        yield tag


def logs(c: Cluster, app: str, *args: str) -> list[dict[str, Any]]:
    out = c.cli.run("app", "logs", app, "--json", *args).stdout
    return [json.loads(x) for x in out.splitlines()]


def lines_of(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [x for x in objs if "line" in x]


def show(c: Cluster, app: str) -> dict[str, Any]:
    data: dict[str, Any] = c.cli.json("app", "show", app)
    return data


def count(line: dict[str, Any]) -> int:
    return int(line["line"].split()[-1])


def logs_port(c: Cluster, node: str) -> int:
    """The port the node's agent serves logs on (any free one: its log says which)."""
    found = re.findall(r"app logs served on [0-9.]+:([0-9]+)", c.agents[node].output())
    assert found, c.agents[node].output()[-2000:]
    return int(found[-1])


def agent_logs(c: Cluster, node: str, query: str, token: str | None) -> tuple[int, str]:
    req = urllib.request.Request(f"http://{c.addresses[node]}:{logs_port(c, node)}/logs?"
                                 + query)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_instances_on_two_nodes_merged_in_time_order(cluster: Cluster, ticker: str) -> None:
    c = cluster
    third = sorted(c.addresses)[2]
    c.cli.run("node", "drain", third)  # so that three instances go to two nodes
    try:
        c.cli.run("app", "create", APP, "--image", ticker, "--instances", "3", "--memory",
                  "32m", "--wait", "--timeout", "60")
    finally:
        c.cli.run("node", "drain", third, "--undo")
    where = {i["id"]: i["node"] for i in show(c, APP)["instance_list"]}
    assert len(where) == 3 and len(set(where.values())) == 2, where
    time.sleep(2)  # twenty lines each
    got = lines_of(logs(c, APP, "--tail", "15"))
    assert {x["instance"] for x in got} == set(where)
    assert all(x["node"] == where[x["instance"]] for x in got)
    assert {x["stream"] for x in got} == {"stdout", "stderr"}
    assert all(len([x for x in got if x["instance"] == i]) == 15 for i in where)
    ats = [x["at"] for x in got]
    assert ats == sorted(ats)  # merged by time across nodes ...
    switches = sum(a["node"] != b["node"] for a, b in itertools.pairwise(got))
    assert switches >= 10  # ... interleaved, not one node after the other
    for i in where:  # each instance's own lines in its order
        ns = [count(x) for x in got if x["instance"] == i and x["stream"] == "stdout"]
        assert ns == sorted(ns) and len(set(ns)) == len(ns)
    text = c.cli.run("app", "logs", APP, "--tail", "2").stdout.splitlines()
    assert len(text) == 6
    for row in text:
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} [0-9a-f]{10} \S+ (stdout|stderr) \| "
                            r"[0-9a-f]{10}( err)? \d+", row), row


def test_follow_sees_new_lines_and_a_new_instance_and_stops_on_ctrl_c(
        cluster: Cluster) -> None:
    c = cluster
    before = set(i["id"] for i in show(c, APP)["instance_list"])
    proc = subprocess.Popen([DINP, "app", "logs", APP, "-f", "--json", "--tail", "1"],
                            env=c.cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    seen: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: seen.extend(
        json.loads(x) for x in proc.stdout or []), daemon=True)
    reader.start()
    try:
        started = time.monotonic()
        wait_for(lambda: {x["instance"] for x in lines_of(seen)} == before
                 and len(seen) > 30, 15, "lines of every instance, as they come")
        latency = time.time() - lines_of(seen)[-1]["at"]
        c.cli.run("app", "scale", APP, "4", "--wait", "--timeout", "60")
        (new,) = {i["id"] for i in show(c, APP)["instance_list"]} - before
        wait_for(lambda: len([x for x in seen if x.get("instance") == new]) >= 5, 20,
                 "the new instance's lines")
        assert time.monotonic() - started < 40
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(10)
        finally:
            proc.kill()
    assert rc == 0
    stderr = proc.stderr.read() if proc.stderr else ""
    assert "Traceback" not in stderr and "warning" not in stderr, stderr
    assert latency < 3, latency
    mine = [count(x) for x in seen if x.get("instance") == new and x["stream"] == "stdout"]
    assert mine[:3] == [0, 1, 2]  # all of the new instance's lines, from its first
    for i in before:  # nothing lost, nothing twice, in order, for those followed
        ns = [count(x) for x in seen if x.get("instance") == i and x["stream"] == "stdout"]
        assert ns == list(range(ns[0], ns[0] + len(ns))), (i, ns)


def test_a_crashed_instances_last_lines_are_shown_once_it_is_gone_and_after_a_restart(
        cluster: Cluster, ticker: str) -> None:
    c = cluster
    c.cli.run("app", "create", "crashy", "--image", ticker, "--instances", "1", "--memory",
              "32m", "--env", "CRASH_AFTER=15")
    wait_for(lambda: show(c, "crashy")["instance_list"], 10, "crashy to be placed")
    (inst,) = show(c, "crashy")["instance_list"]

    def kept_crash() -> list[dict[str, Any]]:
        got = lines_of(logs(c, "crashy", "--tail", "5"))
        return [x for x in got if x.get("gone") and x["stream"] == "dinp"] and got

    got = wait_for(kept_crash, 30, "the first crashed container's lines, kept")
    gone = [x for x in got if x.get("gone")]
    assert {x["instance"] for x in gone} == {inst["id"]}
    assert f"{inst['id']} dying: boom" in [x["line"] for x in gone if x["stream"] == "stderr"]
    assert "exited with code 3" in [x["line"] for x in gone if x["stream"] == "dinp"]
    # Only the running replacement (if any) is left of the instance's containers.
    assert len(container_ids(c, f"io.dinp.instance={inst['id']}")) <= 1
    c.cli.run("app", "scale", "crashy", "0", "--wait", "--timeout", "60")
    wait_for(lambda: container_ids(c, "io.dinp.app=crashy") == [], 20, "no container left")
    node = inst["node"]
    c.agents[node].stop()
    c.agent(node).start()
    wait_for(lambda: f"app logs served on {c.addresses[node]}" in c.agents[node].output(),
             15, "the restarted agent to serve logs")
    wait_for(lambda: not [x for x in logs(c, "crashy") if "warning" in x], 20,
             "the server to ask the restarted agent")
    again = logs(c, "crashy", "--tail", "5")
    assert again and all(x.get("gone") and x["node"] == node for x in again)
    assert "exited with code 3" in [x["line"] for x in again if x["stream"] == "dinp"]
    assert f"{inst['id']} dying: boom" in [x["line"] for x in again]


def container_ids(c: Cluster, label: str) -> list[str]:
    """The containers (running or not) with `label` on this cluster's nodes."""
    return [cid for node in c.addresses for cid in subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={label}", "--filter",
         f"label=io.dinp.node={node}"], check=True, capture_output=True, text=True,
    ).stdout.split()]


def test_a_node_that_is_down_is_named_not_skipped(cluster: Cluster) -> None:
    c = cluster
    where = {i["id"]: i["node"] for i in show(c, APP)["instance_list"]}
    node = sorted(set(where.values()))[0]
    c.agents[node].kill()  # the node's agent is gone (its containers run on)
    try:
        got = logs(c, APP, "--tail", "3")
        warnings = [x["warning"] for x in got if "warning" in x]
        assert len(warnings) == 1 and warnings[0].startswith(f"node {node} unreachable:")
        others = {i for i, n in where.items() if n != node}
        assert {x["instance"] for x in lines_of(got)} == others
        result = c.cli.run("app", "logs", APP, "--tail", "1")
        assert f"warning: node {node} unreachable" in result.stderr
    finally:
        c.agent(node).start()
    wait_for(lambda: not [x for x in logs(c, APP, "--tail", "1") if "warning" in x], 20,
             "the node to answer again")


def test_stalled_readers_lose_lines_with_a_marker_and_never_delay_heartbeats(
        cluster: Cluster, ticker: str) -> None:
    c = cluster
    c.cli.run("app", "create", "chatty", "--image", ticker, "--instances", "1", "--memory",
              "32m", "--env", "CHATTY=1", "--wait", "--timeout", "60")
    try:
        node = show(c, "chatty")["instance_list"][0]["node"]
        readers = []
        for _ in range(8):  # more than the default executor has threads
            sock = socket.create_connection((c.addresses[node], logs_port(c, node)))
            sock.sendall(b"GET /logs?app=chatty&tail=0&follow=1 HTTP/1.0\r\nAuthorization: "
                         b"Bearer " + c.env["DINP_CLUSTER_TOKEN"].encode() + b"\r\n\r\n")
            readers.append(sock)
        seen = []
        t_end = time.monotonic() + 7  # three heartbeats
        while time.monotonic() < t_end:  # reading nothing meanwhile
            row = next(n for n in c.cli.json("node", "list") if n["name"] == node)
            seen.append(row["last_seen_s"])
            time.sleep(0.5)
        assert max(seen) < 3.5, seen  # heartbeats every 2 s, as ever
        assert row["status"] == "ready"
        for sock in readers:
            assert first_marker(sock) > 0
    finally:
        c.cli.run("app", "delete", "chatty", "--yes")


def first_marker(sock: socket.socket, timeout: float = 30) -> int:
    """Read a stalled reader's stream until its dropped-lines marker: how many."""
    sock.settimeout(5)
    tail = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and (chunk := sock.recv(1 << 20)):
            seen = tail + chunk
            if b'{"dropped":' in seen:
                return int(seen.split(b'{"dropped":', 1)[1].split(b",", 1)[0])
            tail = seen[-64:]
    finally:
        sock.close()
    raise AssertionError("no dropped-lines marker")


def test_who_may_read_the_logs(cluster: Cluster) -> None:
    c = cluster
    node = sorted(set(i["node"] for i in show(c, APP)["instance_list"]))[0]
    c.cli.run("team", "create", "red")
    made = c.cli.json("user", "create", "bob", "--team", "red")
    bob = Dinp(dict(c.cli.env, DINP_TOKEN=made["token"]))
    result = bob.run("app", "logs", APP, check=False)
    assert result.returncode == 5 and "belongs to team" in result.stderr, result.stderr
    nobody_env = base_env(c.workdir / "nobody", DINP_SERVER=c.env["DINP_SERVER"])
    result = Dinp(nobody_env).run("app", "logs", APP, check=False)
    assert result.returncode == 5 and "missing API token" in result.stderr, result.stderr
    # The agent's port: only the token the agent holds.
    query = f"app={APP}&tail=1"
    assert agent_logs(c, node, query, None)[0] == 401
    assert agent_logs(c, node, query, "not-the-" + c.env["DINP_CLUSTER_TOKEN"])[0] == 401
    status, body = agent_logs(c, node, query, c.env["DINP_CLUSTER_TOKEN"])
    assert status == 200 and body
    # Another cluster's container of the same app on the same node and engine.
    other = subprocess.run(
        ["docker", "run", "-d", "--label", "io.dinp.managed=true", "--label",
         f"io.dinp.node={node}", "--label", f"io.dinp.app={APP}", "--label",
         "io.dinp.instance=0ther0c1us", "--label", "io.dinp.release=1", "--label",
         "io.dinp.cluster=0ther0cluster000", "--label", f"{TEST_LABEL}={node}",
         "--network", "none", "dinp/busybox:1", "sh", "-c",
         "while :; do echo OTHER CLUSTER; sleep 0.1; done"],
        check=True, capture_output=True, text=True).stdout.strip()
    try:
        time.sleep(3)  # listed by the agents' next heartbeat, were it theirs
        status, body = agent_logs(c, node, f"app={APP}&tail=5", c.env["DINP_CLUSTER_TOKEN"])
        assert status == 200 and body and "OTHER CLUSTER" not in body
        assert "OTHER CLUSTER" not in json.dumps(logs(c, APP, "--tail", "5"))
        assert subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", other],
                              capture_output=True, text=True).stdout.strip() == "true"
    finally:
        subprocess.run(["docker", "rm", "-f", other], capture_output=True)
