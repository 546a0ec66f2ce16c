"""What databases made before migrations need first, on MySQL/MariaDB only: columns an
older dinp typed differently converted in place (times stored as single-precision FLOAT
become DOUBLE, names stored as case-insensitive VARCHAR become VARBINARY), keeping every
row. SQLite needs nothing: its REAL is a double and `=` compares bytes."""

from __future__ import annotations

import logging

from sqlalchemy import Column, text
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateColumn
from sqlmodel import SQLModel

import dinp.models  # noqa: F401  (the tables)

log = logging.getLogger(__name__)

# Column types a newer dinp changed, as MySQL names them.
CHANGED_TYPES = frozenset({"double", "varbinary"})


def _wanted(column: Column[object], conn: Connection) -> str:
    """The data type the model asks of `column` on this MySQL (`varbinary`, `double`…)."""
    return column.type.compile(dialect=conn.dialect).split("(")[0].split()[0].lower()


def convert_types(conn: Connection) -> None:
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
