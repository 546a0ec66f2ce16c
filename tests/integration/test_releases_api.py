"""Releases through the API over a real store and Redis: deploy, env, restart, rollback,
and each instance keeping its own release's image and env while a rollout runs."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.integration.test_api import GOOD, Api, instance_json, run


async def heartbeat_running(api: Api, instances: list[dict[str, Any]]) -> dict[str, Any]:
    """Report every assigned instance running and healthy; return the new assignment."""
    _, reply = await api.heartbeat(containers=[
        instance_json(i["id"], i["app"], port=31000 + n, release=i["release"])
        for n, i in enumerate(instances)])
    await api.server.reconcile_once()
    _, reply = await api.heartbeat(containers=[
        instance_json(i["id"], i["app"], port=31000 + n, release=i["release"])
        for n, i in enumerate(reply["instances"])])
    return dict(reply)


async def _rollout(api: Api) -> None:
    await api.heartbeat()
    status, _ = await api.call("POST", "/apps", body={**GOOD, "instances": 2, "surge": 2,
                                                      "env": {"A": "1"}})
    assert status == 201
    await api.server.reconcile_once()
    _, reply = await api.heartbeat()
    first = await heartbeat_running(api, reply["instances"])
    assert {(i["release"], i["image"]) for i in first["instances"]} == {(1, GOOD["image"])}

    status, app = await api.call("POST", "/apps/web/deploy", body={
        "image": "127.0.0.1:5000/hello:2", "env": {"B": "2"}})
    assert status == 200 and app["release"] == 2 and app["image"] == "127.0.0.1:5000/hello:2"
    await api.server.reconcile_once()
    _, reply = await api.heartbeat(containers=[
        instance_json(i["id"], "web", port=31000 + n) for n, i in enumerate(first["instances"])])
    by_release: dict[int, list[dict[str, Any]]] = {}
    for inst in reply["instances"]:
        by_release.setdefault(inst["release"], []).append(inst)
    # The old instances keep release 1's image and env while the new ones start.
    assert sorted(by_release) == [1, 2] and len(by_release[2]) == 2
    assert {(i["image"], tuple(sorted(i["env"]))) for i in by_release[1]} == {
        (GOOD["image"], ("A",))}
    assert {(i["image"], tuple(sorted(i["env"]))) for i in by_release[2]} == {
        ("127.0.0.1:5000/hello:2", ("A", "B"))}

    # New ones healthy: the old ones leave.
    final = await heartbeat_running(api, reply["instances"])
    final = await heartbeat_running(api, final["instances"])
    assert {i["release"] for i in final["instances"]} == {2}
    assert len(final["instances"]) == 2

    status, rows = await api.call("GET", "/apps/web/releases")
    assert status == 200
    assert [(r["version"], r["current"]) for r in rows] == [(2, True), (1, False)]
    assert rows[0]["change"] == "image 127.0.0.1:5000/hello:2; set B"
    assert rows[0]["env"] == ["A", "B"] and rows[0]["created_by"] == "admin"


async def env_of(api: Api) -> dict[str, str]:
    status, app = await api.call("GET", "/apps/web?show_env=true")
    assert status == 200
    return dict(app["env"])


async def _changes(api: Api) -> None:
    assert (await api.call("POST", "/apps", body={**GOOD, "env": {"A": "1"}}))[0] == 201
    status, reply = await api.call("POST", "/apps/web/rollback", body={})
    assert status == 409 and "no release before its first" in reply["error"]
    status, app = await api.call("POST", "/apps/web/env", body={"set": {"B": "2"},
                                                                "unset": ["A"]})
    assert status == 200 and app["release"] == 2 and app["env"] == {"B": None}  # hidden
    assert await env_of(api) == {"B": "2"}
    status, app = await api.call("POST", "/apps/web/restart")
    assert status == 200 and app["release"] == 3 and await env_of(api) == {"B": "2"}
    status, app = await api.call("POST", "/apps/web/rollback", body={})
    assert status == 200 and app["release"] == 4 and await env_of(api) == {"B": "2"}  # = 2
    status, app = await api.call("POST", "/apps/web/rollback", body={"release": 1})
    assert status == 200 and app["release"] == 5 and await env_of(api) == {"A": "1"}
    status, app = await api.call("POST", "/apps/web/deploy", body={"memory": "128m",
                                                                   "port": 9000})
    assert (app["memory_mb"], app["port"], app["release"]) == (128, 9000, 6)

    status, reply = await api.call("POST", "/apps/web/deploy", body={"port": 9000})
    assert status == 409 and "nothing would change" in reply["error"]
    status, reply = await api.call("POST", "/apps/web/rollback", body={"release": 6})
    assert status == 409
    status, reply = await api.call("POST", "/apps/web/rollback", body={"release": 99})
    assert status == 409 and "no release 99" in reply["error"]
    status, reply = await api.call("POST", "/apps/web/rollback", body={"release": 2 ** 70})
    assert status == 400 and reply["field"] == "release"
    status, reply = await api.call("POST", "/apps/web/deploy", body={"image": "BAD IMAGE"})
    assert status == 400 and reply["field"] == "image"
    status, reply = await api.call("POST", "/apps/WEB/deploy", body={"port": 1})
    assert status == 400 and reply["field"] == "name"
    assert (await api.call("POST", "/apps/ghost/restart"))[0] == 404
    # Nothing refused made a release.
    status, rows = await api.call("GET", "/apps/web/releases")
    assert [r["version"] for r in rows] == [6, 5, 4, 3, 2, 1]
    assert [r["change"] for r in rows][:5] == [
        "port 9000; memory 128m", "rollback to 1", "rollback to 2", "restart",
        "set B; unset A"]


def test_a_rollout_keeps_each_instance_on_its_own_release(sqlite_url: str,
                                                          redis_url: str) -> None:
    run(sqlite_url, redis_url, _rollout)


def test_a_rollout_on_mariadb(mysql_url: str, redis_url: str) -> None:
    run(mysql_url, redis_url, _rollout)


def test_env_restart_rollback_and_refusals(sqlite_url: str, redis_url: str) -> None:
    run(sqlite_url, redis_url, _changes)


def test_env_restart_rollback_and_refusals_on_mariadb(mysql_url: str, redis_url: str) -> None:
    run(mysql_url, redis_url, _changes)




async def _halt(api: Api) -> None:
    """A release whose instances never become healthy is halted at its deadline: the
    app goes back to the release before, which serves at full count throughout."""
    await api.heartbeat()
    status, _ = await api.call("POST", "/apps", body={**GOOD, "instances": 2,
                                                      "deploy_timeout": 1})
    assert status == 201
    await api.server.reconcile_once()
    _, reply = await api.heartbeat()
    first = await heartbeat_running(api, reply["instances"])
    old = [i["id"] for i in first["instances"]]
    _, shown = await api.call("GET", "/apps/web")
    assert shown["state"] == "running" and shown["rollout"]["status"] == "deployed"

    status, app = await api.call("POST", "/apps/web/deploy",
                                 body={"image": "127.0.0.1:5000/no-such:9"})
    assert status == 200 and app["release"] == 2
    await api.server.reconcile_once()
    _, reply = await api.heartbeat(containers=[
        instance_json(i, "web", port=31000 + n) for n, i in enumerate(old)])
    new = [i["id"] for i in reply["instances"] if i["release"] == 2]
    assert len(new) == 1  # surge: a quarter of 2, at least one, at a time
    body = {"address": "127.0.0.2", "capacity_mb": 4096, "free_mb": 3000,
            "containers": [instance_json(i, "web", port=31000 + n)
                           for n, i in enumerate(old)],
            "failures": [{"instance": new[0],
                          "message": "cannot start: no-such:9 not found"}]}
    await api.call("POST", "/nodes/n1/heartbeat", token="ct", body=body)
    _, shown = await api.call("GET", "/apps/web")
    assert shown["state"].startswith("deploying release 2: 0 of 2")

    await asyncio.sleep(1.1)  # past deploy_timeout
    await api.server.reconcile_once()
    _, shown = await api.call("GET", "/apps/web")
    assert shown["release"] == 1 and shown["image"] == GOOD["image"]
    assert shown["state"].startswith("deploy of release 2 failed: release 2: 0 of 2 new")
    assert "no-such:9 not found" in shown["state"] and shown["state"].endswith(
        "release 1 serves")
    await api.server.reconcile_once()
    _, reply = await api.call("POST", "/nodes/n1/heartbeat", token="ct", body=body)
    assert sorted(i["id"] for i in reply["instances"]) == sorted(old)  # old ones stay
    _, rows = await api.call("GET", "/apps/web/releases")
    assert [(r["version"], r["status"]) for r in rows] == [(2, "failed"), (1, "deployed")]

    # The next deploy is release 3, made from release 1.
    status, app = await api.call("POST", "/apps/web/deploy", body={"env": {"X": "1"}})
    assert app["release"] == 3 and app["image"] == GOOD["image"]
    status, app = await api.call("POST", "/apps/web/deploy/cancel")
    assert status == 200 and app["release"] == 1
    assert "release 3 cancelled" in app["state"]
    status, reply = await api.call("POST", "/apps/web/deploy/cancel")
    assert status == 409 and "no deploy in progress" in reply["error"]


async def _unschedulable(api: Api) -> None:
    await api.heartbeat(capacity_mb=1024)
    status, _ = await api.call("POST", "/apps", body={**GOOD, "instances": 1,
                                                      "memory": "2g"})
    assert status == 201
    await api.server.reconcile_once()
    _, shown = await api.call("GET", "/apps/web")
    assert shown["state"] == ("unschedulable: 1 instance(s) need 2048m each; the largest "
                              "free is 1024m on n1")


async def _crash_loop(api: Api) -> None:
    """An instance whose container keeps exiting: the app says it is crash-looping, with
    how often and the last exit; settings (no release) reach the agents' assignments."""
    await api.heartbeat()
    status, app = await api.call("POST", "/apps", body={**GOOD, "instances": 2,
                                                        "stop_grace": 30})
    assert status == 201 and app["stop_grace"] == 30
    await api.server.reconcile_once()
    _, reply = await api.heartbeat()
    running = await heartbeat_running(api, reply["instances"])
    assert {i["stop_grace"] for i in running["instances"]} == {30}
    ids = sorted(i["id"] for i in running["instances"])
    exit_3 = f"dinp-web-{ids[0]} exited with code 3: boom: no DATABASE_URL"

    def report(count: int) -> dict[str, Any]:
        return {"address": "127.0.0.2", "capacity_mb": 4096, "free_mb": 3000,
                "containers": [instance_json(ids[1], "web", port=31001),
                               instance_json(ids[0], "web", port=31000, state="exited",
                                             health="unhealthy")],
                "failures": [{"instance": ids[0], "message": exit_3, "count": count,
                              "crash": True}]}

    await api.call("POST", "/nodes/n1/heartbeat", token="ct", body=report(1))
    _, shown = await api.call("GET", "/apps/web")
    assert shown["state"] == f"failing: {exit_3}"  # one crash is not a loop yet
    await api.call("POST", "/nodes/n1/heartbeat", token="ct", body=report(4))
    _, shown = await api.call("GET", "/apps/web")
    assert shown["state"] == (
        "crash-looping: 1 of 2 instance(s) keep exiting, restarted with backoff; "
        f"{ids[0]} 4 times in a row, last: {exit_3}")
    crashed = next(i for i in shown["instance_list"] if i["id"] == ids[0])
    assert crashed["failures"] == 4 and crashed["crash_looping"]
    _, events = await api.call("GET", "/events?app=web")
    assert f"instance {ids[0]} crashed: {exit_3}" in [e["message"] for e in events]

    status, app = await api.call("POST", "/apps/web/settings",
                                 body={"stop_grace": 2.5, "surge": 1})
    assert status == 200 and (app["stop_grace"], app["surge"], app["release"]) == (2.5, 1, 1)
    await api.server.reconcile_once()
    _, reply = await api.call("POST", "/nodes/n1/heartbeat", token="ct", body=report(4))
    assert {i["stop_grace"] for i in reply["instances"]} == {2.5}
    for bad in ({"stop_grace": -1}, {"stop_grace": "10"}, {"surge": 1.5},
                {"release": 2}, {"deploy_timeout": 0}):
        status, reply = await api.call("POST", "/apps/web/settings", body=bad)
        assert status == 400, (bad, reply)
    assert (await api.call("POST", "/apps/nope/settings", body={"surge": 1}))[0] == 404


def test_a_crash_looping_instance_is_shown_as_such(sqlite_url: str, redis_url: str) -> None:
    run(sqlite_url, redis_url, _crash_loop)


def test_a_release_that_never_comes_up_is_halted_and_cancel_does_the_same(
        sqlite_url: str, redis_url: str) -> None:
    run(sqlite_url, redis_url, _halt)


def test_a_halt_on_mariadb(mysql_url: str, redis_url: str) -> None:
    run(mysql_url, redis_url, _halt)


def test_an_app_without_room_says_how_much_is_missing(sqlite_url: str, redis_url: str) -> None:
    run(sqlite_url, redis_url, _unschedulable)


async def _deleted_meanwhile(api: Api) -> None:
    """Found by schemathesis under load: an app deleted between the snapshot a reconcile
    read and the rollout verdict it records must not stop the server's loop."""
    assert (await api.call("POST", "/apps", body={**GOOD, "instances": 0}))[0] == 201
    api.store.delete_app("web")  # another server, or a request racing this reconcile
    await api.server._judge_rollouts(api.server.real())  # the snapshot still has it
    await api.server.reconcile_once()
    assert (await api.call("GET", "/apps/web"))[0] == 404


def test_an_app_deleted_during_a_reconcile_stops_nothing(sqlite_url: str,
                                                         redis_url: str) -> None:
    run(sqlite_url, redis_url, _deleted_meanwhile)


async def _domains(api: Api, redis_url: str) -> None:
    import redis as redis_lib

    client = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    for name in ("web", "shop"):
        assert (await api.call("POST", "/apps", body={**GOOD, "name": name}))[0] == 201
    status, reply = await api.call("POST", "/apps/web/domains",
                                   body={"domain": "WWW.Example.COM"})
    assert status == 201 and reply["domain"] == "www.example.com"  # stored lowercase
    await api.server.reconcile_once()
    assert client.get("/cname/www.example.com") == "/rs/web.localhost"
    for other, domain in (("shop", "www.example.com"), ("shop", "Www.Example.Com"),
                          ("web", "www.example.com")):
        status, reply = await api.call("POST", f"/apps/{other}/domains",
                                       body={"domain": domain})
        assert status == 409 and "routed to" in reply["error"], (other, domain)
    for bad in ("example", "bad_domain.com", "web.localhost", "a.web.localhost", "x" * 300,
                "www.example.com.", " www.example.com"):
        status, reply = await api.call("POST", "/apps/shop/domains", body={"domain": bad})
        assert status == 400 and reply["field"] == "domain", bad
    assert (await api.call("POST", "/apps/shop/domains",
                           body={"domain": "shop.example.org"}))[0] == 201
    status, rows = await api.call("GET", "/apps/web/domains")
    assert [r["domain"] for r in rows] == ["www.example.com"]
    assert (await api.call("GET", "/apps/web"))[1]["domains"] == ["www.example.com"]

    status, reply = await api.call("DELETE", "/apps/shop/domains/www.example.com")
    assert status == 404  # not shop's
    assert (await api.call("DELETE", "/apps/web/domains/www.example.com"))[0] == 200
    await api.server.reconcile_once()
    assert not client.exists("/cname/www.example.com")
    assert client.get("/cname/shop.example.org") == "/rs/shop.localhost"
    assert (await api.call("DELETE", "/apps/shop"))[0] == 200  # its domains go with it
    await api.server.reconcile_once()
    assert not client.exists("/cname/shop.example.org")
    assert (await api.call("POST", "/apps/web/domains",
                           body={"domain": "shop.example.org"}))[0] == 201  # free again
    client.close()


def test_custom_domains_are_unique_lowercase_and_leave_redis_with_them(
        sqlite_url: str, redis_url: str) -> None:
    run(sqlite_url, redis_url, lambda api: _domains(api, redis_url))


def test_custom_domains_on_mariadb(mysql_url: str, redis_url: str) -> None:
    run(mysql_url, redis_url, lambda api: _domains(api, redis_url))
