"""The server's safety rules against a real database and Redis: what it does when it
lacks information. It must never unroute or remove what runs only because it has not
heard of it (yet)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import redis

from dinp.errors import Unavailable
from tests.integration.test_api import Api, instance_json, run


async def deploy_one(api: Api) -> str:
    """App web with one instance on n1, reported healthy and routed; its instance id."""
    assert (await api.heartbeat())[0] == 200
    status, _ = await api.call("POST", "/apps", body={"name": "web", "image": "hello:1",
                                                       "instances": 1, "memory": "64m"})
    assert status == 201
    await api.server.reconcile_once()
    (inst,) = api.server.snapshot.desired.instances
    await api.heartbeat(containers=[instance_json(inst.id, "web", port=31001)])
    await api.server.reconcile_once()
    return inst.id


def test_a_restarted_server_keeps_routes_of_nodes_it_has_not_heard_from(
    sqlite_url: str, redis_url: str
) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)

    async def before(api: Api) -> None:
        await deploy_one(api)
        assert r.lrange("/rs/web.localhost", 0, -1) == ["127.0.0.2:31001"]

    async def after_restart(api: Api) -> None:
        # The node stays silent (its agent cannot reach this server yet) past the timeout.
        await asyncio.sleep(0.4)
        await api.server.reconcile_once()
        await api.server.reconcile_once()
        nodes = await api.nodes()
        assert nodes[0]["status"] == "down"  # the planner saw the silence ...
        # ... but what the node served is still routed: nothing proved it gone.
        assert r.lrange("/rs/web.localhost", 0, -1) == ["127.0.0.2:31001"]
        assert len(api.server.snapshot.desired.instances) == 1  # no replacement fits

    try:
        run(sqlite_url, redis_url, before)
        run(sqlite_url, redis_url, after_restart, node_timeout=0.2)
    finally:
        r.close()


def test_containers_unknown_to_a_new_database_are_foreign(
    sqlite_url: str, redis_url: str
) -> None:
    async def body(api: Api) -> None:
        running = [instance_json("3f2a9c01de", "shop", port=32000)]
        status, reply = await api.heartbeat(containers=running)
        assert status == 200
        assert reply["instances"] == [] and reply["foreign"] == ["3f2a9c01de"]
        status, reply = await api.heartbeat(containers=running)  # and it stays so
        assert reply["foreign"] == ["3f2a9c01de"]
        events = (await api.call("GET", "/events"))[1]
        assert any("does not know" in e["message"] for e in events)

    run(sqlite_url, redis_url, body)


def test_a_node_reporting_an_app_name_reserved_since_is_accepted(
    sqlite_url: str, redis_url: str
) -> None:
    async def body(api: Api) -> None:
        status, _ = await api.heartbeat(containers=[instance_json("a1", "status", port=1)])
        assert status == 200

    run(sqlite_url, redis_url, body)


def test_odd_requests_get_400_not_500(sqlite_url: str, redis_url: str) -> None:
    async def body(api: Api) -> None:
        assert (await api.call("GET", "/events?limit=-5"))[0] == 400
        assert (await api.call("GET", "/events?limit=" + "9" * 5000))[0] == 400
        for wait in ("1_0", "0x10", "1e9", " 5", "inf", "9" * 400):
            status, reply = await api.call("GET", f"/nodes/n1/assignments?wait={wait}",
                                           token="ct")
            assert (status, reply["field"]) == (400, "wait"), wait
        status, _ = await api.call("GET", "/nodes/n1/assignments?wait=3.2e-49", token="ct")
        assert status == 200  # how a JSON encoder may write a small number
        assert (await api.call("POST", "/apps", raw="[" * 100_000))[0] == 400
        async with api.client.post("/api/v1/apps", data=b'{"name": "x"}', headers={
            "Authorization": "Bearer at",
            "Content-Type": "application/json; charset=no-such-charset",
        }) as resp:
            assert resp.status == 400
        async with api.client.post("/api/v1/nodes/n1/heartbeat", data=b"{}", headers={
            "Authorization": "Bearer caf\u00e9".encode().decode("latin-1"),
        }) as resp:
            assert resp.status == 401
        big = {f"K{i}": "\u00e9" * 2000 for i in range(10)}  # 20 K chars, 120 KB as JSON
        status, reply = await api.call("POST", "/apps", body={
            "name": "web", "image": "hello:1", "env": big})
        assert status == 400 and reply["field"] == "env"

    run(sqlite_url, redis_url, body)


def test_a_flood_of_api_calls_does_not_cost_a_lone_server_its_lease(
    sqlite_url: str, redis_url: str
) -> None:
    """The API's database thread is busy past database_timeout (a slow query, a flood of
    calls): renewing the lease has a thread of its own, so the server goes on leading
    instead of answering 503 "no server leads" while nothing is wrong."""
    async def body(api: Api) -> None:
        server = api.server
        await server.claim()
        assert server.leading and server.epoch is not None
        epoch, renewed = server.epoch, server._lease_at
        busy = asyncio.ensure_future(
            server.db(time.sleep, server.config.database_timeout + 1.0))
        await asyncio.sleep(0.1)
        await server.claim()
        assert server.leading and server.epoch == epoch
        assert server._lease_at > renewed, "the renewal waited behind the API's calls"
        with contextlib.suppress(Unavailable):
            await busy

    run(sqlite_url, redis_url, body)


def test_a_pass_that_outlives_the_servers_leadership_changes_nothing(
    sqlite_url: str, redis_url: str
) -> None:
    """The database answers a pass's read only after the server stepped down (its lease
    could not be renewed meanwhile), which cleared what the agents had reported: the pass
    must not plan from that emptiness (every node silent, so down, its instances placed
    again on whichever node reports first)."""
    async def body(api: Api) -> None:
        server = api.server
        await server.claim()
        await deploy_one(api)
        server.started -= server.config.node_timeout + 1  # long past the start's wait
        gate = threading.Event()
        snapshot = server.store.snapshot

        def slow_snapshot() -> Any:
            gate.wait(10)
            return snapshot()

        server.store.snapshot = slow_snapshot  # type: ignore[method-assign]
        pass_ = asyncio.ensure_future(server.reconcile_once())
        await asyncio.sleep(0.2)
        server._step_down("the lease cannot be renewed (test)")
        gate.set()
        await pass_
        server.store.snapshot = snapshot  # type: ignore[method-assign]
        assert [n.status for n in server.store.snapshot().nodes.values()] == ["ready"]
        assert len(server.store.snapshot().desired.instances) == 1

    run(sqlite_url, redis_url, body, node_timeout=0.5)
