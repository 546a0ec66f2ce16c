"""The Dashboard in a real browser: Debian's chromium, headless, driven by Playwright (which
may not download a browser of its own here, so it is pointed at /usr/bin/chromium)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ServerProc, call, server_process

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PASSWORD = "alice-password-1"
# Where screenshots go (`make screenshots` sets it to docs/screenshots); unset: nowhere.
SHOTS = os.environ.get("DINP_SCREENSHOTS")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """A server with team blue (alice, with a password; app blue-web) and team red
    (app red-web)."""
    with server_process(tmp_path_factory.mktemp("dashboard")) as s:
        for team in ("blue", "red"):
            call(s, "POST", "/teams", {"name": team})
            call(s, "POST", "/apps", {"name": f"{team}-web", "team": team, "instances": 0,
                                      "image": "127.0.0.1:5000/hello:1"})
        call(s, "POST", "/users", {"name": "alice", "password": PASSWORD, "teams": ["blue"]})
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (scripts/setup.sh installs it)")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def test_signing_in_with_a_password_shows_only_the_users_apps_and_signs_out(
        server: ServerProc, browser: object) -> None:
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(server.url + "/")
    page.get_by_label("User").fill("alice")
    page.get_by_label("Password").fill("not-her-password")
    page.get_by_role("button", name="Sign in").click()
    playwright_api.expect(page.get_by_role("alert")).to_have_text("wrong user name or password")

    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    playwright_api.expect(page.locator("#who")).to_have_text("signed in as alice (member)")
    playwright_api.expect(page.locator("#apps")).to_contain_text("blue-web")
    assert "red-web" not in page.locator("#apps").inner_text()  # another team's
    token = page.evaluate("sessionStorage.getItem('dinp-token')")
    assert token.startswith("dinp_")
    assert page.evaluate("localStorage.length") == 0  # nothing kept past the tab
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / "signed-in.png"), full_page=True)

    page.get_by_role("button", name="Sign out").click()
    playwright_api.expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('dinp-token')") is None
    # The session token was revoked on the server, not only forgotten by the page.
    status = page.evaluate(
        """async (t) => (await fetch('/api/v1/whoami',
                                     {headers: {Authorization: 'Bearer ' + t}})).status""",
        token)
    assert status == 401
    page.close()


def test_signing_in_with_an_api_token(server: ServerProc, browser: object) -> None:
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(server.url + "/")
    page.get_by_label("API token").fill(server.admin_token)
    page.get_by_label("API token").press("Enter")
    playwright_api.expect(page.locator("#who")).to_have_text("signed in as admin (admin)")
    playwright_api.expect(page.locator("#apps")).to_contain_text("red-web")
    playwright_api.expect(page.locator("#apps")).to_contain_text("blue-web")
    page.close()
