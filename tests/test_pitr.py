"""Point-in-time recovery (issue 24) on REAL throwaway clusters (tests/pitr_cluster.py):
``pitr setup`` in two runs around its restart, recovery to a moment (the erasure
ledger re-applied) and to the end of the archive after a crash (the RPO), diff and
incr backups, ``info`` against pgBackRest's JSON and the page, health when
archiving breaks, an encrypted S3 repository over TLS (moto)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from guest_backup.ops.health import pitr_section
from guest_backup.physical import PitrError
from guest_backup.physical.config import PitrConfig
from guest_backup.physical.owner import Owner
from guest_backup.physical.pgbackrest import summarise
from guest_backup.physical.state import parse_target, pg_time
from guest_backup.wiring import backup_context
from guest_registration import create_app
from guest_registration.extensions import db
from tests.helpers import ADMIN, login_from, make_config
from tests.pitr_cluster import (OWNER, TestCluster, add_registrations, counts, moto_over_tls,
                                require)


@pytest.fixture
def cluster():
    """A running cluster with an empty ``guests`` database; gone after the test."""
    require()
    c = TestCluster.create()
    try:
        c.start()
        c.sql("CREATE DATABASE guests")
        yield c
    finally:
        c.cleanup()


def make_app(c: TestCluster, tmp_path: Path, **extra):
    """The app on the cluster's ``guests`` database (tables by its own setup), PITR on;
    a setting given as None is left out (its default applies)."""
    from guest_registration.maintenance import setup

    settings = {"PITR_PG_DATA": str(c.data), "PITR_PG_PORT": c.port,
                "PITR_PG_SOCKET": str(c.sock), "PITR_FOLDER": str(c.base / "pgbackrest"),
                "PITR_ARCHIVE_TIMEOUT": 10, **extra}
    config = {k: v for k, v in make_config(tmp_path, c.url("guests"), **settings).items()
              if v is not None}
    app = create_app(config, instance_path=str(c.base / "instance"))
    with app.app_context():
        list(setup(app, *ADMIN))
        db.session.remove()
    return app


def pitr(app, *args: str, code: int | None = 0):
    result = app.test_cli_runner().invoke(args=["pitr", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    if code is not None:
        assert result.exit_code == code, result.output
    return result.output


def restore(app, c: TestCluster, to: str, name: str) -> tuple[str, int]:
    """`pitr restore` into ``c.base/name``: its output and the new cluster's port."""
    out = pitr(app, "restore", "--to", to, "--into", str(c.base / name))
    return out, int(out.split("runs on port ")[1].split()[0])


def set_up(c: TestCluster, app) -> None:
    """The two runs of `pitr setup` with the restart between them."""
    first = pitr(app, "setup", "--apply", code=3)
    assert "archive_mode takes effect only after PostgreSQL restarts" in first, first
    c.restart()
    second = pitr(app, "setup", code=3)
    assert "OK   pgBackRest check passed" in second and "TODO no full backup yet" in second


@pytest.fixture
def pitr_app(cluster, tmp_path):
    app = make_app(cluster, tmp_path)
    set_up(cluster, app)
    yield app
    with app.app_context():
        db.engine.dispose()


def test_setup_prints_the_settings_and_names_a_folder_postgres_may_not_enter(cluster, tmp_path):
    app = make_app(cluster, tmp_path)
    printed = pitr(app, "setup", code=3)
    assert "ALTER SYSTEM SET archive_mode = 'on';" in printed
    assert f"--config={cluster.base / 'pgbackrest' / 'pgbackrest.conf'}" in printed
    assert cluster.value("SHOW archive_mode") == "off"  # printed, not applied
    conf = cluster.base / "pgbackrest" / "pgbackrest.conf"
    assert conf.stat().st_uid == cluster.data.stat().st_uid and conf.stat().st_mode & 0o777 == 0o600
    assert (cluster.base / "pgbackrest" / "lock").stat().st_uid == conf.stat().st_uid
    # a private folder that is not the app's instance folder is not opened: it is named
    (cluster.base / "closed").mkdir(mode=0o700)
    app.config["PITR_FOLDER"] = str(cluster.base / "closed" / "pgbackrest")
    refused = pitr(app, "setup", code=1)
    assert f"{OWNER} cannot reach" in refused and f"{cluster.base / 'closed'} (mode 0700" in refused
    assert "PITR_FOLDER" in refused and (cluster.base / "closed").stat().st_mode & 0o777 == 0o700
    app.config.update(PITR_FOLDER=str(cluster.base / "pgbackrest"),
                      PITR_REPO_PATH=str(cluster.base / "closed" / "repo"))
    assert "Set PITR_REPO_PATH to a folder" in pitr(app, "setup", code=1)
    busy = pitr(app, "restore", "--to", "latest", "--into", str(cluster.data / "x"), code=1)
    assert "running cluster's data directory" in busy
    (cluster.base / "full").mkdir()
    (cluster.base / "full" / "f").touch()
    assert "not an empty folder" in pitr(app, "restore", "--to", "latest", "--into",
                                         str(cluster.base / "full"), code=1)
    with app.app_context():
        db.engine.dispose()


def test_restore_to_a_moment_and_the_erasure_ledger(cluster, pitr_app):
    c = cluster
    add_registrations(c, 1000, "a")
    pitr(pitr_app, "backup", "--type", "full")
    add_registrations(c, 1000, "b")
    c.sql("SELECT pg_switch_wal()")
    time.sleep(1.2)
    moment = c.now()
    time.sleep(1.2)
    add_registrations(c, 1000, "c")
    erased = c.value("SELECT min(id) FROM guest", "guests")  # registered before the backup
    out = pitr_app.test_cli_runner().invoke(args=["erase", "--guest", erased, "--yes"])
    assert out.exit_code == 0, out.output

    started = time.monotonic()
    out, port = restore(pitr_app, c, moment, "recovered")
    print(f"restore to a moment: {time.monotonic() - started:.1f} s")
    assert counts(c, port) == {"trip": 1, "registration": 2000, "guest": 2000}
    assert counts(c) == {"trip": 1, "registration": 3000, "guest": 3000}  # untouched
    assert "1 erasures re-applied" in out
    assert c.value(f"SELECT first_name || document_number FROM guest WHERE id = {erased}",
                   "guests", port) == "[erased][erased]"
    assert c.value("SELECT version_num FROM alembic_version LIMIT 1", "guests", port) in out
    assert "DATABASE_URL='postgresql" in out and f"port={port}" in out
    assert c.value("SHOW archive_mode", port=port) == "off"
    assert c.sql("SELECT action, outcome FROM audit_log WHERE action LIKE 'pitr-%' ORDER BY id",
                 "guests") == [["pitr-backup", "ok"], ["pitr-restore", "ok"]]
    assert "erasure-ledger apply" in out
    _erased_meanwhile_then_applied(c, pitr_app, port)


def _erased_meanwhile_then_applied(c: TestCluster, app, port: int) -> None:
    """The recovered cluster is marked at the ledger's last line; a guest erased in
    the running cluster before the app is switched to it (found by a review: never
    re-applied) shows in health and comes out with ``erasure-ledger apply``."""
    import sqlalchemy as sa

    from guest_backup.ops.erasure_mark import apply_missing, behind, read_mark
    from guest_backup.ops.health import _erasure_problems
    from guest_backup.ops.ledger import ErasureLedger

    later = c.value("SELECT max(id) FROM guest WHERE first_name NOT LIKE '[%'", "guests", port)
    out = app.test_cli_runner().invoke(args=["erase", "--guest", later, "--yes"])
    assert out.exit_code == 0, out.output
    recovered = sa.create_engine(c.url("guests", port).replace("postgresql:",
                                                               "postgresql+psycopg2:"))
    try:
        with app.app_context():
            ctx = backup_context(app)
            ledger = ErasureLedger.in_folder(ctx.instance_path)
            assert behind(recovered, list(ledger.entries())) == (1, 2)
            assert [p.id for p in _erasure_problems(ctx, recovered)] == ["erasures_missing"]
            done = apply_missing(ctx, recovered, actor="dpo", via="cli")
            assert (done.mark, done.last, done.lines, done.changed) == (1, 2, 1, 1)
            assert behind(recovered, list(ledger.entries())) is None
            assert not _erasure_problems(ctx, recovered)
            with recovered.connect() as conn:
                assert read_mark(conn) == 2
            db.engine.dispose()
    finally:
        recovered.dispose()
    assert c.value(f"SELECT first_name FROM guest WHERE id = {later}", "guests", port) == \
        "[erased]"


def test_latest_after_a_crash_and_the_rpo(cluster, pitr_app):
    c = cluster
    pitr(pitr_app, "backup", "--type", "full")
    add_registrations(c, 1, "crash")
    time.sleep(15)  # archive_timeout=10s: the segment is switched and archived meanwhile
    c.kill()
    out, port = restore(pitr_app, c, "latest", "after-crash")
    assert c.value("SELECT count(*) FROM registration WHERE email LIKE '%-crash@%'",
                   "guests", port) == "1"
    c.stop_other(c.base / "after-crash")  # it is checked: its memory is for the next part

    c.start()  # crash recovery; archiving goes on
    # PostgreSQL 15 honours archive_timeout after crash recovery only from its next
    # checkpoint (up to checkpoint_timeout later): `pitr check` runs CHECKPOINT first
    assert pitr(pitr_app, "check").startswith("OK pgBackRest check")
    written = []
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:
        written.append(c.value(
            "INSERT INTO registration (trip_id, email, created_at) VALUES (1, 'rpo@example.org', "
            "clock_timestamp() AT TIME ZONE 'UTC') RETURNING extract(epoch FROM created_at)",
            "guests"))
        time.sleep(0.5)
    c.kill()
    out, port = restore(pitr_app, c, "latest", "rpo")
    kept = c.sql("SELECT count(*), coalesce(max(extract(epoch FROM created_at)), 0) "
                 "FROM registration WHERE email = 'rpo@example.org'", "guests", port)[0]
    lost_rows = len(written) - int(kept[0])
    rpo = float(written[-1]) - float(kept[1]) if int(kept[0]) else float(written[-1]) - float(
        written[0])
    print(f"RPO measured: {rpo:.1f} s of writes lost ({lost_rows} of {len(written)} "
          f"registrations written every 0.5 s), archive_timeout=10s")
    assert 0 < int(kept[0]) <= len(written)
    assert rpo <= 10 + 3


def test_diff_and_incr_backups_and_info_as_pgbackrest_says(cluster, pitr_app):
    c = cluster
    pitr(pitr_app, "backup", "--type", "full")
    add_registrations(c, 100, "a")
    diff = pitr(pitr_app, "backup", "--type", "diff")
    assert diff.startswith("diff backup ")
    time.sleep(1.2)  # pgBackRest's times are whole seconds
    after_diff = c.now()
    time.sleep(1.2)
    add_registrations(c, 100, "b")
    incr = pitr(pitr_app, "backup", "--type", "incr")
    assert incr.startswith("incr backup ")
    time.sleep(1.2)
    after_incr = c.now()
    time.sleep(1.2)
    add_registrations(c, 100, "c")
    for moment, expected, label in ((after_diff, 100, diff.split()[2].rstrip(":")),
                                    (after_incr, 200, incr.split()[2].rstrip(":"))):
        out, port = restore(pitr_app, c, moment, f"r{expected}")
        assert f"from backup {label}" in out and counts(c, port)["registration"] == expected

    raw = c.pgbackrest_info()
    ours = json.loads(pitr(pitr_app, "info", "--json"))
    theirs = [(b["label"], b["type"], b["info"]["size"], b["info"]["repository"]["delta"])
              for b in raw["backup"]]
    assert [(b["label"], b["type"], b["size"], b["repo_delta"]) for b in ours["backups"]] == theirs
    assert [t for _, t, _, _ in theirs] == ["full", "diff", "incr"]
    text = pitr(pitr_app, "info")
    assert all(label in text for label, *_ in theirs) and "You can recover to any moment" in text

    client = pitr_app.test_client()
    login_from(client, *ADMIN)
    page = client.get("/admin/pitr/").get_data(as_text=True)
    for label, kind, size, delta in theirs:
        assert (f'data-label="{label}" data-type="{kind}" data-size="{size}" '
                f'data-repo-size="{delta}"') in page
    assert "You can recover to any moment from" in page
    assert 'id="pitr-after-switch"' in page and "erasure-ledger apply" in page


def _pitr_health(app) -> dict:
    out = app.test_cli_runner().invoke(args=["backup-health"]).output
    return json.loads(out)["pitr"]


def test_health_fails_when_archiving_breaks_and_passes_when_repaired(cluster, tmp_path,
                                                                    monkeypatch):
    c = cluster
    app = make_app(c, tmp_path, PITR_MAX_WAL_DELAY=3)
    set_up(c, app)
    pitr(app, "backup", "--type", "full")
    drill = pitr(app, "drill")
    assert drill.startswith("OK PITR drill") and "erasures re-applied" in drill
    assert not list((c.base / "pgbackrest").glob("drill-*"))  # scratch cluster removed
    report = _pitr_health(app)
    assert report["status"] == "healthy", report["problems"]

    c.sql("ALTER SYSTEM SET archive_command = 'false'")
    c.sql("SELECT pg_reload_conf()")
    time.sleep(0.5)
    add_registrations(c, 10, "x")
    c.sql("SELECT pg_switch_wal()")
    time.sleep(4.5)  # PITR_MAX_WAL_DELAY=3
    report = _pitr_health(app)
    assert report["status"] == "unhealthy" and report["archiver"]["failing"]
    assert any(p.startswith("WAL archiving is failing") for p in report["problems"]), report
    monkeypatch.setattr(Owner, "can_act", lambda self: False)  # as the web server's user
    seen = _pitr_health(app)  # pgBackRest's kept info, the archiver through the app's database
    assert not seen["live"] and seen["backups"] == report["backups"]
    assert seen["archiver"]["ready"] >= 1 and "WAL archiving is failing" in seen["problems"][0]
    monkeypatch.undo()

    repaired = pitr(app, "setup", "--apply", code=None)
    assert "set with ALTER SYSTEM: archive_command" in repaired, repaired
    c.wait_archived()
    report = _pitr_health(app)
    assert report["status"] == "healthy", report["problems"]
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def s3_tls(tmp_path, monkeypatch):
    """moto's S3 over TLS (a self-signed certificate), boto3's standard variables."""
    import boto3

    with moto_over_tls(tmp_path) as endpoint:
        for name, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "pitr-access-key",
                            "AWS_SECRET_ACCESS_KEY": "pitr-secret-KEY-never-shown",
                            "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(name, value)
        client = boto3.client("s3", verify=False)
        client.create_bucket(Bucket="pitr-bucket")
        yield client


@pytest.mark.filterwarnings("ignore:Unverified HTTPS request")
def test_s3_repository_over_tls_encrypted(cluster, tmp_path, s3_tls):
    c = cluster
    secret = "cipher-pass-never-shown"
    app = make_app(c, tmp_path, PITR_REPO_S3_URL="s3://pitr-bucket/site-a",
                   PITR_S3_VERIFY_TLS=False, PITR_S3_URI_STYLE="path", PITR_CIPHER_PASS=secret)
    set_up(c, app)
    add_registrations(c, 50, "s3")
    full = pitr(app, "backup", "--type", "full")
    add_registrations(c, 50, "s3b")
    out, port = restore(app, c, "latest", "from-s3")
    assert counts(c, port)["registration"] == 100
    keys = [o["Key"] for page in s3_tls.get_paginator("list_objects_v2").paginate(
        Bucket="pitr-bucket", Prefix="site-a/") for o in page.get("Contents", [])]
    assert any(k.startswith("site-a/archive/guest-registration/15-1/") for k in keys)
    assert any(k.startswith("site-a/backup/guest-registration/") for k in keys)
    assert not any(Path(c.base / "pgbackrest" / "repo").glob("*"))  # nothing local
    info = pitr(app, "info")
    assert "cipher aes-256-cbc" in info and "s3://pitr-bucket/site-a" in info
    for text in (full, out, info):
        assert secret not in text and "pitr-secret-KEY-never-shown" not in text
    with app.app_context():
        db.engine.dispose()


# --------------------------------------------------------------------------- no cluster needed

def test_pgbackrest_errors_are_one_line_without_secrets():
    stderr = ("2026-12-04 10:00:00.000 P00  ERROR: [055]: unable to load info file "
              "'/x/backup.info' with key s3cr3t:\n       FileMissingError: more\n       HINT: …")
    assert summarise(stderr, ["s3cr3t"]) == (55, "unable to load info file '/x/backup.info' "
                                                 "with key ***:")
    assert summarise("ERROR: [050]: unable to acquire lock", [])[0] == 50


def test_s3_settings_become_pgbackrest_options():
    config = {"PITR_PG_DATA": "/var/lib/postgresql/15/main", "PITR_FOLDER": "/srv/pitr",
              "PITR_REPO_S3_URL": "s3://bucket/site/a", "PITR_S3_URI_STYLE": "path",
              "PITR_S3_VERIFY_TLS": False, "PITR_CIPHER_PASS": "pass"}
    env = {"AWS_ENDPOINT_URL": "https://minio.local:9000", "AWS_DEFAULT_REGION": "eu-1",
           "AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK"}
    text = PitrConfig.from_config(config, env).render()
    for line in ("repo1-type=s3", "repo1-path=/site/a", "repo1-s3-bucket=bucket",
                 "repo1-s3-endpoint=minio.local", "repo1-storage-port=9000",
                 "repo1-s3-region=eu-1", "repo1-s3-uri-style=path", "repo1-storage-verify-tls=n",
                 "repo1-s3-key=AK", "repo1-s3-key-secret=SK", "repo1-cipher-type=aes-256-cbc",
                 "lock-path=/srv/pitr/lock", "pg1-path=/var/lib/postgresql/15/main"):
        assert line in text.splitlines(), line
    with pytest.raises(PitrError, match="TLS only"):
        PitrConfig.from_config(config, {**env, "AWS_ENDPOINT_URL": "http://minio.local:9000"})
    assert PitrConfig.from_config({**config, "PITR_PG_DATA": ""}, env) is None


def test_recovery_targets():
    when = parse_target("2026-12-04 17:39:00+01")
    assert when == datetime(2026, 12, 4, 16, 39, tzinfo=timezone.utc)
    assert parse_target("latest") is None
    assert pg_time(when) == "2026-12-04 16:39:00.000000+00"
    with pytest.raises(PitrError, match="not a moment"):
        parse_target("yesterday at five")


def test_pitr_is_off_until_configured(tmp_path):
    app = create_app(make_config(tmp_path, f"sqlite:///{tmp_path / 'off.db'}"),
                     instance_path=str(tmp_path / "instance"))
    assert "point-in-time recovery is off" in pitr(app, "info")
    assert "set PITR_PG_DATA" in pitr(app, "backup", code=1)
    with app.app_context():
        assert pitr_section(backup_context(app), None, None, None) == (None, [])


def test_an_unexpected_failure_of_a_recovery_is_audited_and_named(cluster, pitr_app,
                                                                  monkeypatch):
    """Before, only a BackupError was audited: any other failure of ``pitr restore``
    or ``pitr drill`` left no audit entry (and its text to the command's caller)."""
    from guest_backup.ops import pitr as pitr_ops

    def broken(*args, **kwargs):
        raise TypeError("an internal detail")

    monkeypatch.setattr(pitr_ops, "recover", broken)
    monkeypatch.setattr(pitr_ops, "random_moment", broken)  # the drill's first step
    out = pitr(pitr_app, "restore", "--to", "latest", "--into",
               str(cluster.base / "never"), code=1)
    assert "the point-in-time recovery failed (TypeError)" in out
    assert "internal detail" not in out and "Traceback" not in out
    drill = pitr(pitr_app, "drill", code=1)
    assert "the point-in-time recovery failed (TypeError)" in drill
    assert "internal detail" not in drill
    rows = cluster.sql("SELECT action, outcome, message FROM audit_log "
                       "WHERE action LIKE 'pitr-%' ORDER BY id", "guests")
    assert [r[:2] for r in rows][-2:] == [["pitr-restore", "failed"], ["pitr-drill", "failed"]]
    assert all("internal detail" not in r[2] for r in rows)


def test_a_recovery_keeps_the_apps_secrets_and_leaves_nothing_when_it_fails(
        cluster, pitr_app, monkeypatch):
    """Three findings of a review, on a real cluster and pgBackRest:
    - the app's whole environment (its SECRET_KEY, passwords, keys) went to every
      tool run as the owner, and stayed in the recovered postmaster's, readable by
      its owner in /proc for as long as it runs;
    - a recovery that failed left its folder full: a copy of the database whose
      erasures were never re-applied, and a retry into it was refused;
    - the live cluster's own port was accepted while it was down."""
    c = cluster
    pitr(pitr_app, "backup", "--type", "full")
    add_registrations(c, 2, "kept")
    monkeypatch.setenv("GR_APP_SECRET", "never-in-postgres-4711")
    out, port = restore(pitr_app, c, "latest", "r1")
    pid = (c.base / "r1" / "postmaster.pid").read_text().split()[0]
    assert b"never-in-postgres-4711" not in Path(f"/proc/{pid}/environ").read_bytes()
    c.stop_other(c.base / "r1")

    c.kill()
    time.sleep(1)
    late = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(time.time() - 1))
    out = pitr(pitr_app, "restore", "--to", late, "--into", str(c.base / "r2"), code=1)
    assert "was emptied" in out, out
    assert not (c.base / "r2").exists()
    out = pitr(pitr_app, "restore", "--to", "latest", "--into", str(c.base / "r3"),
               "--port", str(c.port), code=1)
    assert "the running cluster's own" in out and not (c.base / "r3").exists()
    out, port = restore(pitr_app, c, "latest", "r2")  # the retry goes in
    assert c.value("SELECT count(*) FROM registration WHERE email LIKE '%-kept@%'",
                   "guests", port) == "2"
    c.stop_other(c.base / "r2")


def test_a_cluster_configured_outside_its_data_directory_with_more_connections(tmp_path):
    """Debian's layout (configuration in /etc) and max_connections raised to 150:
    the recovered cluster got a minimal configuration with PostgreSQL's default
    100, and PostgreSQL refused to replay ("max_connections = 100 is a lower
    setting than on the primary server"): every recovery and drill failed."""
    from tests.pitr_cluster import EtcCluster

    require()
    c = EtcCluster.create(max_connections="150")
    try:
        c.start()
        c.sql("CREATE DATABASE guests")
        app = make_app(c, tmp_path)
        set_up(c, app)
        add_registrations(c, 3, "etc")
        pitr(app, "backup", "--type", "full")
        out, port = restore(app, c, "latest", "r1")
        assert c.value("SHOW max_connections", port=port) == "150"
        assert c.value("SELECT count(*) FROM registration WHERE email LIKE '%-etc@%'",
                       "guests", port) == "3"
        c.stop_other(c.base / "r1")
        with app.app_context():
            db.engine.dispose()
    finally:
        c.cleanup()


def test_a_moment_already_archived_is_recovered_while_archiving_is_broken(cluster, pitr_app):
    """The running cluster's archiving broken (when recovering is likely): a moment
    the archive already holds was refused until production was stopped, because
    making "now" recoverable came first and failed. Now it goes on, and says so;
    ``latest`` (which means now) is still refused."""
    c = cluster
    pitr(pitr_app, "backup", "--type", "full")
    add_registrations(c, 2, "before")
    time.sleep(1.2)
    moment = c.now()
    time.sleep(1.2)
    add_registrations(c, 2, "after")
    c.sql("SELECT pg_switch_wal()")
    c.wait_archived()
    c.sql("ALTER SYSTEM SET archive_command = '/bin/false'")
    c.sql("SELECT pg_reload_conf()")
    out, port = restore(pitr_app, c, moment, "r1")
    assert "note: the running cluster's latest writes could not be archived" in out, out
    assert c.value("SELECT count(*) FROM registration WHERE email LIKE '%-before@%'",
                   "guests", port) == "2"
    assert c.value("SELECT count(*) FROM registration WHERE email LIKE '%-after@%'",
                   "guests", port) == "0"
    c.stop_other(c.base / "r1")
    out = pitr(pitr_app, "restore", "--to", "latest", "--into", str(c.base / "r2"), code=1)
    assert "Error:" in out and not (c.base / "r2").exists()


def test_a_drill_whose_scratch_cluster_cannot_be_removed_still_reports_and_audits(
        cluster, pitr_app, monkeypatch):
    """The removal ran in ``finally``: its failure replaced the drill's outcome, so a
    good drill was reported failed with the removal's words and left no audit entry."""
    from guest_backup.physical import PitrError, recovery

    real, left = recovery.remove, []

    def stuck(scratch):
        left.append(scratch)
        raise PitrError("pg_ctl stop did not finish within 60 s")

    pitr(pitr_app, "backup", "--type", "full")
    monkeypatch.setattr(recovery, "remove", stuck)
    try:
        out = pitr(pitr_app, "drill")
    finally:
        for scratch in left:
            real(scratch)
    assert out.startswith("OK PITR drill; WARNING the scratch cluster in "), out
    assert "could not be stopped and removed (pg_ctl stop did not finish" in out
    rows = cluster.sql("SELECT action, outcome, message FROM audit_log "
                       "WHERE action = 'pitr-drill' ORDER BY id", "guests")
    assert rows[-1][1] == "ok" and "could not be stopped and removed" in rows[-1][2]


def test_a_recovery_whose_erasures_cannot_be_re_applied_leaves_no_copy(cluster, pitr_app):
    """Before, a recovered cluster whose erasure ledger could not be re-applied (its
    key missing, here) kept running with the error: a copy of the database in which
    a guest the ledger says was erased was back, name and document number, on a
    port the app could be switched to. Now it goes as a recovery that did not finish
    does; with the key put back, the same folder takes the recovery."""
    c = cluster
    add_registrations(c, 3, "before")
    pitr(pitr_app, "backup", "--type", "full")
    time.sleep(1.2)
    moment = c.now()  # before the erasure: the copy holds the guest whole
    time.sleep(1.2)
    erased = c.value("SELECT min(id) FROM guest", "guests")
    out = pitr_app.test_cli_runner().invoke(args=["erase", "--guest", erased, "--yes"])
    assert out.exit_code == 0, out.output
    key = c.base / "instance" / "erasure_ledger_key"
    kept = key.read_bytes()
    key.unlink()

    out = pitr(pitr_app, "restore", "--to", moment, "--into", str(c.base / "r1"), code=1)
    assert "the erasure ledger key" in out and "is missing" in out, out
    assert "was emptied" in out, out
    assert not (c.base / "r1").exists()
    sockets = sorted(p.name for p in c.sock.glob(".s.PGSQL.*") if not p.name.endswith(".lock"))
    assert sockets == [f".s.PGSQL.{c.port}"]  # nothing but the live cluster listens
    rows = c.sql("SELECT action, outcome FROM audit_log WHERE action = 'pitr-restore'", "guests")
    assert rows == [["pitr-restore", "failed"]]

    key.write_bytes(kept)
    out, port = restore(pitr_app, c, moment, "r1")
    assert "1 erasures re-applied" in out
    assert c.value(f"SELECT first_name || document_number FROM guest WHERE id = {erased}",
                   "guests", port) == "[erased][erased]"
    c.stop_other(c.base / "r1")
