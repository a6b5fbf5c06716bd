"""Public pages: the trip list and the registration form of each trip."""

from __future__ import annotations

from datetime import date

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from werkzeug.datastructures import CombinedMultiDict, FileStorage, MultiDict

from ..extensions import csrf, db
from ..models import Guest, Registration, Trip
from .forms import MAX_GUESTS, RegistrationForm
from .storage import PhotoError, check_filename, check_photo, remove_photos, store_photo

bp = Blueprint("public", __name__)


@bp.get("/")
def index():
    trips = db.session.scalars(
        db.select(Trip).where((Trip.end_date.is_(None)) | (Trip.end_date >= date.today()))
        .order_by(Trip.start_date, Trip.id)
    ).all()
    return render_template("registration/index.html", trips=trips)


def _guest_count() -> int:
    try:
        return max(1, int(request.args.get("guests", "1")))
    except ValueError:
        return 1


@bp.route("/trips/<int:trip_id>/register", methods=["GET", "POST"])
def register(trip_id: int):
    trip = db.session.get(Trip, trip_id)
    if trip is None:
        abort(404)
    if trip.end_date is not None and trip.end_date < date.today():
        return render_template("error.html", code=410,
                               message=_("This trip has ended: registration is closed.")), 410
    limit = min(trip.max_guests, MAX_GUESTS)
    if request.method == "POST":
        csrf.protect()  # WTF_CSRF_CHECK_DEFAULT is off; browser forms check explicitly
        kept = _first_guests(limit)
        if kept is not None:  # too many: neither built, validated nor shown again
            form = RegistrationForm(formdata=kept)
            _check_guest_limits(form, limit, given=limit + 1)
            flash(_("Please correct the errors below; nothing was saved."), "error")
            return render_template("registration/register.html", form=form, trip=trip), 400
    form = RegistrationForm()
    if request.method == "GET":
        wanted = min(_guest_count(), limit)
        while len(form.guests.entries) < wanted:
            form.guests.append_entry()
    if request.method == "POST":
        if form.validate() and _check_guest_limits(form, limit) and _check_photos(form):
            _save(form, trip)
            return redirect(url_for(".thanks", trip_id=trip.id))
        flash(_("Please correct the errors below; nothing was saved."), "error")
    return render_template("registration/register.html", form=form, trip=trip), (
        400 if request.method == "POST" else 200
    )


@bp.get("/trips/<int:trip_id>/thanks")
def thanks(trip_id: int):
    trip = db.session.get(Trip, trip_id) or abort(404)
    return render_template("registration/thanks.html", trip=trip)


def _first_guests(limit: int) -> MultiDict | None:
    """The posted fields with only the first ``limit`` guests, or ``None`` when no
    more were sent. Counted on the raw field names, before the form builds an
    entry per ``guests-<n>-`` index given (40,000 of them: 69 s and an 89 MiB page)."""
    data = CombinedMultiDict([request.form, request.files])
    indices = {_guest_index(key) for key in data.keys()} - {None}
    if any(not (index.isascii() and len(index) <= 9) for index in indices):
        abort(400)  # WTForms' int() fails on "²" and on 4,300 digits: no form of ours
    indices = {index.lstrip("0") or "0" for index in indices}  # "03" is guest 3
    if len(indices) <= limit:
        return None
    first = set(sorted(indices, key=int)[:limit])
    return MultiDict([(key, value) for key, value in data.items(multi=True)
                      if _guest_index(key) is None
                      or (_guest_index(key).lstrip("0") or "0") in first])


def _guest_index(key: str) -> str | None:
    """``"03"`` for ``guests-03-first_name`` (a digit string, as WTForms reads it)."""
    prefix, _sep, rest = key.partition("-")
    index = rest.split("-", 1)[0]
    return index if prefix == "guests" and index.isdigit() else None


def _check_guest_limits(form: RegistrationForm, limit: int, given: int | None = None) -> bool:
    if (len(form.guests.entries) if given is None else given) > limit:
        form.guests.errors = [*form.guests.errors,  # a tuple until validated
                              _("At most %(num)s guests can register for this trip.", num=limit)]
        return False
    return True


def _check_photos(form: RegistrationForm) -> bool:
    """Validate every uploaded photo by content before anything is stored."""
    ok = True
    limit = current_app.config["MAX_PHOTO_BYTES"]
    for entry in form.guests.entries:
        field = entry.form.document_photo
        upload = field.data
        if not isinstance(upload, FileStorage) or not upload.filename:
            field.data = None
            continue
        try:
            check_filename(upload.filename)
            field.data = check_photo(upload.stream, limit)
        except PhotoError as exc:
            field.errors = [_("Document photo: %(reason)s.", reason=exc.translated())]
            ok = False
    return ok


def _save(form: RegistrationForm, trip: Trip) -> None:
    """Store the photos, then the rows; if the commit fails, remove the photos again."""
    folder = current_app.config["UPLOAD_FOLDER"]
    stored: list[str] = []
    try:
        registration = Registration(trip=trip, email=form.email.data.strip(),
                                    language=form.language.data)
        db.session.add(registration)
        for entry in form.guests.entries:
            g = entry.form
            photo_name = store_photo(g.document_photo.data, folder) if g.document_photo.data else None
            if photo_name:
                stored.append(photo_name)
            db.session.add(Guest(
                registration=registration,
                first_name=g.first_name.data.strip(),
                last_name=g.last_name.data.strip(),
                age_category=g.age_category.data,
                document_type=g.document_type.data,
                document_number=g.document_number.data.strip(),
                document_photo=photo_name,
                gdpr_consent=True,
            ))
        db.session.commit()
    except BaseException:
        db.session.rollback()
        remove_photos(stored, folder)
        raise
