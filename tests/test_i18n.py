"""The pages in Czech, Slovak and German (Flask-Babel): the registration form and
its validation messages, the language picker, the login page, the admin lists,
the Backup page, page formatting, a third-party plugin's own catalogue, and an
API whose bytes do not depend on Accept-Language. The catalogues themselves are
checked in ``test_i18n_catalogues.py``."""

from __future__ import annotations

import html
import importlib.util
import json
import re
from datetime import datetime

import pytest
from babel.support import Translations

import flask_admin
from guest_registration import create_app, hookimpl
from guest_registration.extensions import db
from guest_registration.formatting import human_size
from guest_registration.i18n import Catalog, page_size, page_timestamp, page_yes_no
from guest_registration.models import Guest, Registration
from guest_registration.plugins import DuplicateNameError
from tests.helpers import API, ROOT, csrf_token_from, make_backup, make_config

ENGLISH_FORM = ("First name", "Last name", "Register", "Document type", "Age category")


def visible(response) -> str:
    """The text a person sees: no scripts, styles, tags or attribute values."""
    page = re.sub(r"<(script|style)\b.*?</\1>", " ", response.get_data(as_text=True), flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


def lang(code: str) -> dict:
    return {"Accept-Language": code}


@pytest.mark.parametrize("code, words", [
    ("cs", ("Jméno", "Příjmení", "Registrovat", "Typ dokladu", "Souhlasím se zpracováním")),
    ("sk", ("Meno", "Priezvisko", "Registrovať", "Typ dokladu", "Súhlasím so spracovaním")),
    ("de", ("Vorname", "Nachname", "Anmelden", "Dokumentart", "Ich willige")),
    ("en", ENGLISH_FORM),
])
def test_registration_form_in_the_browsers_language(client, trip_id, code, words):
    text = visible(client.get(f"/trips/{trip_id}/register", headers=lang(code)))
    for word in words:
        assert word in text, (code, word)
    if code != "en":
        assert not [w for w in ENGLISH_FORM if w in text], text


def test_no_accept_language_is_english(client, trip_id):
    response = client.get(f"/trips/{trip_id}/register")
    assert '<html lang="en">' in response.get_data(as_text=True)
    assert all(w in visible(response) for w in ENGLISH_FORM)
    assert "Accept-Language" in response.headers["Vary"]


def test_a_regional_browser_language_and_quality_values(client, trip_id):
    text = visible(client.get(f"/trips/{trip_id}/register",
                              headers=lang("fr-FR, sk-SK;q=0.9, en;q=0.5")))
    assert "Priezvisko" in text


def test_language_field_offers_four_and_defaults_to_the_page(client, trip_id):
    page = client.get(f"/trips/{trip_id}/register", headers=lang("sk")).get_data(as_text=True)
    select = re.search(r'<select[^>]*name="language".*?</select>', page, re.S).group(0)
    options = re.findall(r'<option([^>]*)value="(\w+)"[^>]*>([^<]+)</option>', select)
    assert [(v, label) for _, v, label in options] == [
        ("en", "English"), ("cs", "Čeština"), ("sk", "Slovenčina"), ("de", "Deutsch")]
    assert re.search(r'<option selected value="sk"|<option value="sk" selected', select)


def test_missing_consent_in_czech_answers_in_czech(client, trip_id, app):
    page = client.get(f"/trips/{trip_id}/register", headers=lang("cs"))
    response = client.post(f"/trips/{trip_id}/register", headers=lang("cs"), data={
        "csrf_token": csrf_token_from(page.get_data(as_text=True)), "email": "",
        "language": "cs", "guests-0-first_name": "Jana", "guests-0-last_name": "Nová",
        "guests-0-age_category": "adult", "guests-0-document_type": "passport",
        "guests-0-document_number": "X1"})
    text = visible(response)
    assert response.status_code == 400
    assert "Souhlas GDPR je nutný u každého hosta." in text
    assert "Toto pole je povinné." in text  # the e-mail: WTForms' own Czech catalogue
    assert "Opravte prosím chyby níže; nic nebylo uloženo." in text
    assert "This field is required" not in text and "GDPR consent is required" not in text
    with app.app_context():
        assert db.session.query(Registration).count() == 0


def test_registration_keeps_the_language_code(client, trip_id, app):
    page = client.get(f"/trips/{trip_id}/register", headers=lang("sk"))
    response = client.post(f"/trips/{trip_id}/register", headers=lang("sk"), data={
        "csrf_token": csrf_token_from(page.get_data(as_text=True)), "email": "a@example.com",
        "language": "sk", "guests-0-first_name": "Ján", "guests-0-last_name": "Nový",
        "guests-0-age_category": "child", "guests-0-document_type": "id_card",
        "guests-0-document_number": "X1", "guests-0-gdpr_consent": "y"})
    assert response.status_code == 302
    assert "Ďakujeme!" in visible(client.get(response.headers["Location"], headers=lang("sk")))
    with app.app_context():
        assert db.session.query(Registration.language).scalar() == "sk"
        assert db.session.query(Guest.age_category).scalar() == "child"


def pick(client, code: str, next_: str, page: str = "/"):
    token = csrf_token_from(client.get(page).get_data(as_text=True))
    return client.post("/language", data={"csrf_token": token, "language": code, "next": next_})


def test_picker_switches_and_keeps_the_language_across_pages(client, trip_id):
    response = pick(client, "sk", f"/trips/{trip_id}/register?guests=2")
    assert response.status_code == 302
    assert response.headers["Location"] == f"/trips/{trip_id}/register?guests=2"
    # the session wins over the browser's Accept-Language, on every page
    assert "Priezvisko" in visible(client.get(f"/trips/{trip_id}/register", headers=lang("de")))
    assert "Registrácia na zájazd" in visible(client.get("/", headers=lang("de")))
    login = visible(client.get("/login", headers=lang("cs")))
    assert "E-mailová adresa" in login and "Zapamätať si ma" in login
    pick(client, "en", "/")
    assert "Register for a trip" in visible(client.get("/", headers=lang("cs")))


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "/\\evil.example",
                                    "http:/x", "javascript:alert(1)", "/ok\r\nSet-Cookie: x=1", ""])
def test_picker_never_redirects_off_site(client, trip_id, target):
    response = pick(client, "cs", target)
    assert response.status_code == 302 and response.headers["Location"] == "/"


def test_picker_refuses_unknown_languages_and_missing_csrf(client, trip_id):
    token = csrf_token_from(client.get("/").get_data(as_text=True))
    assert client.post("/language", data={"csrf_token": token, "language": "fr"}).status_code == 400
    assert client.post("/language", data={"language": "cs", "next": "/"}).status_code == 400
    assert "Register for a trip" in visible(client.get("/"))


def test_lang_parameter_sets_the_language_and_keeps_it(client, trip_id):
    """``?lang=cs`` on any page: Czech, over Accept-Language, kept in the session
    exactly like the picker's choice."""
    assert "Registrace na zájezd" in visible(client.get("/?lang=cs", headers=lang("de")))
    assert "Registrace na zájezd" in visible(client.get("/"))  # no parameter: still Czech
    assert "Jméno" in visible(client.get(f"/trips/{trip_id}/register", headers=lang("sk")))
    with client.session_transaction() as session:
        assert session["language"] == "cs"  # where the picker keeps its choice
    assert "E-Mail-Adresse" in visible(client.get("/login?lang=de"))  # any page, here the login
    assert "Für eine Reise anmelden" in visible(client.get("/"))
    pick(client, "sk", "/")  # the picker still switches after it
    assert "Registrácia na zájazd" in visible(client.get("/"))


@pytest.mark.parametrize("value", ["fr", "", "CS", "cs_CZ", "xx"])
def test_an_unknown_lang_parameter_is_ignored(client, value):
    response = client.get(f"/?lang={value}", headers=lang("de"))
    assert response.status_code == 200
    assert "Für eine Reise anmelden" in visible(response)  # Accept-Language as before
    with client.session_transaction() as session:
        assert "language" not in session
    pick(client, "cs", "/")
    assert "Registrace na zájezd" in visible(client.get(f"/?lang={value}"))  # the kept choice


def test_lang_parameter_leaves_the_api_alone(client):
    response = client.get("/api/no-such-thing?lang=cs")
    assert response.status_code == 404 and response.get_json() == {"error": "page not found"}
    with client.session_transaction() as session:
        assert "language" not in session


def test_the_picker_comes_back_without_the_lang_parameter(client):
    page = client.get("/?lang=cs&x=1").get_data(as_text=True)
    assert 'name="next" value="/?x=1"' in page  # else picking German would go back to Czech
    response = pick(client, "de", "/?x=1", page="/?lang=cs")
    assert response.headers["Location"] == "/?x=1"
    assert "Für eine Reise anmelden" in visible(client.get(response.headers["Location"]))


@pytest.mark.parametrize("code, label", [("cs", "Přepnout navigaci"), ("sk", "Prepnúť navigáciu"),
                                         ("de", "Navigation umschalten"),
                                         ("en", "Toggle navigation")])
def test_the_menu_toggler_is_translated(client, auth, code, label):
    assert f'aria-label="{label}"' in client.get("/login", headers=lang(code)).get_data(as_text=True)
    auth.login()
    for path in ("/admin/", "/admin/guest/"):
        page = client.get(path, headers=lang(code)).get_data(as_text=True)
        assert f'aria-label="{label}"' in page, (code, path)


def test_every_page_has_the_picker(client, auth, trip_id):
    auth.login()
    for path in ("/", f"/trips/{trip_id}/register", "/admin/", "/admin/guest/", "/admin/backup/",
                 "/no-such-page"):
        page = client.get(path).get_data(as_text=True)
        assert 'id="language-picker"' in page, path
        assert all(f'name="language" value="{c}"' in page for c in ("en", "cs", "sk", "de"))


@pytest.mark.parametrize("code, words, english", [
    ("cs", ("E-mailová adresa", "Heslo", "Zapamatovat si mě", "Přihlásit se"), "Email Address"),
    ("sk", ("E-mailová adresa", "Heslo", "Zapamätať si ma", "Prihlásiť sa"), "Email Address"),
    ("de", ("E-Mail-Adresse", "Passwort", "Einloggen"), "Email Address"),  # Flask-Security's own
])
def test_login_page_is_translated(client, code, words, english):
    text = visible(client.get("/login", headers=lang(code)))
    assert all(w in text for w in words), text
    assert english not in text and "Remember Me" not in text and "Log in" not in text


def test_failed_login_says_so_in_czech(client):
    token = csrf_token_from(client.get("/login").get_data(as_text=True))
    response = client.post("/login", headers=lang("cs"), data={
        "csrf_token": token, "email": "admin@example.com", "password": "wrong"})
    assert "Přihlášení se nezdařilo" in visible(response)


def test_admin_list_uses_flask_admins_own_czech(client, auth, trip_id):
    auth.login()
    theirs = Translations.load(flask_admin.translations.__path__[0], ["cs"], "admin")
    text = visible(client.get("/admin/guest/", headers=lang("cs")))
    for english in ("List", "Create", "Add Filter", "Search"):
        assert theirs.gettext(english) != english and theirs.gettext(english) in text, english
    for ours in ("Jméno", "Příjmení", "Číslo dokladu", "Souhlas GDPR", "Vytvořeno (UTC)",
                 "Zájezdy", "Hosté", "Protokol auditu", "Odhlásit se"):
        assert ours in text, ours
    audit = visible(client.get("/admin/audit/", headers=lang("cs")))
    assert all(w in audit for w in ("Zahájeno (UTC)", "Dokončeno (UTC)", "Kanál", "Výsledek"))


def test_backup_page_in_czech(client, auth, runner):
    archive = make_backup(runner).name
    auth.login()
    response = client.get("/admin/backup/", headers=lang("cs"))
    text = visible(response)
    for word in ("Záloha", "Záloha systému", "Vytvořit zálohu systému", "Archivy", "Název",
                 "Datum (UTC)", "Velikost", "Kde", "Ověřeno", "Akce", "Stáhnout", "Ověřit",
                 "Smazat", "Měsíční záloha hostů", "Náhled", "Nedávná činnost", "záloha"):
        assert word in text, word
    for english in ("Create system backup", "Download", "Verify", "Delete", "Archives",
                    "Recent activity", "Monthly guest backup", "Preview"):
        assert english not in text, english
    assert archive in text
    # the health problems, which the CLI prints in English, are Czech on the page
    assert "zatím žádná zkušební obnova (spusťte: manage.py restore-test)" in text
    assert "no restore drill yet" not in text
    size = re.search(rf"{archive}.*?(\d+,\d) (KiB|MiB)", text)  # the Czech decimal comma
    assert size, text
    texts = json.loads(html.unescape(re.search(r"data-texts='([^']*)'",
                                               response.get_data(as_text=True)).group(1)))
    assert texts["running"] == "Záloha probíhá: {stage}, zapsáno {size}…"
    assert texts["confirm_delete"] == "Smazat {name}? Tuto akci nelze vrátit."
    assert texts["stages"]["database"] == "databáze" and texts["decimal"] == ","
    # an export format's label, from the CSV format plugin's own catalogue
    assert 'data-format="csv">CSV (tabulka)</option>' in response.get_data(as_text=True)


def test_format_labels_translate_on_pages_only(client, auth, runner):
    auth.login()
    german = client.get("/admin/backup/", headers=lang("de")).get_data(as_text=True)
    english = client.get("/admin/backup/").get_data(as_text=True)
    assert 'data-format="csv">CSV (Tabelle)</option>' in german
    assert 'data-format="csv">CSV (spreadsheet)</option>' in english
    # the catalogue comes through the plugin's own hook, as a third party's would
    listing = runner.invoke(args=["plugins"]).output
    csv_hooks = listing.split("csv: ", 1)[1].splitlines()[1]
    assert "register_translations" in csv_hooks, listing


def test_every_health_problem_has_its_translation(app):
    """Health problems travel as an id and parameters and are translated where shown
    (never parsed back out of English)."""
    from guest_backup.ops.health_problems import MESSAGES, Problem
    from guest_backup.web.views import problem_text

    values = {"storage": "s3", "age": "3d", "limit": "26h", "at": "2025-06-01T02:00:00Z",
              "message": "disk full: 100% used", "count": "10", "names": "x.zip", "days": "30",
              "reason": "the bucket has no Object Lock", "mark": "7", "last": "12",
              "name": "system_backup_20991231_000000.zip", "created": "2099-12-31T00:00:00Z",
              "user": "www-data", "owners": "root"}
    for id_, message in MESSAGES.items():
        problem = Problem(id_, {k: v for k, v in values.items() if f"%({k})s" in message})
        with app.test_request_context("/", headers=lang("cs")):
            czech = problem_text(problem.as_dict())
        with app.test_request_context("/"):
            english = problem_text(problem.as_dict())
        assert english == problem.english()
        if id_ == "storage":  # a storage's own error, as it is
            assert czech == english == values["message"]
            continue
        assert czech != english and all(v in czech for v in problem.params.values()), \
            (english, czech)


def test_flash_messages_of_the_backup_page_in_german(client, auth, runner):
    archive = make_backup(runner).name
    auth.login()
    token = csrf_token_from(client.get("/admin/backup/").get_data(as_text=True))
    response = client.post(f"/admin/backup/verify/{archive}", data={"csrf_token": token},
                           headers=lang("de"), follow_redirects=True)
    assert f"{archive} geprüft: Alle Prüfsummen stimmen" in visible(response)


def test_api_bytes_do_not_depend_on_accept_language(client, auth, trip_id, app):
    with app.app_context():
        reg = Registration(trip_id=trip_id, email="e@example.com", language="cs")
        db.session.add(Guest(registration=reg, first_name="Žofie", last_name="Černá",
                             age_category="adult", document_type="passport",
                             document_number="P1", gdpr_consent=True,
                             created_at=datetime(2025, 6, 2, 10, 0, 0)))
        db.session.commit()
    headers = {"Authentication-Token": auth.token()}
    for query in ("?year=2025&month=6", "?year=2025&month=6&format=json", "?year=2025",
                  "?year=2025&month=6&format=nope"):
        plain = client.get(API + query, headers=headers)
        czech = client.get(API + query, headers={**headers, **lang("cs")})
        assert plain.status_code == czech.status_code
        assert plain.get_data() == czech.get_data() and len(plain.get_data()) > 10
        for name in ("Content-Type", "Content-Disposition", "X-Export-Rows", "Vary"):
            assert plain.headers.get(name) == czech.headers.get(name), name
    anonymous = client.get(API + "?year=2025&month=6", headers=lang("cs"))
    assert anonymous.status_code == 401
    assert anonymous.get_data() == client.get(API + "?year=2025&month=6").get_data()


def test_page_formatting_follows_the_locale(app):
    when = datetime(2025, 6, 23, 14, 30, 0)
    expected = {"en": ("2025-06-23 14:30:00", "7.2 KiB", "Yes"),
                "cs": ("23. 6. 2025 14:30:00", "7,2 KiB", "Ano"),
                "sk": ("23. 6. 2025, 14:30:00", "7,2 KiB", "Áno"),
                "de": ("23.06.2025, 14:30:00", "7,2 KiB", "Ja")}
    for code, (stamp, size, yes) in expected.items():
        with app.test_request_context("/", headers=lang(code)):
            assert (page_timestamp(when), page_size(7373), page_yes_no(True)) == (stamp, size, yes)
    assert human_size(7373) == "7.2 KiB"  # the CLI's formatting is unchanged


def load_dummy_plugin():
    spec = importlib.util.spec_from_file_location(
        "gr_dummy_plugin", ROOT / "tests" / "dummy_plugin" / "gr_dummy_plugin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_third_party_plugins_catalogue_is_found(tmp_path):
    app = create_app(make_config(tmp_path, f"sqlite:///{tmp_path}/d.db"),
                     instance_path=str(tmp_path / "i"), extra_plugins=[("dummy", load_dummy_plugin())])
    assert app.test_cli_runner().invoke(args=["setup"]).exit_code == 0
    client = app.test_client()
    assert client.get("/dummy/hello", headers=lang("cs")).get_data(as_text=True) == \
        "Zdraví vás zkušební doplněk"
    assert client.get("/dummy/hello").get_data(as_text=True) == "Hello from the dummy plugin"
    # the host's words are still there next to it (merged lookup, not a replacement)
    assert "Stránka nebyla nalezena." in visible(client.get("/nope", headers=lang("cs")))


def test_a_domain_someone_else_owns_stops_start_up(tmp_path):
    class Greedy:
        @hookimpl
        def register_translations(self):
            return [Catalog(tmp_path, "messages")]

    with pytest.raises(DuplicateNameError, match="'messages' is registered by both the host "
                                                 "and plugin 'greedy'"):
        create_app(make_config(tmp_path, f"sqlite:///{tmp_path}/g.db"),
                   instance_path=str(tmp_path / "i"), extra_plugins=[("greedy", Greedy())])
