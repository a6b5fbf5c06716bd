"""Numbers in the query string and forms are plain ASCII digits: ``str.isdigit()``
also takes '²' and '①' (which ``int()`` refuses: a ValueError, a 500) and '٣'
(which ``int()`` reads as 3). The admin list pages answer 400 before any database
work, to anyone (docs/security.md); the Guests' rights page says "give a number"."""

from __future__ import annotations

import pytest

from tests.helpers import csrf_token_from

#: not a plain number: superscript, circled, Arabic-Indic digit, exponent, space, empty
ODD = ["\u00b2", "\u2460", "\u0663", "1e3", " 1", ""]
#: what no form of the rights page sends, beside those: the page's own message
NOT_A_NUMBER = ["x", "\u00b2", "\u2460", "\u0663", "1e3", "12\u00b2"]
LISTS = ["/admin/guest/", "/admin/registration/", "/admin/trip/"]
GIVE_A_NUMBER = "Give a number"

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])  # no database work either way


@pytest.fixture
def quiet(app):
    """An exception is the 500 page, as in production (not raised into the test)."""
    app.config["PROPAGATE_EXCEPTIONS"] = False
    return app


@pytest.mark.parametrize("value", ODD)
@pytest.mark.parametrize("key", ["page", "page_size"])
def test_a_list_page_number_that_is_not_plain_digits_is_a_400(quiet, client, auth, key, value):
    for url in LISTS + ["/admin/"]:
        assert client.get(url, query_string={key: value}).status_code == 400, (url, "anon")
    auth.login()
    for url in LISTS:
        response = client.get(url, query_string={key: value})
        assert response.status_code == 400, (url, response.status_code)
        assert "Traceback" not in response.get_data(as_text=True)


def test_plain_list_page_numbers_still_work(quiet, client, auth):
    auth.login()
    for url in LISTS:
        for query in ({"page": "0"}, {"page": "1000000"}, {"page_size": "20"}):
            assert client.get(url, query_string=query).status_code == 200, (url, query)
        assert client.get(url, query_string={"page": "1000001"}).status_code == 400


@pytest.mark.parametrize("value", NOT_A_NUMBER)
@pytest.mark.parametrize("kind", ["guest", "registration"])
def test_the_rights_page_says_give_a_number(quiet, client, auth, kind, value):
    url = "/admin/rights/"
    anonymous = client.get(url, query_string={"kind": kind, "q": value})
    assert anonymous.status_code in (302, 401, 403), anonymous.status_code
    assert client.post(f"{url}erase", data={"kind": kind, "q": value}).status_code in (
        302, 400, 401, 403)
    auth.login()
    page = client.get(url, query_string={"kind": kind, "q": value})
    assert page.status_code == 200, page.status_code
    assert GIVE_A_NUMBER in page.get_data(as_text=True)
    token = csrf_token_from(page.get_data(as_text=True))
    erased = client.post(f"{url}erase", data={"csrf_token": token, "kind": kind, "q": value})
    assert erased.status_code == 302, erased.status_code
    assert erased.headers["Location"].endswith(url)
    assert GIVE_A_NUMBER in client.get(url).get_data(as_text=True)  # the flashed message


@pytest.mark.parametrize("kind", ["guest", "registration"])
def test_the_rights_page_takes_a_number_with_spaces_around_and_an_empty_search(
        quiet, client, auth, kind):
    """As before: the search is stripped; an empty one is the bare page."""
    auth.login()
    url = "/admin/rights/"
    for value in (" 1", "1 ", ""):
        page = client.get(url, query_string={"kind": kind, "q": value})
        assert page.status_code == 200, (value, page.status_code)
        assert GIVE_A_NUMBER not in page.get_data(as_text=True), value
    token = csrf_token_from(page.get_data(as_text=True))
    erased = client.post(f"{url}erase", data={"csrf_token": token, "kind": kind, "q": " 1"},
                         follow_redirects=True)
    assert erased.status_code == 200
    assert "Nothing to erase" in erased.get_data(as_text=True)  # no such record: looked up


def test_the_browse_forms_take_ascii_digits_only(backend):
    """``browse_forms._int`` read '٣' (an Arabic-Indic digit) as 3."""
    from guest_backup.web.browse_forms import _int

    assert _int("12") == 12 and _int(" 7 ") == 7 and _int("") is None
    for text in ("٣", "²", "①", "1e3"):
        with pytest.raises(ValueError):
            _int(text)
