"""The backup plugin: the Backup admin page, the monthly guest export API and the
backup commands. Hook implementations only; the work is in the sibling modules."""

from __future__ import annotations

from guest_registration import hookimpl


@hookimpl
def register_admin_views(app):
    from .views import BackupView

    return [BackupView(name="System Backup", category="Backup", endpoint="backup", url="backup")]
