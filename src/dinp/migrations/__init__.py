"""The database schema's migrations, owned by Alembic: every table and column a dinp
release adds or changes is a revision in `versions/`, applied in order at the server's
start (or by `dinp server --migrate-only`), each keeping every row.

Each revision's operations are idempotent (`ops.py`: a table or column is made only if
missing), so a database made before migrations existed, by `create_all` and the old
in-place upgrades, is brought to the head the same way: from the first revision on,
skipping what it has already. Before that, on MySQL/MariaDB, columns an older dinp
typed differently (FLOAT times, VARCHAR names) are converted, as they always were.
"""

from __future__ import annotations

import logging
from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from dinp.migrations import legacy

log = logging.getLogger(__name__)
MYSQL = {"mysql", "mariadb"}
LOCK = "dinp-migrations"  # MySQL's named lock: one server migrates at a time


def _config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("dinp") / "migrations"))
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision this dinp knows."""
    script = ScriptDirectory.from_config(_config(None))  # type: ignore[arg-type]
    rev = script.get_current_head()
    assert rev is not None
    return rev


def current(engine: Engine) -> str | None:
    """The revision the database is at (None: never migrated)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> str:
    """Bring the database to the newest revision, keeping every row; return it."""
    with engine.connect() as conn:
        mysql = engine.dialect.name in MYSQL
        if mysql:  # two servers starting at once take turns
            got = conn.execute(text("SELECT GET_LOCK(:n, 120)"), {"n": LOCK}).scalar()
            if got != 1:
                raise TimeoutError("another server held the migration lock for 120 s")
        try:
            before = MigrationContext.configure(conn).get_current_revision()
            if before is None and mysql:
                legacy.convert_types(conn)
            conn.commit()
            command.upgrade(_config(conn), "head")
            conn.commit()
            after = MigrationContext.configure(conn).get_current_revision()
        finally:
            if mysql:
                conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": LOCK})
                conn.commit()
    if before != after:
        log.info("database migrated from %s to %s", before or "(unversioned)", after)
    assert after is not None
    return after
