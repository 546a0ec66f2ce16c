"""The sandbox against the real engine: containers started by `DockerRuntime.start` are
inspected, and then tried from inside (`docker exec`, as the app's user and, where the
point is that not even root could, as uid 0): the root filesystem, capabilities, the
pids limit, the app network. Each check looks at the real thing, so each can fail.

Containers carry a test node name (removed by the `make_node_name` fixture), images the
test label (removed by their fixture), networks the session's or a test's own name.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from dinp import app_network, const
from dinp.container import Container, DockerRuntime, StartFailed
from dinp.errors import ConfigError
from dinp.health import check
from dinp.sandbox import Policy
from dinp.wire import Assignment
from tests.support import TEST_LABEL, TEST_NETWORK, wait_until

pytestmark = pytest.mark.docker

IMAGE = "dinp-examples/hello:2"  # no USER; io.dinp.writable=/www
ADDR = "127.0.0.2"
CLUSTER = secrets.token_hex(8)
NOBODY = "65534:65534"


def assignment(image: str = IMAGE, memory_mb: int = 64, port: int = 8080) -> Assignment:
    return Assignment(id=secrets.token_hex(5), app=f"sb{secrets.token_hex(3)}", release=1,
                      image=image, memory_mb=memory_mb, port=port, env={}, health_path=None)


@pytest.fixture
def make_runtime(docker_client: docker.DockerClient, make_node_name: Callable[[], str],
                 ) -> Iterator[Callable[..., DockerRuntime]]:
    """Runtimes of fresh test nodes on the session's app network, with `policy` changes."""
    made: list[DockerRuntime] = []

    def make(**policy: Any) -> DockerRuntime:
        rt = DockerRuntime(node=make_node_name(), advertise=ADDR, cluster=CLUSTER,
                           policy=Policy(**{"network": TEST_NETWORK, **policy}))
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()


@pytest.fixture
def runtime(make_runtime: Callable[..., DockerRuntime]) -> DockerRuntime:
    return make_runtime(pids_limit=100, tmp_size_mb=8)


def serving(c: Container, path: str = "/health") -> bool:
    """The instance is healthy by the agent's own check and answers 200 on its port."""
    assert c.host_port
    if not asyncio.run(check(ADDR, c.host_port, path)):
        return False
    with urllib.request.urlopen(f"http://{ADDR}:{c.host_port}{path}", timeout=3) as r:
        return r.status == 200


def sh(client: docker.DockerClient, c: Container, script: str,
       user: str = "") -> tuple[int, str]:
    """Run `script` in the container (as its own user, or `user`): (exit code, output)."""
    code, out = client.containers.get(c.id).exec_run(["/bin/sh", "-c", script], user=user)
    return int(code), out.decode(errors="replace")


def inspect(client: docker.DockerClient, c: Container) -> dict[str, Any]:
    return dict(client.api.inspect_container(c.id))


# -- what the engine was told ----------------------------------------------------------------

def test_a_started_container_is_confined(
    make_runtime: Callable[..., DockerRuntime], docker_client: docker.DockerClient
) -> None:
    rt = make_runtime(pids_limit=200, tmp_size_mb=16, cpu_shares_per_gb=1024)
    c = rt.start(assignment(memory_mb=512, port=9000))
    assert wait_until(lambda: serving(c), 15), "the hello app did not become healthy"

    info = inspect(docker_client, c)
    host = info["HostConfig"]
    assert info["Config"]["User"] == NOBODY  # the image has no USER: root otherwise
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Privileged"] is False
    assert host["PidsLimit"] == 200
    assert host["Memory"] == host["MemorySwap"] == 512 << 20
    assert host["CpuShares"] == 512
    assert host["ReadonlyRootfs"] is True
    owner = ",uid=65534,gid=65534"
    assert host["Tmpfs"] == {
        "/tmp": f"rw,nosuid,nodev,exec,size=16m,mode=1777{owner}",
        "/www": f"rw,nosuid,nodev,exec,size=16m,mode=1777{owner}"}
    assert not host.get("Binds") and not host.get("Mounts") and info["Mounts"] == []
    assert not host.get("Devices") and not host.get("VolumesFrom")
    assert host["PidMode"] == "" and host["IpcMode"] == "private"
    assert host["UsernsMode"] == "" and host["UTSMode"] == ""
    assert host["Init"] is True
    network = app_network.ensure(docker_client, TEST_NETWORK)
    assert host["NetworkMode"] == network
    assert list(info["NetworkSettings"]["Networks"]) == [TEST_NETWORK]
    net = docker_client.api.inspect_network(network)
    assert net["Labels"] == {const.LABEL_MANAGED: "true"}
    assert net["Options"][app_network.ICC_OPTION] == "false"
    # The published port is where it was: the node's address only.
    assert [b["HostIp"] for b in host["PortBindings"]["9000/tcp"]] == [ADDR]

    # What the kernel says about the app's process (pid 1 is docker-init, 2 the app).
    _, status = sh(docker_client, c, "cat /proc/1/status")
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["Uid"].split()[0] == "65534"
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert fields[cap].strip() == "0000000000000000", (cap, fields[cap])
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"  # the engine's default profile filters


def test_a_non_root_user_of_the_image_is_kept(
    runtime: DockerRuntime, docker_client: docker.DockerClient, images: dict[str, str]
) -> None:
    c = runtime.start(assignment(images["named"]))
    assert wait_until(lambda: sh(docker_client, c, "true")[0] == 0, 10)
    info = inspect(docker_client, c)
    assert info["Config"]["User"] == "app"
    assert sh(docker_client, c, "id -u; id -g")[1].split() == ["1000", "1000"]
    # Its writable path and its VOLUME are tmpfs owned by it, no volume on the host disk.
    assert set(info["HostConfig"]["Tmpfs"]) == {"/tmp", "/data", "/cache"}
    assert info["Mounts"] == [] and docker_client.api.inspect_container(c.id)["Mounts"] == []
    code, out = sh(docker_client, c, "stat -c %u:%g /data /cache /tmp; "
                   "echo x >/data/f && echo y >/cache/f && cat /data/f /cache/f")
    assert (code, out.split()) == (0, ["1000:1000"] * 3 + ["x", "y"])


def test_a_name_the_image_maps_to_uid_0_runs_as_nobody(
    runtime: DockerRuntime, docker_client: docker.DockerClient, images: dict[str, str]
) -> None:
    c = runtime.start(assignment(images["toor"]))
    assert inspect(docker_client, c)["Config"]["User"] == NOBODY
    assert wait_until(lambda: sh(docker_client, c, "id -u")[1].strip() == "65534", 10)


def test_read_only_false_keeps_a_writable_root_and_the_rest(
    runtime: DockerRuntime, docker_client: docker.DockerClient, images: dict[str, str]
) -> None:
    c = runtime.start(assignment(images["writable-root"]))
    host = inspect(docker_client, c)["HostConfig"]
    assert host["ReadonlyRootfs"] is False
    assert host["CapDrop"] == ["ALL"] and inspect(docker_client, c)["Config"]["User"] == NOBODY
    assert wait_until(lambda: sh(docker_client, c, "true")[0] == 0, 10)
    assert sh(docker_client, c, "echo x >/state/f && cat /state/f") == (0, "x\n")


def test_a_wrong_label_fails_the_start_saying_why(
    runtime: DockerRuntime, images: dict[str, str]
) -> None:
    with pytest.raises(StartFailed, match=r"io\.dinp\.writable: '/proc/x' cannot be made"):
        runtime.start(assignment(images["bad-label"]))
    assert runtime.list() == []  # nothing left behind


# -- from inside -----------------------------------------------------------------------------

def test_inside_the_root_is_read_only_tmp_is_writable_and_no_capability_works(
    runtime: DockerRuntime, docker_client: docker.DockerClient
) -> None:
    c = runtime.start(assignment())
    assert wait_until(lambda: serving(c), 15)

    assert sh(docker_client, c, "id -u")[1].strip() == "65534"
    for who in ("", "0"):  # the app's user, and not even uid 0
        code, out = sh(docker_client, c, "touch /probe", user=who)
        assert code != 0 and "Read-only file system" in out, (who, out)
        code, out = sh(docker_client, c, "echo hi >/app/probe", user=who)
        assert code != 0 and "Read-only file system" in out, (who, out)
    assert sh(docker_client, c, "echo ok >/tmp/probe && cat /tmp/probe") == (0, "ok\n")
    # /tmp holds at most tmp_size_mb (8 here), whatever the container's memory.
    code, out = sh(docker_client, c, "dd if=/dev/zero of=/tmp/big bs=1M count=12 2>&1; "
                   "rm -f /tmp/big")
    assert "No space left on device" in out, out

    # Each would work for root with Docker's default capabilities (CHOWN, MKNOD, NET_RAW).
    for who in ("", "0"):
        code, out = sh(docker_client, c, "touch /tmp/f-$$ && chown 1:1 /tmp/f-$$", user=who)
        assert code != 0 and "Operation not permitted" in out, (who, out)
        code, out = sh(docker_client, c, "mknod /tmp/null-$$ c 1 3", user=who)
        assert code != 0 and "Operation not permitted" in out, (who, out)
        code, out = sh(docker_client, c, "ping -c 1 -W 1 127.0.0.1", user=who)
        assert code != 0 and "permission denied" in out.lower(), (who, out)
    _, status = sh(docker_client, c, "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status",
                   user="0")
    assert status.split() == ["CapEff:", "0000000000000000", "NoNewPrivs:", "1"]
    assert serving(c)  # none of it hurt the app


def test_a_fork_bomb_stops_at_the_pids_limit(
    make_runtime: Callable[..., DockerRuntime], docker_client: docker.DockerClient
) -> None:
    rt = make_runtime(pids_limit=24)
    c = rt.start(assignment())
    assert wait_until(lambda: serving(c), 15)
    started = inspect(docker_client, c)["State"]["StartedAt"]
    pids = Path(f"/sys/fs/cgroup/pids/docker/{c.id}")  # cgroup v1, cgroupfs driver

    # Bounded for the shared machine: at most 200 forks, each child gone after 4 s, the
    # whole under a 20 s timeout; the limit stops it long before.
    code, out = sh(docker_client, c, "timeout 20 sh -c 'i=0; while [ $i -lt 200 ]; do "
                   "sleep 4 & i=$((i+1)); done; echo all forked' 2>&1")
    assert code != 0 and "Resource temporarily unavailable" in out, out
    assert "all forked" not in out, out
    if pids.is_dir():
        assert int((pids / "pids.max").read_text()) == 24
        assert int((pids / "pids.current").read_text()) <= 24
        assert int((pids / "pids.events").read_text().split()[1]) > 0  # forks refused

    # The container, its app and the node survive; once the children end it serves again.
    assert wait_until(lambda: serving(c), 15), "the app did not recover after the bomb"
    state = inspect(docker_client, c)["State"]
    assert state["Running"] and state["StartedAt"] == started and not state["OOMKilled"]
    assert [x.id for x in rt.list()] == [c.id]


@contextlib.contextmanager
def tcp_service(host: str) -> Iterator[int]:
    """A TCP service on the host at `host` (the company's database, say) answering pong."""
    server = socket.create_server((host, 0))
    server.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"pong\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        done.set()
        thread.join(5)
        server.close()


def test_apps_reach_the_outside_but_not_each_other(
    runtime: DockerRuntime, make_runtime: Callable[..., DockerRuntime],
    docker_client: docker.DockerClient
) -> None:
    """(a) another app's container on the network does not answer; (b) a service on the
    host through the network's gateway does; (c) the published ports still serve."""
    a = runtime.start(assignment())
    b = make_runtime().start(assignment())  # another app, on another node of this engine
    for c in (a, b):
        assert wait_until(lambda c=c: serving(c), 15)  # (c), as routers and health checks
    net = inspect(docker_client, a)["NetworkSettings"]["Networks"][TEST_NETWORK]
    a_ip, gateway = net["IPAddress"], net["Gateway"]
    assert inspect(docker_client, b)["NetworkSettings"]["Networks"][TEST_NETWORK][
        "Gateway"] == gateway

    # The host itself reaches a's address: a listens there.
    with urllib.request.urlopen(f"http://{a_ip}:8080/", timeout=3) as r:
        assert r.status == 200 and "hello from" in r.read().decode()
    get = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {a_ip} 8080"
    code, out = sh(docker_client, b, get)
    assert code != 0 and "hello from" not in out, out  # (a)
    with tcp_service(gateway) as port:
        code, out = sh(docker_client, b, f"nc -w 3 {gateway} {port} </dev/null")
        assert (code, out) == (0, "pong\n")  # (b): the same nc, to the outside
    code, out = sh(docker_client, a, get.replace(a_ip, "127.0.0.1"))
    assert "hello from" in out  # a reaches itself: only the bridge between them is cut
    assert serving(a) and serving(b)


# -- the network itself ----------------------------------------------------------------------

@pytest.fixture
def network_name(docker_client: docker.DockerClient) -> Iterator[str]:
    """A network name of this test's own; every network of that name goes afterwards."""
    name = f"dinp-test-{secrets.token_hex(4)}"
    yield name
    for net in docker_client.api.networks(names=[name]):
        if net["Name"] == name:
            with contextlib.suppress(docker.errors.APIError):
                docker_client.api.remove_network(net["Id"])


def named(client: docker.DockerClient, name: str) -> list[dict[str, Any]]:
    return [n for n in client.api.networks(names=[name]) if n["Name"] == name]


def test_racing_agents_make_one_network(docker_client: docker.DockerClient,
                                        network_name: str) -> None:
    ids: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def agent() -> None:
        client = docker.from_env(timeout=60)
        try:
            start.wait()
            ids.append(app_network.ensure(client, network_name))
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=agent) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(ids) == 4
    # Racing creates may make several; every agent took the same one, the others went.
    assert len(set(ids)) == 1
    assert app_network.ensure(docker_client, network_name) == ids[0]
    assert [n["Id"] for n in named(docker_client, network_name)] == [ids[0]]


def test_an_agents_first_starts_at_once_share_one_new_network(
    docker_client: docker.DockerClient, network_name: str,
    make_runtime: Callable[..., DockerRuntime],
) -> None:
    """A fresh node's first deploy starts several instances at once: none of them may
    fail because they all found the network missing."""
    rt = make_runtime(network=network_name)
    started: list[Container] = []
    errors: list[BaseException] = []
    # All four reach the network at the same moment (right after reading the image).
    together = threading.Barrier(4)
    read_image = rt._facts

    def facts(*args: Any) -> Any:
        together.wait(30)
        return read_image(*args)

    rt._facts = facts  # type: ignore[method-assign]

    def start() -> None:
        try:
            started.append(rt.start(assignment()))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(started) == 4
    assert len(named(docker_client, network_name)) == 1
    for c in started:
        assert list(inspect(docker_client, c)["NetworkSettings"]["Networks"]) == [network_name]
        rt.stop(c, timeout=1)


def test_a_duplicate_in_use_is_left_until_its_containers_are_gone(
    docker_client: docker.DockerClient, network_name: str, make_node_name: Callable[[], str]
) -> None:
    def make() -> str:
        return str(docker_client.api.create_network(
            network_name, options={app_network.ICC_OPTION: "false"},
            labels={const.LABEL_MANAGED: "true"})["Id"])

    first = make()
    time.sleep(0.01)
    second = make()  # what a race leaves behind, and a container uses it
    user = docker_client.containers.run(
        "dinp/busybox:1", ["sleep", "60"], detach=True, labels={TEST_LABEL: make_node_name()})
    try:
        # (The engine starts no container on a name two networks share; one can join by id.)
        docker_client.api.connect_container_to_network(user.id, second)
        assert app_network.ensure(docker_client, network_name) == first
        assert {n["Id"] for n in named(docker_client, network_name)} == {first, second}
    finally:
        user.remove(force=True)
    assert app_network.ensure(docker_client, network_name) == first
    assert [n["Id"] for n in named(docker_client, network_name)] == [first]


def test_a_network_dinp_did_not_make_is_refused_and_untouched(
    docker_client: docker.DockerClient, network_name: str,
    make_runtime: Callable[..., DockerRuntime],
) -> None:
    theirs = docker_client.api.create_network(network_name, labels={TEST_LABEL: "x"})["Id"]
    with pytest.raises(ConfigError, match="dinp did not make"):
        app_network.ensure(docker_client, network_name)
    rt = make_runtime(network=network_name)
    with pytest.raises(StartFailed, match=f"a network named {network_name} exists that dinp"):
        rt.start(assignment())
    assert rt.list() == []
    assert [n["Id"] for n in named(docker_client, network_name)] == [theirs]
    assert docker_client.api.inspect_network(theirs)["Containers"] == {}


def test_a_network_of_ours_that_lets_containers_talk_is_refused(
    docker_client: docker.DockerClient, network_name: str
) -> None:
    docker_client.api.create_network(network_name, labels={const.LABEL_MANAGED: "true"})
    with pytest.raises(ConfigError, match="reach each other"):
        app_network.ensure(docker_client, network_name)
    assert len(named(docker_client, network_name)) == 1


# -- images that say things ------------------------------------------------------------------

DOCKERFILES = {
    # A user of its own, a path it writes and a VOLUME.
    "named": 'FROM dinp/busybox:1\n'
             'RUN echo "app:x:1000:1000::/:/bin/sh" >>/etc/passwd '
             '&& echo "app:x:1000:" >>/etc/group\n'
             'LABEL io.dinp.writable="/data"\nVOLUME /cache\nUSER app\n'
             'CMD ["sleep", "600"]\n',
    # A name for uid 0.
    "toor": 'FROM dinp/busybox:1\nRUN echo "toor:x:0:0::/:/bin/sh" >>/etc/passwd\n'
            'USER toor\nCMD ["sleep", "600"]\n',
    "writable-root": 'FROM dinp/busybox:1\nRUN mkdir /state && chmod 1777 /state\n'
                     'LABEL io.dinp.read-only="false"\nCMD ["sleep", "600"]\n',
    "bad-label": 'FROM dinp/busybox:1\nLABEL io.dinp.writable="/proc/x"\n'
                 'CMD ["sleep", "600"]\n',
}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    client = docker.from_env(timeout=120)
    tag = secrets.token_hex(3)
    made: dict[str, str] = {}
    try:
        for name, text in DOCKERFILES.items():
            ctx = tmp_path_factory.mktemp(name)
            (ctx / "Dockerfile").write_text(text)
            ref = f"dinp-test/sandbox-{name}:{tag}"
            client.images.build(path=str(ctx), tag=ref, rm=True, labels={TEST_LABEL: tag})
            made[name] = ref
        yield made
    finally:
        for ref in made.values():
            with contextlib.suppress(docker.errors.DockerException):
                client.images.remove(ref, force=True)
        client.close()
