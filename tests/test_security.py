"""Hostile input and access: fuzzed API parameters, the access matrix over every
URL, CSRF on every state-changing browser route, hostile uploads and archives,
and secrets that must never leak."""

from __future__ import annotations

from datetime import date

import io
import json
import logging
import re
import stat
import time
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guest_registration.demo import tiny_pdf, tiny_png
from guest_registration.extensions import db
from guest_registration.models import Guest, Trip
from guest_backup.wiring import backup_context
from guest_backup.archive.verify import verify_archive
from tests.helpers import (ADMIN, API, USER, csrf_token_from, make_backup, resign,
                           trusted_of)

# --- property-based: the API never answers 500 -------------------------------------

values = st.one_of(st.text(max_size=30), st.integers(-10**30, 10**30).map(str),
                   st.sampled_from(["2025", "6", "12", "0", "13", "1900", "9999", "csv", "json",
                                    "", " ", "%00", "２０２５", "1e3", "0x10", "-0", "+6"]))
query = st.lists(st.tuples(st.sampled_from(["year", "month", "format", "Year", "x", ""]), values),
                 max_size=6)


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(params=query)
def test_api_never_fails_on_any_parameters(client, app, params, request):
    token = request.getfixturevalue("api_token")
    resp = client.get(API, query_string=params, headers={"Authentication-Token": token},
                      buffered=True)
    assert resp.status_code in (200, 400), (params, resp.status_code)
    if resp.status_code == 400:
        body = resp.get_json()
        assert set(body) == {"error"} and body["error"]
        assert "Traceback" not in body["error"]


@pytest.fixture
def api_token(auth):
    return auth.token()


# --- the access matrix over every URL the app serves -------------------------------

def concrete_urls(app) -> list[tuple[str, str]]:
    """(method, url) for every rule, with placeholder values for its arguments."""
    out = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.endswith(".static"):
            continue
        url = rule.rule
        for arg in rule.arguments:
            url = re.sub(rf"<(?:[^:<>]+:)?{arg}>", "1", url)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            out.append((method, url))
    return out


PROTECTED = ("/admin", "/api/backup")


def identities(app, auth, client):
    """name → headers (a token) or None (use the client's session)."""
    with app.app_context():
        ds = app.extensions["security"].datastore
        expired = ds.find_user(email=ADMIN[0]).get_auth_token()  # aged below
        deactivated_user = ds.create_user(email="gone@example.com", password="x" * 12, active=True)
        ds.add_role_to_user(deactivated_user, "admin")
        db.session.commit()
        gone_token = deactivated_user.get_auth_token()
        ds.deactivate_user(deactivated_user)
        db.session.commit()
    time.sleep(2.2)  # older than the 1-second max age used for "expired token" (whole seconds)
    return {"expired token": {"Authentication-Token": expired},
            "deactivated user's token": {"Authentication-Token": gone_token}}


#: What an admin's token gets on each protected URL of the matrix (dummy arguments,
#: no form data, no CSRF token): (method and path pattern, status). Flask-Admin sends a
#: missing record, a view that creates nothing and a bulk action back to the list (302).
ADMIN_STATUS = [
    (r"GET /admin/", 200),
    (r"GET /admin/(trip|registration|guest|user|audit)/", 200),
    (r"(GET|POST) /admin/(trip|registration|guest)/new/", 200),  # POST: the form, with errors
    (r"(GET|POST) /admin/(user|audit)/new/", 302),  # created elsewhere / never
    (r"GET /admin/\w+/(details|edit|export/1)/", 302),  # no record 1 was named (?id=)
    (r"POST /admin/\w+/(edit|delete|action)/", 302),
    (r"(GET|POST) /admin/\w+/ajax/(lookup|update)/", 404),  # no ajax fields
    (r"GET /admin/guest/photo/1", 404),  # no guest 1
    (r"GET /admin/backup/(job)?", 200),
    (r"GET /admin/backup/download/1", 404),  # no archive "1"
    (r"GET /admin/backup/preview", 400),  # no year or month
    (r"POST /admin/backup/(start|delete/1|verify/1)", 400),  # no CSRF token
    (r"GET /admin/rights/", 200),
    (r"POST /admin/rights/", 400),  # the search posts: no CSRF token
    (r"GET /admin/pitr/(job)?", 200),
    (r"POST /admin/pitr/backup", 400),  # no CSRF token
    (r"GET /admin/backup/browse/", 200),
    (r"POST /admin/backup/browse/(open|s/1/(close|preview|restore))", 400),  # no CSRF token
    (r"GET /admin/backup/browse/s/1/(trip/1|registration/1)?", 404),  # no open archive "1"
    (r"POST /admin/rights/erase", 400),  # no CSRF token
    (r"GET /api/backup/guests", 400),  # no year
    (r"GET /api/backup/archives", 200),
    (r"POST /api/backup/archives", 202),  # a backup starts (the test waits for its end)
    (r"GET /api/backup/(archives|jobs)/1", 404),  # no archive "1", no job "1"
]
#: the archive API takes a header token only: a session cookie is no credential there
TOKEN_ONLY = ("/api/backup/archives", "/api/backup/jobs")


def admin_status(method: str, url: str) -> int:
    """The one status ``ADMIN_STATUS`` expects for ``method url``."""
    found = [status for pattern, status in ADMIN_STATUS
             if re.fullmatch(pattern, f"{method} {url}")]
    assert len(found) == 1, f"{method} {url}: add it to ADMIN_STATUS ({found})"
    return found[0]


def list_of(url: str) -> str:
    """The list page of the Flask-Admin view ``url`` belongs to."""
    return "/".join(url.split("/")[:3]) + "/"


def test_access_matrix(app, client, auth):
    # POST /logout with a token ends that user's tokens too: it has its own tests
    urls = [(method, url) for method, url in concrete_urls(app) if url != "/logout"]
    assert len(urls) > 40
    token_ids = identities(app, auth, client)
    user_token = auth.token(*USER)
    admin_token = auth.token()
    cases = {"anonymous": {}, **token_ids, "non-admin token": {"Authentication-Token": user_token}}
    for method, url in urls:
        protected = url.startswith(PROTECTED)
        for who, headers in cases.items():
            saved = app.config["SECURITY_TOKEN_MAX_AGE"]
            if who == "expired token":
                app.config["SECURITY_TOKEN_MAX_AGE"] = timedelta(seconds=1)
            try:
                resp = client.open(url, method=method, headers=headers, buffered=True)
            finally:
                app.config["SECURITY_TOKEN_MAX_AGE"] = saved
            if not protected:
                continue
            if who == "non-admin token":
                assert resp.status_code in (403, 400), (who, method, url, resp.status_code)
            elif url.startswith("/api/"):
                assert resp.status_code in (401, 405), (who, method, url, resp.status_code)
            else:
                assert resp.status_code in (302, 400, 405), (who, method, url, resp.status_code)
                if resp.status_code == 302:
                    assert "/login" in resp.headers["Location"], (who, url)
        # an admin gets past the access check, to exactly what the page does with the
        # dummy arguments (never a 500, never the login page)
        if protected:
            resp = client.open(url, method=method, headers={"Authentication-Token": admin_token},
                               buffered=True)
            assert resp.status_code == admin_status(method, url), (method, url, resp.status_code)
            if resp.status_code == 302:
                assert resp.headers["Location"] == list_of(url), (method, url)
    # the same for browser sessions of a non-admin
    auth.login(*USER)
    for method, url in urls:
        if url.startswith(PROTECTED) and method == "GET":
            expected = 401 if url.startswith(TOKEN_ONLY) else 403
            assert client.get(url, buffered=True).status_code == expected, url
    with app.app_context():  # the backup the admin's POST started ends before the tables go
        from guest_backup.ops.jobs import read_job
        from guest_backup.wiring import backup_context

        deadline = time.monotonic() + 60
        while (read_job(backup_context()) or {}).get("state") in ("queued", "running"):
            assert time.monotonic() < deadline, "the backup did not end"
            time.sleep(0.1)


# --- CSRF on every state-changing browser route --------------------------------------

def load_demo_data(runner) -> None:
    """``manage.py demo-data`` through the app's CLI runner; it must load."""
    result = runner.invoke(args=["demo-data"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("demo data loaded: 6 trips, "), result.output


def state(app) -> tuple:
    with app.app_context():
        engine = db.engine
        meta = sa.MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            counts = tuple((t, conn.execute(sa.select(sa.func.count()).select_from(tbl)).scalar_one())
                           for t, tbl in sorted(meta.tables.items()) if t != "audit_log")
    folder = Path(app.config["BACKUP_FOLDER"])
    files = tuple(sorted(p.name for p in folder.iterdir())) if folder.exists() else ()
    return counts, files


def test_every_browser_post_needs_a_csrf_token(app, client, auth, runner):
    load_demo_data(runner)
    archive = make_backup(runner)
    auth.login()
    with app.app_context():
        first_trip = db.session.query(Trip.id).first()[0]
        # the registration form of a trip still open (one that ended answers 410
        # before it would ever look at the CSRF token)
        open_trip = db.session.query(Trip.id).filter(
            (Trip.end_date.is_(None)) | (Trip.end_date >= date.today())).first()[0]
    posts = sorted({url for method, url in concrete_urls(app)
                    if method == "POST" and not url.startswith("/api/")})
    assert "/admin/backup/start" in posts and "/logout" in posts
    for url in posts:
        url = url.replace("/trips/1/", f"/trips/{open_trip}/").replace("/1", f"/{open_trip}") \
            if url.startswith("/trips") else url
        url = url.replace("delete/1", f"delete/{archive.name}").replace("verify/1",
                                                                         f"verify/{archive.name}")
        before = state(app)
        resp = client.post(url, data={"title": "x", "max_guests": "3", "id": str(first_trip),
                                      "email": "a@b.cz", "action": "delete", "rowid": str(first_trip)})
        assert resp.status_code in (200, 302, 400, 404, 405), (url, resp.status_code)
        assert state(app) == before, url
        assert client.get("/admin/").status_code == 200, f"{url} logged us out"
    assert archive.exists()


# --- uploads ---------------------------------------------------------------------------

def register(client, trip_id, data: bytes, filename: str):
    page = client.get(f"/trips/{trip_id}/register").get_data(as_text=True)
    form = {"csrf_token": csrf_token_from(page), "email": "h@example.com", "language": "en",
            "guests-0-first_name": "A", "guests-0-last_name": "B", "guests-0-age_category": "adult",
            "guests-0-document_type": "passport", "guests-0-document_number": "1",
            "guests-0-gdpr_consent": "y", "guests-0-document_photo": (io.BytesIO(data), filename)}
    return client.post(f"/trips/{trip_id}/register", data=form, content_type="multipart/form-data")


@pytest.mark.parametrize("data,filename,message", [
    (tiny_png(), "../../etc/passwd.png", "without a path"),
    (tiny_png(), "sub/dir/me.png", "without a path"),
    (tiny_png() + b"<script>alert(1)</script>", "poly.png", "not a complete PNG"),
    (tiny_png()[:-12] + b"<html><script>alert(1)</script></html>" + tiny_png()[-12:], "poly.png",
     "markup or script"),
    (b"\xff\xd8\xff\xe0" + b"<svg onload=alert(1)>" + b"\xff\xd9", "poly.jpg", "markup or script"),
    (tiny_pdf().replace(b"trailer", b"<</S/JavaScript/JS(app.alert(1))>>\ntrailer"), "x.pdf",
     "markup or script"),
    (b"", "empty.jpg", "the file is empty"),
    (tiny_png()[:-12] + b"\x00" * (210 * 1024) + tiny_png()[-12:], "big.png", "larger than"),
])
def test_hostile_uploads_are_refused_and_nothing_stored(app, client, trip_id, data, filename,
                                                        message):
    resp = register(client, trip_id, data, filename)
    assert resp.status_code == 400
    assert message in resp.get_data(as_text=True)
    folder = Path(app.config["UPLOAD_FOLDER"])
    assert not folder.exists() or list(folder.iterdir()) == []
    with app.app_context():
        assert db.session.query(Guest).count() == 0


# --- hostile archives ------------------------------------------------------------------

@pytest.fixture
def good_archive(app, runner) -> Path:
    load_demo_data(runner)
    return make_backup(runner)


def clone(src: Path, dest: Path, extra=()) -> Path:
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as b:
        for info in a.infolist():
            b.writestr(info, a.read(info))
        for item in extra:
            if isinstance(item, tuple):
                b.writestr(*item)
            else:
                b.writestr(item, b"x")
    return dest


def symlink_member(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("kind", ["symlink", "duplicate", "bomb", "lying size", "lying hash",
                                  "unexpected member", "dotdot in uploads"])
def test_hostile_archives_are_refused_before_writing(app, runner, good_archive, tmp_path, kind,
                                                     request, backend):
    bad = tmp_path / f"{kind}.zip"
    if kind == "symlink":
        clone(good_archive, bad, [(symlink_member("uploads/evil", "/etc/passwd"), "/etc/passwd")])
    elif kind == "duplicate":
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clone(good_archive, bad, [("uploads/logo.png", b"other")])
    elif kind == "bomb":
        clone(good_archive, bad)
        with zipfile.ZipFile(bad, "a", zipfile.ZIP_DEFLATED) as zf, \
                zf.open("uploads/zeros.bin", "w", force_zip64=True) as member:
            block = b"\0" * (1 << 20)
            for _ in range(80):
                member.write(block)
    elif kind in ("lying size", "lying hash"):
        # the archive's own name (a renamed archive is refused for that alone): only the lie
        bad = tmp_path / kind.replace(" ", "-") / good_archive.name
        bad.parent.mkdir()
        with zipfile.ZipFile(good_archive) as a, zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as b:
            for info in a.infolist():
                data = a.read(info)
                if info.filename == "manifest.json":
                    m = json.loads(data)
                    entry = m["members"]["uploads/logo.png"]
                    if kind == "lying size":
                        entry["size"] += 1
                    else:
                        entry["sha256"] = "0" * 64
                    data = json.dumps(m).encode()
                b.writestr(info.filename, data)
        resign(app, bad)
    elif kind == "unexpected member":
        clone(good_archive, bad, ["etc/cron.d/evil"])
    else:
        clone(good_archive, bad, ["uploads/../../evil.sh"])
    report = verify_archive(bad, backup_context(app).engines, trusted_of(app))
    assert not report.ok and report.problems
    if kind in ("lying size", "lying hash"):  # caught behind a valid signature
        assert report.signed_by and report.problems == [
            "uploads/logo.png: " + ("size differs from the manifest" if kind == "lying size"
                                    else "checksum mismatch")]
    target = (f"sqlite:///{tmp_path / 'r.db'}" if backend == "sqlite"
              else request.getfixturevalue("new_pg_database")())
    out = tmp_path / "out"
    result = runner.invoke(args=["restore", str(bad), "--database-url", target,
                                 "--uploads", str(out), "--yes"])
    assert result.exit_code == 1 and "did not verify" in result.output
    assert not out.exists()
    assert not (tmp_path / "evil.sh").exists()
    if backend == "sqlite":
        assert not (tmp_path / "r.db").exists()


# --- secrets ------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["postgresql"])
def test_no_secret_in_pg_dump_arguments_logs_or_responses(app_config, backend, tmp_path, request,
                                                          caplog, pg_database):
    """The password goes to pg_dump through the environment, never its argument
    list; it, the SECRET_KEY and tokens appear in no page and no log line."""
    import shutil

    url = sa.engine.make_url(pg_database).set(password="Pa55-word-XYZ")
    app_config["DATABASE_URL"] = url.render_as_string(hide_password=False)
    record = tmp_path / "pg_dump_seen"
    wrapper = tmp_path / "pg_dump_wrapper"
    wrapper.write_text("#!/bin/sh\n"
                       f"tr '\\0' ' ' < /proc/$$/cmdline >> {record}\n"
                       f"echo >> {record}\n"
                       f'exec {shutil.which("pg_dump")} "$@"\n')
    wrapper.chmod(0o755)
    app_config["PG_DUMP"] = str(wrapper)
    app = request.getfixturevalue("app")
    client = app.test_client()
    auth = request.getfixturevalue("auth")
    caplog.set_level(logging.WARNING)
    runner = app.test_cli_runner()
    load_demo_data(runner)
    result = runner.invoke(args=["backup"])
    assert result.exit_code == 0, result.output
    seen = record.read_text()
    assert "pg_dump_wrapper" in seen and "--no-owner" in seen
    assert "Pa55-word-XYZ" not in seen
    token = auth.token()
    auth.login()
    secrets = ["Pa55-word-XYZ", app.config["SECRET_KEY"], token]
    pages = [url for method, url in concrete_urls(app) if method == "GET"]
    for url in pages + [f"{API}?year=2025&month=6", f"{API}?year=x&month=1", "/admin/backup/job"]:
        body = client.get(url, buffered=True).get_data(as_text=True)
        for secret in secrets:
            assert secret not in body, url
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in secrets:
        assert secret not in logged


def test_security_headers_on_admin_exports_and_archives(app, client, auth, runner):
    load_demo_data(runner)
    archive = make_backup(runner)
    auth.login()
    for url in ["/admin/", "/admin/guest/", "/admin/backup/", f"{API}?year=2025&month=6",
                f"/admin/backup/download/{archive.name}"]:
        resp = client.get(url, buffered=True)
        assert resp.status_code == 200, url
        assert resp.headers["Cache-Control"] == "no-store", url
        assert resp.headers["X-Content-Type-Options"] == "nosniff", url
        assert resp.headers["X-Frame-Options"] == "DENY", url
