"""The schema's upgrade path: what a newer dinp changes in tables an older one made.

Run at every server start, after `create_all` made the missing tables. Each step is
idempotent and keeps every row:

- columns added by a newer dinp are added (nullable, then filled with their default);
- on MySQL/MariaDB, columns whose type changed are altered in place: times stored as
  single-precision FLOAT become DOUBLE (values already rounded stay as they are), names
  stored as case-insensitive VARCHAR become VARBINARY (compared byte for byte).

SQLite needs only the first: its REAL is a double and `=` compares bytes.
"""

from __future__ import annotations

import logging

from sqlalchemy import Column, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateColumn
from sqlmodel import SQLModel

log = logging.getLogger(__name__)

# Column types a newer dinp changed, as MySQL names them: what `_alter_changed_columns`
# converts columns to.
CHANGED_TYPES = frozenset({"double", "varbinary"})


def upgrade(engine: Engine) -> None:
    """Bring tables made by an older dinp up to the current models."""
    with engine.begin() as conn:
        _add_missing_columns(conn)
        if engine.dialect.name in {"mysql", "mariadb"}:
            _alter_changed_columns(conn)


def _add_missing_columns(conn: Connection) -> None:
    existing = inspect(conn)
    for table in SQLModel.metadata.sorted_tables:
        if not existing.has_table(table.name):
            continue
        have = {c["name"] for c in existing.get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))
            default = getattr(column.default, "arg", None)
            if default is not None and not callable(default):
                conn.execute(text(f"UPDATE {table.name} SET {column.name} = :v"),
                             {"v": default})
            log.info("database: added %s.%s", table.name, column.name)


def _wanted(column: Column[object], conn: Connection) -> str:
    """The data type the model asks of `column` on this MySQL (`varbinary`, `double`…)."""
    return column.type.compile(dialect=conn.dialect).split("(")[0].split()[0].lower()


def _alter_changed_columns(conn: Connection) -> None:
    rows = conn.execute(text(
        "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE "
        "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()"
    )).all()
    actual = {(t, c): d.lower() for t, c, d in rows}
    for table in SQLModel.metadata.sorted_tables:
        for column in table.columns:
            have = actual.get((table.name, column.name))
            wanted = _wanted(column, conn)
            # Only the changes dinp made: other types have aliases (`int` is `INTEGER`).
            if have is None or have == wanted or wanted not in CHANGED_TYPES:
                continue
            ddl = CreateColumn(column).compile(dialect=conn.dialect)
            conn.execute(text(f"ALTER TABLE {table.name} MODIFY COLUMN {ddl}"))
            log.info("database: %s.%s changed from %s to %s", table.name, column.name,
                     have, wanted)
