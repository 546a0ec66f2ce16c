"""Certificates ordered by ACME for custom domains, the ACME account, and each app's
HTTPS policy (issue 12: HTTPS for every app).

Revision ID: 0005
Revises: 0004
Created: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa

from dinp.migrations import ops
from dinp.models import TIME, name_type

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ops.add_column("apps", sa.Column("https_redirect", sa.Boolean, nullable=False),
                   fill=False)
    ops.add_column("apps", sa.Column("hsts", sa.Integer, nullable=False), fill=0)
    ops.create_table(
        "certificates",
        sa.Column("domain", name_type(253), primary_key=True),
        sa.Column("app", name_type(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("chain_pem", sa.Text, nullable=False),
        sa.Column("key_pem", sa.Text, nullable=False),
        sa.Column("not_before", TIME),
        sa.Column("not_after", TIME),
        sa.Column("issued_at", TIME),
        sa.Column("last_error", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", TIME, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        indexes=(("app",),))
    ops.create_table(
        "acme_accounts",
        sa.Column("directory", name_type(255), primary_key=True),
        sa.Column("key_pem", sa.Text, nullable=False),
        sa.Column("uri", sa.String(255), nullable=False),
        sa.Column("email", sa.String(255), nullable=False),
        sa.Column("created_at", TIME, nullable=False))


def downgrade() -> None:
    raise NotImplementedError("dinp's migrations go forward only: restore a backup")
