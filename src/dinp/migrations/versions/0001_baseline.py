"""The schema of the release before migrations (apps, releases, instances, nodes, events,
tokens, cluster): what every later revision starts from.

Revision ID: 0001
Revises:
Created: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa

from dinp.migrations import ops
from dinp.models import TIME, name_type

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

NAME = name_type()


def upgrade() -> None:
    ops.create_table(
        "apps",
        sa.Column("name", NAME, primary_key=True),
        sa.Column("image", sa.String(255), nullable=False),
        sa.Column("instances", sa.Integer, nullable=False),
        sa.Column("memory_mb", sa.Integer, nullable=False),
        sa.Column("port", sa.Integer, nullable=False),
        sa.Column("health_path", sa.String(200)),
        sa.Column("env_json", sa.Text, nullable=False, default="{}"),
        sa.Column("domains_json", sa.Text, nullable=False, default="[]"),
        sa.Column("release", sa.Integer, nullable=False, default=1),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False))
    ops.create_table(
        "releases",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("app", NAME, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("image", sa.String(255), nullable=False),
        sa.Column("env_json", sa.Text, nullable=False, default="{}"),
        sa.Column("created_at", TIME, nullable=False),
        sa.UniqueConstraint("app", "version"),
        indexes=(("app",),))
    ops.create_table(
        "instances",
        sa.Column("id", name_type(16), primary_key=True),
        sa.Column("app", NAME, nullable=False),
        sa.Column("release", sa.Integer, nullable=False),
        sa.Column("node", NAME, nullable=False),
        sa.Column("memory_mb", sa.Integer, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        indexes=(("app",), ("node",)))
    ops.create_table(
        "nodes",
        sa.Column("name", NAME, primary_key=True),
        sa.Column("address", sa.String(255), nullable=False),
        sa.Column("capacity_mb", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, default="ready"),
        sa.Column("foreign_json", sa.Text, nullable=False, default="[]"),
        sa.Column("first_seen", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("agent", name_type(200)))
    ops.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", TIME, nullable=False),
        sa.Column("app", NAME),
        sa.Column("node", NAME),
        sa.Column("message", sa.Text, nullable=False),
        indexes=(("at",), ("app",)))
    ops.create_table(
        "tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", NAME, nullable=False),
        sa.Column("digest", name_type(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False, default="admin"),
        sa.Column("created_at", TIME, nullable=False))
    ops.create_table(
        "cluster",
        sa.Column("key", sa.Integer, primary_key=True),
        sa.Column("id", name_type(32), nullable=False),
        sa.Column("created_at", TIME, nullable=False))


def downgrade() -> None:
    raise NotImplementedError("dinp's migrations go forward only: restore a backup")
