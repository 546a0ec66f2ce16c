"""Counters of changes to the instance rows and to the rest of desired state, so a
snapshot re-reads them only when they changed (issue 13: a control plane for 5,000
nodes).

Revision ID: 0006
Revises: 0005
Created: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa

from dinp.migrations import ops

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for counter in ("instances_rev", "desired_rev"):
        ops.add_column("cluster", sa.Column(counter, sa.BigInteger, nullable=False), fill=0)


def downgrade() -> None:
    raise NotImplementedError("dinp's migrations go forward only: restore a backup")
