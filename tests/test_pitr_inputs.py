"""What PITR takes from people, checked before it is used (findings of a review):

- an existing folder of another user (``--into``, ``PITR_FOLDER``, ``PITR_REPO_PATH``)
  was made ``postgres``'s, mode 0700, and a failed recovery left an ``--into``
  folder it had not made ``postgres``'s: now another user's folder is refused and
  left as it is, and a failed recovery gives a folder back as it found it, emptied;
- a line break in a setting (a base64 passphrase wrapped at 64 characters) became
  a line of pgbackrest.conf of its own: now the setting is refused, by name only;
- ``--to`` without an offset in a daylight saving change was silently resolved to
  one of two moments (or to one that never was on the clock): now refused;
- a ``--to`` out of range (year 1) ended in a traceback.

Real folders, real users (``postgres``, ``nobody``), real pgBackRest; the one
recovery that fails half-way runs on a real throwaway cluster."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pytest

from guest_backup.physical import PitrError, recovery
from guest_backup.physical.cluster import Cluster
from guest_backup.physical.config import PitrConfig
from guest_backup.physical.owner import Owner
from guest_backup.physical.pgbackrest import PgBackRest
from guest_backup.physical.setup import SetupReport, prepare_files
from guest_backup.physical.state import parse_target
from guest_registration.extensions import db
from tests.helpers import missing
from tests.pitr_cluster import BINDIR, OWNER, add_registrations, require
from tests.test_pitr import cluster, make_app, pitr, set_up  # noqa: F401 (the fixture)


def _seen(path: Path) -> tuple[str, int]:
    st = path.stat()
    return pwd.getpwuid(st.st_uid).pw_name, stat.S_IMODE(st.st_mode)


@pytest.fixture
def base():
    """A folder every user may enter (pytest's own is root's alone), as root."""
    if os.geteuid() != 0:
        missing("REQUIRE_PGBACKREST", "needs root (folders of postgres and nobody are made)")
    folder = Path(tempfile.mkdtemp(prefix="gr-pitr-inputs-"))
    os.chmod(folder, 0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def _postgres() -> Owner:
    user = pwd.getpwnam(OWNER)
    return Owner(user.pw_name, user.pw_uid, user.pw_gid)


def _nobodys(folder: Path, mode: int = 0o750) -> Path:
    nobody = pwd.getpwnam("nobody")
    folder.mkdir(mode=mode)
    os.chmod(folder, mode)
    os.chown(folder, nobody.pw_uid, nobody.pw_gid)
    return folder


def _config(base: Path, **settings) -> PitrConfig:
    return PitrConfig.from_config({"PITR_PG_DATA": str(base / "data"),
                                   "PITR_FOLDER": str(base / "pgbackrest"), **settings}, {})


def test_another_users_folder_is_refused_and_left_as_it_is(base):
    owner = _postgres()
    theirs = _nobodys(base / "nobodys")
    with pytest.raises(PitrError) as refused:
        owner.make_dir(theirs)
    message = str(refused.value)
    assert f"the folder {theirs} belongs to nobody, not to postgres" in message
    assert "\n" not in message
    assert _seen(theirs) == ("nobody", 0o750)
    roots = base / "roots"  # root's (made by an administrator for it): handed over
    roots.mkdir(mode=0o755)
    owner.make_dir(roots)
    assert _seen(roots) == ("postgres", 0o700)
    owner.make_dir(roots)  # already the owner's: fine again
    made = owner.make_dir(base / "new" / "folder")
    assert _seen(made) == ("postgres", 0o700) and _seen(base / "new") == ("postgres", 0o755)


def test_setup_refuses_a_repository_folder_of_another_user(base):
    """``PITR_REPO_PATH`` on a backup disk's root, another user's, holding another
    tool's file: before, setup made it postgres's, mode 0700, without a word."""
    shared = _nobodys(base / "shared-backups", 0o755)
    (shared / "other-tool.tar").write_text("x")
    config = _config(base, PITR_REPO_PATH=str(shared))
    source = Cluster(base / "data", 5432, str(base), _postgres(), str(BINDIR))
    with pytest.raises(PitrError, match=f"the folder {shared} belongs to nobody"):
        prepare_files(config, source, SetupReport())
    assert _seen(shared) == ("nobody", 0o755)
    assert [p.name for p in shared.iterdir()] == ["other-tool.tar"]
    assert not (base / "pgbackrest").exists()  # nothing made before the refusal


def test_a_failed_recovery_gives_a_folder_back_as_it_found_it(base):
    """pgBackRest's restore fails (no stanza in the repository): the ``--into``
    folder, root's, 0750, is root's and 0750 again, empty (before: postgres's, 0700)."""
    require()
    owner = _postgres()
    config = _config(base)
    source = Cluster(base / "data", 5432, str(base), owner, str(BINDIR))
    prepare_files(config, source, SetupReport())
    into = base / "recovered"
    into.mkdir(mode=0o750)
    with pytest.raises(PitrError, match="was emptied"):
        recovery.recover(PgBackRest(config, owner), source, into, recovery.free_port(),
                         label="20260101-000000F", target=None)
    assert _seen(into) == ("root", 0o750) and not any(into.iterdir())


def test_emptying_a_kept_folder_removes_what_is_in_it_and_nothing_outside(base):
    outside = base / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the recovery's")
    into = base / "into"
    (into / "base" / "1").mkdir(parents=True)
    (into / "PG_VERSION").write_text("15")
    (into / "link").symlink_to(outside)
    recovery.remove(Cluster(into, 5432, str(base), _postgres(), str(BINDIR)),
                    keep_folder=True)
    assert into.is_dir() and not any(into.iterdir())
    assert (outside / "keep.txt").read_text() == "not the recovery's"


def test_a_recovery_that_fails_half_way_empties_a_folder_it_did_not_make(cluster, tmp_path):
    """On a real cluster: another user's folder is refused before any step; a root
    folder takes a recovery that fails after pgBackRest restored into it (the
    archive ends before the target) and is given back root's, 0750, empty."""
    c = cluster
    app = make_app(c, tmp_path)
    set_up(c, app)
    pitr(app, "backup", "--type", "full")
    theirs = _nobodys(c.base / "nobodys")
    out = pitr(app, "restore", "--to", "latest", "--into", str(theirs), code=1)
    assert f"the folder {theirs} belongs to nobody" in out, out
    assert _seen(theirs) == ("nobody", 0o750) and not any(theirs.iterdir())

    roots = c.base / "roots"
    roots.mkdir(mode=0o750)
    add_registrations(c, 2, "late")  # written after the backup, never archived
    time.sleep(2)
    c.kill()
    late = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(time.time() - 1))
    out = pitr(app, "restore", "--to", late, "--into", str(roots), code=1)
    assert "the archive ends before the target time" in out and "was emptied" in out, out
    assert _seen(roots) == ("root", 0o750) and not any(roots.iterdir())
    with app.app_context():
        db.engine.dispose()


WRAPPED = ("q4bQ0HbV1oWq9Cz4n1Sxw0Zr0cX2lZb9YHk0kq0bM2Xc8C7Jm3tJm0o2n3fQ8Vb1\n"
           "Zk1x9w2vQ3r4s5t6u7v8w9x0y1z2A3B4C5D6E7F8G9H0I1J2K3L4M5N6O7P8Q9R0==")


@pytest.mark.parametrize("name, value", [
    ("PITR_CIPHER_PASS", WRAPPED),  # `openssl rand -base64 64`
    ("PITR_CIPHER_PASS", "s3cret\rrepo1-cipher-type=none"),
    ("PITR_PG_SOCKET", "/var/run/postgresql\npg1-host=evil.example"),
    ("PITR_FOLDER", "/srv/pitr\n"),
    ("PITR_REPO_PATH", "/srv/repo\x00"),
    ("PITR_PG_DATA", "/var/lib/postgresql/15/main\x1b[2J"),
])
def test_a_setting_with_a_control_character_is_refused_by_name(name, value):
    config = {"PITR_PG_DATA": "/var/lib/postgresql/15/main", "PITR_FOLDER": "/srv/pitr",
              name: value}
    with pytest.raises(PitrError) as refused:
        PitrConfig.from_config(config, {})
    message = str(refused.value)
    assert message.startswith(f"{name} holds a line break or another control character")
    assert "\n" not in message and value.strip() not in message
    assert not any(part in message for part in value.split() if len(part) > 4)


def test_s3_keys_with_a_control_character_are_refused_and_a_clean_setting_is_not():
    config = {"PITR_PG_DATA": "/var/lib/postgresql/15/main", "PITR_FOLDER": "/srv/pitr",
              "PITR_REPO_S3_URL": "s3://bucket/site", "PITR_CIPHER_PASS": WRAPPED.replace("\n", "")}
    env = {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK-secret\n"}
    with pytest.raises(PitrError, match="^AWS_SECRET_ACCESS_KEY holds a line break") as refused:
        PitrConfig.from_config(config, env)
    assert "SK-secret" not in str(refused.value)
    text = PitrConfig.from_config(config, {**env, "AWS_SECRET_ACCESS_KEY": "SK"}).render()
    assert f"repo1-cipher-pass={WRAPPED.replace(chr(10), '')}" in text.splitlines()
    assert PitrConfig.from_config({**config, "PITR_REPO_S3_URL": ""}, env) is not None


@pytest.fixture
def berlin(monkeypatch):
    """This machine's time zone as Europe/Berlin (CET, CEST), for one test."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_local_time_in_a_daylight_saving_change_is_refused(berlin):
    with pytest.raises(PitrError, match=r"'2025-10-26 02:30:00' happens twice in this "
                                        r"machine's time zone") as twice:
        parse_target("2025-10-26 02:30:00")  # the clocks went back from 03:00 to 02:00
    assert '"2025-10-26 02:30:00+02:00" or "2025-10-26 02:30:00+01:00"' in str(twice.value)
    with pytest.raises(PitrError, match=r"'2025-03-30 02:30:00' does not exist"):
        parse_target("2025-03-30 02:30:00")  # from 02:00 straight to 03:00
    assert parse_target("2025-10-26 02:30:00+01").isoformat() == "2025-10-26T01:30:00+00:00"
    assert parse_target("2025-10-26 02:30:00+02").isoformat() == "2025-10-26T00:30:00+00:00"
    assert parse_target("2025-10-26 03:30:00").isoformat() == "2025-10-26T02:30:00+00:00"
    assert parse_target("2025-07-01 12:00:00").isoformat() == "2025-07-01T10:00:00+00:00"


@pytest.mark.parametrize("text", ["0001-01-01 00:30:00+01", "0001-01-01 00:00:00",
                                  "9999-12-31 23:59:59-01"])
def test_a_moment_out_of_range_is_not_a_moment(berlin, text):
    with pytest.raises(PitrError, match="is not a moment"):
        parse_target(text)


def test_restore_says_a_moment_out_of_range_is_not_one(base, tmp_path):
    """Through the command: one line, exit 1, no traceback (before: OverflowError)."""
    from guest_registration import create_app
    from tests.helpers import make_config

    data = base / "data"  # stands for the cluster's data directory: postgres's
    data.mkdir()
    os.chown(data, pwd.getpwnam(OWNER).pw_uid, pwd.getpwnam(OWNER).pw_gid)
    app = create_app(make_config(tmp_path, f"sqlite:///{tmp_path / 'a.db'}",
                                 PITR_PG_DATA=str(data), PITR_FOLDER=str(base / "pgbackrest")),
                     instance_path=str(tmp_path / "instance"))
    result = app.test_cli_runner().invoke(args=["pitr", "restore", "--to",
                                                "0001-01-01 00:30:00+01", "--into",
                                                str(base / "y1")])
    assert result.exit_code == 1 and not isinstance(result.exception, OverflowError)
    assert result.output == ("Error: '0001-01-01 00:30:00+01' is not a moment: give e.g. "
                             "\"2026-12-04 17:39:00+01\" or latest\n")


def test_root_finds_runuser_under_crons_path(monkeypatch):
    """cron's PATH is /usr/bin:/bin: runuser (/usr/sbin) was not found, and the error
    named the tool it was to start ("…/pg_ctl is not installed")."""
    import pwd

    from guest_backup.physical.owner import Owner

    if os.geteuid() != 0:
        missing("REQUIRE_PGBACKREST", "running a tool as postgres needs root")
    user = pwd.getpwnam("postgres")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    done = Owner("postgres", user.pw_uid, user.pw_gid).run(
        ["/usr/lib/postgresql/15/bin/pg_ctl", "--version"])
    assert done.returncode == 0 and "PostgreSQL" in done.stdout, done.stderr
