"""Registration forms: one registration, 1..max_guests guests.

Labels are translated when shown (``lazy_gettext``); validation messages come
from WTForms' own catalogues through Flask-WTF (``WTF_I18N_ENABLED``)."""

from __future__ import annotations

import re

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import BooleanField, EmailField, FieldList, FormField, SelectField, StringField
from wtforms.validators import DataRequired, Email, Length, ValidationError

from ..i18n import choices, page_language
from ..models import AGE_CATEGORIES, DOCUMENT_TYPES, LANGUAGES


#: The most guests one registration takes, whatever a trip's ``max_guests``: each
#: entry is built, validated and rendered again; a multipart body has at most
#: ``MAX_FORM_PARTS`` (1000) parts, 7 of them per guest.
MAX_GUESTS = 100

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def plain_text(form, field) -> None:
    """No control characters (C0, C1, DEL) in a name or document number: they are
    never part of one, and an escape sequence typed into the public form was
    stored and then drove the terminal of the operator who searched an archive."""
    if field.data and _CONTROL.search(field.data):
        raise ValidationError(_l("This field may not contain control characters."))


class GuestForm(FlaskForm):
    """One guest (a sub-form: the CSRF token lives on the outer form). A FlaskForm
    so that its validation messages are translated like the outer form's."""

    class Meta:
        csrf = False

    first_name = StringField(_l("First name"),
                             validators=[DataRequired(), Length(max=100), plain_text])
    last_name = StringField(_l("Last name"),
                            validators=[DataRequired(), Length(max=100), plain_text])
    age_category = SelectField(_l("Age category"), choices=choices(AGE_CATEGORIES))
    document_type = SelectField(_l("Document type"), choices=choices(DOCUMENT_TYPES))
    document_number = StringField(_l("Document number"),
                                  validators=[DataRequired(), Length(max=64), plain_text])
    document_photo = FileField(_l("Document photo (JPEG, PNG or PDF)"))
    gdpr_consent = BooleanField(
        _l("I consent to the processing of my personal data (GDPR)"),
        validators=[DataRequired(message=_l("GDPR consent is required for every guest."))],
    )


class RegistrationForm(FlaskForm):
    email = EmailField(_l("E-mail"), validators=[DataRequired(), Email(), Length(max=255)])
    language = SelectField(_l("Language"), choices=list(LANGUAGES.items()),
                           default=page_language)
    #: a guard: the view refuses more guests than the trip takes before it builds this
    guests = FieldList(FormField(GuestForm), min_entries=1, max_entries=MAX_GUESTS)
