"""``backup-health`` on a backup folder holding an archive the service cannot read
(a root worker's, root's and 0600): its own problem naming the owner and the fix
(chown to the service's user), never counted among the "unrecognised files",
which sends the operator looking for foreign files. Runs as root, the service's
side as nobody (see tests/test_root_runs.py)."""

from __future__ import annotations

import json
import os

from tests.test_root_runs import (NOBODY, as_nobody, base,  # noqa: F401  (the fixture)
                                  service_app_with_a_backup)


def _health_as_service(app):
    with app.app_context():
        result = app.test_cli_runner().invoke(args=["backup-health"])
        return result.exit_code, result.output


def test_an_unreadable_archive_is_its_own_problem_not_unrecognised(base):  # noqa: F811
    app, archive = service_app_with_a_backup(base)
    foreign = archive.with_name("system_backup_20200101_000000.zip")
    foreign.write_bytes(b"PK not an archive of ours")  # a truly unrecognised file
    for path in [base / "db.sqlite", *(base / "instance").rglob("*"), base / "instance"]:
        os.lchown(path, NOBODY, NOBODY)  # the service's files ...
    for path in (archive, archive.with_name(archive.name + ".sig")):
        os.chown(path, 0, 0)  # ... but the archive and its seal root's, 0600
        os.chmod(path, 0o600)
    outcome, (code, output) = as_nobody(_health_as_service, app)
    assert outcome == "ok", output
    report = json.loads(output)
    by_id = {p["id"]: p for p in report["problem_ids"]}
    assert by_id["unrecognised"]["params"]["count"] == 1, report["problems"]
    assert by_id["unrecognised"]["params"]["names"] == foreign.name
    unreadable = by_id["unreadable"]
    assert unreadable["params"]["count"] == 1 and unreadable["params"]["owners"] == "root"
    assert unreadable["params"]["user"] == "nobody"
    text = unreadable["text"]
    assert archive.name in text and "owned by root" in text and "chown them to nobody" in text
    assert code == 1 and report["status"] == "unhealthy"
