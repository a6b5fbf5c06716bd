"""The public registration form: real multipart posts, real files on disk."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from guest_registration.demo import tiny_pdf, tiny_png
from guest_registration.extensions import db
from guest_registration.models import Guest, Registration
from tests.helpers import csrf_token_from

UUID_NAME = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\.(png|jpg|pdf)$")
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 64 + b"\xff\xd9"


def guest_fields(i: int, photo: tuple[bytes, str] | None = None, consent: bool = True,
                 first: str = "Jana") -> dict:
    data = {
        f"guests-{i}-first_name": first,
        f"guests-{i}-last_name": "Nováková",
        f"guests-{i}-age_category": "adult",
        f"guests-{i}-document_type": "passport",
        f"guests-{i}-document_number": f"AB{i}12345",
    }
    if consent:
        data[f"guests-{i}-gdpr_consent"] = "y"
    if photo is not None:
        data[f"guests-{i}-document_photo"] = (io.BytesIO(photo[0]), photo[1])
    return data


def post(client, trip_id, *guests, email="family@example.com", csrf=True):
    page = client.get(f"/trips/{trip_id}/register?guests={len(guests)}")
    assert page.status_code == 200
    data = {"email": email, "language": "cs"}
    if csrf:
        data["csrf_token"] = csrf_token_from(page.get_data(as_text=True))
    for g in guests:
        data.update(g)
    return client.post(f"/trips/{trip_id}/register", data=data,
                       content_type="multipart/form-data")


def uploads(app) -> list[str]:
    folder = Path(app.config["UPLOAD_FOLDER"])
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def counts(app) -> tuple[int, int]:
    with app.app_context():
        return db.session.query(Registration).count(), db.session.query(Guest).count()


def test_trip_list_links_to_form(client, trip_id):
    html = client.get("/").get_data(as_text=True)
    assert "Lake Trip" in html and f"/trips/{trip_id}/register" in html


def test_registration_with_photos_creates_rows_and_uuid_files(client, app, trip_id):
    resp = post(client, trip_id, guest_fields(0, (tiny_png(), "passport photo.PNG")),
                guest_fields(1, (tiny_pdf(), "scan.pdf"), first="Petr"))
    assert resp.status_code == 302, resp.get_data(as_text=True)
    assert counts(app) == (1, 2)
    files = uploads(app)
    assert len(files) == 2 and all(UUID_NAME.match(f) for f in files), files
    assert {f.rsplit(".", 1)[1] for f in files} == {"png", "pdf"}
    with app.app_context():
        guests = db.session.query(Guest).order_by(Guest.id).all()
        assert sorted(g.document_photo for g in guests) == files
        assert guests[0].first_name == "Jana" and guests[0].gdpr_consent is True
        assert guests[0].registration.language == "cs"
        assert guests[0].created_at is not None
    stored = Path(app.config["UPLOAD_FOLDER"]) / guests[0].document_photo
    assert stored.read_bytes() in (tiny_png(), tiny_pdf())
    assert stored.stat().st_mode & 0o077 == 0


def test_photo_extension_comes_from_content(client, app, trip_id):
    resp = post(client, trip_id, guest_fields(0, (JPEG, "photo.png")))
    assert resp.status_code == 302
    assert uploads(app)[0].endswith(".jpg")


def test_photo_is_optional(client, app, trip_id):
    assert post(client, trip_id, guest_fields(0)).status_code == 302
    assert counts(app) == (1, 1) and uploads(app) == []


@pytest.mark.parametrize("case,guest,message", [
    ("missing consent", lambda: guest_fields(0, (tiny_png(), "a.png"), consent=False), "GDPR consent is required"),
    ("text renamed .jpg", lambda: guest_fields(0, (b"just some text\n" * 10, "photo.jpg")), "only JPEG, PNG or PDF"),
    ("oversize", lambda: guest_fields(0, (tiny_png()[:-12] + b"\x00" * (300 * 1024) + tiny_png()[-12:], "big.png")), "larger than"),
    ("zero bytes", lambda: guest_fields(0, (b"", "empty.png")), "the file is empty"),
    ("truncated png", lambda: guest_fields(0, (tiny_png()[:-12], "cut.png")), "not a complete PNG"),
])
def test_invalid_registration_stores_nothing(client, app, trip_id, case, guest, message):
    # a valid second guest with a photo must not be stored either
    resp = post(client, trip_id, guest(), guest_fields(1, (tiny_png(), "ok.png"), first="Petr"))
    assert resp.status_code == 400, case
    html = resp.get_data(as_text=True)
    assert message in html, case
    assert "nothing was saved" in html
    assert counts(app) == (0, 0)
    assert uploads(app) == []


def test_too_many_guests_is_refused(client, app, trip_id):
    resp = post(client, trip_id, guest_fields(0), guest_fields(1), guest_fields(2))
    assert resp.status_code == 400
    assert "At most 2 guests" in resp.get_data(as_text=True)
    assert counts(app) == (0, 0)


def test_registration_requires_csrf(client, app, trip_id):
    resp = post(client, trip_id, guest_fields(0, (tiny_png(), "a.png")), csrf=False)
    assert resp.status_code == 400
    assert counts(app) == (0, 0) and uploads(app) == []


def test_failed_commit_leaves_no_photo(client, app, trip_id, monkeypatch):
    """If the database refuses the rows, the photos already written are removed."""
    from sqlalchemy import event

    def boom(*args, **kwargs):
        raise RuntimeError("database went away")

    with app.app_context():
        event.listen(db.session, "before_commit", boom)
        try:
            with pytest.raises(RuntimeError):
                post(client, trip_id, guest_fields(0, (tiny_png(), "a.png")))
        finally:
            event.remove(db.session, "before_commit", boom)
    assert uploads(app) == []
    assert counts(app) == (0, 0)


def test_unknown_trip_is_404(client):
    assert client.get("/trips/999999/register").status_code == 404
