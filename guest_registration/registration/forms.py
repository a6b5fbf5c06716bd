"""Registration forms: one registration, 1..max_guests guests."""

from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import BooleanField, EmailField, FieldList, Form, FormField, SelectField, StringField
from wtforms.validators import DataRequired, Email, Length

from ..models import AGE_CATEGORIES, DOCUMENT_TYPES, LANGUAGES


class GuestForm(Form):
    """One guest (a sub-form: the CSRF token lives on the outer form)."""

    first_name = StringField("First name", validators=[DataRequired(), Length(max=100)])
    last_name = StringField("Last name", validators=[DataRequired(), Length(max=100)])
    age_category = SelectField("Age category", choices=list(AGE_CATEGORIES.items()))
    document_type = SelectField("Document type", choices=list(DOCUMENT_TYPES.items()))
    document_number = StringField("Document number", validators=[DataRequired(), Length(max=64)])
    document_photo = FileField("Document photo (JPEG, PNG or PDF)")
    gdpr_consent = BooleanField(
        "I consent to the processing of my personal data (GDPR)",
        validators=[DataRequired(message="GDPR consent is required for every guest.")],
    )


class RegistrationForm(FlaskForm):
    email = EmailField("E-mail", validators=[DataRequired(), Email(), Length(max=255)])
    language = SelectField("Language", choices=list(LANGUAGES.items()))
    guests = FieldList(FormField(GuestForm), min_entries=1)
