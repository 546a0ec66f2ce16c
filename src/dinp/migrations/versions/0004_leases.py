"""The leader lease: several servers, one of them leading (issue 13).

Revision ID: 0004
Revises: 0003
Created: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa

from dinp.migrations import ops
from dinp.models import TIME, name_type

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ops.create_table(
        "leases",
        sa.Column("name", name_type(), primary_key=True),
        sa.Column("holder", name_type(200), nullable=False),
        sa.Column("url", sa.String(255), nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("expires_at", TIME, nullable=False))


def downgrade() -> None:
    raise NotImplementedError("dinp's migrations go forward only: restore a backup")
