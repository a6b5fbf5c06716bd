"""The Backup admin page through the test client (the real browser runs in
tests/browser/test_browser_backup.py): job start and state, downloads, verify, delete."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import pytest

from guest_backup.wiring import backup_context
from guest_backup.ops.jobs import STATE_FILE, read_job
from guest_backup.ops.locks import BackupLock
from tests.helpers import USER, csrf_token_from


def page(client) -> str:
    resp = client.get("/admin/backup/")
    assert resp.status_code == 200
    return resp.get_data(as_text=True)


def wait_for_job(client, timeout=60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get("/admin/backup/job").get_json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError("backup job did not finish")


@pytest.fixture
def admin(client, auth, runner):
    runner.invoke(args=["demo-data"])
    auth.login()
    return client


def start(client, token=None):
    token = token or csrf_token_from(page(client))
    return client.post("/admin/backup/start", data={"csrf_token": token})


def test_page_sections(admin):
    html = page(admin)
    for marker in ('id="system-backup"', 'id="archives"', 'id="export-form"', 'id="recent-activity"',
                   'name="year"', 'name="month"', 'name="format"', 'value="csv"', 'value="json"',
                   'id="curl-command"', 'id="export-preview"'):
        assert marker in html, marker
    assert 'action="http://localhost/api/backup/guests"' in html


def test_start_requires_post_and_csrf(admin):
    assert admin.get("/admin/backup/start").status_code == 405
    assert admin.post("/admin/backup/start").status_code == 400
    assert admin.get("/admin/backup/job").get_json()["state"] == "none"


def test_web_backup_runs_and_downloads(admin, app, runner):
    resp = start(admin)
    assert resp.status_code == 302
    job = wait_for_job(admin)
    assert job["state"] == "done", job
    assert job["download_url"] == f"/admin/backup/download/{job['archive']}"
    download = admin.get(job["download_url"])
    assert download.status_code == 200
    assert download.headers["Content-Type"] == "application/zip"
    assert download.headers["Cache-Control"] == "no-store"
    assert f'filename={job["archive"]}' in download.headers["Content-Disposition"]
    web = zipfile.ZipFile(io.BytesIO(download.data))
    assert web.testzip() is None
    html = page(admin)
    assert job["archive"] in html and "Last backup finished" in html
    # the same content as a CLI backup: same members, same manifest fields
    cli_path = Path(runner.invoke(args=["backup"]).output.strip().splitlines()[-1])
    cli = zipfile.ZipFile(cli_path)
    assert sorted(web.namelist()) == sorted(cli.namelist())
    web_manifest, cli_manifest = (json.loads(z.read("manifest.json")) for z in (web, cli))
    assert web_manifest.keys() == cli_manifest.keys()
    assert web_manifest["row_counts"]["guest"] == cli_manifest["row_counts"]["guest"]
    for name, meta in cli_manifest["members"].items():
        if name.startswith("uploads/"):
            assert web_manifest["members"][name] == meta


def test_second_backup_while_one_runs_is_refused(admin, app):
    with BackupLock(app.config["BACKUP_FOLDER"]):
        resp = start(admin)
        assert resp.status_code == 302
        assert "already running" in page(admin)
    assert admin.get("/admin/backup/job").get_json()["state"] == "none"


def test_interrupted_job_is_reported_and_partial_cleaned(admin, app):
    folder = Path(app.config["BACKUP_FOLDER"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STATE_FILE).write_text(json.dumps({"id": "x", "state": "running", "stage": "database",
                                                 "bytes": 10}))
    partial = folder / ".system_backup_20250101_000000.zip.partial"
    partial.write_bytes(b"half")
    assert read_job(backup_context(app))["state"] == "failed"
    html = page(admin)
    assert "interrupted" in html
    assert not partial.exists() and "20250101" not in html


@pytest.mark.parametrize("name", ["..%2F..%2Fetc%2Fpasswd", ".backup.lock", STATE_FILE,
                                  "system_backup_20990101_000000.zip", "notes.txt",
                                  "system_backup_20990101_000000.zip%00.txt"])
def test_download_accepts_only_existing_archive_names(admin, app, name):
    folder = Path(app.config["BACKUP_FOLDER"])
    (folder / "notes.txt").write_text("not an archive")
    assert admin.get(f"/admin/backup/download/{name}").status_code == 404


def test_verify_and_delete(admin, app, runner):
    path = Path(runner.invoke(args=["backup"]).output.strip().splitlines()[-1])
    token = csrf_token_from(page(admin))
    assert "not verified" in page(admin)
    admin.post(f"/admin/backup/verify/{path.name}", data={"csrf_token": token})
    html = page(admin)
    assert "verified: every checksum matches" in html and ">verified<" in html
    # tamper: the next verify says so
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    admin.post(f"/admin/backup/verify/{path.name}", data={"csrf_token": token})
    assert ">failed<" in page(admin)
    # delete needs the token
    assert admin.post(f"/admin/backup/delete/{path.name}").status_code == 400
    assert path.exists()
    admin.post(f"/admin/backup/delete/{path.name}", data={"csrf_token": token})
    assert not path.exists()
    assert f"{path.name} was deleted" in page(admin)


def test_non_admin_cannot_use_the_page(client, auth, app):
    auth.login(*USER)
    for url in ("/admin/backup/", "/admin/backup/job", "/admin/backup/download/x.zip"):
        assert client.get(url).status_code == 403
    assert client.post("/admin/backup/start").status_code in (400, 403)


def test_last_backup_never_links_a_deleted_archive(admin, app, runner):
    folder = Path(app.config["BACKUP_FOLDER"])
    folder.mkdir(parents=True, exist_ok=True)
    gone = "system_backup_20250101_000000.zip"
    (folder / STATE_FILE).write_text(json.dumps({
        "id": "y", "state": "done", "stage": "done", "bytes": 10, "archive": gone,
        "error": None, "started_at": "2025-01-01T00:00:00Z", "finished_at": "2025-01-01T00:00:05Z"}))
    page = admin.get("/admin/backup/").get_data(as_text=True)
    assert f"{gone} (since deleted)" in page and f"download/{gone}" not in page
    job = admin.get("/admin/backup/job").get_json()
    assert job["archive"] == gone and "download_url" not in job


@pytest.mark.parametrize("command", [["backup"], ["backup-prune"], ["restore-test"]])
def test_overlapping_runs_are_refused_with_exit_code_75(app, runner, command):
    from guest_backup.ops.locks import BackupLock

    with BackupLock(app.config["BACKUP_FOLDER"]):
        result = runner.invoke(args=command)
    assert result.exit_code == 75, result.output
    assert "another backup is running" in result.output


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_job_that_ends_while_it_is_read_is_not_called_interrupted(app, monkeypatch):
    """A reader that read "running" just before the job wrote "done" and released
    its lock found the lock free and said "interrupted (the server stopped)": the
    page stopped polling on a backup that had succeeded (found by a race review)."""
    from guest_backup.ops import jobs

    ctx = backup_context(app)
    store = jobs.job_state(ctx)
    Path(app.config["BACKUP_FOLDER"]).mkdir(parents=True, exist_ok=True)
    store.write({"id": "j1", "state": "running", "archive": None, "error": None})
    real_read, reads = jobs.FileState.read, []

    def read(self):
        state = real_read(self)
        if not reads:  # the job ends right after this first read
            self.write({"id": "j1", "state": "done", "archive": "a.zip", "error": None})
        reads.append(state)
        return state

    monkeypatch.setattr(jobs.FileState, "read", read)
    job = read_job(ctx)
    assert (job["state"], job["archive"], job["error"]) == ("done", "a.zip", None)
    store.write({"id": "j2", "state": "running", "archive": None, "error": None})
    reads.append("no more ending")
    assert read_job(ctx)["state"] == "failed"  # a dead job is still named as one
