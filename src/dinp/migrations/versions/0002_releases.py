"""Releases that say what they run and how their rollout went, rollout settings, custom
domains (issue 9: deploys, rollbacks, env, domains).

Revision ID: 0002
Revises: 0001
Created: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa

from dinp.migrations import ops
from dinp.models import TIME, name_type

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

NAME = name_type()


def upgrade() -> None:
    ops.add_column("apps", sa.Column("surge", sa.Integer, nullable=False), fill=0)
    ops.add_column("apps", sa.Column("deploy_timeout", TIME, nullable=False), fill=120.0)
    # Older releases did not keep port, memory and health: their app's count for them.
    ops.add_column("releases", sa.Column("port", sa.Integer))
    ops.add_column("releases", sa.Column("memory_mb", sa.Integer))
    ops.add_column("releases", sa.Column("health_path", sa.String(200)))
    ops.add_column("releases", sa.Column("change", sa.Text, nullable=False), fill="")
    ops.add_column("releases", sa.Column("created_by", sa.String(200), nullable=False),
                   fill="")
    ops.add_column("releases", sa.Column("status", sa.String(16), nullable=False),
                   fill="deployed")
    ops.add_column("releases", sa.Column("failure", sa.Text, nullable=False), fill="")
    ops.create_table(
        "domains",
        sa.Column("domain", name_type(253), primary_key=True),
        sa.Column("app", NAME, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        indexes=(("app",),))


def downgrade() -> None:
    raise NotImplementedError("dinp's migrations go forward only: restore a backup")
