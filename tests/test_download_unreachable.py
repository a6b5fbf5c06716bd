"""Downloading an archive kept on the S3 remote while the endpoint cannot be
reached (it closes every connection, or nothing listens): 503 saying the storage
cannot be reached (the error page, or the API's JSON), never a 404 saying the
archive does not exist. Against moto's S3 server and real sockets."""

from __future__ import annotations

import pytest

from tests.helpers import make_backup
from tests.test_remote import BUCKET, PREFIX, SECRET, s3  # noqa: F401  (the fixture)
from tests.test_s3_hostile import Closer


@pytest.fixture
def backend() -> str:
    """SQLite only: the storage is what is tested here."""
    return "sqlite"


@pytest.fixture
def remote_only(app, s3, runner):  # noqa: F811
    """An archive on the S3 remote only (its local copy gone), and the endpoint's port."""
    app.config.update(BACKUP_REMOTE_URL=f"s3://{BUCKET}/{PREFIX}", BACKUP_S3_PART_MB=5)
    archive = make_backup(runner)
    archive.unlink()
    archive.with_name(archive.name + ".sig").unlink(missing_ok=True)
    port = s3.server._port
    s3.server.stop()
    return archive.name, port


@pytest.fixture(params=["closes", "nothing"])
def outage(request, remote_only):
    name, port = remote_only
    closer = Closer(port) if request.param == "closes" else None
    yield name
    if closer is not None:
        closer.sock.close()


def test_the_backup_page_download_says_the_storage_cannot_be_reached(outage, client, auth):
    auth.login()
    response = client.get(f"/admin/backup/download/{outage}")
    text = response.get_data(as_text=True)
    assert response.status_code == 503, (response.status_code, text[:300])
    assert "cannot be reached" in text and response.headers.get("Retry-After")
    assert SECRET not in text


def test_the_api_download_says_the_storage_cannot_be_reached(outage, client, auth):
    token = auth.token()
    response = client.get(f"/api/backup/archives/{outage}",
                          headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 503, (response.status_code, response.get_data()[:300])
    error = response.get_json()["error"]
    assert "cannot be reached" in error and "no such archive" not in error, error
    assert SECRET not in error and response.headers.get("Retry-After")


def test_an_archive_nowhere_is_still_404_while_the_remote_answers(app, s3, runner,  # noqa: F811
                                                                   client, auth):
    app.config.update(BACKUP_REMOTE_URL=f"s3://{BUCKET}/{PREFIX}", BACKUP_S3_PART_MB=5)
    make_backup(runner)
    token = auth.token()
    missing = "system_backup_20200101_000000.zip"
    response = client.get(f"/api/backup/archives/{missing}",
                          headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 404 and response.get_json()["error"] == "no such archive"
    auth.login()
    assert client.get(f"/admin/backup/download/{missing}").status_code == 404


def test_an_archive_the_storage_stops_answering_for_is_unreachable_not_gone(
        app, s3, runner):  # noqa: F811
    """The listing answered, then the endpoint went away before the archive was
    read: a plain StorageError (502 "bad gateway") where the storage could not be
    reached (503, retry later). Only "no such key" says the archive is gone."""
    from guest_backup.storages import StorageError, StorageUnreachable
    from guest_backup.wiring import backup_context

    app.config.update(BACKUP_REMOTE_URL=f"s3://{BUCKET}/{PREFIX}", BACKUP_S3_PART_MB=5)
    archive = make_backup(runner)
    with app.app_context():
        remote = backup_context(app).storages()[-1]
        missing = "system_backup_20000101_000000.zip"  # a name, but not there
        with pytest.raises(StorageError) as gone:
            remote.open(missing)
        assert not isinstance(gone.value, StorageUnreachable)
        s3.server.stop()
        with pytest.raises(StorageUnreachable, match="could not be reached"):
            remote.open(archive.name)
