"""The message catalogues: every one complete (no untranslated or fuzzy entry), in
step with the code (Babel's extraction, run here in-process, finds exactly the
catalogue's messages), compiled (.mo equal to its .po), packaged, and no text in
a template left unmarked for translation."""

from __future__ import annotations

import configparser
import gettext
import io
import re
from pathlib import Path

import pytest
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from jinja2 import Environment
from jinja2.ext import i18n as jinja_i18n

from tests.helpers import ROOT

LANGUAGES = ("cs", "sk", "de")
#: extraction config → (catalogue folder, domain), as ``make translations`` has them
EXTRACTED = {ROOT / "babel.cfg": (ROOT / "guest_registration" / "translations", "messages"),
             ROOT / "plugins" / "backup" / "babel.cfg": (ROOT / "plugins" / "backup" / "translations",
                                                         "backup"),
             ROOT / "plugins" / "export_formats" / "babel.cfg": (
                 ROOT / "plugins" / "export_formats" / "translations", "csv_format")}
KEYWORDS = {**DEFAULT_KEYWORDS, "_l": None, "lazy_gettext": None}
#: every .po in the repository (not the virtualenv)
CATALOGUES = sorted(p for p in ROOT.rglob("*.po") if ".venv" not in p.parts)
#: text in templates that is not a sentence to translate: names, codes, punctuation
NOT_WORDS = {"GET /api/backup/guests", "English", "Čeština", "Slovenčina", "Deutsch"}


def read(path: Path):
    with open(path, "rb") as fh:
        return read_po(fh)


def test_the_catalogues_are_all_there():
    names = {str(p.relative_to(ROOT)) for p in CATALOGUES}
    for lang in LANGUAGES:
        assert f"guest_registration/translations/{lang}/LC_MESSAGES/messages.po" in names
        assert f"plugins/backup/translations/{lang}/LC_MESSAGES/backup.po" in names
        assert f"plugins/export_formats/translations/{lang}/LC_MESSAGES/csv_format.po" in names
    for lang in ("cs", "sk"):  # Flask-Security-Too ships no Czech or Slovak: ours fill in
        assert f"guest_registration/translations/{lang}/LC_MESSAGES/flask_security.po" in names


@pytest.mark.parametrize("path", CATALOGUES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_untranslated_or_fuzzy_entry(path):
    catalog = read(path)
    messages = [m for m in catalog if m.id]
    assert messages and not catalog.fuzzy
    untranslated = [m.id for m in messages
                    if not (all(m.string) if isinstance(m.string, tuple) else m.string)]
    fuzzy = [m.id for m in messages if m.fuzzy]
    assert (untranslated, fuzzy) == ([], [])
    assert not catalog.obsolete, f"obsolete entries: {list(catalog.obsolete)}"
    for m in messages:  # the placeholders survive translation
        ids = m.id if isinstance(m.id, tuple) else (m.id,)
        strings = m.string if isinstance(m.string, tuple) else (m.string,)
        wanted = set(re.findall(r"%\(\w+\)s|\{\w+\}", ids[-1]))
        for s in strings:
            assert set(re.findall(r"%\(\w+\)s|\{\w+\}", s)) <= wanted | {"%(num)s"}, (m.id, s)
            assert wanted - {"%(num)s"} <= set(re.findall(r"%\(\w+\)s|\{\w+\}", s)), (m.id, s)


def extracted(config: Path) -> set:
    parser = configparser.RawConfigParser()
    parser.read(config)
    method_map = [(section.split(":", 1)[1].strip(), section.split(":", 1)[0].strip())
                  for section in parser.sections()]
    return {msg[2] for msg in extract_from_dir(str(ROOT), method_map, keywords=KEYWORDS,
                                               options_map={p: {} for p, _ in method_map})}


@pytest.mark.parametrize("config", EXTRACTED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_marked_message_is_in_every_catalogue(config):
    """Babel's extraction over the code and templates, as ``make translations``
    runs it: each catalogue has exactly the messages found (none missing, none stale)."""
    folder, domain = EXTRACTED[config]
    found = extracted(config)
    assert len(found) >= (1 if domain == "csv_format" else 50)  # the extraction works
    for lang in LANGUAGES:
        ids = {m.id for m in read(folder / lang / "LC_MESSAGES" / f"{domain}.po") if m.id}
        assert found - ids == set(), f"{lang}: not in the catalogue (run make translations)"
        assert ids - found == set(), f"{lang}: no longer in the code (run make translations)"


@pytest.mark.parametrize("path", CATALOGUES, ids=lambda p: str(p.relative_to(ROOT)))
def test_compiled_catalogue_matches_its_po(path):
    compiled = path.with_suffix(".mo")
    assert compiled.is_file(), f"{compiled} is missing (run make translations)"
    fresh = io.BytesIO()
    write_mo(fresh, read(path))
    fresh.seek(0)
    with open(compiled, "rb") as fh:
        committed = gettext.GNUTranslations(fh)
    messages = lambda t: {k: v for k, v in t._catalog.items() if k != ""}  # not the header
    assert messages(committed) == messages(gettext.GNUTranslations(fresh)), \
        f"{compiled} is older than its .po (run make translations)"
    ids = {k if isinstance(k, str) else k[0] for k in messages(committed)}  # plurals: (id, n)
    assert len(ids) == len([m for m in read(path) if m.id])


def test_catalogues_are_packaged():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    data = setup["options.package_data"]
    assert "translations/*/LC_MESSAGES/*.mo" in data["guest_registration"]
    assert "translations/*/LC_MESSAGES/*.mo" in data["guest_backup"]
    assert "translations/*/LC_MESSAGES/*.mo" in data["guest_formats"]
    assert "templates/" in data["guest_backup.web"] and "templates/" in data["guest_registration"]


def unmarked_text(source: str) -> list[str]:
    """Literal text of a template outside tags, scripts, styles and comments."""
    env = Environment(extensions=[jinja_i18n])
    pieces, in_trans, previous = [], False, None
    for _, kind, value in env.lex(source):
        if kind == "name" and previous == "block_begin" and value in ("trans", "endtrans"):
            in_trans = value == "trans"  # a {% trans %} block is marked text
        pieces.append(value if kind == "data" and not in_trans else "\x00")
        previous = kind if kind != "whitespace" else previous
    text = "".join(pieces)
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", text, flags=re.S)
    text = re.sub(r"<!--.*?-->|<[^>]*>", " ", text, flags=re.S)
    chunks = [c.strip() for c in re.split(r"\x00+|\n", text)]
    return [c for c in chunks if re.search(r"[^\W\d_]{2,}", c) and c not in NOT_WORDS]


def test_no_template_text_is_left_unmarked():
    found = {}
    for path in sorted([*(ROOT / "guest_registration" / "templates").rglob("*.html"),
                        *(ROOT / "plugins" / "backup" / "web" / "templates").rglob("*.html"),
                        *(ROOT / "templates").rglob("*.html")]):
        leftovers = unmarked_text(path.read_text())
        if leftovers:
            found[str(path.relative_to(ROOT))] = leftovers
    assert found == {}


def test_the_unmarked_text_check_would_catch_one():
    assert unmarked_text('<p class="x">{{ _("Fine") }} Forgotten words</p>') == ["Forgotten words"]
    assert unmarked_text("<script>var a = 'words';</script>{% trans %}Marked{% endtrans %}") == []
