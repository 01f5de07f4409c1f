"""The console in a real headless Chromium against a real `vmledger serve` behind `--root-path` (issue 15).

One server and one browser serve the whole module.  The seed story is told
through the console itself: an operator signs in and asks for 1224MiB on a
host short of memory with the domain page's change form.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any, Iterator

import attrs
import pytest

from tests.e2e.browser import axe_violations, chromium, console_errors, need_browser, screenshot
from tests.e2e.served import Served, need_serve, served

MiB, GiB = 2**20, 2**30
PREFIX = "/ledger"
WEB = {"name": "web", "guest_type": "pv", "memory": GiB, "max_memory": 4 * GiB, "vcpus": 2, "max_vcpus": 4,
       "cdroms": {"hdc": ""}}


@attrs.define
class Story:
    """The module's server and browser, and the seed story's request id and the log's head after it."""

    server: Served
    driver: Any
    request_id: str
    head: int

    def go(self, path: str) -> None:
        """Open a console page and wait until its script has run."""
        self.driver.get(self.server.url + path)

    def sign_in(self, name: str) -> None:
        """Sign in as the token named `name` through the sign-in form, forgetting any earlier session."""
        from selenium.webdriver.common.by import By

        self.go("/signin")
        self.driver.delete_all_cookies()
        self.go("/signin")
        self.driver.find_element(By.ID, "token").send_keys(self.server.tokens[name])
        self.driver.find_element(By.CSS_SELECTOR, "form.signin button").click()
        wait(self.driver, lambda d: d.current_url == self.server.url + "/")

    def text(self, css: str) -> str:
        """Return the text of the element `css` selects, as shown (read in one step: live regions are replaced)."""
        return self.driver.execute_script(
            "const e = document.querySelector(arguments[0]); return e === null ? null : e.innerText.trim();", css)

    def count(self, css: str) -> int:
        """Return how many elements `css` selects."""
        from selenium.webdriver.common.by import By

        return len(self.driver.find_elements(By.CSS_SELECTOR, css))


def wait(driver: Any, condition: Any, seconds: float = 10) -> Any:
    """Return `condition(driver)` once true, polling; fail after `seconds`."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.05).until(condition)


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    """Return the module's story: `web` defined and started, the host short of memory, then 1224MiB asked in the console."""
    need_serve()
    need_browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    root = tmp_path_factory.mktemp("console")
    with served(f"sqlite:///{root}/ledger.db", str(root / "server.log"), "--root-path", PREFIX) as server:
        assert server.url.endswith(PREFIX)
        with server.client("olga") as c:
            assert c.post("/v1/domains", json=WEB).status_code == 201
            assert c.post("/v1/domains/web/start").status_code == 200
        with server.client("alice") as c:
            assert c.post("/v1/sim/host-free", json={"size": 100 * MiB}).status_code == 204
        driver = chromium(root / "profile")
        try:
            s = Story(server=server, driver=driver, request_id="", head=0)
            s.sign_in("olga")
            s.go("/domains/web")
            Select(driver.find_element(By.ID, "change-property")).select_by_visible_text("memory")
            driver.find_element(By.ID, "change-value").send_keys("1224MiB")
            driver.find_element(By.ID, "change-reason").send_keys("more cache")
            driver.find_element(By.CSS_SELECTOR, "#change-form button").click()
            wait(driver, lambda d: "done=" in d.current_url)
            with server.client("rob") as c:
                (record,) = c.get("/v1/history", params={"domain": "web"}).json()
            s.request_id, s.head = record["request_id"], server.head()
            assert (record["property"], record["requested"], record["principal"], record["reason"]) == (
                "memory", 1224 * MiB, "olga", "more cache")
            yield s
        finally:
            driver.quit()


def test_seed_story_shows_memory_drifting_partial_with_its_request_and_the_timeline_marks_it(story: Story) -> None:
    """After the seed story the domain page shows memory drifting, cause partial, with the request id; the timeline marks it partial."""
    story.go("/domains/web")
    row = "#prop-memory"
    seen = (story.driver.find_element("css selector", row).get_attribute("data-cause"), story.text(f"{row} .cause"),
            story.text(f"{row} .request"), story.text(f"{row} .persistent"), story.text(f"{row} .live"))
    screenshot(story.driver, "domain")
    # 100MiB free on the host: the balloon delivers 1GiB + 100MiB of the 1224MiB asked.
    assert seen == ("partial", "partial", story.request_id, "1224MiB", "1124MiB")
    story.go("/domains/web/timeline/memory")
    wait(story.driver, lambda d: story.count(".chart canvas") == 1)
    marked = story.text(f'#timeline-requests tr[data-request="{story.request_id}"] [data-scope="live"]')
    screenshot(story.driver, "timeline")
    assert (marked, story.count(".u-legend .u-series")) == ("live: partial (1124MiB)", 4)


def test_a_set_through_the_api_appears_in_place_within_two_seconds(story: Story) -> None:
    """A set made through the API while the domain page is open shows within 2 s, without a reload."""
    story.go("/domains/web")
    story.driver.execute_script("window.stillTheSamePage = true")
    assert story.text("#prop-vcpus .persistent") == "2"
    with story.server.client("bob") as c:
        assert c.post("/v1/domains/web/requests", json={"property": "vcpus", "value": 3}).status_code == 201
    started = time.monotonic()
    wait(story.driver, lambda d: story.text("#prop-vcpus .persistent") == "3", seconds=2)
    took = time.monotonic() - started
    same = story.driver.execute_script("return window.stillTheSamePage === true")
    screenshot(story.driver, "domain-live")
    assert (same, story.text("#prop-vcpus .live"), took < 2) == (True, "3", True)


def test_the_fleet_updates_the_changed_row_in_place(story: Story) -> None:
    """A set through the API changes the fleet row of its domain within 2 s, the row swapped alone, the page not reloaded."""
    story.go("/")
    story.driver.execute_script("window.stillTheSamePage = true; document.getElementById('fleet-rows').dataset.kept = 'yes'")
    with story.server.client("bob") as c:
        assert c.post("/v1/domains/web/requests", json={"property": "media:hdc", "value": "/iso/b.iso"}).status_code == 201
    wait(story.driver, lambda d: "media:hdc → /iso/b.iso" in story.text("#fleet-rows tr"), seconds=2)
    kept = story.driver.execute_script(
        "return [window.stillTheSamePage === true, document.getElementById('fleet-rows').dataset.kept]")
    screenshot(story.driver, "fleet-live")
    assert (kept, story.text("#fleet-rows tr").endswith("bob")) == ([True, "yes"], True)


def test_the_as_of_control_shows_the_fleet_before_a_set(story: Story) -> None:
    """After a set through the API, the fleet as of the position before it shows the change before as the last one."""
    from selenium.webdriver.common.by import By

    with story.server.client("bob") as c:
        done = c.post("/v1/domains/web/requests", json={"property": "media:hdc", "value": "/iso/a.iso"}).json()
        previous = [r for r in c.get("/v1/history", params={"domain": "web"}).json() if r["position"] < done["position"]]
    story.go("/")
    now = story.text("#fleet-rows tr")
    story.driver.find_element(By.ID, "as-of").send_keys(str(done["position"] - 1))
    story.driver.find_element(By.CSS_SELECTOR, "form.as-of button").click()
    wait(story.driver, lambda d: "as_of=" in d.current_url)
    then = story.text("#fleet-rows tr")
    url = story.driver.current_url
    domain_link = story.driver.find_element(By.CSS_SELECTOR, "#fleet-rows a").get_attribute("href")
    screenshot(story.driver, "fleet-as-of")
    assert ("media:hdc → /iso/a.iso" in now, "/iso/a.iso" in then, previous[-1]["property"] + " → " in then,
            then.endswith(previous[-1]["principal"]), url.endswith(f"{PREFIX}/?as_of={done['position'] - 1}"),
            domain_link.endswith(f"{PREFIX}/domains/web?as_of={done['position'] - 1}")) == (
        True, False, True, True, True, True)


def _csrf(secret: str) -> str:
    """Return the CSRF token the console documents: HMAC-SHA256 of the label under the session's token."""
    return hmac.new(secret.encode(), b"vmledger console form", hashlib.sha256).hexdigest()


def _post(story: Story, path: str, fields: dict[str, str]) -> int:
    """POST a form from the page's own origin, with the session's cookie; return the final status."""
    return story.driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {method: 'POST', credentials: 'same-origin', body: new URLSearchParams(arguments[1])})"
        ".then(r => done(r.status), e => done(String(e)));", story.server.url + path, fields)


def test_a_reader_sees_no_change_form_and_a_forged_post_writes_nothing(story: Story) -> None:
    """A reader's domain page has no write control; a POST from the reader's session, even with its CSRF token, is refused."""
    story.sign_in("rob")
    story.go("/domains/web")
    controls = story.count("#change-form") + story.count("#observe-form") + story.count("form[method=post] select")
    screenshot(story.driver, "domain-reader")
    before = story.server.head()
    statuses = [_post(story, "/domains/web/set", {"property": "vcpus", "value": "4", "scope": "both",
                                                  "csrf": _csrf(story.server.tokens["rob"])}),
                _post(story, "/domains/web/observe", {"csrf": _csrf(story.server.tokens["rob"])})]
    assert (controls, statuses, story.server.head()) == (0, [403, 403], before)


def test_a_post_without_the_csrf_token_is_refused(story: Story) -> None:
    """An operator's session posting without the CSRF token, or a wrong one, is refused and writes nothing; with it, it writes."""
    story.sign_in("olga")
    before = story.server.head()
    refused = [_post(story, "/domains/web/set", {"property": "vcpus", "value": "4", "scope": "both"}),
               _post(story, "/domains/web/set", {"property": "vcpus", "value": "4", "scope": "both", "csrf": "0" * 64}),
               _post(story, "/domains/web/observe", {})]
    after_refusals = story.server.head()
    accepted = _post(story, "/domains/web/set", {"property": "vcpus", "value": "4", "scope": "both",
                                                 "csrf": _csrf(story.server.tokens["olga"])})
    story.go("/history?domain=web")
    screenshot(story.driver, "history-after-csrf")
    assert (refused, after_refusals, accepted, story.server.head() > before) == ([403, 403, 403], before, 200, True)


PAGES = ["/signin", "/", "/domains/web", "/domains/web/timeline/memory", "/domains/web/timeline/media:hdc", "/drift",
         "/history", "/log", "/?as_of=3", "/domains/web?as_of=3&outcome=partial"]


def test_no_console_errors_and_no_serious_accessibility_violations_on_any_page(story: Story) -> None:
    """Every page, signed in as an operator (the sign-in page signed out), logs no JavaScript error and axe finds nothing serious."""
    story.sign_in("olga")
    console_errors(story.driver)
    found = {}
    for path in PAGES:
        if path == "/signin":
            story.go("/signin")
            story.driver.delete_all_cookies()
        story.go(path)
        if "timeline/memory" in path:
            wait(story.driver, lambda d: story.count(".chart canvas") == 1)
        found[path] = (axe_violations(story.driver), console_errors(story.driver))
        screenshot(story.driver, "page" + path.replace("/", "-").replace("?", "-").replace(":", "-"))
        if path == "/signin":
            story.sign_in("olga")
            console_errors(story.driver)
    assert found == {path: ([], []) for path in PAGES}


def test_a_lost_stream_shows_a_banner_and_resumes_where_it_stopped(story: Story) -> None:
    """When the server goes, the log page says so; once back, it resumes after the last event it had: none twice, none missed."""
    import signal

    from tests.e2e.served import cli, start

    story.go("/log")
    port = story.server.url.removesuffix(PREFIX).rsplit(":", 1)[1]
    with story.server.client("bob") as c:
        assert c.post("/v1/domains/web/requests", json={"property": "vcpus", "value": 2}).status_code == 201
    wait(story.driver, lambda d: story.text("#log-rows th") == str(story.server.head()))
    hidden_before = story.driver.find_element("id", "stream-lost").get_attribute("hidden")
    assert story.server.stop(signal.SIGTERM) == 0
    wait(story.driver, lambda d: d.find_element("id", "stream-lost").is_displayed())
    screenshot(story.driver, "log-stream-lost")
    written = cli(story.server.db, "set", "web", "vcpus", "3")  # while no server runs
    back = start(story.server.db, story.server.log_path + ".again", "--root-path", PREFIX, "--port", port,
                 tokens=story.server.tokens)
    try:
        head = back.head()
        wait(story.driver, lambda d: story.text("#log-rows th") == str(head), seconds=20)
        wait(story.driver, lambda d: not d.find_element("id", "stream-lost").is_displayed())
        shown = [int(p) for p in story.driver.execute_script(
            "return Array.from(document.querySelectorAll('#log-rows th')).map(e => e.textContent)")]
        screenshot(story.driver, "log-resumed")
    finally:
        back.proc.kill()
        back.proc.wait(timeout=60)
    assert (hidden_before, written.returncode, shown) == ("true", 0, list(range(head, head - len(shown), -1)))
