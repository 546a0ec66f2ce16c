"""Idempotent schema operations for the revisions: each makes a table, a column or an
index only if it is missing, so a revision also brings a database made before migrations
(by create_all and in-place upgrades) to where it should be, without touching a row."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op


def _inspector() -> sa.Inspector:
    return sa.inspect(op.get_bind())


def create_table(name: str, *columns: sa.Column[Any] | sa.Constraint,
                 indexes: tuple[tuple[str, ...], ...] = ()) -> None:
    """Make table `name` if it is missing, with an index `ix_<table>_<col>` for each of
    `indexes` (as SQLModel names them). If it exists (made by a dinp older than this
    revision), add the columns it lacks, its rows getting each column's `default` (or
    the empty value of its type)."""
    if not _inspector().has_table(name):
        op.create_table(name, *columns)
    else:
        for column in columns:
            if isinstance(column, sa.Column) and not column.primary_key:
                add_column(name, column, fill=_default(column))
    for cols in indexes:
        create_index(name, cols)


def _default(column: sa.Column[Any]) -> Any:
    default = getattr(column.default, "arg", None)
    if default is not None and not callable(default):
        return default
    if column.nullable:
        return None
    try:
        python = column.type.python_type
    except NotImplementedError:
        python = str
    return {int: 0, float: 0.0, bool: False}.get(python, "")


def create_index(table: str, cols: tuple[str, ...], *, unique: bool = False) -> None:
    index = f"ix_{table}_{'_'.join(cols)}"
    if index not in {i["name"] for i in _inspector().get_indexes(table)}:
        op.create_index(index, table, list(cols), unique=unique)


def add_column(table: str, column: sa.Column[Any], *, fill: Any = None) -> None:
    """Add `column` if it is missing. Rows that exist get `fill` (None: NULL); a column
    that must not be NULL is added nullable, filled, then made NOT NULL (SQLite rebuilds
    the table for that, keeping every row). A column an older dinp added nullable is
    filled and made NOT NULL the same way."""
    have = {c["name"]: c for c in _inspector().get_columns(table)}
    name = column.name
    wanted_null = bool(column.nullable)
    if name not in have:
        op.add_column(table, sa.Column(name, column.type, nullable=True))
    elif bool(have[name]["nullable"]) == wanted_null:
        return
    if fill is not None:
        tbl = sa.table(table, sa.column(name))
        op.execute(tbl.update().where(tbl.c[name].is_(None)).values({name: fill}))
    if not wanted_null:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(name, existing_type=column.type, nullable=False)
