"""`dinp up` with HTTPS, as a one-machine user runs it: `--https-port`, its local CA
trusted by curl, a custom domain's certificate ordered from a real ACME CA (Debian's
Pebble, its mock DNS answering 127.0.0.1) and served by the in-process router, the
certificates' state in `dinp app show` (text and --json) and in the Dashboard (headless
chromium through Playwright), and the refusals of bad input before anything listens.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.pebble import Pebble
from tests.support import DINP, Dinp, Proc, base_env, free_port, remove_node_containers, wait_for

IMAGE = "dinp-examples/hello:2"  # already on the machine: no registry involved
SHOP, BROKEN = "shop.example.test", "broken.example.test"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = os.environ.get("DINP_SCREENSHOTS")


@dataclass
class HttpsUp:
    workdir: Path
    node: str
    http_port: int
    https_port: int
    proc: Proc
    cli: Dinp
    pebble: Pebble

    @property
    def state(self) -> Path:
        return self.workdir / "state"

    @property
    def ca(self) -> Path:
        return self.state / "tls" / "ca.pem"

    def curl(self, url: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["curl", "-sS", "--max-time", "10", *args, url],
                              capture_output=True, text=True, timeout=30)


def up_args(workdir: Path, http_port: int, *extra: str) -> list[str]:
    return ["up", "--state-dir", str(workdir / "state"), "--http-port", str(http_port),
            "--api-port", str(free_port()), "--admin-port", str(free_port()), *extra]


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsUp]:
    workdir = tmp_path_factory.mktemp("up-https")
    node = f"ups{secrets.token_hex(3)}"
    http_port, https_port = free_port(), free_port()
    pebble = Pebble.start(workdir / "pebble", http_port=http_port)
    # Pebble validates broken.example.test at an address where nothing listens.
    pebble.resolve(BROKEN, "127.0.0.3")
    env = base_env(workdir, DINP_NODE_NAME=node, DINP_ACME_INTERVAL="0.5",
                   DINP_ACME_RETRY_BASE="30", DINP_ACME_RETRY_MAX="60",
                   DINP_ACME_TIMEOUT="30")
    proc = Proc("up", up_args(workdir, http_port, "--https-port", str(https_port),
                              "--acme-directory", pebble.directory,
                              "--acme-email", "ops@example.com",
                              "--acme-ca-bundle", str(pebble.ca_bundle)),
                env, workdir / "up.log")
    u = HttpsUp(workdir, node, http_port, https_port, proc, Dinp(env), pebble)
    proc.start()
    try:
        wait_for(lambda: u.cli.run("app", "list", check=False).returncode == 0, 30,
                 "dinp up to answer the CLI")
        u.cli.run("app", "create", "hello", "--image", IMAGE, "--instances", "1",
                  "--memory", "32m", "--wait", "--timeout", "60")
        yield u
    except BaseException:
        print(proc.output()[-6000:])
        raise
    finally:
        proc.stop()
        pebble.stop()
        remove_node_containers(node)


def test_https_serves_apps_with_the_local_ca_that_curl_trusts(up: HttpsUp) -> None:
    key = up.state / "tls" / "ca-key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert f"trust {up.ca}" in " ".join(up.proc.output().split())  # where it is, logged
    answer = wait_for(lambda: up.curl(f"https://hello.localhost:{up.https_port}/",
                                      "--cacert", str(up.ca)).stdout or None, 20,
                      "https://hello.localhost/ through curl --cacert")
    assert answer.startswith("hello from hello instance "), answer
    # Plain HTTP is served on as before.
    assert up.curl(f"http://hello.localhost:{up.http_port}/").stdout.startswith("hello from")
    # Without trusting the CA, curl refuses it: it is not a public certificate.
    refused = up.curl(f"https://hello.localhost:{up.https_port}/")
    assert refused.returncode == 60, refused


def handshake(port: int, name: str, root: str) -> bytes:
    """A TLS handshake as `name`, trusting `root` only; the answer's first bytes."""
    ctx = ssl.create_default_context(cadata=root)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=name) as tls:
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        return tls.recv(4096)


def certificates(up: HttpsUp) -> dict[str, Any]:
    return {d["domain"]: d["certificate"]
            for d in up.cli.json("app", "show", "hello")["custom_domains"]}


@pytest.fixture(scope="module")
def domains(up: HttpsUp) -> dict[str, Any]:
    """shop.example.test issued by Pebble; broken.example.test failed (its challenge
    cannot be reached); plain.example.test without TLS."""
    up.cli.run("app", "domains", "add", "hello", SHOP, "--tls")
    up.cli.run("app", "domains", "add", "hello", BROKEN, "--tls")
    up.cli.run("app", "domains", "add", "hello", "plain.example.test")
    return wait_for(lambda: (c := certificates(up))[SHOP]["state"] == "issued"
                    and c[BROKEN]["state"] == "failed" and c, 90,
                    "shop issued and broken failed")  # type: ignore[no-any-return]


def test_a_custom_domain_gets_its_acme_certificate_served_over_https(
        up: HttpsUp, domains: dict[str, Any]) -> None:
    root = up.pebble.root()
    assert handshake(up.https_port, SHOP, root).startswith(b"HTTP/1.1 200")
    assert domains[SHOP]["attention"] == ""
    assert domains[SHOP]["not_after"] > time.time() + 30 * 86400


def test_app_show_gives_each_domains_certificate_as_domains_list_does(
        up: HttpsUp, domains: dict[str, Any]) -> None:
    shown = up.cli.json("app", "show", "hello")
    listed = up.cli.json("app", "domains", "list", "hello")

    def stable(rows: list[dict[str, Any]]) -> list[Any]:  # the summary counts time down
        return [{**r, "certificate": r["certificate"] and {
            k: v for k, v in r["certificate"].items() if k not in ("summary", "attention")}}
            for r in rows]

    assert stable(shown["custom_domains"]) == stable(listed)
    assert shown["domains"] == sorted([SHOP, BROKEN, "plain.example.test"])
    broken = domains[BROKEN]
    assert broken["last_error"] and broken["attention"].startswith("no certificate: ")
    assert shown["https_redirect"] is False and shown["hsts"] == 0

    text = up.cli.run("app", "show", "hello").stdout
    assert "https: redirect off, HSTS off" in text
    lines = {line.split()[1]: line for line in text.splitlines()
             if line.startswith("│ ") and ".example.test" in line}
    assert "issued" in lines[SHOP] and "failed" in lines[BROKEN]
    assert "off" in lines["plain.example.test"]
    # The failure's reason on a line of its own, never cut off by the table.
    said = [line for line in text.splitlines() if line.startswith(f"{BROKEN}: ")]
    assert said and "no certificate" in said[0], text


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (scripts/setup.sh installs it)")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def test_the_dashboard_shows_certificates_and_a_failure_stands_out(
        up: HttpsUp, domains: dict[str, Any], browser: Any) -> None:
    from playwright.sync_api import expect

    from tests.e2e.test_dashboard import AUDIT

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    creds = json.loads((up.workdir / ".config" / "dinp" / "cli.json").read_text())
    try:
        page.goto(creds["server"] + "/")
        page.get_by_label("API token", exact=True).fill(creds["token"])
        page.get_by_label("API token", exact=True).press("Enter")
        page.get_by_role("link", name="hello", exact=True).click()
        expect(page.get_by_role("heading", name="hello", level=1)).to_be_visible()
        panel = page.locator("#domains")
        shop = panel.locator("li").filter(has_text=SHOP)
        broken = panel.locator("li").filter(has_text=BROKEN)
        plain = panel.locator("li").filter(has_text="plain.example.test")
        expect(shop).to_contain_text("HTTPS issued")
        expect(shop).to_contain_text("expires ")
        expect(broken).to_contain_text("HTTPS failed")
        # The CA's reason, in the page's text (not a tooltip), on a row marked out.
        expect(broken.locator(".cert-attention")).to_contain_text(
            domains[BROKEN]["last_error"][:40])
        expect(broken).to_have_class("attention")
        assert not shop.evaluate("e => e.classList.contains('attention')")
        bad = page.evaluate("getComputedStyle(document.body).getPropertyValue('--bad')")
        color = broken.locator(".cert-attention").evaluate("e => getComputedStyle(e).color")
        assert color == "rgb(164, 14, 38)" and bad.strip() == "#a40e26"
        expect(plain).to_contain_text("HTTP only")
        expect(page.locator("dl.facts")).to_contain_text("redirect off, HSTS off")
        assert page.evaluate(AUDIT) == []
        page.screenshot(path=str(up.workdir / "app-https.png"), full_page=True)
        if SHOTS:
            page.locator("#domains").screenshot(path=str(Path(SHOTS) / "app-domains.png"))
        print(f"screenshot: {up.workdir / 'app-https.png'}")
    finally:
        context.close()
    assert errors == []


# -- bad input: a clear error, a non-zero exit, nothing left listening -------------------

def _refused(tmp_path: Path, *extra: str, http_port: int = 0) -> tuple[int, str, int]:
    http_port = http_port or free_port()
    env = base_env(tmp_path, DINP_NODE_NAME=f"upx{secrets.token_hex(3)}")
    result = subprocess.run([DINP, *up_args(tmp_path, http_port, *extra)], env=env,
                            capture_output=True, text=True, timeout=60)
    return result.returncode, " ".join((result.stdout + result.stderr).split()), http_port


def _nothing_listens(port: int) -> bool:
    """Nothing answers on `port` now (the process has exited: true of any port it had,
    so the callers also check that it never got as far as being up)."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_a_missing_certificate_file_is_refused(tmp_path: Path) -> None:
    code, said, port = _refused(tmp_path, "--https-port", str(free_port()),
                                "--tls-cert", str(tmp_path / "nope.pem"))
    assert code != 0
    assert f"cannot use the TLS certificate {tmp_path / 'nope.pem'}" in said
    assert "No such file" in said and "--tls-cert" in said
    assert "dinp is up" not in said and _nothing_listens(port)


def test_a_key_that_is_not_the_certificates_is_refused_without_showing_it(
        tmp_path: Path) -> None:
    from tests.support import CertAuthority

    ca = CertAuthority.make()
    cert, _ = ca.files(tmp_path, "site", "*.localhost", "localhost")
    _, other_key = ca.files(tmp_path, "other", "*.localhost")
    code, said, port = _refused(tmp_path, "--https-port", str(free_port()),
                                "--tls-cert", str(cert), "--tls-key", str(other_key))
    assert code != 0 and "KEY_VALUES_MISMATCH" in said, said
    assert "PRIVATE KEY" not in said and _nothing_listens(port)


def test_a_taken_https_port_is_refused_before_the_api_listens(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        https_port = taken.getsockname()[1]
        code, said, port = _refused(tmp_path, "--https-port", str(https_port))
    assert code != 0 and f"cannot listen on 127.0.0.1:{https_port}" in said, said
    assert "--https-port" in said and "https_listen" not in said, said
    assert "dinp is up" not in said and _nothing_listens(port)


def test_tls_files_without_https_are_refused(tmp_path: Path) -> None:
    code, said, _ = _refused(tmp_path, "--tls-cert", str(tmp_path / "c.pem"))
    assert code != 0 and "HTTPS is off" in said and "--https-port" in said
