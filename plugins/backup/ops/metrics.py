"""The backup plugin's Prometheus metrics (``prometheus_client``, optional: without
it every function here does nothing). No Flask: the host serves ``/metrics``.

- Counters and gauges kept by the processes that do the work (exports, export
  slots, runs); in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``) every server
  worker and the job worker write them to files the scrape adds up.
- :class:`BackupCollector`: what lives in the database and the storages (last
  backup, last drill, archives per storage), computed at scrape time, so every
  process shows the same values whoever made the backup (page, API, CLI, timer,
  worker).
- :func:`count_run`, :func:`count_pruned`: called when a backup, drill or
  pruning ends (:func:`guest_backup.ops.notify.observed`).

Nothing here imports another ``ops`` module (``slots`` imports this one): the
collector is handed the listing function.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from datetime import timezone
from typing import Any, Callable

from guest_backup.storages import StorageError

log = logging.getLogger(__name__)
#: the audit message of a backup written with ``--output`` (a folder of its own): not
#: the storages' backup, so not the last backup the metrics, health and alerts watch
OUTPUT_COPY = "written with --output to a folder of its own, not to the backup storages"
#: how the audit message of a failed (or interrupted) ``--output`` run begins, the
#: reason after it: a mistyped path is not a failed backup of the storages
OUTPUT_FAILED = "a copy with --output (not to the backup storages) failed: "
#: backup entries read to find the newest that is not an --output copy
OUTPUT_SCAN = 50
#: seconds a scrape reuses the storages' listing (a new backup or pruning refreshes it)
LISTING_TTL = 60
_registry: Callable[[Callable[[Any], Any]], Any] = lambda define: None

_DEFINITIONS: dict[str, Callable[[Any], Any]] = {
    "exports": lambda c: c.Counter(
        "guest_exports", "Guest exports (action export) and previews that ended, by outcome",
        ["format", "action", "outcome"]),
    "export_rows": lambda c: c.Counter(
        "guest_export_rows", "Rows of the exports that ended ok", ["format", "action"]),
    "slots": lambda c: c.Gauge(
        "guest_export_slots_in_use", "Export slots held now (EXPORT_MAX_CONCURRENT)",
        multiprocess_mode="livesum"),
    "runs": lambda c: c.Counter(
        "guest_backup_runs", "Backups, restore drills and prunings run here, by outcome",
        ["kind", "outcome"]),
    "pruned": lambda c: c.Counter(
        "guest_backup_pruned_archives", "Archives removed by retention", ["storage"]),
}


def use(registry: Callable[[Callable[[Any], Any]], Any]) -> None:
    """Count through the host's metric cache (``registry(define)``: the metric
    ``define`` makes, once per process, or None); bound by ``wiring`` at start-up.
    Until then nothing is counted."""
    global _registry
    _registry = registry


def _metric(name: str):
    return _registry(_DEFINITIONS[name])


def _quietly(what: str, fn: Callable, *args: Any) -> None:
    try:
        fn(*args)
    except Exception as exc:
        log.warning("%s failed (%s)", what, type(exc).__name__)


def record_export(label: tuple[str, str] | None, outcome: str, rows: int | None) -> None:
    """An export or preview ended; ``label`` is (action, format name)."""
    def count() -> None:
        exports = _metric("exports")
        if exports is None or label is None:
            return
        action, fmt = label
        exports.labels(fmt, action, outcome).inc()
        if outcome == "ok" and rows:
            _metric("export_rows").labels(fmt, action).inc(rows)

    _quietly("counting an export", count)


def slot_taken() -> None:
    _quietly("counting an export slot", lambda: _metric("slots") and _metric("slots").inc())


def slot_freed() -> None:
    _quietly("counting an export slot", lambda: _metric("slots") and _metric("slots").dec())


def count_run(kind: str, ok: bool) -> None:
    """A backup, drill or pruning ended (see :func:`.notify.observed`)."""
    runs = _metric("runs")
    if runs is not None:
        runs.labels(kind, "ok" if ok else "failed").inc()


def count_pruned(removed: dict[str, int]) -> None:
    """Archives a retention run removed, by storage."""
    pruned = _metric("pruned")
    for storage, count in removed.items():
        if pruned is not None and count:
            pruned.labels(storage).inc(count)


def _stamp(when) -> float:
    return when.replace(tzinfo=timezone.utc).timestamp() if when.tzinfo is None \
        else when.timestamp()


def output_copy(row: dict) -> bool:
    """Whether a backup's audit entry is an --output run's (made, failed or interrupted)."""
    message = row.get("message") or ""
    return message == OUTPUT_COPY or message.startswith(OUTPUT_FAILED)


def newest_entry(ctx, engine, action: str, outcomes: tuple[str, ...]) -> dict | None:
    """The newest entry of ``action`` with one of ``outcomes``; of a backup, the newest
    that is not an --output run's (among the last :data:`OUTPUT_SCAN` of each outcome).
    Health reads the last backup through this too: it and the metrics agree."""
    scan = OUTPUT_SCAN if action == "backup" else 1
    rows = [row for outcome in outcomes
            for row in ctx.audit.recent(engine, scan, action=action, outcome=outcome)
            if not (action == "backup" and output_copy(row))]
    return max(rows, key=lambda r: r["id"]) if rows else None


class BackupCollector:
    """The backup values of one installation, read at each scrape from the audit
    log and the storages (the listing reused for ``ttl`` seconds unless a newer
    backup or pruning was logged). ``engine()`` gives the database engine,
    ``listing(ctx)`` is :func:`guest_backup.ops.listing.list_everywhere`."""

    def __init__(self, ctx, engine: Callable[[], Any], listing: Callable[[Any], Any],
                 ttl: float = LISTING_TTL) -> None:
        self.ctx, self.engine, self.listing, self.ttl = ctx, engine, listing, ttl
        self._listing: tuple[Any, float, list] | None = None
        self._lock = threading.Lock()

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        families, ok = [], 1
        _quietly("the export slots gauge", _metric, "slots")  # shown from the first scrape on
        try:
            entries = self._entries(self.engine())
            families += _audit_families(GaugeMetricFamily, entries)
            families += self._storage_families(GaugeMetricFamily, entries)
        except Exception as exc:  # the database or a storage: the scrape goes on
            log.warning("backup metrics could not be read (%s)", type(exc).__name__)
            ok = 0
        families.append(GaugeMetricFamily(
            "guest_backup_metrics_ok", "1 when the backup values could be read", value=ok))
        return families

    def _entries(self, engine) -> dict[str, dict | None]:
        ctx = self.ctx
        return {
            "success": newest_entry(ctx, engine, "backup", ("ok",)),
            "attempt": newest_entry(ctx, engine, "backup", ("ok", "failed", "aborted")),
            "upload_failed": newest_entry(ctx, engine, "upload", ("failed", "aborted")),
            "drill": newest_entry(ctx, engine, "restore-test", ("ok", "failed", "aborted")),
            "prune": newest_entry(ctx, engine, "prune", ("ok",)),
        }

    def _storage_families(self, gauge, entries: dict) -> list:
        key = tuple((entries[k] or {}).get("id") for k in ("attempt", "prune"))
        with self._lock:
            cached = self._listing
            if cached is None or cached[0] != key or time.monotonic() - cached[1] > self.ttl:
                cached = self._listing = (key, time.monotonic(), self._list())
        archives = gauge("guest_backup_archives", "Recognised archives in each storage",
                         labels=["storage"])
        newest = gauge("guest_backup_newest_archive_timestamp_seconds",
                       "Creation time of each storage's newest archive (0: none)",
                       labels=["storage"])
        up = gauge("guest_backup_storage_up", "1 when the storage could be listed",
                   labels=["storage"])
        for name, found in cached[2]:
            up.add_metric([name], 0 if found is None else 1)
            if found is not None:
                archives.add_metric([name], len(found))
                newest.add_metric([name], _stamp(found[0].created) if found else 0)
        return [archives, newest, up]

    def _list(self) -> list[tuple[str, list | None]]:
        """Each storage's name with its recognised archives (None: not listed)."""
        try:
            listing = self.listing(self.ctx)
        except StorageError:  # BACKUP_REMOTE_URL cannot work at all: the local folder alone
            alone = dataclasses.replace(self.ctx, config={**self.ctx.config,
                                                          "BACKUP_REMOTE_URL": ""})
            return [(s.name, f) for s, f in self.listing(alone).by_storage] + [("remote", None)]
        return [(storage.name, None if isinstance(found, Exception) else found)
                for storage, found in listing.by_storage]


def _audit_families(gauge, entries: dict) -> list:
    """The last backup, attempt and drill as gauges (times 0 when there is none)."""
    success, attempt = entries["success"], entries["attempt"]
    failed_upload, drill = entries["upload_failed"], entries["drill"]
    attempt_ok = bool(attempt and attempt["outcome"] == "ok" and not (
        failed_upload and failed_upload["id"] > attempt["id"]))
    when = lambda e: _stamp(e["finished_at"] or e["created_at"]) if e else 0  # noqa: E731
    duration = (_stamp(success["finished_at"]) - _stamp(success["created_at"])
                if success and success["finished_at"] else 0)
    values = [
        ("guest_backup_last_success_timestamp_seconds",
         "When the last successful backup ended (0: none yet)", when(success)),
        ("guest_backup_last_attempt_timestamp_seconds",
         "When the last backup attempt ended (0: none yet)", when(attempt)),
        ("guest_backup_last_attempt_success",
         "1 when the last backup attempt (and its upload) succeeded", int(attempt_ok)),
        ("guest_backup_last_duration_seconds", "Duration of the last successful backup",
         duration),
        ("guest_backup_last_size_bytes", "Size of the last successful backup's archive",
         (success or {}).get("bytes") or 0),
        ("guest_backup_last_drill_timestamp_seconds",
         "When the last restore drill ended (0: none yet)", when(drill)),
        ("guest_backup_last_drill_success", "1 when the last restore drill passed",
         int(bool(drill and drill["outcome"] == "ok"))),
    ]
    return [gauge(name, text, value=value) for name, text, value in values]
