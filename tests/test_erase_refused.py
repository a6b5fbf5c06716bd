"""An erasure the database refuses (a constraint or trigger of the site's own, a
lost connection): one line for the command and a message on the page, nothing
changed, the refusal audited. Before: the command ended in a traceback (exit 1,
no message) and the page in an error page."""

from __future__ import annotations

import re
import sqlalchemy as sa

from guest_registration.extensions import db
from tests.helpers import csrf_token_from
from tests.test_erasure import add_people, audit_rows, guest, ledger_of


def refuse_erasures(app, backend) -> None:
    statement = (
        "CREATE TRIGGER no_erase BEFORE UPDATE ON guest WHEN NEW.first_name = '[erased]' "
        "BEGIN SELECT RAISE(ABORT, 'erasures refused here'); END" if backend == "sqlite" else
        "ALTER TABLE guest ADD CONSTRAINT no_erase CHECK (first_name <> '[erased]')")
    with app.app_context():
        db.session.execute(sa.text(statement))
        db.session.commit()


def test_the_command_says_so_in_one_line(app, runner, backend):
    ids = add_people(app)
    refuse_erasures(app, backend)
    result = runner.invoke(args=["erase", "--guest", str(ids["jana"]), "--yes"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().startswith("Error: nothing was erased: the database refused")
    assert len(result.output.strip().splitlines()) == 1
    assert isinstance(result.exception, SystemExit)  # click's exit, not an error
    assert guest(app, ids["jana"])["first_name"] == "Jana"
    assert list(ledger_of(app).entries()) == []
    assert [r["outcome"] for r in audit_rows(app)] == ["failed"]


def test_the_page_says_so(app, client, auth, backend):
    ids = add_people(app)
    refuse_erasures(app, backend)
    auth.login()
    page = client.get(f"/admin/rights/?kind=guest&q={ids['jana']}").get_data(as_text=True)
    plan = re.search(r'name="plan" value="([0-9a-f]+)"', page).group(1)
    done = client.post("/admin/rights/erase", data={
        "kind": "guest", "q": str(ids["jana"]), "plan": plan,
        "csrf_token": csrf_token_from(page)}, follow_redirects=True)
    shown = done.get_data(as_text=True)
    assert done.status_code == 200 and "Traceback" not in shown
    assert "Nothing was erased: the database refused the change" in shown
    assert shown.lower().count("nothing was erased") == 1
    assert guest(app, ids["jana"])["first_name"] == "Jana"
