"""A selective restore while the erasure ledger has lost lines. A full restore
refuses then (the database's mark is past every copy's last line: the erasures of
those lines are in no copy). ``restore-select`` did not look: a registration whose
guest was erased, then deleted in the admin, came back with the guest's name and
document number, and a browse session opened then showed them."""

from __future__ import annotations

from pathlib import Path

import pytest

from guest_registration.extensions import db
from guest_registration.models import Guest, Registration
from guest_backup.ops.browse import sessions
from guest_backup.wiring import backup_context
from tests.helpers import make_backup
from tests.test_erasure_review import MARK, add_one, erase, lose_lines, mark_of


@pytest.fixture
def backend():
    return "sqlite"


def deleted(app, reg: int) -> None:
    """The registration deleted in the admin after its guest's erasure."""
    with app.app_context():
        db.session.query(Guest).filter_by(registration_id=reg).delete()
        db.session.query(Registration).filter_by(id=reg).delete()
        db.session.commit()


def names(app) -> list[str]:
    with app.app_context():
        return sorted(g.last_name for g in db.session.query(Guest))


@pytest.mark.parametrize("opened", [False, True], ids=["fresh", "session-opened-before"])
@pytest.mark.parametrize("how", ["older", "deleted"])
def test_restore_select_refuses_while_the_ledger_has_lost_lines(app, runner, how, opened):
    ids, other = add_one(app), add_one(app, "o@example.org")
    archive = make_backup(runner)
    erase(runner, other["z"])
    erase(runner, ids["z"])  # the mark: line 2
    deleted(app, ids["reg"])
    if opened:  # a scratch copy loaded while the ledger was whole, reused below
        opened_now = runner.invoke(args=["browse", str(archive)])
        assert opened_now.exit_code == 0, opened_now.output
    lose_lines(app, how)
    before = names(app)
    result = runner.invoke(args=["restore-select", str(archive), "--registration",
                                 str(ids["reg"]), "--yes"])
    assert result.exit_code == 1, result.output
    assert "the erasure ledger has lost" in result.output
    assert ("nothing was restored" if opened else "the archive was not opened") in result.output
    assert names(app) == before and MARK not in names(app)
    assert mark_of(app) == 2


def test_a_browse_session_is_not_opened_while_the_ledger_has_lost_lines(app, runner):
    ids = add_one(app)
    archive = make_backup(runner)
    erase(runner, ids["z"])
    lose_lines(app, "deleted")
    result = runner.invoke(args=["browse", str(archive)])
    assert result.exit_code == 1, result.output
    assert "the erasure ledger has lost" in result.output
    with app.app_context():
        left = sessions(backup_context(app))  # a failed one is kept to say why, then reaped
        assert [s.state for s in left] in ([], ["failed"])
        assert not any(Path(s.database).exists() for s in left)
