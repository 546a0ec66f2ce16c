"""dinp's platform benchmarks: how fast the control loop turns a wish into served traffic.

Starts the real parts as processes (server on MariaDB + Redis, three agents as three nodes
on 127.0.0.2-4, a router), then measures, from the user's side:
  - create: `dinp app create --instances 3 --wait` until all three serve through the router
    (image already on the node);
  - replace: `docker kill` of an instance until a new container of it serves via the router;
  - node: `kill -9` of an agent until its instances serve elsewhere (default node timeout);
  - rollout: `dinp app deploy --wait` of 10 instances (env change: a new release) while wrk
    sends requests through the router; its duration and wrk's failed requests (goal 0);
  - ci deploy: `dinp deploy examples/python --app … --wait`, archive to serving (build,
    push, rollout of 2 instances; base images already made).
Prints a table; numbers vary with machine load, so compare within one run.

    .venv/bin/python benchmarks/run.py [--rounds N]
"""

from __future__ import annotations

import argparse
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tarfile
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


def bench_rollout(c: Cluster, name: str, round_no: int) -> tuple[float, int, int]:
    """(seconds, requests, failed requests) of a 10-instance rolling deploy under wrk."""
    if round_no == 0:
        c.cli.run("app", "create", name, "--image", IMAGE, "--instances", "10", "--memory",
                  "32m", "--wait", "--timeout", "120")
    host, port = c.router_addr.split(":")
    wrk = subprocess.Popen(["wrk", "-t1", "-c16", "-d30s", "--timeout", "5s", "-H",
                            f"Host: {name}.apps.test", f"http://{host}:{port}/"],
                           stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    start = time.perf_counter()
    c.cli.run("app", "deploy", name, "--env", f"ROUND={round_no}", "--wait", "--timeout",
              "120", timeout=150)
    took = time.perf_counter() - start
    wrk.send_signal(signal.SIGINT)  # wrk prints its totals on SIGINT
    out = wrk.communicate(timeout=30)[0]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                       r"timeout (\d+)", out)
    failed = (int(non2xx.group(1)) if non2xx else 0) + (
        sum(map(int, errors.groups())) if errors else 0)
    return took, requests, failed


def bench_ci_deploy(c: Cluster, name: str, round_no: int, workdir: Path) -> float:
    if round_no == 0:
        c.cli.run("app", "create", name, "--image", IMAGE, "--instances", "2", "--memory",
                  "64m", "--wait", "--timeout", "60")
    archive = workdir / f"python-{round_no}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(Path(__file__).resolve().parent.parent / "examples" / "python", arcname=".")
    start = time.perf_counter()
    c.cli.run("deploy", str(archive), "--app", name, "--version", f"bench-{round_no}",
              "--wait", "--timeout", "120", "--quiet", timeout=300)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="dinp-bench-"))
    results: dict[str, list[float]] = {"create": [], "replace": [], "node": [],
                                       "rollout": [], "ci": []}
    served = failed = 0
    with running_cluster(workdir, f"bench{secrets.token_hex(2)}") as c:
        subprocess.run(["docker", "image", "inspect", IMAGE], check=True,
                       capture_output=True)  # the image is on the node already
        for r in range(args.rounds):
            app = f"b{r}"
            results["create"].append(bench_create(c, app))
            results["replace"].append(bench_replace(c, app))
            results["node"].append(bench_node(c, app))
            c.cli.run("app", "delete", app, "--yes")
        for r in range(args.rounds):
            took, requests, lost = bench_rollout(c, "rollout", r)
            results["rollout"].append(took)
            served, failed = served + requests, failed + lost
            results["ci"].append(bench_ci_deploy(c, "ci", r, workdir))
    goals = {"create": 2.0, "replace": 3.0, "node": 10.0, "rollout": 60.0, "ci": 30.0}
    labels = {
        "create": "app create --instances 3 --wait → all 3 serve via router",
        "replace": "docker kill an instance → replacement serves via router",
        "node": "kill -9 an agent → its instances serve on other nodes",
        "rollout": "app deploy --wait, 10 instances under wrk load",
        "ci": "dinp deploy examples/python --wait: archive → serving",
    }
    print(f"\ndinp platform benchmark ({args.rounds} rounds, node_timeout 6 s, "
          f"heartbeat 2 s)\n")
    print(f"{'measure':58} {'median':>8} {'min':>7} {'max':>7} {'goal':>6}")
    for key, values in results.items():
        print(f"{labels[key]:58} {statistics.median(values):7.2f}s {min(values):6.2f}s "
              f"{max(values):6.2f}s {goals[key]:5.1f}s")
    print(f"\nrequests through the router during the rollouts: {served}, failed: {failed} "
          "(goal 0)")


if __name__ == "__main__":
    main()
