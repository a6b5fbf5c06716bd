"""Erasures survive restores: a guest erased after an archive was taken is erased
again by the whole restore (and by a drill, in its scratch copy), from the ledger
in the instance folder or from any copy beside the archives; a broken copy stops
the restore before it touches the target."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from guest_backup.ops.erasure import ERASED
from guest_backup.ops.ledger import LEDGER_NAME
from tests.helpers import make_backup
from guest_registration.extensions import db
from tests.test_erasure import PHOTO, add_people, guest
from tests.test_remote import BUCKET, PREFIX, s3  # noqa: F401 (fixture)


def erase_jana(runner, ids) -> None:
    result = runner.invoke(args=["erase", "--guest", str(ids["jana"]), "--yes"])
    assert result.exit_code == 0, result.output


def restore_replace(runner, archive):
    return runner.invoke(args=["restore", str(archive), "--replace", "--yes"])


def assert_erased(app, ids) -> None:
    jana = guest(app, ids["jana"])
    assert (jana["first_name"], jana["document_number"], jana["document_photo"]) == \
        (ERASED, ERASED, None)
    assert guest(app, ids["petr"])["first_name"] == "Petr"  # the others as restored
    assert not (Path(app.config["UPLOAD_FOLDER"]) / PHOTO).exists()


def test_a_whole_restore_reapplies_the_erasure(app, runner):
    ids = add_people(app)
    archive = make_backup(runner)  # Jana is in it
    erase_jana(runner, ids)
    result = restore_replace(runner, archive)
    assert result.exit_code == 0, result.output
    assert "1 erasure re-applied" in result.output
    assert_erased(app, ids)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_nobody_sees_the_erased_guest_while_a_restore_runs(app, runner):
    """A reader polling the database all through a PostgreSQL restore never sees
    Jana's name: the ledger is re-applied on the load's own transaction. Before,
    the load committed first and the re-apply ran after it on a new connection,
    and the reader saw "Jana" in that window (a reader blocked by the load's locks
    reads as soon as the COMMIT releases them)."""
    ids = add_people(app)
    archive = make_backup(runner)  # Jana is in it
    erase_jana(runner, ids)
    with app.app_context():
        url = db.engine.url.render_as_string(hide_password=False)
    seen: list = []
    done = threading.Event()

    def watch() -> None:
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                while not done.is_set():
                    try:
                        seen.append(conn.execute(sa.text("SELECT first_name FROM guest WHERE "
                                                         "id = :i"), {"i": ids["jana"]}).scalar())
                    except sa.exc.DBAPIError:
                        seen.append("error")  # the table dropped and made again meanwhile
        finally:
            engine.dispose()

    reader = threading.Thread(target=watch)
    reader.start()
    try:
        result = restore_replace(runner, archive)
    finally:
        done.set()
        reader.join()
    assert result.exit_code == 0 and "1 erasure re-applied" in result.output, result.output
    assert "Jana" not in seen and seen.count(ERASED) > 10
    assert_erased(app, ids)


def test_a_drill_reapplies_the_erasure_in_its_scratch_copy(app, runner):
    ids = add_people(app)
    make_backup(runner)
    erase_jana(runner, ids)
    drill = runner.invoke(args=["restore-test"])
    assert drill.exit_code == 0, drill.output
    assert "1 erasure re-applied" in drill.output


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_copy_beside_the_archives_is_enough(app, runner):
    ids = add_people(app)
    archive = make_backup(runner)
    erase_jana(runner, ids)
    (Path(app.instance_path) / LEDGER_NAME).unlink()  # the instance folder's ledger is lost
    assert (Path(app.config["BACKUP_FOLDER"]) / LEDGER_NAME).exists()
    result = restore_replace(runner, archive)
    assert result.exit_code == 0 and "1 erasure re-applied" in result.output, result.output
    assert_erased(app, ids)
    assert (Path(app.instance_path) / LEDGER_NAME).exists()  # put back from the copy


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_copy_in_s3_alone_is_enough(app, runner, s3):  # noqa: F811
    app.config["BACKUP_REMOTE_URL"] = f"s3://{BUCKET}/{PREFIX}"
    ids = add_people(app)
    archive = make_backup(runner)
    erase_jana(runner, ids)
    (Path(app.instance_path) / LEDGER_NAME).unlink()
    (Path(app.config["BACKUP_FOLDER"]) / LEDGER_NAME).unlink()
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert f"{PREFIX}/{LEDGER_NAME}" in keys
    result = restore_replace(runner, archive)
    assert result.exit_code == 0 and "1 erasure re-applied" in result.output, result.output
    assert_erased(app, ids)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_edited_copy_stops_the_restore_before_it_touches_anything(app, runner):
    ids = add_people(app)
    archive = make_backup(runner)
    erase_jana(runner, ids)
    copy = Path(app.config["BACKUP_FOLDER"]) / LEDGER_NAME
    copy.write_text(copy.read_text().replace(f'"guest_ids":[{ids["jana"]}]',
                                             f'"guest_ids":[{ids["petr"]}]'))
    before = guest(app, ids["petr"])
    result = restore_replace(runner, archive)
    assert result.exit_code == 1 and "erasure ledger" in result.output, result.output
    assert guest(app, ids["petr"]) == before
    assert guest(app, ids["jana"])["first_name"] == ERASED  # the target as it was
