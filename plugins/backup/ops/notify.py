"""Notifications through Apprise (``BACKUP_NOTIFY_URLS``, any Apprise scheme): a
backup failed or recovered, retention failed (the backup itself was made) or
was applied again, a restore drill failed or passed again, health degraded or
recovered, a storage unreachable or back, a retention run removed more than
``BACKUP_NOTIFY_MAX_PRUNE`` archives from one storage.

Once per change of state, never per run: the last known state of each kind is
kept in ``<instance>/notify-state.json`` (:mod:`guest_backup.ops.notify_state`: 0600,
replaced atomically, under an
flock), or in Redis when ``REDIS_URL`` is set. A new state is stored once at
least one URL accepted the message about it (or when no URL is set), so a
message nobody received is tried again at the next run. Texts name the event,
the machine and archive names, never a person; URLs are only ever shown masked.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import socket
from typing import Any

from guest_backup.archive.manifest import now_text
from guest_backup.errors import BackupBusy, BackupError
from guest_backup.ops import metrics
from guest_backup.ops.context import BackupContext
from guest_backup.ops.notify_state import state_store

log = logging.getLogger(__name__)
#: states worth a message when they begin
BAD = frozenset({"failed", "degraded", "unreachable", "excess"})
#: (kind, new state) -> title; a kind back to "ok" after a bad state has its own
TITLES = {
    ("backup", "failed"): "Backup failed",
    ("backup", "ok"): "Backup recovered",
    ("retention", "failed"): "Backup retention failed",
    ("retention", "ok"): "Backup retention applied again",
    ("drill", "failed"): "Restore drill failed",
    ("drill", "ok"): "Restore drill passed again",
    ("health", "degraded"): "Backup health degraded",
    ("health", "ok"): "Backup health recovered",
    ("storage", "unreachable"): "Backup storage unreachable",
    ("storage", "ok"): "Backup storage reachable again",
    ("prune", "excess"): "Retention removed many archives",
}
MAX_DETAIL = 600
_ADDRESS = re.compile(r"[^\s@<>()\"',;:]+@[^\s@<>()\"',;:]+")


def notify_urls(ctx: BackupContext) -> list[str]:
    raw = ctx.config.get("BACKUP_NOTIFY_URLS") or []
    parts = raw.split(",") if isinstance(raw, str) else [str(u) for u in raw]
    return [u.strip() for u in parts if u.strip()]


def masked(url: str) -> str:
    """``url`` as it may be shown: Apprise's private form (passwords and tokens
    elided), without its query; a URL Apprise cannot read shows its scheme only."""
    try:
        import apprise

        target = apprise.Apprise.instantiate(url)
        if target is not None:
            return target.url(privacy=True).split("?")[0]
    except Exception:
        pass
    scheme = url.split("://", 1)[0] if "://" in url else "?"
    return f"{scheme[:20]}://***"


def send(urls: list[str], title: str, body: str) -> list[tuple[str, bool]]:
    """Send to each URL; (masked URL, accepted) for each, never an exception. No URL
    (BACKUP_NOTIFY_URLS unset): nothing, and no word about apprise, which is
    optional (every change of state warned "BACKUP_NOTIFY_URLS is set")."""
    if not urls:
        return []
    try:
        import apprise
    except ImportError:
        log.warning("BACKUP_NOTIFY_URLS is set but apprise is not installed "
                    "(pip install 'guest-registration[notify]')")
        return [(masked(u), False) for u in urls]
    results = []
    for url in urls:
        accepted = False
        try:
            target = apprise.Apprise.instantiate(url)
            accepted = target is not None and bool(target.notify(body=body, title=title))
        except Exception as exc:
            log.warning("notification error (%s)", type(exc).__name__)
        if not accepted:
            log.warning("the notification to %s was not accepted", masked(url))
        results.append((masked(url), accepted))
    return results


def clean(text: str) -> str:
    """No address of a person in a message, and no novel either."""
    text = _ADDRESS.sub("<address>", " ".join(str(text).split()))
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL - 1] + "…"


def message(title: str, detail: str) -> str:
    return clean(f"{title} on {socket.gethostname()} at {now_text()}. {detail}".strip())


def change(ctx: BackupContext, kind: str, state: str, detail: str = "") -> str | None:
    """Record that ``kind`` (``backup``, ``retention``, ``drill``, ``health``,
    ``storage:<name>``, ``prune:<name>``) is now in ``state``; send a message if that
    is a change worth one. Returns the title of the message sent (or tried), or None.

    A state store that cannot be used (Redis down: the very failure being told,
    often) does not silence a bad state: it is sent without the check whether it
    was told already, saying so; a good one is not sent then."""
    store, sent = state_store(ctx), []
    try:
        with store.locked():
            return _change(ctx, store, kind, state, detail, sent)
    except Exception as exc:
        if not _store_error(exc):
            raise
        log.warning("the notification state cannot be used (%s)", type(exc).__name__)
        title = TITLES.get((kind.split(":")[0], state))
        if sent or title is None or state not in BAD:
            return sent[0] if sent else None
        where = f" ({kind.split(':', 1)[1]})" if ":" in kind else ""
        send(notify_urls(ctx), title + where, message(
            title + where, f"(The notification state cannot be reached: this may repeat an "
                           f"earlier message.) {detail}"))
        return title


def _store_error(exc: BaseException) -> bool:
    """An error of the state store: Redis's own, or the state file's."""
    return isinstance(exc, OSError) or type(exc).__module__.split(".")[0] == "redis"


def _change(ctx: BackupContext, store, kind: str, state: str, detail: str,
            sent: list) -> str | None:
    old = store.get(kind)
    if old == state:
        return None
    title = TITLES.get((kind.split(":")[0], state))
    if title is None or (state not in BAD and old not in BAD):
        store.set(kind, state)
        return None
    where = f" ({kind.split(':', 1)[1]})" if ":" in kind else ""
    results = send(notify_urls(ctx), title + where, message(title + where, detail))
    sent.append(title)
    if not results or any(ok for _, ok in results):
        store.set(kind, state)
    return title


def after_backup(ctx: BackupContext, outcome: Any, output=None) -> None:
    """The end of a backup run: its result (a BackupRun) or the exception it raised
    (one with ``path``, UploadFailed, kept the archive but its remote copy failed;
    one with ``run`` too, RetentionFailed, made the backup and only retention failed:
    told as retention's failure, never as a failed backup)."""
    run = getattr(outcome, "run", None) if isinstance(outcome, BaseException) else outcome
    if run is None:
        change(ctx, "backup", "failed", f"The backup did not complete: {outcome}")
    else:
        change(ctx, "backup", "ok", f"Archive {run.result.path.name} ({run.result.size} bytes) "
                                    f"was written.")
    if output is None and ctx.settings.remote_url:
        if run is not None:
            change(ctx, "storage:remote", "ok", "The remote copy was made.")
        elif getattr(outcome, "path", None) is not None:
            change(ctx, "storage:remote", "unreachable", str(outcome))
    if run is None:
        return
    if output is None:  # retention ran after the backup
        why = getattr(outcome, "retention_failure", None)
        change(ctx, "retention", "ok" if why is None else "failed",
               "Retention was applied." if why is None else
               f"Archive {run.result.path.name} was made, but retention (removing old "
               f"archives) failed: {why}. Old archives are kept until it succeeds: fix "
               f"that, then run backup-prune (each backup also tries again).")
    after_prune(ctx, {name: len(names) for name, names in run.pruned.items()})


def after_drill(ctx: BackupContext, outcome: Any) -> None:
    if isinstance(outcome, BaseException):
        change(ctx, "drill", "failed", f"The restore drill did not complete: {outcome}")
    elif not outcome.ok:
        change(ctx, "drill", "failed", f"The restore drill of {outcome.archive} found "
                                       f"{len(outcome.mismatches)} mismatches.")
    else:
        change(ctx, "drill", "ok", f"{outcome.archive}: {outcome.tables} tables match.")


def after_prune(ctx: BackupContext, removed: dict[str, int]) -> None:
    """One retention run: how many archives it removed from each storage."""
    limit = int(ctx.config.get("BACKUP_NOTIFY_MAX_PRUNE") or 0)
    if limit <= 0:
        return
    for storage, count in removed.items():
        change(ctx, f"prune:{storage}", "excess" if count > limit else "ok",
               f"{count} archives were removed from {storage} in one run "
               f"(BACKUP_NOTIFY_MAX_PRUNE is {limit}).")


def after_health(ctx: BackupContext, report: dict) -> None:
    """A health report (:func:`guest_backup.ops.health.health`): each storage's
    reachability, then health itself."""
    seen = set()
    for entry in report["storages"]:
        seen.add(entry["name"])
        reachable = entry.get("reachable", False)
        change(ctx, f"storage:{entry['name']}", "ok" if reachable else "unreachable",
               "" if reachable else entry.get("problem", ""))
    if ctx.settings.remote_url and "remote" not in seen:  # the remote cannot work at all
        change(ctx, "storage:remote", "unreachable", "; ".join(report["problems"][:1]))
    change(ctx, "health", "ok" if report["status"] == "healthy" else "degraded",
           "; ".join(report["problems"]))


def _quietly(what: str, fn, *args: Any) -> None:
    try:
        fn(*args)
    except Exception as exc:
        log.warning("%s failed (%s)", what, type(exc).__name__)


def _backup_ended(args: dict, outcome: Any) -> None:
    run = getattr(outcome, "run", None) if isinstance(outcome, BaseException) else outcome
    _quietly("counting a backup", metrics.count_run, "backup", run is not None)
    if getattr(outcome, "retention_failure", None) is not None:  # the archive was made
        _quietly("counting a pruning", metrics.count_run, "prune", False)
    if run is not None:
        _quietly("counting pruned archives", metrics.count_pruned,
                 {name: len(names) for name, names in run.pruned.items()})
    _quietly("the backup's notification", after_backup, args["ctx"], outcome,
             args.get("output"))


def _drill_ended(args: dict, outcome: Any) -> None:
    ok = not isinstance(outcome, BaseException) and outcome.ok
    _quietly("counting a drill", metrics.count_run, "drill", ok)
    _quietly("the drill's notification", after_drill, args["ctx"], outcome)


def _prune_ended(args: dict, outcome: Any) -> None:
    if args.get("dry_run"):
        return
    ok = not isinstance(outcome, BaseException)
    _quietly("counting a pruning", metrics.count_run, "prune", ok)
    if not ok:
        why = str(outcome) if isinstance(outcome, BackupError) else \
            f"{type(outcome).__name__}; details are in the server log"
        _quietly("the pruning's notification", change, args["ctx"], "retention", "failed",
                 f"backup-prune did not complete: {why}. Old archives are kept until it "
                 f"succeeds: fix that, then run backup-prune again.")
        return
    removed = {name: sum(1 for d in decisions if not d.keep)
               for name, decisions in outcome.items()}
    _quietly("counting pruned archives", metrics.count_pruned, removed)
    _quietly("the pruning's notification", change, args["ctx"], "retention", "ok",
             "Retention was applied.")
    _quietly("the pruning's notification", after_prune, args["ctx"], removed)


_ENDED = {"backup": _backup_ended, "drill": _drill_ended, "prune": _prune_ended}


def observed(kind: str):
    """Decorate the operation ``kind`` (backup, drill, prune; its first argument is
    the BackupContext): when a run ends (returned or raised; a run refused as busy
    is none), count it and notify. Its result or exception is never changed."""
    ended = _ENDED[kind]

    def decorate(func):
        signature = inspect.signature(func)

        def after(args, kwargs, outcome) -> None:
            try:
                ended(signature.bind(*args, **kwargs).arguments, outcome)
            except Exception as exc:
                log.warning("metrics or notifications after a %s failed (%s)", kind,
                            type(exc).__name__)

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            try:
                result = func(*args, **kwargs)
            except BackupBusy:
                raise
            except Exception as exc:
                after(args, kwargs, exc)
                raise
            after(args, kwargs, result)
            return result

        return wrapper

    return decorate
