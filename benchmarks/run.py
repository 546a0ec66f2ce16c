"""dinp's platform benchmarks: how fast the control loop turns a wish into served traffic.

Starts the real parts as processes (server on MariaDB + Redis, three agents as three nodes
on 127.0.0.2-4, a router), then measures, from the user's side:
  - create: `dinp app create --instances 3 --wait` until all three serve through the router
    (image already on the node);
  - replace: `docker kill` of an instance until a new container of it serves via the router;
  - node: `kill -9` of an agent until its instances serve elsewhere (default node timeout).
Prints a table; numbers vary with machine load, so compare within one run.

    .venv/bin/python benchmarks/run.py [--rounds N]
"""

from __future__ import annotations

import argparse
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.conftest import IMAGE, Cluster, running_cluster
from tests.support import docker_ids, wait_for

POLL = 0.01


def until(predicate: Callable[[], bool], timeout: float = 60) -> float:
    """Seconds until `predicate` holds, polled every 10 ms."""
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise TimeoutError
        time.sleep(POLL)
    return time.perf_counter() - start


def serving_ids(c: Cluster, host: str, n: int) -> set[str]:
    ids = set()
    for _ in range(n):
        try:
            status, body = c.get(host)
        except OSError:
            continue
        if status == 200:
            ids.add(body.split("instance ")[1].split()[0])
    return ids


def bench_create(c: Cluster, name: str) -> float:
    start = time.perf_counter()
    c.cli.run("app", "create", name, "--image", IMAGE, "--instances", "3", "--memory", "64m",
              "--wait", "--timeout", "60")
    return time.perf_counter() - start


def bench_replace(c: Cluster, name: str) -> float:
    app = c.cli.json("app", "show", name)
    victim = app["instance_list"][0]["id"]
    (old,) = docker_ids(f"io.dinp.instance={victim}")
    subprocess.run(["docker", "kill", old], check=True, capture_output=True)

    def replaced() -> bool:
        ids = docker_ids(f"io.dinp.instance={victim}")
        return bool(ids) and ids != [old] and victim in serving_ids(c, f"{name}.apps.test", 6)

    return until(replaced)


def bench_node(c: Cluster, name: str) -> float:
    app = c.cli.json("app", "show", name)
    node = app["instance_list"][0]["node"]
    lost = {i["id"] for i in app["instance_list"] if i["node"] == node}
    c.agents[node].popen.send_signal(signal.SIGKILL)  # type: ignore[union-attr]

    def moved() -> bool:
        a = c.cli.json("app", "show", name)
        ids = {i["id"] for i in a["instance_list"] if i["node"] != node}
        return len(ids) == 3 and a["status"]["routed"] == 3 and not (lost & ids) and \
            ids == serving_ids(c, f"{name}.apps.test", 9)

    took = until(moved)
    c.agents[node].popen.wait()  # type: ignore[union-attr]
    c.agent(node).start()  # back for the next round
    wait_for(lambda: not docker_ids(f"io.dinp.node={node}", f"io.dinp.app={name}")
             and {n["name"]: n["status"] for n in c.cli.json("node", "list")}[node] == "ready",
             30, "the node to come back clean")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="dinp-bench-"))
    results: dict[str, list[float]] = {"create": [], "replace": [], "node": []}
    with running_cluster(workdir, f"bench{secrets.token_hex(2)}") as c:
        subprocess.run(["docker", "image", "inspect", IMAGE], check=True,
                       capture_output=True)  # the image is on the node already
        for r in range(args.rounds):
            app = f"b{r}"
            results["create"].append(bench_create(c, app))
            results["replace"].append(bench_replace(c, app))
            results["node"].append(bench_node(c, app))
            c.cli.run("app", "delete", app, "--yes")
    goals = {"create": 2.0, "replace": 3.0, "node": 10.0}
    labels = {
        "create": "app create --instances 3 --wait → all 3 serve via router",
        "replace": "docker kill an instance → replacement serves via router",
        "node": "kill -9 an agent → its instances serve on other nodes",
    }
    print(f"\ndinp platform benchmark ({args.rounds} rounds, node_timeout 6 s, "
          f"heartbeat 2 s)\n")
    print(f"{'measure':58} {'median':>8} {'min':>7} {'max':>7} {'goal':>6}")
    for key, values in results.items():
        print(f"{labels[key]:58} {statistics.median(values):7.2f}s {min(values):6.2f}s "
              f"{max(values):6.2f}s {goals[key]:5.1f}s")


if __name__ == "__main__":
    main()
