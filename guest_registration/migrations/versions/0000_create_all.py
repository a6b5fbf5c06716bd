"""The schema ``create_all`` made before migrations existed (the first revision).

A database set up by an earlier version is recognised by its tables and columns
(``TABLES``) and stamped here; the next revision names its constraints.

Revision ID: 0000_create_all
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0000_create_all"
down_revision = None
branch_labels = ("host",)
depends_on = None

#: every table of this revision with its columns: how an unversioned database is
#: recognised as one made by ``setup`` before migrations
TABLES = {
    "audit_log": ["id", "created_at", "finished_at", "actor", "via", "action", "year", "month",
                  "format", "target", "rows", "bytes", "outcome", "message"],
    "role": ["id", "name", "description", "permissions", "update_datetime"],
    "trip": ["id", "title", "start_date", "end_date", "max_guests", "created_at"],
    "user": ["fs_webauthn_user_handle", "mf_recovery_codes", "password", "us_phone_number",
             "username", "us_totp_secrets", "id", "email", "active", "fs_uniquifier",
             "confirmed_at", "last_login_at", "current_login_at", "last_login_ip",
             "current_login_ip", "login_count", "tf_primary_method", "tf_totp_secret",
             "tf_phone_number", "create_datetime", "update_datetime"],
    "registration": ["id", "trip_id", "email", "language", "status", "created_at"],
    "roles_users": ["user_id", "role_id"],
    "guest": ["id", "registration_id", "first_name", "last_name", "age_category",
              "document_type", "document_number", "document_photo", "gdpr_consent",
              "created_at"],
}


def _utcnow():
    """``CURRENT_TIMESTAMP`` in UTC as a naive timestamp, as the models define it."""
    if op.get_context().dialect.name == "postgresql":
        return sa.text("(now() AT TIME ZONE 'utc')")
    return sa.text("CURRENT_TIMESTAMP")


def upgrade() -> None:
    _create_audit_log()
    _create_role()
    _create_trip()
    _create_user()
    _create_registration()
    _create_roles_users()
    _create_guest()


def _create_audit_log() -> None:
    op.create_table('audit_log',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), server_default=_utcnow(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('actor', sa.String(length=255), nullable=True),
    sa.Column('via', sa.String(length=16), nullable=True),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('year', sa.Integer(), nullable=True),
    sa.Column('month', sa.Integer(), nullable=True),
    sa.Column('format', sa.String(length=32), nullable=True),
    sa.Column('target', sa.String(length=255), nullable=True),
    sa.Column('rows', sa.BigInteger(), nullable=True),
    sa.Column('bytes', sa.BigInteger(), nullable=True),
    sa.Column('outcome', sa.String(length=16), server_default='running', nullable=False),
    sa.Column('message', sa.String(length=500), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_log_created_at'), ['created_at'], unique=False)


def _create_role() -> None:
    op.create_table('role',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=80), nullable=False),
    sa.Column('description', sa.String(length=255), nullable=True),
    sa.Column('permissions', sa.UnicodeText(), nullable=True),
    sa.Column('update_datetime', sa.DateTime(), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )


def _create_trip() -> None:
    op.create_table('trip',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('start_date', sa.Date(), nullable=True),
    sa.Column('end_date', sa.Date(), nullable=True),
    sa.Column('max_guests', sa.Integer(), server_default=sa.text('10'), nullable=False),
    sa.Column('created_at', sa.DateTime(), server_default=_utcnow(), nullable=False),
    sa.CheckConstraint('max_guests >= 1', name='ck_trip_max_guests'),
    sa.PrimaryKeyConstraint('id')
    )


def _create_user() -> None:
    op.create_table('user',
    sa.Column('fs_webauthn_user_handle', sa.String(length=64), nullable=True),
    sa.Column('mf_recovery_codes', sa.UnicodeText(), nullable=True),
    sa.Column('password', sa.String(length=255), nullable=True),
    sa.Column('us_phone_number', sa.String(length=128), nullable=True),
    sa.Column('username', sa.String(length=255), nullable=True),
    sa.Column('us_totp_secrets', sa.Text(), nullable=True),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('email', sa.String(length=255), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('fs_uniquifier', sa.String(length=64), nullable=False),
    sa.Column('confirmed_at', sa.DateTime(), nullable=True),
    sa.Column('last_login_at', sa.DateTime(), nullable=True),
    sa.Column('current_login_at', sa.DateTime(), nullable=True),
    sa.Column('last_login_ip', sa.String(length=64), nullable=True),
    sa.Column('current_login_ip', sa.String(length=64), nullable=True),
    sa.Column('login_count', sa.Integer(), nullable=True),
    sa.Column('tf_primary_method', sa.String(length=64), nullable=True),
    sa.Column('tf_totp_secret', sa.String(length=255), nullable=True),
    sa.Column('tf_phone_number', sa.String(length=128), nullable=True),
    sa.Column('create_datetime', sa.DateTime(), server_default=sa.func.now(), nullable=False),
    sa.Column('update_datetime', sa.DateTime(), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('email'),
    sa.UniqueConstraint('fs_uniquifier'),
    sa.UniqueConstraint('fs_webauthn_user_handle'),
    sa.UniqueConstraint('us_phone_number'),
    sa.UniqueConstraint('username')
    )


def _create_registration() -> None:
    op.create_table('registration',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('trip_id', sa.Integer(), nullable=False),
    sa.Column('email', sa.String(length=255), nullable=False),
    sa.Column('language', sa.String(length=8), server_default=sa.text("'en'"), nullable=False),
    sa.Column('status', sa.String(length=16), server_default=sa.text("'pending'"), nullable=False),
    sa.Column('created_at', sa.DateTime(), server_default=_utcnow(), nullable=False),
    sa.ForeignKeyConstraint(['trip_id'], ['trip.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('registration', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_registration_trip_id'), ['trip_id'], unique=False)


def _create_roles_users() -> None:
    op.create_table('roles_users',
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('role_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['role_id'], ['role.id'], ),
    sa.ForeignKeyConstraint(['user_id'], ['user.id'], )
    )


def _create_guest() -> None:
    op.create_table('guest',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('registration_id', sa.Integer(), nullable=False),
    sa.Column('first_name', sa.String(length=100), nullable=False),
    sa.Column('last_name', sa.String(length=100), nullable=False),
    sa.Column('age_category', sa.String(length=16), nullable=False),
    sa.Column('document_type', sa.String(length=32), nullable=False),
    sa.Column('document_number', sa.String(length=64), nullable=False),
    sa.Column('document_photo', sa.String(length=255), nullable=True),
    sa.Column('gdpr_consent', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('created_at', sa.DateTime(), server_default=_utcnow(), nullable=False),
    sa.ForeignKeyConstraint(['registration_id'], ['registration.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('guest', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_guest_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_guest_registration_id'), ['registration_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('guest', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_guest_registration_id'))
        batch_op.drop_index(batch_op.f('ix_guest_created_at'))

    op.drop_table('guest')
    op.drop_table('roles_users')
    with op.batch_alter_table('registration', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_registration_trip_id'))

    op.drop_table('registration')
    op.drop_table('user')
    op.drop_table('trip')
    op.drop_table('role')
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_log_created_at'))

    op.drop_table('audit_log')
