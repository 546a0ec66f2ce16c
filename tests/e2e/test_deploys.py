"""Changing an app under load: every request through a real router is counted while the
app is deployed, rolled back, restarted, given env vars and scaled down.

Each answer must be a 200 from an instance of the release being rolled out or the one
before it. Zero failed requests is the goal for each change.
"""

from __future__ import annotations

import json
import re
import secrets
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import IMAGE, Cluster, running_cluster
from tests.support import Prober, docker_ids, http_get, local_image, wait_for

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # The agents' own stop timeout is short: an app's stop grace must be what counts.
    with running_cluster(tmp_path_factory.mktemp("deploys"), f"d{secrets.token_hex(3)}",
                         env={"DINP_STOP_TIMEOUT": "1"}) as c:
        yield c


def releases_seen(probe: Prober) -> set[int]:
    return {int(m.group(1)) for body in probe.bodies
            if (m := re.search(r"release (\d+)", body))}


def change_under_load(c: Cluster, app: str, *args: str) -> tuple[Prober, dict[str, Any]]:
    """Run `dinp app <args> --wait` while a prober counts answers; return both."""
    with Prober(c.router_addr, f"{app}.apps.test") as probe:
        time.sleep(0.5)
        c.cli.run("app", *args, "--wait", "--timeout", "90", timeout=120)
        time.sleep(1.5)  # the old instances leave after the new ones serve
    shown: dict[str, Any] = c.cli.json("app", "show", app)
    return probe, shown


def assert_clean(probe: Prober, before: int, after: int) -> None:
    failed = [(t, s) for t, s in probe.answers if s != 200]
    assert failed == [], f"{len(failed)} of {len(probe.answers)} failed: {failed[:5]}"
    assert len(probe.answers) > 50
    assert releases_seen(probe) <= {before, after}
    last = probe.bodies[-20:]
    assert all(f"release {after}" in b for b in last), last


@pytest.mark.parametrize("count", [3, 10])
def test_a_rolling_deploy_drops_no_request(cluster: Cluster, count: int) -> None:
    c = cluster
    app = f"roll{count}"
    c.cli.run("app", "create", app, "--image", IMAGE, "--instances", str(count),
              "--memory", "32m", "--wait", "--timeout", "90")
    probe, shown = change_under_load(c, app, "deploy", app, "--env", "COLOR=blue")
    assert shown["release"] == 2
    assert {i["release"] for i in shown["instance_list"]} == {2}
    assert len(shown["instance_list"]) == count
    assert_clean(probe, 1, 2)
    wait_for(lambda: len(docker_ids(f"io.dinp.app={app}")) == count, 20,
             "the old containers to be gone")


def test_env_restart_rollback_and_scale_down_drop_no_request(cluster: Cluster) -> None:
    c = cluster
    app = "changes"
    c.cli.run("app", "create", app, "--image", IMAGE, "--instances", "3", "--memory",
              "32m", "--env", "A=1", "--wait", "--timeout", "90")
    probe, shown = change_under_load(c, app, "env", "set", app, "B=2")
    assert shown["env"] == {"A": None, "B": None}  # values only when asked for
    assert c.cli.json("app", "env", "list", app, "--show-values") == {"A": "1", "B": "2"}
    assert_clean(probe, 1, 2)
    probe, shown = change_under_load(c, app, "restart", app)
    assert_clean(probe, 2, 3)
    probe, shown = change_under_load(c, app, "rollback", app, "1")
    assert shown["release"] == 4
    assert c.cli.json("app", "env", "list", app, "--show-values") == {"A": "1"}
    assert_clean(probe, 3, 4)
    probe, shown = change_under_load(c, app, "scale", app, "1")
    assert len(shown["instance_list"]) == 1
    assert_clean(probe, 4, 4)
    releases = c.cli.json("app", "releases", app)
    assert [(r["version"], r["change"]) for r in releases] == [
        (4, "rollback to 1"), (3, "restart"), (2, "set B"), (1, f"created from {IMAGE}")]


@pytest.fixture(scope="module")
def crash_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An image whose app writes a line and exits 3 at once: a release that crashes."""
    with local_image(tmp_path_factory.mktemp("crash"), "crash", {"Dockerfile": (
            'FROM dinp/busybox:1\n'
            'CMD ["/bin/sh", "-c", "echo boom: no DATABASE_URL >&2; exit 3"]\n')}) as tag:
        yield tag


@pytest.mark.parametrize("case", ["missing-image", "never-healthy", "crash"])
def test_a_release_that_cannot_come_up_is_halted_while_the_old_one_serves(
    cluster: Cluster, crash_image: str, case: str
) -> None:
    c = cluster
    app = f"bad-{case}"
    args, reason = {
        "missing-image": (["--image", "127.0.0.1:5000/no-such-image:1"], "no-such-image"),
        "never-healthy": (["--health-path", "/no-such-page"], "health check: GET "
                          "/no-such-page answered 'HTTP/1.1 404 Not Found'"),
        "crash": (["--image", crash_image], "exited with code 3"),
    }[case]
    c.cli.run("app", "create", app, "--image", IMAGE, "--instances", "2", "--memory", "32m",
              "--deploy-timeout", "8", "--wait", "--timeout", "60")
    with Prober(c.router_addr, f"{app}.apps.test") as probe:
        time.sleep(0.3)
        result = c.cli.run("app", "deploy", app, *args, "--wait", "--timeout", "60",
                           "--json", check=False, timeout=90)
        time.sleep(0.5)
    assert result.returncode == 9, result.stdout + result.stderr  # DeployFailed
    assert "release 2 failed" in result.stderr and reason in result.stderr
    outcome = json.loads(result.stdout)  # a pipeline gets the outcome as JSON too
    assert outcome["outcome"] == "halted" and outcome["rollout"]["failed_release"] == 2
    assert reason in outcome["error"]
    failed = [(t, s) for t, s in probe.answers if s != 200]
    assert failed == [] and len(probe.answers) > 100
    assert releases_seen(probe) == {1}  # the old release served every request
    shown = c.cli.json("app", "show", app)
    assert shown["release"] == 1 and shown["state"].startswith("deploy of release 2 failed")
    rows = c.cli.json("app", "releases", app)
    assert [(r["version"], r["status"]) for r in rows] == [(2, "failed"), (1, "deployed")]
    assert reason in rows[0]["failure"]
    wait_for(lambda: len(docker_ids(f"io.dinp.app={app}")) == 2, 30,
             "the failed release's containers to go")


def test_a_custom_domain_routes_through_the_router_and_stops_when_removed(
        cluster: Cluster) -> None:
    c = cluster
    c.cli.run("app", "create", "site", "--image", IMAGE, "--instances", "1", "--memory",
              "32m", "--wait", "--timeout", "60")
    c.cli.run("app", "domains", "add", "site", "Shop.Example.ORG")
    wait_for(lambda: c.get("shop.example.org")[0] == 200, 10, "the domain to route")
    status, body = c.get("SHOP.example.org:80")  # any case, with a port
    assert status == 200 and "hello from site" in body
    assert [d["domain"] for d in c.cli.json("app", "domains", "list", "site")] == [
        "shop.example.org"]
    c.cli.run("app", "create", "site2", "--image", IMAGE, "--instances", "0")
    other = c.cli.run("app", "domains", "add", "site2", "shop.example.org", check=False)
    assert other.returncode == 4 and "routed to app 'site'" in other.stderr
    c.cli.run("app", "domains", "remove", "site", "shop.example.org")
    wait_for(lambda: c.get("shop.example.org")[0] == 404, 10, "the domain to stop routing")


def test_dinp_deploy_builds_pushes_and_rolls_out_an_archive(cluster: Cluster,
                                                            tmp_path: Path) -> None:
    """What a CI step runs: from the example's sources to a release serving, in one verb."""
    c = cluster
    c.cli.run("app", "create", "pyapp", "--image", IMAGE, "--instances", "2", "--memory",
              "64m", "--wait", "--timeout", "60")
    archive = tmp_path / "python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(EXAMPLES / "python", arcname=".")
    with Prober(c.router_addr, "pyapp.apps.test") as probe:
        result = c.cli.run("deploy", str(archive), "--app", "pyapp", "--version",
                           f"ci-{secrets.token_hex(3)}", "--wait", "--timeout", "120",
                           "--json", "--quiet", timeout=300)
        time.sleep(1.5)
    shown = json.loads(result.stdout)
    assert shown["release"] == 2 and "@sha256:" in shown["image"]  # deployed by digest
    assert shown["outcome"] == "serving"
    assert [(t, s) for t, s in probe.answers if s != 200] == []
    assert "hello from python" in probe.bodies[-1]
    wait_for(lambda: len(docker_ids("io.dinp.app=pyapp")) == 2, 20, "the old ones to go")
    missing = c.cli.run("deploy", str(archive), "--app", "no-such-app", check=False)
    assert missing.returncode == 3 and "no app named 'no-such-app'" in missing.stderr


def test_draining_a_node_moves_its_instances_and_drops_no_request(cluster: Cluster) -> None:
    c = cluster
    c.cli.run("app", "create", "drainy", "--image", IMAGE, "--instances", "3", "--memory",
              "32m", "--wait", "--timeout", "60")
    node = c.cli.json("app", "show", "drainy")["instance_list"][0]["node"]
    with Prober(c.router_addr, "drainy.apps.test") as probe:
        time.sleep(0.3)
        c.cli.run("node", "drain", node)

        def moved() -> bool:
            a = c.cli.json("app", "show", "drainy")
            return (node not in {i["node"] for i in a["instance_list"]}
                    and a["status"]["routed"] == 3)

        wait_for(moved, 30, "the instances to leave the drained node")
        wait_for(lambda: not docker_ids(f"io.dinp.node={node}", "io.dinp.app=drainy"), 20,
                 "the drained node's containers to stop")
    assert [(t, s) for t, s in probe.answers if s != 200] == []

    def emptied() -> bool:  # the module's other apps may have had instances there too
        shown = {n["name"]: n for n in c.cli.json("node", "list")}[node]
        assert shown["status"] == "draining"
        return bool(shown["instances"] == 0)

    wait_for(emptied, 30, "every app's instances to leave the drained node")
    c.cli.run("node", "drain", node, "--undo")
    assert {n["name"]: n["status"] for n in c.cli.json("node", "list")}[node] == "ready"
    missing = c.cli.run("node", "drain", "no-such-node", check=False)
    assert missing.returncode == 3


@pytest.fixture(scope="module")
def graceful_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """busybox httpd with a CGI that takes 4 s; on SIGTERM it stops accepting and exits
    only once its requests in flight are done (5 s later), as a well-behaved app does."""
    with local_image(tmp_path_factory.mktemp("graceful"), "graceful", {
        "slow": '#!/bin/sh\nsleep 4\nprintf "Content-Type: text/plain\\r\\n\\r\\nslow done\\n"\n',
        "start.sh": ('httpd -f -p "${PORT:-8080}" -h /www &\npid=$!\n'
                     'trap \'kill -TERM "$pid"; sleep 5; exit 0\' TERM\nwait "$pid"\n'),
        "Dockerfile": ("FROM dinp/busybox:1\nCOPY slow /www/cgi-bin/slow\n"
                       "COPY start.sh /start.sh\n"
                       "RUN chmod 755 /www/cgi-bin/slow && echo ok > /www/health\n"
                       'CMD ["/bin/sh", "/start.sh"]\n'),
    }) as tag:
        yield tag


def test_requests_in_flight_finish_when_their_instance_leaves(
        cluster: Cluster, graceful_image: str) -> None:
    """Slow requests still running on the old instances when a rollout unroutes and stops
    them: SIGTERM, then the app's stop grace (8 s, where the agents' own default here is
    1 s) lets them finish. Every one answers 200."""
    c = cluster
    c.cli.run("app", "create", "graceful", "--image", graceful_image, "--instances", "2",
              "--memory", "32m", "--stop-grace", "8", "--health-path", "/health", "--wait",
              "--timeout", "60")
    old = {i["id"] for i in c.cli.json("app", "show", "graceful")["instance_list"]}
    answers: list[tuple[int, str]] = []

    def slow_request() -> None:
        try:
            answers.append(http_get(c.router_addr, "graceful.apps.test", "/cgi-bin/slow",
                                    timeout=20))
        except OSError as exc:
            answers.append((0, repr(exc)))

    # Slow requests keep starting through the first seconds of the rollout: some are
    # in flight on an old instance when it is told to stop.
    threads = [threading.Thread(target=slow_request) for _ in range(8)]
    for n, t in enumerate(threads):
        t.start()
        if n == 0:
            c.cli.run("app", "restart", "graceful")
        time.sleep(0.4)
    for t in threads:
        t.join(30)
    shown = c.cli.json("app", "show", "graceful")
    assert answers == [(200, "slow done\n")] * 8
    wait_for(lambda: not old & {i["id"] for i in c.cli.json(
        "app", "show", "graceful")["instance_list"]}, 30, "the old instances to leave")
    assert shown["stop_grace"] == 8
