"""The default PITR folder (``<instance>/pgbackrest``) out of the box, as root with the
real ``postgres`` user: ``pitr setup`` makes the instance folder traverse-only
(0711), an app start keeps it so, ``postgres`` still reads nothing in it, and
pgBackRest's ``archive-push`` works (``pgbackrest check``)."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path


from guest_registration import create_app
from guest_registration.config import ensure_private_folder
from guest_registration.extensions import db
from tests.helpers import make_config, missing
from tests.pitr_cluster import as_owner
from tests.test_pitr import cluster, make_app, pitr  # noqa: F401 (the fixture)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_default_folder_works_and_the_instance_folder_stays_private(cluster, tmp_path):
    c = cluster
    instance = c.base / "instance"
    # the defaults: PITR_FOLDER=<instance>/pgbackrest, the secret key in <instance>/secret_key
    app = make_app(c, tmp_path, PITR_FOLDER=None, SECRET_KEY=None)
    assert app.config["PITR_FOLDER"] == str(instance / "pgbackrest")
    assert _mode(instance) == 0o700  # a new instance folder
    (instance / "notes.txt").write_text("app's own")
    os.chmod(instance / "notes.txt", 0o644)

    first = pitr(app, "setup", "--apply", code=3)
    assert f"the instance folder {instance} is traverse-only now (mode 0711)" in first, first
    assert "1 entries in it lost their read and write bits for others" in first
    assert _mode(instance) == 0o711 and _mode(instance / "notes.txt") == 0o600
    c.restart()
    second = pitr(app, "setup", code=3)
    assert "OK   pgBackRest check passed" in second, second
    assert "traverse-only now" not in second  # nothing left to open

    with app.app_context():
        db.engine.dispose()
    again = create_app(app.config.copy(), instance_path=str(instance))  # another app start
    assert again.config["SECRET_KEY"] == app.config["SECRET_KEY"]
    assert _mode(instance) == 0o711
    for entry in instance.iterdir():  # everything but pgBackRest's folder is the app's alone
        if entry.name != "pgbackrest":
            assert _mode(entry) & 0o066 == 0, entry
    assert as_owner("cat", str(instance / "secret_key"), check=False).returncode != 0
    assert as_owner("ls", str(instance), check=False).returncode != 0
    conf = instance / "pgbackrest" / "pgbackrest.conf"
    checked = as_owner("pgbackrest", f"--config={conf}", "--stanza=guest-registration",
                       "check", check=False)
    assert checked.returncode == 0, checked.stderr[-500:]
    assert any((instance / "pgbackrest" / "repo" / "archive").rglob("*.lz4"))


def test_a_private_folder_keeps_traverse_bits_and_loses_read_and_write(tmp_path):
    new = ensure_private_folder(tmp_path / "a" / "instance")
    assert _mode(new) == 0o700
    for before, after in ((0o711, 0o711), (0o755, 0o711), (0o777, 0o711), (0o750, 0o710),
                          (0o770, 0o710), (0o701, 0o701), (0o500, 0o700)):
        os.chmod(new, before)
        ensure_private_folder(new)
        assert _mode(new) == after, (oct(before), oct(_mode(new)))
    os.chmod(new, 0o755)
    create_app(make_config(tmp_path, f"sqlite:///{tmp_path / 'a.db'}"), instance_path=str(new))
    assert _mode(new) == 0o711


def test_the_kept_pgbackrest_state_is_the_instance_owners_and_private():
    """Root (`pitr info`, the timer) writes pitr-info.json into the instance folder of
    an app that runs as another user: that user can read it, nobody else."""
    if os.geteuid() != 0:
        missing("REQUIRE_PGBACKREST", "needs root (the file is handed to the folder's owner)")
    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="gr-pitr-state-"))  # every user may enter it
    os.chmod(base, 0o755)
    try:
        _kept_state_is_private(ensure_private_folder(base / "instance"), nobody)
    finally:
        shutil.rmtree(base)


def _kept_state_is_private(instance: Path, nobody) -> None:
    from guest_backup.physical.state import SNAPSHOT_NAME, load_snapshot, save_snapshot

    os.chown(instance, nobody.pw_uid, nobody.pw_gid)
    save_snapshot(instance, {"info": {"name": "guest-registration"}})
    kept = instance / SNAPSHOT_NAME
    assert kept.stat().st_uid == nobody.pw_uid and _mode(kept) == 0o600
    as_nobody = subprocess.run(["runuser", "-u", "nobody", "--", "cat", str(kept)],
                               capture_output=True, text=True)
    assert as_nobody.returncode == 0 and "guest-registration" in as_nobody.stdout
    assert as_owner("cat", str(kept), check=False).returncode != 0  # postgres may not
    assert load_snapshot(instance)[0]["info"] == {"name": "guest-registration"}
    assert [p.name for p in instance.iterdir()] == [SNAPSHOT_NAME]  # no temporary file left
