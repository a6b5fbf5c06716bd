"""``PROMETHEUS_MULTIPROC_DIR``: the folder where every process of ``serve`` (and
``manage.py worker``) counts, one file per process and kind of metric
(``counter_PID.db``, ``gauge_livesum_PID.db``, …).

prometheus-client's collector reads every ``*.db`` file in it at each scrape, so
it must be a folder of the app's own: created here (0700) when missing; an
existing one must belong to this user, be no shared folder (writable by
everyone, or sticky, as ``/tmp``: anyone could plant metrics there) and hold no
other ``*.db`` file. ``serve`` and ``worker`` refuse to start otherwise
(:class:`MetricsFolderError`), naming the problem. At start ``serve`` removes
the metric files of processes no longer running, and only those (it removed
every ``*.db`` file whose name ended in no live pid: with the folder set to the
instance folder, the default SQLite database ``guest_registration.db``).
"""

from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path
from typing import Callable

import click
from flask import Flask

from .metrics import MULTIPROC_ENV, enabled

log = logging.getLogger(__name__)
#: the files prometheus-client writes (``values.py``: the kind, a gauge's mode, the pid)
METRIC_FILE = re.compile(
    r"(?:counter|histogram|summary|gauge_(?:live)?(?:all|min|max|sum|mostrecent))_(\d+)\.db")
_SHOWN = 3  # foreign files named in the error


class MetricsFolderError(click.ClickException):
    """PROMETHEUS_MULTIPROC_DIR cannot be the metrics' folder (the message says why)."""


def _refuse(folder: Path, why: str) -> MetricsFolderError:
    return MetricsFolderError(
        f"PROMETHEUS_MULTIPROC_DIR {folder} {why}; every *.db file in it is read as "
        f"metrics at each scrape: give the metrics a folder of their own")


def private_folder(app: Flask) -> Path:
    """The metrics' folder, created 0700 if missing, else checked (see the module
    doc) and made 0700; :class:`MetricsFolderError` when it cannot be theirs."""
    folder = Path(app.config[MULTIPROC_ENV])
    try:
        folder.mkdir(parents=True, mode=0o700)
        return folder
    except FileExistsError:
        pass
    except OSError:  # no permission, a file on the way
        raise _refuse(folder, "cannot be created") from None
    try:
        info = folder.stat()
    except OSError:
        raise _refuse(folder, "cannot be read") from None
    if not stat.S_ISDIR(info.st_mode):
        raise _refuse(folder, "is not a folder")
    if info.st_uid != os.geteuid():
        raise _refuse(folder, "belongs to another user")
    if info.st_mode & (stat.S_IWOTH | stat.S_ISVTX):
        raise _refuse(folder, "is a shared folder (anyone may write to it)")
    foreign = sorted(p.name for p in folder.glob("*.db") if not METRIC_FILE.fullmatch(p.name))
    if foreign:
        named = ", ".join(foreign[:_SHOWN]) + (f" and {len(foreign) - _SHOWN} more"
                                              if len(foreign) > _SHOWN else "")
        raise _refuse(folder, f"holds files that are not metrics ({named})")
    if info.st_mode & 0o777 != 0o700:
        os.chmod(folder, 0o700)
    return folder


def _dead(pid: int) -> bool:
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process
        return False
    return False


def prepare_folder(app: Flask) -> str | None:
    """``serve`` at start: the folder (:func:`private_folder`) without the metric
    files of processes no longer running (a job worker's stay), named in the
    environment its workers inherit. None (nothing done) when metrics are off."""
    if not enabled(app):
        return None
    folder = private_folder(app)
    for found in folder.glob("*.db"):
        match = METRIC_FILE.fullmatch(found.name)
        if match and _dead(int(match.group(1))):
            found.unlink(missing_ok=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    return str(folder)


def prepare_for_serve(load_app: Callable[[], Flask]) -> str | None:
    """:func:`prepare_folder` for the app ``manage.py serve`` was started for (the
    command line's own, else a new one from ``load_app``)."""
    from flask.cli import ScriptInfo

    context = click.get_current_context(silent=True)
    info = context.find_object(ScriptInfo) if context is not None else None
    return prepare_folder(info.load_app() if info is not None else load_app())


def use_folder(app: Flask) -> None:
    """``manage.py worker``: count in the same folder as the server's workers."""
    if enabled(app) and not os.environ.get(MULTIPROC_ENV):
        os.environ[MULTIPROC_ENV] = str(private_folder(app))


def child_exit(server, worker) -> None:
    """gunicorn's ``child_exit`` hook: a dead worker's live gauges stop counting."""
    folder = os.environ.get(MULTIPROC_ENV)
    if folder:
        try:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(worker.pid, folder)
        except Exception as exc:
            log.warning("marking worker %s dead failed (%s)", worker.pid, type(exc).__name__)
