"""The agent's logs listener on a real Docker engine, in process (no server): who it
answers, whose containers it serves, stdout and stderr told apart with `tail` per
container, the lines of a removed container kept (and kept over a restart), a follow that
picks up a container started meanwhile, and a reader that reads nothing losing lines
with a marker while the agent's event loop and its default executor stay free."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dinp.config import AgentConfig
from dinp.container import Container, DockerRuntime
from dinp.logs import LogStats
from dinp.roles.agent_logs import AgentLogs
from dinp.sandbox import Policy
from dinp.wire import Assignment
from tests.support import TEST_NETWORK, ticker_image, wait_until

ADDR = "127.0.0.2"
TOKEN = "node-token-of-the-agent-logs-tests"
CLUSTER = "c0ffee0000000001"


@pytest.fixture(scope="module")
def ticker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with ticker_image(tmp_path_factory.mktemp("ticker")) as tag:
        yield tag


def assignment(app: str, image: str, **env: str) -> Assignment:
    return Assignment(id=secrets.token_hex(5), app=app, release=2, image=image, memory_mb=64,
                      port=8080, env=dict(env), health_path=None, stop_grace=2)


class Node:
    """A runtime and its logs listener, as an agent runs them."""

    def __init__(self, node: str, state: Path) -> None:
        self.runtime = DockerRuntime(node=node, advertise=ADDR, cluster=CLUSTER,
                                     policy=Policy(network=TEST_NETWORK))
        self.config = AgentConfig(node_name=node, advertise=ADDR, cluster_token=TOKEN,
                                  logs_listen=f"{ADDR}:0", state_dir=str(state))
        self.listed: list[Container] = []
        self.stats = LogStats()
        self.logs = AgentLogs(self.config, self.runtime, lambda: self.listed, self.stats)

    async def start(self) -> Node:
        await self.logs.start()
        await self.refresh()
        return self

    async def refresh(self) -> None:
        self.listed = await asyncio.to_thread(self.runtime.list)

    @property
    def url(self) -> str:
        return f"http://{ADDR}:{self.logs.port}/logs"

    async def get(self, token: str | None = TOKEN, **query: str) -> tuple[int, list[Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as s, s.get(self.url, params=query,
                                                       headers=headers) as resp:
            text = await resp.text()
        return resp.status, [json.loads(x) for x in text.splitlines()]

    async def close(self) -> None:
        await self.logs.close()
        self.runtime.close()


async def node_at(node_name: str, tmp_path: Path) -> AsyncIterator[Node]:
    n = await Node(node_name, tmp_path / "state").start()
    try:
        yield n
    finally:
        await n.close()


def run(body: Any, node_name: str, tmp_path: Path) -> None:
    async def main() -> None:
        async for n in node_at(node_name, tmp_path):
            await body(n)

    asyncio.run(main())


def test_only_the_token_the_agent_holds_is_answered(node_name: str, tmp_path: Path,
                                                     docker_client: object) -> None:
    async def body(n: Node) -> None:
        assert (await n.get(None, app="web"))[0] == 401
        status, (reply,) = await n.get("not-" + TOKEN, app="web")
        assert status == 401 and "not the token" in reply["error"]
        assert await n.get(app="web") == (200, [])
        assert (await n.get(app="Not An App"))[0] == 400
        assert (await n.get(app="web", tail="10001"))[0] == 400

    run(body, node_name, tmp_path)


def test_streams_apart_tail_per_container_and_never_another_clusters_containers(
        node_name: str, tmp_path: Path, docker_client: object, ticker: str) -> None:
    async def body(n: Node) -> None:
        mine = [assignment("web", ticker) for _ in range(2)]
        theirs = assignment("web", ticker)
        for a in mine:
            await asyncio.to_thread(n.runtime.start, a)
        # Another cluster on the same engine, same node name, same app name.
        await asyncio.to_thread(n.runtime.start, theirs, "another0cluster1")
        await asyncio.sleep(2.5)
        await n.refresh()
        assert {c.instance for c in n.listed} == {a.id for a in mine}
        status, lines = await n.get(app="web", tail="6")
        assert status == 200
        by_instance = {a.id: [x for x in lines if x["instance"] == a.id] for a in mine}
        assert {x["instance"] for x in lines} == {a.id for a in mine}  # not theirs
        assert all(len(v) == 6 for v in by_instance.values())
        assert [x["at"] for x in lines] == sorted(x["at"] for x in lines)
        for a in mine:
            for x in by_instance[a.id]:
                n_ = x["line"].split()[-1]
                assert x["stream"] == ("stderr" if " err " in x["line"] else "stdout")
                assert x["line"] in (f"{a.id} {n_}", f"{a.id} err {n_}")
                assert x["release"] == 2 and "gone" not in x
        since = by_instance[mine[0].id][-1]["at"]
        await asyncio.sleep(0.5)
        _, later = await n.get(app="web", since=repr(since), instance=mine[0].id, tail="100")
        assert len(later) >= 3, later
        assert all(x["at"] >= since - 1e-6 and x["instance"] == mine[0].id for x in later)
        assert n.stats.lines >= len(lines) and n.stats.bytes > 0

    run(body, node_name, tmp_path)


def test_a_removed_containers_lines_are_kept_with_how_it_ended_over_a_restart(
        node_name: str, tmp_path: Path, docker_client: object, ticker: str) -> None:
    a = assignment("crashy", ticker, CRASH_AFTER="5")

    async def body(n: Node) -> None:
        c = await asyncio.to_thread(n.runtime.start, a)
        assert wait_until(lambda: n.runtime.list()[0].state == "exited", 20)
        await n.refresh()
        _, before = await n.get(app="crashy")  # exited, not removed yet: live
        assert before[-1]["line"] == "exited with code 3" and "gone" not in before[-1]
        await asyncio.to_thread(n.runtime.stop, n.listed[0], timeout=1)  # as the agent does
        assert n.runtime.list() == []
        await n.refresh()
        _, after = await n.get(app="crashy")
        assert [x["line"] for x in after] == [x["line"] for x in before]
        assert all(x["gone"] for x in after)
        # (Docker stamps each stream apart: lines of one instant may swap across them.)
        assert [x["line"] for x in after if x["stream"] == "stderr"][-1] == (
            f"{a.id} dying: boom")
        assert len(list((tmp_path / "state" / "logs" / node_name).glob(f"{c.id}.json"))) == 1

    run(body, node_name, tmp_path)

    async def again(n: Node) -> None:  # the agent restarted: what it kept is still served
        _, lines = await n.get(app="crashy", tail="3")
        assert sorted(x["line"] for x in lines[:-1]) == [f"{a.id} 5", f"{a.id} dying: boom",
                                                         f"{a.id} err 5"]
        assert lines[-1]["line"] == "exited with code 3" and lines[-1]["stream"] == "dinp"
        assert all(x["gone"] for x in lines)

    run(again, node_name, tmp_path)


def test_a_stopped_container_says_dinp_stopped_it(node_name: str, tmp_path: Path,
                                                  docker_client: object, ticker: str) -> None:
    async def body(n: Node) -> None:
        await asyncio.to_thread(n.runtime.start, assignment("web", ticker))
        await asyncio.sleep(0.5)
        await n.refresh()
        await asyncio.to_thread(n.runtime.stop, n.listed[0], timeout=5)
        _, lines = await n.get(app="web", tail="1")
        assert [(x["stream"], x["line"], x["gone"]) for x in lines] == [
            ("stderr", f"{lines[0]['instance']} stopping", True),
            ("dinp", "stopped by dinp (exit code 0)", True)]

    run(body, node_name, tmp_path)


def test_a_follow_sees_new_lines_and_a_container_started_meanwhile(
        node_name: str, tmp_path: Path, docker_client: object, ticker: str) -> None:
    first, second = assignment("web", ticker), assignment("web", ticker)

    async def body(n: Node) -> None:
        await asyncio.to_thread(n.runtime.start, first)
        await asyncio.sleep(1)
        await n.refresh()
        seen: dict[str, list[int]] = {first.id: [], second.id: []}
        async with aiohttp.ClientSession() as s, s.get(
                n.url, params={"app": "web", "tail": "3", "follow": "1"},
                headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            caught_up = False
            started_second = False
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(seen[second.id]) < 5:
                obj = json.loads(await asyncio.wait_for(resp.content.readline(), 10))
                if obj.get("caught_up"):
                    caught_up = True
                elif "line" in obj and " err " not in obj["line"]:
                    seen[obj["instance"]].append(int(obj["line"].split()[-1]))
                if caught_up and not started_second and len(seen[first.id]) >= 8:
                    await asyncio.to_thread(n.runtime.start, second)
                    await n.refresh()
                    started_second = True
        assert caught_up
        ns = seen[first.id]
        assert ns == list(range(ns[0], ns[0] + len(ns))), ns  # nothing lost or twice
        assert seen[second.id][:5] == [0, 1, 2, 3, 4]  # all of the new one's lines

    run(body, node_name, tmp_path)


async def first_marker(sock: socket.socket, timeout: float = 20) -> int:
    """Read a stalled reader's stream until its first dropped-lines marker: how many."""
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    tail = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await loop.sock_recv(sock, 1 << 20):
                seen = tail + chunk
                if b'{"dropped":' in seen:
                    return int(seen.split(b'{"dropped":', 1)[1].split(b",", 1)[0])
                tail = seen[-64:]
    finally:
        sock.close()
    raise AssertionError("the stream ended without a dropped-lines marker")


def test_a_reader_that_reads_nothing_loses_lines_with_a_marker_and_holds_up_nothing(
        node_name: str, tmp_path: Path, docker_client: object, ticker: str) -> None:
    """Eight readers stall while an app writes as fast as it can: the agent's event loop
    stays prompt, its default executor (the heartbeat's) free, and each reader is told
    how many lines it lost."""
    async def body(n: Node) -> None:
        await asyncio.to_thread(n.runtime.start, assignment("chatty", ticker, CHATTY="1"))
        await asyncio.to_thread(n.runtime.start, assignment("chatty", ticker))
        await asyncio.sleep(0.5)
        await n.refresh()
        readers = []
        for _ in range(8):
            sock = socket.create_connection((ADDR, n.logs.port or 0))
            sock.sendall(f"GET /logs?app=chatty&tail=0&follow=1 HTTP/1.0\r\n"
                         f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())
            readers.append(sock)
        late = 0.0
        pool_waits = []
        t_end = time.monotonic() + 6
        while time.monotonic() < t_end:  # reading nothing meanwhile
            t = time.monotonic()
            await asyncio.sleep(0.05)
            late = max(late, time.monotonic() - t - 0.05)
            t = time.monotonic()
            await asyncio.wait_for(asyncio.to_thread(lambda: None), 5)
            pool_waits.append(time.monotonic() - t)
        assert late < 0.5, late
        assert max(pool_waits) < 0.5, max(pool_waits)
        assert n.stats.following == 8
        dropped = await asyncio.gather(*(first_marker(sock) for sock in readers))
        assert min(dropped) > 0 and n.stats.dropped >= sum(dropped)
        assert wait_until(lambda: n.stats.following == 0, 5)

    run(body, node_name, tmp_path)
