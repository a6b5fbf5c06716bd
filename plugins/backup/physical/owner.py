"""The data directory's owner: every pgBackRest and PostgreSQL tool runs as this
user (``postgres``), also when the app runs as root, and every folder and file
pgBackRest uses is created owned by it (a root-owned lock folder would break
``archive-push``, which PostgreSQL runs as the owner)."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from guest_backup.files import user_name
from guest_backup.physical import PitrError


#: what of this process's environment the owner's tools get: the app's own (its
#: SECRET_KEY, the database password, S3 keys, passphrases) stays here. A server
#: started this way (a recovered cluster) keeps its environment, readable by its
#: owner in /proc, for as long as it runs. pgBackRest reads its keys from its file.
_TOOL_ENVIRONMENT = ("PATH", "LANG", "LANGUAGE", "TZ", "HOME", "TMPDIR")


def tool_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k in _TOOL_ENVIRONMENT or k.startswith("LC_")}
    env.setdefault("PATH", os.defpath)
    return env


@dataclass(frozen=True)
class Owner:
    """A user of this machine, by name and ids."""

    name: str
    uid: int
    gid: int

    @classmethod
    def of_path(cls, path: str | os.PathLike) -> "Owner":
        """The owner of ``path`` (a cluster's data directory); never root."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise PitrError(f"the data directory {path} does not exist (PITR_PG_DATA)") from None
        except PermissionError:
            raise PitrError(f"the data directory {path} cannot be read by this user") from None
        if st.st_uid == 0:
            raise PitrError(f"{path} is owned by root: PostgreSQL never runs as root, so this "
                            f"is not a data directory (PITR_PG_DATA)")
        try:
            name = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            raise PitrError(f"the owner (uid {st.st_uid}) of {path} has no user name") from None
        return cls(name, st.st_uid, st.st_gid)

    @property
    def is_me(self) -> bool:
        return os.geteuid() == self.uid

    def can_act(self) -> bool:
        """Whether this process may run tools as the owner (it is the owner, or root)."""
        return self.is_me or os.geteuid() == 0

    def require(self) -> None:
        if not self.can_act():
            me = pwd.getpwuid(os.geteuid()).pw_name
            raise PitrError(f"pgBackRest must run as {self.name}, the data directory's owner: "
                            f"run this as root or as {self.name} (this process runs as {me})")

    def argv(self, command: Sequence[str]) -> list[str]:
        """``command`` as the owner: as it is when we are the owner, else through runuser."""
        self.require()
        return list(command) if self.is_me else [runuser(), "-u", self.name, "--", *command]

    def run(self, command: Sequence[str], *, timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run ``command`` as the owner (in ``/``, a folder every user may enter), with
        only the environment a tool needs (:func:`tool_environment`) and ``env``."""
        try:
            return subprocess.run(self.argv(command), capture_output=True, text=True, cwd="/",
                                  timeout=timeout, env={**tool_environment(), **(env or {})},
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise PitrError(f"{command[0]} is not installed (or not on PATH)") from None
        except subprocess.TimeoutExpired:
            raise PitrError(f"{Path(command[0]).name} {command[1] if len(command) > 1 else ''} "
                            f"did not finish within {int(timeout)} s") from None

    def _chown(self, path: Path) -> None:
        if not self.is_me:
            os.chown(path, self.uid, self.gid)

    def refuse_foreign(self, path: str | os.PathLike) -> None:
        """Refuse an existing folder of another user (neither the owner's nor root's):
        :meth:`make_dir` would make it the owner's, mode 0700, taking it from that user
        (a backup disk's root holding another tool's files, someone's folder named by
        mistake). A folder yet to be made, or one that cannot be looked at, passes."""
        try:
            st = os.stat(path)
        except OSError:
            return
        if st.st_uid in (0, self.uid):
            return
        raise PitrError(f"the folder {path} belongs to {user_name(st.st_uid)}, not to "
                        f"{self.name} (the data directory's owner): name a new folder (it is "
                        f"made for {self.name}) or one of {self.name}'s; this one is left "
                        f"as it is")

    def make_dir(self, path: str | os.PathLike, mode: int = 0o700) -> Path:
        """Create ``path`` (and missing parents) owned by the owner with ``mode``; an
        existing folder is handed to the owner when it is ours to give (root's or
        already the owner's), another user's is refused (:meth:`refuse_foreign`)."""
        folder = Path(path)
        self.require()
        self.refuse_foreign(folder)
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for made in reversed(missing):
                self._chown(made)
                os.chmod(made, mode if made == folder else 0o755)
            if folder.stat().st_uid != self.uid:
                self._chown(folder)
            os.chmod(folder, mode)
        except OSError as exc:
            raise PitrError(f"the folder {folder} cannot be prepared for {self.name} "
                            f"({exc.strerror})") from None
        return folder

    def write_file(self, path: str | os.PathLike, text: str, mode: int = 0o600) -> bool:
        """Write ``text`` to ``path`` owned by the owner (atomically); False when
        the file already holds exactly that."""
        target = Path(path)
        try:
            if target.read_text() == text and target.stat().st_uid == self.uid:
                return False
        except OSError:
            pass
        self.require()
        try:
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
            with os.fdopen(fd, "w") as out:
                out.write(text)
            os.chmod(tmp, mode)
            self._chown(Path(tmp))
            os.replace(tmp, target)
        except OSError as exc:
            raise PitrError(f"{target} cannot be written ({exc.strerror})") from None
        return True

    def groups(self) -> set[int]:
        return set(os.getgrouplist(self.name, self.gid))

    def blocked_at(self, path: str | os.PathLike) -> Path | None:
        """The first folder on the way to ``path`` the owner may not enter (None:
        every one may be entered). Mode bits only (no ACLs)."""
        groups = self.groups()
        for folder in reversed([Path(path), *Path(path).parents]):
            try:
                st = folder.stat()
            except FileNotFoundError:
                return None  # made later, by us, for the owner
            if not stat.S_ISDIR(st.st_mode):
                continue
            bit = (stat.S_IXUSR if st.st_uid == self.uid else
                   stat.S_IXGRP if st.st_gid in groups else stat.S_IXOTH)
            if not st.st_mode & bit:
                return folder
        return None


def runuser() -> str:
    """util-linux's ``runuser``, found in the system folders too: cron's PATH
    (``/usr/bin:/bin``) lacks ``/usr/sbin``, and the missing runuser was reported
    as the tool it was to start ("…/pg_ctl is not installed")."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which("runuser", path=search)
    if found is None:
        raise PitrError("runuser (util-linux) is not installed: root runs pgBackRest and "
                        "pg_ctl through it as the data directory's owner")
    return found


def describe_folder(folder: Path) -> str:
    """``/srv/x (mode 0700, owner guestreg)``: why a user cannot enter it."""
    st = folder.stat()
    user = user_name(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{folder} (mode {stat.S_IMODE(st.st_mode):04o}, owner {user}:{group})"
