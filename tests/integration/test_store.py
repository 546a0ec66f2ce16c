"""The desired-state store against real databases: every test runs on MariaDB and SQLite."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy
import sqlalchemy.event
import sqlalchemy.exc
from sqlalchemy import text

from dinp.errors import Conflict, NotFound, Unavailable
from dinp.scheduler import AppSpec, Place, Remove, SetNodeStatus, Unplaceable
from dinp.store import NotLeader, Store
from tests.support import free_port


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    try:
        yield s
    finally:
        s.close()


def count(store: Store, table: str) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one())


def create(store: Store, name: str = "web", **overrides: object) -> None:
    spec: dict[str, object] = {
        "name": name, "image": "127.0.0.1:5000/hello:1", "instances": 2, "memory_mb": 128,
        "port": 8080, "env": {"GREETING": "héllo 🚀", "DB_URL": "mysql://x"},
        "health_path": "/health",
    }
    spec.update(overrides)
    store.create_app(**spec)  # type: ignore[arg-type]


def test_create_get_and_snapshot(store: Store) -> None:
    create(store, "web")
    create(store, "api-2", instances=1, memory_mb=64, env={}, health_path=None)

    app = store.get_app("web")
    assert (app.image, app.instances, app.memory_mb, app.port, app.release) == (
        "127.0.0.1:5000/hello:1", 2, 128, 8080, 1)
    assert app.env == {"GREETING": "héllo 🚀", "DB_URL": "mysql://x"}  # utf8mb4 round trip
    assert app.health_path == "/health"

    snap = store.snapshot()
    assert sorted(snap.apps) == ["api-2", "web"]
    assert snap.desired.apps["web"] == AppSpec("web", 2, 128, 1, surge=1)
    assert snap.desired.apps["api-2"] == AppSpec("api-2", 1, 64, 1, surge=1)
    assert snap.desired.instances == ()  # nothing placed until the planner says so
    assert snap.apps["api-2"].health_path is None

    releases = store.releases("web")
    assert [(r.version, r.image) for r in releases] == [(1, "127.0.0.1:5000/hello:1")]
    assert any("created" in e.message for e in store.events(app="web"))

    with pytest.raises(NotFound, match="nope"):
        store.get_app("nope")


def test_snapshot_is_seen_by_a_second_store(store: Store) -> None:
    """Another server process on the same database sees the write (it was committed)."""
    create(store, "web")
    other = Store(store.url)
    try:
        assert other.snapshot().desired.apps["web"].instances == 2
    finally:
        other.close()


def test_duplicate_name_is_a_conflict_and_creates_nothing(store: Store) -> None:
    create(store, "web")
    before = (count(store, "apps"), count(store, "releases"), count(store, "events"))

    with pytest.raises(Conflict, match="web"):
        create(store, "web", image="other:2", instances=5)

    assert (count(store, "apps"), count(store, "releases"), count(store, "events")) == before
    app = store.get_app("web")
    assert (app.image, app.instances) == ("127.0.0.1:5000/hello:1", 2)  # untouched
    assert [r.image for r in store.releases("web")] == ["127.0.0.1:5000/hello:1"]


def test_scale(store: Store) -> None:
    create(store, "web")
    assert store.scale_app("web", 5).instances == 5
    assert store.snapshot().desired.apps["web"].instances == 5
    assert any("scaled from 2 to 5" in e.message for e in store.events(app="web"))

    events = count(store, "events")
    store.scale_app("web", 5)  # no change, no event
    assert count(store, "events") == events

    assert store.scale_app("web", 0).instances == 0
    with pytest.raises(NotFound):
        store.scale_app("ghost", 1)


def test_delete_removes_instances_and_releases(store: Store) -> None:
    store.upsert_node(name="n1", address="127.0.0.2", capacity_mb=4096)
    create(store, "web")
    create(store, "keep")
    store.apply([Place("web", 1, "n1", 128), Place("web", 1, "n1", 128),
                 Place("keep", 1, "n1", 128)])
    assert len(store.snapshot().desired.instances) == 3

    store.delete_app("web")

    snap = store.snapshot()
    assert "web" not in snap.apps
    assert [i.app for i in snap.desired.instances] == ["keep"]
    assert store.releases("web") == []
    assert len(store.releases("keep")) == 1
    with pytest.raises(NotFound):
        store.get_app("web")
    with pytest.raises(NotFound):
        store.delete_app("web")
    # The name is free again.
    create(store, "web", image="hello:2")
    assert [r.image for r in store.releases("web")] == ["hello:2"]


def test_apply_places_removes_and_sets_status_in_one_transaction(store: Store) -> None:
    store.upsert_node(name="n1", address="127.0.0.2", capacity_mb=4096)
    store.upsert_node(name="n2", address="127.0.0.3", capacity_mb=2048)
    create(store, "web")

    store.apply([
        Place("web", 1, "n1", 128), Place("web", 1, "n2", 128),
        SetNodeStatus("n2", "draining"),
        Unplaceable("web", 1, 128),  # a report, not a change: ignored
    ])
    snap = store.snapshot()
    placed = sorted(snap.desired.instances, key=lambda i: i.node)
    assert [(i.app, i.release, i.node, i.memory_mb) for i in placed] == [
        ("web", 1, "n1", 128), ("web", 1, "n2", 128)]
    assert len({i.id for i in placed}) == 2
    assert snap.nodes["n2"].status == "draining"
    assert snap.desired.nodes["n2"].status == "draining"
    assert snap.nodes["n1"].status == "ready"

    on_n2 = placed[1]
    store.apply([Remove(on_n2.id, "web", "n2", "node n2 is draining"),
                 SetNodeStatus("n2", "down")])
    snap = store.snapshot()
    assert [i.id for i in snap.desired.instances] == [placed[0].id]
    assert snap.nodes["n2"].status == "down"
    # Removing a row that is already gone, or a status for an unknown node, is harmless.
    store.apply([Remove(on_n2.id, "web", "n2", "again"), SetNodeStatus("ghost", "down")])
    assert [i.id for i in store.snapshot().desired.instances] == [placed[0].id]


def test_apply_is_all_or_nothing(store: Store) -> None:
    store.upsert_node(name="n1", address="127.0.0.2", capacity_mb=4096)
    create(store, "web")
    store.apply([Place("web", 1, "n1", 128)])
    before = store.snapshot()
    events = count(store, "events")

    # The last action cannot be written (memory_mb is NOT NULL): the whole plan must fail,
    # including the placement and status change before it.
    bad = Place("web", 1, "n1", None)  # type: ignore[arg-type]
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        store.apply([Place("web", 1, "n1", 128), SetNodeStatus("n1", "down"), bad])

    after = store.snapshot()
    assert after.desired.instances == before.desired.instances
    assert after.nodes["n1"].status == "ready"
    assert count(store, "events") == events
    # The store is still usable after the failed transaction.
    store.apply([Place("web", 1, "n1", 128)])
    assert len(store.snapshot().desired.instances) == 2


def test_upsert_node(store: Store) -> None:
    store.upsert_node(name="n1", address="127.0.0.2", capacity_mb=1024)
    store.upsert_node(name="n1", address="127.0.0.9", capacity_mb=2048)
    node = store.snapshot().nodes["n1"]
    assert (node.address, node.capacity_mb, node.status) == ("127.0.0.9", 2048, "ready")
    assert count(store, "nodes") == 1


def test_unreachable_mysql_is_unavailable_naming_the_database() -> None:
    port = free_port()
    url = f"mysql+pymysql://root:s3cret-pw@127.0.0.1:{port}/dinp_nowhere"
    with pytest.raises(Unavailable) as info:
        Store(url)
    message = str(info.value)
    assert f"127.0.0.1:{port}/dinp_nowhere" in message
    assert "unreachable" in message
    assert "s3cret-pw" not in message  # the password is never shown
    assert info.value.hint and "database_url" in info.value.hint


def test_mysql_database_is_created_if_missing(mysql_url: str) -> None:
    """A database that does not exist yet is created on first start (no manual step)."""
    import pymysql

    missing = mysql_url + "_new"
    name = missing.rsplit("/", 1)[1]
    store = Store(missing)
    try:
        create(store, "web")
        assert store.get_app("web").env["GREETING"] == "héllo 🚀"
    finally:
        store.close()
        conn = pymysql.connect(host="127.0.0.1", user="root")
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()


def test_a_database_made_by_an_older_dinp_gets_the_new_columns(db_url: str) -> None:
    """Upgrading: a `nodes` table without the newer `foreign_json` column is completed
    at start, its rows keep their data and read the column's default."""
    engine = sqlalchemy.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(
            "CREATE TABLE nodes (name VARCHAR(63) PRIMARY KEY, address VARCHAR(255) NOT NULL,"
            " capacity_mb INTEGER NOT NULL, status VARCHAR(16) NOT NULL,"
            " first_seen FLOAT NOT NULL, updated_at FLOAT NOT NULL)"))
        conn.execute(sqlalchemy.text(
            "INSERT INTO nodes VALUES ('n1', '127.0.0.2', 1024, 'ready', 1, 1)"))
    engine.dispose()
    store = Store(db_url)
    try:
        node = store.snapshot().nodes["n1"]
        assert (node.address, node.capacity_mb, node.foreign) == ("127.0.0.2", 1024, [])
        store.upsert_node(name="n2", address="127.0.0.3", capacity_mb=512, running=["x1"])
        assert store.snapshot().nodes["n2"].foreign == ["x1"]
    finally:
        store.close()


def test_names_match_exactly_not_ignoring_case_or_trailing_spaces(store: Store) -> None:
    """MariaDB's default collation would let `PRCASE` or `prcase ` find (and delete)
    `prcase`: names are compared byte for byte on every database."""
    create(store, "prcase")
    store.upsert_node(name="n1", address="127.0.0.2", capacity_mb=1024)
    store.apply([Place("prcase", 1, "n1", 128)])
    for other in ("PRCASE", "PrCase", "prcase ", "prcase  "):
        with pytest.raises(NotFound):
            store.get_app(other)
        with pytest.raises(NotFound):
            store.scale_app(other, 9)
        with pytest.raises(NotFound):
            store.delete_app(other)
        assert store.events(app=other) == []
    assert store.get_app("prcase").instances == 2
    assert len(store.snapshot().desired.instances) == 1
    # A second app whose name differs only in case is a different app (were it ever valid).
    create(store, "PRCASE")
    assert sorted(store.snapshot().apps) == ["PRCASE", "prcase"]
    store.upsert_node(name="N1", address="127.0.0.3", capacity_mb=512)
    assert store.snapshot().nodes["n1"].address == "127.0.0.2"


def test_times_keep_milliseconds(store: Store) -> None:
    """Single-precision FLOAT rounds today's Unix times to steps of 128 s."""
    store.upsert_node(name="n1", address="127.0.0.2", capacity_mb=4096)
    create(store, "web")
    store.apply([Place("web", 1, "n1", 128)])
    (inst,) = store.snapshot().desired.instances
    at = 1795960000.123
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE instances SET created_at = :t"), {"t": at})
        conn.execute(text("UPDATE events SET at = :t + id / 1000.0"), {"t": at})
    (inst,) = store.snapshot().desired.instances
    assert inst.created == pytest.approx(at, abs=1e-4)
    times = [e.at for e in store.events(app="web")]
    assert len(set(times)) == len(times) > 1  # every event its own millisecond
    assert times == sorted(times, reverse=True)


def test_cluster_id_is_made_once_and_kept(store: Store) -> None:
    first = store.cluster_id()
    assert len(first) == 16 and int(first, 16) >= 0
    other = Store(store.url)
    try:
        assert other.cluster_id() == first  # every server of the cluster agrees
    finally:
        other.close()
    assert store.cluster_id() == first


def test_an_older_mariadb_schema_is_upgraded_keeping_every_row(
    mysql_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Tables made by the previous dinp (FLOAT times, case-insensitive names) get DOUBLE
    times and byte-exact names; the rows stay."""
    engine = sqlalchemy.create_engine(mysql_url)
    with engine.begin() as conn:
        conn.execute(text(
            "CREATE TABLE apps (name VARCHAR(63) NOT NULL PRIMARY KEY, image VARCHAR(255) "
            "NOT NULL, instances INTEGER NOT NULL, memory_mb INTEGER NOT NULL, port INTEGER "
            "NOT NULL, health_path VARCHAR(200), env_json TEXT NOT NULL, domains_json TEXT "
            "NOT NULL, `release` INTEGER NOT NULL, created_at FLOAT NOT NULL, updated_at "
            "FLOAT NOT NULL) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"))
        conn.execute(text(
            "CREATE TABLE events (id INTEGER NOT NULL AUTO_INCREMENT PRIMARY KEY, at FLOAT "
            "NOT NULL, app VARCHAR(63), node VARCHAR(63), message TEXT NOT NULL, "
            "INDEX ix_events_at (at)) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"))
        conn.execute(text(
            "INSERT INTO apps VALUES ('prcase', 'hello:1', 2, 64, 8080, NULL, '{}', '[]', 1,"
            " 1795960000, 1795960000)"))
        conn.execute(text("INSERT INTO events (at, app, message) VALUES "
                          "(1795960000, 'prcase', 'created'), (1795960000, NULL, 'x')"))
    engine.dispose()

    store = Store(mysql_url)
    try:
        with store.engine.connect() as conn:
            columns = {(t, c): (d, coll) for t, c, d, coll in conn.execute(text(
                "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLLATION_NAME FROM "
                "information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()"))}
        assert columns[("apps", "name")][0] == "varbinary"
        assert columns[("apps", "created_at")][0] == "double"
        assert columns[("events", "at")][0] == "double"
        assert columns[("events", "app")][0] == "varbinary"
        assert store.get_app("prcase").instances == 2  # rows kept
        assert [e.message for e in store.events(app="prcase")] == ["created"]
        assert count(store, "events") == 2
        with pytest.raises(NotFound):
            store.get_app("PRCASE")
        store.add_event("precise", app="prcase")
        newest = store.events(app="prcase")[0]
        # FLOAT would be off by up to a minute; DOUBLE keeps the time as written.
        assert newest.message == "precise" and abs(newest.at - time.time()) < 5
        # Upgrading again changes nothing: no ALTER (each takes a table lock).
        store.close()
        with caplog.at_level(logging.INFO, logger="dinp.migrations"):
            store = Store(mysql_url)
        assert caplog.records == []
        assert store.get_app("prcase").image == "hello:1"
    finally:
        store.close()


def test_the_leader_lease_is_one_servers_and_fences_its_writes(store: Store) -> None:
    """One conditional UPDATE decides who leads; an expired lease passes to the next with
    a new epoch, and a write fenced with the old epoch changes nothing."""
    a = store.claim_lease("a", "http://a:7070", 30)
    assert (a.holder, a.epoch) == ("a", 1) and a.remaining == pytest.approx(30, abs=1)
    assert store.claim_lease("b", "http://b:7070", 30).holder == "a"  # a leads
    assert store.claim_lease("a", "http://a:7070", 30).epoch == 1  # renewed, same epoch
    store.upsert_node(name="n1", address="127.0.0.2", capacity_mb=4096)
    create(store, "web")
    store.apply([Place("web", 1, "n1", 64)], fence=("a", 1))
    store.release_lease("a")  # a stops: b need not wait for the lease to expire
    b = store.claim_lease("b", "http://b:7070", 30)
    assert (b.holder, b.url, b.epoch) == ("b", "http://b:7070", 2)
    with pytest.raises(NotLeader):
        store.apply([Place("web", 1, "n1", 64)], fence=("a", 1))
    assert len(store.snapshot().desired.instances) == 1  # a's late write did nothing
    store.apply([Place("web", 1, "n1", 64)], fence=("b", 2))
    assert len(store.snapshot().desired.instances) == 2


def test_a_long_fenced_write_does_not_hold_up_the_lease_renewal(
        mysql_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lease row is locked only for a fenced write's check and commit: a renewal
    made while a big plan's statements run goes through at once (it used to wait for
    the whole write, past database_timeout, and a lone server placing 10,000 instances
    stepped down). A take-over after the write still fences it out."""
    store, other = Store(mysql_url), Store(mysql_url)
    try:
        store.cluster_id()
        store.claim_lease("a", "http://a:7070", 30)
        store.upsert_node(name="n1", address="127.0.0.2", capacity_mb=1 << 20)
        create(store, "web")
        inside, go_on = threading.Event(), threading.Event()
        count_change = Store._count_instance_change

        def paused(s: object) -> int | None:  # the write's statements ran, not committed
            inside.set()
            assert go_on.wait(10)
            return count_change(s)  # type: ignore[arg-type]

        monkeypatch.setattr(Store, "_count_instance_change", staticmethod(paused))
        errors: list[BaseException] = []

        def write() -> None:
            try:
                store.apply([Place("web", 1, "n1", 8)] * 50 + [SetNodeStatus("n1", "ready")],
                            fence=("a", 1))
            except BaseException as exc:
                errors.append(exc)

        writer = threading.Thread(target=write)
        writer.start()
        assert inside.wait(10)
        started = time.monotonic()
        renewed = other.claim_lease("a", "http://a:7070", 30)
        waited = time.monotonic() - started
        go_on.set()
        writer.join(30)
        assert not errors, errors
        assert renewed.holder == "a" and waited < 2, waited
        assert count(store, "instances") == 50
    finally:
        store.close()
        other.close()


def _rows(snap: object) -> list[tuple[str, str, int, str, int, float]]:
    instances = snap.desired.instances  # type: ignore[attr-defined]
    return sorted((i.id, i.app, i.release, i.node, i.memory_mb, i.created) for i in instances)


def test_the_instance_rows_held_between_snapshots_match_the_database(store: Store) -> None:
    """A snapshot reuses the instance rows it holds while instances_rev has not moved and
    brings them along with its own writes: what it gives is what a fresh read gives,
    after placements, removals and a deleted app, and another server's writes are seen."""
    store.cluster_id()  # the server's start makes the cluster row, which holds the counter
    store.upsert_node(name="n1", address="127.0.0.2", capacity_mb=1 << 20)
    create(store, "web")
    create(store, "api")
    store.snapshot()
    # More rows than one statement's chunk: the bulk writes go in several.
    store.apply([Place("web", 1, "n1", 8)] * 2100 + [Place("api", 1, "n1", 8)] * 3)
    assert count(store, "instances") == 2103
    assert count(store, "events") >= 2103
    statements: list[str] = []
    sqlalchemy.event.listen(store.engine, "before_cursor_execute",
                            lambda conn, cursor, sql, *_: statements.append(sql))
    fresh = Store(store.url)
    try:
        assert _rows(store.snapshot()) == _rows(fresh.snapshot())
        assert not [s for s in statements if "FROM instances" in s]  # held, not read
        web = [i for i in store.snapshot().desired.instances if i.app == "web"]
        store.apply([Remove(i.id, "web", "n1", "scaled down") for i in web[:1500]])
        assert _rows(store.snapshot()) == _rows(fresh.snapshot())
        assert len(store.snapshot().desired.instances) == 603

        # Another server's writes move the counter: this store reads the rows again.
        fresh.apply([Place("api", 1, "n1", 8)])
        fresh.delete_app("web")
        after = _rows(store.snapshot())
        assert after == _rows(fresh.snapshot())
        assert [r[1] for r in after] == ["api"] * 4

        # Any write of instance rows through a Store session moves the counter, also one
        # that does not count it itself (a writer added later).
        from dinp.models import InstanceRow
        with fresh.session() as s:
            s.execute(sqlalchemy.delete(InstanceRow).where(InstanceRow.id == after[0][0]))
            s.commit()
        assert len(store.snapshot().desired.instances) == 3
    finally:
        fresh.close()


def test_a_write_that_does_not_count_is_caught_up_with_after_a_while(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that does not bump instances_rev (a server of an older dinp during an
    upgrade, an operator's SQL) is seen once the held rows are RELOAD_SECONDS
    old."""
    store.cluster_id()
    store.upsert_node(name="n1", address="127.0.0.2", capacity_mb=4096)
    create(store, "web")
    store.apply([Place("web", 1, "n1", 128)])
    assert len(store.snapshot().desired.instances) == 1
    with store.engine.begin() as conn:
        conn.execute(text("INSERT INTO instances (id, app, {r}, node, memory_mb, created_at) "
                          "VALUES ('byhand01', 'web', 1, 'n1', 128, 1.0)".format(
                              r="`release`" if conn.dialect.name == "mysql" else '"release"')))
    assert len(store.snapshot().desired.instances) == 1  # held: the counter did not move
    monkeypatch.setattr("dinp.store.RELOAD_SECONDS", 0.0)
    assert "byhand01" in {i.id for i in store.snapshot().desired.instances}
    # Past RELOAD_SECONDS and unchanged: a summary of the table says so, the rows are not
    # read again (150,000 rows read every minute held the database thread for seconds).
    statements: list[str] = []
    sqlalchemy.event.listen(store.engine, "before_cursor_execute",
                            lambda conn, cursor, sql, *_: statements.append(sql))
    held = store.snapshot().desired.instances
    assert store.snapshot().desired.instances is held
    assert not [q for q in statements if "instances.app" in q], statements
    with store.engine.begin() as conn:  # by hand again: a row goes
        conn.execute(text("DELETE FROM instances WHERE id = 'byhand01'"))
    assert "byhand01" not in {i.id for i in store.snapshot().desired.instances}


def _desired(snap: object) -> tuple[object, ...]:
    s = snap  # a Snapshot
    return (s.desired.apps, s.desired.nodes,  # type: ignore[attr-defined]
            {k: (a.image, a.env_json, a.instances, a.release, a.stop_grace, a.https_redirect)
             for k, a in s.apps.items()},  # type: ignore[attr-defined]
            {k: (n.status, n.address, n.agent) for k, n in s.nodes.items()},  # type: ignore[attr-defined]
            s.releases,  # type: ignore[attr-defined]
            {k: [(r.version, r.status, r.image) for r in v] for k, v in s.recent.items()},  # type: ignore[attr-defined]
            s.domains, s.node_generations)  # type: ignore[attr-defined]


def _core_update(store: Store) -> None:
    from sqlalchemy import update

    from dinp.models import AppRow
    with store.session() as s:
        s.execute(update(AppRow).where(AppRow.name == "web").values(image="reg/other:9"))
        s.commit()


def test_the_rows_of_desired_state_held_between_snapshots_follow_every_write(
        store: Store) -> None:
    """Apps, nodes, releases, domains and credentials are held between snapshots while
    the cluster's desired_rev stands; every kind of write moves it, so what a snapshot
    gives is what a fresh read gives after each."""
    from dinp import releases as rel
    from dinp.access import SYSTEM
    from dinp.accounts import Accounts

    store.cluster_id()
    fresh = Store(store.url)
    statements: list[str] = []
    sqlalchemy.event.listen(store.engine, "before_cursor_execute",
                            lambda conn, cursor, sql, *_: statements.append(sql))
    writes = [
        lambda: create(store, "web"),
        lambda: store.upsert_node(name="n1", address="127.0.0.2", capacity_mb=4096),
        lambda: store.apply([Place("web", 1, "n1", 128)]),
        lambda: store.deploy("web", rel.Change(image="127.0.0.1:5000/hello:2")),
        lambda: store.record_verdict("web", 2, "deployed"),
        lambda: store.scale_app("web", 3),
        lambda: store.update_settings("web", {"stop_grace": 3.0}),
        lambda: store.add_domain("web", "www.example.test"),
        lambda: store.set_node_agent("n1", "h:1:ab"),
        lambda: store.set_node_status("n1", "draining"),
        lambda: store.apply([SetNodeStatus("n1", "ready")]),
        lambda: Accounts(store).new_node_generation("n1", actor=SYSTEM),
        lambda: store.rollback("web", 1),
        lambda: _core_update(store),  # a statement, not an ORM change, stamps the row too
        lambda: store.remove_domain("web", "www.example.test"),
        lambda: store.delete_app("web"),
        # Made again: its release 1 is another row, though its key and status are alike.
        lambda: create(store, "web", image="127.0.0.1:5000/hello:3"),
        lambda: store.apply([Place("web", 1, "n1", 128)]),
        # A row placed at a release that has no row (an app made again meanwhile, an
        # old database): the snapshot goes on without it.
        lambda: store.apply([Place("web", 9, "n1", 128)]),
    ]
    try:
        store.snapshot()
        for write in writes:
            write()
            assert _desired(store.snapshot()) == _desired(fresh.snapshot()), write
        assert store.snapshot().releases[("web", 1)].image == "127.0.0.1:5000/hello:3"
        assert ("web", 9) not in store.snapshot().releases
        statements.clear()
        held = store.snapshot()
        assert not [s for s in statements if "FROM apps" in s or "FROM nodes" in s]
        assert store.snapshot().desired.nodes is held.desired.nodes  # the same, held
    finally:
        fresh.close()
