"""`vmledger serve` through real HTTP: auth, principals, problem+json errors, logs, TLS, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import signal
import subprocess
import threading
import time
from typing import Any, Iterator

import pytest

from tests.e2e.served import Served, add_token, cli, need_serve, served

MiB, GiB = 2**20, 2**30
WEB = {"name": "web", "guest_type": "pv", "memory": GiB, "max_memory": 4 * GiB, "vcpus": 2, "max_vcpus": 4,
       "cdroms": {"hdc": ""}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Return a server on a fresh SQLite ledger where `web` (PV, CD-ROM hdc) runs."""
    need_serve()
    root = tmp_path_factory.mktemp("http")
    with served(f"sqlite:///{root}/ledger.db", str(root / "server.log")) as s:
        with s.client("olga") as c:
            assert c.post("/v1/domains", json=WEB).status_code == 201
            assert c.post("/v1/domains/web/start").status_code == 200
        yield s


def _set(server: Served, who: str | None, body: dict[str, Any], **headers: str) -> Any:
    with server.client(who) as c:
        return c.post("/v1/domains/web/requests", json=body, headers=headers)


def test_no_token_is_401_and_writes_nothing(server: Served) -> None:
    """A set without a bearer token is refused 401 as problem+json, with a WWW-Authenticate header, and writes nothing."""
    before = server.head()
    response = _set(server, None, {"property": "vcpus", "value": 3})
    assert (response.status_code, response.headers["content-type"], response.headers["www-authenticate"],
            response.json()["code"], server.head()) == (
        401, "application/problem+json", 'Bearer realm="vmledger"', "unauthorized", before)


def test_unknown_token_is_401(server: Served) -> None:
    """A bearer token the server never issued is refused 401."""
    response = _set(server, None, {"property": "vcpus", "value": 3}, Authorization="Bearer vml_not-a-token")
    assert (response.status_code, response.json()["code"]) == (401, "unauthorized")


def test_readers_set_is_403_and_writes_nothing(server: Served) -> None:
    """A reader's set is refused 403 and writes nothing, while the reader may read."""
    before = server.head()
    response = _set(server, "rob", {"property": "vcpus", "value": 3})
    with server.client("rob") as c:
        read = c.get("/v1/domains/web")
    assert (response.status_code, response.json()["code"], server.head(), read.status_code) == (
        403, "forbidden", before, 200)


def test_operator_may_not_rebuild(server: Served) -> None:
    """An operator may set but not rebuild, which is the admin's."""
    with server.client("olga") as c:
        assert c.post("/v1/rebuild").status_code == 403
    with server.client("alice") as c:
        assert c.post("/v1/rebuild").status_code == 200


def test_revoked_token_is_401(server: Served) -> None:
    """A token revoked with `vmledger token revoke` is refused 401 at its next request."""
    secret = add_token(server.db, "temp", "reader")
    with server.client(None, headers={"Authorization": f"Bearer {secret}"}) as c:
        before = c.get("/v1/domains").status_code
        done = cli(server.db, "token", "revoke", "temp")
        after = c.get("/v1/domains")
    assert (before, done.returncode, done.stdout, after.status_code, after.json()["code"]) == (
        200, 0, "revoked temp\n", 401, "unauthorized")


def test_principal_is_the_tokens_name_whatever_the_body_says(server: Served) -> None:
    """A set made with Alice's token records `alice` as principal, in the request and its events, whatever the body says."""
    response = _set(server, "alice", {"property": "vcpus", "value": 3, "principal": "mallory"})
    record = response.json()
    with server.client() as c:
        events = c.get("/v1/events", params={"from": record["position"] - 1, "limit": 3}).json()
    assert (response.status_code, record["principal"]) == (201, "alice")
    assert [(e["metadata"]["principal"], e["metadata"]["request_id"]) for e in events] == [
        ("alice", record["request_id"])] * 3


def test_errors_are_problems_with_the_clis_codes(server: Served) -> None:
    """Unknown domain and property are 404, bad values 422, a reused request id 409; none writes anything."""
    before = server.head()
    with server.client("olga") as c:
        unknown_domain = c.post("/v1/domains/nope/requests", json={"property": "memory", "value": GiB})
        unknown_prop = c.post("/v1/domains/web/requests", json={"property": "nope", "value": 1})
        bad_value = c.post("/v1/domains/web/requests", json={"property": "memory", "value": "abc"})
        bad_shape = c.post("/v1/domains/web/requests", json={"value": 1})
        not_json = c.post("/v1/domains/web/requests", content=b"{", headers={"content-type": "application/json"})
        bad_scope = c.post("/v1/domains/web/requests", json={"property": "vcpus", "value": 2, "scope": "bad"})
    middle = server.head()
    first = _set(server, "olga", {"property": "vcpus", "value": 2}, **{"Idempotency-Key": "r-409"})
    head = server.head()
    reused = _set(server, "olga", {"property": "vcpus", "value": 4}, **{"Idempotency-Key": "r-409"})
    got = [(r.status_code, r.headers["content-type"], r.json()["code"]) for r in (
        unknown_domain, unknown_prop, bad_value, bad_shape, not_json, bad_scope, reused)]
    problem = "application/problem+json"
    assert got == [(404, problem, "unknown_domain"), (404, problem, "unknown_property"),
                   (422, problem, "invalid_request"), (422, problem, "invalid_request"),
                   (422, problem, "invalid_request"), (422, problem, "invalid_request"),
                   (409, problem, "request_id_reused")]
    assert (middle, first.status_code, server.head()) == (before, 201, head)
    assert unknown_domain.json()["detail"] == "unknown domain 'nope'"


@pytest.mark.parametrize("path", ["/v1/events", "/v1/events/stream", "/v1/drift", "/v1/history", "/v1/audit"])
def test_a_query_of_an_unknown_domain_is_a_404_its_document_names(server: Served, path: str) -> None:
    """Each query that takes a domain answers 404 for one the ledger never had, a status its OpenAPI document lists."""
    with server.client("olga") as c:
        answer = c.get(path, params={"domain": "nope"})
        documented = c.get("/openapi.json").json()["paths"][path]["get"]["responses"]
    assert (answer.status_code, answer.json()["code"], "404" in documented) == (404, "unknown_domain", True)


def test_repeated_idempotency_key_appends_nothing(server: Served) -> None:
    """Repeating an Idempotency-Key answers the first record again and appends nothing."""
    first = _set(server, "olga", {"property": "vcpus", "value": 3}, **{"Idempotency-Key": "r-same"})
    head = server.head()
    again = _set(server, "olga", {"property": "vcpus", "value": 3}, **{"Idempotency-Key": "r-same"})
    assert (again.status_code, again.json(), server.head()) == (201, first.json(), head)


def test_partial_outcome_is_still_201(server: Served) -> None:
    """A request the balloon satisfies only partly was recorded: 201 with its outcomes."""
    with server.client() as c:
        assert c.post("/v1/sim/host-free", json={"size": 100 * MiB}).status_code == 204
        response = c.post("/v1/domains/web/requests", json={"property": "memory", "value": 2 * GiB})
        assert c.post("/v1/sim/host-free", json={"size": 64 * GiB}).status_code == 204
    outcomes = response.json()["outcomes"]
    assert (response.status_code, outcomes["persistent"]["status"], outcomes["live"]["status"]) == (
        201, "applied", "partial")


def test_if_match_is_a_compare_and_set(server: Served) -> None:
    """A set with If-Match of the domain's current ETag is applied; with an older one it is 412 and writes nothing."""
    with server.client("olga") as c:
        etag = c.get("/v1/domains/web").headers["etag"]
        applied = c.post("/v1/domains/web/requests", json={"property": "vcpus", "value": 2},
                         headers={"If-Match": etag})
        head = server.head()
        stale = c.post("/v1/domains/web/requests", json={"property": "vcpus", "value": 3},
                       headers={"If-Match": etag})
    assert (applied.status_code, stale.status_code, stale.json()["code"], server.head()) == (
        201, 412, "precondition_failed", head)


def test_body_too_large_is_413_and_writes_nothing(server: Served) -> None:
    """A JSON body over a mebibyte is refused 413 and writes nothing."""
    before = server.head()
    response = _set(server, "olga", {"property": "memory", "value": GiB, "reason": "x" * (2 * MiB)})
    assert (response.status_code, response.headers["content-type"], server.head()) == (
        413, "application/problem+json", before)


def test_history_pages_follow_link_next(server: Served) -> None:
    """History comes a page at a time, each with `Link: rel="next"` until the last, together the whole history."""
    for vcpus in (1, 2, 3, 2, 1):  # requests of its own, whatever ran before it
        assert _set(server, "olga", {"property": "vcpus", "value": vcpus, "scope": "both"}).status_code == 201
    with server.client("rob") as c:
        whole = c.get("/v1/history", params={"limit": 1000}).json()
        pages, response = [], c.get("/v1/history", params={"limit": 2})
        while True:
            pages.append(response.json())
            if "next" not in response.links:
                break
            response = c.get(response.links["next"]["url"])
    assert len(whole) >= 5
    assert ([r for p in pages for r in p], [len(p) for p in pages[:-1]]) == (whole, [2] * (len(pages) - 1))


def test_request_log_has_one_line_per_request_and_no_token(server: Served) -> None:
    """Each request logs one JSON line with method, path, status, duration, principal and request id, and no token."""
    with server.client("rob") as c:
        c.get("/v1/drift", headers={"Idempotency-Key": "log-probe"})
    time.sleep(0.2)
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    probe = [line for line in lines if line["request_id"] == "log-probe"]
    assert [(p["method"], p["path"], p["status"], p["principal"]) for p in probe] == [
        ("GET", "/v1/drift", 200, "rob")]
    assert set(probe[0]) == {"time", "method", "path", "status", "duration_ms", "principal", "request_id"}
    assert [name for name, secret in server.tokens.items() if secret in server.log()] == []
    assert "vml_" not in server.log()


def test_health_readiness_and_metrics(server: Served) -> None:
    """/healthz and /readyz answer 200 without a token, and /metrics counts requests and outcomes."""
    with server.client(None) as c:
        health, ready, metrics = c.get("/healthz"), c.get("/readyz"), c.get("/metrics")
    text = metrics.text
    assert (health.status_code, health.json(), ready.status_code, metrics.status_code) == (
        200, {"status": "ok"}, 200, 200)
    assert 'vmledger_http_requests_total{endpoint="/v1/domains/{name}/requests",method="POST",status="201"}' in text
    assert 'vmledger_outcomes_total{scope="live",status="applied"}' in text
    assert "vmledger_append_seconds_bucket" in text and "vmledger_stream_subscribers 0.0" in text


def test_readiness_asks_the_hypervisor_not_a_domain(tmp_path: Any) -> None:
    """/readyz is 200 while the simulator answers, even with a domain gone behind the ledger's back, and 503 while its
    state cannot be read."""
    need_serve()
    state = tmp_path / "ledger.db.sim.json"

    def replace_state(text: str) -> None:
        (tmp_path / "edit").write_text(text)
        (tmp_path / "edit").replace(state)

    with served(f"sqlite:///{tmp_path}/ledger.db", str(tmp_path / "server.log")) as s, s.client(None) as c:
        with s.client("olga") as admin:
            assert admin.post("/v1/domains", json=WEB).status_code == 201
        saved = state.read_text()
        gone = json.loads(saved)
        del gone["domains"]["web"]
        replace_state(json.dumps(gone))  # the ledger still holds `web`; the hypervisor answers without it
        after_gone = c.get("/readyz")
        replace_state("{")
        damaged = c.get("/readyz")
        replace_state(saved)
        again = c.get("/readyz")
    assert (after_gone.status_code, after_gone.json()) == (200, {"status": "ok"})
    assert damaged.status_code == 503 and damaged.json()["status"].startswith("hypervisor: simulator state")
    assert again.status_code == 200


def test_openapi_is_31_and_lists_every_operation(server: Served) -> None:
    """/openapi.json is an OpenAPI 3.1 document naming every /v1/ operation with its bearer security."""
    with server.client(None) as c:
        doc = c.get("/openapi.json").json()
    operations = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert doc["openapi"] == "3.1.0"
    assert {("GET", "/v1/domains"), ("POST", "/v1/domains"), ("GET", "/v1/domains/{name}"),
            ("DELETE", "/v1/domains/{name}"), ("POST", "/v1/domains/{name}/start"),
            ("POST", "/v1/domains/{name}/stop"), ("POST", "/v1/domains/{name}/requests"),
            ("GET", "/v1/requests/{request_id}"), ("GET", "/v1/domains/{name}/properties/{prop}"),
            ("GET", "/v1/drift"), ("GET", "/v1/history"), ("GET", "/v1/events"), ("GET", "/v1/events/stream"),
            ("POST", "/v1/observe"), ("POST", "/v1/adopt"), ("POST", "/v1/verify"), ("POST", "/v1/rebuild"),
            ("GET", "/v1/export"), ("POST", "/v1/import"), ("POST", "/v1/sim/{action}"),
            ("GET", "/v1/tokens"), ("POST", "/v1/tokens"), ("DELETE", "/v1/tokens/{name}")} <= operations
    assert doc["paths"]["/v1/drift"]["get"]["security"] == [{"bearer": []}]


def test_remote_ledger_has_the_ledgers_methods(server: Served) -> None:
    """`vmledger.connect` answers as `Ledger` does (a page of the history too), and raises the ledger's errors with their messages."""
    import vmledger

    async def go() -> tuple:
        async with vmledger.connect(server.url, token=server.tokens["olga"]) as ledger:
            view = await ledger.show("web")
            record = await ledger.set("web", "vcpus", 3, scope="persistent", principal="ignored")
            events = [e async for e in ledger.events(from_position=record["position"] - 1)]
            with pytest.raises(vmledger.UnknownDomainError) as unknown:
                await ledger.get("nope", "memory")
            for vcpus in (2, 3):
                await ledger.set("web", "vcpus", vcpus, scope="persistent")
            whole, page = await ledger.history("web"), await ledger.history("web", limit=2, offset=1)
            return (view["domain"], record["principal"], [e.type for e in events[:2]], str(unknown.value),
                    len(whole) >= 3 and page == whole[1:3], await ledger.history("web", offset=len(whole)))

    assert asyncio.run(go()) == ("web", "olga", ["VcpusChangeRequested", "VcpusChangeApplied"],
                                 "unknown domain 'nope'", True, [])


def _certificates(tmp: Any) -> tuple[str, str, str]:
    """Make a CA and a certificate for 127.0.0.1 signed by it; return the paths of the CA, the cert and its key."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vmledger test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return tuple(str(p) for p in paths)  # type: ignore[return-value]


def test_import_reads_lines_as_the_command_line_does(tmp_path: Any) -> None:
    """`POST /v1/import` breaks lines at newlines only, as `vmledger import` reads a file: a U+2028 in a line's text stays in it, and blank lines are skipped."""
    need_serve()
    from vmledger.eventstore.backends.common import chained_rows
    from vmledger.eventstore.events import DomainDefined
    from vmledger.eventstore.log import Metadata
    from vmledger.eventstore.transfer import to_line

    event = DomainDefined(domain="web", uuid="0" * 32, guest_type="pv", capabilities={"balloon": True},
                          config={"memory": GiB, "max_memory": GiB, "vcpus": 1, "max_vcpus": 1, "numa_nodes": 1})
    (row,), _ = chained_rows("0" * 32, 0, [event], Metadata(principal="a\u2028b"),
                             dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), 0, None)
    line = to_line(row)
    with served(f"sqlite:///{tmp_path}/ledger.db", str(tmp_path / "server.log")) as server, \
            server.client("alice") as c:
        imported = c.post("/v1/import", content=f"\n{line}\n\n".encode())
        exported = c.get("/v1/export")
    assert ("\u2028" in line, imported.status_code, imported.json(), exported.text) == (
        True, 200, {"position": 1}, line + "\n")


def test_tls_with_a_test_made_certificate(tmp_path: Any) -> None:
    """Over HTTPS the client trusts the server when told the CA, and refuses it otherwise."""
    need_serve()
    import vmledger

    ca, cert, key = _certificates(tmp_path)
    db = f"sqlite:///{tmp_path}/ledger.db"
    token = add_token(db, "alice", "admin")

    async def domains(url: str, ca_file: str | None) -> Any:
        async with vmledger.connect(url, token=token, ca=ca_file) as ledger:
            return await ledger.domains()

    with served(db, str(tmp_path / "server.log"), "--certfile", cert, "--keyfile", key,
                tokens={"alice": token}) as server:
        assert server.url.startswith("https://127.0.0.1:")
        trusted = asyncio.run(domains(server.url, ca))
        with pytest.raises(vmledger.StorageError) as refused:
            asyncio.run(domains(server.url, None))
        remote_cli = cli(db, "list", env={"VMLEDGER_URL": server.url, "VMLEDGER_TOKEN": token, "VMLEDGER_CA": ca})
    assert (trusted, "CERTIFICATE_VERIFY_FAILED" in str(refused.value)) == ([], True)
    assert (remote_cli.returncode, remote_cli.stderr) == (0, "")


def test_sigterm_closes_streams_and_exits_0(tmp_path: Any) -> None:
    """SIGTERM ends an open event stream, lets the server finish, and exits 0."""
    need_serve()
    import httpx

    db = f"sqlite:///{tmp_path}/ledger.db"
    token = add_token(db, "rob", "reader")
    with served(db, str(tmp_path / "server.log"), tokens={"rob": token}) as server:
        lines: list[str] = []

        def follow() -> None:
            with httpx.stream("GET", server.url + "/v1/events/stream", headers={"Authorization": f"Bearer {token}"},
                              timeout=60) as response:
                for line in response.iter_lines():
                    lines.append(line)

        reader = threading.Thread(target=follow)
        reader.start()
        deadline = time.monotonic() + 30
        while not lines and time.monotonic() < deadline:
            time.sleep(0.05)
        status = server.stop(signal.SIGTERM)
        reader.join(timeout=30)
    assert (status, lines[0], reader.is_alive()) == (0, ": stream open", False)


def _run_web_with_fault(server: Served, kind: str) -> None:
    """Define and start `web`, and make its next live memory change meet the simulator's fault `kind`."""
    with server.client("alice") as c:
        assert c.post("/v1/domains", json=WEB).status_code == 201
        assert c.post("/v1/domains/web/start").status_code == 200
        assert c.post("/v1/sim/fail", json={"domain": "web", "property": "memory", "kind": kind}).status_code == 204


def test_sigterm_lets_a_request_in_flight_finish_with_its_outcomes(tmp_path: Any) -> None:
    """A set still waiting on the hypervisor when SIGTERM comes is answered 201 with its outcomes, then the server exits 0."""
    need_serve()
    import httpx

    db = f"sqlite:///{tmp_path}/ledger.db"
    with served(db, str(tmp_path / "server.log")) as server:
        # The next live change hangs until the server's hypervisor timeout (0.5 s), then fails.
        _run_web_with_fault(server, "timeout")
        answers: list[httpx.Response] = []

        def ask() -> None:
            with server.client("olga") as c:
                answers.append(c.post("/v1/domains/web/requests", json={"property": "memory", "value": 2 * GiB},
                                      headers={"Idempotency-Key": "in-flight"}))

        asker = threading.Thread(target=ask)
        asker.start()
        deadline = time.monotonic() + 30
        while not _requested(tmp_path / "ledger.db") and time.monotonic() < deadline:
            time.sleep(0.01)
        signalled = dt.datetime.now(dt.timezone.utc)
        status = server.stop(signal.SIGTERM)
        asker.join(timeout=60)
        logged = [json.loads(line) for line in server.log().splitlines() if '"in-flight"' in line]
    outcomes = answers[0].json()["outcomes"]
    assert (status, answers[0].status_code, outcomes["persistent"]["status"], outcomes["live"]["status"],
            outcomes["live"]["reason"]) == (0, 201, "applied", "failed", "timeout")
    assert [(line["status"], dt.datetime.fromisoformat(line["time"]) > signalled) for line in logged] == [(201, True)]


def test_sigterm_ends_the_server_while_a_hypervisor_call_never_returns(tmp_path: Any) -> None:
    """A hypervisor call blocked in its thread (the simulator's `late` fault, an hour) does not keep the server alive.

    The request is answered at the server's timeout (0.5 s); the thread
    sleeps on.  SIGTERM then ends the process at once, where joining that
    thread at exit kept it for the hour.
    """
    need_serve()
    db = f"sqlite:///{tmp_path}/ledger.db"
    with served(db, str(tmp_path / "server.log")) as server:
        _run_web_with_fault(server, "late")
        with server.client("alice") as c:
            answer = c.post("/v1/domains/web/requests", json={"property": "memory", "value": 2 * GiB,
                                                              "scope": "live"})
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        try:
            status = server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            status = None
        took = time.monotonic() - started
    live = answer.json()["outcomes"]["live"]
    assert (answer.status_code, live["status"], live["reason"], status) == (201, "failed", "timeout", 0), took


def _requested(path: Any) -> bool:
    """Tell whether the ledger file holds a MemoryChangeRequested event (read directly, without a server)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as conn:
        return bool(conn.execute("SELECT 1 FROM events WHERE type = 'MemoryChangeRequested'").fetchall())


def test_times_out_of_range_in_utc_are_422_never_500(server: Served) -> None:
    """A time that names no UTC time (year 1 east of Greenwich, year 9999 west of it) is refused 422 everywhere."""
    early, late = "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"
    with server.client("alice") as c:
        answers = [c.get("/v1/history", params={"since": early}), c.get("/v1/events", params={"until": late}),
                   c.get("/v1/drift", params={"as_of": early}), c.get("/v1/audit", params={"until": late}),
                   c.get("/v1/domains/web/diff", params={"from": early}),
                   c.post("/v1/domains/web/revert", json={"to": early, "dry_run": True})]
        page = c.get("/", params={"as_of": early})
    assert [(a.status_code, a.json()["code"]) for a in answers] == [(422, "invalid_request")] * len(answers)
    assert "out of range in UTC" in answers[0].json()["detail"]
    assert (page.status_code, page.headers["content-type"]) == (422, "text/html; charset=utf-8")


def test_a_malformed_checkpoint_is_refused_422_never_reported_as_damage(server: Served) -> None:
    """`POST /v1/verify` with a checkpoint `verify` never made answers 422, not "the ledger is damaged"."""
    with server.client("alice") as c:
        made = c.post("/v1/verify", json={"checkpoint": True}).json()["checkpoint"]
        bad = [c.post("/v1/verify", json={"since": {**made, **change}}) for change in (
            {"position": -5}, {"position": -5, "hash": ""}, {"hash": "zz"}, {"hash": made["hash"].upper()})]
        again = c.post("/v1/verify", json={"since": made})
    assert [(b.status_code, b.json()["code"]) for b in bad] == [(422, "invalid_request")] * 4
    assert again.status_code == 200


def test_unknown_requests_and_tokens_are_404_and_a_taken_token_name_409(server: Served) -> None:
    """As the OpenAPI document says: 404 for an unknown request or token, 409 for a token name in use."""
    with server.client("alice") as c:
        request = c.get("/v1/requests/no-such-request")
        token = c.delete("/v1/tokens/no-such-token")
        taken = c.post("/v1/tokens", json={"name": "rob", "role": "reader"})
    assert [(r.status_code, r.json()["code"]) for r in (request, token, taken)] == [
        (404, "unknown_request"), (404, "unknown_token"), (409, "token_exists")]
    assert taken.json()["detail"] == "a token named 'rob' exists already"


def test_a_request_id_with_slashes_and_dots_is_found_at_its_location(server: Served) -> None:
    """`Location` names the request whatever its id holds: `/`, `//`, `..`; the remote client finds it too."""
    import vmledger

    ids = ["batch/7", "a//b/../c", ".."]
    with server.client("olga") as c:
        made = [_set(server, "olga", {"property": "vcpus", "value": 2}, **{"Idempotency-Key": i}) for i in ids]
        found = [c.get(m.headers["location"]) for m in made]

    async def remote() -> list[str]:
        async with vmledger.connect(server.url, token=server.tokens["rob"]) as ledger:
            return [(await ledger.request(i)).request_id for i in ids]

    assert [(f.status_code, f.json()["request_id"]) for f in found] == [(200, i) for i in ids]
    assert asyncio.run(remote()) == ids


def test_head_answers_as_get_without_a_body(server: Served) -> None:
    """HEAD is answered wherever GET is, with GET's status and headers and no body; the event stream too."""
    with server.client("rob") as c:
        for path in ("/healthz", "/v1/domains", "/", "/v1/events/stream"):
            head = c.head(path)
            assert (path, head.status_code, head.content) == (path, 200, b"")
            if path != "/v1/events/stream":
                got = c.get(path)
                assert (head.headers["content-type"], head.headers["content-length"]) == (
                    got.headers["content-type"], str(len(got.content)))
    with server.client(None) as c:
        assert c.head("/v1/domains").status_code == 401


def test_pages_and_assets_name_one_charset_and_no_documentation_pages_are_served(server: Served) -> None:
    """Content types carry one charset; the API's document is served, no page that loads scripts from elsewhere."""
    with server.client("rob") as c:
        page = c.get("/")
        types = {page.headers["content-type"]}
        for asset in (p for p in page.text.split('"') if p.startswith("/static/")):
            types.add(c.get(asset).headers["content-type"])
        pages = [c.get(p).status_code for p in ("/schema/redoc", "/schema/swagger", "/schema/elements",
                                                "/schema/rapidoc", "/schema/openapi.yaml")]
        document = c.get("/openapi.json")
    assert types >= {"text/html; charset=utf-8", "text/css; charset=utf-8"}
    assert [t for t in types if t.count("charset") != 1] == []
    assert (pages, document.status_code) == ([404] * 5, 200)


def test_serve_and_token_refuse_a_missing_ledger_a_bad_certificate_and_a_bad_port(tmp_path: Any) -> None:
    """Each exits 2 with one line, before saying it serves, and leaves no ledger behind."""
    need_serve()
    missing = f"sqlite:///{tmp_path}/typo.db"
    (tmp_path / "junk.pem").write_text("junk")
    runs = [cli(missing, "serve", "--port", "0"), cli(missing, "token", "add", "x", "--role", "admin"),
            cli(missing, "token", "list")]
    db = f"sqlite:///{tmp_path}/ledger.db"
    assert cli(db, "init").returncode == 0
    junk = str(tmp_path / "junk.pem")
    runs += [cli(db, "serve", "--port", "0", "--certfile", junk, "--keyfile", junk),
             cli(db, "serve", "--port", "0", "--certfile", str(tmp_path / "none.pem"), "--keyfile", junk),
             cli(db, "serve", "--port", "70000")]
    assert [(r.returncode, len(r.stderr.splitlines()), r.stderr.startswith("vmledger: error: ")) for r in runs] == [
        (2, 1, True)] * 6
    assert ["no ledger at" in r.stderr for r in runs[:3]] == [True] * 3
    assert "none.pem" in runs[4].stderr and "65535" in runs[5].stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("typo")) == []
