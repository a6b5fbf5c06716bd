"""The backup plugin's branch: its first revision (no tables yet; its tables are
added by the revisions that follow, in this folder).

Revision ID: backup_0000_branch
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

revision = "backup_0000_branch"
down_revision = None
branch_labels = ("backup",)
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
