"""The test plugin's own branch: one table.

Revision ID: notes_0000_branch
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "notes_0000_branch"
down_revision = None
branch_labels = ("notes",)
depends_on = None


def upgrade() -> None:
    op.create_table("gr_note",
                    sa.Column("id", sa.Integer(), nullable=False),
                    sa.Column("text", sa.String(length=200), nullable=False),
                    sa.PrimaryKeyConstraint("id", name=op.f("pk_gr_note")))


def downgrade() -> None:
    op.drop_table("gr_note")
