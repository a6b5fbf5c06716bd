"""The Backup, PITR and Restore-a-selection pages in Czech and German say what the
backup plugin reports in the page's language (nothing English wrapped inside a
translated sentence), show stored codes and column names by the labels the rest
of the app uses, decimals with the locale's separator and singular labels on
single rows; the CLI keeps its English. On SQLite and PostgreSQL."""

from __future__ import annotations

import html as html_lib
import os
import re
import zipfile
from pathlib import Path

import pytest

from guest_backup.ops.jobs import job_state
from guest_backup.wiring import backup_context
from guest_registration.i18n import page_decimal
from tests.helpers import make_backup
from tests.test_browse import _close_sessions, live  # noqa: F401 (autouse fixture)
from tests.test_browse_page import BASE, html, open_session, verified_archive


@pytest.fixture
def admin(client, auth, runner):
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    auth.login()
    return client


def visible(page: str) -> str:
    """The text a reader sees: no scripts, styles, tags or attributes."""
    page = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S)
    return re.sub(r"\s+", " ", html_lib.unescape(re.sub(r"<[^>]*>", " ", page)))


def flashed(admin, lang: str) -> str:
    """The messages flashed to the next page (the archives' list, in ``lang``)."""
    return visible(html(admin.get(f"{BASE}/?lang={lang}")))


def test_decimals_follow_the_page_locale(app):
    for lang, point in (("en", "."), ("cs", ","), ("sk", ","), ("de", ",")):
        with app.test_request_context(f"/admin/?lang={lang}"):
            assert page_decimal(1.0) == f"1{point}0"
            assert page_decimal(0.254, 2) == f"0{point}25"
    with app.test_request_context("/admin/?lang=cs"):
        assert page_decimal(1234.56) == "1\xa0234,6"


def test_an_interrupted_backup_is_told_in_the_page_language(app, admin):
    with app.app_context():
        job_state(backup_context(app)).write({
            "id": "j1", "state": "running", "stage": "database", "bytes": 0,
            "started_at": "2025-01-01T00:00:00Z", "finished_at": None, "archive": None,
            "error": None, "actor": "admin@example.com"})
    czech = visible(html(admin.get("/admin/backup/?lang=cs")))
    assert "Poslední záloha selhala: záloha byla přerušena (server se zastavil)" in czech
    assert "interrupted" not in czech
    assert admin.get("/admin/backup/job?lang=de").get_json()["error"] == \
        "die Sicherung wurde unterbrochen (der Server wurde beendet)"
    english = visible(html(admin.get("/admin/backup/?lang=en")))
    assert "Last backup failed: the backup was interrupted (the server stopped)" in english


def _tamper(path: Path) -> None:
    """The archive's dump changed after signing (its manifest and signature kept)."""
    with zipfile.ZipFile(path) as zf:
        members = [(info, zf.read(info)) for info in zf.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in members:
            zf.writestr(info, data + b"\n-- changed\n" if info.filename == "database.sql"
                        else data)


def test_a_failed_verify_is_told_in_the_page_language(app, admin, runner):
    from tests.helpers import csrf_token_from

    archive = make_backup(runner)
    _tamper(archive)
    token = csrf_token_from(html(admin.get("/admin/backup/?lang=cs")))
    page = visible(html(admin.post(f"/admin/backup/verify/{archive.name}?lang=cs",
                                   data={"csrf_token": token}, follow_redirects=True)))
    assert (f"{archive.name} neprošel ověřením: jeho obsah neodpovídá podepsanému manifestu "
            f"(některý soubor je změněný, chybí nebo je neúplný) (1 problém; vypisuje ho "
            f"protokol auditu).") in page, page
    assert "checksum" not in page.split("Záloha systému")[0]
    result = runner.invoke(args=["verify", str(archive)])  # the CLI: English, every problem
    assert result.exit_code == 1 and "database.sql: size differs" in result.output


def test_pitr_problems_are_told_in_the_page_language(app, tmp_path, monkeypatch):
    from guest_backup.physical.owner import Owner
    from tests.helpers import ADMIN, login_from

    data = tmp_path / "pgdata"
    data.mkdir()
    (data / "PG_VERSION").write_text("15\n")
    if os.geteuid() == 0:  # PostgreSQL never runs as root: a data directory is someone's
        os.chown(data, 65534, 65534)
    app.config.update(PITR_PG_DATA=str(data), PITR_FOLDER=str(tmp_path / "pitr"))
    monkeypatch.setattr(Owner, "can_act", lambda self: False)  # a web server as the app's user
    client = app.test_client()
    login_from(client, *ADMIN)
    czech = visible(client.get("/admin/pitr/?lang=cs").get_data(as_text=True))
    assert "obnova k okamžiku v čase: stav pgBackRest tu zatím není známý: spusťte " \
           "`manage.py pitr info` jako root nebo jako" in czech, czech
    assert "not known" not in czech
    german = visible(client.get("/admin/pitr/?lang=de").get_data(as_text=True))
    assert "der Zustand von pgBackRest ist hier noch nicht bekannt" in german


def _guest_of_a_registration(app) -> tuple[int, int, str]:
    guest, registration, last = live(app, "SELECT g.id, g.registration_id, g.last_name "
                                          "FROM guest g ORDER BY g.id LIMIT 1")[0]
    return guest, registration, last


def test_selective_restore_speaks_the_page_language(app, admin, runner):
    sid = open_session(admin, verified_archive(admin, runner))
    session = visible(html(admin.get(f"{BASE}/s/{sid}/?lang=cs")))
    assert re.search(r"načteno za \d+,\d s, vyhledávací indexy \d+,\d s", session), session
    guest, registration, last = _guest_of_a_registration(app)
    live(app, "UPDATE guest SET first_name = 'Changed', document_type = CASE WHEN "
              "document_type = 'passport' THEN 'id_card' ELSE 'passport' END WHERE id = :g",
         g=guest)

    compare = visible(html(admin.get(f"{BASE}/s/{sid}/registration/{registration}?lang=cs")))
    assert f"Host {guest} ·" in compare and f"Hosté {guest}" not in compare, compare
    assert "Jméno: " in compare and "Doklad: " in compare and "first_name" not in compare
    assert "Cestovní pas" in compare and "passport" not in compare and "id_card" not in compare
    german = visible(html(admin.get(f"{BASE}/s/{sid}/registration/{registration}?lang=de")))
    assert f"Gast {guest} ·" in german and "Vorname: " in german and "Reisepass" in german
    found = visible(html(admin.get(f"{BASE}/s/{sid}/?q={last}&lang=cs")))
    assert "Jméno, Doklad" in found and "first_name" not in found

    token = re.search(r'name="csrf_token" value="([^"]+)"',
                      html(admin.get(f"{BASE}/s/{sid}/?lang=cs"))).group(1)
    form = {"csrf_token": token, "registration": str(registration),
            "overwrite_guest": str(guest)}
    preview = html(admin.post(f"{BASE}/s/{sid}/preview?lang=cs", data=form))
    shown = visible(preview)
    assert f"Náhled obnovy: registrace {registration}." in shown, shown
    assert "registration " not in shown and "Jméno, Doklad" in shown
    plan = re.search(r'name="token" value="([0-9a-f]+)"', preview).group(1)

    live(app, "UPDATE guest SET last_name = 'Again' WHERE id = :g", g=guest)
    admin.post(f"{BASE}/s/{sid}/restore?lang=cs", data={"csrf_token": token, "token": plan})
    told = flashed(admin, "cs")
    assert (f"Nic nebylo obnoveno: host {guest}: od náhledu změněno. Zobrazte náhled znovu a "
            f"uvidíte dnešní řádky.") in told, told
    assert "since the preview" not in told

    preview = html(admin.post(f"{BASE}/s/{sid}/preview?lang=de", data=form))
    plan = re.search(r'name="token" value="([0-9a-f]+)"', preview).group(1)
    done = visible(html(admin.post(f"{BASE}/s/{sid}/restore?lang=de",
                                   data={"csrf_token": token, "token": plan})))
    assert re.search(r"Aus \S+ in \d+,\d s wiederhergestellt\.", done), done
    assert f"Anmeldung {registration}" in done


def test_a_bad_trusted_key_setting_sends_an_open_archive_back_to_the_list(app, admin, runner):
    sid = open_session(admin, verified_archive(admin, runner))
    app.config["BACKUP_TRUSTED_KEYS"] = ["ed25519:abc"]
    response = admin.get(f"{BASE}/s/{sid}/?lang=cs")
    assert response.status_code == 302, response.status_code
    assert response.headers["Location"].endswith(f"{BASE}/")
    page = flashed(admin, "cs")
    assert "Nelze použít žádný archiv: BACKUP_TRUSTED_KEYS: 'ed25519:abc' is not a public " \
        "key" in page, page
    assert f'data-session="{sid}"' not in html(admin.get(f"{BASE}/"))  # none usable
