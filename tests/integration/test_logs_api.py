"""The server's side of `dinp app logs`, against fake agents: every node's lines merged in
time order, each node asked with the credential its agent holds and never through a
redirect, a node that cannot be asked named (never a silent gap), a follow that takes
new lines in order, and a reader that reads nothing getting a dropped-lines marker
instead of slowing the nodes down.

The API runs in-process over SQLite; the agents are small aiohttp servers that answer
GET /logs as an agent does (their real counterpart is tested in test_agent_logs.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from dinp import logs, tokens
from dinp.access import Actor
from dinp.accounts import Accounts
from dinp.config import ServerConfig
from dinp.logs import ReorderBuffer
from dinp.roles import logs_api
from dinp.roles.api import make_app
from dinp.roles.server import Server
from dinp.routes import MemoryRouteStore
from dinp.store import Store
from dinp.wire import Heartbeat
from tests.support import free_port

CLUSTER = "cluster-token-for-the-logs-tests"
ADMIN = "dinp_admin-token-for-the-logs-tests"
T0 = 1_796_162_642.0


@dataclass
class FakeAgent:
    """Answers GET /logs with `backlog`, then (follow=1) caught_up and `live` lines."""

    backlog: list[dict[str, Any]]
    live: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    redirect_to: str = ""
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.headers.get("Authorization", ""), dict(request.query)))
        if self.redirect_to:
            raise web.HTTPFound(self.redirect_to)
        if self.status != 200:
            return web.json_response({"error": "no"}, status=self.status)
        resp = web.StreamResponse(headers={"Content-Type": logs.MEDIA_TYPE})
        await resp.prepare(request)
        for obj in self.backlog:
            await resp.write(logs.dumps(obj))
        if request.query.get("follow") == "1":
            await resp.write(logs.dumps({"caught_up": True}))
            for obj in self.live:
                await resp.write(logs.dumps(obj))
            for _ in range(600):  # until the server hangs up
                if request.transport is None or request.transport.is_closing():
                    break
                await asyncio.sleep(0.05)
        return resp

    async def start(self) -> FakeAgent:
        app = web.Application()
        app.router.add_get("/logs", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=1)
        await self.runner.setup()
        self.port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def line(at: float, instance: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"at": T0 + at, "instance": instance, "release": 1, "stream": "stdout",
            "line": text, **extra}


@dataclass
class World:
    server: Server
    client: TestClient  # type: ignore[type-arg]

    async def report(self, node: str, port: int | None, address: str = "127.0.0.1") -> None:
        await self.server.heartbeat(Heartbeat(
            node=node, address=address, capacity_mb=1024, free_mb=1000, containers=(),
            agent=f"host-{node}:1:ab", cluster=self.server.cluster_id, logs_port=port))

    async def logs(self, query: str = "", token: str = ADMIN) -> tuple[int, list[Any]]:
        async with self.client.get(f"/api/v1/apps/web/logs{query}",
                                   headers={"Authorization": f"Bearer {token}"}) as resp:
            text = await resp.text()
        try:
            return resp.status, [json.loads(x) for x in text.splitlines()]
        except json.JSONDecodeError:
            return resp.status, [text]


async def world(tmp_path: Any) -> AsyncIterator[World]:
    db = f"sqlite:///{tmp_path}/logs.db"
    store = Store(db)
    Accounts(store).ensure_defaults(ADMIN)
    store.create_app(name="web", image="127.0.0.1:5000/hello:2", instances=0, memory_mb=64,
                     port=8080, env={}, health_path=None)
    server = Server(ServerConfig(cluster_token=CLUSTER, database_url=db, redis_url=""),
                    store, MemoryRouteStore())
    try:
        async with TestClient(TestServer(make_app(server))) as client:
            yield World(server, client)
    finally:
        server.close()


def run(tmp_path: Any, body: Callable[[World], Any]) -> None:
    async def main() -> None:
        async for w in world(tmp_path):
            await body(w)

    asyncio.run(main())


def test_every_nodes_lines_merged_in_time_order_each_with_its_node(tmp_path: Any) -> None:
    async def body(w: World) -> None:
        a = await FakeAgent([line(1, "aaaaaaaaaa", "a1"), line(3, "aaaaaaaaaa", "a3"),
                             line(5, "aaaaaaaaaa", "a5", gone=True)]).start()
        b = await FakeAgent([line(2, "bbbbbbbbbb", "b2"), line(4, "bbbbbbbbbb", "b4"),
                             line(6, "bbbbbbbbbb", "b6")]).start()
        try:
            await w.report("n1", a.port)
            await w.report("n2", b.port)
            status, got = await w.logs("?tail=3&since=100&instance=aaaaaaaaaa")
            assert status == 200
            assert [(x["line"], x["node"]) for x in got] == [
                ("a1", "n1"), ("b2", "n2"), ("a3", "n1"), ("b4", "n2"), ("a5", "n1"),
                ("b6", "n2")]
            assert got[4]["gone"] is True and "gone" not in got[0]
            # What the reader asked is what each agent is asked, with the token it holds.
            for agent in (a, b):
                ((auth, query),) = agent.seen
                assert auth == f"Bearer {CLUSTER}"
                assert query == {"app": "web", "tail": "3", "since": "100.0",
                                 "instance": "aaaaaaaaaa", "follow": "0"}
            assert w.server.log_stats.lines == 6 and w.server.log_stats.bytes > 300
        finally:
            await a.stop()
            await b.stop()

    run(tmp_path, body)


def test_a_node_with_a_credential_is_asked_with_it(tmp_path: Any) -> None:
    async def body(w: World) -> None:
        a = await FakeAgent([line(1, "aaaaaaaaaa", "a1")]).start()
        try:
            generation = Accounts(w.server.store).new_node_generation("n1", actor=Actor("t"))
            await w.report("n1", a.port)
            await w.server.desired_changed()
            await w.logs()
            assert a.seen[0][0] == "Bearer " + tokens.node_credential(CLUSTER, "n1",
                                                                      generation)
        finally:
            await a.stop()

    run(tmp_path, body)


def test_a_node_that_cannot_be_asked_is_named_not_skipped(tmp_path: Any) -> None:
    async def body(w: World) -> None:
        good = await FakeAgent([line(1, "aaaaaaaaaa", "ok")]).start()
        trap = await FakeAgent([line(2, "cccccccccc", "the redirect's target")]).start()
        moved = await FakeAgent([], redirect_to=f"http://127.0.0.1:{trap.port}/logs").start()
        refusing = await FakeAgent([], status=401).start()
        try:
            await w.report("n1", good.port)
            await w.report("n2", free_port())  # nothing listens there: a dead agent
            await w.report("n3", moved.port)
            await w.report("n4", refusing.port)
            await w.report("n5", None)  # an agent older than logs
            status, got = await w.logs()
            assert status == 200
            assert [x["line"] for x in got if "line" in x] == ["ok"]
            warnings = sorted(x["warning"] for x in got if "warning" in x)
            assert len(warnings) == 3, warnings  # n5 has no instance of web: not asked
            assert warnings[0].startswith("node n2 unreachable: cannot connect to 127.0.0.1")
            assert warnings[1].startswith("node n3 unreachable: its agent answered HTTP 302")
            assert warnings[2] == "node n4 unreachable: its agent answered HTTP 401: no"
            assert trap.seen == []  # the redirect was not followed: no token went there
        finally:
            for agent in (good, trap, moved, refusing):
                await agent.stop()

    run(tmp_path, body)


def test_a_follow_gives_new_lines_in_order_after_the_backlog(tmp_path: Any) -> None:
    async def body(w: World) -> None:
        a = await FakeAgent([line(1, "aaaaaaaaaa", "old a")],
                            live=[line(12, "aaaaaaaaaa", "new a12")]).start()
        b = await FakeAgent([line(2, "bbbbbbbbbb", "old b")],
                            live=[line(11, "bbbbbbbbbb", "new b11"),
                                  line(13, "bbbbbbbbbb", "new b13")]).start()
        try:
            await w.report("n1", a.port)
            await w.report("n2", b.port)
            got: list[str] = []
            async with w.client.get("/api/v1/apps/web/logs?follow=true", headers={
                    "Authorization": f"Bearer {ADMIN}"}) as resp:
                assert resp.headers["Content-Type"] == logs.MEDIA_TYPE
                while len(got) < 5:
                    obj = json.loads(await asyncio.wait_for(resp.content.readline(), 5))
                    if "line" in obj:
                        got.append(obj["line"])
            assert got == ["old a", "old b", "new b11", "new a12", "new b13"]
            assert a.seen[0][1]["follow"] == "1"
            for _ in range(50):  # the server sees the reader leave, and stops following
                if w.server.log_stats.following == 0:
                    break
                await asyncio.sleep(0.1)
            assert w.server.log_stats.following == 0
        finally:
            await a.stop()
            await b.stop()

    run(tmp_path, body)


def test_a_reader_that_reads_nothing_gets_a_dropped_marker(tmp_path: Any,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """The nodes are read at their pace whatever the reader does: what its buffer cannot
    hold is dropped and counted, and the reader is told how much."""
    monkeypatch.setattr(logs_api, "ReorderBuffer", lambda: ReorderBuffer(max_lines=500))
    chatty = [line(10 + i / 1e4, "aaaaaaaaaa", f"chat {i} " + "x" * 200)
              for i in range(30_000)]

    async def body(w: World) -> None:
        a = await FakeAgent([], live=chatty).start()
        try:
            await w.report("n1", a.port)
            async with w.client.get("/api/v1/apps/web/logs?follow=true", headers={
                    "Authorization": f"Bearer {ADMIN}"}) as resp:
                await asyncio.sleep(3)  # reading nothing while the node talks
                dropped = seen = 0
                while seen + dropped < len(chatty):
                    raw = await asyncio.wait_for(resp.content.readline(), 5)
                    obj = json.loads(raw)
                    dropped += obj.get("dropped", 0)
                    seen += "line" in obj
            assert dropped > 0 and seen > 0
            assert w.server.log_stats.dropped == dropped
        finally:
            await a.stop()

    run(tmp_path, body)


def test_bad_queries_are_refused_and_an_unknown_app_is_404(tmp_path: Any) -> None:
    async def body(w: World) -> None:
        for query, field_ in (("?tail=-1", "tail"), ("?tail=10001", "tail"),
                              ("?since=yesterday", "since"), ("?follow=yes", "follow"),
                              ("?instance=../x", "instance"), ("?since=1e12", "since")):
            status, (reply,) = await w.logs(query)
            assert status == 400 and reply["field"] == field_, (query, reply)
        async with w.client.get("/api/v1/apps/nope/logs", headers={
                "Authorization": f"Bearer {ADMIN}"}) as resp:
            assert resp.status == 404

    run(tmp_path, body)


def test_a_malformed_line_from_an_agent_is_skipped_and_said_once(tmp_path: Any) -> None:
    async def body(w: World) -> None:
        a = await FakeAgent([line(1, "aaaaaaaaaa", "a1"), line(2, "../../etc", "bad"),
                             {"at": "soon"}, line(3, "aaaaaaaaaa", "a3")]).start()
        try:
            await w.report("n1", a.port)
            _, got = await w.logs()
            assert [x["line"] for x in got if "line" in x] == ["a1", "a3"]
            (warning,) = [x["warning"] for x in got if "warning" in x]
            assert warning.startswith("node n1 sent a malformed line (instance:")
        finally:
            await a.stop()

    run(tmp_path, body)
