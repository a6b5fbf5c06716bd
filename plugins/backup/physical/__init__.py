"""Point-in-time recovery with pgBackRest: the driver, no Flask.

- :mod:`.owner`: the data directory's owner, whom every pgBackRest and PostgreSQL
  tool runs as (``runuser -u OWNER --`` when this process is root), and the
  folders and files made for that user;
- :mod:`.config`: the settings as plain values and the pgBackRest configuration
  file written from them (local folder or S3, encryption);
- :mod:`.pgbackrest`: the ``pgbackrest`` commands, their errors summarised to one
  line (code and message, secrets masked);
- :mod:`.cluster`: a PostgreSQL cluster on this machine (``psql``, ``pg_ctl``),
  the archiving settings PITR needs and the archiver's state;
- :mod:`.info`: ``pgbackrest info --output=json`` as backup sets and the
  recoverable window;
- :mod:`.recovery`: recovery into a NEW cluster beside the running one.

The operations over it (setup, backup, restore, drill, health) are in
:mod:`guest_backup.ops.pitr`.
"""

from __future__ import annotations

from guest_backup.errors import BackupBusy, BackupError


class PitrError(BackupError):
    """A point-in-time recovery step failed or was refused (safe to show)."""


class PitrBusy(PitrError, BackupBusy):
    """pgBackRest holds its lock: another backup of this stanza is running."""
