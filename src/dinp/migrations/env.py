"""Alembic's environment for dinp: it runs on the connection dinp hands it (see
dinp.migrations.upgrade), never on a URL of its own."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import dinp.models  # noqa: F401  (the tables, for autogenerate)

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    # SQLite changes tables by copying them: Alembic's batch mode does that.
    render_as_batch=connection.dialect.name == "sqlite",
    transaction_per_migration=True,
)
with context.begin_transaction():
    context.run_migrations()
