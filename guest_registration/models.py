"""Database models.

The table and column names of ``trip``, ``registration`` and ``guest`` are a
contract: the export API, the system backup and outside tools depend on them.
Every column beyond that contract is nullable or has a database-side default, so
rows written by other tools (SQL, imports, restores) are valid.

``User`` and ``Role`` (Flask-Security's) are in :mod:`.users`, reachable from here.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Integer,
    String,
    text,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.sql.expression import FunctionElement

from .extensions import db
from .i18n import LANGUAGES, N_  # noqa: F401  (LANGUAGES: re-exported for forms and admin)

#: Stored value → the label people see, everywhere (forms, admin lists, filters),
#: in English here; pages show them translated (``guest_registration.i18n.choices``).
#: ``LANGUAGES`` (the page languages, each in its own name) comes from ``i18n``.
AGE_CATEGORIES = {"adult": N_("Adult"), "child": N_("Child")}
DOCUMENT_TYPES = {"passport": N_("Passport"), "id_card": N_("ID card"),
                  "driving_license": N_("Driving licence")}
REGISTRATION_STATUSES = {"pending": N_("Pending"), "approved": N_("Approved"),
                         "rejected": N_("Rejected")}
#: The outcomes of an audited action.
AUDIT_OUTCOMES = ("running", "ok", "failed", "aborted")


class utcnow(FunctionElement):
    """``CURRENT_TIMESTAMP`` in UTC as a naive timestamp, on every engine."""

    type = DateTime()
    inherit_cache = True


@compiles(utcnow, "postgresql")
def _pg_utcnow(element, compiler, **kw):  # pragma: no cover - trivial
    return "(now() AT TIME ZONE 'utc')"


@compiles(utcnow)
def _default_utcnow(element, compiler, **kw):  # SQLite's CURRENT_TIMESTAMP is UTC
    return "CURRENT_TIMESTAMP"


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def __getattr__(name: str):
    """``models.User`` and ``models.Role`` are in :mod:`.users` (Flask-Security's
    mixins, imported on first use: commands that touch no user do without it)."""
    if name in ("User", "Role"):
        from . import users

        return getattr(users, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Trip(db.Model):
    __tablename__ = "trip"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(200), nullable=False)
    start_date = mapped_column(Date, nullable=True)
    end_date = mapped_column(Date, nullable=True)
    max_guests: Mapped[int] = mapped_column(
        Integer, nullable=False, default=10, server_default=text("10")
    )
    created_at = mapped_column(DateTime, nullable=False, default=_now, server_default=utcnow())

    registrations = relationship("Registration", back_populates="trip")

    __table_args__ = (CheckConstraint("max_guests >= 1", name="ck_trip_max_guests"),)

    def __str__(self) -> str:
        return self.title


class Registration(db.Model):
    __tablename__ = "registration"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trip_id: Mapped[int] = mapped_column(ForeignKey("trip.id"), nullable=False, index=True)
    email: Mapped[str] = mapped_column(String(255), nullable=False)
    language: Mapped[str] = mapped_column(
        String(8), nullable=False, default="en", server_default=text("'en'")
    )
    status: Mapped[str] = mapped_column(
        String(16), nullable=False, default="pending", server_default=text("'pending'")
    )
    created_at = mapped_column(DateTime, nullable=False, default=_now, server_default=utcnow())

    trip = relationship("Trip", back_populates="registrations")
    guests = relationship("Guest", back_populates="registration", order_by="Guest.id")

    def __str__(self) -> str:
        return f"{self.email} ({self.trip.title if self.trip else self.trip_id})"


class Guest(db.Model):
    __tablename__ = "guest"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    registration_id: Mapped[int] = mapped_column(
        ForeignKey("registration.id"), nullable=False, index=True
    )
    first_name: Mapped[str] = mapped_column(String(100), nullable=False)
    last_name: Mapped[str] = mapped_column(String(100), nullable=False)
    age_category: Mapped[str] = mapped_column(String(16), nullable=False)
    document_type: Mapped[str] = mapped_column(String(32), nullable=False)
    document_number: Mapped[str] = mapped_column(String(64), nullable=False)
    document_photo = mapped_column(String(255), nullable=True)
    gdpr_consent: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=text("false")
    )
    created_at = mapped_column(
        DateTime, nullable=False, default=_now, server_default=utcnow(), index=True
    )

    registration = relationship("Registration", back_populates="guests")

    def __str__(self) -> str:
        return f"{self.first_name} {self.last_name}"


class AuditEntry(db.Model):
    """Who did what with personal data or backups, when, and how it ended.

    Written only through :mod:`guest_registration.audit`, on short transactions of
    their own, never inside an export's snapshot.
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at = mapped_column(DateTime, nullable=False, server_default=utcnow(), index=True)
    finished_at = mapped_column(DateTime, nullable=True)
    actor = mapped_column(String(255), nullable=True)  # user e-mail, or "cli:<os user>"
    via = mapped_column(String(16), nullable=True)  # api, admin, cli, worker
    action = mapped_column(String(32), nullable=False)  # export, preview, backup, restore, ...
    year = mapped_column(Integer, nullable=True)
    month = mapped_column(Integer, nullable=True)
    format = mapped_column(String(32), nullable=True)
    target = mapped_column(String(255), nullable=True)  # archive name, photo, output file
    rows = mapped_column(BigInteger, nullable=True)
    bytes = mapped_column(BigInteger, nullable=True)
    outcome = mapped_column(String(16), nullable=False, server_default="running")
    message = mapped_column(String(500), nullable=True)


class SchemaLocation(db.Model):
    """A folder of Alembic revisions that upgraded this database (a plugin's branch):
    remembered so that the branch is still known while its plugin is disabled."""

    __tablename__ = "schema_location"

    folder = mapped_column(String(1000), primary_key=True)
