"""Users, teams, tokens that belong to them, agent credentials, who made each change,
and an app's stop grace (issues 9 and 10).

Apps older than teams and tokens older than users are given to team `default` and user
`admin` by the server at its start (accounts.Accounts.ensure_defaults), not here: that
is the same rule a database restored from a backup goes through.

Revision ID: 0003
Revises: 0002
Created: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa

from dinp.migrations import ops
from dinp.models import TIME, name_type

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

NAME = name_type()
USER = name_type(100)


def upgrade() -> None:
    ops.add_column("apps", sa.Column("stop_grace", TIME, nullable=False), fill=10.0)
    ops.add_column("apps", sa.Column("team", NAME))
    ops.create_index("apps", ("team",))
    ops.add_column("events", sa.Column("user", USER))
    ops.add_column("events", sa.Column("source", sa.String(64)))
    ops.create_index("events", ("user",))
    ops.add_column("tokens", sa.Column("user", NAME))
    ops.add_column("tokens", sa.Column("app", NAME))
    ops.add_column("tokens", sa.Column("prefix", sa.String(16), nullable=False), fill="")
    ops.add_column("tokens", sa.Column("session", sa.Boolean, nullable=False), fill=False)
    ops.add_column("tokens", sa.Column("expires_at", TIME))
    ops.add_column("tokens", sa.Column("revoked_at", TIME))
    ops.add_column("tokens", sa.Column("created_by", NAME, nullable=False), fill="")
    ops.create_index("tokens", ("user",))
    ops.create_table(
        "users",
        sa.Column("name", USER, primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password", sa.String(255)),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("created_by", USER, nullable=False),
        sa.Column("created_at", TIME, nullable=False))
    ops.create_table(
        "teams",
        sa.Column("name", NAME, primary_key=True),
        sa.Column("memory_quota_mb", sa.Integer),
        sa.Column("instances_quota", sa.Integer),
        sa.Column("created_at", TIME, nullable=False))
    ops.create_table(
        "team_members",
        sa.Column("team", NAME, primary_key=True),
        sa.Column("user", USER, primary_key=True))
    ops.create_table(
        "node_credentials",
        sa.Column("node", NAME, primary_key=True),
        sa.Column("generation", sa.Integer, nullable=False))


def downgrade() -> None:
    raise NotImplementedError("dinp's migrations go forward only: restore a backup")
