"""Messages that ``ops`` builds and a page shows: each one English where it is
made (the CLI, the logs and the audit log print it as it is) and worded again in
the page's language where it is shown (``guest_backup.web.views.page_text``),
from the catalogue template and the parameters it keeps. ``ops`` never imports
Flask-Babel: the templates are only marked here (:func:`N_`), as in
:mod:`guest_backup.ops.health_problems`."""

from __future__ import annotations


def N_(message: str) -> str:
    """Marks a message for the catalogue (Babel's default keyword); translated where shown."""
    return message


class Text(str):
    """An English message (it *is* the string) that keeps its ``template`` and
    ``params`` so that a page can word it in its own language. A parameter may be
    a :class:`Text` itself (worded too) or a plain value (shown as it is)."""

    template: str
    params: dict

    def __new__(cls, template: str, **params) -> "Text":
        self = super().__new__(cls, template % params if params else template)
        self.template, self.params = template, params
        return self

    def __reduce__(self):  # a copy (or a pickle) keeps what the page needs
        return _text, (self.template, self.params)


def _text(template: str, params: dict) -> Text:
    return Text(template, **params)


def text_of(value) -> Text | None:
    """The :class:`Text` ``value`` is, or an exception was raised with; else None."""
    if isinstance(value, Text):
        return value
    if isinstance(value, BaseException) and value.args and isinstance(value.args[0], Text):
        return value.args[0]
    return None


# --- the jobs of the Backup and PITR pages (guest_backup.ops.jobs) --------------------
JOB_INTERRUPTED = N_("the backup was interrupted (the server stopped)")
JOB_NO_WORKER = N_("no worker took the queued backup in time (is `manage.py worker` running?)")
JOB_FAILED = N_("the backup failed; details are in the server log")
JOB_OTHER_RUNNING = N_("another backup is running; wait for it to finish")
FOLDER_NOT_WRITABLE = N_("the backup folder %(folder)s is not writable")

# --- selective restore: today's rows changed since the preview (ops.selection_apply) --
ROW_ADDED = N_("%(table)s %(id)s was added since the preview")
ROW_DELETED = N_("%(table)s %(id)s was deleted since the preview")
ROW_CHANGED = N_("%(table)s %(id)s changed since the preview")
ROW_REFUSED = N_("the live database refused a row (one appeared where the preview inserts "
                 "one, or a constraint forbids it)")
ERASED_SINCE = N_("an erasure was recorded since the preview (the rows it brings back may "
                  "hold that person's data)")
PREVIEW_GONE = N_("this preview is no longer available: preview again")
#: the tables as a row names them (``ROW_*``'s ``table``)
ROW_TABLES = {"trip": N_("trip"), "registration": N_("registration"), "guest": N_("guest")}

# --- opening an archive to browse (ops.browse) -------------------------------------
TOO_MANY_OPEN = N_("%(count)s archives are open already: close one first")

# --- verify on the Backup page (ops.verify.verdict) ---------------------------------
VERDICTS = {
    "seal": N_("its seal (the signature beside the encrypted file) is missing or does not "
               "match it"),
    "unreadable": N_("it is not a readable system archive (its ZIP structure or its manifest "
                     "is damaged)"),
    "signature": N_("its signature is missing or not made by a trusted key"),
    "binding": N_("it was signed as another file, another date or another installation's "
                  "archive"),
    "revisions": N_("its schema revisions are not revision names"),
    "contents": N_("its contents do not match its signed manifest (a file is changed, "
                   "missing or incomplete)"),
}

# --- point-in-time recovery (ops.pitr, ops.pitr_recover) ----------------------------
PITR_NOT_CONFIGURED = N_("point-in-time recovery is not configured: set PITR_PG_DATA to the "
                         "cluster's data directory")
PITR_STATE_UNKNOWN = N_("pgBackRest's state is not known here yet: run `manage.py pitr info` "
                        "as root or as %(owner)s")
PITR_ARCHIVER_UNREADABLE = N_("the archiver's state cannot be read: %(error)s")
PITR_NO_BACKUP = N_("there is no backup to recover from")
PITR_NO_BACKUP_YET = N_("there is no backup to recover from yet (run: pitr backup --type full)")
PITR_TOO_EARLY = N_("no backup ended before %(target)s UTC: the earliest moment you can "
                    "recover to is %(first)s UTC")
PITR_IN_FUTURE = N_("%(target)s UTC is in the future: recover to latest")

#: whole messages (no parameter) that a job's state keeps as text: translated as they are
WHOLE = frozenset({JOB_INTERRUPTED, JOB_NO_WORKER, JOB_FAILED, JOB_OTHER_RUNNING})
