"""The schema's migrations (Alembic, src/dinp/migrations) on SQLite and MariaDB: a new
database is made at the head and matches the models; a database of the previous release
(revision 0001, and one made before migrations existed) is upgraded keeping every row;
a second start migrates nothing; `dinp server --migrate-only` migrates and exits."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest
import sqlalchemy
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlmodel import SQLModel

from dinp import migrations
from dinp.accounts import Accounts
from dinp.models import ClusterRow
from dinp.store import Store
from tests.support import DINP, base_env

# Rows as the previous release (revision 0001) wrote them.
PREVIOUS_ROWS = [
    "INSERT INTO apps (name, image, instances, memory_mb, port, health_path, env_json, "
    "domains_json, `release`, created_at, updated_at) VALUES ('web', 'reg/web:3', 2, 128, "
    "8080, '/health', '{\"DB\": \"mysql://x\"}', '[]', 3, 1795960000.5, 1795960001.5)",
    "INSERT INTO releases (app, version, image, env_json, created_at) VALUES "
    "('web', 3, 'reg/web:3', '{\"DB\": \"mysql://x\"}', 1795960000.5)",
    "INSERT INTO instances (id, app, `release`, node, memory_mb, created_at) VALUES "
    "('ab12cd34ef', 'web', 3, 'n1', 128, 1795960002.25)",
    "INSERT INTO nodes (name, address, capacity_mb, status, foreign_json, first_seen, "
    "updated_at, agent) VALUES ('n1', '127.0.0.2', 4096, 'ready', '[]', 1, 2, 'h:1:ab')",
    "INSERT INTO events (at, app, node, message) VALUES (1795960003.125, 'web', NULL, "
    "'created with 2 instance(s)')",
    "INSERT INTO tokens (name, digest, role, created_at) VALUES ('admin', "
    "'5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8', 'admin', 1)",
    "INSERT INTO cluster (`key`, id, created_at) VALUES (1, '5f0c2a9e7d314b66', 1)",
]


def _quote(sql: str, dialect: str) -> str:
    return sql.replace("`", '"') if dialect == "sqlite" else sql


def at_revision(url: str, revision: str) -> sqlalchemy.Engine:
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        command.upgrade(migrations._config(conn), revision)
        conn.commit()
    return engine


def differences(engine: sqlalchemy.Engine) -> list[object]:
    """What the database lacks or has beyond the models (tables, columns, types,
    nullability, indexes)."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, SQLModel.metadata))


def test_a_new_database_is_made_at_the_head_and_matches_the_models(db_url: str) -> None:
    store = Store(db_url)
    try:
        assert migrations.current(store.engine) == migrations.head() == "0006"
        assert differences(store.engine) == []
    finally:
        store.close()


def test_a_database_of_the_previous_release_is_upgraded_keeping_every_row(
        db_url: str) -> None:
    engine = at_revision(db_url, "0001")
    with engine.begin() as conn:
        for sql in PREVIOUS_ROWS:
            conn.execute(text(_quote(sql, engine.dialect.name)))
    engine.dispose()

    store = Store(db_url)  # the server's start: migrates to the head
    try:
        assert migrations.current(store.engine) == "0006"
        assert differences(store.engine) == []
        app = store.get_app("web")
        assert (app.image, app.instances, app.memory_mb, app.release, app.env) == (
            "reg/web:3", 2, 128, 3, {"DB": "mysql://x"})
        assert (app.created_at, app.surge, app.deploy_timeout, app.stop_grace) == (
            1795960000.5, 0, 120.0, 10.0)
        assert (app.https_redirect, app.hsts) == (False, 0)
        (release,) = store.releases("web")
        assert (release.version, release.status, release.change, release.failure) == (
            3, "deployed", "", "")
        snap = store.snapshot()
        (inst,) = snap.desired.instances
        assert (inst.id, inst.node, inst.release, inst.created) == (
            "ab12cd34ef", "n1", 3, 1795960002.25)
        assert snap.nodes["n1"].agent == "h:1:ab"
        assert [e.message for e in store.events(app="web")] == ["created with 2 instance(s)"]
        assert store.cluster_id() == "5f0c2a9e7d314b66"
        with store.session() as s:
            assert s.get(ClusterRow, 1).instances_rev == 0  # filled in by 0006
        # The server's own start then gives old rows their owners.
        accounts = Accounts(store)
        assert accounts.ensure_defaults() is None
        assert store.get_app("web").team == "default"
        with store.engine.connect() as conn:
            owner = conn.execute(text("SELECT user FROM tokens")).scalar_one()
        assert (owner.decode() if isinstance(owner, bytes) else owner) == "admin"
    finally:
        store.close()


def test_a_database_made_before_migrations_is_brought_to_the_head(db_url: str) -> None:
    """No alembic_version table at all: what `create_all` and the old in-place upgrades
    made (they added newer columns nullable, as `apps.surge` here). Every revision runs,
    each skipping what the database has already and making such a column NOT NULL."""
    engine = at_revision(db_url, "0001")
    with engine.begin() as conn:
        for sql in PREVIOUS_ROWS[:2]:
            conn.execute(text(_quote(sql, engine.dialect.name)))
        conn.execute(text("ALTER TABLE apps ADD COLUMN surge INTEGER"))
        conn.execute(text("UPDATE apps SET surge = 2"))
        conn.execute(text("DROP TABLE alembic_version"))
    engine.dispose()
    store = Store(db_url)
    try:
        assert migrations.current(store.engine) == "0006"
        assert differences(store.engine) == []
        assert (store.get_app("web").image, store.get_app("web").surge) == ("reg/web:3", 2)
    finally:
        store.close()


def test_a_second_start_migrates_nothing(db_url: str,
                                         caplog: pytest.LogCaptureFixture) -> None:
    Store(db_url).close()
    statements: list[str] = []
    engine = sqlalchemy.create_engine(db_url)
    sqlalchemy.event.listen(engine, "before_cursor_execute",
                            lambda conn, cursor, sql, *_: statements.append(sql))
    with caplog.at_level(logging.INFO, logger="dinp.migrations"):
        assert migrations.upgrade(engine) == "0006"
    engine.dispose()
    changes = [s for s in statements if s.lstrip().upper().startswith(
        ("CREATE", "ALTER", "DROP", "INSERT", "UPDATE"))]
    assert changes == [] and caplog.records == []


def test_migrate_only_migrates_and_exits(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dinp.db'}"
    env = base_env(tmp_path, DINP_DATABASE_URL=url, DINP_CLUSTER_TOKEN="x" * 32)
    result = subprocess.run([DINP, "server", "--migrate-only"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "database at revision 0006 (the newest)" in result.stdout
    engine = sqlalchemy.create_engine(url)
    assert migrations.current(engine) == "0006"
    engine.dispose()
    again = subprocess.run([DINP, "server", "--migrate-only"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "0006" in again.stdout
    bad = subprocess.run([DINP, "server", "--migrate-only"],
                         env=dict(env, DINP_DATABASE_URL="mysql+pymysql://root@127.0.0.1:1/x"),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 6 and "unreachable" in bad.stderr
