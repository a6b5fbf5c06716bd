"""Two installations' archives of the same name (made in the same second, as nightly
backups are). A scratch copy opened from the other installation's file, with its
key, was reused by name for this installation's own archive: the page showed the
other installation's rows as this one's, and ``restore-select NAME`` wrote them
into the live database. A session is now reused only for the same archive (where
it is) opened with the same trust."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from guest_backup.ops.browse import sessions
from guest_backup.wiring import backup_context
from guest_registration import create_app
from guest_registration.extensions import db
from guest_registration.maintenance import setup
from guest_registration.models import Guest, Registration, Trip
from tests.helpers import make_backup, make_config
from tests.test_browse import _close_sessions  # noqa: F401 (autouse fixture)
from tests.test_browse_page import BASE, admin, html, open_session  # noqa: F401

FIXED = dt.datetime(2026, 1, 5, 2, 0, 0, tzinfo=dt.timezone.utc)


class Frozen(dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return FIXED


def fill(app, email: str, first: str) -> int:
    with app.app_context():
        trip = Trip(title="Alps", max_guests=50)
        registration = Registration(trip=trip, email=email, language="en")
        db.session.add_all([trip, registration, Guest(
            registration=registration, first_name=first, last_name="Samename",
            age_category="adult", document_type="passport", document_number="D1",
            gdpr_consent=True)])
        db.session.commit()
        return registration.id


def live_emails(app) -> list[str]:
    with app.app_context():
        return sorted(e for (e,) in db.session.execute(sa.text("SELECT email FROM registration")))


def test_another_installations_archive_of_the_same_name_is_not_taken_for_ours(
        app, admin, runner, tmp_path, backend, request, monkeypatch):  # noqa: F811
    import guest_backup.ops.create as create

    url = (f"sqlite:///{tmp_path / 'other.db'}" if backend == "sqlite"
           else request.getfixturevalue("new_pg_database")())
    other = create_app(make_config(tmp_path / "other", url), instance_path=str(tmp_path / "oi"))
    with other.app_context():
        list(setup(other, "a@other.example", "pw-other-123456"))
    ours_id = fill(app, "prod@example.com", "Prod")
    fill(other, "staging@example.com", "Staging")
    monkeypatch.setattr(create, "datetime", Frozen)
    ours, theirs = make_backup(runner), make_backup(other.test_cli_runner())
    monkeypatch.undo()
    assert ours.name == theirs.name and ours != theirs
    key = other.test_cli_runner().invoke(args=["backup-key"]).output.strip().splitlines()[-1]
    with app.app_context():  # production loses its registration
        db.session.execute(sa.text("DELETE FROM guest WHERE last_name = 'Samename'"))
        db.session.execute(sa.text("DELETE FROM registration WHERE id = :i"), {"i": ours_id})
        db.session.commit()
    # an operator looks at the other installation's archive, downloaded, with its key
    looked = runner.invoke(args=["browse", str(theirs), "--trusted-key", key,
                                 "--search", "Samename"])
    assert looked.exit_code == 0 and "Staging" in looked.output, looked.output
    # the page opens our verified archive of that name: our rows, not theirs
    token = csrf_token_from_page(admin)
    admin.post(f"/admin/backup/verify/{ours.name}", data={"csrf_token": token})
    sid = open_session(admin, ours.name)
    page = html(admin.get(f"{BASE}/s/{sid}/?q=Samename"))
    assert "Prod" in page and "Staging" not in page
    # the command restores from our archive
    done = runner.invoke(args=["restore-select", ours.name, "--registration", str(ours_id),
                               "--yes"])
    assert done.exit_code == 0, done.output
    assert "staging@example.com" not in live_emails(app)
    assert "prod@example.com" in live_emails(app)
    # and the other file given by path is not answered from our copy either
    theirs_dry = runner.invoke(args=["restore-select", str(theirs), "--trusted-key", key,
                                     "--registration", "1", "--dry-run"])
    assert "prod@example.com" not in theirs_dry.output, theirs_dry.output
    shown = {s.archive for s in sessions(backup_context(app))}
    assert {ours.name, str(theirs.resolve())} <= shown  # a file's session names its path
    with other.app_context():
        db.session.remove()
        db.engine.dispose()


def csrf_token_from_page(client) -> str:
    from tests.helpers import csrf_token_from

    return csrf_token_from(html(client.get("/admin/backup/")))


def test_a_copy_opened_under_a_key_no_longer_trusted_is_not_used(app, runner, tmp_path):
    """Rotation (runbook): the old key moved out, trusted through BACKUP_TRUSTED_KEYS,
    an archive of it browsed; then the old key leaks and is taken out of the list.
    The open copy still restored that archive's rows into the live database."""
    from pathlib import Path

    registration = fill(app, "old@example.com", "Old")
    archive = make_backup(runner)
    old_key = runner.invoke(args=["backup-key"]).output.strip().splitlines()[-1]
    key_file = Path(app.config["BACKUP_SIGNING_KEY"])
    key_file.rename(tmp_path / "old-key-offline.pem")  # a new key is made on next use
    app.config["BACKUP_TRUSTED_KEYS"] = [old_key]
    opened = runner.invoke(args=["browse", archive.name, "--search", "Samename"])
    assert opened.exit_code == 0 and "Old" in opened.output, opened.output
    [old_copy] = sessions(backup_context(app))
    with app.app_context():
        db.session.execute(sa.text("DELETE FROM guest WHERE registration_id = :r"),
                           {"r": registration})
        db.session.execute(sa.text("DELETE FROM registration WHERE id = :r"), {"r": registration})
        db.session.commit()
    app.config["BACKUP_TRUSTED_KEYS"] = []  # the old key leaked: no longer trusted
    done = runner.invoke(args=["restore-select", archive.name, "--registration",
                               str(registration), "--yes"])
    assert done.exit_code != 0 and "unknown key" in done.output, done.output
    assert "old@example.com" not in live_emails(app)
    left = sessions(backup_context(app))  # the copy of the old trust is gone (dropped)
    assert old_copy.id not in {s.id for s in left} and {s.state for s in left} <= {"failed"}
