"""Debian's chromium, headless, driven by Playwright without a browser download: the UI tests' one way in.

A test that needs it uses :func:`chromium`, which skips the test with the reason when chromium or the playwright
package is missing (``.ci/run`` installs chromium, so in CI these tests run), and :func:`sign_in` for Airflow's
login form (the simple auth manager's and FAB's have the same fields).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A launched headless browser, closed afterwards; skips the calling test when it cannot run here."""
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if not path:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium; .ci/run does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is not installed")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def sign_in(browser: Any, base: str, user: str, password: str, *, width: int = 1400, height: int = 1200) -> Any:
    """A new page in its own context, signed in to the Airflow UI at ``base`` as ``user``."""
    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
    page.set_default_timeout(60_000)
    page.goto(base + "/")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.keyboard.press("Enter")
    page.wait_for_url(lambda url: "/login" not in url)
    return page
