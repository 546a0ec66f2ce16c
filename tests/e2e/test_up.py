"""`dinp up`: the whole platform in one process, used right after with no login step."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    Dinp,
    Proc,
    base_env,
    docker_ids,
    free_port,
    http_get,
    remove_node_containers,
    wait_for,
)

IMAGE = "dinp-examples/hello:2"  # already on the machine: no registry involved


class Up:
    def __init__(self, workdir: Path, node: str = "") -> None:
        self.node = node or f"up{secrets.token_hex(3)}"
        self.http_port, api_port, admin_port = free_port(), free_port(), free_port()
        self.env = base_env(workdir, DINP_NODE_NAME=self.node)
        self.args = ["up", "--state-dir", str(workdir / "state"), "--http-port",
                     str(self.http_port), "--api-port", str(api_port), "--admin-port",
                     str(admin_port)]
        self.proc = Proc("up", self.args, self.env, workdir / "up.log")
        self.cli = Dinp(self.env)  # no DINP_SERVER, no DINP_TOKEN: `dinp up` set them up

    def get(self, host: str) -> tuple[int, str]:
        return http_get(f"127.0.0.1:{self.http_port}", host)

    def instances_served(self, requests: int) -> Counter[str]:
        seen: Counter[str] = Counter()
        for _ in range(requests):
            status, body = self.get("hello.localhost")
            assert status == 200, body
            seen[body.split("instance ")[1].split()[0]] += 1
        return seen


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    u = Up(tmp_path_factory.mktemp("up"))
    u.proc.start()
    try:
        wait_for(lambda: u.cli.run("app", "list", check=False).returncode == 0, 30,
                 "dinp up to answer the CLI")
        yield u
    except BaseException:
        print(u.proc.output()[-5000:])
        raise
    finally:
        u.proc.stop()
        remove_node_containers(u.node)


def test_create_right_after_up_serves_on_localhost(up: Up) -> None:
    up.cli.run("app", "create", "hello", "--image", IMAGE, "--instances", "3", "--memory",
               "64m", "--wait", "--timeout", "60")
    app = up.cli.json("app", "show", "hello")
    assert app["url"] == f"http://hello.localhost:{up.http_port}/"
    assert app["status"] == {"placed": 3, "running": 3, "healthy": 3, "routed": 3}
    assert set(up.instances_served(15)) == {i["id"] for i in app["instance_list"]}
    assert up.get("other.localhost")[0] == 404


def test_killed_instance_is_replaced(up: Up) -> None:
    app = up.cli.json("app", "show", "hello")
    victim = app["instance_list"][1]
    (container,) = docker_ids(f"io.dinp.instance={victim['id']}")
    subprocess.run(["docker", "kill", container], check=True, capture_output=True)

    def replaced_and_routed() -> bool:
        a = up.cli.json("app", "show", "hello")
        new = next(i for i in a["instance_list"] if i["id"] == victim["id"])
        return (a["status"]["routed"] == 3 and new["routed"]
                and new["address"] != victim["address"])

    wait_for(replaced_and_routed, 15, "the killed instance to be replaced and routed")
    assert docker_ids(f"io.dinp.instance={victim['id']}") not in ([], [container])
    victim = victim["id"]
    assert victim in up.instances_served(15)


def test_app_logs_in_one_process_show_requests_and_the_killed_container(up: Up) -> None:
    """`dinp up`'s agent serves logs to its server in the same process: the requests
    just served, and the last lines of the container killed above, kept once it was
    replaced, with how it ended."""
    up.instances_served(6)
    lines = [json.loads(x) for x in
             up.cli.run("app", "logs", "hello", "--json").stdout.splitlines()]
    assert [x for x in lines if "warning" in x] == []
    assert {x["node"] for x in lines} == {up.node}
    assert [x for x in lines if "response:200" in x["line"] and not x.get("gone")]
    assert [x for x in lines if x["stream"] == "dinp" and x.get("gone")
            and x["line"] == "exited with code 137"]


def test_scale_and_restart_keep_containers(up: Up) -> None:
    up.cli.run("app", "scale", "hello", "1", "--wait", "--timeout", "60")
    wait_for(lambda: len(docker_ids(f"io.dinp.node={up.node}")) == 1, 20,
             "scale down to one container")
    before = docker_ids(f"io.dinp.node={up.node}")
    assert up.proc.stop(), "dinp up must exit by itself on SIGTERM"
    assert docker_ids(f"io.dinp.node={up.node}") == before  # stopping dinp keeps apps running
    up.proc.start()
    wait_for(lambda: up.get("hello.localhost")[0] == 200, 30, "serving after restart")
    wait_for(lambda: up.cli.json("app", "show", "hello")["status"]["routed"] == 1, 15,
             "the instance routed again")
    assert docker_ids(f"io.dinp.node={up.node}") == before  # adopted, not recreated


def test_two_dinp_up_with_one_node_name_on_one_engine_leave_each_other_alone(
    tmp_path: Path,
) -> None:
    """Every `dinp up` calls its node `local` unless told otherwise: two of them on one
    Docker engine must not take each other's containers for their own."""
    node = f"up{secrets.token_hex(3)}"
    for part in ("a", "b"):
        (tmp_path / part).mkdir()
    ups = [Up(tmp_path / "a", node), Up(tmp_path / "b", node)]
    try:
        for u in ups:
            u.proc.start()
        for u in ups:
            wait_for(lambda u=u: u.cli.run("app", "list", check=False).returncode == 0, 30,
                     "dinp up to answer the CLI")
            u.cli.run("app", "create", "hello", "--image", IMAGE, "--instances", "2",
                      "--memory", "32m", "--wait", "--timeout", "60")
        ids = [{i["id"] for i in u.cli.json("app", "show", "hello")["instance_list"]}
               for u in ups]
        assert not ids[0] & ids[1]
        before = docker_ids(f"io.dinp.node={node}")
        assert len(before) == 4
        deadline, failed = time.monotonic() + 8, 0  # past a node timeout and many beats
        while time.monotonic() < deadline:
            for u, mine in zip(ups, ids, strict=True):
                status, body = u.get("hello.localhost")
                failed += status != 200 or body.split("instance ")[1].split()[0] not in mine
            time.sleep(0.05)
        assert failed == 0
        assert docker_ids(f"io.dinp.node={node}") == before  # nothing stopped or replaced
        for u in ups:
            assert "stopping" not in u.proc.output()
    except BaseException:
        for u in ups:
            print(u.proc.output()[-3000:])
        raise
    finally:
        for u in ups:
            u.proc.stop()
        remove_node_containers(node)
