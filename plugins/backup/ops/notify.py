"""Notifications through Apprise (``BACKUP_NOTIFY_URLS``, any Apprise scheme): a
backup failed or recovered, retention failed (the backup itself was made) or
was applied again, a restore drill failed or passed again, health degraded or
recovered, a storage unreachable or back, a retention run removed more than
``BACKUP_NOTIFY_MAX_PRUNE`` archives from one storage.

Once per change of state, never per run: the last known state of each kind is
kept in ``<instance>/notify-state.json`` (:mod:`guest_backup.ops.notify_state`: 0600,
replaced atomically, under an flock), or in Redis when ``REDIS_URL`` is set. A new state is stored once at
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
from guest_backup.errors import BackupBusy
from guest_backup.ops import metrics
from guest_backup.ops.context import BackupContext
from guest_backup.ops.notify_state import BAD, TITLES, known_problems, problem_key, \
    remember_problems, state_store, store_error, why

log = logging.getLogger(__name__)
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
    is a change worth one. Returns the title of the message sent (or tried), or None."""
    return _stored(ctx, kind, state, detail,
                   lambda store, sent: _change(ctx, store, kind, state, detail, sent))


def _stored(ctx: BackupContext, kind: str, state: str, detail: str, step) -> str | None:
    """``step(store, sent)`` under the store's lock. A store that cannot be used (Redis
    down: the very failure being told, often) does not silence a bad state: it is
    sent without the check whether it was told already, saying so; a good one not."""
    store, sent = state_store(ctx), []
    try:
        with store.locked():
            return step(store, sent)
    except Exception as exc:
        if not store_error(exc):
            raise
        log.warning("the notification state cannot be used (%s)", type(exc).__name__)
        title = TITLES.get((kind.split(":")[0], state))
        if sent or title is None or state not in BAD:
            return sent[0] if sent else None
        where = f" ({kind.split(':', 1)[1]})" if ":" in kind else ""
        _tell(ctx, title + where, f"(The notification state cannot be reached: this may "
                                  f"repeat an earlier message.) {detail}", [])
        return title


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
    if _tell(ctx, title + where, detail, sent):
        store.set(kind, state)
    return title


def _tell(ctx: BackupContext, title: str, detail: str, sent: list) -> bool:
    """Send; whether the new state may be kept (a URL accepted it, or none is set)."""
    results = send(notify_urls(ctx), title, message(title, detail))
    sent.append(title)
    return not results or any(ok for _, ok in results)


def after_backup(ctx: BackupContext, outcome: Any) -> None:
    """The end of a backup run: its result (a BackupRun) or the exception it raised
    (one with ``path``, UploadFailed, kept the archive but its remote copy failed;
    one with ``run`` too, RetentionFailed, made the backup and only retention failed:
    told as retention's failure, never as a failed backup)."""
    run = getattr(outcome, "run", None) if isinstance(outcome, BaseException) else outcome
    if run is None:
        change(ctx, "backup", "failed", f"The backup did not complete: {why(outcome)}")
    else:
        change(ctx, "backup", "ok", f"Archive {run.result.path.name} ({run.result.size} bytes) "
                                    f"was written.")
    if ctx.settings.remote_url:
        if run is not None:
            change(ctx, "storage:remote", "ok", "The remote copy was made.")
        elif getattr(outcome, "path", None) is not None:
            change(ctx, "storage:remote", "unreachable", str(outcome))
    if run is None:
        return
    failure = getattr(outcome, "retention_failure", None)  # retention ran after the backup
    change(ctx, "retention", "ok" if failure is None else "failed",
           "Retention was applied." if failure is None else
           f"Archive {run.result.path.name} was made, but retention (removing old "
           f"archives) failed: {failure}. Old archives stay where it failed: fix that, "
           f"then run backup-prune (each backup also tries again).")
    after_prune(ctx, {name: len(names) for name, names in run.pruned.items()})


def after_drill(ctx: BackupContext, outcome: Any) -> None:
    if isinstance(outcome, BaseException):
        change(ctx, "drill", "failed", f"The restore drill did not complete: {why(outcome)}")
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
    reachability (the remote's when it cannot work at all), then health itself."""
    for entry in report["storages"]:
        reachable = entry.get("reachable", False)
        change(ctx, f"storage:{entry['name']}", "ok" if reachable else "unreachable",
               "" if reachable else entry.get("problem", ""))
    if ctx.settings.remote_url and "remote" not in {e["name"] for e in report["storages"]}:
        change(ctx, "storage:remote", "unreachable", "; ".join(report["problems"][:1]))
    _stored(ctx, "health", "ok" if report["status"] == "healthy" else "degraded",
            "; ".join(report["problems"]), lambda store, sent: _health(ctx, store, report, sent))


def _health(ctx: BackupContext, store, report: dict, sent: list) -> str | None:
    """Degraded or recovered; while degraded, new problems are news (fewer are not)."""
    keys, known = {problem_key(p) for p in report["problem_ids"]}, known_problems(store)
    state = "ok" if report["status"] == "healthy" else "degraded"
    if state == "ok" or store.get("health") != "degraded" or known is None:
        title = _change(ctx, store, "health", state, "; ".join(report["problems"]), sent)
        if store.get("health") == state:
            remember_problems(store, keys if state == "degraded" else ())
        return title
    new = [p["text"] for p in report["problem_ids"] if problem_key(p) not in known]
    if new and not _tell(ctx, TITLES[("health", "worse")], "; ".join(new) + (
            f" ({len(keys - known)} new of {len(keys)} problem(s).)"), sent):
        return sent[0]  # told again at the next check
    remember_problems(store, keys)
    return sent[0] if sent else None


def _quietly(what: str, fn, *args: Any) -> None:
    try:
        fn(*args)
    except Exception as exc:
        log.warning("%s failed (%s)", what, type(exc).__name__)


def _backup_ended(args: dict, outcome: Any) -> None:
    """Counted and told; an --output copy neither (it is not the storages' backup)."""
    if args.get("output") is not None:
        return
    run = getattr(outcome, "run", None) if isinstance(outcome, BaseException) else outcome
    _quietly("counting a backup", metrics.count_run, "backup", run is not None)
    if getattr(outcome, "retention_failure", None) is not None:  # the archive was made
        _quietly("counting a pruning", metrics.count_run, "prune", False)
    if run is not None:
        _quietly("counting pruned archives", metrics.count_pruned,
                 {name: len(names) for name, names in run.pruned.items()})
    _quietly("the backup's notification", after_backup, args["ctx"], outcome)


def _drill_ended(args: dict, outcome: Any) -> None:
    ok = not isinstance(outcome, BaseException) and outcome.ok
    _quietly("counting a drill", metrics.count_run, "drill", ok)
    _quietly("the drill's notification", after_drill, args["ctx"], outcome)


def _prune_ended(args: dict, outcome: Any) -> None:
    """Counted and told; a PruningIncomplete says what it removed where, and why it
    failed where it did."""
    if args.get("dry_run"):
        return
    failed = isinstance(outcome, BaseException)
    found = getattr(outcome, "found", {}) if failed else outcome
    _quietly("counting a pruning", metrics.count_run, "prune", not failed)
    removed = {name: sum(1 for d in decisions if not d.keep) for name, decisions in found.items()}
    _quietly("counting pruned archives", metrics.count_pruned, removed)
    _quietly("the pruning's notification", change, args["ctx"], "retention",
             "failed" if failed else "ok",
             f"backup-prune did not complete: {why(outcome)}. Old archives stay where it "
             f"failed: fix that, then run backup-prune again." if failed else
             "Retention was applied.")
    _quietly("the pruning's notification", after_prune, args["ctx"], removed)


_ENDED = {"backup": _backup_ended, "drill": _drill_ended, "prune": _prune_ended}


def observed(kind: str):
    """Decorate the operation ``kind`` (backup, drill, prune; first argument the
    BackupContext): count and notify each run that ends, returned, raised or stopped
    (SIGTERM, Ctrl-C); a run refused as busy is none. Its outcome is never changed."""
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
            except BaseException as exc:  # KeyboardInterrupt too: told before it ends us
                after(args, kwargs, exc)
                raise
            after(args, kwargs, result)
            return result

        return wrapper

    return decorate
