"""A restore believes an archive's schema only as far as the loaded database bears
it out: a database made before migrations must match the first revision (as
``setup`` demands), the loaded ``alembic_version`` must hold exactly the code's
heads before the commit, and the manifest's revisions must be revision names
(quoted cut short, never raw). Every refusal leaves the target (the live
database, replaced with --replace) exactly as it was."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa

from guest_registration import create_app
from guest_registration.extensions import db
from tests.helpers import make_backup, make_config, table_contents
from tests.test_archive_schema import later_app, newer  # noqa: F401 (fixture)
from tests.test_migrations import BACKUP_HEAD, HOST_HEAD, _legacy_create_all
from tests.test_pgscreen import forge_signed, reseal


def replace_live(app, archive: Path, live: str, tmp_path: Path):
    """``restore --replace`` of ``archive`` into the live database ``live``."""
    return app.test_cli_runner().invoke(args=[
        "restore", str(archive), "--database-url", live, "--replace", "--yes",
        "--uploads", str(tmp_path / "restored-uploads")])


def live_state(url: str) -> dict:
    return table_contents(url, skip=())


def as_it_was(before: dict, url: str) -> bool:
    """Every table as before; the audit log only grown (the refusal's own entry,
    when the live database is the app's own)."""
    after = live_state(url)
    audit_before, audit_after = before.pop("audit_log"), after.pop("audit_log")
    return after == before and audit_after[:len(audit_before)] == audit_before


def test_a_legacy_archive_unlike_the_first_revision_is_refused(
        app, runner, app_config, tmp_path, backend, new_pg_database):
    """setup refuses an unversioned database that is not the first revision; so does
    a restore of an archive of one (here: guest without gdpr_consent), checked on
    the loaded copy (SQLite) or in psql's open transaction (PostgreSQL)."""
    old_url = (f"sqlite:///{tmp_path / 'old.db'}" if backend == "sqlite"
               else new_pg_database())
    old = create_app(make_config(tmp_path, old_url, DATABASE_SCHEMA_CHECK=False),
                     instance_path=str(tmp_path / "old"))
    with old.app_context():
        _legacy_create_all(old)
        with db.engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE guest DROP COLUMN gdpr_consent"))
    archive = make_backup(old.test_cli_runner())
    assert json.loads(zipfile.ZipFile(archive).read("manifest.json"))["schema"] == {
        "revisions": []}
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    live = app_config["DATABASE_URL"]
    before = live_state(live)
    result = replace_live(old, archive, live, tmp_path)
    print("RESTORE:", result.exit_code, repr(result.output.strip()[:300]))
    assert result.exit_code == 1, result.output
    assert "does not match the first revision" in result.output
    assert "guest has columns ['gdpr_consent'] that differ" in result.output
    assert "nothing was restored" in result.output
    assert live_state(live) == before
    with old.app_context():  # the refusal is audited in the app's own database
        message = db.session.execute(sa.text(
            "SELECT message FROM audit_log WHERE action = 'restore' ORDER BY id DESC")).scalar()
    assert "does not match the first revision" in message


def forged_versions(app, tmp_path: Path, backend: str, rows: list[str], *,
                    drop_head: bool = False) -> Path:
    """The app's own archive, its manifest untouched, its dump's alembic_version
    given the extra ``rows`` (``drop_head``: and without the host head's row)."""
    archive = make_backup(app.test_cli_runner())

    def change(dump: bytes) -> bytes:
        text = dump.decode()
        if backend == "sqlite":
            if drop_head:
                text = text.replace(f"INSERT INTO \"alembic_version\" VALUES('{HOST_HEAD}');\n",
                                    "")
            extra = "".join(f"INSERT INTO \"alembic_version\" VALUES("
                            f"'{r.replace(chr(39), chr(39) * 2)}');\n" for r in rows)
            i = text.rstrip().rfind("COMMIT;")
            return (text[:i] + extra + text[i:]).encode()
        head = "COPY public.alembic_version (version_num) FROM stdin;\n"
        assert head in text
        if drop_head:
            text = text.replace(f"{head}{HOST_HEAD}\n", head).replace(
                f"\n{HOST_HEAD}\n\\.", "\n\\.")
        return text.replace(head, head + "".join(f"{r}\n" for r in rows)).encode()

    return forge_signed(app, archive, tmp_path / "forged" / archive.name, change)


@pytest.mark.parametrize("rows", [["zz_unknown';--"], ["0001_naming_convention"]])
def test_dump_versions_unlike_the_manifest_are_refused(app, runner, app_config, backend,
                                                       tmp_path, rows):
    """A signed manifest at the code's heads whose dump's alembic_version holds
    another row (unknown, or a second one on the host's branch): the site would
    answer 503 or setup crash; the restore refuses before the commit."""
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    forged = forged_versions(app, tmp_path, backend, rows)
    live = app_config["DATABASE_URL"]
    before = live_state(live)
    result = replace_live(app, forged, live, tmp_path)
    print("RESTORE:", result.exit_code, repr(result.output.strip()[:300]))
    assert result.exit_code == 1, result.output
    assert "alembic_version" in result.output and "nothing was restored" in result.output
    assert as_it_was(before, live)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_an_upgrade_from_versions_unlike_the_manifest_is_refused(app, runner, app_config,
                                                                 newer, tmp_path):
    """PostgreSQL upgrades with Alembic's offline SQL (``UPDATE alembic_version ...
    WHERE version_num = '<the manifest's revision>'``): a dump at another revision
    than its manifest says is updated nowhere, and the check before the COMMIT
    finds the rows are not the code's heads."""
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    forged = forged_versions(app, tmp_path, "postgresql", ["0001_naming_convention"],
                             drop_head=True)
    code = later_app(tmp_path, app_config, newer)
    live = app_config["DATABASE_URL"]
    before = live_state(live)
    result = replace_live(code, forged, live, tmp_path)
    print("RESTORE:", result.exit_code, repr(result.output.strip()[:300]))
    assert result.exit_code == 1, result.output
    assert "0001_naming_convention" in result.output
    assert f"9000_test_note, {BACKUP_HEAD}" in result.output
    assert "nothing was restored" in result.output
    assert as_it_was(before, live)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_revisions_that_are_not_revision_names_are_refused(app, runner, app_config, tmp_path):
    """Every revision of this code's history (host and plugin branches) is a name;
    signed revision text that is not one (escape sequences, newlines, 5 KB) is
    refused by verify and restore, and never shown or audited raw."""
    from alembic.script import ScriptDirectory

    from guest_backup.ops.schema import _config, archive_revisions
    from guest_backup.wiring import migration_paths

    script = ScriptDirectory.from_config(_config(migration_paths(app)))
    ours = sorted(r.revision for r in script.walk_revisions())
    assert {HOST_HEAD, BACKUP_HEAD} <= set(ours)
    assert archive_revisions({"schema": {"revisions": ours}}) == (set(ours), False)

    archive = make_backup(runner)
    with zipfile.ZipFile(archive) as src:
        members = {i.filename: src.read(i) for i in src.infolist()}
    manifest = json.loads(members["manifest.json"])
    manifest["schema"]["revisions"] = ["\x1b[2J\x1b[HOK restore finished\n\n\n" + "X" * 5000]
    members["manifest.json"] = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    from guest_backup.wiring import backup_context
    members["manifest.sig"] = backup_context(app).settings.signer().sign_manifest(
        members["manifest.json"])
    forged = tmp_path / "forged" / archive.name
    forged.parent.mkdir()
    with zipfile.ZipFile(forged, "w", zipfile.ZIP_DEFLATED) as out:
        for name, data in members.items():
            out.writestr(name, data)
    reseal(app, archive, forged)

    verified = runner.invoke(args=["verify", str(forged)])
    print("VERIFY:", verified.exit_code, repr(verified.output[:300]), len(verified.output))
    live = app_config["DATABASE_URL"]
    before = live_state(live)
    restored = replace_live(app, forged, live, tmp_path)
    print("RESTORE:", restored.exit_code, repr(restored.output[:300]), len(restored.output))
    with app.app_context():
        messages = [m or "" for (m,) in db.session.execute(sa.text(
            "SELECT message FROM audit_log WHERE action IN ('verify', 'restore') "
            "ORDER BY id"))]
    print("AUDIT:", [m[:200] for m in messages])
    assert verified.exit_code == 1 and restored.exit_code == 1
    for text in (verified.output, restored.output, *messages[-2:]):
        assert "not revision names" in text
        assert "XXXXXXXX" not in text and "\n\n" not in text and "\x1b" not in text
        assert len(text) < 600
    assert "nothing was restored" in restored.output
    assert as_it_was(before, live)
