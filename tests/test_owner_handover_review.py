"""What root's ``setup`` or ``status`` hands to the service's user (``handed_to_their_owner``)
while that user works in its own folders (the review of the hand-over): what was
root's before the block stays root's whatever its name is now (renamed inside the
folders, or moved in from beside them), a symbolic link swapped in above the start
folder never makes root chown outside the paths (nothing is handed over there, and
a warning says so), and only folders, files of one link and links themselves are
handed over (never a named pipe). Each test makes the service's folders nobody's
(uid 65534) in a folder of /tmp, and that user's moves run in a child process that
has become nobody while the block runs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from guest_registration.instance_folder import handed_to_their_owner

# root's folder for the service user's folders, and those folders: as test_root_runs makes them
from tests.test_root_runs import NOBODY, base  # noqa: F401 (base: a fixture)
from tests.test_root_runs import nobodys as _nobodys


def _as_nobody(fn) -> None:
    """Run ``fn`` in a child process as the service user (who works while root's
    command runs)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            fn()
            os._exit(0)
        except BaseException as exc:  # pragma: no cover - reported through the status
            print("the service user's part failed:", exc)
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def _roots_file(path: Path) -> Path:
    path.write_text("root's own\n")
    os.chmod(path, 0o600)
    return path


def test_a_root_file_renamed_by_the_service_user_during_the_block_stays_roots(base):
    """The snapshot was keyed by name: a root 0600 file there before, renamed by
    the user (the folder is theirs), was new by its name and given to them."""
    home = _nobodys(base / "svc")
    _roots_file(home / "kept-by-root")
    with handed_to_their_owner(home):
        _as_nobody(lambda: os.rename(home / "kept-by-root", home / "renamed"))
        (home / "made").write_text("new\n")
    assert (home / "renamed").stat().st_uid == 0, "root's file was given to the service user"
    assert (home / "made").stat().st_uid == NOBODY


def test_a_root_folder_renamed_during_the_block_keeps_itself_and_what_is_in_it(base):
    home = _nobodys(base / "svc")
    (home / "rootdir").mkdir(mode=0o700)
    _roots_file(home / "rootdir" / "inner")
    with handed_to_their_owner(home):
        _as_nobody(lambda: os.rename(home / "rootdir", home / "moved"))
    owners = {p.name: p.stat().st_uid for p in [home / "moved", home / "moved" / "inner"]}
    assert owners == {"moved": 0, "inner": 0}, owners


def test_a_root_folder_beside_the_path_moved_onto_its_way_is_not_handed_over(base):
    """INSTANCE_PATH=<svc>/a/instance, <svc>/a not made yet: the user moves a root
    folder that was beside it to <svc>/a while the command runs; root then makes
    the instance folder in it. The folder (there before, root's) stays root's."""
    home = _nobodys(base / "svc")
    (home / "rootdir").mkdir(mode=0o700)
    _roots_file(home / "rootdir" / "inner")
    with handed_to_their_owner(home / "a" / "instance"):
        _as_nobody(lambda: os.rename(home / "rootdir", home / "a"))
        (home / "a" / "instance").mkdir()
    assert (home / "a").stat().st_uid == 0
    assert (home / "a" / "inner").stat().st_uid == 0


def test_a_link_swapped_in_above_the_start_folder_never_makes_root_chown_outside(base, caplog):
    """INSTANCE_PATH=<svc>/a/b/instance (existing): the walk started at <svc>/a/b,
    opened by its path after the block (O_NOFOLLOW guards only its last part). The
    user swaps <svc>/a for a symbolic link to another user's tree while the command
    runs: root's files there were chowned to that folder's owner."""
    other = 4242
    home = _nobodys(base / "svc")
    instance = home / "a" / "b" / "instance"
    for p in (home / "a", home / "a" / "b", instance):
        p.mkdir(mode=0o700)
        os.chown(p, NOBODY, NOBODY)
    elsewhere = base / "other-user"  # another account's folder, outside the service's
    (elsewhere / "b" / "instance").mkdir(parents=True)
    for p in (elsewhere, elsewhere / "b", elsewhere / "b" / "instance"):
        os.chown(p, other, other)
    os.chmod(elsewhere, 0o755)
    victim = elsewhere / "b" / "instance" / "roots-file"
    victim.write_text("root's\n")  # root's file in the other user's folder, made before

    def swap():
        os.rename(home / "a", home / "a.old")
        os.symlink(elsewhere, home / "a")

    with caplog.at_level(logging.WARNING, logger="guest_registration.instance_folder"):
        with handed_to_their_owner(instance):
            _as_nobody(swap)
    assert victim.stat().st_uid == 0, f"root chowned {victim} (outside the paths)"
    assert any(str(home / "a" / "b") in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records), caplog.text


def test_a_named_pipe_or_a_file_of_several_links_made_by_root_stays_roots(base):
    """Only folders, files of one link and links themselves are handed over."""
    home = _nobodys(base / "svc")
    with handed_to_their_owner(home):
        os.mkfifo(home / "pipe")
        (home / "one").write_text("x\n")
        os.link(home / "one", home / "two")
        (home / "single").write_text("y\n")
        os.symlink("/etc/passwd", home / "link")
    assert {n: (home / n).lstat().st_uid for n in ("pipe", "one", "two", "single", "link")} \
        == {"pipe": 0, "one": 0, "two": 0, "single": NOBODY, "link": NOBODY}
    assert Path("/etc/passwd").stat().st_uid == 0


def test_what_the_block_makes_in_a_folder_there_before_is_still_handed_over(base):
    """The normal case: the instance folder (the user's) and a folder of it there
    before are entered; what root makes in them is the user's, and a root file of
    them there before is left alone."""
    home = _nobodys(base / "svc")
    instance = _nobodys(home / "instance")
    backups = _nobodys(instance / "backups")
    _roots_file(backups / "kept")
    with handed_to_their_owner(instance, home / "uploads"):
        (backups / "new").write_text("new\n")
        (instance / "db.sqlite").write_text("db\n")
        (home / "uploads" / "x").mkdir(parents=True)
    owners = {str(p.relative_to(home)): p.stat().st_uid for p in sorted(home.rglob("*"))}
    assert owners == {"instance": NOBODY, "instance/backups": NOBODY,
                      "instance/backups/kept": 0, "instance/backups/new": NOBODY,
                      "instance/db.sqlite": NOBODY, "uploads": NOBODY, "uploads/x": NOBODY}


def test_a_new_root_file_that_takes_the_inode_of_a_users_file_deleted_meanwhile_is_theirs(base):
    """What was there before is known by device and inode, and ext4 gives a freed
    inode to the next file made: a file of the user's deleted during the block (an
    old -journal, a replaced schema-locations.json) must not make the root file that
    takes its inode look old. Only root's are recorded (only root's are handed over)."""
    home = _nobodys(base / "svc")
    old = home / "old-journal"
    old.write_text("user's\n")
    os.chown(old, NOBODY, NOBODY)
    with handed_to_their_owner(home):
        old.unlink()
        (home / "new-file").write_text("root's, new\n")
    assert (home / "new-file").stat().st_uid == NOBODY
