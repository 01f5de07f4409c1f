"""A real headless Chromium for the console tests: Debian's `chromium` driven by its `chromedriver` through Selenium.

No browser is downloaded: the test command installs Debian's packages, and
axe-core from the npm registry into `.cache/npm` (ignored by git).  Missing
pieces skip the browser tests locally and fail them under `CI=true`.
Screenshots go to `SCREENSHOTS`, which the test command prints.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import pytest

__all__ = ["need_browser", "chromium", "axe_violations", "console_errors", "screenshot", "SCREENSHOTS", "AXE"]

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
#: axe-core, as the test command installs it from the npm registry.
AXE = ROOT / ".cache" / "npm" / "node_modules" / "axe-core" / "axe.min.js"
#: Where every console test leaves its screenshots.
SCREENSHOTS = ROOT / ".cache" / "screenshots"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1000")


def need_browser() -> None:
    """Skip the calling test when Chromium, chromedriver, Selenium or axe-core is missing; fail it under `CI=true`."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER, AXE) if not os.path.exists(p)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    if missing:
        message = f"the console tests need {', '.join(missing)}: run scripts/test.sh, which installs them"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true: the browser tests must run)")
        pytest.skip(message)


def chromium(profile: pathlib.Path) -> Any:
    """Return a Selenium driver of a fresh headless Chromium whose profile is `profile`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    driver.set_page_load_timeout(30)
    return driver


def console_errors(driver: Any) -> list[str]:
    """Return the browser console's errors since the last call (uncaught exceptions, failed loads, console.error)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def axe_violations(driver: Any) -> list[tuple[str, str, int]]:
    """Run axe-core on the current page; return (rule, impact, nodes) of each serious or critical violation."""
    driver.execute_script(AXE.read_text(encoding="utf-8"))
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document).then(r => done(r.violations.map(v => [v.id, v.impact, v.nodes.length])),"
        " e => done([['axe-error', String(e), 0]]));")
    return [tuple(v) for v in result if v[1] in ("serious", "critical", "axe-error")]


def screenshot(driver: Any, name: str) -> pathlib.Path:
    """Save a screenshot of the whole page as `SCREENSHOTS/name.png`; return its path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(1000, min(int(height) + 40, 4000)))
    assert driver.save_screenshot(str(path)), f"no screenshot at {path}"
    driver.set_window_size(1280, 1000)
    return path

