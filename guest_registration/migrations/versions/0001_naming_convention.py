"""Constraints named by the naming convention (``guest_registration.extensions``).

PostgreSQL named the first revision's constraints itself (``user_email_key``,
``trip_pkey``, ``guest_registration_id_fkey``); they are renamed to the
convention's names (``uq_user_email``, ``pk_trip``,
``fk_guest_registration_id_registration``), so that a database upgraded in place
and a new one are alike and ``db check`` finds nothing. On SQLite only the
unique constraints' names are compared: a table holding unnamed ones is rebuilt
(batch mode) with the convention's names.

Revision ID: 0001_naming_convention
Revises: 0000_create_all
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0001_naming_convention"
down_revision = "0000_create_all"
branch_labels = None
depends_on = None

PRIMARY_KEYS = ("audit_log", "role", "trip", "user", "registration", "guest")
UNIQUE = (("role", "name"), ("user", "email"), ("user", "fs_uniquifier"),
          ("user", "fs_webauthn_user_handle"), ("user", "us_phone_number"),
          ("user", "username"))
FOREIGN_KEYS = (("registration", "trip_id", "trip"), ("roles_users", "role_id", "role"),
                ("roles_users", "user_id", "user"), ("guest", "registration_id", "registration"))


def renames() -> list[tuple[str, str, str]]:
    """(table, PostgreSQL's own name, the convention's name) of every constraint."""
    return ([(t, f"{t}_pkey", f"pk_{t}") for t in PRIMARY_KEYS]
            + [(t, f"{t}_{c}_key", f"uq_{t}_{c}") for t, c in UNIQUE]
            + [(t, f"{t}_{c}_fkey", f"fk_{t}_{c}_{r}") for t, c, r in FOREIGN_KEYS])


NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s",
          "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
          "pk": "pk_%(table_name)s", "ix": "ix_%(column_0_label)s"}


def _name_sqlite_uniques() -> None:
    import sqlalchemy as sa

    inspector = sa.inspect(op.get_bind())
    for table in sorted({t for t, _ in UNIQUE}):
        if any(uc["name"] is None for uc in inspector.get_unique_constraints(table)):
            with op.batch_alter_table(table, recreate="always", naming_convention=NAMING):
                pass


def _rename(backwards: bool) -> None:
    """Each rename only where the old name is there (a new database may already
    carry the convention's names); plain SQL, so that it also works offline."""
    context = op.get_context()
    if context.dialect.name == "sqlite" and not backwards and not context.as_sql:
        _name_sqlite_uniques()
    if context.dialect.name != "postgresql":
        return
    quote = context.dialect.identifier_preparer.quote
    for table, default, convention in renames():
        old, new = (convention, default) if backwards else (default, convention)
        op.execute(
            "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c "
            "JOIN pg_catalog.pg_class t ON t.oid = c.conrelid "
            "JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace "
            f"WHERE n.nspname = current_schema() AND t.relname = '{table}' "
            f"AND c.conname = '{old}') THEN "
            f"ALTER TABLE {quote(table)} RENAME CONSTRAINT {quote(old)} TO {quote(new)}; "
            "END IF; END $$")


def upgrade() -> None:
    _rename(backwards=False)


def downgrade() -> None:
    _rename(backwards=True)
