"""The monthly guest export, from a review: rows it never sent, outputs it
replaced, a failure logged as another error, HEAD run as an export."""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from datetime import datetime

import pytest

from guest_registration import create_app
from guest_registration.config_errors import ConfigError
from guest_registration.extensions import db
from guest_registration.models import AuditEntry, Guest, Registration, Trip
from guest_backup.export.request import parse_request
from guest_backup.export.stream import open_export
from guest_backup.wiring import backup_context
from tests.helpers import API, ROOT, db_engine_of, make_config


@pytest.fixture
def guests(app):
    """Three guests in June 2025."""
    with app.app_context():
        trip = Trip(title="T", max_guests=5)
        reg = Registration(trip=trip, email="a@example.com", language="en")
        db.session.add_all([trip, reg] + [
            Guest(registration=reg, first_name=f"G{i}", last_name="X", age_category="adult",
                  document_type="passport", document_number=str(i), gdpr_consent=True,
                  created_at=datetime(2025, 6, 2, 10, i)) for i in range(3)])
        db.session.commit()


def exports(app, action: str = "export") -> list[tuple]:
    with app.app_context():
        return [(e.outcome, e.message) for e in db.session.query(AuditEntry)
                .filter(AuditEntry.action == action).order_by(AuditEntry.id)]


def without_fast_path(app, monkeypatch, name: str = "csv"):
    """The format ``name`` on the generic path on every database."""
    registry = app.extensions["export_formats"]
    monkeypatch.setitem(registry._formats, name,  # noqa: SLF001
                        dataclasses.replace(registry.get(name), fast_paths={}))


# --- 1. EXPORT_FETCH_ROWS below 1 --------------------------------------------------

@pytest.mark.parametrize("value", [0, -5, "many"])
def test_fetch_rows_below_one_stops_start_up(tmp_path, value):
    config = make_config(tmp_path, f"sqlite:///{tmp_path / 'a.db'}", EXPORT_FETCH_ROWS=value)
    with pytest.raises(ConfigError, match="EXPORT_FETCH_ROWS must be a whole number of at "
                                          "least 1"):
        create_app(config, instance_path=str(tmp_path / "instance"))


def test_negative_max_concurrent_stops_start_up(tmp_path):
    config = make_config(tmp_path, f"sqlite:///{tmp_path / 'a.db'}", EXPORT_MAX_CONCURRENT=-1)
    with pytest.raises(ConfigError, match="EXPORT_MAX_CONCURRENT must be a whole number of "
                                          "at least 0"):
        create_app(config, instance_path=str(tmp_path / "instance"))


def test_cli_refuses_fetch_rows_below_one(app, runner, guests):
    app.config["EXPORT_FETCH_ROWS"] = 0  # set after start-up
    result = runner.invoke(args=["export-guests", "--year", "2025", "--month", "6"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().endswith("EXPORT_FETCH_ROWS must be a whole number of at "
                                          "least 1, not 0"), result.output
    assert exports(app) == []  # nothing opened


def test_every_command_refuses_fetch_rows_below_one_at_start_up(tmp_path, database_url,
                                                                  backend):
    """The check ran only with the export's blueprint (the web app) and in
    export-guests: ``backup-list`` and the other commands started with it."""
    import subprocess
    import sys

    env = dict(os.environ, EXPORT_FETCH_ROWS="0", INSTANCE_PATH=str(tmp_path / "instance"),
               DATABASE_URL=database_url)
    result = subprocess.run([sys.executable, "manage.py", "backup-list"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip() == ("Error: the app cannot start: EXPORT_FETCH_ROWS must be "
                                     "a whole number of at least 1, not 0"), result.stderr


def test_rows_not_sent_fail_the_export(app, client, auth, guests, monkeypatch):
    """Fewer rows than announced (here: a setting changed after start-up) end the
    export as failed, the body cut before its last chunk, as any failure."""
    without_fast_path(app, monkeypatch)
    app.config["EXPORT_FETCH_ROWS"] = 0
    with pytest.raises(Exception) as failure:  # the server drops the connection
        client.get(API, query_string={"year": 2025, "month": 6},
                   headers={"Authentication-Token": auth.token()}, buffered=True)
    assert type(failure.value).__name__ == "ExportIncomplete"
    assert exports(app) == [("failed", "ExportIncomplete: read 0 of the 3 rows announced")]


def test_the_body_is_cut_before_its_last_chunk(app, guests):
    with app.app_context():
        req = parse_request({"year": ["2025"], "month": ["6"], "format": ["json"]},
                            app.extensions["export_formats"])
        stream = open_export(db.engine, req, db_engine=db_engine_of(app), actor="t", via="cli",
                             fetch_rows=0, use_fast_path=False)
        sent = bytearray()
        with pytest.raises(Exception) as failure:
            for chunk in stream.chunks:
                sent += chunk
        assert type(failure.value).__name__ == "ExportIncomplete"
        assert stream.rows == 3 and bytes(sent) == b""  # not "[]"
    assert exports(app) == [("failed", "ExportIncomplete: read 0 of the 3 rows announced")]


# --- 2. export-guests --output -----------------------------------------------------

def test_output_to_a_named_pipe_writes_into_it(app, runner, guests, tmp_path):
    fifo = tmp_path / "guests.pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a consumer is waiting
    try:
        result = runner.invoke(args=["export-guests", "--year", "2025", "--month", "6",
                                     "--output", str(fifo)])
        assert result.exit_code == 0, result.output
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the pipe was replaced by a regular file"
        data = os.read(reader, 65536)
    finally:
        os.close(reader)
    assert data.startswith(b"id,registration_id,") and data.count(b"\r\n") == 4
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []
    assert exports(app) == [("ok", None)]


def test_output_dash_is_standard_output(app, runner, guests, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(args=["export-guests", "--year", "2025", "--month", "6",
                                 "--output", "-"])
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes.startswith(b"id,registration_id,")
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize("output", ["", "june/", "{tmp}/"])
def test_output_that_is_no_file_name_is_refused_first(app, runner, tmp_path, output,
                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(args=["export-guests", "--year", "2025", "--month", "6",
                                 "--output", output.format(tmp=tmp_path)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 3 and "--output" in lines[2], result.output  # usage, hint, why
    assert exports(app) == []  # refused before the export was opened
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


# --- 3. the log of a failure mid-stream ---------------------------------------------

def test_a_failing_export_is_logged_not_a_runtime_error(app, client, auth, monkeypatch, caplog):
    def broken(rows, fields):
        yield b"id,registration_id\r\n"
        raise ConnectionError("the database went away")

    registry = app.extensions["export_formats"]
    monkeypatch.setitem(registry._formats, "csv",  # noqa: SLF001
                        dataclasses.replace(registry.get("csv"), write=broken, fast_paths={}))
    token = auth.token()
    caplog.set_level(logging.ERROR)
    with pytest.raises(ConnectionError):  # the server drops the connection
        client.get(API, query_string={"year": 2025, "month": 6},
                   headers={"Authentication-Token": token}, buffered=True)
    assert "export guests_2025_06.csv failed: ConnectionError" in caplog.text
    assert "Working outside of application context" not in caplog.text
    assert exports(app) == [("failed", "ConnectionError")]


# --- 4. HEAD -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_head_is_no_export(app, client, auth, guests, fmt):
    app.config["EXPORT_MAX_CONCURRENT"] = 1
    token = auth.token()
    query = {"year": 2025, "month": 6, "format": fmt}
    with app.app_context():
        slot = backup_context(app).export_slots.acquire(1)  # every slot is taken
    try:
        head = client.head(API, query_string=query, headers={"Authentication-Token": token})
    finally:
        slot.release()
    assert head.status_code == 200 and head.data == b""
    assert exports(app) == []  # before: [('aborted', 'the export was closed before its end')]
    got = client.get(API, query_string=query, headers={"Authentication-Token": token},
                     buffered=True)
    for name in ("Content-Type", "Content-Disposition", "Cache-Control"):
        assert head.headers[name] == got.headers[name], name
    assert "X-Export-Rows" not in head.headers and got.headers["X-Export-Rows"] == "3"
    assert "Content-Length" not in head.headers  # the GET's length is not known either
    assert exports(app) == [("ok", None)]


def test_head_still_needs_an_admin_and_good_parameters(app, client, auth):
    assert client.head(API, query_string={"year": 2025, "month": 6}).status_code == 401
    token = auth.token()
    bad = client.head(API, query_string={"year": 2025, "month": 13},
                      headers={"Authentication-Token": token})
    assert bad.status_code == 400
    assert exports(app) == []


# --- 5. what gunicorn answers before the app -----------------------------------------

def test_api_md_names_the_limits_gunicorn_answers_itself():
    """414 and 431 (HTML) come from gunicorn under ``manage.py serve``, with the
    limits the server runs with; docs/api.md must not say every error is JSON."""
    from gunicorn.config import Config

    from guest_registration.server import server_options

    cfg = Config()
    for key, value in server_options("127.0.0.1", 8000, 1, 1).items():
        if key in cfg.settings:
            cfg.set(key, value)
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert "Every error is JSON" not in text
    assert f"`414`: a request line (method, path and query) over {cfg.limit_request_line} " \
           "bytes" in text
    assert f"`431`: a header over {cfg.limit_request_field_size} bytes (name and value), " \
           f"or more than {cfg.limit_request_fields} headers" in text
