"""The backup operations: create, pipeline, restore, drill, retention, health,
status, jobs, folders, locks. Plain arguments; no Flask, no host imports: the
wiring (:mod:`guest_backup.wiring`) hands them a :class:`~.context.BackupContext`."""
