"""The token API for archives (plugins/backup/web/api.py, download.py): listing,
downloads with ranges and the signed SHA-256 as ETag, audit, starting a backup
and reading its job, and who may do any of it (a header token of an admin only)."""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from guest_registration.extensions import db
from guest_registration.models import AuditEntry
from guest_backup.ops.locks import BackupLock
from tests.helpers import ADMIN, USER, make_backup
from tests.live_server import live_server
from tests.test_remote import BUCKET, PREFIX, s3  # noqa: F401 (moto's S3 server, a fixture)

#: these run on SQLite (the backup engines have their own tests on both databases)
sqlite = pytest.mark.parametrize("backend", ["sqlite"])
ARCHIVES = "/api/backup/archives"


@pytest.fixture
def token(auth):
    return auth.token()


@pytest.fixture
def archive(app, runner) -> Path:
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    return make_backup(runner)


def bearer(token: str, **extra) -> dict:
    return {"Authorization": f"Bearer {token}", **extra}


def downloads(app) -> list[AuditEntry]:
    with app.app_context():
        rows = db.session.query(AuditEntry).filter_by(action="download").order_by(
            AuditEntry.id).all()
        db.session.expunge_all()
        return rows


@sqlite
def test_listing_download_etag_and_audit_agree(client, token, archive, app):
    data = archive.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    listing = client.get(ARCHIVES, headers=bearer(token))
    assert listing.status_code == 200
    body = listing.get_json()
    assert body["problems"] == []
    [row] = body["archives"]
    assert row["name"] == archive.name and row["size"] == len(data)
    assert row["sha256"] == sha and row["signed"] is True and row["encrypted"] is False
    assert row["storages"] == ["local"] and row["verified"] is None
    assert row["created"].endswith("Z") and row["url"].endswith(f"{ARCHIVES}/{archive.name}")

    full = client.get(f"{ARCHIVES}/{archive.name}", headers=bearer(token))
    assert full.status_code == 200 and full.headers["Content-Type"] == "application/zip"
    assert hashlib.sha256(full.data).hexdigest() == sha
    assert full.headers["ETag"] == f'"{sha}"' and full.headers["Accept-Ranges"] == "bytes"
    assert full.headers["Content-Length"] == str(len(data))
    assert full.headers["Cache-Control"] == "no-store"
    [entry] = downloads(app)
    assert (entry.via, entry.target, entry.outcome, entry.bytes) == (
        "api", archive.name, "ok", len(data))
    assert entry.actor == "admin@example.com"


@sqlite
def test_the_backup_page_download_is_the_same_code(client, auth, archive, app):
    data = archive.read_bytes()
    auth.login()
    resp = client.get(f"/admin/backup/download/{archive.name}", headers={"Range": "bytes=-20"})
    assert resp.status_code == 206 and resp.data == data[-20:]
    assert resp.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    [entry] = downloads(app)
    assert (entry.via, entry.bytes) == ("admin", 20)


@sqlite
def test_verify_result_shows_in_listing(client, token, archive, runner):
    assert runner.invoke(args=["verify", str(archive)]).exit_code == 0
    [row] = client.get(ARCHIVES, headers=bearer(token)).get_json()["archives"]
    assert row["verified"]["ok"] is True and row["verified"]["at"].endswith("Z")


@sqlite
@pytest.mark.parametrize("header, status, expected", [
    ("bytes=0-99", 206, (0, 99)),
    ("bytes=-10", 206, "suffix"),
    ("bytes=100-", 206, "from100"),
    ("bytes=0-99999999999", 206, "all"),
    ("bytes=0-1,5-9", 200, None),    # several ranges: the whole archive
    ("bytes=5-1", 200, None),        # malformed: ignored
    ("items=0-9", 200, None),        # another unit: ignored
    ("bytes=٠-٩", 200, None),        # non-ASCII digits: malformed
    ("bytes=99999999999-", 416, None),
    ("bytes=-0", 416, None),
])
def test_ranges(client, token, archive, app, header, status, expected):
    data = archive.read_bytes()
    size = len(data)
    resp = client.get(f"{ARCHIVES}/{archive.name}", headers=bearer(token, Range=header))
    assert resp.status_code == status
    if status == 416:
        assert resp.headers["Content-Range"] == f"bytes */{size}"
        assert resp.get_json()["error"] and downloads(app) == []
        return
    first, last = {"suffix": (size - 10, size - 1), "from100": (100, size - 1),
                   "all": (0, size - 1), None: (0, size - 1)}.get(expected, expected)
    assert resp.data == data[first:last + 1]
    assert resp.headers["Content-Length"] == str(last - first + 1)
    if status == 206:
        assert resp.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
        [entry] = downloads(app)
        assert entry.bytes == last - first + 1 and entry.message == f"bytes {first}-{last}/{size}"
    else:
        assert "Content-Range" not in resp.headers


@sqlite
def test_conditional_requests(client, token, archive, app):
    data = archive.read_bytes()
    etag = f'"{hashlib.sha256(data).hexdigest()}"'
    url = f"{ARCHIVES}/{archive.name}"
    for match in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        resp = client.get(url, headers=bearer(token, **{"If-None-Match": match}))
        assert resp.status_code == 304 and resp.data == b"" and resp.headers["ETag"] == etag
    assert downloads(app) == []  # nothing was sent
    assert client.get(url, headers=bearer(token, **{"If-None-Match": '"other"'})).status_code == 200
    same = client.get(url, headers=bearer(token, Range="bytes=10-19", **{"If-Range": etag}))
    assert same.status_code == 206 and same.data == data[10:20]
    for stale in ('"0000"', f"W/{etag}", "Wed, 21 Oct 2015 07:28:00 GMT"):
        changed = client.get(url, headers=bearer(token, Range="bytes=10-19",
                                                  **{"If-Range": stale}))
        assert changed.status_code == 200 and changed.data == data
    head = client.head(url, headers=bearer(token, Range="bytes=0-99"))
    assert head.status_code == 206 and head.headers["Content-Length"] == "100"
    assert len(downloads(app)) == 5  # 200, 206 and three 200s: a HEAD sends nothing


@sqlite
@pytest.mark.parametrize("name", [
    "x.zip", "system_backup_20250101_000000.zip", "..", "%2e%2e", "a/b",
    "system_backup_20250101_000000.zip%00", "system_backup_２０２５0101_000000.zip",
    "system_backup_20250101_000000.zip.sig", "..%2f..%2fetc%2fpasswd", "%ff"])
def test_odd_names_are_404_json(client, token, archive, name):
    resp = client.get(f"{ARCHIVES}/{name}", headers=bearer(token))
    assert resp.status_code in (404, 400)  # 400: a NUL byte, refused by the host first
    assert resp.is_json and resp.get_json()["error"]


@sqlite
def test_only_an_admin_header_token_is_enough(client, auth, token, archive):
    url = f"{ARCHIVES}/{archive.name}"
    calls = [("get", ARCHIVES), ("get", url), ("post", ARCHIVES), ("get", "/api/backup/jobs/" + "0" * 32)]
    for method, path in calls:
        resp = getattr(client, method)(path)
        assert resp.status_code == 401 and resp.is_json, path
        assert resp.headers["WWW-Authenticate"]
        assert getattr(client, method)(path, headers=bearer("not-a-token")).status_code == 401
        assert getattr(client, method)(path, headers={"Authorization": "Basic eDp5"}).status_code == 401
    assert client.get(ARCHIVES, headers={"Authentication-Token": token}).status_code == 200
    auth.login()  # a session cookie alone: refused, also for the POST (no CSRF needed)
    for method, path in calls:
        assert getattr(client, method)(path).status_code == 401, path
    assert client.get("/admin/backup/").status_code == 200  # the session itself is good
    assert client.get(ARCHIVES, headers=bearer(token)).status_code == 200
    auth.logout()
    user_token = auth.token(*USER)
    for method, path in calls:
        resp = getattr(client, method)(path, headers=bearer(user_token))
        assert resp.status_code == 403 and resp.get_json() == {"error": "admin role required"}


@sqlite
def test_bearer_works_on_the_export_api(client, token, app):
    resp = client.get("/api/backup/guests?year=2025&month=6", headers=bearer(token))
    assert resp.status_code == 200
    with app.app_context():
        entry = db.session.query(AuditEntry).filter_by(action="export").one()
        assert entry.via == "api"
    assert client.get("/metrics", headers=bearer(token)).status_code in (401, 403, 404)


def wait_for(client, token, url, timeout=60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(url, headers=bearer(token)).get_json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError("the backup job did not finish")


@sqlite
def test_start_a_backup_and_follow_its_job(client, token, app, runner):
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    started = client.post(ARCHIVES, headers=bearer(token))
    assert started.status_code == 202
    job = started.get_json()
    assert started.headers["Location"] == job["url"]
    assert job["url"].endswith(f"/api/backup/jobs/{job['id']}")
    assert job["state"] in ("running", "done")
    done = wait_for(client, token, job["url"])
    assert done["state"] == "done", done
    assert done["archive_url"].endswith(f"{ARCHIVES}/{done['archive']}")
    got = client.get(done["archive_url"], headers=bearer(token))
    path = Path(app.config["BACKUP_FOLDER"]) / done["archive"]
    assert got.status_code == 200 and got.data == path.read_bytes()
    with app.app_context():  # the backup's own audit entry says it came through the API
        entry = db.session.query(AuditEntry).filter_by(action="backup", outcome="ok").one()
        assert (entry.via, entry.target) == ("api", done["archive"])
    for other in ("0" * 32, "x", "../../etc", job["id"].upper()):
        resp = client.get(f"/api/backup/jobs/{other}", headers=bearer(token))
        assert resp.status_code == 404 and resp.is_json


@sqlite
def test_second_backup_is_409(client, token, app):
    with BackupLock(app.config["BACKUP_FOLDER"]):
        resp = client.post(ARCHIVES, headers=bearer(token))
    assert resp.status_code == 409 and "already running" in resp.get_json()["error"]


@sqlite
def test_a_remote_only_archive_comes_from_s3_with_ranges(client, token, app, runner, s3,
                                                          monkeypatch):
    from guest_backup.archive.format import sidecar_path
    from guest_backup.storages.s3 import S3Storage

    app.config.update(BACKUP_REMOTE_URL=f"s3://{BUCKET}/{PREFIX}")
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    archive = make_backup(runner)
    data, name = archive.read_bytes(), archive.name
    sha = hashlib.sha256(data).hexdigest()
    archive.unlink()
    sidecar_path(archive).unlink()  # only the S3 copy is left
    [row] = client.get(ARCHIVES, headers=bearer(token)).get_json()["archives"]
    assert (row["storages"], row["sha256"], row["size"]) == (["remote"], sha, len(data))
    asked = []  # the range is asked of S3 (GetObject's Range), not skipped through
    original = S3Storage.open_range

    def open_range(self, archive_name, first, last):
        asked.append((first, last))
        return original(self, archive_name, first, last)

    monkeypatch.setattr(S3Storage, "open_range", open_range, raising=False)
    full = client.get(f"{ARCHIVES}/{name}", headers=bearer(token))
    assert full.status_code == 200 and full.data == data and full.headers["ETag"] == f'"{sha}"'
    part = client.get(f"{ARCHIVES}/{name}", headers=bearer(token, Range="bytes=100-199"))
    assert part.status_code == 206 and part.data == data[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert asked == [(100, 199)]
    monkeypatch.setattr(S3Storage, "open_range", None, raising=False)  # a storage without it
    tail = client.get(f"{ARCHIVES}/{name}", headers=bearer(token, Range="bytes=-50"))
    assert tail.status_code == 206 and tail.data == data[-50:]
    messages = [e.message for e in downloads(app)]
    assert messages == [f"from s3://{BUCKET}/{PREFIX}",
                        f"bytes 100-199/{len(data)}; from s3://{BUCKET}/{PREFIX}",
                        f"bytes {len(data) - 50}-{len(data) - 1}/{len(data)}; "
                        f"from s3://{BUCKET}/{PREFIX}"]


@pytest.mark.live
def test_curl_range_against_a_live_server(tmp_path):
    """The documented curl lines against the real server process."""
    with live_server(f"sqlite:///{tmp_path / 'live.db'}", tmp_path, admin=ADMIN) as server:
        server.manage("backup")
        [archive] = sorted(server.backup_folder.glob("system_backup_*.zip"))
        data = archive.read_bytes()
        token = server.auth_token(ADMIN[0])
        url = server.url(f"{ARCHIVES}/{archive.name}")
        out, headers = tmp_path / "first100", tmp_path / "headers"
        code = curl("-H", f"Authorization: Bearer {token}", "-r", "0-99", "-D", headers,
                    "-o", out, url)
        assert code == "206" and out.read_bytes() == data[:100]
        assert f"content-range: bytes 0-99/{len(data)}" in headers.read_text().lower()
        code = curl("-fH", f"Authorization: Bearer {token}", "-D", headers, "-o", out, url)
        etag = next(line.split(":", 1)[1].strip() for line in headers.read_text().splitlines()
                    if line.lower().startswith("etag:"))
        sha = hashlib.sha256(out.read_bytes()).hexdigest()
        assert code == "200" and sha == hashlib.sha256(data).hexdigest() and etag == f'"{sha}"'
        assert curl("-H", "Authorization: Bearer wrong", "-o", out, url) == "401"
        engine = sa.create_engine(server.database_url)
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT via, target, bytes FROM audit_log WHERE action = 'download' "
                "ORDER BY id").all()
        engine.dispose()
        assert [tuple(r) for r in rows] == [("api", archive.name, 100),
                                            ("api", archive.name, len(data))]


def curl(*args) -> str:
    """Run curl; its HTTP status."""
    done = subprocess.run(["curl", "-s", "-w", "%{http_code}", *map(str, args)],
                          capture_output=True, text=True, timeout=60)
    return done.stdout[-3:]
