"""Browsing an archive (issue 23): open in a scratch database (reused, dropped when
idle, a hostile archive refused), search with keyset pages, compare with today,
the ``browse`` command, and the Restore-a-selection page (admin-only, CSRF,
preview then restore) on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import zipfile
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from guest_backup.errors import BackupError
from guest_backup.ops.browse import get_session, open_archive, reap, sessions
from guest_backup.ops.browse_registry import Registry
from guest_backup.ops.browse_search import Search, search_guests
from guest_backup.ops.compare import compare_registration, compare_search, compare_trip
from guest_backup.wiring import backup_context
from guest_registration.extensions import db
from tests.helpers import make_backup, manage, resign


@pytest.fixture(autouse=True)
def _close_sessions(app):
    """Every scratch copy a test opened is dropped (PostgreSQL databases would stay)."""
    yield
    from guest_backup.ops.browse import sessions
    from guest_backup.wiring import backup_context

    with app.app_context():
        for session in sessions(backup_context()):
            session.close()


@pytest.fixture
def archive(app, runner) -> Path:
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    return make_backup(runner)


def opened(app, archive, **kw):
    with app.app_context():
        return open_archive(backup_context(), db.engine, str(archive), actor="tester", via="cli",
                            **kw)


def live(app, sql: str, **params):
    with app.app_context(), db.engine.begin() as conn:
        result = conn.execute(sa.text(sql), params)
        return result.all() if result.returns_rows else None


def scratch_exists(app, session) -> bool:
    if session.dialect == "sqlite":
        return Path(session.database).exists()
    return bool(live(app, "SELECT 1 FROM pg_database WHERE datname = :n", n=session.database))


def test_open_reuses_and_pages_through_everything(app, archive):
    session = opened(app, archive)
    assert session.state == "open" and scratch_exists(app, session)
    assert opened(app, archive).id == session.id  # the same archive: the same scratch copy
    expected = [r[0] for r in live(app, "SELECT id FROM guest ORDER BY id")]
    seen, after, pages = [], 0, 0
    while True:
        page = search_guests(session.engine, Search(after=after, limit=7))
        seen += [r["guest_id"] for r in page.rows]
        pages += 1
        if page.next_after is None:
            break
        after = page.next_after
    assert seen == expected and pages == -(-len(expected) // 7)
    with app.app_context():
        session.close(db.engine)
        assert get_session(backup_context(), session.id) is None
    assert not scratch_exists(app, session)


def test_search_by_name_email_document_trip_and_dates(app, archive):
    session = opened(app, archive)
    gid, first, last, doc, reg, email, trip_id, created = live(
        app, "SELECT g.id, g.first_name, g.last_name, g.document_number, r.id, r.email, "
             "r.trip_id, r.created_at FROM guest g JOIN registration r "
             "ON r.id = g.registration_id ORDER BY g.id DESC LIMIT 1")[0]
    created = created if isinstance(created, datetime) else datetime.fromisoformat(created)

    def ids(**kw):
        return [r["guest_id"] for r in search_guests(session.engine, Search(limit=200, **kw)).rows]

    assert gid in ids(text=last[:3].upper())  # case-insensitive, a prefix
    assert gid in ids(text=f"{first} {last}")
    assert ids(text=doc) == [gid]
    assert gid in ids(text=email) and gid in ids(text=email.split("@")[0])
    assert ids(text="zzz-nobody") == []
    assert ids(text="50%_") == []  # LIKE wildcards are plain characters
    in_trip = ids(trip_id=trip_id)
    assert gid in in_trip and set(in_trip) == {r[0] for r in live(
        app, "SELECT g.id FROM guest g JOIN registration r ON r.id = g.registration_id "
             "WHERE r.trip_id = :t", t=trip_id)}
    assert gid in ids(date_from=created.date(), date_to=created.date())
    assert gid not in ids(date_from=created.date() + timedelta(days=1))


def test_compare_a_trip_a_registration_and_a_search(app, archive):
    session = opened(app, archive)
    trip_id = live(app, "SELECT min(trip_id) FROM registration")[0][0]
    regs = [r[0] for r in live(app, "SELECT id FROM registration WHERE trip_id = :t", t=trip_id)]
    guests = live(app, "SELECT count(*) FROM guest g JOIN registration r "
                       "ON r.id = g.registration_id WHERE r.trip_id = :t", t=trip_id)[0][0]
    changed = live(app, "SELECT max(id) FROM guest")[0][0]
    live(app, "UPDATE guest SET first_name = 'Renamed' WHERE id = :g", g=changed)
    live(app, "DELETE FROM guest WHERE registration_id IN (SELECT id FROM registration "
              "WHERE trip_id = :t)", t=trip_id)
    live(app, "DELETE FROM registration WHERE trip_id = :t", t=trip_id)
    live(app, "INSERT INTO registration (trip_id, email, language, status, created_at) "
              "VALUES (:t, 'new@example.com', 'en', 'pending', :now)", t=trip_id,
         now=datetime(2030, 1, 1))
    comparison = compare_trip(session.engine, db_engine(app), trip_id)
    assert comparison.counts["trip"]["same"] == 1
    assert comparison.counts["registration"]["archive_only"] == len(regs)
    assert comparison.counts["registration"]["live_only"] == 1
    assert comparison.counts["guest"]["archive_only"] == guests
    [added] = comparison.of("registration", "live_only")
    assert added.live["email"] == "new@example.com"
    reg_of_changed = live(app, "SELECT registration_id FROM guest WHERE id = :g", g=changed)[0][0]
    one = compare_registration(session.engine, db_engine(app), reg_of_changed)
    [diff] = one.of("guest", "changed")
    assert (diff.id, diff.fields, diff.live["first_name"]) == (changed, ["first_name"], "Renamed")
    found = compare_search(session.engine, db_engine(app), Search(text="renamed"))
    assert [d.id for d in found.of("guest", "changed")] == [changed]
    assert json.dumps(comparison.to_dict(), default=str)


def db_engine(app):
    with app.app_context():
        return db.engine


def test_idle_sessions_are_dropped(app, archive):
    app.config["BACKUP_BROWSE_IDLE_MINUTES"] = 1
    session = opened(app, archive)
    ctx = backup_context(app)
    assert reap(ctx) == []  # used just now
    with Registry(ctx.instance_path).edit() as entries:
        entries[session.id]["used_at"] = (datetime.utcnow() - timedelta(minutes=2)).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
    assert reap(ctx, db_engine(app)) == [session.id]
    assert get_session(ctx, session.id) is None and not scratch_exists(app, session)
    entries = [e for e in audit(app) if e["action"] == "browse"]
    assert "idle minutes" in entries[0]["message"]


def audit(app) -> list[dict]:
    with app.app_context():
        return backup_context().audit.recent(db.engine, 20)


def forged(app, archive: Path, statement: bytes) -> Path:
    """The archive with ``statement`` added to its dump, its manifest fixed and
    re-signed with the app's own key (as a thief of the key would)."""
    bad = archive.parent / "forged" / archive.name
    bad.parent.mkdir()
    with zipfile.ZipFile(archive) as a, zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as b:
        dump = a.read("database.sql") + b"\n" + statement + b"\n"
        for info in a.infolist():
            data = a.read(info)
            if info.filename == "database.sql":
                data = dump
            elif info.filename == "manifest.json":
                m = json.loads(data)
                m["members"]["database.sql"].update(size=len(dump),
                                                    sha256=hashlib.sha256(dump).hexdigest())
                data = json.dumps(m).encode()
            b.writestr(info.filename, data)
    return resign(app, bad)


@pytest.mark.parametrize("kind", ["tampered", "forged dump"])
def test_a_hostile_archive_is_refused_and_leaves_nothing(app, archive, backend, kind):
    if kind == "tampered":
        data = bytearray(archive.read_bytes())
        data[len(data) // 2] ^= 0xFF
        archive.write_bytes(bytes(data))
        bad = archive
    else:
        bad = forged(app, archive, b"ATTACH DATABASE '/tmp/evil.db' AS evil;"
                     if backend == "sqlite" else b"COPY trip FROM PROGRAM 'touch /tmp/evil';")
    with pytest.raises(BackupError):
        opened(app, bad)
    ctx = backup_context(app)
    [session] = sessions(ctx)
    assert session.state == "failed" and session.error
    assert not scratch_exists(app, session)
    assert not any(p.suffix == ".db" for p in Registry(ctx.instance_path).folder.iterdir())
    assert [e["outcome"] for e in audit(app) if e["action"] == "browse"][0] == "failed"


def test_browse_command(app, runner, archive):
    last = live(app, "SELECT last_name FROM guest ORDER BY id LIMIT 1")[0][0]
    result = runner.invoke(args=["browse", archive.name, "--search", last, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["page"]["rows"] and all(r["last_name"] == last for r in data["page"]["rows"])
    trip_id = data["page"]["rows"][0]["trip_id"]
    result = runner.invoke(args=["browse", archive.name, "--trip", str(trip_id), "--close"])
    assert result.exit_code == 0, result.output
    assert "guests: 0 deleted since, 0 added since, 0 changed" in result.output
    assert sessions(backup_context(app)) == []
    result = runner.invoke(args=["browse", "system_backup_20000101_000000.zip"])
    assert result.exit_code == 1 and "in no backup storage" in result.output


def test_another_process_reuses_the_open_copy(app, archive, tmp_path):
    """The registry is shared: a command in another process (as another gunicorn
    worker would) finds the copy this process opened, and uses it."""
    session = opened(app, archive)
    env = {"DATABASE_URL": app.config["DATABASE_URL"], "INSTANCE_PATH": app.instance_path,
           "BACKUP_FOLDER": app.config["BACKUP_FOLDER"],
           "UPLOAD_FOLDER": app.config["UPLOAD_FOLDER"]}
    result = manage("browse", archive.name, "--json", env=env, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["session"]["id"] == session.id
    assert [s.id for s in sessions(backup_context(app))] == [session.id]


def test_closed_while_opening_its_copy_goes_and_nothing_half_stays(app, archive):
    """Close on the page while the archive still loads: the opener then made the
    entry again without its id, archive or database, so every later look at the
    registry (the page, ``browse``, the reap at start-up) failed with KeyError and
    the app did not start; the scratch copy, guests' data, was tracked by nobody."""
    from guest_backup.ops.browse import begin_open, find_session, finish_open

    with app.app_context():
        ctx = backup_context()
        session, mine = begin_open(ctx, db.engine, str(archive), actor="a", via="admin")
        assert mine and session.state == "opening"
        session.close(db.engine, actor="a", via="admin")
        with pytest.raises(BackupError, match="closed while it was being opened"):
            finish_open(ctx, db.engine, session, str(archive), actor="a", via="admin")
        assert Registry(ctx.instance_path).read() == {}
        assert not scratch_exists(app, session)
        assert sessions(ctx) == [] and reap(ctx, db.engine) == []
        assert find_session(ctx, archive.name) is None
        assert opened(app, archive).state == "open"  # and it opens again


def test_a_broken_registry_entry_is_removed_and_the_app_starts(app, app_config, archive,
                                                               tmp_path):
    from guest_registration import create_app

    with app.app_context():
        ctx = backup_context()
        session = opened(app, archive)
        with Registry(ctx.instance_path).edit() as entries:
            entries["0123456789abcdef"] = {"state": "open", "used_at": "2020-01-01T00:00:00Z"}
        assert [s.id for s in sessions(ctx)] == [session.id]
    create_app(app_config, instance_path=app.instance_path)  # reaps at start
    with app.app_context():
        assert list(Registry(backup_context().instance_path).read()) == [session.id]
