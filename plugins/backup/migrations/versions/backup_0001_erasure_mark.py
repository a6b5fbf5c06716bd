"""``erasure_mark``: the last erasure ledger line this database reflects (one row),
so that a database switched in later (a point-in-time recovery, a restore) that
missed erasures recorded meanwhile is found out (``backup-health``) and brought up
to date (``manage.py erasure-ledger apply``). No row: not known yet.

Revision ID: backup_0001_erasure_mark
Revises: backup_0000_branch
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "backup_0001_erasure_mark"
down_revision = "backup_0000_branch"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("erasure_mark",
                    sa.Column("id", sa.Integer(), nullable=False),
                    sa.Column("seq", sa.BigInteger(), nullable=False),
                    sa.Column("marked_at", sa.DateTime(), nullable=False),
                    sa.PrimaryKeyConstraint("id", name=op.f("pk_erasure_mark")))


def downgrade() -> None:
    op.drop_table("erasure_mark")
