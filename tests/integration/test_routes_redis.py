"""The route table in a real (private) Redis: the writer, the reader, and Redis going away."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from dinp.errors import Unavailable
from dinp.router.follower import RedisRouteFollower
from dinp.routes import RedisRouteStore, RouteTable, read_redis
from tests.support import RedisServer, free_port

TABLE = RouteTable(
    backends={"web.localhost": ("127.0.0.2:31001", "127.0.0.3:31002"),
              "api-2.localhost": ("127.0.0.2:31005",)},
    cnames={"www.example.com": "web.localhost", "shop.example.org": "web.localhost"},
    hosts={"web.localhost": "web", "api-2.localhost": "api-2", "idle.localhost": "idle"},
    # Only strings to Redis: these need not be real PEM (test_router_tls.py uses real ones).
    certs={"www.example.com": ("CHAIN-www", "KEY-www"),
           "*.shop.example.org": ("CHAIN-shop", "KEY-shop")},
    https={"web.localhost": '{"redirect":true,"hsts":31536000}'},
    challenges={"tok-1_A": "tok-1_A.thumbprint"},
)


@pytest.fixture
def route_store(redis_url: str) -> Iterator[RedisRouteStore]:
    store = RedisRouteStore(redis_url)
    try:
        yield store
    finally:
        store.client.close()


def assert_in_redis(client: redis.Redis, table: RouteTable) -> None:
    """Redis holds exactly `table`, in the original DINP layout."""
    rs = {k: client.lrange(k, 0, -1) for k in client.scan_iter(match="/rs/*")}
    assert rs == {f"/rs/{h}": list(b) for h, b in table.backends.items()}
    cnames = {k: client.get(k) for k in client.scan_iter(match="/cname/*")}
    assert cnames == {f"/cname/{d}": f"/rs/{h}" for d, h in table.cnames.items()}
    assert client.hgetall("/dinp/hosts") == dict(table.hosts)
    certs = {k: client.hgetall(k) for k in client.scan_iter(match="/dinp/certs/*")}
    assert certs == {f"/dinp/certs/{d}": {"cert": c, "key": k}
                     for d, (c, k) in table.certs.items()}
    assert client.hgetall("/dinp/https") == dict(table.https)
    acme = {k: client.get(k) for k in client.scan_iter(match="/dinp/acme/*")}
    assert acme == {f"/dinp/acme/{t}": a for t, a in table.challenges.items()}


def test_publish_writes_the_table_bumps_rev_and_notifies(
    route_store: RedisRouteStore, redis_client: redis.Redis
) -> None:
    redis_client.set("session:42", "someone else's")
    redis_client.rpush("/other/list", "x")
    pubsub = redis_client.pubsub()
    try:
        pubsub.subscribe("dinp:routes:changed")
        assert pubsub.get_message(timeout=2)["type"] == "subscribe"  # type: ignore[index]

        rev = route_store.publish(TABLE)
        assert rev == 1 and redis_client.get("/dinp/rev") == "1"
        assert_in_redis(redis_client, TABLE)
        msg = pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
        assert msg is not None and msg["data"] == "1"

        # The same routes again: no write, no notification, same revision.
        assert route_store.publish(TABLE) == 1
        assert pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3) is None

        # Delete an app, a domain and a backend: their keys go, the rest stays.
        smaller = RouteTable(
            backends={"web.localhost": ("127.0.0.3:31002",)},
            cnames={"www.example.com": "web.localhost"},
            hosts={"web.localhost": "web", "idle.localhost": "idle"},
        )
        assert route_store.publish(smaller) == 2
        assert_in_redis(redis_client, smaller)
        msg = pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
        assert msg is not None and msg["data"] == "2"

        # Everything deleted: nothing of dinp's is left but the revision.
        assert route_store.publish(RouteTable()) == 3
        assert_in_redis(redis_client, RouteTable())
        assert redis_client.get("/dinp/rev") == "3"
    finally:
        pubsub.close()
    # Keys that are not the route table are never touched.
    assert redis_client.get("session:42") == "someone else's"
    assert redis_client.lrange("/other/list", 0, -1) == ["x"]


def monitored(client: redis.Redis, action: Callable[[], object]) -> list[list[str]]:
    """The commands Redis ran while `action` ran (MONITOR), each as its words."""
    commands: list[list[str]] = []
    ready = threading.Event()
    done = threading.Event()

    def watch() -> None:
        with client.monitor() as monitor:
            ready.set()
            for item in monitor.listen():
                words = [w.strip('"') for w in re.findall(r'"(?:[^"\\]|\\.)*"',
                                                          item["command"])] \
                    if item["command"].startswith('"') else item["command"].split()
                if words[:2] == ["GET", "monitor-end"]:
                    return
                commands.append([words[0].upper(), *words[1:]] if words else [])

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    ready.wait(5)
    time.sleep(0.1)
    try:
        action()
    finally:
        client.get("monitor-end")
        done.set()
        thread.join(5)
    return commands


def test_https_keys_change_alone_inside_the_tables_multi(
    route_store: RedisRouteStore, redis_client: redis.Redis
) -> None:
    """A new certificate, a changed policy and a new challenge are written, in the same
    MULTI/EXEC as the revision bump and the notification; what did not change is not
    written again; what is gone is deleted."""
    route_store.publish(TABLE)
    changed = dataclasses.replace(
        TABLE,
        certs={**TABLE.certs, "*.shop.example.org": ("CHAIN-shop-2", "KEY-shop-2"),
               "new.example.net": ("CHAIN-new", "KEY-new")},
        https={"web.localhost": '{"redirect":false,"hsts":0}',
               "api-2.localhost": '{"redirect":true,"hsts":60}'},
        challenges={"tok-2": "tok-2.thumbprint"},
    )
    commands = monitored(redis_client, lambda: route_store.publish(changed))
    assert_in_redis(redis_client, changed)
    writes = [c for c in commands if c and c[0] in {"DEL", "HSET", "HDEL", "SET", "RPUSH",
                                                     "INCRBY", "PUBLISH", "MULTI", "EXEC"}]
    names = [c[0] for c in writes]
    assert names[0] == "MULTI" and names[-1] == "EXEC", writes
    assert names.count("MULTI") == 1 and {"INCRBY", "PUBLISH"} <= set(names), writes
    touched = {c[1] for c in writes if len(c) > 1 and c[0] not in {"PUBLISH"}}
    assert touched == {"/dinp/certs/*.shop.example.org", "/dinp/certs/new.example.net",
                       "/dinp/https", "/dinp/acme/tok-1_A", "/dinp/acme/tok-2",
                       "/dinp/rev"}, writes
    # Neither the unchanged certificate nor any route was written again.
    assert not any("www.example.com" in " ".join(c) for c in writes)

    # A removed domain's certificate leaves Redis.
    route_store.publish(dataclasses.replace(changed, certs={}, https={}, challenges={}))
    assert list(redis_client.scan_iter(match="/dinp/certs/*")) == []
    assert not redis_client.exists("/dinp/https")
    assert list(redis_client.scan_iter(match="/dinp/acme/*")) == []


def test_read_redis_round_trips(route_store: RedisRouteStore) -> None:
    rev = route_store.publish(TABLE)
    table = read_redis(route_store.client)
    assert dict(table.backends) == dict(TABLE.backends)
    assert dict(table.cnames) == dict(TABLE.cnames)
    assert dict(table.hosts) == dict(TABLE.hosts)
    assert dict(table.certs) == dict(TABLE.certs)
    assert dict(table.https) == dict(TABLE.https)
    assert dict(table.challenges) == dict(TABLE.challenges)
    assert table.rev == rev
    assert table.same_routes(TABLE)
    assert table.resolve("WWW.example.com:80") == ("web", TABLE.backends["web.localhost"])
    assert table.resolve("idle.localhost") == ("idle", ())
    assert table.resolve("nope.localhost") == (None, ())


def test_read_redis_of_an_original_dinp_table(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """A table written by an original DINP server: no hosts hash, bare-host cnames."""
    redis_client.rpush("/rs/legacy.example.com", "10.0.0.1:8080", "10.0.0.2:8080")
    redis_client.set("/cname/legacy.org", "legacy.example.com")
    raw = redis.Redis.from_url(redis_server.url)  # bytes replies, as RedisRouteStore uses
    try:
        table = read_redis(raw)
    finally:
        raw.close()
    assert table.backends == {"legacy.example.com": ("10.0.0.1:8080", "10.0.0.2:8080")}
    assert table.cnames == {"legacy.org": "legacy.example.com"}
    assert table.resolve("legacy.org")[0] == "legacy"


def test_flushall_is_rebuilt_on_next_publish(
    route_store: RedisRouteStore, redis_client: redis.Redis
) -> None:
    route_store.publish(TABLE)
    redis_client.flushall()  # Redis restarted without persistence, or someone flushed it
    rev = route_store.publish(TABLE)  # the same routes: still written again, all of them
    assert rev >= 1
    assert_in_redis(redis_client, TABLE)
    assert redis_client.get("/dinp/rev") == str(rev)


def test_redis_restored_from_an_old_snapshot_is_corrected(
    route_store: RedisRouteStore, redis_client: redis.Redis
) -> None:
    """Redis restarts from an RDB/AOF file holding an older table *and* its revision: the
    server's next publish must notice the revision is not the one it wrote and rewrite."""
    old = RouteTable(backends={"web.localhost": ("10.0.0.1:1000",),
                               "gone.localhost": ("10.0.0.1:1001",)},
                     hosts={"web.localhost": "web", "gone.localhost": "gone"})
    new = RouteTable(backends={"web.localhost": ("10.0.0.2:3000",)},
                     hosts={"web.localhost": "web"})
    route_store.publish(old)
    snapshot = {k: redis_client.dump(k) for k in redis_client.keys("*")}
    route_store.publish(new)
    redis_client.flushall()
    for key, value in snapshot.items():  # what a restore from the snapshot brings back
        redis_client.restore(key, 0, value)
    assert redis_client.get("/dinp/rev") == "1"
    rev = route_store.publish(new)  # unchanged for the server: it must still repair Redis
    assert_in_redis(redis_client, new)
    assert not redis_client.exists("/rs/gone.localhost")
    assert redis_client.get("/dinp/rev") == str(rev) and rev == 2


def test_stale_keys_are_removed_at_first_publish(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # Left by a previous server (an app deleted while it was down).
    redis_client.rpush("/rs/ghost.localhost", "127.0.0.9:1")
    redis_client.set("/cname/ghost.example.com", "/rs/ghost.localhost")
    redis_client.hset("/dinp/hosts", "ghost.localhost", "ghost")
    redis_client.hset("/dinp/certs/ghost.example.com", mapping={"cert": "C", "key": "K"})
    redis_client.hset("/dinp/https", "ghost.localhost", '{"redirect":true}')
    redis_client.set("/dinp/acme/ghost-token", "ghost-token.x")
    redis_client.set("/dinp/rev", "41")
    redis_client.set("unrelated", "stays")

    store = RedisRouteStore(redis_url)
    try:
        rev = store.publish(TABLE)
    finally:
        store.client.close()
    assert rev == 42
    assert_in_redis(redis_client, TABLE)
    assert redis_client.get("unrelated") == "stays"


def test_a_reader_never_sees_a_half_written_list(
    route_store: RedisRouteStore, redis_server: RedisServer
) -> None:
    host = "web.localhost"
    lists = [
        tuple(f"127.0.0.{n}:{30000 + i}" for i in range(size))
        for n, size in ((2, 7), (3, 1), (4, 12), (5, 3))
    ]
    tables = [RouteTable(backends={host: b}, hosts={host: "web"}) for b in lists]
    route_store.publish(tables[0])
    stop = threading.Event()
    seen: list[tuple[str, ...]] = []
    errors: list[BaseException] = []

    def read() -> None:
        client = redis_server.client()
        try:
            while not stop.is_set():
                seen.append(tuple(client.lrange("/rs/" + host, 0, -1)))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            client.close()

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for i in range(400):
            route_store.publish(tables[i % len(tables)])
    finally:
        stop.set()
        for t in readers:
            t.join(10)
    assert errors == []
    assert len(seen) > 100  # the readers really raced the writer
    assert set(seen) <= set(lists), set(seen) - set(lists)
    assert len(set(seen)) > 1  # and saw it change


def test_redis_down_is_unavailable_then_rebuilt_after_restart(
    route_store: RedisRouteStore, redis_server: RedisServer
) -> None:
    route_store.publish(TABLE)
    redis_server.stop()
    changed = RouteTable(backends={"web.localhost": ("127.0.0.2:31001",)},
                         cnames=TABLE.cnames, hosts=TABLE.hosts)
    t0 = time.monotonic()
    with pytest.raises(Unavailable) as info:
        route_store.publish(changed)
    assert redis_server.url in str(info.value)
    assert time.monotonic() - t0 < 15

    redis_server.start()  # same port, empty: no persistence
    rev = route_store.publish(changed)
    assert rev >= 1
    with redis_server.client() as client:
        # The whole table, not just the change that failed to go through.
        assert_in_redis(client, changed)


def test_unavailable_message_hides_the_redis_password() -> None:
    port = free_port()
    store = RedisRouteStore(f"redis://:s3cret-pw@127.0.0.1:{port}/0")
    try:
        with pytest.raises(Unavailable) as info:
            store.publish(TABLE)
    finally:
        store.client.close()
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "s3cret-pw" not in str(info.value)


# -- the router's side: RedisRouteFollower --------------------------------------------------

def test_follower_loads_follows_and_survives_redis_restart(
    route_store: RedisRouteStore, redis_server: RedisServer
) -> None:
    route_store.publish(TABLE)

    async def main() -> None:
        tables: list[RouteTable] = []
        got = asyncio.Event()

        def on_table(table: RouteTable) -> None:
            tables.append(table)
            got.set()

        follower = RedisRouteFollower(redis_server.url, on_table, resync_interval=30)
        try:
            loaded = await follower.load()
            assert loaded.same_routes(TABLE) and loaded.rev == 1

            task = asyncio.create_task(follower.run())
            try:
                await asyncio.wait_for(follower.connected.wait(), 5)
                await asyncio.wait_for(got.wait(), 5)
                assert tables[-1].same_routes(TABLE)

                # A change is followed within a second (notification, not the resync).
                changed = RouteTable(backends={"web.localhost": ("127.0.0.9:1",)},
                                     hosts={"web.localhost": "web"})
                got.clear()
                t0 = time.monotonic()
                await asyncio.to_thread(route_store.publish, changed)
                while not (tables and tables[-1].same_routes(changed)):
                    got.clear()
                    await asyncio.wait_for(got.wait(), 1.0 - (time.monotonic() - t0))
                assert time.monotonic() - t0 < 1.0

                # Redis goes away: the follower keeps its last table, never an empty one.
                count = len(tables)
                await asyncio.to_thread(redis_server.stop)
                deadline = time.monotonic() + 5
                while follower.connected.is_set() and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert not follower.connected.is_set()
                await asyncio.sleep(1.0)
                assert len(tables) == count
                assert tables[-1].same_routes(changed)

                # Redis is back, empty: the follower reconnects but keeps serving the last
                # table rather than an empty one until the server rebuilds it ...
                await asyncio.to_thread(redis_server.start)
                await asyncio.wait_for(follower.connected.wait(), 10)
                await asyncio.sleep(0.3)
                assert len(tables) == count and tables[-1].same_routes(changed)
                # ... and takes the rebuilt table as soon as it is written.
                again = RouteTable(backends={"web.localhost": ("127.0.0.7:7",)},
                                   hosts={"web.localhost": "web"})
                await asyncio.to_thread(route_store.publish, again)
                deadline = time.monotonic() + 10
                while not tables[-1].same_routes(again) and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert tables[-1].same_routes(again)
                assert follower.connected.is_set()
                assert all(len(t) for t in tables)  # never handed an empty table
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
        finally:
            await follower.close()

    asyncio.run(main())


def test_follower_resyncs_periodically(
    route_store: RedisRouteStore, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """A change written without a notification is still picked up by the periodic re-read."""
    route_store.publish(TABLE)

    async def main() -> None:
        tables: list[RouteTable] = []
        follower = RedisRouteFollower(redis_server.url, tables.append, resync_interval=0.3)
        task = asyncio.create_task(follower.run())
        try:
            await asyncio.wait_for(follower.connected.wait(), 5)
            redis_client.rpush("/rs/quiet.localhost", "127.0.0.5:5")  # no PUBLISH
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and not (
                tables and "quiet.localhost" in tables[-1].backends
            ):
                await asyncio.sleep(0.05)
            assert tables[-1].backends["quiet.localhost"] == ("127.0.0.5:5",)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await follower.close()

    asyncio.run(main())


def test_the_keys_of_an_older_dinp_go_and_every_key_suits_the_original_routers(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """The original DINP routers run `KEYS *`, split each key on `/` and switch on
    segment 1 (`rs`: LRANGE of ip:port; `cname`: GET of the /rs/ key it follows); a key
    without a `/` crashes them. Keys an older dinp wrote without one are removed."""
    redis_client.hset("dinp:hosts", "old.localhost", "old")
    redis_client.set("dinp:routes:rev", "7")
    store = RedisRouteStore(redis_url)
    try:
        store.publish(TABLE)
    finally:
        store.client.close()
    redis_client.set("/dinp/routers/host1:42", "1", ex=10)  # what a router reports
    for key in redis_client.keys("*"):  # what the original router does
        parts = key.split("/")
        assert len(parts) > 2 and parts[0] == "", key
        if parts[1] == "rs":
            assert all(re.fullmatch(r"[0-9.]+:[0-9]+", a)
                       for a in redis_client.lrange(key, 0, -1)), key
        elif parts[1] == "cname":
            target = redis_client.get(key)
            assert target and target.startswith("/rs/") and redis_client.exists(target)
        else:
            assert parts[1] == "dinp", key
    assert not redis_client.exists("dinp:hosts") and not redis_client.exists("dinp:routes:rev")


def test_a_router_reports_the_revision_it_serves_and_stops_reporting_at_close(
    route_store: RedisRouteStore, redis_server: RedisServer
) -> None:
    route_store.publish(TABLE)

    async def main() -> None:
        follower = RedisRouteFollower(redis_server.url, lambda t: None, resync_interval=30)
        task = asyncio.create_task(follower.run())
        try:
            await asyncio.wait_for(follower.connected.wait(), 5)
            deadline = time.monotonic() + 5
            while route_store.router_revisions() != {follower.report_key.rsplit("/", 1)[1]: 1}:
                assert time.monotonic() < deadline, route_store.router_revisions()
                await asyncio.sleep(0.05)
            await asyncio.to_thread(route_store.publish, RouteTable(
                backends={"web.localhost": ("127.0.0.9:1",)}, hosts={"web.localhost": "web"}))
            while list(route_store.router_revisions().values()) != [2]:
                assert time.monotonic() < deadline + 2, route_store.router_revisions()
                await asyncio.sleep(0.05)
            with redis_server.client() as client:
                assert 0 < client.ttl(follower.report_key) <= 10  # dies with the router
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await follower.close()
        assert route_store.router_revisions() == {}  # a router that stops is not waited for

    asyncio.run(main())
