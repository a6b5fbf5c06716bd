"""Faults over a real socket against the real server process on PostgreSQL: a
client that hangs up in the middle of an export or an archive download, and a
database backend killed while an export streams."""

from __future__ import annotations

import http.client
import socket
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.helpers import ADMIN, USER, insert_bulk_guests
from tests.live_server import ARTIFACTS, pg_live_server

pytestmark = pytest.mark.live

ROWS = 120_000


@pytest.fixture(scope="module")
def server(pg_server, tmp_path_factory):
    with pg_live_server(pg_server, "gr_live_faults", tmp_path_factory.mktemp("live-faults"),
                        admin=ADMIN, user=USER,
                        log_path=ARTIFACTS / "live-server-faults.log") as srv:
        insert_bulk_guests(srv.engine, ROWS, 2024, 2, "Bulk")
        srv.token = srv.auth_token(ADMIN[0])
        yield srv


def open_transactions(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL")).scalar_one()


def last_export_outcome(engine) -> str:
    """The outcome of the newest export (written just after its connection is released)."""
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT outcome FROM audit_log WHERE action = 'export' ORDER BY id DESC LIMIT 1")).scalar_one()


def wait_until(predicate, timeout=15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def hang_up_after(server, path: str, nbytes: int, headers: dict) -> bytes:
    """Send a GET, read ``nbytes`` of the answer, then close the socket abruptly."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode())
    got = b""
    while len(got) < nbytes:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # RST: the server's next write fails
    return got


def full_export(server, fmt="csv") -> tuple[int, bytes, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("GET", f"/api/backup/guests?year=2024&month=2&format={fmt}",
                 headers={"Authentication-Token": server.token})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body, dict(resp.getheaders())


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_client_hanging_up_mid_export_releases_the_database(server, fmt):
    got = hang_up_after(server, f"/api/backup/guests?year=2024&month=2&format={fmt}", 200_000,
                        {"Authentication-Token": server.token})
    assert got.startswith(b"HTTP/1.1 200")
    assert wait_until(lambda: open_transactions(server.engine) == 0), \
        "the export's connection was not released after the client hung up"
    assert wait_until(lambda: last_export_outcome(server.engine) == "aborted")
    status, body, headers = full_export(server, fmt)  # the next request works, complete
    assert status == 200 and int(headers["X-Export-Rows"]) == ROWS
    assert body.count(b"\n") >= ROWS


def test_client_hanging_up_mid_archive_download(server):
    archive = Path(server.manage("backup").strip().splitlines()[-1])
    session = server.manage("auth-token", ADMIN[0]).strip().splitlines()[-1]
    got = hang_up_after(server, f"/admin/backup/download/{archive.name}", 1000,
                        {"Authentication-Token": session})
    assert got.startswith(b"HTTP/1.1 200")
    folder = server.backup_folder
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".backup")) == [archive.name, archive.name + ".sig"]
    assert open_transactions(server.engine) == 0
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("GET", f"/admin/backup/download/{archive.name}",
                 headers={"Authentication-Token": session})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == archive.read_bytes()


def test_database_backend_killed_mid_export_is_not_a_complete_answer(server):
    """A CSV that claims to be complete must be complete: the chunked stream ends
    without its final chunk, which every HTTP client reports as an error."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("GET", "/api/backup/guests?year=2024&month=2&format=csv",
                 headers={"Authentication-Token": server.token})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
    first = resp.read(100_000)
    with server.engine.connect() as killer:
        killer.execute(sa.text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"))
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        rest = resp.read()
        # if the kill came too late for this export, the body is complete: say so
        pytest.fail(f"the export finished before the backend was killed ({len(first) + len(rest)} bytes)")
    conn.close()
    assert wait_until(lambda: last_export_outcome(server.engine) == "failed")
