"""The server's HTTP API in-process over a real Store and a real Redis route table.

Each test runs its own event loop (`asyncio.run`) with aiohttp's TestServer/TestClient,
so no pytest plugin is needed. The reconcile loop is not running: tests call
`server.reconcile_once()` where the real loop would, to see each step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer

from dinp import wire
from dinp.accounts import Accounts
from dinp.config import ServerConfig
from dinp.errors import NodeTaken
from dinp.roles.api import make_app
from dinp.roles.server import Server
from dinp.routes import RedisRouteStore
from dinp.store import Store
from tests.support import RedisServer

ADMIN = "at"
CLUSTER = "ct"
NODE = "n1"


@dataclass
class Api:
    server: Server
    store: Store
    client: TestClient  # type: ignore[type-arg]

    async def call(self, method: str, path: str, *, token: str | None = ADMIN,
                   body: Any = None, raw: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        kwargs: dict[str, Any] = {"headers": headers}
        if raw is not None:
            kwargs["data"] = raw
            headers["Content-Type"] = "application/json"
        elif body is not None:
            kwargs["json"] = body
        async with self.client.request(method, "/api/v1" + path, **kwargs) as resp:
            text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except json.JSONDecodeError:
            return resp.status, text

    async def heartbeat(self, node: str = NODE, *, containers: list[dict[str, Any]] | None = None,
                        address: str = "127.0.0.2", capacity_mb: int = 4096,
                        free_mb: int = 3000, **ids: str) -> tuple[int, Any]:
        """A heartbeat as an agent sends it; `agent=…, cluster=…` as a current agent does
        (without them, as an agent older than those fields)."""
        body = {"node": node, "address": address, "capacity_mb": capacity_mb,
                "free_mb": free_mb, "containers": containers or [], **ids}
        return await self.call("POST", f"/nodes/{node}/heartbeat", token=CLUSTER, body=body)

    async def nodes(self) -> list[dict[str, Any]]:
        status, body = await self.call("GET", "/nodes")
        assert status == 200, body
        return list(body)


@contextlib.asynccontextmanager
async def running_api(database_url: str, redis_url: str, node_timeout: float = 30.0,
                      heartbeat_interval: float = 2.0,
                      router_sync_timeout: float = 5.0, store_class: type[Store] = Store,
                      **settings: Any) -> AsyncIterator[Api]:
    """`settings`: more ServerConfig keys."""
    store = store_class(database_url)
    Accounts(store).ensure_defaults(ADMIN)
    route_store = RedisRouteStore(redis_url)
    config = ServerConfig(cluster_token=CLUSTER, redis_url=redis_url,
                          database_url=database_url, node_timeout=node_timeout,
                          heartbeat_interval=heartbeat_interval,
                          router_sync_timeout=router_sync_timeout, **settings)
    # As `api.start` does: the table a previous server published is inherited.
    server = Server(config, store, route_store, inherited=route_store.current())
    try:
        async with TestClient(TestServer(make_app(server))) as client:
            yield Api(server, store, client)
    finally:
        server.close()
        route_store.client.close()


def run(database_url: str, redis_url: str,
        body: Callable[[Api], Awaitable[None]], **kwargs: Any) -> None:
    async def main() -> None:
        async with running_api(database_url, redis_url, **kwargs) as api:
            await body(api)

    asyncio.run(main())


def instance_json(instance: str, app: str, *, port: int | None, state: str = "running",
                  health: str = "healthy", release: int = 1) -> dict[str, Any]:
    return {"instance": instance, "app": app, "release": release, "state": state,
            "health": health, "port": port}


# -- auth --------------------------------------------------------------------------------

def test_auth(sqlite_url: str, redis_url: str) -> None:
    async def body(api: Api) -> None:
        assert (await api.call("GET", "/apps"))[0] == 200
        status, reply = await api.call("GET", "/apps", token=None)
        assert status == 401 and "token" in reply["error"]
        assert (await api.call("GET", "/apps", token="wrong"))[0] == 401
        assert (await api.call("POST", "/apps", token="wrong",
                               body={"name": "web", "image": "hello:1"}))[0] == 401
        # The cluster token is for agents only, the admin token for users only: both are
        # known (not 401), and not allowed there (403).
        assert (await api.call("GET", "/apps", token=CLUSTER))[0] == 403
        status, _ = await api.call("POST", f"/nodes/{NODE}/heartbeat", token=ADMIN,
                                   body={"address": "127.0.0.2", "capacity_mb": 1,
                                         "free_mb": 1, "containers": []})
        assert status == 403
        assert (await api.call("GET", f"/nodes/{NODE}/assignments", token=ADMIN))[0] == 403
        assert (await api.call("GET", f"/nodes/{NODE}/assignments", token=None))[0] == 401
        # ... and nothing was registered by the refused heartbeat.
        assert await api.nodes() == []
        assert (await api.heartbeat())[0] == 200
        assert (await api.call("GET", f"/nodes/{NODE}/assignments", token=CLUSTER))[0] == 200
        # Public endpoints need no token.
        assert (await api.call("GET", "/health", token=None))[0] == 200
        # Nothing was created by a refused request.
        assert api.store.snapshot().apps == {}

    run(sqlite_url, redis_url, body)


# -- input validation ----------------------------------------------------------------------

GOOD = {"name": "web", "image": "127.0.0.1:5000/hello:1", "instances": 1, "memory": "64m"}

BAD_INPUTS = [
    ({"name": "bad name"}, "name"),
    ({"name": "Web"}, "name"),
    ({"name": "UPPER"}, "name"),
    ({"name": "web\n"}, "name"),
    ({"name": "-web"}, "name"),
    ({"name": "web-"}, "name"),
    ({"name": "api"}, "name"),
    ({"name": "dashboard"}, "name"),
    ({"name": "a" * 64}, "name"),
    ({"name": ""}, "name"),
    ({"name": 5}, "name"),
    ({"memory": "abc"}, "memory"),
    ({"memory": "1k"}, "memory"),
    ({"memory": "999g"}, "memory"),
    ({"memory": "-5m"}, "memory"),
    ({"memory": True}, "memory"),
    ({"instances": -1}, "instances"),
    ({"instances": 101}, "instances"),
    ({"instances": "x"}, "instances"),
    ({"instances": 1.5}, "instances"),
    ({"instances": True}, "instances"),
    ({"image": "UPPER CASE"}, "image"),
    ({"image": ""}, "image"),
    ({"image": "hello:1; rm -rf /"}, "image"),
    ({"env": {"1BAD": "x"}}, "env"),
    ({"env": {"PORT": "9000"}}, "env"),
    ({"env": {"DINP_APP": "x"}}, "env"),
    ({"env": {"OK": 5}}, "env"),
    ({"env": ["A=1"]}, "env"),
    ({"port": 0}, "port"),
    ({"port": 70000}, "port"),
    ({"port": "8080"}, "port"),
    ({"health_path": "health"}, "health_path"),
    ({"frobnicate": 1}, "frobnicate"),
]


def test_bad_input_is_400_naming_the_field_and_creates_nothing(
    sqlite_url: str, redis_url: str
) -> None:
    async def body(api: Api) -> None:
        failures = []
        for change, field in BAD_INPUTS:
            status, reply = await api.call("POST", "/apps", body={**GOOD, **change})
            if status != 400 or not isinstance(reply, dict) or reply.get("field") != field:
                failures.append((change, status, reply))
            elif field not in reply["error"]:
                failures.append((change, "error does not name the field", reply))
        for raw, field in [("{not json", "body"), ("[1, 2]", "body"), ('"web"', "body"),
                           ("", "body")]:
            status, reply = await api.call("POST", "/apps", raw=raw)
            if status != 400 or reply.get("field") != field:
                failures.append((raw, status, reply))
        assert failures == []

        assert (await api.call("GET", "/apps"))[1] == []
        snap = api.store.snapshot()
        assert snap.apps == {} and snap.desired.instances == ()
        assert api.store.releases("web") == []

        # The same body without the bad value is accepted.
        status, reply = await api.call("POST", "/apps", body=GOOD)
        assert status == 201, reply

    run(sqlite_url, redis_url, body)


# -- app lifecycle ---------------------------------------------------------------------------

async def _lifecycle(api: Api) -> None:
    status, created = await api.call("POST", "/apps", body={
        **GOOD, "instances": 2, "env": {"GREETING": "hi"}, "health_path": "/health"})
    assert status == 201, created
    assert created["name"] == "web" and created["instances"] == 2
    assert created["memory_mb"] == 64 and created["env"] == {"GREETING": None}  # hidden
    status, shown = await api.call("GET", "/apps/web?show_env=true")
    assert status == 200 and shown["env"] == {"GREETING": "hi"}  # when asked for

    status, shown = await api.call("GET", "/apps/web")
    assert status == 200
    assert (shown["image"], shown["instances"], shown["port"], shown["health_path"]) == (
        "127.0.0.1:5000/hello:1", 2, 8080, "/health")
    assert shown["host"] == "web.localhost"
    assert [a["name"] for a in (await api.call("GET", "/apps"))[1]] == ["web"]

    status, reply = await api.call("POST", "/apps", body={**GOOD, "image": "other:2"})
    assert status == 409 and "web" in reply["error"]
    assert (await api.call("GET", "/apps/web"))[1]["image"] == "127.0.0.1:5000/hello:1"
    assert len(api.store.releases("web")) == 1

    status, scaled = await api.call("POST", "/apps/web/scale", body={"instances": 3})
    assert status == 200 and scaled["instances"] == 3
    assert (await api.call("GET", "/apps/web"))[1]["instances"] == 3
    status, reply = await api.call("POST", "/apps/web/scale", body={"instances": "x"})
    assert status == 400 and reply["field"] == "instances"
    status, reply = await api.call("POST", "/apps/web/scale", body={"instances": 101})
    assert status == 400 and reply["field"] == "instances"
    assert api.store.get_app("web").instances == 3
    assert (await api.call("POST", "/apps/ghost/scale", body={"instances": 1}))[0] == 404

    assert (await api.call("GET", "/apps/ghost"))[0] == 404
    assert (await api.call("DELETE", "/apps/ghost"))[0] == 404
    status, reply = await api.call("DELETE", "/apps/web")
    assert status == 200 and reply == {"deleted": "web"}
    assert (await api.call("GET", "/apps/web"))[0] == 404
    assert (await api.call("GET", "/apps"))[1] == []
    assert (await api.call("DELETE", "/apps/web"))[0] == 404


def test_app_lifecycle_sqlite(sqlite_url: str, redis_url: str) -> None:
    run(sqlite_url, redis_url, _lifecycle)


def test_app_lifecycle_mariadb(mysql_url: str, redis_url: str) -> None:
    run(mysql_url, redis_url, _lifecycle)


# -- heartbeats -------------------------------------------------------------------------

def test_malformed_heartbeats_are_rejected_and_change_nothing(
    sqlite_url: str, redis_url: str
) -> None:
    good_container = instance_json("abc123", "web", port=32000)

    async def body(api: Api) -> None:
        status, reply = await api.heartbeat(containers=[good_container], free_mb=3000)
        assert status == 200, reply
        before = await api.nodes()
        assert len(before) == 1
        assert (before[0]["name"], before[0]["address"], before[0]["capacity_mb"],
                before[0]["free_mb"], before[0]["containers"]) == (
            NODE, "127.0.0.2", 4096, 3000, 1)
        await asyncio.sleep(0.3)

        base = {"node": NODE, "address": "127.0.0.9", "capacity_mb": 1, "free_mb": 1,
                "containers": []}
        bad_bodies: list[Any] = [
            [1, 2, 3],
            "heartbeat",
            None,
            {**base, "containers": [{**good_container, "state": "zombie"}]},
            {**base, "containers": [{**good_container, "health": "great"}]},
            {**base, "containers": [{**good_container, "port": 0}]},
            {**base, "containers": [{**good_container, "port": 70000}]},
            {**base, "containers": [{**good_container, "port": "80"}]},
            # One good container then a bad one: nothing of it is recorded.
            {**base, "containers": [good_container, {**good_container, "app": "BAD"}]},
            {**base, "containers": [{**good_container, "release": 0}]},
            {**base, "containers": ["not-an-object"]},
            {**base, "containers": "none"},
            {k: v for k, v in base.items() if k != "address"},
            {k: v for k, v in base.items() if k != "capacity_mb"},
            {k: v for k, v in base.items() if k != "free_mb"},
            {k: v for k, v in base.items() if k != "containers"},
            {**base, "capacity_mb": -1},
            {**base, "capacity_mb": "4096"},
            {**base, "address": ""},
            {**base, "agent": ""},
            {**base, "agent": "host a:1:x"},
            {**base, "agent": "host\nWARNING forged:1:x"},
            {**base, "agent": None},
            {**base, "cluster": None},
            {**base, "cluster": "x" * 201},
        ]
        failures = []
        for bad in bad_bodies:
            status, reply = await api.call("POST", f"/nodes/{NODE}/heartbeat", token=CLUSTER,
                                           body=bad if bad is not None else None,
                                           raw="null" if bad is None else None)
            if status != 400 or not isinstance(reply, dict) or "field" not in reply:
                failures.append((bad, status, reply))
        status, reply = await api.call("POST", f"/nodes/{NODE}/heartbeat", token=CLUSTER,
                                       raw="{broken")
        if status != 400:
            failures.append(("{broken", status, reply))
        # A bad node name in the path registers nothing either.
        status, reply = await api.call("POST", "/nodes/Bad_Node/heartbeat", token=CLUSTER,
                                       body={**base, "node": "Bad_Node"})
        if status != 400 or reply.get("field") != "node":
            failures.append(("Bad_Node", status, reply))
        assert failures == []

        after = await api.nodes()
        assert [n["name"] for n in after] == [NODE]  # no node registered by a bad one
        keys = ("name", "address", "status", "capacity_mb", "free_mb", "containers")
        assert {k: after[0][k] for k in keys} == {k: before[0][k] for k in keys}
        # The node's last report is still the good one, not refreshed by the bad ones.
        assert after[0]["last_seen_s"] >= 0.3
        assert api.store.snapshot().nodes[NODE].address == "127.0.0.2"

    run(sqlite_url, redis_url, body)


def test_heartbeat_registers_node_and_returns_assignment(sqlite_url: str, redis_url: str) -> None:
    async def body(api: Api) -> None:
        status, reply = await api.heartbeat()
        assert status == 200, reply
        assert reply["node"] == NODE and reply["status"] == "ready"
        assert reply["instances"] == [] and reply["rev"]
        assert isinstance(reply["heartbeat_interval"], int | float)
        node = api.store.snapshot().nodes[NODE]
        assert (node.address, node.capacity_mb, node.status) == ("127.0.0.2", 4096, "ready")
        nodes = await api.nodes()
        assert [(n["name"], n["status"]) for n in nodes] == [(NODE, "ready")]

    run(sqlite_url, redis_url, body)


# -- reconcile, assignments, long-poll, routes ---------------------------------------------

def test_reconcile_assigns_long_poll_wakes_and_routes_follow_health(
    sqlite_url: str, redis_url: str, redis_client: redis.Redis
) -> None:
    async def body(api: Api) -> None:
        status, first = await api.heartbeat()
        assert status == 200
        old_rev = first["rev"]

        # An agent waiting on the long-poll...
        poll = asyncio.create_task(api.call(
            "GET", f"/nodes/{NODE}/assignments?rev={old_rev}&wait=5", token=CLUSTER))
        await asyncio.sleep(0.3)
        assert not poll.done()  # nothing changed yet: it waits

        # ... is answered as soon as the app is created and placed.
        t0 = time.monotonic()
        status, reply = await api.call("POST", "/apps", body={**GOOD, "instances": 2})
        assert status == 201, reply
        await api.server.reconcile_once()
        status, polled = await asyncio.wait_for(poll, 5)
        elapsed = time.monotonic() - t0
        assert status == 200
        assert elapsed < 2.0, f"long-poll answered after {elapsed:.2f} s"
        assert polled["rev"] != old_rev
        assert len(polled["instances"]) == 2
        first_inst = polled["instances"][0]
        assert first_inst["app"] == "web" and first_inst["image"] == GOOD["image"]
        assert first_inst["memory_mb"] == 64 and first_inst["port"] == 8080

        # A long-poll with the current rev and wait=0 answers at once with the same thing.
        status, same = await api.call(
            "GET", f"/nodes/{NODE}/assignments?rev={polled['rev']}&wait=0", token=CLUSTER)
        assert status == 200 and same["rev"] == polled["rev"]
        assert same["instances"] == polled["instances"]
        # The heartbeat reply carries the same assignment.
        status, hb = await api.heartbeat()
        assert hb["rev"] == polled["rev"] and hb["instances"] == polled["instances"]
        ids = sorted(i["id"] for i in polled["instances"])

        # The app exists, so its host is known to routers, but nothing runs: no backends.
        await api.server.reconcile_once()
        assert redis_client.hgetall("/dinp/hosts") == {"web.localhost": "web"}
        assert not redis_client.exists("/rs/web.localhost")

        # One instance running and healthy, the other still starting: only one route.
        await api.heartbeat(containers=[
            instance_json(ids[0], "web", port=31001),
            instance_json(ids[1], "web", port=31002, health="starting"),
        ])
        await api.server.reconcile_once()
        assert redis_client.lrange("/rs/web.localhost", 0, -1) == ["127.0.0.2:31001"]
        rev1 = int(redis_client.get("/dinp/rev") or 0)
        assert rev1 >= 1

        # Both healthy: both routed, in one atomic change.
        await api.heartbeat(containers=[
            instance_json(ids[0], "web", port=31001),
            instance_json(ids[1], "web", port=31002),
        ])
        await api.server.reconcile_once()
        assert sorted(redis_client.lrange("/rs/web.localhost", 0, -1)) == [
            "127.0.0.2:31001", "127.0.0.2:31002"]
        assert int(redis_client.get("/dinp/rev") or 0) > rev1
        status, shown = await api.call("GET", "/apps/web")
        assert shown["status"]["healthy"] == 2 and shown["status"]["routed"] == 2

        # A container that is not running, or not healthy, is unrouted.
        await api.heartbeat(containers=[
            instance_json(ids[0], "web", port=31001, state="exited", health="unhealthy"),
            instance_json(ids[1], "web", port=31002, health="unhealthy"),
        ])
        await api.server.reconcile_once()
        assert not redis_client.exists("/rs/web.localhost")
        assert redis_client.hgetall("/dinp/hosts") == {"web.localhost": "web"}

        # Delete: every key of the app goes, the node's assignment is emptied.
        await api.heartbeat(containers=[
            instance_json(ids[0], "web", port=31001), instance_json(ids[1], "web", port=31002),
        ])
        await api.server.reconcile_once()
        assert redis_client.exists("/rs/web.localhost")
        redis_client.set("unrelated:key", "keep me")
        assert (await api.call("DELETE", "/apps/web"))[0] == 200
        await api.server.reconcile_once()
        assert not redis_client.exists("/rs/web.localhost")
        assert redis_client.hgetall("/dinp/hosts") == {}
        assert redis_client.get("unrelated:key") == "keep me"
        status, hb = await api.heartbeat()
        assert hb["instances"] == []

    run(sqlite_url, redis_url, body)


def test_long_poll_times_out_with_unchanged_assignment(sqlite_url: str, redis_url: str) -> None:
    async def body(api: Api) -> None:
        _, first = await api.heartbeat()
        t0 = time.monotonic()
        status, reply = await api.call(
            "GET", f"/nodes/{NODE}/assignments?rev={first['rev']}&wait=0.5", token=CLUSTER)
        elapsed = time.monotonic() - t0
        assert status == 200 and reply["rev"] == first["rev"]
        assert 0.4 <= elapsed < 3.0
        status, reply = await api.call(
            "GET", f"/nodes/{NODE}/assignments?wait=soon", token=CLUSTER)
        assert status == 400 and reply["field"] == "wait"
        # Numbers outside 0-60 s are refused at once, as the API document says.
        for wait in ("nan", "-5", "61", "inf", "1e9"):
            status, reply = await asyncio.wait_for(api.call(
                "GET", f"/nodes/{NODE}/assignments?rev={first['rev']}&wait={wait}",
                token=CLUSTER), 5)
            assert status == 400 and reply["field"] == "wait", wait

    run(sqlite_url, redis_url, body)


def test_nothing_is_placed_before_known_nodes_report(sqlite_url: str, redis_url: str) -> None:
    """After a restart the server waits for heartbeats before acting (safety rule)."""
    setup = Store(sqlite_url)
    setup.upsert_node(name="n1", address="127.0.0.2", capacity_mb=4096)
    setup.upsert_node(name="n2", address="127.0.0.3", capacity_mb=4096)
    setup.close()

    async def body(api: Api) -> None:
        assert (await api.call("POST", "/apps", body={**GOOD, "instances": 2}))[0] == 201
        await api.heartbeat("n1")
        await api.server.reconcile_once()
        assert api.store.snapshot().desired.instances == ()  # n2 has not reported yet
        snap = api.store.snapshot()
        assert snap.nodes["n2"].status == "ready"  # and is not declared down either
        await api.heartbeat("n2", address="127.0.0.3")
        await api.server.reconcile_once()
        placed = api.store.snapshot().desired.instances
        assert sorted(i.node for i in placed) == ["n1", "n2"]  # spread

    run(sqlite_url, redis_url, body)


def test_reconcile_on_mariadb(mysql_url: str, redis_url: str,
                              redis_client: redis.Redis) -> None:
    async def body(api: Api) -> None:
        await api.heartbeat()
        assert (await api.call("POST", "/apps", body={**GOOD, "instances": 3}))[0] == 201
        await api.server.reconcile_once()
        _, hb = await api.heartbeat()
        assert len(hb["instances"]) == 3
        await api.heartbeat(containers=[
            instance_json(i["id"], "web", port=31000 + n)
            for n, i in enumerate(hb["instances"])
        ])
        await api.server.reconcile_once()
        assert len(redis_client.lrange("/rs/web.localhost", 0, -1)) == 3
        status, _ = await api.call("POST", "/apps/web/scale", body={"instances": 1})
        assert status == 200
        await api.server.reconcile_once()
        _, hb = await api.heartbeat()
        assert len(hb["instances"]) == 1

    run(mysql_url, redis_url, body)


def test_routes_are_rebuilt_after_redis_restarts_empty(
    sqlite_url: str, redis_server: RedisServer
) -> None:
    """Redis holds nothing that cannot be rebuilt: after a restart (empty), the next
    reconcile writes the whole table again though no route changed."""

    async def body(api: Api) -> None:
        await api.heartbeat()
        assert (await api.call("POST", "/apps", body=GOOD))[0] == 201
        await api.server.reconcile_once()
        _, hb = await api.heartbeat()
        instance = hb["instances"][0]["id"]
        await api.heartbeat(containers=[instance_json(instance, "web", port=31001)])
        await api.server.reconcile_once()
        with redis_server.client() as client:
            assert client.lrange("/rs/web.localhost", 0, -1) == ["127.0.0.2:31001"]

        await asyncio.to_thread(redis_server.stop)
        await asyncio.to_thread(redis_server.start)  # back, empty, nothing else changed
        await api.heartbeat(containers=[instance_json(instance, "web", port=31001)])
        await api.server.reconcile_once()
        with redis_server.client() as client:
            assert client.lrange("/rs/web.localhost", 0, -1) == ["127.0.0.2:31001"]
            assert client.hgetall("/dinp/hosts") == {"web.localhost": "web"}

    run(sqlite_url, redis_server.url, body)


def test_without_redis_instances_are_still_placed_and_started_but_not_removed(
    sqlite_url: str, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Only the route table waits for Redis. A scale-up is placed and handed to the
    agents at once; a scale-down waits, since routers may still send its instances
    requests; once Redis is back the table is written and the removal goes on."""

    async def body(api: Api) -> None:
        await api.heartbeat()
        assert (await api.call("POST", "/apps", body=GOOD))[0] == 201
        await api.server.reconcile_once()
        _, hb = await api.heartbeat()
        first = hb["instances"][0]["id"]
        await api.heartbeat(containers=[instance_json(first, "web", port=31001)])
        await api.server.reconcile_once()

        await asyncio.to_thread(redis_server.stop)
        with caplog.at_level(logging.WARNING, logger="dinp.roles.server"):
            assert (await api.call("POST", "/apps/web/scale", body={"instances": 3}))[0] == 200
            await api.server.reconcile_once()
        _, hb = await api.heartbeat(containers=[instance_json(first, "web", port=31001)])
        assert len(hb["instances"]) == 3  # placed and assigned though Redis is down
        assert "nothing changed" not in caplog.text
        assert "route table not written" in caplog.text
        ids = sorted(i["id"] for i in hb["instances"])
        running_all = [instance_json(i, "web", port=31001 + n) for n, i in enumerate(ids)]
        await api.heartbeat(containers=running_all)

        assert (await api.call("POST", "/apps/web/scale", body={"instances": 1}))[0] == 200
        await api.server.reconcile_once()
        # The removal waits, in the database: a server restarted now would not forget it.
        assert len(api.store.snapshot().desired.instances) == 3
        _, hb = await api.heartbeat(containers=running_all)
        assert sorted(i["id"] for i in hb["instances"]) == ids
        # A server started now (from the database alone) keeps them assigned too.
        restarted = Server(api.server.config, Store(api.store.url),
                           RedisRouteStore(redis_server.url))
        try:
            restarted.reports = dict(api.server.reports)
            await restarted.reconcile_once()
            assert sorted(i.id for i in restarted.assignments["n1"].instances) == ids
        finally:
            restarted.close()

        await asyncio.to_thread(redis_server.start)
        await api.server.reconcile_once()
        _, hb = await api.heartbeat(containers=running_all)
        (kept,) = api.store.snapshot().desired.instances
        assert [i["id"] for i in hb["instances"]] == [kept.id]
        with redis_server.client() as client:
            assert len(client.lrange("/rs/web.localhost", 0, -1)) == 1

    run(sqlite_url, redis_server.url, body)


# apps.env_json is a TEXT column (64 KB on MariaDB): an env larger than that must be
# refused as input (400 naming "env"), never fail in the database with a 500.


def test_big_env_is_stored_or_refused_clearly_on_mariadb(mysql_url: str, redis_url: str) -> None:
    env = {f"VAR_{i}": "x" * 30_000 for i in range(3)}  # 90 KB, each value within limits

    async def body(api: Api) -> None:
        status, reply = await api.call("POST", "/apps", body={**GOOD, "env": env})
        assert status in (201, 400), (status, reply)
        if status == 400:
            assert reply["field"] == "env"
            assert api.store.snapshot().apps == {}
        else:
            assert (await api.call("GET", "/apps/web?show_env=true"))[1]["env"] == env

    run(mysql_url, redis_url, body)


# -- names compared exactly, node ownership, cluster identity -------------------------------

async def _names_in_urls(api: Api) -> None:
    status, _ = await api.call("POST", "/apps", body={**GOOD, "name": "prcase",
                                                     "instances": 2})
    assert status == 201
    refused = [
        ("DELETE", "/apps/prcase%20", None),
        ("DELETE", "/apps/PRCASE", None),
        ("POST", "/apps/PrCase/scale", {"instances": 0}),
        ("POST", "/apps/prcase%20/scale", {"instances": 0}),
        ("GET", "/apps/PRCASE", None),
        ("GET", "/apps/%F0%9F%9A%80", None),
        ("GET", "/events?app=%ff", None),
        ("GET", "/events?app=%F0%9F%9A%80", None),
        ("GET", "/events?app=PRCASE", None),
    ]
    failures = []
    for method, path, body in refused:
        status, reply = await api.call(method, path, body=body)
        if status != 400 or not isinstance(reply, dict) or "not a valid app name" not in \
                reply.get("error", ""):
            failures.append((method, path, status, reply))
    assert failures == []
    app = api.store.get_app("prcase")
    assert app.instances == 2  # neither scaled nor deleted
    assert (await api.call("GET", "/events?app=prcase"))[0] == 200


def test_names_in_urls_are_validated_not_matched_loosely_mariadb(
    mysql_url: str, redis_url: str
) -> None:
    run(mysql_url, redis_url, _names_in_urls)


def test_names_in_urls_are_validated_not_matched_loosely_sqlite(
    sqlite_url: str, redis_url: str
) -> None:
    run(sqlite_url, redis_url, _names_in_urls)


def test_an_agent_learns_the_cluster_before_anything_it_reports_counts(
    sqlite_url: str, redis_url: str
) -> None:
    async def body(api: Api) -> None:
        cluster = api.store.cluster_id()
        for wrong in ("", "0123456789abcdef"):
            status, reply = await api.heartbeat(agent="a1", cluster=wrong,
                                                containers=[instance_json("i1", "web",
                                                                          port=31000)])
            assert status == 409, reply
            assert reply["code"] == "cluster" and reply["cluster"] == cluster
            assert cluster in reply["error"]
        assert await api.nodes() == []  # nothing recorded of those reports
        status, reply = await api.heartbeat(agent="a1", cluster=cluster)
        assert status == 200 and reply["cluster"] == cluster
        assert [n["name"] for n in await api.nodes()] == [NODE]

    run(sqlite_url, redis_url, body)


def test_a_second_live_agent_for_a_node_is_refused_until_the_first_is_silent(
    sqlite_url: str, redis_url: str
) -> None:
    async def body(api: Api) -> None:
        cluster = api.store.cluster_id()
        assert (await api.heartbeat(agent="host-a:1:aa", cluster=cluster,
                                    address="127.0.0.2"))[0] == 200
        status, reply = await api.heartbeat(agent="host-b:2:bb", cluster=cluster,
                                            address="127.0.0.9")
        assert status == 409 and reply["code"] == "node-taken", reply
        assert "host-a:1:aa" in reply["error"] and "--node-name" in reply["hint"]
        status, reply = await api.call(
            "GET", f"/nodes/{NODE}/assignments?wait=0&agent=host-b:2:bb", token=CLUSTER)
        assert status == 409 and reply["code"] == "node-taken"
        # The refused report changed nothing: the node is still where agent A said.
        assert api.store.snapshot().nodes[NODE].address == "127.0.0.2"
        # The first agent goes on as before.
        assert (await api.heartbeat(agent="host-a:1:aa", cluster=cluster,
                                    address="127.0.0.2"))[0] == 200
        status, _ = await api.call(
            "GET", f"/nodes/{NODE}/assignments?wait=0&agent=host-a:1:aa", token=CLUSTER)
        assert status == 200

        await asyncio.sleep(1.1)  # agent A silent past node_timeout: B may take over
        status, reply = await api.heartbeat(agent="host-b:2:bb", cluster=cluster,
                                            address="127.0.0.9")
        assert status == 200, reply
        assert api.store.snapshot().nodes[NODE].address == "127.0.0.9"
        status, reply = await api.heartbeat(agent="host-a:1:aa", cluster=cluster)
        assert status == 409 and "host-b:2:bb" in reply["error"]
        await asyncio.sleep(0.2)  # the event is written in the background
        assert any("takes node n1 over" in e.message for e in api.store.events())

    run(sqlite_url, redis_url, body, node_timeout=1.0)


def test_a_restarted_server_goes_on_refusing_a_second_agent(
    sqlite_url: str, redis_url: str
) -> None:
    async def body(api: Api) -> None:
        cluster = api.store.cluster_id()
        assert (await api.heartbeat(agent="host-a:1:aa", cluster=cluster))[0] == 200
        await asyncio.sleep(0.2)  # the owner is recorded in the background
        restarted = Server(api.server.config, Store(api.store.url),
                           RedisRouteStore(redis_url))
        try:
            with contextlib.suppress(NodeTaken):
                await restarted.heartbeat(wire.parse_heartbeat(NODE, {
                    "address": "127.0.0.9", "capacity_mb": 1, "free_mb": 1,
                    "containers": [], "agent": "host-b:2:bb", "cluster": cluster}))
                raise AssertionError("the second agent was accepted after a restart")
            reply = await restarted.heartbeat(wire.parse_heartbeat(NODE, {
                "address": "127.0.0.2", "capacity_mb": 4096, "free_mb": 1,
                "containers": [], "agent": "host-a:1:aa", "cluster": cluster}))
            assert reply["node"] == NODE
        finally:
            restarted.close()

    run(sqlite_url, redis_url, body)


def test_an_agent_restarted_on_the_same_machine_takes_over_sooner(
    sqlite_url: str, redis_url: str
) -> None:
    """Silent for two heartbeat intervals is a dead agent when its successor runs on the
    same machine (a live one reports every interval): it need not wait for node_timeout,
    by which time the node would be down and its instances moved."""

    async def body(api: Api) -> None:
        cluster = api.store.cluster_id()
        assert (await api.heartbeat(agent="host-a:1:aa", cluster=cluster))[0] == 200
        # Another process on the same machine while the first still reports: refused.
        status, _ = await api.heartbeat(agent="host-a:2:cc", cluster=cluster)
        assert status == 409
        await asyncio.sleep(0.5)  # two intervals of silence, well within node_timeout
        assert (await api.heartbeat(agent="host-a:2:cc", cluster=cluster))[0] == 200
        # From another machine, the same silence is not enough.
        status, _ = await api.heartbeat(agent="host-b:3:dd", cluster=cluster)
        assert status == 409
        await asyncio.sleep(0.5)
        assert (await api.heartbeat(agent="host-b:3:dd", cluster=cluster))[0] == 409

    run(sqlite_url, redis_url, body, node_timeout=30.0, heartbeat_interval=0.2)


def test_every_route_is_in_the_openapi_document_and_nothing_else(
    sqlite_url: str, redis_url: str
) -> None:
    async def body(api: Api) -> None:
        served = {
            (route.method.lower(), info.get("formatter") or info.get("path"))
            for route in api.client.app.router.routes()  # type: ignore[union-attr]
            if route.method != "HEAD"
            for info in [route.resource.get_info()] if route.resource is not None
        }
        served = {(m, p[len("/api/v1"):]) for m, p in served if p.startswith("/api/v1/")}
        status, doc = await api.call("GET", "/openapi.json", token=None)
        assert status == 200 and doc["openapi"].startswith("3.1")
        documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
        assert served == documented

    run(sqlite_url, redis_url, body)


def test_instances_leave_only_once_every_live_router_serves_the_table_without_them(
    sqlite_url: str, redis_server: RedisServer
) -> None:
    """A router writes the revision it serves under /dinp/routers/<router> (see the
    follower's test). While one is behind, a removal waits; once it has caught up, or
    has not after router_sync_timeout, the removal goes on."""

    async def body(api: Api) -> None:
        await api.heartbeat()
        assert (await api.call("POST", "/apps", body={**GOOD, "instances": 2}))[0] == 201
        await api.server.reconcile_once()
        _, hb = await api.heartbeat()
        running = [instance_json(i["id"], "web", port=31001 + n)
                   for n, i in enumerate(hb["instances"])]
        await api.heartbeat(containers=running)
        await api.server.reconcile_once()
        client = redis_server.client()
        rev = int(client.get("/dinp/rev"))
        client.set("/dinp/routers/slow:1", rev, ex=30)
        client.set("/dinp/routers/quick:2", rev, ex=30)

        assert (await api.call("POST", "/apps/web/scale", body={"instances": 1}))[0] == 200
        await api.server.reconcile_once()
        new_rev = int(client.get("/dinp/rev"))
        assert new_rev > rev and len(client.lrange("/rs/web.localhost", 0, -1)) == 1
        _, hb = await api.heartbeat(containers=running)
        assert len(hb["instances"]) == 2  # unrouted, but still running: routers lag
        client.set("/dinp/routers/quick:2", new_rev, ex=30)
        await api.server.reconcile_once()
        assert len(api.store.snapshot().desired.instances) == 2  # "slow" still behind
        client.set("/dinp/routers/slow:1", new_rev, ex=30)
        await api.server.reconcile_once()
        _, hb = await api.heartbeat(containers=running)
        assert len(hb["instances"]) == 1  # every router serves it: the instance may go

        # A router that does not catch up (hung) is waited for router_sync_timeout only.
        assert (await api.call("POST", "/apps/web/scale", body={"instances": 3}))[0] == 200
        await api.server.reconcile_once()
        _, hb = await api.heartbeat(containers=running[:1])
        running = [instance_json(i["id"], "web", port=31011 + n)
                   for n, i in enumerate(hb["instances"])]
        await api.heartbeat(containers=running)
        await api.server.reconcile_once()
        client.set("/dinp/routers/hung:3", 1, ex=30)
        assert (await api.call("POST", "/apps/web/scale", body={"instances": 2}))[0] == 200
        await api.server.reconcile_once()
        assert len(api.store.snapshot().desired.instances) == 3
        await asyncio.sleep(0.6)
        await api.server.reconcile_once()
        assert len(api.store.snapshot().desired.instances) == 2
        client.close()

    run(sqlite_url, redis_server.url, body, router_sync_timeout=0.5)


def test_a_router_whose_report_vanished_with_redis_is_waited_for_until_it_reports_again(
    sqlite_url: str, redis_server: RedisServer
) -> None:
    """Redis restarted empty takes every router's report with it: a router seen a moment
    ago has not vanished, it has not reconnected yet and serves its old table. Removals
    wait for it to report the new table (bounded by router_sync_timeout as ever)."""

    async def body(api: Api) -> None:
        await api.heartbeat()
        assert (await api.call("POST", "/apps", body={**GOOD, "instances": 2}))[0] == 201
        await api.server.reconcile_once()
        _, hb = await api.heartbeat()
        running = [instance_json(i["id"], "web", port=31001 + n)
                   for n, i in enumerate(hb["instances"])]
        await api.heartbeat(containers=running)
        client = redis_server.client()
        await api.server.reconcile_once()
        client.set("/dinp/routers/r:1", int(client.get("/dinp/rev")), ex=30)
        await api.server.reconcile_once()  # the server has seen router r:1
        client.close()

        redis_server.restart()  # empty: the router's report is gone
        assert (await api.call("POST", "/apps/web/scale", body={"instances": 1}))[0] == 200
        await api.server.reconcile_once()
        assert len(api.store.snapshot().desired.instances) == 2  # r:1 has not reported
        client = redis_server.client()
        client.set("/dinp/routers/r:1", int(client.get("/dinp/rev")), ex=30)
        await api.server.reconcile_once()
        assert len(api.store.snapshot().desired.instances) == 1
        client.close()

    run(sqlite_url, redis_server.url, body, router_sync_timeout=30)


# -- short heartbeats ----------------------------------------------------------------------

def test_a_steady_node_sends_short_beats_and_gets_no_instances_back(
        sqlite_url: str, redis_url: str) -> None:
    """The whole report once; then "the same as report <digest>" keeps the node alive,
    and a reply to an agent holding the current assignment leaves out its instances. A
    beat naming a report the server does not hold (another digest, another agent, a
    server that restarted) is refused with report-needed and changes nothing."""
    ids = {"agent": "h:1:ab", "cluster": ""}

    async def body(api: Api) -> None:
        ids["cluster"] = api.server.cluster_id
        assert (await api.call("POST", "/apps", body={**GOOD, "instances": 1}))[0] == 201
        status, first = await api.heartbeat(digest="aa11", **ids)
        assert status == 200 and first["report"] == "aa11"
        await api.server.reconcile_once()
        status, placed = await api.heartbeat(digest="aa11", **ids)
        (inst,) = placed["instances"]
        running = [instance_json(inst["id"], "web", port=32768)]
        status, full = await api.heartbeat(containers=running, digest="bb22",
                                           rev=placed["rev"], **ids)
        assert status == 200 and full["report"] == "bb22"
        assert full["same"] is True and "instances" not in full  # it holds this one
        heard = api.server.reports[NODE].received_at

        beat = {"node": NODE, "same_as": "bb22", "free_mb": 1234, "rev": placed["rev"], **ids}
        status, short = await api.call("POST", f"/nodes/{NODE}/heartbeat", token=CLUSTER,
                                       body=beat)
        assert status == 200, short
        assert short["same"] is True and short["report"] == "bb22"
        assert short["rev"] == placed["rev"] and "instances" not in short
        assert api.server.reports[NODE].received_at > heard  # the node is alive
        assert api.server.reports[NODE].containers[0].instance == inst["id"]  # as reported
        assert api.server.heartbeats[NODE].free_mb == 1234
        # Without the rev it holds (or with an old one), the instances come back.
        status, again = await api.call("POST", f"/nodes/{NODE}/heartbeat", token=CLUSTER,
                                       body={**beat, "rev": first["rev"]})
        assert status == 200 and again["instances"] == placed["instances"]

        before = api.server.reports[NODE]
        for wrong in ({"same_as": "aa11"}, {"agent": "h:1:cd"}):
            status, refused = await api.call("POST", f"/nodes/{NODE}/heartbeat",
                                             token=CLUSTER, body={**beat, **wrong})
            assert status == 409 and refused["code"] in ("report-needed", "node-taken")
        assert api.server.reports[NODE] is before  # nothing recorded
        for bad in ({"same_as": "XYZ"}, {"same_as": ""}, {"rev": 7}, {"free_mb": -1}):
            status, _ = await api.call("POST", f"/nodes/{NODE}/heartbeat", token=CLUSTER,
                                       body={**beat, **bad})
            assert status == 400, bad

    run(sqlite_url, redis_url, body)

    async def restarted(api: Api) -> None:  # a new server holds no report of the node
        beat = {"node": NODE, "same_as": "bb22", "free_mb": 1, **ids,
                "cluster": api.server.cluster_id}
        status, refused = await api.call("POST", f"/nodes/{NODE}/heartbeat", token=CLUSTER,
                                         body=beat)
        assert status == 409 and refused["code"] == "report-needed", refused
        assert NODE not in api.server.reports

    run(sqlite_url, redis_url, restarted)


def test_a_restarted_server_does_not_record_what_ran_already_as_started(
        sqlite_url: str, redis_url: str) -> None:
    """The first report a server gets from a node lists what ran before it started:
    only a container that started lately is recorded as started (a restart must not
    write an event for every instance of the cluster)."""
    async def body(api: Api) -> None:
        old = {**instance_json("0ld0000001", "web", port=1), "started_at": time.time() - 3600}
        new = {**instance_json("n3w0000001", "web", port=2), "started_at": time.time()}
        assert (await api.heartbeat(containers=[old, new]))[0] == 200
        await asyncio.gather(*api.server._tasks)
        started = [e.message for e in api.store.events() if "started (release" in e.message]
        assert started == ["instance n3w0000001 started (release 1)"]

    run(sqlite_url, redis_url, body)


def test_after_a_start_silence_counts_only_once_first_reports_stop_coming(
        sqlite_url: str, redis_url: str) -> None:
    """A server that is still hearing nodes for the first time is catching up (after a
    restart, thousands of whole reports queue): a node not heard yet is not down while
    first reports keep arriving, only once they stopped for the quiet time."""
    async def body(api: Api) -> None:
        for node in ("n1", "n2", "n3"):
            assert (await api.heartbeat(node))[0] == 200
        server = api.server
        server.started -= 10  # as if started a while ago: the node timeout (1 s) passed
        server.reports.pop("n3")  # n3 was not heard since this start
        server._first_report_at = time.monotonic()  # but a first report came just now
        assert not server.real().complete
        server._first_report_at -= 1.0  # quiet for a node timeout: now silence counts
        assert server.real().complete
        await server.reconcile_once()
        assert {n["name"]: n["status"] for n in await api.nodes()}["n3"] == "down"

    run(sqlite_url, redis_url, body, node_timeout=1.0, heartbeat_interval=2.0)


def test_a_pass_whose_inputs_did_not_change_reuses_the_quiet_plan(
        sqlite_url: str, redis_url: str) -> None:
    """The planner runs again only when what it reads changed: a report with other
    containers, a write, a node that goes silent. Otherwise the last empty plan stands
    (and the route table is not computed again)."""
    def plans(api: Api) -> float:
        return api.server.metrics.registry.get_sample_value(
            "dinp_server_plan_seconds_count") or 0.0

    async def body(api: Api) -> None:
        assert (await api.call("POST", "/apps", body={**GOOD, "instances": 1}))[0] == 201
        await api.heartbeat("n1")
        await api.heartbeat("n2")
        await api.server.reconcile_once()  # places
        reply = (await api.heartbeat("n1"))[1]
        n1 = [instance_json(i["id"], "web", port=32768) for i in reply["instances"]]
        reply2 = (await api.heartbeat("n2"))[1]
        n2 = [instance_json(i["id"], "web", port=32769) for i in reply2["instances"]]
        await api.heartbeat("n1", containers=n1)
        await api.heartbeat("n2", containers=n2)
        await api.server.reconcile_once()
        await api.server.reconcile_once()
        count = plans(api)
        table = api.server._last_routes
        for _ in range(3):  # nothing changed: no planning, the same table
            await api.heartbeat("n1", containers=n1)
            await api.heartbeat("n2", containers=n2)
            await api.server.reconcile_once()
        assert plans(api) == count and api.server._last_routes is table
        await api.heartbeat("n1", containers=[{**c, "health": "unhealthy"} for c in n1])
        await api.server.reconcile_once()
        assert plans(api) == count + 1  # a report changed
        await api.server.reconcile_once()
        assert plans(api) == count + 1
        await asyncio.sleep(1.2)  # both nodes silent past the node timeout
        await api.server.reconcile_once()
        assert plans(api) == count + 2
        assert {n["status"] for n in await api.nodes()} == {"down"}

    run(sqlite_url, redis_url, body, node_timeout=1.0)


def test_many_nodes_silent_at_once_are_not_marked_down_and_a_late_server_waits(
        sqlite_url: str, redis_url: str) -> None:
    """More than a third of the nodes silent at once is this server's trouble (or its
    network's) rather than that many dead machines: they stay ready, for five node
    timeouts at most (then they are down after all). Two of six are marked down. And
    while the server itself was late (its event loop), a node's silence counts only
    beyond that."""
    nodes = [f"n{i}" for i in range(1, 7)]

    async def body(api: Api) -> None:
        server = api.server
        for node in nodes:
            assert (await api.heartbeat(node))[0] == 200
        await server.reconcile_once()
        await asyncio.sleep(1.1)  # all silent past the node timeout (1 s) ...
        for node in nodes[3:]:  # ... but three, which report again
            await api.heartbeat(node)
        await server.reconcile_once()
        status = {n["name"]: n["status"] for n in await api.nodes()}
        assert set(status.values()) == {"ready"}, status  # three of six: held
        await server.reconcile_once()
        assert server.metrics.registry.get_sample_value("dinp_server_nodes_held_total") == 3
        held_since = server._held_since
        assert held_since is not None
        server._held_since = held_since - 5 * 1.0 - 0.1  # held five node timeouts: enough
        for node in nodes[3:]:
            await api.heartbeat(node)
        await server.reconcile_once()
        status = {n["name"]: n["status"] for n in await api.nodes()}
        assert [n for n, st in sorted(status.items()) if st == "down"] == ["n1", "n2", "n3"]
        for node in nodes:  # all back
            await api.heartbeat(node)
        await server.reconcile_once()
        assert {n["status"] for n in await api.nodes()} == {"ready"}

        await asyncio.sleep(1.1)
        for node in nodes[2:]:  # n1 and n2 stay silent: two of six go down
            await api.heartbeat(node)
        await server.reconcile_once()
        status = {n["name"]: n["status"] for n in await api.nodes()}
        assert [n for n, st in sorted(status.items()) if st == "down"] == ["n1", "n2"]

        # The server was late 5 s lately: a node silent 1.1 s is not down yet.
        server._lags.append((time.monotonic(), 5.0))
        assert server.node_timeout() == pytest.approx(6.0)
        await asyncio.sleep(1.1)
        for node in nodes[3:]:
            await api.heartbeat(node)
        await server.reconcile_once()
        status = {n["name"]: n["status"] for n in await api.nodes()}
        assert status["n3"] == "ready"

    run(sqlite_url, redis_url, body, node_timeout=1.0)


def test_a_server_that_hears_every_node_late_waits_that_much_longer(
        sqlite_url: str, redis_url: str) -> None:
    """Heartbeats every 0.2 s that the server hears only every 0.9 s (its queue holds
    them): 0.7 s late. A node silent 1.2 s is then within node_timeout (1 s) plus that,
    and stays ready; once the nodes are heard on time again it is marked down."""
    nodes = [f"n{i:02d}" for i in range(1, 13)]

    async def body(api: Api) -> None:
        server = api.server
        for _ in range(4):  # 12 nodes, gaps of 0.9 s: 24 within two node timeouts
            for node in nodes:
                await api.heartbeat(node)
            await asyncio.sleep(0.9)
        assert server.heard_late() == pytest.approx(0.7, abs=0.1)
        assert server.node_timeout() == pytest.approx(1.7, abs=0.1)
        await server.reconcile_once()
        await asyncio.sleep(0.3)  # n01 silent 1.2 s
        for node in nodes[1:]:
            await api.heartbeat(node)
        await server.reconcile_once()
        assert {n["status"] for n in await api.nodes()} == {"ready"}
        server._gaps.clear()  # heard on time again
        await server.reconcile_once()
        status = {n["name"]: n["status"] for n in await api.nodes()}
        assert [n for n, st in sorted(status.items()) if st == "down"] == ["n01"]
        metrics = server.metrics.registry.get_sample_value
        assert metrics("dinp_server_node_timeout_seconds") == pytest.approx(1.0, abs=0.05)

    run(sqlite_url, redis_url, body, node_timeout=1.0, heartbeat_interval=0.2)


def test_a_cluster_past_max_heartbeats_per_second_is_told_a_longer_interval(
        sqlite_url: str, redis_url: str) -> None:
    """Six nodes at most two heartbeats a second: every 3 s instead of 0.5 s, in the
    reply and in /metrics, and a node is down only after 6 x the node timeout (1.5 s x
    3 / 0.5): a node silent 2 s is not down yet."""
    nodes = [f"n{i}" for i in range(1, 7)]

    async def body(api: Api) -> None:
        server = api.server
        replies = [(await api.heartbeat(node))[1] for node in nodes]
        # (It grows with each node that joins.)
        assert [r["heartbeat_interval"] for r in replies] == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
        await server.reconcile_once()
        assert server.node_timeout() == pytest.approx(9.0)
        metrics = server.metrics.registry.get_sample_value
        assert metrics("dinp_server_heartbeat_interval_seconds") == 3.0
        await asyncio.sleep(2.0)
        for node in nodes[1:]:
            await api.heartbeat(node)
        await server.reconcile_once()
        assert {n["status"] for n in await api.nodes()} == {"ready"}

    run(sqlite_url, redis_url, body, node_timeout=1.5, heartbeat_interval=0.5,
        max_heartbeats_per_second=2.0)


def test_nodes_falling_silent_in_waves_count_as_one_mass_silence(
        sqlite_url: str, redis_url: str) -> None:
    """An overloaded server hears its nodes late in waves: two nodes down in one pass,
    two more in the next, is four of nine within two node timeouts, more than a third:
    the second wave is held (a 5,000-node server had marked 1,900 live nodes down in
    passes of a few hundred, each under a third)."""
    nodes = [f"n{i}" for i in range(1, 10)]

    async def body(api: Api) -> None:
        server = api.server
        for node in nodes:
            await api.heartbeat(node)
        await server.reconcile_once()
        await asyncio.sleep(0.6)
        for node in nodes[2:]:  # n1, n2 silent from here
            await api.heartbeat(node)
        await asyncio.sleep(0.5)
        for node in nodes[4:]:  # n3, n4 too
            await api.heartbeat(node)
        await server.reconcile_once()  # n1, n2: 1.1 s silent
        status = {n["name"]: n["status"] for n in await api.nodes()}
        assert [n for n, st in sorted(status.items()) if st == "down"] == ["n1", "n2"]
        await asyncio.sleep(0.6)
        for node in nodes[4:]:
            await api.heartbeat(node)
        await server.reconcile_once()  # n3, n4: 1.1 s silent, the second wave
        status = {n["name"]: n["status"] for n in await api.nodes()}
        assert [n for n, st in sorted(status.items()) if st == "down"] == ["n1", "n2"]
        assert server.metrics.registry.get_sample_value("dinp_server_nodes_held_total") == 2

    run(sqlite_url, redis_url, body, node_timeout=1.0)
