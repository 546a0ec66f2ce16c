"""The Dashboard in a real browser against a real cluster (server, three agents, router as
processes): Debian's chromium, headless, driven by Playwright (which may not download a
browser of its own here, so it is pointed at /usr/bin/chromium).

Each test signs in as a person would and checks what the page shows against what the
cluster does: the router answers with the release the page says serves. With
DINP_SCREENSHOTS set (`make screenshots`), one screenshot of each page is saved there.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web as aioweb

from tests.e2e.conftest import Cluster, running_cluster
from tests.support import free_port, wait_for

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PASSWORD = "alice-password-1"
REGISTRY = "127.0.0.1:5000"
FIRST_IMAGE, NEXT_IMAGE = f"{REGISTRY}/hello:2", f"{REGISTRY}/hello:dashboard"
ROLLOUT_MS = 90_000  # a release rolled out on a loaded 2-core machine
# Where screenshots go (`make screenshots` sets it to docs/screenshots); unset: nowhere.
SHOTS = os.environ.get("DINP_SCREENSHOTS")
STATIC = Path(__file__).resolve().parents[2] / "src" / "dinp" / "static"


def ensure_next_image() -> None:
    """NEXT_IMAGE: hello:2 under a second tag, made once. (The registry's hello:1 predates
    the sandbox: it writes to a read-only /www and exits, so the tests deploy hello:2
    first and this one next; the page and the app tell releases apart by number.)"""
    try:
        urllib.request.urlopen(urllib.request.Request(
            f"http://{REGISTRY}/v2/hello/manifests/{NEXT_IMAGE.rsplit(':', 1)[1]}",
            method="HEAD", headers={
                "Accept": "application/vnd.docker.distribution.manifest.v2+json"}), timeout=5)
        return
    except urllib.error.HTTPError:
        pass
    subprocess.run(["docker", "tag", "dinp-examples/hello:2", NEXT_IMAGE], check=True)
    subprocess.run(["docker", "push", "-q", NEXT_IMAGE], check=True, capture_output=True)


def admin(c: Cluster, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    """The API as the admin (or `token`), for setting a test up and checking on it."""
    req = urllib.request.Request(
        f"{c.env['DINP_SERVER']}/api/v1{path}", method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token or c.env['DINP_ADMIN_TOKEN']}",
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Teams blue and green, alice (a password) in both, team red with app red-web that
    alice may not see."""
    ensure_next_image()
    with running_cluster(tmp_path_factory.mktemp("dashboard"),
                         f"dash{secrets.token_hex(2)}") as c:
        for team in ("blue", "green", "red"):
            admin(c, "POST", "/teams", {"name": team})
        admin(c, "POST", "/apps", {"name": "red-web", "team": "red", "instances": 0,
                                   "image": FIRST_IMAGE})
        admin(c, "POST", "/users", {"name": "alice", "password": PASSWORD,
                                    "teams": ["blue", "green"]})
        yield c


@pytest.fixture(scope="module")
def web(cluster: Cluster) -> str:
    """App web of team blue, one instance serving (made through the API: the tests that
    use it are about what the page shows and does with an app, not about creating it)."""
    admin(cluster, "POST", "/apps", {"name": "web", "team": "blue", "instances": 1,
                                     "memory": "32m", "image": FIRST_IMAGE,
                                     "health_path": "/health"})
    wait_for(lambda: "hello from web" in cluster.get("web.apps.test")[1], 60, "web to serve")
    return "web"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (scripts/setup.sh installs it)")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any, cluster: Cluster) -> Iterator[Any]:
    """A fresh tab (its own sessionStorage) at 1280x800. Afterwards: the page asked
    nothing of any other server, and threw no error."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    origin = cluster.env["DINP_SERVER"]
    elsewhere: list[str] = []
    errors: list[str] = []
    tab.on("request", lambda r: r.url.startswith((origin + "/", "data:"))
           or elsewhere.append(r.url))
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.goto(origin + "/")
    try:
        yield tab
    finally:
        context.close()
    assert elsewhere == [], "the Dashboard must load and call nothing but its server"
    assert errors == [], "the Dashboard threw"


def shot(page: Any, name: str) -> None:
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


def sign_in(page: Any, user: str = "alice", password: str = PASSWORD) -> None:
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("heading", name="Apps", level=1)).to_be_visible()


def sign_in_with_token(page: Any, token: str) -> None:
    page.get_by_label("API token", exact=True).fill(token)
    page.get_by_label("API token", exact=True).press("Enter")


def open_app(page: Any, name: str) -> None:
    page.get_by_role("link", name="Apps", exact=True).click()
    page.get_by_role("link", name=name, exact=True).click()
    expect(page.get_by_role("heading", name=name, level=1)).to_be_focused()


def serves(c: Cluster, host: str, words: str) -> None:
    wait_for(lambda: words in c.get(host)[1], 60, f"{host} to answer {words!r}")


def field_error(page: Any, form: Any, label: str) -> Any:
    """The message shown next to the input labelled `label` (its aria-describedby)."""
    control = form.get_by_label(label, exact=True)
    ids = control.get_attribute("aria-describedby").split()
    return page.locator("#" + ids[-1])


# Run on every page: labels, names, ids, one h1, contrast (see the file).
AUDIT = (Path(__file__).parent / "dashboard_audit.js").read_text()


def audit(page: Any) -> None:
    assert page.evaluate(AUDIT) == []


def test_signing_in_with_a_password_shows_only_the_users_apps_and_signs_out(
        cluster: Cluster, page: Any) -> None:
    expect(page.get_by_label("User name")).to_be_focused()  # ready to type
    audit(page)
    shot(page, "sign-in")
    page.get_by_label("User name").fill("alice")
    page.get_by_label("Password", exact=True).fill("not-her-password")
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("alert").filter(has_text="wrong")).to_have_text(
        "wrong user name or password")

    sign_in(page)
    expect(page.locator("#who")).to_have_text("Signed in as alice (member)")
    expect(page.locator("#apps")).to_contain_text("No apps yet")  # red-web is red's
    assert "red-web" not in page.locator("main").inner_text()
    token = page.evaluate("sessionStorage.getItem('dinp-token')")
    assert token.startswith("dinp_")
    assert page.evaluate("localStorage.length") == 0  # nothing kept past the tab
    assert page.evaluate("document.cookie") == ""

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign in", exact=True)).to_be_visible()
    expect(page.get_by_role("alert").first).to_have_text("You signed out.")
    assert page.evaluate("sessionStorage.getItem('dinp-token')") is None
    # The session token was revoked on the server, not only forgotten by the page.
    with pytest.raises(urllib.error.HTTPError) as refused:
        admin(cluster, "GET", "/whoami", token=token)
    assert refused.value.code == 401


def test_a_token_that_stops_working_sends_the_page_back_to_signing_in_with_why(
        cluster: Cluster, page: Any) -> None:
    sign_in_with_token(page, "dinp_" + "0" * 40)
    alert = page.locator("form").filter(has_text="API token").get_by_role("alert")
    expect(alert).not_to_be_empty()
    assert "token" in alert.inner_text().lower()  # the server's words, not a status code

    sign_in(page)
    token = page.evaluate("sessionStorage.getItem('dinp-token')")
    admin(cluster, "POST", "/logout", {}, token=token)  # revoked elsewhere (another tab)
    with pytest.raises(urllib.error.HTTPError) as refused:
        admin(cluster, "GET", "/whoami", token=token)
    said = json.loads(refused.value.read())
    expect(page.get_by_role("heading", name="Sign in to dinp")).to_be_visible()
    expect(page.locator(".notice")).to_have_text(f"{said['error']}. {said['hint']}")
    assert page.evaluate("sessionStorage.getItem('dinp-token')") is None

    sign_in_with_token(page, cluster.env["DINP_ADMIN_TOKEN"])
    expect(page.locator("#who")).to_have_text("Signed in as admin (admin)")
    expect(page.locator("#apps")).to_contain_text("red-web")


def test_creating_an_app_then_scaling_deploying_and_rolling_it_back(
        cluster: Cluster, page: Any) -> None:
    c = cluster
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url))
    sign_in(page)
    page.get_by_role("link", name="New app").first.click()
    create = page.locator("#create")
    expect(page.get_by_role("heading", name="New app", level=1)).to_be_focused()
    create.get_by_label("Name", exact=True).fill("shop")
    create.get_by_label("Team").select_option("green")
    create.get_by_label("Image", exact=True).fill(FIRST_IMAGE)
    create.get_by_label("Memory per instance").fill("32m")
    create.get_by_label("Health path").fill("/health")
    create.get_by_label("Environment").fill("GREETING=hi\nMODE=test")
    create.get_by_role("button", name="Create app").click()

    expect(page.get_by_role("heading", name="shop", level=1)).to_be_focused()
    state = page.locator(".app-state")
    expect(state).to_have_text("State: running", timeout=ROLLOUT_MS)
    serves(c, "shop.apps.test", "hello from shop")
    assert "release 1" in c.get("shop.apps.test")[1]
    expect(page.locator(".overview")).to_contain_text(FIRST_IMAGE)
    expect(page.get_by_text("team green", exact=True)).to_be_visible()
    link = page.get_by_role("link", name="http://shop.apps.test")
    assert link.get_attribute("href").startswith("http://shop.apps.test:")

    # Scale: two instances, on the page and behind the router.
    scale = page.locator("form").filter(has=page.get_by_role("heading", name="Scale"))
    scale.get_by_label("Instances").fill("2")
    scale.get_by_role("button", name="Scale").click()
    expect(page.locator("#status")).to_have_text("Scaling shop to 2 instance(s).")
    expect(page.locator(".overview")).to_contain_text("2 healthy of 2 wanted",
                                                      timeout=ROLLOUT_MS)
    instances = page.get_by_role("region", name="Instances table").locator("tbody tr")
    expect(instances).to_have_count(2)
    ids = [row.locator("th").inner_text() for row in instances.all()]
    wait_for(lambda: {i for i in ids if i in c.get("shop.apps.test")[1]} == set(ids), 30,
             "both instances to answer through the router")

    # Deploy the next image: release 2 serves.
    deploy = page.locator("form").filter(has=page.get_by_role("heading", name="Deploy a new image"))
    deploy.get_by_label("Image").fill(NEXT_IMAGE)
    deploy.get_by_role("button", name="Deploy").click()
    expect(page.locator("#status")).to_have_text("Release 2 created: rolling out.")
    expect(state).to_have_text("State: running", timeout=ROLLOUT_MS)
    serves(c, "shop.apps.test", "release 2")
    expect(page.locator(".overview")).to_contain_text(NEXT_IMAGE)
    expect(instances.locator("td:nth-child(6)")).to_have_text(["2", "2"], timeout=ROLLOUT_MS)

    # Roll back to the previous release: release 3, hello:1 again.
    rollback = page.locator("form").filter(has=page.get_by_role("heading", name="Roll back"))
    expect(rollback.get_by_label("To release")).to_contain_text(f"1: {FIRST_IMAGE}")
    rollback.get_by_role("button", name="Roll back").click()
    expect(page.locator("#status")).to_have_text(
        "Release 3 created from the previous release: rolling out.")
    expect(state).to_have_text("State: running", timeout=ROLLOUT_MS)
    serves(c, "shop.apps.test", "release 3")
    app = admin(c, "GET", "/apps/shop")
    assert (app["release"], app["image"]) == (3, FIRST_IMAGE)
    releases = page.get_by_role("region", name="Releases table")
    expect(releases.locator("tbody tr").first).to_contain_text("rollback to 1")
    expect(releases.locator("tbody tr")).to_have_count(3)
    # …and to a chosen one: release 2's image.
    rollback.get_by_label("To release").select_option("2")
    rollback.get_by_role("button", name="Roll back").click()
    expect(page.locator("#status")).to_have_text(
        "Release 4 created from release 2: rolling out.")
    serves(c, "shop.apps.test", "release 4")
    assert admin(c, "GET", "/apps/shop")["image"] == NEXT_IMAGE
    expect(page.locator(".events")).to_contain_text("release 4: rollback to 2")
    assert any("/events?app=shop&after=" in u for u in asked)  # only the newer ones
    audit(page)

    page.get_by_role("link", name="Apps", exact=True).click()
    row = page.locator("#apps tbody tr").filter(has_text="shop")
    expect(row).to_contain_text("running", timeout=ROLLOUT_MS)
    expect(row).to_contain_text("2 of 2")
    shot(page, "apps")
    audit(page)


def test_env_values_stay_hidden_until_asked_for(cluster: Cluster, web: str,
                                                page: Any) -> None:
    sign_in(page)
    open_app(page, web)
    env = page.locator("#env")
    expect(env).to_have_text("No variables.")
    setter = page.locator("form").filter(has=page.get_by_role("heading", name="Set a variable"))
    setter.get_by_label("Variable name").fill("SECRET_KEY")
    setter.get_by_label("Value").fill("s3cr3t-value")
    setter.get_by_role("button", name="Set").click()
    expect(page.locator("#status")).to_contain_text("SECRET_KEY set: release")
    row = env.locator("tr").filter(has_text="SECRET_KEY")
    expect(row).to_contain_text("hidden")
    page.wait_for_timeout(2000)  # a few polls: the value is still not in the page
    assert "s3cr3t-value" not in page.content()
    assert admin(cluster, "GET", "/apps/web")["env"] == {"SECRET_KEY": None}

    # Polling goes on while the user types: what they type stays, and so does focus.
    setter.get_by_label("Variable name").press_sequentially("HALF_TYPED")
    page.wait_for_timeout(3500)
    expect(setter.get_by_label("Variable name")).to_be_focused()
    expect(setter.get_by_label("Variable name")).to_have_value("HALF_TYPED")
    setter.get_by_label("Variable name").fill("")

    page.get_by_role("button", name="Show values").click()
    expect(row).to_contain_text("s3cr3t-value")
    expect(page.get_by_role("button", name="Hide values")).to_have_attribute(
        "aria-pressed", "true")
    page.get_by_role("button", name="Hide values").click()
    expect(row).to_contain_text("hidden")
    assert "s3cr3t-value" not in page.content()

    page.get_by_role("button", name="Unset SECRET_KEY").click()
    expect(env).to_have_text("No variables.")
    assert admin(cluster, "GET", "/apps/web?show_env=true")["env"] == {}


def test_adding_and_removing_a_domain_routes_it(cluster: Cluster, web: str,
                                                page: Any) -> None:
    c = cluster
    sign_in(page)
    open_app(page, web)
    domains = page.locator("#domains")
    form = page.locator("form").filter(has=page.get_by_role("heading", name="Add a domain"))
    form.get_by_label("Domain").fill("WWW.Example.test")
    form.get_by_label("Domain").press("Enter")
    expect(page.locator("#status")).to_have_text("www.example.test now routes to web.")
    expect(domains).to_contain_text("www.example.test")
    serves(c, "www.example.test", "hello from web")

    page.get_by_role("button", name="Remove www.example.test").click()
    expect(domains).to_have_text("No custom domains.")
    wait_for(lambda: c.get("www.example.test")[0] == 404, 20, "the domain to be unrouted")


def test_the_apis_errors_are_shown_in_words_next_to_their_field(
        cluster: Cluster, web: str, page: Any) -> None:
    sign_in(page)
    page.get_by_role("link", name="New app").first.click()
    create = page.locator("#create")
    create.get_by_label("Name", exact=True).fill("broken")
    create.get_by_label("Team").select_option("blue")
    create.get_by_label("Image", exact=True).fill(FIRST_IMAGE)
    create.get_by_label("Memory per instance").fill("lots")
    create.get_by_role("button", name="Create app").click()
    memory = create.get_by_label("Memory per instance")
    expect(field_error(page, create, "Memory per instance")).to_contain_text("'lots'")
    expect(memory).to_have_attribute("aria-invalid", "true")
    expect(memory).to_be_focused()  # where to fix it
    expect(create.get_by_role("alert")).to_contain_text("Memory per instance: ")
    audit(page)
    shot(page, "create")

    memory.fill("32m")
    create.get_by_label("Image", exact=True).fill("Not An Image!")
    create.get_by_role("button", name="Create app").click()
    expect(field_error(page, create, "Image")).to_have_text(
        "'Not An Image!' is not a valid image reference")
    expect(field_error(page, create, "Memory per instance")).to_be_empty()
    expect(memory).not_to_have_attribute("aria-invalid", "true")
    create.get_by_label("Environment").fill("JUST_A_NAME")
    create.get_by_label("Image", exact=True).fill(FIRST_IMAGE)
    create.get_by_role("button", name="Create app").click()
    expect(field_error(page, create, "Environment")).to_contain_text("is not KEY=value")
    with pytest.raises(urllib.error.HTTPError):
        admin(cluster, "GET", "/apps/broken")  # nothing was created

    # On an app's page: a conflict (nothing would change) and a bad number.
    open_app(page, web)
    deploy = page.locator("form").filter(has=page.get_by_role("heading", name="Deploy a new image"))
    deploy.get_by_role("button", name="Deploy").click()  # the image it runs already
    expect(deploy.get_by_role("alert")).to_contain_text("nothing would change")
    scale = page.locator("form").filter(has=page.get_by_role("heading", name="Scale"))
    scale.get_by_label("Instances").fill("lots")
    scale.get_by_role("button", name="Scale").click()
    expect(field_error(page, scale, "Instances")).to_have_text("'lots' is not a whole number")


def test_creating_an_app_with_the_keyboard_only(cluster: Cluster, page: Any) -> None:
    kb = page.keyboard
    expect(page.get_by_label("User name")).to_be_focused()
    kb.type("alice")
    kb.press("Tab")
    kb.type(PASSWORD)
    kb.press("Enter")
    expect(page.get_by_role("heading", name="Apps", level=1)).to_be_focused()

    def tab_to(locator: Any, most: int = 15) -> None:
        for _ in range(most):
            kb.press("Tab")
            if locator.evaluate("e => e === document.activeElement"):
                return
        raise AssertionError(f"Tab never reached {locator}")

    tab_to(page.locator("main").get_by_role("link", name="New app"))
    kb.press("Enter")
    expect(page.get_by_role("heading", name="New app", level=1)).to_be_focused()
    kb.press("Tab")
    expect(page.get_by_label("Name", exact=True)).to_be_focused()
    kb.type("by-keys")
    kb.press("Tab")
    expect(page.get_by_label("Team")).to_be_focused()
    kb.press("ArrowDown")  # the first team: blue
    kb.press("Tab")
    expect(page.get_by_label("Image", exact=True)).to_be_focused()
    kb.type(FIRST_IMAGE)
    kb.press("Tab")
    kb.press("Control+A")
    kb.type("0")  # instances
    kb.press("Enter")  # submits from any field

    expect(page.get_by_role("heading", name="by-keys", level=1)).to_be_focused()
    app = admin(cluster, "GET", "/apps/by-keys")
    assert (app["team"], app["image"], app["instances"]) == ("blue", FIRST_IMAGE, 0)
    # The skip link leads past the navigation to the content.
    skip = page.get_by_role("link", name="Skip to content")
    skip.focus()  # the first thing Tab reaches on any page
    expect(skip).to_be_in_viewport()  # shown once focused
    kb.press("Enter")
    expect(page.locator("main")).to_be_focused()
    assert page.evaluate("location.hash") == "#/apps/by-keys"

    # Deleting it asks first; Escape (cancel) keeps it.
    delete = page.get_by_role("button", name="Delete this app")
    page.once("dialog", lambda d: d.dismiss())
    delete.focus()
    kb.press("Enter")
    expect(page.get_by_role("heading", name="by-keys", level=1)).to_be_visible()
    assert admin(cluster, "GET", "/apps/by-keys")["name"] == "by-keys"
    page.once("dialog", lambda d: d.accept())
    kb.press("Enter")
    expect(page.locator("#status")).to_have_text("App by-keys deleted.")
    expect(page.get_by_role("heading", name="Apps", level=1)).to_be_focused()
    with pytest.raises(urllib.error.HTTPError) as gone:
        admin(cluster, "GET", "/apps/by-keys")
    assert gone.value.code == 404


def test_nodes_and_draining_one_as_an_admin(cluster: Cluster, page: Any) -> None:
    node = sorted(cluster.agents)[0]
    sign_in(page)  # alice: sees the nodes, may not drain them
    page.get_by_role("link", name="Nodes").click()
    expect(page.locator("#nodes tbody tr")).to_have_count(3)
    expect(page.get_by_role("button", name=re.compile("Drain"))).to_have_count(0)
    page.get_by_role("button", name="Sign out").click()

    sign_in_with_token(page, cluster.env["DINP_ADMIN_TOKEN"])
    page.get_by_role("link", name="Nodes").click()
    row = page.locator("#nodes tbody tr").filter(has_text=node)
    expect(row).to_contain_text("ready")
    expect(page.locator("#nodes tbody tr").filter(has_text="ready")).to_have_count(3)
    shot(page, "nodes")
    audit(page)
    row.get_by_role("button", name=f"Drain node {node}").click()
    expect(row).to_contain_text("draining")
    expect(page.locator("#status")).to_contain_text(f"Node {node} drains")
    assert {n["name"]: n["status"] for n in admin(cluster, "GET", "/nodes")}[node] == "draining"
    # Focus stays on the toggle as the table updates.
    toggle = row.get_by_role("button", name=f"Stop draining node {node}")
    expect(toggle).to_be_focused()
    toggle.press("Enter")
    expect(row).to_contain_text("ready")
    assert {n["name"]: n["status"] for n in admin(cluster, "GET", "/nodes")}[node] == "ready"


def test_a_ci_token_sees_its_app_and_only_the_actions_it_may_take(
        cluster: Cluster, web: str, page: Any) -> None:
    made = admin(cluster, "POST", "/tokens", {"name": "ci web", "app": web})
    sign_in_with_token(page, made["token"])
    expect(page.locator("#who")).to_have_text(f"Signed in as admin (a token for app {web})")
    expect(page.locator("#apps tbody tr")).to_have_count(1)
    expect(page.get_by_role("link", name="Nodes")).to_be_hidden()
    page.goto(cluster.env["DINP_SERVER"] + "/#/nodes")  # the page exists; the API refuses
    expect(page.locator("main .notice")).to_have_text(
        f"admin's token for app {web} may only read, deploy, restart and roll back app {web}")

    page.goto(cluster.env["DINP_SERVER"] + f"/#/apps/{web}")
    expect(page.get_by_role("heading", name="Deploy a new image")).to_be_visible()
    expect(page.get_by_role("heading", name="Roll back")).to_be_visible()
    expect(page.get_by_role("heading", name="Scale")).to_have_count(0)  # needs change
    expect(page.get_by_role("heading", name="Add a domain")).to_have_count(0)
    expect(page.get_by_role("button", name="Delete this app")).to_have_count(0)


def ndjson(*items: dict[str, Any]) -> str:
    return "".join(json.dumps(i) + "\n" for i in items)


LOGS = re.compile(r"/api/v1/apps/web/logs\?")


def logs_like_the_server(c: Cluster, app: str) -> tuple[str, str, str]:
    """What the logs endpoint would send for `app`: a dozen lines of its instance (busybox
    httpd logs each request on stderr), a warning about a node, a line of an instance that
    is gone. Returns (the body, the instance, its node)."""
    instance = admin(c, "GET", f"/apps/{app}")["instance_list"][0]
    inst, node = instance["id"], instance["node"]
    other = next(n for n in sorted(c.agents) if n != node)
    t0 = time.time() - 60
    return ndjson(
        *({"at": t0 + i, "instance": inst, "node": node, "release": 1, "stream": "stderr",
           "line": f"[::ffff:172.18.0.1]:{40000 + i}: response:200"} for i in range(12)),
        {"warning": f"node {other} did not answer; its instances' lines are missing"},
        {"at": t0 + 20, "instance": "9c01de3f2a", "node": node, "release": 1,
         "stream": "stdout", "line": "shutting down", "gone": True}), inst, node


def test_logs_as_the_stream_says_them(cluster: Cluster, web: str, page: Any) -> None:
    """The page's reading of the logs contract, against a stream served by the test
    (page.route) in place of the server's: lines with their instance and stream,
    warnings, instances gone, at most 2,000 lines kept, a stream that ends followed again
    without repeating lines."""
    realistic, inst, node = logs_like_the_server(cluster, web)
    asked: list[str] = []

    def serve(route: Any) -> None:
        asked.append(route.request.url)
        route.fulfill(status=200, content_type="application/x-ndjson", body=realistic)

    page.route(LOGS, serve)
    sign_in(page)
    open_app(page, web)
    log = page.get_by_role("log")
    expect(log.locator(".entry")).to_have_count(14)
    assert "tail=200" in asked[0] and "follow=true" in asked[0]
    first = log.locator(".entry").first
    expect(first).to_contain_text(inst[:8])
    expect(first).to_contain_text(node)
    expect(first).to_contain_text("stderr")
    expect(first).to_contain_text("[::ffff:172.18.0.1]:40000: response:200")
    expect(log.locator(".entry.warning")).to_contain_text("did not answer")
    expect(log.locator(".entry.gone")).to_contain_text(f"9c01de3f {node} (gone)")
    # The stream ended: the page follows again, and shows no line twice.
    for _ in range(50):  # Playwright answers routes only while it runs: not time.sleep
        if len(asked) >= 2:
            break
        page.wait_for_timeout(200)
    assert len(asked) >= 2, "the page must follow the logs again once a stream ends"
    expect(log.locator(".entry")).to_have_count(15)  # the warning again, no line twice
    shot(page, "app")
    audit(page)

    # A burst longer than the page keeps: the newest 2,000 lines stay.
    page.unroute(LOGS)
    many = ndjson(*({"at": time.time() + i, "instance": inst, "node": node, "release": 1,
                     "stream": "stdout", "line": f"line {i}"} for i in range(2500)))
    page.route(LOGS, lambda r: r.fulfill(
        status=200, content_type="application/x-ndjson", body=many))
    page.get_by_role("button", name="Clear").click()
    page.get_by_role("button", name="Pause").click()
    page.get_by_role("button", name="Resume").click()
    expect(log.locator(".entry")).to_have_count(2000)
    expect(log.locator(".entry").last).to_contain_text("line 2499")
    expect(log.locator(".entry").first).to_contain_text("line 500")

    # Chunks split anywhere (inside a line, inside a UTF-8 character) make whole lines.
    lines = page.evaluate("""async () => {
      const { LineSplitter } = await import('/static/logs.js');
      const bytes = new TextEncoder().encode('{"line": "\u00e9t\u00e9"}\\n{"line": "2"}\\n{"li');
      const s = new LineSplitter(), out = [];
      for (let i = 0; i < bytes.length; i += 3) out.push(...s.push(bytes.slice(i, i + 3)));
      out.push(...s.push(new TextEncoder().encode('ne": "3"}')), ...s.end());
      return out.map((l) => JSON.parse(l).line);
    }""")
    assert lines == ["\u00e9t\u00e9", "2", "3"]


class StandInLogs:
    """A server that streams NDJSON as the logs endpoint does, slowly, line by line, for
    as long as the client reads (the page's requests are sent here by page.route): what
    the page does with a stream that really streams, before the real endpoint exists."""

    def __init__(self) -> None:
        self.port = free_port()
        self.tokens: list[str] = []
        self.closed = threading.Event()
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        assert started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = aioweb.Application()
        app.router.add_get("/api/v1/apps/{name}/logs", self._logs)
        self.runner = aioweb.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(aioweb.TCPSite(self.runner, "127.0.0.1", self.port).start())
        started.set()
        self.loop.run_forever()

    async def _logs(self, request: aioweb.Request) -> aioweb.StreamResponse:
        self.tokens.append(request.headers.get("Authorization", ""))
        response = aioweb.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        try:
            for i in range(600):  # at most a minute
                line = {"at": time.time(), "instance": "3f2a9c01de", "node": "n1",
                        "release": 1, "stream": "stdout", "line": f"tick {i} caf\u00e9"}
                await response.write(json.dumps(line).encode() + b"\n")
                await asyncio.sleep(0.1)
        except (ConnectionError, asyncio.CancelledError):
            self.closed.set()  # the page stopped reading
            raise
        return response

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_logs_arrive_as_they_are_streamed_and_stop_when_leaving_the_page(
        cluster: Cluster, web: str, page: Any) -> None:
    stand_in = StandInLogs()
    try:
        page.route(LOGS, lambda r: r.continue_(url=re.sub(
            r"^http://[^/]+", f"http://127.0.0.1:{stand_in.port}", r.request.url)))
        sign_in(page)
        open_app(page, web)
        log = page.get_by_role("log")
        expect(log.locator(".entry").first).to_contain_text("tick 0 caf\u00e9")
        expect(log.locator(".entry").filter(has_text="tick 10 ")).to_have_count(1)
        expect(log.locator(".entry").last).to_contain_text("3f2a9c01 n1")
        token = page.evaluate("sessionStorage.getItem('dinp-token')")
        assert stand_in.tokens == [f"Bearer {token}"]
        assert not stand_in.closed.is_set()

        page.get_by_role("link", name="Nodes").click()
        for _ in range(50):  # Playwright answers the page only while it runs
            if stand_in.closed.is_set():
                break
            page.wait_for_timeout(100)
        assert stand_in.closed.is_set(), "leaving the app's page must stop its log stream"
    finally:
        stand_in.close()


def test_a_server_without_the_logs_endpoint_is_said_in_words(
        cluster: Cluster, web: str, page: Any) -> None:
    """aiohttp's own 404 (text, not the API's JSON), as a server from before the logs
    endpoint answers: an error in words, and the rest of the page goes on."""
    page.route(LOGS, lambda r: r.fulfill(
        status=404, content_type="text/plain", body="404: Not Found"))
    sign_in(page)
    open_app(page, web)
    logs = page.get_by_role("region", name="Logs", exact=True)
    expect(logs.get_by_role("alert")).to_have_text(
        "This server cannot stream logs: it has no logs endpoint (HTTP 404).")
    expect(logs.get_by_role("button", name="Try again")).to_be_visible()
    expect(page.locator(".app-state")).to_have_text("State: running")
    page.get_by_role("link", name="Nodes").click()
    expect(page.locator("#nodes tbody tr")).to_have_count(3)


def test_live_logs_of_a_running_app(cluster: Cluster, web: str, page: Any) -> None:
    """The server's own stream (GET /apps/NAME/logs?follow=true): the lines the app
    writes (busybox httpd logs each request) show up live with their instance, and
    leaving the page stops the stream. Needs the server's logs endpoint (another
    branch): until it is merged the server answers 404 and this fails at "Following"."""
    ids = [i["id"] for i in admin(cluster, "GET", f"/apps/{web}")["instance_list"]]
    aborted: list[str] = []
    page.on("requestfailed", lambda r: "/logs?" in r.url and aborted.append(r.url))
    sign_in(page)
    open_app(page, web)
    logs = page.get_by_role("region", name="Logs", exact=True)
    expect(logs.get_by_role("status")).to_contain_text("Following", timeout=10_000)
    # busybox httpd writes "ADDRESS:PORT: response:200" on stderr for each request.
    answered = page.get_by_role("log").locator(".entry.stderr").filter(has_text="response:200")
    page.wait_for_timeout(1500)  # the tail has arrived
    before = answered.count()
    for _ in range(5):
        assert cluster.get("web.apps.test")[0] == 200
    for _ in range(100):  # followed: the new lines arrive without reloading
        if answered.count() >= before + 5:
            break
        page.wait_for_timeout(200)
    assert answered.count() >= before + 5, "the requests' log lines must show up live"
    assert any(i[:8] in answered.last.inner_text() for i in ids)

    page.get_by_role("link", name="Apps", exact=True).click()
    for _ in range(50):  # Playwright reports events only while it runs: not time.sleep
        if aborted:
            break
        page.wait_for_timeout(200)
    assert aborted, "leaving the app's page must stop its log stream"


def test_the_page_is_small_fast_to_revalidate_and_fits_a_narrow_window(
        cluster: Cluster, web: str, page: Any) -> None:
    origin = cluster.env["DINP_SERVER"]
    total = 0
    for name in ["", *(f"static/{p.name}" for p in STATIC.iterdir())]:
        req = urllib.request.Request(f"{origin}/{name}", headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            total += len(resp.read())
            etag = resp.headers["ETag"]
            assert resp.headers["Content-Encoding"] == "gzip"
            assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
        again = urllib.request.Request(f"{origin}/{name}", headers={"If-None-Match": etag})
        with pytest.raises(urllib.error.HTTPError) as unchanged:
            urllib.request.urlopen(again, timeout=5)
        assert unchanged.value.code == 304
    assert total < 40_000, f"{total} bytes over the wire for the whole Dashboard"
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{origin}/static/..%2Froles%2Fapi.py", timeout=5)
    assert missing.value.code == 404

    page.set_viewport_size({"width": 390, "height": 844})
    body = logs_like_the_server(cluster, web)[0]  # the layout, not the logs endpoint
    page.route(LOGS, lambda r: r.fulfill(status=200, content_type="application/x-ndjson",
                                         body=body))
    sign_in(page)
    open_app(page, web)
    expect(page.locator(".app-state")).to_have_text("State: running")
    # Nothing wider than the window: tables scroll inside their own region.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    audit(page)
    shot(page, "app-narrow")
