"""Accounts as people use them: `dinp` processes against a `dinp server` process.

An admin makes a team with a quota and its users; a member signs in with a password and
works on the team's apps; a CI token deploys one app and nothing else; revoking it and
logging out take effect at once."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ServerProc, server_process
from tests.support import Dinp, Proc, base_env, delete_from_registry, free_port, http_get, wait_for

IMAGE = "127.0.0.1:5000/hello:1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    with server_process(tmp_path_factory.mktemp("accounts")) as s:
        yield s


def cli(server: ServerProc, home: Path, token: str | None = None) -> Dinp:
    """The CLI of someone whose config lives in `home` (so logins are theirs alone)."""
    env = base_env(home, XDG_CONFIG_HOME=str(home / "config"), DINP_SERVER=server.url)
    if token is not None:
        env["DINP_TOKEN"] = token
    return Dinp(env)


def test_an_admin_sets_a_team_up_and_a_member_works_in_it(server: ServerProc,
                                                         tmp_path: Path) -> None:
    admin = cli(server, tmp_path / "admin", server.admin_token)
    admin.run("team", "create", "payments", "--memory", "512m", "--instances", "4")
    admin.run("team", "create", "search")
    admin.run("user", "create", "alice", "--team", "payments", "--password-stdin",
              input="alice-password-1\n")
    made = admin.json("user", "create", "bob", "--team", "search")
    assert made["token"].startswith("dinp_") and made["user"]["teams"] == ["search"]

    alice_home = tmp_path / "alice"
    alice = cli(server, alice_home)
    out = alice.run("login", server.url, "--user", "alice", "--password-stdin",
                    input="alice-password-1\n")
    assert f"logged in to {server.url} as alice, member" in out.stdout
    saved = alice_home / "config" / "dinp" / "cli.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert stat.S_IMODE(saved.parent.stat().st_mode) == 0o700
    assert json.loads(saved.read_text())["token"].startswith("dinp_")
    assert alice.json("whoami") == {"user": "alice", "role": "member", "teams": ["payments"],
                                    "app": None, "token": alice.json("whoami")["token"],
                                    "server": server.url}

    alice.run("app", "create", "checkout", "--image", IMAGE, "--instances", "2",
              "--memory", "128m", "--env", "DB_PASSWORD=hunter22")  # her only team
    shown = alice.json("app", "show", "checkout")
    assert shown["team"] == "payments" and shown["env"] == {"DB_PASSWORD": None}
    values = alice.run("app", "env", "list", "checkout", "--show-values").stdout
    assert "hunter22" in values
    over = alice.run("app", "scale", "checkout", "5", check=False)
    assert over.returncode == 4 and "team payments's quota is 4 instance(s)" in over.stderr
    over = alice.run("app", "deploy", "checkout", "--memory", "512m", check=False)
    assert over.returncode == 4 and "quota is 512m of memory" in over.stderr

    bob = cli(server, tmp_path / "bob", made["token"])
    refused = bob.run("app", "scale", "checkout", "1", check=False)
    assert refused.returncode == 5
    assert "app checkout belongs to team payments" in refused.stderr
    assert [a["name"] for a in bob.json("app", "list")] == []
    refused = bob.run("node", "drain", "n1", check=False)
    assert refused.returncode == 5 and "not an admin" in refused.stderr

    events = admin.json("events", "--user", "alice")
    assert {e["message"] for e in events} >= {"user alice signed in",
                                              "created with 2 instance(s) of "
                                              f"{IMAGE} in team payments"}
    assert all(e["source"] == "127.0.0.1" for e in events)
    assert "hunter22" not in json.dumps(admin.json("events", "--limit", "1000"))

    alice.run("logout")
    assert json.loads(saved.read_text())["token"] == ""
    refused = alice.run("whoami", check=False)
    assert refused.returncode == 5


def test_a_ci_token_deploys_its_app_and_nothing_else(server: ServerProc,
                                                    tmp_path: Path) -> None:
    admin = cli(server, tmp_path / "admin", server.admin_token)
    admin.run("team", "create", "web")
    admin.run("app", "create", "site", "--image", IMAGE, "--instances", "0", "--team", "web")
    admin.run("app", "create", "blog", "--image", IMAGE, "--instances", "0", "--team", "web")
    made = admin.json("token", "create", "ci site", "--app", "site", "--expires", "30d")
    ci = cli(server, tmp_path / "ci", made["token"])

    shown = ci.json("app", "deploy", "site", "--image", "127.0.0.1:5000/hello:2")
    assert shown["release"] == 2
    assert ci.json("app", "rollback", "site")["release"] == 3
    assert [a["name"] for a in ci.json("app", "list")] == ["site"]
    for args in (("app", "scale", "site", "1"), ("app", "delete", "site", "--yes"),
                 ("app", "deploy", "blog", "--image", IMAGE + "1"),
                 ("app", "domains", "add", "site", "www.example.org"),
                 ("token", "create", "more")):
        refused = ci.run(*args, check=False)
        assert refused.returncode == 5, (args, refused.stderr)
        assert "token for app site may only read, deploy, restart and roll back app " \
            "site" in refused.stderr, refused.stderr

    tokens = admin.json("token", "list", "--all")
    mine = next(t for t in tokens if t["id"] == made["info"]["id"])
    assert mine["app"] == "site" and mine["state"] == "active" and "token" not in mine
    admin.run("token", "revoke", str(mine["id"]))
    refused = ci.run("app", "show", "site", check=False)
    assert refused.returncode == 5 and "revoked" in refused.stderr


def test_bad_input_is_refused_before_anything_changes(server: ServerProc,
                                                      tmp_path: Path) -> None:
    admin = cli(server, tmp_path / "admin", server.admin_token)
    for args, code, words in (
            (("user", "create", "Bad Name"), 2, "not a valid user name"),
            (("team", "create", "x", "--memory", "lots"), 2, "memory"),
            (("token", "create", "t", "--expires", "soon"), 2, "not a duration"),
            (("team", "add-user", "nope", "alice"), 3, "no team named 'nope'"),
            (("token", "revoke", "999999"), 3, "no token 999999")):
        result = admin.run(*args, check=False)
        assert result.returncode == code, (args, result.stderr)
        assert words in result.stderr, (args, result.stderr)
    wrong = cli(server, tmp_path / "nobody", "dinp_not-a-token")
    result = wrong.run("app", "list", check=False)
    assert result.returncode == 5 and "invalid API token" in result.stderr
    result = cli(server, tmp_path / "nobody").run(
        "login", server.url, "--user", "alice", "--password-stdin", input="wrong-password\n",
        check=False)
    assert result.returncode == 5 and "wrong user name or password" in result.stderr
    assert not (tmp_path / "nobody" / "config" / "dinp" / "cli.json").exists()


def test_a_ci_token_builds_its_app_on_a_build_service_that_asks_the_server(
        server: ServerProc, tmp_path: Path) -> None:
    """`dinp build serve` with the server's URL and no build token of its own: it builds
    for any token the server says may deploy the app, and for no other."""
    admin = cli(server, tmp_path / "admin", server.admin_token)
    admin.run("team", "create", "docs")
    for app in ("manual", "wiki"):
        admin.run("app", "create", app, "--image", IMAGE, "--instances", "0", "--team", "docs")
    ci_token = admin.json("token", "create", "ci manual", "--app", "manual")["token"]
    port = free_port()
    work = tmp_path / "builds"
    work.mkdir()
    env = base_env(work, DINP_SERVER=server.url, DINP_REGISTRY="127.0.0.1:5000",
                   DINP_SERVE_LISTEN=f"127.0.0.1:{port}", DINP_TMP_DIR=str(work))
    service = Proc("build-serve", ["build", "serve"], env, work / "serve.log").start()
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>the manual</h1>\n")
    try:
        wait_for(lambda: http_get(f"127.0.0.1:{port}", "x", "/api/v1/health")[0] == 200, 20,
                 "the build service")
        ci = cli(server, tmp_path / "ci", ci_token)
        remote = f"http://127.0.0.1:{port}"
        built = ci.run("build", str(site), "--app", "manual", "--version", "1", "--remote",
                       remote, "--json", "--quiet")
        assert json.loads(built.stdout)["image"] == "127.0.0.1:5000/manual:1"
        refused = ci.run("build", str(site), "--app", "wiki", "--version", "1", "--remote",
                         remote, check=False)
        assert refused.returncode == 5  # the server refused even to say
        assert "may only read, deploy, restart and roll back app manual" in refused.stderr
        admin.run("token", "revoke", str(admin.json("token", "list", "--all")[0]["id"]))
        refused = ci.run("build", str(site), "--app", "manual", "--version", "2", "--remote",
                         remote, check=False)
        assert refused.returncode == 5 and "revoked" in refused.stderr
    finally:
        assert service.stop()
        delete_from_registry("127.0.0.1:5000", "manual")
