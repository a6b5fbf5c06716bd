"""The document photos of guests deleted in the admin: deleted once the delete
committed (as an erasure deletes an erased guest's), unless another guest still
names them. Left behind, a photo was named by no guest: the photo view,
retention, erasure and subject access never found it again."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import select

from ..extensions import db
from ..models import Guest, Registration, Trip


def photos_of(model: Guest | Registration | Trip) -> list[str]:
    """The document photos of the guests deleted with ``model`` (a guest, or the
    guests of a registration or a trip); read before the delete."""
    query = select(Guest.document_photo).where(Guest.document_photo.is_not(None))
    if isinstance(model, Guest):
        query = query.where(Guest.id == model.id)
    elif isinstance(model, Registration):
        query = query.where(Guest.registration_id == model.id)
    else:
        query = query.join(Registration).where(Registration.trip_id == model.id)
    return list(db.session.execute(query).scalars())


def delete_unnamed_photos(names: list[str], folder: str | os.PathLike) -> list[str]:
    """After the delete committed: delete those of ``names`` no guest names any
    more; the names that could not be deleted."""
    held = set(db.session.execute(select(Guest.document_photo).where(
        Guest.document_photo.in_(names))).scalars()) if names else set()
    return delete_photos([name for name in names if name not in held], folder)


def delete_photos(names: list[str], folder: str | os.PathLike) -> list[str]:
    """Delete these stored photos (never a file outside ``folder``), as an erasure
    does; the names that could not be deleted (a missing file is deleted)."""
    root, failed = Path(folder).resolve(), []
    for name in names:
        path = (root / name).resolve()
        if root not in path.parents:
            failed.append(name)
            continue
        try:
            path.unlink(missing_ok=True)
        except OSError:
            failed.append(name)
    return failed
