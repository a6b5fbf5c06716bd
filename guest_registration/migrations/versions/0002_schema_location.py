"""``schema_location``: the revision folders of every plugin that ever upgraded
this database, so that a plugin disabled later keeps its tables and its branch
(its revisions are still found) instead of making the database look ahead.

Revision ID: 0002_schema_location
Revises: 0001_naming_convention
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_schema_location"
down_revision = "0001_naming_convention"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("schema_location",
                    sa.Column("folder", sa.String(length=1000), nullable=False),
                    sa.PrimaryKeyConstraint("folder", name=op.f("pk_schema_location")))


def downgrade() -> None:
    op.drop_table("schema_location")
