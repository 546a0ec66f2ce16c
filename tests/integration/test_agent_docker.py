"""The agent's side against the real Docker engine: DockerRuntime, converge, health.

Every container is labelled with a unique test node name (`io.dinp.node=t-<random>`) or
the test label, and the `make_node_name` fixture removes them all afterwards, pass or fail.
Several "nodes" share this one engine, each advertising its own 127.0.0.x address.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import docker
import docker.errors
import pytest

from dinp import const
from dinp.config import AgentConfig
from dinp.container import Container, DockerRuntime, StartFailed
from dinp.health import Answer, check
from dinp.roles import agent as agent_mod
from dinp.roles.agent import Agent
from dinp.sandbox import Policy
from dinp.wire import Assignment
from tests.support import TEST_LABEL, TEST_NETWORK, free_port, wait_until

pytestmark = pytest.mark.docker

IMAGE = "dinp-examples/hello:2"
ADDR = "127.0.0.2"
CLUSTER = secrets.token_hex(8)  # this test run's cluster id
POLICY = Policy(network=TEST_NETWORK)


def app_name() -> str:
    return f"it{secrets.token_hex(3)}"


def assignment(app: str, *, release: int = 1, port: int = 8080, memory_mb: int = 64,
               env: dict[str, str] | None = None, image: str = IMAGE) -> Assignment:
    return Assignment(id=secrets.token_hex(5), app=app, release=release, image=image,
                      memory_mb=memory_mb, port=port, env=env or {}, health_path=None)


def fetch(port: int, path: str = "/", host: str = ADDR, timeout: float = 10) -> str:
    """GET until the app answers (it needs a moment to start listening)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=2) as resp:
                return str(resp.read().decode())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def inspect(client: docker.DockerClient, cid: str) -> dict[str, Any]:
    return dict(client.api.inspect_container(cid))


def exists(client: docker.DockerClient, cid: str) -> bool:
    try:
        client.api.inspect_container(cid)
    except docker.errors.NotFound:
        return False
    return True


def running(client: docker.DockerClient, cid: str) -> bool:
    try:
        return bool(client.api.inspect_container(cid)["State"]["Running"])
    except docker.errors.NotFound:
        return False


def summary(client: docker.DockerClient, cid: str) -> dict[str, Any]:
    found = client.api.containers(all=True, filters={"id": cid})
    assert len(found) == 1
    return dict(found[0])


@pytest.fixture
def runtime(docker_client: docker.DockerClient, node_name: str) -> Any:
    rt = DockerRuntime(node=node_name, advertise=ADDR, cluster=CLUSTER, policy=POLICY)
    try:
        yield rt
    finally:
        rt.close()


# -- DockerRuntime ---------------------------------------------------------------------------

def test_start_creates_a_labelled_limited_unprivileged_container(
    runtime: DockerRuntime, docker_client: docker.DockerClient, node_name: str
) -> None:
    app = app_name()
    a = assignment(app, release=3, port=9000, memory_mb=48,
                   env={"GREETING": "hi there", "DB_URL": "mysql://db/x"})
    c = runtime.start(a)

    assert c.name == f"dinp-{app}-{a.id}"
    assert (c.app, c.instance, c.release, c.state) == (app, a.id, 3, "running")
    assert c.host_port is not None and c.host_port != 9000

    info = inspect(docker_client, c.id)
    assert info["Name"] == f"/dinp-{app}-{a.id}"
    labels = info["Config"]["Labels"]
    assert {k: labels.get(k) for k in (const.LABEL_MANAGED, const.LABEL_APP,
                                       const.LABEL_INSTANCE, const.LABEL_RELEASE,
                                       const.LABEL_NODE, const.LABEL_CLUSTER)} == {
        "io.dinp.managed": "true", "io.dinp.app": app, "io.dinp.instance": a.id,
        "io.dinp.release": "3", "io.dinp.node": node_name, "io.dinp.cluster": CLUSTER}
    env = dict(e.split("=", 1) for e in info["Config"]["Env"])
    assert {k: env.get(k) for k in ("PORT", "DINP_APP", "DINP_INSTANCE", "DINP_RELEASE",
                                    "GREETING", "DB_URL")} == {
        "PORT": "9000", "DINP_APP": app, "DINP_INSTANCE": a.id, "DINP_RELEASE": "3",
        "GREETING": "hi there", "DB_URL": "mysql://db/x"}
    host = info["HostConfig"]
    assert host["Memory"] == 48 * 1024 * 1024
    assert host["Privileged"] is False
    assert not host.get("Binds")
    assert not host.get("Mounts")
    assert info["Mounts"] == []
    assert host["NetworkMode"] != "host" and host.get("PidMode", "") != "host"
    assert not host.get("CapAdd")
    bindings = host["PortBindings"]["9000/tcp"]
    assert [b["HostIp"] for b in bindings] == [ADDR]
    assert bindings[0]["HostPort"] in ("", "0")  # ephemeral: the engine picks it
    published = info["NetworkSettings"]["Ports"]["9000/tcp"]
    assert [(p["HostIp"], int(p["HostPort"])) for p in published] == [(ADDR, c.host_port)]

    # The app answers on the advertise address only, with its instance id.
    body = fetch(c.host_port)
    assert body.strip() == f"hello from {app} instance {a.id} release 3"
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        fetch(c.host_port, host="127.0.0.1", timeout=0)

    assert [x.id for x in runtime.list()] == [c.id]
    runtime.stop(c, timeout=2)
    assert not exists(docker_client, c.id)
    assert runtime.list() == []
    runtime.stop(c, timeout=2)  # already gone: no error


def test_a_container_keeps_the_stop_grace_it_was_started_with(
    runtime: DockerRuntime, docker_client: docker.DockerClient
) -> None:
    """It stops once its instance is no longer assigned, so the grace travels with it."""
    a = dataclasses.replace(assignment(app_name()), stop_grace=2.5)
    c = runtime.start(a)
    assert c.stop_grace == 2.5
    assert inspect(docker_client, c.id)["Config"]["Labels"]["io.dinp.stop-grace"] == "2.5"
    assert [x.stop_grace for x in runtime.list()] == [2.5]
    plain = runtime.start(assignment(app_name()))
    assert {x.id: x.stop_grace for x in runtime.list()}[plain.id] is None  # agent's default


def test_list_and_stop_touch_only_this_nodes_containers(
    runtime: DockerRuntime, docker_client: docker.DockerClient,
    node_name: str, make_node_name: Callable[[], str],
) -> None:
    other = DockerRuntime(node=make_node_name(), advertise="127.0.0.3", cluster=CLUSTER,
                          policy=POLICY)
    try:
        theirs = other.start(assignment(app_name()))
    finally:
        other.close()
    ours = runtime.start(assignment(app_name()))
    # Not started by dinp at all (like `docker run -d hello`); the fixture removes it.
    plain = docker_client.containers.run(IMAGE, detach=True, labels={TEST_LABEL: node_name})
    foreign = [theirs.id, plain.id]

    assert [c.id for c in runtime.list()] == [ours.id]
    for cid in foreign:
        runtime.stop(Container.from_summary(summary(docker_client, cid)), timeout=1)
    assert all(running(docker_client, cid) for cid in foreign)

    # An agent told to run nothing stops its own container, and only that.
    async def converge_to_nothing() -> None:
        agent = make_agent(node_name, runtime)
        give(agent, "empty", [])
        await agent.converge()
        assert agent.state.unassigned_since  # draining, not stopped yet
        assert running(docker_client, ours.id)
        await asyncio.sleep(agent_mod.DRAIN_SECONDS + 0.1)
        await agent.converge()

    asyncio.run(converge_to_nothing())
    assert not exists(docker_client, ours.id)
    assert all(running(docker_client, cid) for cid in foreign)


def test_start_never_removes_another_nodes_container_of_the_same_name(
    runtime: DockerRuntime, docker_client: docker.DockerClient,
    make_node_name: Callable[[], str],
) -> None:
    a = assignment(app_name())
    other = DockerRuntime(node=make_node_name(), advertise="127.0.0.3", cluster=CLUSTER,
                          policy=POLICY)
    try:
        theirs = other.start(a)
    finally:
        other.close()
    with pytest.raises(StartFailed, match=f"dinp-{a.app}-{a.id}"):
        runtime.start(a)
    assert running(docker_client, theirs.id)
    assert runtime.list() == []


def _half_labelled(docker_client: docker.DockerClient, node_name: str,
                   name: str | None = None) -> Any:
    """A container carrying our node label but not `io.dinp.managed=true`: not dinp's."""
    return docker_client.containers.run(
        IMAGE, detach=True, name=name,
        labels={TEST_LABEL: node_name, const.LABEL_NODE: node_name,
                const.LABEL_APP: "half", const.LABEL_INSTANCE: "h1"})


# DockerRuntime.stop() and _remove_by_name() check only io.dinp.node, not
# io.dinp.managed=true, so a container someone else labelled with the node name is
# removed. The design: agents never touch containers without the dinp labels.


def test_stop_refuses_a_container_without_the_managed_label(
    runtime: DockerRuntime, docker_client: docker.DockerClient, node_name: str
) -> None:
    half = _half_labelled(docker_client, node_name)
    assert runtime.list() == []
    runtime.stop(Container.from_summary(summary(docker_client, half.id)), timeout=1)
    assert running(docker_client, half.id)


def test_start_never_removes_an_unmanaged_container_of_the_same_name(
    runtime: DockerRuntime, docker_client: docker.DockerClient, node_name: str
) -> None:
    a = assignment(app_name())
    half = _half_labelled(docker_client, node_name, name=f"dinp-{a.app}-{a.id}")
    with pytest.raises(StartFailed):
        runtime.start(a)
    assert running(docker_client, half.id)


def test_start_with_a_missing_image_fails_clearly(
    runtime: DockerRuntime, docker_client: docker.DockerClient
) -> None:
    a = assignment(app_name(), image="127.0.0.1:5000/dinp-no-such-image:1")
    with pytest.raises(StartFailed) as info:
        runtime.start(a)
    assert "127.0.0.1:5000/dinp-no-such-image:1" in str(info.value)
    assert runtime.list() == []


def test_start_replaces_a_dead_container_of_the_same_name(
    runtime: DockerRuntime, docker_client: docker.DockerClient
) -> None:
    a = assignment(app_name())
    first = runtime.start(a)
    docker_client.api.kill(first.id)
    second = runtime.start(a)
    assert second.id != first.id and second.name == first.name
    assert not exists(docker_client, first.id)
    assert a.id in fetch(second.host_port or 0)


# -- Agent converge against the engine, without a server ------------------------------------

def make_agent(node: str, runtime: DockerRuntime, **config: Any) -> Agent:
    """An agent that already learnt its cluster (the runtime's) from a server."""
    settings: dict[str, Any] = {"stop_timeout": 2, **config}
    agent = Agent(AgentConfig(node_name=node, advertise=ADDR, server="http://127.0.0.1:1",
                              cluster_token="x", capacity_mb=1024, **settings), runtime)
    agent.state.cluster = runtime.cluster
    return agent


def give(agent: Agent, rev: str, items: list[Assignment], *, server_ok: bool = True,
         **extra: Any) -> None:
    """Hand `agent` an assignment as the server's reply would."""
    agent.take_assignment({"rev": rev, "instances": [a.to_json() for a in items],
                           "cluster": agent.state.cluster, **extra})
    agent.state.server_ok = server_ok


def by_instance(runtime: DockerRuntime) -> dict[str, Container]:
    out: dict[str, Container] = {}
    for c in runtime.list():
        assert c.instance not in out, "two containers for one instance"
        out[c.instance] = c
    return out


def test_agent_converges_replaces_drains_and_keeps_containers_without_server(
    runtime: DockerRuntime, docker_client: docker.DockerClient, node_name: str
) -> None:
    app = app_name()
    a1, a2 = assignment(app), assignment(app)

    async def main() -> None:
        agent = make_agent(node_name, runtime)

        # Never heard from the server: converge does nothing at all.
        await agent.converge()
        assert runtime.list() == []

        # Assigned two: both started, both answer with their own instance id.
        give(agent, "r1", [a1, a2])
        await agent.converge()
        now = by_instance(runtime)
        assert sorted(now) == sorted([a1.id, a2.id])
        assert all(c.running for c in now.values())
        for inst, c in now.items():
            assert inst in await asyncio.to_thread(fetch, c.host_port or 0)
        first_ids = {i: c.id for i, c in now.items()}

        # Converge is idempotent: nothing is recreated.
        await agent.converge()
        assert {i: c.id for i, c in by_instance(runtime).items()} == first_ids

        # A container dies: it is replaced (same instance, new container).
        docker_client.api.kill(first_ids[a1.id])
        assert wait_until(lambda: not running(docker_client, first_ids[a1.id]), 10)
        await agent.converge()
        now = by_instance(runtime)
        assert sorted(now) == sorted([a1.id, a2.id])
        assert now[a1.id].id != first_ids[a1.id] and now[a1.id].running
        assert not exists(docker_client, first_ids[a1.id])
        assert now[a2.id].id == first_ids[a2.id]
        assert a1.id in await asyncio.to_thread(fetch, now[a1.id].host_port or 0)
        a1_container = now[a1.id].id

        # Unassigned: kept for the drain period, then stopped.
        give(agent, "r2", [a2])
        await agent.converge()
        assert sorted(by_instance(runtime)) == sorted([a1.id, a2.id])
        await asyncio.sleep(agent_mod.DRAIN_SECONDS + 0.1)
        await agent.converge()
        now = by_instance(runtime)
        assert sorted(now) == [a2.id] and now[a2.id].id == first_ids[a2.id]
        assert not exists(docker_client, a1_container)

        # The server is lost and the last word was "run nothing": nothing is removed ...
        give(agent, "r3", [], server_ok=False)
        await agent.converge()
        await asyncio.sleep(agent_mod.DRAIN_SECONDS + 0.1)
        await agent.converge()
        assert by_instance(runtime)[a2.id].id == first_ids[a2.id]
        assert running(docker_client, first_ids[a2.id])

        # ... nor on an assignment too old to count as fresh, even with the server back.
        give(agent, "r4", [], server_ok=True)
        agent.state.assignment_at = time.monotonic() - agent_mod.FRESH_SECONDS - 1
        await agent.converge()
        await asyncio.sleep(agent_mod.DRAIN_SECONDS + 0.1)
        await agent.converge()
        assert running(docker_client, first_ids[a2.id])

        # While the server is lost, a dead assigned container is still restarted.
        give(agent, "r5", [a2], server_ok=False)
        docker_client.api.kill(first_ids[a2.id])
        assert wait_until(lambda: not running(docker_client, first_ids[a2.id]), 10)
        await agent.converge()
        now = by_instance(runtime)
        assert sorted(now) == [a2.id] and now[a2.id].running
        assert now[a2.id].id != first_ids[a2.id]

    asyncio.run(main())


def test_a_restarted_agent_adopts_running_containers(
    runtime: DockerRuntime, docker_client: docker.DockerClient, node_name: str
) -> None:
    app = app_name()
    items = [assignment(app), assignment(app)]

    async def main() -> None:
        first = make_agent(node_name, runtime)
        give(first, "r1", items)
        await first.converge()
        ids = {i: c.id for i, c in by_instance(runtime).items()}
        assert len(ids) == 2

        fresh_runtime = DockerRuntime(node=node_name, advertise=ADDR, cluster=CLUSTER,
                                      policy=POLICY)
        try:
            second = make_agent(node_name, fresh_runtime)
            # Before any assignment: it adopts, it does not act.
            await second.refresh()
            await second.converge()
            assert {i: c.id for i, c in by_instance(fresh_runtime).items()} == ids
            # Its health checks see the running instances as healthy before it reports.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                await second.check_health()
                if all(second.state.health.get(i) and second.state.health[i].status ==
                       "healthy" for i in ids):
                    break
                await asyncio.sleep(0.1)
            body = second.heartbeat_body()
            assert {c.instance: (c.state, c.health) for c in body.containers} == {
                i: ("running", "healthy") for i in ids}
            assert all(c.port for c in body.containers)
            assert body.address == ADDR and body.node == node_name

            give(second, "r1", items)
            await second.converge()
            await second.converge()
            assert {i: c.id for i, c in by_instance(fresh_runtime).items()} == ids
        finally:
            fresh_runtime.close()

    asyncio.run(main())


def test_agent_backs_off_after_a_failed_start(
    runtime: DockerRuntime, node_name: str
) -> None:
    bad = assignment(app_name(), image="127.0.0.1:5000/dinp-no-such-image:1")

    async def main() -> None:
        agent = make_agent(node_name, runtime)
        give(agent, "r1", [bad])
        await agent.converge()  # logs the failure; never raises
        retry = agent.state.retries[bad.id]
        assert retry.failures == 1 and "dinp-no-such-image" in retry.message
        await agent.converge()  # too soon to retry
        assert agent.state.retries[bad.id].failures == 1
        assert runtime.list() == []

    asyncio.run(main())


# -- health checks ---------------------------------------------------------------------------

def test_health_checks_against_a_real_container(runtime: DockerRuntime) -> None:
    c = runtime.start(assignment(app_name()))
    port = c.host_port or 0
    fetch(port)  # listening

    async def main() -> None:
        assert (await check(ADDR, port, None)).ok
        assert (await check(ADDR, port, "/health")).ok
        assert (await check(ADDR, port, "/")).ok
        missing = await check(ADDR, port, "/no-such-page")
        assert missing == Answer(False, "GET /no-such-page answered 'HTTP/1.1 404 Not Found'")
        closed = free_port(ADDR)
        refused = await check(ADDR, closed, None)
        assert not refused.ok and f"TCP port {closed}: Connection refused" in refused.detail
        assert not (await check(ADDR, closed, "/health")).ok

    asyncio.run(main())


def test_health_check_http_status_and_silence() -> None:
    """HTTP checks judge the status line; a server that never answers fails in time."""

    async def main() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            line = (await reader.readline()).decode()
            path = line.split()[1]
            if path == "/silent":
                await asyncio.sleep(5)
            status = {"/ok": "200 OK", "/moved": "302 Found"}.get(path, "500 Oops")
            writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            assert (await check("127.0.0.1", port, "/ok")).ok
            assert (await check("127.0.0.1", port, "/moved")).ok
            broken = await check("127.0.0.1", port, "/broken")
            assert broken == Answer(False, "GET /broken answered 'HTTP/1.1 500 Oops'")
            t0 = time.monotonic()
            silent = await check("127.0.0.1", port, "/silent", timeout=0.3)
            assert silent == Answer(False, "GET /silent: no answer within 0.3 s")
            assert time.monotonic() - t0 < 2
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_foreign_instances_are_never_stopped(runtime: DockerRuntime) -> None:
    """A server whose database never knew this node's containers (empty or wrong
    database) names them foreign: the agent starts what it assigns and stops none of them."""
    app = app_name()
    old, new = assignment(app), assignment(app)

    async def main() -> None:
        agent = make_agent(runtime.node, runtime)
        give(agent, "r1", [old])
        await agent.converge()
        (kept,) = by_instance(runtime).values()
        give(agent, "r2", [new], foreign=[old.id])
        await agent.converge()
        await asyncio.sleep(1.2)  # past the drain
        await agent.converge()
        now = by_instance(runtime)
        assert now[old.id].id == kept.id and now[old.id].running
        assert now[new.id].running

    asyncio.run(main())


def test_an_instance_that_never_becomes_healthy_is_replaced_with_backoff(
    runtime: DockerRuntime,
) -> None:
    app = app_name()
    broken = Assignment(id=secrets.token_hex(5), app=app, release=1, image=IMAGE,
                        memory_mb=64, port=8080, env={}, health_path="/no-such-page")

    async def main() -> None:
        agent = make_agent(runtime.node, runtime, start_timeout=1.0)
        give(agent, "r1", [broken])
        await agent.converge()
        (first,) = by_instance(runtime).values()
        for _ in range(8):  # the health path answers 404: it stays "starting"
            await agent.refresh()
            await agent.check_health()
            await asyncio.sleep(0.2)
        assert agent.state.health[broken.id].status == "starting"
        await agent.converge()  # past start_timeout: stuck, so it is stopped ...
        assert by_instance(runtime) == {}
        reason = agent.heartbeat_body().failures[broken.id]
        assert reason.message.startswith("never became healthy in 1 s; last check: GET "
                                         "/no-such-page answered") and not reason.crash
        await agent.converge()  # ... and not started again before its backoff (2 s)
        assert by_instance(runtime) == {}
        await asyncio.sleep(2.1)
        await agent.converge()
        (second,) = by_instance(runtime).values()
        assert second.id != first.id and second.running

    asyncio.run(main())


def test_a_port_that_accepts_then_hangs_up_is_not_healthy() -> None:
    """What Docker's userland proxy does while the app in the container is not listening
    yet: it accepts, then closes. That must not count as healthy."""
    from dinp.health import check

    async def main() -> None:
        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        async def quiet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # an HTTP server waiting for a request
            writer.close()

        closing = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        waiting = await asyncio.start_server(quiet, "127.0.0.1", 0)
        try:
            assert not (await check("127.0.0.1", closing.sockets[0].getsockname()[1], None)).ok
            assert (await check("127.0.0.1", waiting.sockets[0].getsockname()[1], None)).ok
        finally:
            for server in (closing, waiting):
                server.close()
                await server.wait_closed()

    asyncio.run(main())


# -- clusters sharing one engine -------------------------------------------------------------

def test_another_cluster_with_the_same_node_name_is_never_touched(
    runtime: DockerRuntime, docker_client: docker.DockerClient, node_name: str
) -> None:
    """Two clusters (two `dinp up`, say) whose nodes are both called the same: neither
    lists, stops, replaces or removes the other's containers."""
    other = DockerRuntime(node=node_name, advertise=ADDR, cluster=secrets.token_hex(8),
                          policy=POLICY)
    try:
        a = assignment(app_name())
        theirs = other.start(a)
        assert runtime.list() == []
        runtime.stop(Container.from_summary(summary(docker_client, theirs.id)), timeout=1)
        assert running(docker_client, theirs.id)
        with pytest.raises(StartFailed):  # same name: refused, never removed
            runtime.start(a)
        assert running(docker_client, theirs.id)

        async def converge_to_nothing() -> None:
            agent = make_agent(node_name, runtime)
            give(agent, "empty", [])
            for _ in range(2):
                await agent.converge()
                await asyncio.sleep(agent_mod.DRAIN_SECONDS + 0.1)

        asyncio.run(converge_to_nothing())
        assert running(docker_client, theirs.id)
        assert [c.id for c in other.list()] == [theirs.id]
    finally:
        other.close()


def test_a_runtime_that_does_not_know_its_cluster_sees_and_starts_nothing(
    runtime: DockerRuntime, node_name: str
) -> None:
    ours = runtime.start(assignment(app_name()))
    blind = DockerRuntime(node=node_name, advertise=ADDR, policy=POLICY)
    try:
        assert blind.list() == []
        with pytest.raises(StartFailed, match="cluster"):
            blind.start(assignment(app_name()))
        assert [c.id for c in runtime.list()] == [ours.id]
    finally:
        blind.close()


def test_containers_older_than_cluster_ids_are_adopted_only_when_assigned(
    runtime: DockerRuntime, docker_client: docker.DockerClient, node_name: str
) -> None:
    """Containers an older dinp made carry no cluster label. The agent keeps those the
    server never assigned to it (they may be another cluster's), and takes care of those
    it does assign: kept while assigned, stopped once unassigned."""
    app = app_name()
    mine, unknown = assignment(app), assignment(app)

    def legacy(a: Assignment) -> str:
        c = docker_client.containers.run(
            IMAGE, detach=True, name=f"dinp-{a.app}-{a.id}",
            environment={"PORT": "8080", "DINP_INSTANCE": a.id},
            ports={"8080/tcp": (ADDR, None)},
            labels={const.LABEL_MANAGED: "true", const.LABEL_APP: a.app,
                    const.LABEL_INSTANCE: a.id, const.LABEL_RELEASE: "1",
                    const.LABEL_NODE: node_name})
        return str(c.id)

    mine_id, unknown_id = legacy(mine), legacy(unknown)

    async def main() -> None:
        agent = make_agent(node_name, runtime)
        assert {c.instance: c.legacy for c in runtime.list()} == {mine.id: True,
                                                                   unknown.id: True}
        give(agent, "r1", [mine])
        for _ in range(2):
            await agent.converge()
            await asyncio.sleep(agent_mod.DRAIN_SECONDS + 0.1)
        assert running(docker_client, mine_id)  # adopted, not recreated
        assert running(docker_client, unknown_id)  # never assigned here: left alone
        assert len(by_instance(runtime)) == 2
        assert agent.state.adopted == {mine.id}

        give(agent, "r2", [])
        for _ in range(2):
            await agent.converge()
            await asyncio.sleep(agent_mod.DRAIN_SECONDS + 0.1)
        assert not exists(docker_client, mine_id)  # ours, unassigned: stopped
        assert running(docker_client, unknown_id)

    asyncio.run(main())


def test_an_agent_upgraded_before_its_server_keeps_reporting_and_serving(
    docker_client: docker.DockerClient, node_name: str
) -> None:
    """Operators may upgrade agents first. A server of the previous release has no
    cluster ids: it answers 404 where the agent asks for its cluster, and replies to
    heartbeats without one. The agent then matches containers by node name, as that
    server expects: it reports the node's containers (an empty report would unroute
    them all) and keeps them running."""
    from aiohttp import web

    app = app_name()
    a = assignment(app)
    legacy = docker_client.containers.run(
        IMAGE, detach=True, name=f"dinp-{app}-{a.id}",
        environment={"PORT": "8080", "DINP_INSTANCE": a.id}, ports={"8080/tcp": (ADDR, None)},
        labels={const.LABEL_MANAGED: "true", const.LABEL_APP: app, const.LABEL_INSTANCE: a.id,
                const.LABEL_RELEASE: "1", const.LABEL_NODE: node_name})
    reports: list[dict[str, Any]] = []

    async def heartbeat(request: web.Request) -> web.Response:  # as the old server did
        reports.append(await request.json())
        return web.json_response({"node": node_name, "status": "ready", "rev": "r1",
                                  "heartbeat_interval": 2.0, "foreign": [],
                                  "instances": [a.to_json()]})

    async def main() -> None:
        old_server = web.Application()
        old_server.router.add_post("/api/v1/nodes/{node}/heartbeat", heartbeat)
        runner = web.AppRunner(old_server)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runtime = DockerRuntime(node=node_name, advertise=ADDR, policy=POLICY)
        agent = Agent(AgentConfig(node_name=node_name, advertise=ADDR, capacity_mb=1024,
                                  server=f"http://127.0.0.1:{port}", cluster_token="x"),
                      runtime)
        try:
            for _ in range(3):
                await agent.refresh()
                assert await agent.send_heartbeat()
                await agent.converge()
                await asyncio.sleep(agent_mod.DRAIN_SECONDS + 0.1)
        finally:
            if agent._session is not None:
                await agent._session.close()
            runtime.close()
            await runner.cleanup()

    asyncio.run(main())
    assert len(reports) == 3
    assert all([c["instance"] for c in r["containers"]] == [a.id] for r in reports), reports
    assert running(docker_client, str(legacy.id))  # adopted, not replaced
    assert len(docker_client.api.containers(filters={"label": f"io.dinp.node={node_name}"})) == 1


@pytest.fixture(scope="module")
def crash_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An image whose app says something and exits 3 at once, as a broken release does."""
    ctx = tmp_path_factory.mktemp("crash")
    (ctx / "Dockerfile").write_text(
        "FROM dinp/busybox:1\n"
        'CMD ["/bin/sh", "-c", "echo starting up; echo boom: no DATABASE_URL >&2; exit 3"]\n')
    tag = f"dinp-test/crash:{secrets.token_hex(3)}"
    client = docker.from_env()
    try:
        client.images.build(path=str(ctx), tag=tag, rm=True)
        yield tag
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            client.images.remove(tag, force=True)
        client.close()


def test_a_container_that_keeps_crashing_is_restarted_with_backoff_and_says_why(
    runtime: DockerRuntime, crash_image: str
) -> None:
    crashing = assignment(app_name(), image=crash_image)

    async def main() -> None:
        agent = make_agent(runtime.node, runtime)
        give(agent, "r1", [crashing])
        starts = []
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            before = {c.id for c in runtime.list()}
            await agent.converge()
            after = {c.id for c in runtime.list()}
            if after - before:
                starts.append(time.monotonic())
            await asyncio.sleep(0.2)
        retry = agent.state.retries[crashing.id]
        assert retry.failures >= 2
        assert "exited with code 3" in retry.message and "boom: no DATABASE_URL" in retry.message
        reason = agent.heartbeat_body().failures[crashing.id]
        # ... and the server is told, with how many times in a row.
        assert "exited with code 3" in reason.message and reason.crash
        assert reason.count == retry.failures >= 2
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        # Not a tight loop: after the first crash, each restart waits longer.
        assert len(starts) <= 5, starts
        assert gaps and max(gaps) >= 2.0, gaps

    asyncio.run(main())


def test_a_steady_agent_sends_short_beats_and_its_whole_report_when_asked(
        sqlite_url: str, redis_url: str, node_name: str) -> None:
    """A real agent and a real server: the whole report first, then short beats that
    keep the node alive and bring no instances back; once the server no longer holds the
    report (as after its restart) the beat is refused and the whole report follows at
    once, in the same send."""
    from tests.integration.test_api import CLUSTER, Api, running_api

    async def body(api: Api) -> None:
        runtime = DockerRuntime(node=node_name, advertise=ADDR, policy=POLICY)
        agent = Agent(AgentConfig(node_name=node_name, advertise=ADDR, capacity_mb=1024,
                                  server=str(api.client.make_url("")).rstrip("/"),
                                  cluster_token=CLUSTER), runtime)
        sent: list[dict[str, Any]] = []
        post = agent._post

        async def spy(body: dict[str, Any]) -> tuple[int, Any]:
            sent.append(body)
            return await post(body)

        agent._post = spy  # type: ignore[method-assign]
        try:
            heard = []
            for _ in range(3):
                await agent.refresh()
                assert await agent.send_heartbeat()
                heard.append(api.server.reports[node_name].received_at)
            assert "containers" in sent[0] and "digest" in sent[0]
            assert [("same_as" in b, "containers" in b) for b in sent[1:]] == [(True, False)] * 2
            assert heard[0] < heard[1] < heard[2]  # each beat counts as the node heard
            assert agent.state.assignment == [] and agent.state.server_ok

            api.server.heartbeats.pop(node_name)  # what a restarted server holds
            api.server.reports.pop(node_name)
            assert await agent.send_heartbeat()
            assert "same_as" in sent[3] and "containers" in sent[4]
            assert node_name in api.server.reports
        finally:
            if agent._session is not None:
                await agent._session.close()
            runtime.close()

    async def main() -> None:
        async with running_api(sqlite_url, redis_url) as api:
            await body(api)

    asyncio.run(main())
