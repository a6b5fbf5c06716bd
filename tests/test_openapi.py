"""``/api/openapi.json`` (plugins/backup/web/openapi.py): a valid OpenAPI 3.1
document naming every ``/api`` rule of the app, real responses checked against
it, and Schemathesis generating requests from it (0 server errors, 0 responses
that the document does not describe)."""

from __future__ import annotations

import collections
import copy
import hashlib
import re
import time

import pytest
import schemathesis
from schemathesis import GenerationMode
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from werkzeug.routing import Rule

from guest_backup.ops.jobs import read_job
from guest_backup.wiring import backup_context
from tests.helpers import USER, make_backup

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])
IGNORED_METHODS = {"HEAD", "OPTIONS"}
MAX_EXAMPLES = 50  # per operation and mode: the whole run stays well under a minute
#: cases Schemathesis generated, by operation and status (printed at the end)
GENERATED: collections.Counter = collections.Counter()


def openapi_path(rule: str) -> str:
    """A werkzeug rule as an OpenAPI path: ``<path:name>`` → ``{name}``."""
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


@pytest.fixture
def doc(client) -> dict:
    resp = client.get("/api/openapi.json")  # public: no token
    assert resp.status_code == 200 and resp.is_json
    return resp.get_json()


def test_document_is_valid_openapi(doc):
    validate(doc)
    assert doc["openapi"].startswith("3.1")


def test_every_api_rule_is_documented_and_nothing_else(app, doc):
    rules = collections.defaultdict(set)
    for rule in app.url_map.iter_rules():
        if rule.rule == "/api" or rule.rule.startswith("/api/"):
            rules[openapi_path(rule.rule)] |= set(rule.methods) - IGNORED_METHODS
    assert rules, "no /api rules found"
    documented = {path: {m.upper() for m in item} for path, item in doc["paths"].items()}
    missing = {p: sorted(m - documented.get(p, set())) for p, m in rules.items()
               if m - documented.get(p, set())}
    assert not missing, f"/api endpoints missing from the OpenAPI document: {missing}"
    assert set(documented) == set(rules), "documented paths the app does not have"


def test_the_rule_walk_notices_a_new_endpoint(app, doc):
    """The check above fails when an /api rule is not in the document."""
    app.url_map.add(Rule("/api/backup/undocumented", endpoint="undocumented", methods=["GET"]))
    with pytest.raises(AssertionError, match="undocumented"):
        test_every_api_rule_is_documented_and_nothing_else(app, doc)


def conforms(doc: dict, path: str, method: str, resp) -> None:
    """``resp`` is one the document describes: its status, media type, required
    headers and (JSON) body."""
    operation = doc["paths"][path][method]
    assert str(resp.status_code) in operation["responses"], (path, resp.status_code)
    described = operation["responses"][str(resp.status_code)]
    components = {"components": doc["components"]}
    for name, header in described.get("headers", {}).items():
        if header.get("required"):
            assert name in resp.headers, (path, resp.status_code, name)
        if name in resp.headers:
            Draft202012Validator({**header["schema"], **components}).validate(
                resp.headers[name])
    content = described.get("content")
    if not content:
        assert resp.data == b""
        return
    media = resp.headers["Content-Type"].split(";")[0].strip()
    assert media in content, (path, resp.status_code, media)
    if media == "application/json":
        Draft202012Validator({**content[media]["schema"], **components}).validate(
            resp.get_json())


def test_real_responses_match_the_document(client, auth, doc, app, runner):
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    archive = make_backup(runner)
    token = auth.token()
    user_token = auth.token(*USER)
    admin = {"Authorization": f"Bearer {token}"}
    one = f"/api/backup/archives/{archive.name}"
    seen = [("/api/openapi.json", "get", client.get("/api/openapi.json"))]
    for headers in ({}, admin, {"Authorization": f"Bearer {user_token}"}):
        seen.append(("/api/backup/archives", "get", client.get("/api/backup/archives",
                                                                headers=headers)))
    listed = seen[-2][2].get_json()["archives"][0]
    etag = f'"{listed["sha256"]}"'
    for extra in ({}, {"Range": "bytes=0-99"}, {"Range": "bytes=999999999-"},
                  {"If-None-Match": etag}):
        seen.append(("/api/backup/archives/{name}", "get",
                     client.get(one, headers={**admin, **extra})))
    seen.append(("/api/backup/archives/{name}", "get",
                 client.get("/api/backup/archives/nope.zip", headers=admin)))
    for query in ("year=2025&month=6", "year=2025&month=6&format=json", "year=x&month=6"):
        seen.append(("/api/backup/guests", "get",
                     client.get(f"/api/backup/guests?{query}", headers=admin)))
    started = client.post("/api/backup/archives", headers=admin)
    seen.append(("/api/backup/archives", "post", started))
    job_path = "/api/backup/jobs/{job_id}"
    seen.append((job_path, "get", client.get(started.headers["Location"], headers=admin)))
    wait_for_the_job(app)
    seen.append((job_path, "get", client.get(started.headers["Location"], headers=admin)))
    seen.append((job_path, "get", client.get("/api/backup/jobs/nope", headers=admin)))
    statuses = set()
    for path, method, resp in seen:
        conforms(doc, path, method, resp)
        statuses.add(resp.status_code)
    assert statuses >= {200, 202, 206, 304, 400, 401, 403, 404, 416}


def wait_for_the_job(app, timeout: float = 60) -> None:
    """Let a backup started through the API end before the test's database goes."""
    deadline = time.monotonic() + timeout
    with app.app_context():
        while time.monotonic() < deadline:
            job = read_job(backup_context())
            if not job or job["state"] in ("done", "failed"):
                return
            time.sleep(0.1)
    raise AssertionError("the backup job did not finish")


def _loaded(document: dict, app, token: str):
    schema = schemathesis.openapi.from_dict(document)
    schema.app = app
    # every request as the admin (the checks still send some without the token)
    schema.config.update(headers={"Authorization": f"Bearer {token}"})
    schema.config.generation.update(with_security_parameters=False)
    # a valid Range that starts past the end is rightly 416 (RFC 9110 §15.5.17)
    accepted = schema.config.checks.positive_data_acceptance
    accepted.expected_statuses = [*accepted.expected_statuses, "416"]
    return schema


def _focused(document: dict, archive: str, etag: str, job_id: str) -> dict:
    """The download and the job as a client calls them: the real archive's name
    (or a well-formed absent one), ranges of one or two parts, this ETag or others
    in the conditional headers; the latest job's ID (or an unknown one)."""
    document = copy.deepcopy(document)
    document["paths"]["/api/backup/jobs/{job_id}"]["get"]["parameters"][0]["schema"] = {
        "enum": [job_id, "0" * 32]}
    tags = ["*", etag, f"W/{etag}", '"0000"', f'"x", {etag}', "Wed, 21 Oct 2015 07:28:00 GMT"]
    focus = {"name": {"enum": [archive, "system_backup_20000101_000000.zip"]},
             "Range": {"anyOf": [
                 {"enum": ["bytes=0-99", "bytes=-10", "bytes=100-", "bytes=0-1,5-9",
                           "bytes=99999999-", "bytes=-0", "bytes=5-1", "items=0-9"]},
                 {"type": "string",
                  "pattern": r"^bytes=[0-9]{0,5}-[0-9]{0,5}(,[0-9]{0,3}-[0-9]{0,3})?$"}]},
             "If-None-Match": {"enum": tags}, "If-Range": {"enum": tags}}
    for param in document["paths"]["/api/backup/archives/{name}"]["get"]["parameters"]:
        param["schema"] = focus[param["name"]]
    return document


@pytest.fixture
def api(app, client, auth, runner):
    """Every operation of the document as served, and the download once more as
    a client of the real archive calls it; all with an admin token."""
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    archive = make_backup(runner)
    token = auth.token()
    document = client.get("/api/openapi.json").get_json()
    etag = f'"{hashlib.sha256(archive.read_bytes()).hexdigest()}"'
    job = client.post("/api/backup/archives", headers={"Authorization": f"Bearer {token}"})
    wait_for_the_job(app)
    focused = _loaded(_focused(document, archive.name, etag, job.get_json()["id"]), app, token)
    # positive cases of the focused two first (before a POST makes another job the
    # latest); the document as served, positive and negative (its parameters broken)
    operations = [(focused["/api/backup/archives/{name}"]["GET"], GenerationMode.POSITIVE),
                  (focused["/api/backup/jobs/{job_id}"]["GET"], GenerationMode.POSITIVE)]
    for found in _loaded(document, app, token).get_all_operations():
        operation = found.ok()
        operations.append((operation, GenerationMode.POSITIVE))
        if operation.definition.raw.get("parameters"):  # nothing to break without any
            operations.append((operation, GenerationMode.NEGATIVE))
    yield operations, token
    wait_for_the_job(app)


@pytest.fixture(scope="module", autouse=True)
def report_generated():
    yield
    if GENERATED:
        total = sum(GENERATED.values())
        print(f"\nSchemathesis: {total} generated cases: {dict(sorted(GENERATED.items()))}")


def test_schemathesis(api):
    """No server error, every response described by the document (Schemathesis's
    checks: status codes, media types, headers, bodies, auth), per operation."""
    operations, token = api
    admin = {"Authorization": f"Bearer {token}"}
    assert len(operations) == 2 + 6 + 3

    for operation, mode in operations:
        @given(case=operation.as_strategy(mode))
        @settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None,
                  database=None, suppress_health_check=list(HealthCheck))
        def check(case):
            response = case.call_and_validate(headers=admin)
            assert response.status_code < 500
            GENERATED[(mode.value, f"{case.method} {case.path}", response.status_code)] += 1

        try:
            check()
        except Unsatisfiable:  # only strings, which any value is: no negative case exists
            assert mode is GenerationMode.NEGATIVE, operation.label
    assert sum(GENERATED.values()) >= 6
