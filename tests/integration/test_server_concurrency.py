"""The server's database calls from several threads at once (the API's beside the
reconcile's), against real databases: what many writes at once leave behind must be
what one at a time would."""

from __future__ import annotations

import asyncio
import threading
import time

import sqlalchemy.event

from dinp.roles.server import Server
from dinp.routes import RedisRouteStore
from dinp.scheduler import Place
from dinp.store import Snapshot, Store
from tests.integration.test_api import GOOD, Api, run
from tests.integration.test_store import _rows

APPS = 24


def _assigned(server: Server) -> dict[str, tuple[str, list[tuple[str, str, int]]]]:
    return {node: (a.rev, [(i.id, i.image, i.release) for i in a.instances])
            for node, a in server.assignments.items()}


def test_many_creates_at_once_all_land_and_every_one_is_placed(
        mysql_url: str, redis_url: str) -> None:
    """Two dozen creates at once on a new database (whose default team the first of them
    makes), with reconcile passes running meanwhile: every create answers 201, every
    app gets its instances, and the rows the server holds are the database's."""
    async def body(api: Api) -> None:
        await api.heartbeat(capacity_mb=1 << 20)
        for n in (2, 3):
            await api.heartbeat(f"n{n}", capacity_mb=1 << 20)

        async def create(k: int) -> int:
            status, answer = await api.call("POST", "/apps", body={
                **GOOD, "name": f"app{k:02d}", "instances": 3, "memory": "64m"})
            assert status == 201, answer
            return status

        async def reconcile_meanwhile(done: asyncio.Event) -> int:
            passes = 0
            while not done.is_set():
                await api.server.reconcile_once()
                passes += 1
            return passes

        done = asyncio.Event()
        passes = asyncio.ensure_future(reconcile_meanwhile(done))
        assert await asyncio.gather(*(create(k) for k in range(APPS))) == [201] * APPS
        done.set()
        assert await passes >= 1
        await api.server.reconcile_once()

        status, listed = await api.call("GET", "/apps")
        assert status == 200
        assert sorted(a["name"] for a in listed) == [f"app{k:02d}" for k in range(APPS)]
        held = api.store.snapshot()
        fresh = Store(api.store.url)
        try:
            assert _rows(held) == _rows(fresh.snapshot())
        finally:
            fresh.close()
        per_app: dict[str, int] = {}
        for inst in held.desired.instances:
            per_app[inst.app] = per_app.get(inst.app, 0) + 1
        assert per_app == {f"app{k:02d}": 3 for k in range(APPS)}
        assigned = sum(len(a.instances) for a in api.server.assignments.values())
        assert assigned == 3 * APPS

    run(mysql_url, redis_url, body)


def test_assignments_kept_up_change_by_change_are_the_ones_made_afresh(
        mysql_url: str, redis_url: str) -> None:
    """The server makes again only the assignments of nodes a change touches: after
    placements, removals, a deploy and a settings change, every node's assignment (its
    revision and instances) is the one a server started now makes from the database."""
    async def body(api: Api) -> None:
        for n in (1, 2, 3):
            await api.heartbeat(f"n{n}" if n > 1 else "n1", capacity_mb=1 << 20)

        async def check() -> None:
            await api.server.reconcile_once()
            restarted = Server(api.server.config, Store(api.store.url),
                               RedisRouteStore(api.server.config.redis_url))
            try:
                assert _assigned(api.server) == _assigned(restarted)
            finally:
                restarted.close()

        for name in ("web", "shop"):
            assert (await api.call("POST", "/apps", body={
                **GOOD, "name": name, "instances": 4, "memory": "64m"}))[0] == 201
        await check()
        assert (await api.call("POST", "/apps/web/scale", body={"instances": 2}))[0] == 200
        await api.server.reconcile_once()  # (the removal waits for a table without them)
        await check()
        assert (await api.call("POST", "/apps/shop/deploy",
                               body={"env": {"COLOR": "blue"}}))[0] in (200, 201)
        await check()
        assert (await api.call("POST", "/apps/web/settings",
                               body={"stop_grace": 3}))[0] == 200
        await check()
        assert (await api.call("DELETE", "/apps/web"))[0] in (200, 204)
        await check()
        assert {i.app for a in api.server.assignments.values() for i in a.instances} == {"shop"}

    run(mysql_url, redis_url, body)


def test_a_late_patch_keeps_rows_a_snapshot_in_another_thread_read_already(
        db_url: str) -> None:
    """A write's patch of the held instance rows that arrives after a snapshot (in
    another thread) read the rows the write made leaves them held: the next snapshot
    reads no instance rows, and gives what the database holds."""
    store, other = Store(db_url), Store(db_url)
    try:
        store.cluster_id()
        store.upsert_node(name="n1", address="127.0.0.2", capacity_mb=1 << 20)
        store.create_app(name="web", image="127.0.0.1:5000/hello:2", instances=1,
                         memory_mb=8, port=8080, env={}, health_path=None)
        store.apply([Place("web", 1, "n1", 8)])
        store.snapshot()
        other.apply([Place("web", 1, "n1", 8)])  # as if this store's own, not patched yet
        with store.session() as s:
            rev = s.execute(sqlalchemy.text("SELECT instances_rev FROM cluster")).scalar()
        assert len(store.snapshot().desired.instances) == 2  # read: the counter moved
        store._patch_instances(rev)  # the write's patch, after the snapshot
        statements: list[str] = []
        sqlalchemy.event.listen(store.engine, "before_cursor_execute",
                                lambda conn, cursor, sql, *_: statements.append(sql))
        assert _rows(store.snapshot()) == _rows(other.snapshot())
        assert not [s for s in statements if "FROM instances" in s]
    finally:
        store.close()
        other.close()


class SlowReads(Store):
    """A real store whose snapshots take `delay` seconds once `slow` is set: a database
    that answers, slowly."""

    delay = 2.0

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.slow = threading.Event()

    def snapshot(self) -> Snapshot:
        if self.slow.is_set():
            time.sleep(self.delay)
        return super().snapshot()


def test_a_write_answers_though_the_read_after_it_is_slow(
        sqlite_url: str, redis_url: str) -> None:
    """The read of desired state after a write outlasts database_timeout: the write is
    made, so it answers (not a 503 that would make a client send it again), and the
    server's reads show the change once that read ends."""
    async def body(api: Api) -> None:
        store = api.store
        assert isinstance(store, SlowReads)
        assert (await api.call("POST", "/apps", body={**GOOD, "instances": 1}))[0] == 201
        store.slow.set()
        started = time.monotonic()
        status, answer = await api.call("POST", "/apps/web/scale", body={"instances": 3})
        took = time.monotonic() - started
        assert status == 200, answer
        assert took < store.delay  # answered before the slow read ended
        deadline = time.monotonic() + 10
        # (On SQLite the API's reads wait behind the slow one: 503 until it ends.)
        while (await api.call("GET", "/apps/web"))[1].get("instances") != 3:
            assert time.monotonic() < deadline, "the change never showed"
            await asyncio.sleep(0.1)
        store.slow.clear()
        # A write whose read is quick shows at once, as before.
        assert (await api.call("POST", "/apps/web/scale", body={"instances": 2}))[0] == 200
        assert (await api.call("GET", "/apps/web"))[1]["instances"] == 2

    run(sqlite_url, redis_url, body, database_timeout=0.5, store_class=SlowReads)


def _desired(snap: Snapshot) -> tuple[object, ...]:
    """Every row of desired state a snapshot gives besides instances, column by column."""
    return (snap.desired.apps, snap.desired.nodes,
            {n: a.model_dump() for n, a in snap.apps.items()},
            {n: [r.model_dump() for r in rs] for n, rs in snap.recent.items()},
            snap.domains, snap.node_generations, snap.releases)


def test_creates_are_held_without_reading_and_in_the_order_they_committed(
        db_url: str) -> None:
    """An app created through a Store is in the rows it holds at once (the next snapshot
    reads no apps or nodes, held_snapshot shows it), also when the writes' patches come
    while a snapshot is being read: they wait for it, and go in by the order in which
    the writes committed. What is held is what a fresh read gives."""
    store = Store(db_url)
    fresh = Store(db_url)
    try:
        store.cluster_id()
        store.upsert_node(name="n1", address="127.0.0.2", capacity_mb=1 << 20)
        create = {"image": "127.0.0.1:5000/hello:2", "instances": 2, "memory_mb": 8,
                  "port": 8080, "env": {"A": "1"}, "health_path": "/"}
        store.create_app(name="web", **create)
        store.apply([Place("web", 1, "n1", 8)])
        store.snapshot()
        store.create_app(name="shop", **create)
        held = store.held_snapshot()
        assert held is not None and "shop" in held.apps
        with store._held_lock:  # a snapshot being read in another thread
            threads = [threading.Thread(target=store.create_app, kwargs={"name": n, **create})
                       for n in ("blog", "wiki")]
            for t in threads:
                t.start()
            for t in threads:
                t.join(5)  # (they would hang here if a write waited for the read)
                assert not t.is_alive()
            waiting = store.held_snapshot()
            assert waiting is not None and "blog" not in waiting.apps
        store.create_app(name="docs", **create)  # its patch brings the two before it in
        statements: list[str] = []
        sqlalchemy.event.listen(store.engine, "before_cursor_execute",
                                lambda conn, cursor, sql, *_: statements.append(sql))
        snap = store.snapshot()
        assert not [s for s in statements if "FROM apps" in s or "FROM nodes" in s]
        assert sorted(snap.apps) == ["blog", "docs", "shop", "web", "wiki"]
        assert _desired(snap) == _desired(fresh.snapshot())
        assert _rows(snap) == _rows(fresh.snapshot())
        held = store.held_snapshot()
        assert held is not None and _desired(held) == _desired(snap)
    finally:
        store.close()
        fresh.close()


def test_a_created_app_shows_at_once_though_reads_are_slow(
        sqlite_url: str, redis_url: str) -> None:
    """A create is answered from the rows the store holds, without a read of desired
    state: with every read taking 2 s, it answers at once and the app shows at once."""
    async def body(api: Api) -> None:
        store = api.store
        assert isinstance(store, SlowReads)
        store.slow.set()
        started = time.monotonic()
        status, answer = await api.call("POST", "/apps", body={**GOOD, "instances": 1})
        assert status == 201, answer
        assert (await api.call("GET", "/apps/web"))[0] == 200
        assert time.monotonic() - started < store.delay

    run(sqlite_url, redis_url, body, database_timeout=5, store_class=SlowReads)


def test_a_snapshot_read_before_a_create_does_not_hide_it(
        db_url: str, redis_url: str) -> None:
    """A reconcile pass read its snapshot before a create, and installs it after the
    create answered, at a moment when the store's held rows make no snapshot (another
    write changed instance rows since): the app still shows, with the pass's rows."""
    async def body(api: Api) -> None:
        await api.heartbeat(capacity_mb=1 << 20)
        assert (await api.call("POST", "/apps", body={**GOOD, "name": "old"}))[0] == 201
        await api.server.reconcile_once()
        read_before = await asyncio.to_thread(api.store.snapshot)
        assert (await api.call("POST", "/apps", body={**GOOD, "name": "shop"}))[0] == 201
        await asyncio.to_thread(api.store.apply, [Place("old", 1, "n1", 64)])
        assert api.store.held_snapshot() is None  # (until a snapshot reads them)
        api.server._install(read_before)
        status, listed = await api.call("GET", "/apps")
        assert status == 200 and sorted(a["name"] for a in listed) == ["old", "shop"]
        assert (await api.call("GET", "/apps/shop"))[0] == 200
        await api.server.reconcile_once()
        assert _rows(api.server.snapshot) == _rows(await asyncio.to_thread(
            Store(api.store.url).snapshot))

    run(db_url, redis_url, body)
