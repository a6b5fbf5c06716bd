"""The database's place in the erasure ledger (``erasure_mark``), on SQLite and
PostgreSQL: erasures move it, a restore marks the database it loads, a database
switched in that missed erasures recorded meanwhile is reported by health and
brought up to date by ``erasure-ledger apply`` (the review of 2026-12-05: a
cluster recovered to a point in time never got the erasures recorded after it
read the ledger)."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from guest_registration import create_app
from guest_registration.extensions import db
from guest_backup.ops.erasure_mark import behind, clear_mark, read_mark, set_mark
from guest_backup.ops.health import _erasure_problems
from guest_backup.ops.ledger import ErasureLedger
from guest_backup.wiring import backup_context
from tests.helpers import make_backup, restore_target
from tests.test_erasure import add_people


def mark(url_or_engine) -> int | None:
    engine = sa.create_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    try:
        with engine.connect() as conn:
            return read_mark(conn)
    finally:
        if isinstance(url_or_engine, str):
            engine.dispose()


def first_name(url: str, guest_id: int) -> str:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT first_name FROM guest WHERE id = :i"),
                                {"i": guest_id}).scalar_one()
    finally:
        engine.dispose()


def problems(app, url: str) -> list[tuple[str, dict]]:
    engine = sa.create_engine(url)
    try:
        with app.app_context():
            return [(p.id, p.params) for p in _erasure_problems(backup_context(app), engine)]
    finally:
        engine.dispose()


def test_erasures_move_the_mark_and_health_is_quiet(app, runner):
    ids = add_people(app)
    with app.app_context():
        assert mark(db.engine) is None  # never marked, and no line yet: nothing to say
        url = db.engine.url.render_as_string(hide_password=False)
    for n, who in enumerate(("jana", "other"), start=1):
        result = runner.invoke(args=["erase", "--guest", str(ids[who]), "--yes"])
        assert result.exit_code == 0, result.output
        assert mark(url) == n
    assert problems(app, url) == []


def test_a_database_switched_in_that_missed_erasures_is_reported_and_brought_up_to_date(
        app, app_config, runner, backend, request, tmp_path):
    """The switch-over of a recovered cluster, with a restored copy standing in for
    it: restored with the ledger's line 1 re-applied (marked 1), then a guest erased
    in the running database (line 2); the copy misses that line until
    ``erasure-ledger apply``. An erasure made in the copy meanwhile (line 3) does
    not hide the line it misses."""
    ids = add_people(app)
    archive = make_backup(runner)
    assert runner.invoke(args=["erase", "--guest", str(ids["petr"]), "--yes"]).exit_code == 0
    copy = restore_target(request, backend, tmp_path)
    result = runner.invoke(args=["restore", str(archive), "--database-url", copy, "--yes",
                                 "--uploads", str(tmp_path / "copy-uploads")])
    assert result.exit_code == 0, result.output
    assert mark(copy) == 1
    assert runner.invoke(args=["erase", "--guest", str(ids["jana"]), "--yes"]).exit_code == 0

    assert problems(app, copy) == [("erasures_missing", {"count": 1, "mark": 1, "last": 2})]
    switched = create_app({**app_config, "DATABASE_URL": copy}, instance_path=app.instance_path)
    cli = switched.test_cli_runner()  # the app switched to the copy, same instance folder
    try:
        assert cli.invoke(args=["erase", "--guest", str(ids["other"]), "--yes"]).exit_code == 0
        assert mark(copy) == 1 and first_name(copy, ids["jana"]) == "Jana"  # still missing
        assert "misses 2 erasure(s)" in cli.invoke(args=["backup-health"]).output

        applied = cli.invoke(args=["erasure-ledger", "apply"])
        assert applied.exit_code == 0, applied.output
        assert "lines 2 to 3 re-applied: 1 of 2 erasure(s) changed rows" in applied.output
        assert first_name(copy, ids["jana"]) == "[erased]" and mark(copy) == 3
        assert problems(switched, copy) == []
        again = cli.invoke(args=["erasure-ledger", "apply"])
        assert "no line re-applied" in again.output and mark(copy) == 3
        with switched.app_context():
            entries = backup_context(switched).audit.recent(db.engine, action="erasure-apply")
        assert [e["outcome"] for e in entries] == ["ok", "ok"]
    finally:
        with switched.app_context():
            db.engine.dispose()


def test_an_unknown_mark_is_reported_once_the_ledger_has_lines(app, runner):
    ids = add_people(app)
    assert runner.invoke(args=["erase", "--guest", str(ids["jana"]), "--yes"]).exit_code == 0
    with app.app_context():
        url = db.engine.url.render_as_string(hide_password=False)
        with db.engine.begin() as conn:  # a database upgraded to the table: no row yet
            conn.execute(sa.text("DELETE FROM erasure_mark"))
    assert problems(app, url) == [("erasures_unknown", {"last": 1})]
    applied = runner.invoke(args=["erasure-ledger", "apply"])
    assert "every line (the mark was not known) re-applied" in applied.output
    assert mark(url) == 1 and problems(app, url) == []


def test_a_restore_marks_the_database_it_loads_at_the_ledgers_last_line(app, runner, backend,
                                                                        request, tmp_path):
    ids = add_people(app)
    archive = make_backup(runner)  # marked nowhere yet
    assert runner.invoke(args=["erase", "--guest", str(ids["jana"]), "--yes"]).exit_code == 0
    target = restore_target(request, backend, tmp_path)
    result = runner.invoke(args=["restore", str(archive), "--database-url", target, "--yes",
                                 "--uploads", str(tmp_path / "uploads")])
    assert result.exit_code == 0, result.output
    assert mark(target) == 1 and first_name(target, ids["jana"]) == "[erased]"
    with app.app_context():
        ledger = ErasureLedger.in_folder(backup_context(app).instance_path)
        engine = sa.create_engine(target)
        try:
            assert behind(engine, list(ledger.entries())) is None
            with engine.begin() as conn:
                set_mark(conn, 0)
            assert behind(engine, list(ledger.entries())) == (0, 1)
        finally:
            engine.dispose()


def test_a_restore_corrects_a_mark_the_archive_brought(app, runner, backend, request, tmp_path):
    """An archive's mark (another installation's ledger, or a forged one: a signed
    archive is not proof of its mark) never stands for this ledger: the restore
    drops it (and marks the copy at this ledger's last line, when it has one), so
    lines recorded later are reported when the copy misses them (the review of
    2026-12-05: a mark of 10**9 kept health silent for good)."""
    ids = add_people(app)
    with app.app_context(), db.engine.begin() as conn:
        set_mark(conn, 10 ** 9)
    archive = make_backup(runner)
    with app.app_context(), db.engine.begin() as conn:  # (in the live database, a mark
        clear_mark(conn)  # ahead of the ledger says lines were lost: tests/test_erasure_review.py)
    target = restore_target(request, backend, tmp_path)
    result = runner.invoke(args=["restore", str(archive), "--database-url", target, "--yes",
                                 "--uploads", str(tmp_path / "uploads")])
    assert result.exit_code == 0, result.output
    assert mark(target) is None
    assert runner.invoke(args=["erase", "--guest", str(ids["jana"]), "--yes"]).exit_code == 0
    assert problems(app, target) == [("erasures_unknown", {"last": 1})]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_forged_archive_whose_schema_refuses_erasures_is_not_restored(app, runner, backend,
                                                                        tmp_path):
    """An archive signed with a stolen key carries a mark of 10**9 and a CHECK
    constraint that refuses ``[erased]``: nobody could be erased from such a
    database, and PostgreSQL commits a load before the ledger is re-applied (keyed
    hashes need Python). An erasure is tried and undone before the COMMIT, so the
    load stops and the database stays as it was. Before: the load committed, the
    restore said "the database could not be read" and health was silent."""
    from tests.test_pgscreen import forge_signed

    ids = add_people(app)
    with app.app_context(), db.engine.begin() as conn:
        set_mark(conn, 0)
    archive = make_backup(runner)
    assert runner.invoke(args=["erase", "--guest", str(ids["jana"]), "--yes"]).exit_code == 0

    def change(dump: bytes) -> bytes:
        copy = re.search(rb"COPY public\.erasure_mark \([^)]*\) FROM stdin;\n1\t0\t", dump)
        assert copy, "the archive holds no mark row"
        dump = dump[:copy.end() - 2] + str(10 ** 9).encode() + dump[copy.end() - 1:]
        end = dump.index(b"--\n-- PostgreSQL database dump complete")
        return (dump[:end] + b"ALTER TABLE ONLY public.guest\n    ADD CONSTRAINT ck_guest_kept "
                b"CHECK ((first_name <> '[erased]'));\n\n\n" + dump[end:])

    refused_and_kept(app, runner, forge_signed(app, archive, tmp_path / "forged" / archive.name,
                                               change), tmp_path, ids["jana"])


def refused_and_kept(app, runner, forged, tmp_path, erased: int,
                     said: str = "refuses an erasure") -> None:
    """The forged archive's restore over the app's database is refused before its
    COMMIT: the erased guest stays erased, the mark stays at line 1."""
    result = runner.invoke(args=["restore", str(forged), "--replace", "--yes",
                                 "--uploads", str(tmp_path / "uploads")])
    assert result.exit_code == 1, result.output
    assert said in result.output and "nothing was restored" in result.output
    assert "Traceback" not in result.output
    with app.app_context():
        url = db.engine.url.render_as_string(hide_password=False)
    assert mark(url) == 1 and first_name(url, erased) == "[erased]"
    assert problems(app, url) == []


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("kind", ["guest", "registration"])
def test_a_constraint_that_refuses_only_one_persons_erasure_is_caught_before_commit(
        app, runner, backend, tmp_path, kind):
    """The same attack aimed at one person: a CHECK that refuses the erasure only
    in the row of a guest (or registration) the ledger names, not one of the first
    two rows, which an erasure is always tried on. The erasure tried before the
    COMMIT covers every row the ledger names, so the load stops and the database
    stays as it was. Before: the load committed, the re-apply failed after it, and
    the erased person's name, document and e-mail were back in the database."""
    from tests.test_pgscreen import forge_signed

    ids = add_people(app)
    archive = make_backup(runner)
    if kind == "guest":  # Jana Other, the third guest
        erased, erase = ids["other"], ["--guest", str(ids["other"])]
        check = (b"ALTER TABLE ONLY public.guest\n    ADD CONSTRAINT ck_kept "
                 b"CHECK (((id <> %d) OR ((first_name)::text <> '[erased]'::text)));" % erased)
        assert erased not in sorted(ids[k] for k in ("jana", "petr", "other", "again"))[:2]
    else:  # registration c (and its one guest), the third registration
        erased, erase = ids["again"], ["--registration", str(ids["c"])]
        check = (b"ALTER TABLE ONLY public.registration\n    ADD CONSTRAINT ck_kept "
                 b"CHECK (((email)::text <> 'erased-%d@invalid'::text));" % ids["c"])
        assert ids["c"] not in sorted(ids[k] for k in ("a", "b", "c"))[:2]
    assert runner.invoke(args=["erase", *erase, "--yes"]).exit_code == 0

    def change(dump: bytes) -> bytes:
        end = dump.index(b"--\n-- PostgreSQL database dump complete")
        return dump[:end] + check + b"\n\n\n" + dump[end:]

    refused_and_kept(app, runner, forge_signed(app, archive, tmp_path / "forged" / archive.name,
                                               change), tmp_path, erased)


MOVED = 9003  # the erased guest's id in an archive that moved her


def moved_guest(dump: bytes, guest_id: int) -> bytes:
    """The dump with guest ``guest_id``'s row under id :data:`MOVED`: only her
    keyed hashes lead to her now."""
    copy = dump.index(b"COPY public.guest (")
    row = dump.index(b"\n%d\t" % guest_id, copy) + 1
    return dump[:row] + b"%d" % MOVED + dump[row + len(b"%d" % guest_id):]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_constraint_on_a_row_found_only_by_keyed_hash_stops_the_load(app, runner, backend,
                                                                        tmp_path):
    """An archive signed with a stolen key moves the erased guest to another id, so
    the ledger finds her only by keyed hash (in Python), past the erasure tried on
    the ledger's ids before the COMMIT, and adds a CHECK that refuses erasing that
    row. The ledger is re-applied on the load's own transaction, so the refusal
    stops the load and nothing is restored. Before: the load committed, the
    re-apply failed after it, and Jana was back in the database under id 9003."""
    from tests.test_pgscreen import forge_signed

    ids = add_people(app)
    archive = make_backup(runner)
    assert runner.invoke(args=["erase", "--guest", str(ids["jana"]), "--yes"]).exit_code == 0

    def change(dump: bytes) -> bytes:
        dump = moved_guest(dump, ids["jana"])
        end = dump.index(b"--\n-- PostgreSQL database dump complete")
        return (dump[:end] + b"ALTER TABLE ONLY public.guest\n    ADD CONSTRAINT ck_kept CHECK "
                b"(((id <> %d) OR ((first_name)::text <> '[erased]'::text)));\n\n\n" % MOVED
                + dump[end:])

    forged = forge_signed(app, archive, tmp_path / "forged" / archive.name, change)
    refused_and_kept(app, runner, forged, tmp_path, ids["jana"],
                     said="refused a row while re-applying the erasure ledger")
    with app.app_context():
        url = db.engine.url.render_as_string(hide_password=False)
    assert table_rows(url, "guest") and MOVED not in [row[0] for row in table_rows(url, "guest")]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_guest_found_only_by_keyed_hash_is_erased_before_the_load_commits(
        app, runner, backend, tmp_path, request):
    """The same archive without the CHECK: the guest it moved is found by keyed hash
    and erased on psql's open transaction, and the mark set there, so the
    database is committed already erased and marked."""
    from tests.test_pgscreen import forge_signed

    ids = add_people(app)
    archive = make_backup(runner)
    assert runner.invoke(args=["erase", "--guest", str(ids["jana"]), "--yes"]).exit_code == 0
    forged = forge_signed(app, archive, tmp_path / "forged" / archive.name,
                          lambda dump: moved_guest(dump, ids["jana"]))
    target = restore_target(request, backend, tmp_path)
    result = runner.invoke(args=["restore", str(forged), "--database-url", target, "--yes",
                                 "--uploads", str(tmp_path / "uploads")])
    assert result.exit_code == 0, result.output
    assert "1 erasure re-applied" in result.output
    assert first_name(target, MOVED) == "[erased]" and mark(target) == 1
    assert first_name(target, ids["petr"]) == "Petr"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_forged_sqlite_archive_whose_schema_refuses_erasures_is_not_restored(
        app, runner, backend, tmp_path, request):
    """The same on SQLite, where the erasure is tried on the loaded copy before it
    is swapped in; the probe's changes are undone in a restore that goes on."""
    from tests.test_pgscreen import forge_signed

    add_people(app)
    archive = make_backup(runner)
    target = restore_target(request, "sqlite", tmp_path)
    fine = runner.invoke(args=["restore", str(archive), "--database-url", target, "--yes",
                               "--uploads", str(tmp_path / "fine-uploads")])
    assert fine.exit_code == 0, fine.output
    assert "[erased]" not in repr(table_rows(target, "guest") + table_rows(target, "registration"))

    def change(dump: bytes) -> bytes:
        table = re.search(rb"CREATE TABLE guest \(.*?\n\);", dump, re.S)
        assert table, dump[:2000]
        return (dump[:table.end() - 3] + b", CHECK (first_name <> '[erased]')"
                + dump[table.end() - 3:])

    forged = forge_signed(app, archive, tmp_path / "forged" / archive.name, change)
    other = tmp_path / "other.db"
    result = runner.invoke(args=["restore", str(forged), "--database-url", f"sqlite:///{other}",
                                 "--yes", "--uploads", str(tmp_path / "uploads")])
    assert result.exit_code == 1, result.output
    assert "refuses an erasure" in result.output and "nothing was restored" in result.output
    assert "Traceback" not in result.output and not table_rows(f"sqlite:///{other}", "guest")


def table_rows(url: str, table: str) -> list[tuple]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(table):
                return []
            return [tuple(r) for r in conn.execute(sa.text(f'SELECT * FROM "{table}"'))]
    finally:
        engine.dispose()


def test_a_mark_ahead_of_the_ledger_says_lines_were_lost_and_apply_refuses(
        app, app_config, runner, backend, request, tmp_path):
    """A mark past the ledger's last line is proof that every copy lost lines (a
    restore marks the ledger's last line, an erasure only its own): health says
    so and ``erasure-ledger apply`` refuses, the mark as it was (before the R3
    review: "not known", and apply re-applied every line and set the mark back,
    the lost lines' guests left for a restore to bring back)."""
    ids = add_people(app)
    archive = make_backup(runner)
    copy = restore_target(request, backend, tmp_path)
    assert runner.invoke(args=["restore", str(archive), "--database-url", copy, "--yes",
                               "--uploads", str(tmp_path / "copy-uploads")]).exit_code == 0
    assert runner.invoke(args=["erase", "--guest", str(ids["jana"]), "--yes"]).exit_code == 0
    engine = sa.create_engine(copy)
    with engine.begin() as conn:
        set_mark(conn, 10 ** 9)
    engine.dispose()
    ((problem, params),) = problems(app, copy)
    assert problem == "erasures_unchecked"
    assert "the erasure ledger has lost lines 2..1000000000" in params["message"]
    switched = create_app({**app_config, "DATABASE_URL": copy}, instance_path=app.instance_path)
    try:
        applied = switched.test_cli_runner().invoke(args=["erasure-ledger", "apply"])
        assert applied.exit_code == 1, applied.output
        assert "has lost lines 2..1000000000" in applied.output
        assert "nothing was changed" in applied.output and mark(copy) == 10 ** 9
    finally:
        with switched.app_context():
            db.engine.dispose()


def test_a_ledger_that_cannot_be_checked_is_a_health_problem(app, runner):
    """Before, health said nothing when the ledger was damaged or its key gone."""
    ids = add_people(app)
    assert runner.invoke(args=["erase", "--guest", str(ids["jana"]), "--yes"]).exit_code == 0
    with app.app_context():
        url = db.engine.url.render_as_string(hide_password=False)
        ledger = ErasureLedger.in_folder(backup_context(app).instance_path)
    ledger.path.write_bytes(ledger.path.read_bytes().replace(b'"guest"', b'"email"', 1))
    found = problems(app, url)
    assert [p[0] for p in found] == ["erasures_unchecked"], found


@pytest.mark.parametrize("backend", ["sqlite"])
def test_apply_reports_a_row_found_only_by_keyed_hash_that_the_erasure_did_not_change(
        app, runner):
    """``erasure-ledger apply`` finds the rows once and checks those same rows: a
    guest matched only by keyed hash whose UPDATE a trigger partly undoes ("Jana"
    put back) stops the apply, and nothing moves. A second scan by hash, as it ran
    before, missed her: her document number is erased, so no hash leads to her."""
    from guest_backup.errors import BackupError
    from guest_backup.ops.erasure_mark import _apply
    from guest_backup.ops.ledger_copies import collect

    ids = add_people(app)
    assert runner.invoke(args=["erase", "--guest", str(ids["jana"]), "--yes"]).exit_code == 0
    with app.app_context():
        ctx = backup_context(app)
        ledger = ErasureLedger.in_folder(ctx.instance_path)
        entries = collect(ledger, ctx.storages())
        entries[0]["guest_ids"] = [999999]  # not in this database: by keyed hash
        del entries[0]["hashes"]["guest_created"]  # an older line: by document and e-mail
        with db.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM erasure_mark"))
            conn.exec_driver_sql(
                f"CREATE TRIGGER keep AFTER UPDATE ON guest WHEN NEW.id = {ids['again']} "
                f"BEGIN UPDATE guest SET first_name = 'Jana' WHERE id = NEW.id; END")
        with pytest.raises(BackupError, match=rf"still present .*guest {ids['again']}"):
            with db.engine.begin() as conn:
                _apply(conn, entries, ledger)
        with db.engine.connect() as conn:
            assert read_mark(conn) is None
            row = conn.execute(sa.text("SELECT document_number FROM guest WHERE id = :i"),
                               {"i": ids["again"]}).scalar_one()
        assert row == "AB 123 456"  # rolled back with the rest
