"""A command typed as root (``sudo -E guest-registration pitr drill``, ``status``,
``backup``, a root worker) in the service user's folders: what it makes there is
that user's, or it is refused with advice naming that user, and what the service's
user cannot read afterwards is said to be unreadable, never a traceback or "not
recognised". Each test makes the service's folders nobody's (uid 65534) in a
folder of /tmp that nobody may enter, then runs the service's side in a child
process that has become nobody."""

from __future__ import annotations

import os
import pickle
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from guest_backup.errors import BackupError
from guest_backup.ops.ledger import ErasureLedger
from guest_backup.ops.locks import LOCK_NAME
from guest_registration import create_app
from guest_registration.config import build_config

from tests.helpers import ADMIN, make_config, missing

NOBODY = 65534


@pytest.fixture
def base():
    """A folder nobody may enter (0711, root's), removed afterwards."""
    if os.geteuid() != 0:
        missing("REQUIRE_PGBACKREST", "running as root and as another user needs root")
    folder = Path(tempfile.mkdtemp(prefix="gr-root-runs-", dir="/tmp"))
    os.chmod(folder, 0o711)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def nobodys(folder: Path) -> Path:
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chown(folder, NOBODY, NOBODY)
    return folder


def as_nobody(fn, *args):
    """``fn(*args)`` in a forked child that became nobody: ("ok", its result) or
    ("raised", "<exception type>: <message>")."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                result = ("ok", fn(*args))
            except BaseException as exc:
                result = ("raised", f"{type(exc).__name__}: {exc}")
            with os.fdopen(write, "wb") as out:
                out.write(pickle.dumps(result))
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as src:
        data = src.read()
    os.waitpid(pid, 0)
    assert data, "the child process said nothing"
    return pickle.loads(data)


def owners(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.lstat().st_uid for p in [folder, *folder.rglob("*")]}


# --------------------------------------------------------------------------- R1: the ledger lock

def _read_ledger(instance: Path):
    return ErasureLedger.in_folder(instance).read_bytes()


def test_the_ledger_lock_made_by_root_is_the_service_users(base):
    """``pitr drill`` as root left erasure-ledger.jsonl.lock root's (0600): the
    service's ``erase``, ``restore-test`` and ``backup-health`` then failed."""
    instance = nobodys(base / "instance")
    assert ErasureLedger.in_folder(instance).read_bytes() is None  # root, as pitr drill
    lock = instance / "erasure-ledger.jsonl.lock"
    assert lock.stat().st_uid == NOBODY
    assert as_nobody(_read_ledger, instance) == ("ok", None)


def test_a_root_owned_ledger_lock_left_before_names_its_owner(base):
    instance = nobodys(base / "instance")
    lock = instance / "erasure-ledger.jsonl.lock"
    lock.write_bytes(b"")
    os.chmod(lock, 0o600)  # root's, as an earlier version left it
    outcome, text = as_nobody(_read_ledger, instance)
    assert outcome == "raised"
    assert text.startswith(f"BackupError: the erasure ledger lock {lock} cannot be opened "
                           f"(Permission denied): it belongs to root; run commands as the "
                           f"service's user, or chown it"), text


def test_a_ledger_line_written_by_root_is_the_service_users(base):
    instance = nobodys(base / "instance")
    ledger = ErasureLedger.in_folder(instance)
    ledger.key_path.write_text("ab" * 32 + "\n")
    os.chown(ledger.key_path, NOBODY, NOBODY)
    ledger.append("guest", guest_ids=[7])
    assert ledger.path.stat().st_uid == NOBODY
    assert as_nobody(lambda: len(list(ErasureLedger.in_folder(instance).entries()))) == ("ok", 1)


# --------------------------------------------------------------------------- R2: root's status first

def _service_config(instance: Path):
    config = build_config(str(instance), environ={})
    return config["SECRET_KEY"], config["SECURITY_PASSWORD_SALT"]


def test_roots_status_on_a_fresh_instance_leaves_the_service_users_files(base):
    """Root's ``status`` made the instance folder, its secrets, keys and uploads
    root's; every command of the service's user then died with a traceback."""
    home = nobodys(base / "srv")
    instance = home / "gr"
    config = make_config(base, f"sqlite:///{base / 'db.sqlite'}")
    for key in ("SECRET_KEY", "SECURITY_PASSWORD_SALT", "UPLOAD_FOLDER", "BACKUP_FOLDER"):
        config.pop(key)
    app = create_app(config, instance_path=str(instance))
    result = app.test_cli_runner().invoke(args=["status"])
    assert "Traceback" not in result.output, result.output
    made = owners(home)
    assert made and set(made.values()) == {NOBODY}, made
    assert {"gr", "gr/secret_key", "gr/password_salt", "gr/uploads"} <= set(made)
    outcome, secrets_seen = as_nobody(_service_config, instance)
    assert outcome == "ok", secrets_seen
    assert secrets_seen == (app.config["SECRET_KEY"], app.config["SECURITY_PASSWORD_SALT"])


def test_a_secret_the_service_cannot_read_is_one_line_naming_its_owner(base):
    instance = nobodys(base / "gr")
    secret = instance / "secret_key"
    secret.write_text("made-by-root\n")
    os.chmod(secret, 0o600)
    outcome, text = as_nobody(_service_config, instance)
    assert outcome == "raised"
    assert text == (f"ConfigError: the secret {secret} cannot be used (Permission denied): "
                    f"{secret} belongs to root; run commands as the service's user, or "
                    f"chown it"), text


def test_an_instance_folder_the_service_cannot_enter_is_one_line_too(base):
    home = nobodys(base / "srv")
    closed = home / "closed"
    closed.mkdir(mode=0o700)  # root's: the service's user may not enter it
    outcome, text = as_nobody(_service_config, closed / "gr")
    assert outcome == "raised"
    assert text.startswith(f"ConfigError: the secret {closed / 'gr' / 'secret_key'} cannot be "
                           f"used (Permission denied): {closed} belongs to root"), text


# --------------------------------------------------------------------------- R4: root's backup

@pytest.mark.parametrize("lock_there", [False, True])
def test_roots_backup_in_the_service_users_folder_is_refused_naming_the_user(
        app, runner, tmp_path, lock_there):
    """Root's ``backup`` after the service's said "remove it, then run the backup
    again"; done, root's archive, seal and lock file stopped the service's backups."""
    if os.geteuid() != 0:
        missing("REQUIRE_PGBACKREST", "running as root in another user's folder needs root")
    folder = nobodys(tmp_path / "service-backups")
    if lock_there:
        (folder / LOCK_NAME).write_bytes(b"")
        os.chown(folder / LOCK_NAME, NOBODY, NOBODY)
    os.chown(app.instance_path, NOBODY, NOBODY)
    app.config["BACKUP_FOLDER"] = str(folder)
    result = runner.invoke(args=["backup"])
    assert result.exit_code == 1, result.output
    assert (f"the backup folder {folder} belongs to nobody: run the command as nobody, "
            f"not as root") in result.output
    assert "remove it" not in result.output
    assert {p.name: p.stat().st_uid for p in folder.iterdir()} == (
        {LOCK_NAME: NOBODY} if lock_there else {})
    state = Path(app.instance_path) / "notify-state.json"
    assert not state.exists() or state.stat().st_uid == NOBODY


def test_a_lock_file_of_the_folder_owner_says_run_as_that_user(tmp_path):
    """Not root: the folder and its lock file are another user's."""
    from guest_backup.ops.locks import BackupLock, _own_file

    folder = nobodys(tmp_path / "theirs")
    lock = folder / LOCK_NAME
    lock.write_bytes(b"")
    os.chown(lock, NOBODY, NOBODY)
    if os.geteuid() == 0:  # root is refused earlier, by the folder's owner
        with pytest.raises(BackupError, match="belongs to nobody: run the command as nobody"):
            BackupLock(folder).acquire()
    with pytest.raises(BackupError) as refused:
        _own_file(lock, os.lstat(lock))
    if os.geteuid() != NOBODY:
        assert str(refused.value) == (f"the lock file {lock} is not a regular file of this "
                                      f"user (nobody's): run the command as nobody, the "
                                      f"backup folder's owner")


# --------------------------------------------------------------------------- R3: unreadable seals

def _list_as_service(app):
    with app.app_context():
        result = app.test_cli_runner().invoke(args=["backup-list"])
        return result.exit_code, result.output


def service_app_with_a_backup(base: Path):
    """The app of ``base`` (SQLite, its backup folder in the instance folder) set up,
    and the archive of one backup made (as root: the caller gives files away)."""
    config = make_config(base, f"sqlite:///{base / 'db.sqlite'}")
    config["BACKUP_FOLDER"] = str(base / "instance" / "backups")
    app = create_app(config, instance_path=str(base / "instance"))
    with app.app_context():
        from guest_registration.maintenance import setup

        list(setup(app, *ADMIN))
        made = app.test_cli_runner().invoke(args=["backup"])
        assert made.exit_code == 0, made.output
    return app, Path(made.output.strip().splitlines()[-1])


def test_an_archive_root_left_in_the_service_folder_is_unreadable_not_unrecognised(base):
    """A root worker's archive and seal (root's, 0600) in the service's
    BACKUP_FOLDER were "not recognised (no valid seal of a trusted key, or another
    installation's)": the wrong reason, and the wrong fix."""
    app, archive = service_app_with_a_backup(base)
    for path in [base / "db.sqlite", *(base / "instance").rglob("*"), base / "instance"]:
        os.lchown(path, NOBODY, NOBODY)  # the service's files ...
    for path in (archive, archive.with_name(archive.name + ".sig")):
        os.chown(path, 0, 0)  # ... but the archive and its seal root's, as a root worker left
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    outcome, (code, output) = as_nobody(_list_as_service, app)
    assert outcome == "ok"
    assert "not recognised" not in output, output
    assert (f"WARNING local: 1 file(s) named like archives cannot be read by this user: "
            f"{archive.name} (unreadable: {archive.name}.sig: Permission denied, it is "
            f"root's)") in output, output
    assert "(run commands as the backup folder's owner, or chown them)" in output


def test_state_locks_and_the_ledger_key_made_by_root_are_the_service_users(base):
    """A root command's ``.notify-state.json.lock`` (and the other JSON states' locks)
    and a root erase's ledger key were root's: the service's notifications then
    failed ("the notification state cannot be used") and its erasures too."""
    from guest_backup.engines import held_flock, try_flock
    from guest_backup.ops.ledger_format import create_key

    folder = nobodys(base / "instance")
    with held_flock(folder / ".notify-state.json.lock"):
        pass
    os.close(try_flock(folder / "slot.lock"))
    create_key(folder / "erasure_ledger_key")
    owners = {p.name: p.stat().st_uid for p in folder.iterdir()}
    assert owners == {".notify-state.json.lock": NOBODY, "slot.lock": NOBODY,
                      "erasure_ledger_key": NOBODY}


def test_a_root_worker_refuses_the_service_users_backup_folder(base, redis_url):
    """With the lock in Redis nothing else stopped it: a root worker wrote root's
    archive and seal (0600) into the service's folder, which then could not read
    them. Taking or adopting the lock there is refused, naming whom to run as."""
    import redis

    from guest_backup.ops.locks import RedisBackupLock

    folder = nobodys(base / "backups")
    client = redis.Redis.from_url(redis_url)
    for take in (lambda lock: lock.acquire(), lambda lock: lock.adopt("queued-token")):
        with pytest.raises(BackupError, match="belongs to nobody: run the command as nobody"):
            take(RedisBackupLock(client, "gr-test:lock", folder))
        assert client.get("gr-test:lock") is None and list(folder.iterdir()) == []
    mine = RedisBackupLock(client, "gr-test:lock", base / "root-backups").acquire()
    mine.release()  # root's own folder: taken as before
    client.close()
