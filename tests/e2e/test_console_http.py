"""The console over plain HTTP (issue 15): who may see a page, the session cookie, forms, static names, the root path."""

from __future__ import annotations

import hashlib
import html
import json
import re
from datetime import datetime
from typing import Any, Iterator

import httpx
import pytest

from tests.e2e.served import Served, cli, need_serve, served

MiB, GiB = 2**20, 2**30
PREFIX = "/ops/ledger"
WEB = {"name": "web", "guest_type": "pv", "memory": GiB, "max_memory": 4 * GiB, "vcpus": 2, "max_vcpus": 4}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Return a server under `PREFIX` on a fresh SQLite ledger where `web` runs."""
    need_serve()
    root = tmp_path_factory.mktemp("console-http")
    with served(f"sqlite:///{root}/ledger.db", str(root / "server.log"), "--root-path", PREFIX + "/") as s:
        with s.client("olga") as c:
            assert c.post("/v1/domains", json=WEB).status_code == 201
            assert c.post("/v1/domains/web/start").status_code == 200
        yield s


def _signed_in(html: str) -> bool:
    return 'id="properties"' in html and 'name="token"' not in html


def test_a_page_answers_a_bearer_token_and_shows_a_stranger_the_sign_in_form(server: Served) -> None:
    """A page with `Authorization: Bearer` is answered; without a token, or with an unknown one, it is the sign-in form."""
    with server.client("rob") as c:
        reader = c.get("/domains/web")
    with server.client(None) as c:
        stranger = c.get("/domains/web")
        forged = c.get("/domains/web", headers={"Authorization": "Bearer vml_not-a-token"})
    assert ((reader.status_code, _signed_in(reader.text)), (stranger.status_code, 'name="token"' in stranger.text,
            'name="next" value="/ops/ledger/domains/web"' in stranger.text), 'name="token"' in forged.text) == (
        (200, True), (200, True, True), True)


def test_sign_in_sets_a_strict_http_only_cookie_and_sign_out_clears_it(server: Served) -> None:
    """Signing in keeps the token in an HttpOnly, SameSite=Strict cookie under the root path; signing out clears it."""
    with server.client(None) as c:
        wrong = c.post("/signin", data={"token": "vml_wrong", "next": PREFIX + "/"})
        done = c.post("/signin", data={"token": server.tokens["rob"], "next": PREFIX + "/domains/web"})
        cookie = done.headers["set-cookie"]
        page = c.get("/domains/web")
        csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text).group(1)
        out = c.post("/signout", data={"csrf": csrf})
        after = c.get("/domains/web")
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert (wrong.status_code, "set-cookie" in wrong.headers, done.status_code, done.headers["location"],
            cookie.split(";")[0] == f"vmledger_session={server.tokens['rob']}", attributes,
            f"Path={PREFIX}/" in cookie, "SameSite=Strict" in cookie, _signed_in(page.text),
            out.status_code, "Max-Age=0" in out.headers["set-cookie"], _signed_in(after.text)) == (
        401, False, 303, PREFIX + "/domains/web", True, {"path", "httponly", "samesite"}, True, True, True,
        303, True, False)


def test_sign_in_never_sends_a_caller_to_another_site(server: Served) -> None:
    """A `next` that leaves the console sends the caller to the fleet page instead."""
    with server.client(None) as c:
        targets = [c.post("/signin", data={"token": server.tokens["rob"], "next": n}).headers["location"]
                   for n in ("https://evil.example/", "//evil.example/", PREFIX + "/log")]
    assert targets == [PREFIX + "/", PREFIX + "/", PREFIX + "/log"]


def test_the_change_form_records_the_tokens_principal_and_bad_input_writes_nothing(server: Served) -> None:
    """A set through the form is recorded with the token's name as principal; a value that does not parse writes nothing."""
    with server.client("olga") as c:
        before = server.head()
        bad = c.post("/domains/web/set", data={"property": "memory", "value": "lots", "scope": "both"})
        middle = server.head()
        good = c.post("/domains/web/set", data={"property": "memory", "value": "1536MiB", "scope": "persistent",
                                                "reason": "room to grow"})
        (record,) = c.get("/v1/history", params={"domain": "web", "property": "memory"}).json()
    assert (bad.status_code, "error=" in bad.headers["location"], middle, good.status_code,
            good.headers["location"], record["principal"], record["requested"], record["reason"]) == (
        303, True, before, 303, f"{PREFIX}/domains/web?done={record['request_id']}", "olga", 1536 * MiB,
        "room to grow")


def test_bad_as_of_and_unknown_domain_get_a_clear_page(server: Served) -> None:
    """A malformed as-of answers 422 and an unknown domain 404, each as a page saying why; nothing is written."""
    before = server.head()
    with server.client("rob") as c:
        bad = c.get("/", params={"as_of": "yesterday-ish"})
        past = c.get("/", params={"as_of": str(before + 5)})
        unknown = c.get("/domains/nosuch")
    assert ((bad.status_code, "invalid time" in bad.text), (past.status_code, "past the head" in past.text),
            (unknown.status_code, "unknown domain" in unknown.text), server.head()) == (
        (422, True), (422, True), (404, True), before)


def test_static_files_carry_their_content_hash_and_are_cached_for_good(server: Served) -> None:
    """The page names its script and style by content hash; each is served immutable; a plain name is not found."""
    with server.client("rob") as c:
        page = c.get("/").text
        names = re.findall(rf'(?:src|href)="{PREFIX}/static/([^"]+)"', page)
        files = {n: c.get(f"/static/{n}") for n in names}
        plain = c.get("/static/console.js")
    hashes = {n: (n.split(".")[-2], hashlib.sha256(r.content).hexdigest()[:12], r.status_code,
                  r.headers["cache-control"]) for n, r in files.items()}
    assert (len(names), plain.status_code) == (2, 404)
    assert hashes == {n: (h, h, 200, "public, max-age=31536000, immutable") for n, (h, *_) in hashes.items()}


def test_the_service_answers_under_the_root_path_and_behind_a_proxy_that_strips_it(server: Served) -> None:
    """The API and console answer at PREFIX, and without it (a proxy that strips the prefix); links carry it; metrics name routes."""
    bare = server.url.removesuffix(PREFIX)
    with httpx.Client(headers=server.headers("rob")) as c:
        prefixed, stripped = c.get(server.url + "/v1/head"), c.get(bare + "/v1/head")
        page = c.get(bare + "/drift").text
    with httpx.Client(headers=server.headers("alice")) as c:
        metrics = c.get(server.url + "/metrics").text
    assert (prefixed.json(), stripped.json(), f'href="{PREFIX}/history"' in page, 'href="/history"' in page,
            'endpoint="/v1/head",method="GET",status="200"}' in metrics, 'endpoint="-"' in metrics,
            f'"path": "{PREFIX}/v1/head"' in server.log()) == (
        {"position": server.head()}, {"position": server.head()}, True, False, True, False, True)


def test_observe_now_records_an_out_of_band_change_the_timeline_marks(server: Served) -> None:
    """Observe now records a ballooned domain's live memory with the operator's name, and the timeline marks it; a reader's is refused."""
    with server.client("alice") as c:
        assert c.post("/v1/sim/balloon", json={"domain": "web", "size": 900 * MiB}).status_code == 204
    before = server.head()
    with server.client("rob") as c:
        refused = c.post("/domains/web/observe")
    middle = server.head()
    with server.client("olga") as c:
        done = c.post("/domains/web/observe")
        events = c.get("/v1/events", params={"from": before}).json()
        timeline = c.get("/domains/web/timeline/memory").text
    chart = json.loads(html.unescape(re.search(r'data-chart="([^"]+)"', timeline).group(1)))
    observed = [(x, y) for x, y in zip(chart["x"], chart["series"]["observed"]) if y is not None]
    at = datetime.fromisoformat(events[0]["recorded_at"]).timestamp()
    assert (refused.status_code, middle, done.status_code, done.headers["location"],
            [(e["type"], e["data"]["value"], e["metadata"]["principal"]) for e in events],
            re.findall(r'<tr class="observed"><td class="time">[^<]+</td><td>(\w+)</td><td>([^<]+)</td>', timeline),
            observed) == (
        403, before, 303, f"{PREFIX}/domains/web?observed=1", [("LiveValueObserved", 900 * MiB, "olga")],
        [("live", "900MiB")], [(at, 900.0)])


def test_history_pages_and_filters(server: Served) -> None:
    """The history shows 50 requests a page, newest first, with links between pages; filters keep only what they name."""
    with server.client("bob") as c:
        for i in range(55):
            assert c.post("/v1/domains/web/requests", json={"property": "vcpus", "value": 1 + i % 4,
                                                            "scope": "persistent"}).status_code == 201
        ids = [r["request_id"] for r in c.get("/v1/history", params={"domain": "web", "principal": "bob"}).json()]
    with server.client("rob") as c:
        first = c.get("/history", params={"principal": "bob"}).text
        second = c.get("/history", params={"principal": "bob", "page": "2"}).text
        none = c.get("/history", params={"principal": "bob", "outcome": "refused"}).text
    shown = [re.findall(r'data-request="([0-9a-f]+)"', page) for page in (first, second, none)]
    assert (shown, 'href="/ops/ledger/history?principal=bob&amp;page=2">Older' in first,
            'href="/ops/ledger/history?principal=bob&amp;page=1">Newer' in second) == (
        [ids[::-1][:50], ids[::-1][50:], []], True, True)


def test_a_bad_root_path_is_a_usage_error(tmp_path: Any) -> None:
    """`serve --root-path` with a path that is no prefix exits 2 with one line saying so, and serves nothing."""
    need_serve()
    from vmledger.eventstore.errors import InvalidRequestError
    from vmledger.service.run import check_root_path

    refused = []
    for bad in ("ledger", "/a b", "/x?y", "//", "/é"):
        with pytest.raises(InvalidRequestError, match="invalid root path") as e:
            check_root_path(bad)
        refused.append(str(e.value).startswith(f"invalid root path {bad!r}"))
    done = cli(f"sqlite:///{tmp_path}/ledger.db", "serve", "--port", "0", "--root-path", "ledger")
    assert (refused, [check_root_path(p) for p in ("", "/", "/ledger/", "/ops/ledger")],
            done.returncode, done.stderr.count("\n"), "invalid root path 'ledger'" in done.stderr) == (
        [True] * 5, ["", "", "/ledger", "/ops/ledger"], 2, 1, True)


def test_the_fleet_filter_works_without_javascript(server: Served) -> None:
    """The fleet's filter box is a form: `?q=` keeps the domains whose name, state or last principal holds the words."""
    with server.client("olga") as c:
        assert c.post("/v1/domains", json={**WEB, "name": "db1"}).status_code == 201
    with server.client("rob") as c:
        pages = {q: re.findall(r'data-domain="([^"]+)"', c.get("/", params={"q": q}).text)
                 for q in ("", "DB", "running", "nobody")}
    assert pages == {"": ["db1", "web"], "DB": ["db1"], "running": ["web"], "nobody": []}


def test_the_fleet_shows_a_hundred_domains_a_page_by_name(server: Served) -> None:
    """With more than a hundred domains the fleet pages by name, and the filter searches all of them."""
    with server.client("olga") as c:
        for i in range(100):
            assert c.post("/v1/domains", json={**WEB, "name": f"f{i:03d}"}).status_code == 201
        names = sorted(d["domain"] for d in c.get("/v1/domains").json())
    with server.client("rob") as c:
        pages = [re.findall(r'data-domain="([^"]+)"', c.get("/", params=p).text)
                 for p in ({}, {"page": "2"}, {"q": "f09", "page": "1"})]
        first = c.get("/").text
    assert (pages, 'href="/ops/ledger/?page=2">Next' in first) == (
        [names[:100], names[100:], [f"f09{i}" for i in range(10)]], True)


def test_a_revoked_tokens_session_is_refused_at_its_next_page(server: Served) -> None:
    """A session whose token is revoked shows the sign-in form at its next page, on the very same cookie."""
    with server.client("alice") as admin:
        secret = admin.post("/v1/tokens", json={"name": "temp", "role": "reader"}).json()["token"]
        with server.client(None) as browser:
            assert browser.post("/signin", data={"token": secret}).status_code == 303
            before = browser.get("/domains/web").text
            assert admin.delete("/v1/tokens/temp").status_code == 204
            after = browser.get("/domains/web").text
    assert (_signed_in(before), "temp (reader)" in before, _signed_in(after), 'name="token"' in after) == (
        True, True, False, True)


def test_a_requests_location_carries_the_root_path_and_finds_it_whatever_its_id_holds(server: Served) -> None:
    """Behind `--root-path`, `Location` names the prefix, and an id holding `/` is found there (the raw path kept)."""
    import httpx as client_lib

    with server.client("olga") as c:
        made = c.post("/v1/domains/web/requests", json={"property": "vcpus", "value": 2, "scope": "persistent"},
                      headers={"Idempotency-Key": "under/the//root"})
    location = made.headers["location"]
    origin = server.url[:-len(PREFIX)]
    with client_lib.Client(headers=server.headers("rob")) as c:
        found = c.get(origin + location)
    assert (made.status_code, location, found.status_code, found.json()["request_id"]) == (
        201, f"{PREFIX}/v1/requests/under%2Fthe%2F%2Froot", 200, "under/the//root")
