"""Demo data: trips, registrations and guests over several months, UUID-named
guest photos and a few ordinary uploads, so the backup features have real work."""

from __future__ import annotations

import os
import random
import struct
import uuid
import zlib
from datetime import date, datetime, timedelta
from pathlib import Path

from flask import Flask

from .extensions import db
from .models import Guest, Registration, Trip

FIRST = ["Jana", "Petr", "Anna", "Lukáš", "Eva", "Jürgen", "Zoë", "Marie", "O'Brien", "Tomáš"]
LAST = ["Nováková", "Svoboda", "Müller", "Dvořák", "Smith, Jr.", "Černý", 'Doe "JD"', "Weiß"]
TRIPS = [
    ("Summer Vacation 2025", date(2025, 6, 20), date(2025, 6, 30), 4),
    ("Prague Christmas Markets", date(2025, 12, 12), date(2025, 12, 15), 6),
    ("Alps Ski Week", date(2026, 1, 24), date(2026, 1, 31), 8),
    ("Spring in Vienna", date(2026, 4, 10), date(2026, 4, 13), 3),
]


def tiny_png(rgb: tuple[int, int, int] = (30, 120, 200)) -> bytes:
    """A valid 1x1 PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"\x00" + bytes(rgb)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def tiny_pdf(text: str = "demo") -> bytes:
    """A small, valid-enough one-page PDF."""
    return (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
            b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
            b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]>>endobj\n"
            + f"% {text}\n".encode() + b"trailer<</Root 1 0 R>>\n%%EOF\n")


def write_ordinary_uploads(folder: Path) -> list[Path]:
    """Non-photo uploads that a system backup must keep."""
    files = {
        "logo.png": tiny_png((200, 40, 40)),
        "invoice-2025-06.pdf": tiny_pdf("invoice 2025-06"),
        "docs/terms-and-conditions.txt": "Terms: be nice.\n".encode(),
        "docs/sample images/beach.png": tiny_png((240, 220, 120)),
    }
    written = []
    for rel, data in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_bytes(data)
        written.append(path)
    return written


def _trips() -> list[tuple[str, date, date, int]]:
    """The fixed historical trips, plus two upcoming ones so the public page has
    something to register for whatever today is."""
    today = date.today()
    return TRIPS + [
        ("Autumn Lake Retreat", today + timedelta(days=30), today + timedelta(days=34), 4),
        ("Mountain Week", today + timedelta(days=75), today + timedelta(days=82), 6),
    ]


def load(app: Flask, force: bool = False, seed: int = 2025) -> str:
    """Add the demo data unless trips exist (or ``force``); return a one-line summary."""
    if not force and db.session.query(Trip.id).first() is not None:
        return "demo data skipped: the database already has trips"
    rnd = random.Random(seed)
    folder = Path(app.config["UPLOAD_FOLDER"])
    folder.mkdir(parents=True, exist_ok=True)
    write_ordinary_uploads(folder)
    n_reg = n_guest = n_photo = 0
    trips = _trips()
    for title, start, end, max_guests in trips:
        trip = Trip(title=title, start_date=start, end_date=end, max_guests=max_guests,
                    created_at=datetime.combine(start - timedelta(days=60), datetime.min.time()))
        db.session.add(trip)
        for r in range(rnd.randint(3, 5)):
            # registrations come before the trip, and never after today
            day = min(start - timedelta(days=rnd.randint(1, 40)),
                      date.today() - timedelta(days=rnd.randint(1, 20)))
            created = datetime.combine(day, datetime.min.time()) + timedelta(
                seconds=rnd.randint(0, 86399))
            reg = Registration(trip=trip, email=f"guest{n_reg + 1}@example.com",
                               language=rnd.choice(["en", "cs", "de"]),
                               status=rnd.choice(["pending", "approved", "approved"]),
                               created_at=created)
            db.session.add(reg)
            n_reg += 1
            for g in range(rnd.randint(1, max_guests)):
                photo = None
                if rnd.random() < 0.7:
                    ext = rnd.choice(["png", "pdf"])
                    photo = f"{uuid.UUID(int=rnd.getrandbits(128), version=4)}.{ext}"
                    fd = os.open(folder / photo, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    with os.fdopen(fd, "wb") as fh:  # a guest's document: this user only
                        fh.write(tiny_png() if ext == "png" else tiny_pdf(photo))
                    n_photo += 1
                db.session.add(Guest(
                    registration=reg, first_name=rnd.choice(FIRST), last_name=rnd.choice(LAST),
                    age_category="adult" if g == 0 else rnd.choice(["adult", "child"]),
                    document_type=rnd.choice(["passport", "id_card", "driving_license"]),
                    document_number=f"{rnd.choice('ABCXYZ')}{rnd.randint(1000000, 9999999)}",
                    document_photo=photo, gdpr_consent=True,
                    created_at=created + timedelta(seconds=g)))
                n_guest += 1
    db.session.commit()
    return (f"demo data loaded: {len(trips)} trips, {n_reg} registrations, {n_guest} guests, "
            f"{n_photo} guest photos and 4 ordinary uploads in {folder}")
