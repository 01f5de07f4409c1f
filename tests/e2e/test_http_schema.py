"""Schemathesis against a real `vmledger serve` on SQLite and on PostgreSQL: no 5xx, no schema violation, no write on a 4xx.

Schemathesis reads the server's own `/openapi.json` and generates requests
for every operation (property-based), then sequences of them along the
document's links (stateful).  Every answer must be one the document
allows, in status, content type and body, none may be a server error,
and an answer in the 4xx range must leave the log's head where it was.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import pytest
import requests
from hypothesis import HealthCheck, settings

from tests.contract.conftest import pg_dsn  # noqa: F401 - the session's PostgreSQL cluster
from tests.e2e.served import Served, need_serve, served
from tests.pg import create_database

try:
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )
except ImportError as e:  # pragma: no cover - the test extra installs it
    if os.environ.get("CI") == "true":
        raise ImportError(f"{e} (CI=true: the schema tests must run; pip install -e '.[test]')") from e
    pytest.skip(f"schemathesis is not installed: {e}", allow_module_level=True)

#: The checks every answer must pass.
CHECKED = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
           response_schema_conformance]
#: Examples per operation and phase; about 30 operations, two backends.
EXAMPLES = int(os.environ.get("VMLEDGER_SCHEMA_EXAMPLES", "15"))
#: The coverage phase (boundary values of every parameter, unexpected ones) adds a few seconds a backend, and found
#: an undocumented 404 that the examples alone missed: on, unless VMLEDGER_SCHEMA_COVERAGE=0.
COVERAGE = os.environ.get("VMLEDGER_SCHEMA_COVERAGE", "1") == "1"
_servers = iter(range(1, 1000))


@contextlib.contextmanager
def _new_server(backend: str, request: pytest.FixtureRequest, root: Any) -> Iterator[Served]:
    """Run a server on a new ledger of `backend` in `root`, with domains `web` (running) and `db` (stopped)."""
    if backend == "sqlite":
        db = f"sqlite:///{root}/ledger.db"
    else:
        db = create_database(request.getfixturevalue("pg_dsn"), f"schema_{next(_servers)}")
    with served(db, str(root / "server.log")) as server:
        with server.client("alice") as c:
            for name, guest in (("web", "pv"), ("db", "hvm")):
                assert c.post("/v1/domains", json={"name": name, "guest_type": guest, "memory": 2**30,
                                                   "max_memory": 2**32, "vcpus": 2, "max_vcpus": 4,
                                                   "cdroms": {"hdc": ""}}).status_code == 201
            assert c.post("/v1/domains/web/start").status_code == 200
        yield server


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def api_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Return a server on a fresh ledger of each backend, with domains `web` (running) and `db` (stopped)."""
    need_serve()
    with _new_server(request.param, request, tmp_path_factory.mktemp("schema")) as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(api_server: Served) -> Any:
    """Return the server's OpenAPI document, loaded by schemathesis, without the endless event stream."""
    config = schemathesis.Config.from_dict({"phases": {"coverage": {"enabled": COVERAGE, "unexpected-methods": []}}})
    return schemathesis.openapi.from_url(api_server.url + "/openapi.json", config=config)


# The event stream never ends, so it has tests of its own (test_http_stream.py).
schema = schemathesis.pytest.from_fixture("api_schema").exclude(path="/v1/events/stream")


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    """Return one HTTP session for the module, so each case does not pay for a new connection."""
    with requests.Session() as s:
        yield s


def _head(session: requests.Session, server: Served) -> int:
    response = session.get(server.url + "/v1/head", headers=server.headers("alice"), timeout=60)
    return response.json()["position"]


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_and_a_4xx_writes_nothing(case: Any, api_server: Served,
                                                          session: requests.Session) -> None:
    """Each generated request gets an answer the document allows, never a 5xx, and a 4xx leaves the head as it was."""
    before = _head(session, api_server)
    response = case.call(base_url=api_server.url, headers=api_server.headers("alice"), session=session)
    case.validate_response(response, checks=CHECKED)
    if 400 <= response.status_code < 500:
        assert (response.status_code, _head(session, api_server)) == (response.status_code, before)


def test_stateful_sequences_conform_and_a_4xx_writes_nothing(
        api_server: Served, api_schema: Any, session: requests.Session, request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Sequences of calls along the document's links get answers the document allows, and a 4xx writes nothing.

    Each sequence runs on a new ledger and server of the backend, as the
    first did: Hypothesis replays the start of the sequences it ran to find
    new ones, and on a ledger they share, a call answers otherwise the
    second time (a name defined already: 409, not 201), which it reports as
    a flaky strategy whatever the answers' conformance.
    """
    backend = "sqlite" if api_server.db.startswith("sqlite:") else "postgres"
    heads: list[int] = []

    class Workflow(api_schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            self.served = _new_server(backend, request, tmp_path_factory.mktemp("sequence"))
            self.server = self.served.__enter__()

        def teardown(self) -> None:
            self.served.__exit__(None, None, None)

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": self.server.url, "headers": self.server.headers("alice"), "session": session}

        def before_call(self, case: Any) -> None:
            heads.append(_head(session, self.server))

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKED)
            if 400 <= response.status_code < 500:
                assert (response.status_code, _head(session, self.server)) == (response.status_code, heads[-1])

    Workflow.run(settings=settings(max_examples=EXAMPLES, stateful_step_count=6, deadline=None,
                                   derandomize=True, suppress_health_check=list(HealthCheck)))


#: Calls that succeed on the fixture's ledger: (method, path template, path parameters, query, body, status).
KNOWN_GOOD = [
    ("GET", "/v1/domains", {}, {}, None, 200),
    ("GET", "/v1/domains/{name}", {"name": "web"}, {}, None, 200),
    ("GET", "/v1/domains/{name}/properties/{prop}", {"name": "web", "prop": "memory"}, {"scope": "live"}, None, 200),
    ("POST", "/v1/domains/{name}/requests", {"name": "web"}, {}, {"property": "vcpus", "value": 3}, 201),
    ("GET", "/v1/drift", {}, {"as_of": "3"}, None, 200),
    ("GET", "/v1/history", {}, {"domain": "web", "limit": 1}, None, 200),
    ("GET", "/v1/events", {}, {"from": 0, "limit": 2}, None, 200),
    ("GET", "/v1/head", {}, {}, None, 200),
    ("POST", "/v1/observe", {}, {"domain": "web"}, None, 200),
    ("POST", "/v1/verify", {}, {}, {"checkpoint": True}, 200),
    ("GET", "/v1/tokens", {}, {}, None, 200),
    ("GET", "/readyz", {}, {}, None, 200),
]


@pytest.mark.parametrize("method,path,path_parameters,query,body,status", KNOWN_GOOD,
                         ids=[f"{m} {p}" for m, p, *_ in KNOWN_GOOD])
def test_successful_answers_conform(api_server: Served, api_schema: Any, session: requests.Session, method: str,
                                    path: str, path_parameters: dict[str, str], query: dict[str, Any], body: Any,
                                    status: int) -> None:
    """A call that succeeds on the fixture's ledger gets its success status and a body the document allows."""
    operation = api_schema[path][method]
    case = operation.Case(path_parameters={k: v.strip() for k, v in path_parameters.items()}, query=query,
                          **({} if body is None else {"body": body}))
    response = case.call(base_url=api_server.url, headers=api_server.headers("alice"), session=session)
    case.validate_response(response, checks=CHECKED)
    assert response.status_code == status
