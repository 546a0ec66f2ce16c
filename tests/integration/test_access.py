"""Who may call what: every API route against every kind of caller, the status of each
cell asserted; then the rules around it (scoped CI tokens, quotas, revocation seen by a
second server at once, sign-in).

The API runs in-process over a real SQLite store (an in-memory route table: Redis plays
no part in authorization). Each route gets a fresh world for its refusals (refused calls
change nothing) and one per caller allowed to call it, so a DELETE allowed to two callers
is tried by each on the same starting state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import update

from dinp import tokens
from dinp.access import Actor
from dinp.accounts import Accounts
from dinp.config import ServerConfig
from dinp.models import AppRow, TokenRow
from dinp.quotas import Quota
from dinp.roles.api import make_app
from dinp.roles.openapi import OPERATIONS
from dinp.roles.server import Server
from dinp.routes import MemoryRouteStore
from dinp.store import Store

CLUSTER = "cluster-token-for-the-access-tests"
ADMIN = "dinp_admin-token-for-the-access-tests"
IMAGE = "127.0.0.1:5000/hello:1"
PASSWORD = "alice-password-1"
WHO = ("admin", "member", "other", "ci", "agent", "cluster", "none", "revoked", "expired",
       "disabled")
A = Actor("test", "127.0.0.1")


@dataclass
class World:
    """Teams blue (alice, carol; app bluapp with domain shop.example.org) and red (bob;
    redapp), team empty, node n1, and a token for each kind of caller."""

    server: Server
    client: TestClient  # type: ignore[type-arg]
    tokens: dict[str, str | None] = field(default_factory=dict)
    spare_token: int = 0  # one of alice's, for DELETE /tokens/{id}

    async def call(self, method: str, path: str, who: str, body: Any = None) -> tuple[int, Any]:
        token = self.tokens[who]
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.client.request(method, "/api/v1" + path, headers=headers,
                                       json=body) as resp:
            text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except json.JSONDecodeError:
            return resp.status, text


def build_world(db: str) -> tuple[Store, dict[str, str | None], int]:
    store = Store(db)
    accounts = Accounts(store)
    accounts.ensure_defaults(ADMIN)
    for team in ("blue", "red", "empty"):
        accounts.create_team(team, Quota(), actor=A)
    accounts.create_user(name="alice", admin=False, password=PASSWORD, teams=["blue"], actor=A)
    accounts.create_user(name="bob", admin=False, password=None, teams=["red"], actor=A)
    accounts.create_user(name="carol", admin=False, password=None, teams=["blue"], actor=A)
    store.create_app(name="bluapp", image=IMAGE, instances=1, memory_mb=64, port=8080,
                     env={"SECRET": "s3cret"}, health_path=None, team="blue")
    store.create_app(name="redapp", image=IMAGE, instances=1, memory_mb=64, port=8080,
                     env={}, health_path=None, team="red")
    store.add_domain("bluapp", "shop.example.org")
    store.upsert_node(name="n1", address="127.0.0.2", capacity_mb=1024)
    generation = accounts.new_node_generation("n1", actor=A)
    made = {who: accounts.create_token(owner=owner, name=who, app=app, expires_in=None,
                                       actor=A)
            for who, owner, app in (("member", "alice", None), ("other", "bob", None),
                                    ("ci", "alice", "bluapp"), ("revoked", "alice", None),
                                    ("expired", "alice", None), ("disabled", "carol", None),
                                    ("spare", "alice", None))}
    ids = {who: int(str(info["id"])) for who, (_, info) in made.items()}
    accounts.revoke_token(ids["revoked"], who=accounts.principal(ADMIN), actor=A)
    with store.session() as s:
        s.execute(update(TokenRow).where(TokenRow.id == ids["expired"])  # type: ignore[arg-type]
                  .values(expires_at=time.time() - 1))
        s.commit()
    accounts.set_disabled("carol", True, actor=A)
    secrets = {who: token for who, (token, _) in made.items() if who != "spare"}
    return store, {
        **secrets, "admin": ADMIN, "cluster": CLUSTER, "none": None,
        "agent": tokens.node_credential(CLUSTER, "n1", generation)}, ids["spare"]


@dataclass(frozen=True)
class Template:
    """A world built once (scrypt and all), copied for each test that needs one."""

    path: Path
    tokens: dict[str, str | None]
    spare_token: int


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    path = tmp_path_factory.mktemp("access") / "template.db"
    store, secrets, spare = build_world(f"sqlite:///{path}")
    store.close()
    return Template(path, secrets, spare)


@contextlib.asynccontextmanager
async def world(template: Template, tmp_path: Path, n: int) -> AsyncIterator[World]:
    copy = tmp_path / f"world{n}.db"
    shutil.copyfile(template.path, copy)
    db = f"sqlite:///{copy}"
    store = Store(db)
    secrets, spare = template.tokens, template.spare_token
    config = ServerConfig(cluster_token=CLUSTER, database_url=db, redis_url="")
    server = Server(config, store, MemoryRouteStore())
    try:
        async with TestClient(TestServer(make_app(server))) as client:
            yield World(server, client, secrets, spare)
    finally:
        server.close()


HEARTBEAT = {"address": "127.0.0.2", "capacity_mb": 1024, "free_mb": 900, "containers": []}
OUT, NO = 401, 403  # who cannot be identified; who may not
UNKNOWN = {"none": OUT, "revoked": OUT, "expired": OUT, "disabled": OUT}
USERS_ONLY = {"agent": NO, "cluster": NO, **UNKNOWN}


def row(statuses: str, **extra: int) -> dict[str, int]:
    """`statuses` gives admin, member, other, ci in order (e.g. "200 200 403 200"); agents
    are refused user routes and unknown callers get 401, unless `extra` says otherwise."""
    codes = [int(x) for x in statuses.split()]
    return {**dict(zip(("admin", "member", "other", "ci"), codes, strict=True)),
            **USERS_ONLY, **extra}


PUBLIC = dict.fromkeys(WHO, 200)
AGENT_ONLY = {"admin": NO, "member": NO, "other": NO, "ci": NO, "agent": 200, "cluster": 200,
              **UNKNOWN}
# (method, path as in the API document, the path called, body): status by caller.
MATRIX: list[tuple[str, str, str, Any, dict[str, int]]] = [
    ("get", "/health", "/health", None, PUBLIC),
    ("get", "/openapi.json", "/openapi.json", None, PUBLIC),
    ("post", "/login", "/login", {"user": "alice", "password": PASSWORD}, PUBLIC),
    ("post", "/logout", "/logout", {}, row("200 200 200 200")),
    ("get", "/whoami", "/whoami", None, row("200 200 200 200")),
    ("get", "/apps", "/apps", None, row("200 200 200 200")),
    ("post", "/apps", "/apps", {"name": "newapp", "image": IMAGE, "team": "blue"},
     row("201 201 403 403")),
    ("get", "/apps/{name}", "/apps/bluapp", None, row("200 200 403 200")),
    ("get", "/apps/{name}/access", "/apps/bluapp/access", None, row("200 200 403 200")),
    ("delete", "/apps/{name}", "/apps/bluapp", None, row("200 200 403 403")),
    ("post", "/apps/{name}/scale", "/apps/bluapp/scale", {"instances": 2},
     row("200 200 403 403")),
    ("post", "/apps/{name}/settings", "/apps/bluapp/settings", {"surge": 1},
     row("200 200 403 403")),
    ("post", "/apps/{name}/deploy", "/apps/bluapp/deploy", {"image": IMAGE + "0"},
     row("200 200 403 200")),
    # Release 1 is the only one: nothing to cancel or roll back to (409), once allowed.
    ("post", "/apps/{name}/deploy/cancel", "/apps/bluapp/deploy/cancel", {},
     row("409 409 403 409")),
    ("post", "/apps/{name}/rollback", "/apps/bluapp/rollback", {}, row("409 409 403 409")),
    ("post", "/apps/{name}/restart", "/apps/bluapp/restart", {}, row("200 200 403 200")),
    ("post", "/apps/{name}/env", "/apps/bluapp/env", {"set": {"X": "1"}},
     row("200 200 403 200")),
    ("get", "/apps/{name}/releases", "/apps/bluapp/releases", None, row("200 200 403 200")),
    ("get", "/apps/{name}/logs", "/apps/bluapp/logs", None, row("200 200 403 200")),
    ("get", "/apps/{name}/domains", "/apps/bluapp/domains", None, row("200 200 403 200")),
    ("post", "/apps/{name}/domains", "/apps/bluapp/domains", {"domain": "www.example.org"},
     row("201 201 403 403")),
    ("delete", "/apps/{name}/domains/{domain}", "/apps/bluapp/domains/shop.example.org",
     None, row("200 200 403 403")),
    ("get", "/nodes", "/nodes", None, row("200 200 200 403")),
    ("get", "/status", "/status", None, row("200 200 200 403")),
    ("post", "/nodes/{node}/drain", "/nodes/n1/drain", {}, row("200 403 403 403")),
    ("post", "/nodes/{node}/credential", "/nodes/n1/credential", {}, row("200 403 403 403")),
    ("get", "/events", "/events", None, row("200 200 200 200")),
    ("get", "/users", "/users", None, row("200 403 403 403")),
    ("post", "/users", "/users", {"name": "dave"}, row("201 403 403 403")),
    ("post", "/users/{user}/disable", "/users/alice/disable", {}, row("200 403 403 403")),
    ("post", "/users/{user}/password", "/users/alice/password",
     {"password": "another-password"}, row("200 200 403 403")),
    ("get", "/teams", "/teams", None, row("200 200 200 403")),
    ("post", "/teams", "/teams", {"name": "green"}, row("201 403 403 403")),
    ("get", "/teams/{team}", "/teams/blue", None, row("200 200 403 403")),
    ("delete", "/teams/{team}", "/teams/empty", None, row("200 403 403 403")),
    ("post", "/teams/{team}/users", "/teams/blue/users", {"user": "bob"},
     row("200 403 403 403")),
    ("delete", "/teams/{team}/users/{user}", "/teams/blue/users/alice", None,
     row("200 403 403 403")),
    ("post", "/teams/{team}/quota", "/teams/blue/quota", {"instances": 50},
     row("200 403 403 403")),
    ("get", "/tokens", "/tokens", None, row("200 200 200 403")),
    ("post", "/tokens", "/tokens", {"name": "another"}, row("201 201 201 403")),
    # Bob may not revoke alice's token: to him it does not exist.
    ("delete", "/tokens/{id}", "/tokens/SPARE", None, row("200 200 404 403")),
    ("post", "/nodes/{node}/heartbeat", "/nodes/n1/heartbeat", HEARTBEAT, AGENT_ONLY),
    ("get", "/nodes/{node}/assignments", "/nodes/n1/assignments?wait=0", None, AGENT_ONLY),
    ("get", "/nodes/{node}/cluster", "/nodes/n1/cluster", None, AGENT_ONLY),
    # n1's credential is not n2's.
    ("post", "/nodes/{node}/heartbeat", "/nodes/n2/heartbeat", HEARTBEAT,
     {**AGENT_ONLY, "agent": NO}),
    ("get", "/nodes/{node}/assignments", "/nodes/n2/assignments?wait=0", None,
     {**AGENT_ONLY, "agent": NO}),
]


def test_the_matrix_covers_every_route_of_the_api() -> None:
    documented = {(op.method, op.path) for op in OPERATIONS}
    assert {(m, p) for m, p, *_ in MATRIX} == documented
    assert all(set(cells) == set(WHO) for *_, cells in MATRIX)


@pytest.mark.parametrize("case", MATRIX, ids=[f"{m.upper()} {c}" for m, _, c, *_ in MATRIX])
def test_each_caller_gets_its_status_on_each_route(
        template: Template, tmp_path: Path,
        case: tuple[str, str, str, Any, dict[str, int]]) -> None:
    method, _, path, body, expected = case

    async def main() -> None:
        seen: dict[str, int] = {}
        refused = [w for w in WHO if expected[w] in (OUT, NO)]
        allowed = [w for w in WHO if w not in refused]
        async with world(template, tmp_path, 0) as w:
            for who in refused:
                status, reply = await w.call(method, path.replace("SPARE", str(
                    w.spare_token)), who, body)
                seen[who] = status
                assert isinstance(reply, dict) and reply.get("error"), (who, reply)
            # Refusals changed nothing: the world is as it was built.
            assert sorted(w.server.store.snapshot().apps) == ["bluapp", "redapp"]
        for n, who in enumerate(allowed, 1):
            async with world(template, tmp_path, n) as w:
                seen[who], _ = await w.call(method, path.replace("SPARE", str(
                    w.spare_token)), who, body)
        assert seen == expected

    asyncio.run(main())


# -- the rules around the matrix -------------------------------------------------------------

def run_in(template: Template, tmp_path: Path, body: Any) -> None:
    async def main() -> None:
        async with world(template, tmp_path, 0) as w:
            await body(w)

    asyncio.run(main())


def test_lists_show_each_caller_only_what_it_may_see(template: Template,
                                                     tmp_path: Path) -> None:
    async def body(w: World) -> None:
        seen = {who: sorted(a["name"] for a in (await w.call("GET", "/apps", who))[1])
                for who in ("admin", "member", "other", "ci")}
        assert seen == {"admin": ["bluapp", "redapp"], "member": ["bluapp"],
                        "other": ["redapp"], "ci": ["bluapp"]}
        await w.call("POST", "/apps/redapp/scale", "other", {"instances": 2})
        events = {who: {e["app"] for e in (await w.call("GET", "/events", who))[1]}
                  for who in ("admin", "member", "other", "ci")}
        assert {"bluapp", "redapp"} <= events["admin"]
        assert "redapp" not in events["member"] and "bluapp" in events["member"]
        assert events["other"] <= {"redapp", None} and events["ci"] == {"bluapp"}
        _, mine = await w.call("GET", "/events?user=bob", "admin")
        assert [e["message"] for e in mine] == ["scaled from 1 to 2"]
        assert mine[0]["source"] == "127.0.0.1"
        teams = {who: sorted(t["name"] for t in (await w.call("GET", "/teams", who))[1])
                 for who in ("admin", "member")}
        assert teams == {"admin": ["blue", "empty", "red"], "member": ["blue"]}
        _, tokens_of_bob = await w.call("GET", "/tokens", "other")
        assert {t["user"] for t in tokens_of_bob} == {"bob"}
        assert all("token" not in t and len(t["prefix"]) == 9 for t in tokens_of_bob)
        status, reply = await w.call("GET", "/tokens?all=true", "member")
        assert status == 403 and "only their own tokens" in reply["error"]

    run_in(template, tmp_path, body)


def test_env_values_only_when_asked_by_who_may_change_the_app(template: Template,
                                                              tmp_path: Path) -> None:
    async def body(w: World) -> None:
        _, app = await w.call("GET", "/apps/bluapp", "member")
        assert app["env"] == {"SECRET": None}
        for who in ("member", "ci", "admin"):
            _, app = await w.call("GET", "/apps/bluapp?show_env=true", who)
            assert app["env"] == {"SECRET": "s3cret"}, who
        await w.call("POST", "/apps/bluapp/env", "member", {"set": {"TOKEN": "t0ps3cret"}})
        _, events = await w.call("GET", "/events?limit=1000", "admin")
        _, releases = await w.call("GET", "/apps/bluapp/releases", "member")
        _, listed = await w.call("GET", "/apps", "admin")
        for shown in (events, releases, listed):
            assert "s3cret" not in json.dumps(shown)
        assert releases[0]["env"] == ["SECRET", "TOKEN"]

    run_in(template, tmp_path, body)


def test_quotas_refuse_what_goes_past_them_with_the_numbers(template: Template,
                                                            tmp_path: Path) -> None:
    async def body(w: World) -> None:
        status, team = await w.call("POST", "/teams/blue/quota", "admin",
                                    {"instances": 3, "memory": "256m"})
        assert status == 200 and team["quota"] == {"instances": 3, "memory_mb": 256}
        assert team["usage"] == {"instances": 1, "memory_mb": 64}
        assert (await w.call("POST", "/apps/bluapp/scale", "member", {"instances": 3}))[0] == 200
        status, reply = await w.call("POST", "/apps", "member", {
            "name": "more", "image": IMAGE, "memory": "64m", "team": "blue"})
        assert status == 409 and reply["error"] == (
            "team blue's quota is 3 instance(s): its apps ask for 3 now, and this would "
            "make it 4")
        assert (await w.call("POST", "/apps/bluapp/scale", "member", {"instances": 2}))[0] == 200
        status, reply = await w.call("POST", "/apps/bluapp/deploy", "ci", {"memory": "256m"})
        assert status == 409 and reply["error"] == (
            "team blue's quota is 256m of memory: its apps ask for 128m now, and this would "
            "make it 512m (+384m)")
        # Lowered below what runs: growing is refused, shrinking always allowed.
        await w.call("POST", "/teams/blue/quota", "admin", {"instances": 1})
        assert (await w.call("POST", "/apps/bluapp/scale", "member", {"instances": 1}))[0] == 200
        status, _ = await w.call("POST", "/apps/bluapp/scale", "member", {"instances": 2})
        assert status == 409
        status, team = await w.call("POST", "/teams/blue/quota", "admin", {"instances": None})
        assert team["quota"] == {"instances": None, "memory_mb": 256}
        assert (await w.call("POST", "/apps/bluapp/scale", "member", {"instances": 4}))[0] == 200
        # Red has no quota; nothing refused changed anything.
        assert [a.instances for a in w.server.store.snapshot().apps.values()] == [4, 1]

    run_in(template, tmp_path, body)


def test_revocation_and_disabling_take_effect_at_once_on_every_server(
        template: Template, tmp_path: Path) -> None:
    """Two servers on one database: a token revoked through one is refused by the other
    on the very next request (no cache anywhere)."""
    async def main() -> None:
        async with world(template, tmp_path, 0) as one:
            config = ServerConfig(cluster_token=CLUSTER, database_url=one.server.store.url,
                                  redis_url="")
            two = Server(config, Store(one.server.store.url), MemoryRouteStore())
            try:
                async with TestClient(TestServer(make_app(two))) as client:
                    other = World(two, client, dict(one.tokens))
                    assert (await other.call("GET", "/apps", "member"))[0] == 200
                    _, me = await one.call("GET", "/whoami", "member")
                    assert (await one.call("DELETE", f"/tokens/{me['token']}", "member"))[0] \
                        == 200
                    status, reply = await other.call("GET", "/apps", "member")
                    assert status == 401 and reply["error"] == "this API token was revoked"
                    assert (await other.call("GET", "/apps", "other"))[0] == 200
                    await one.call("POST", "/users/bob/disable", "admin", {})
                    status, reply = await other.call("GET", "/apps", "other")
                    assert status == 401 and reply["error"] == "user bob is disabled"
                    await one.call("POST", "/users/bob/disable", "admin", {"undo": True})
                    assert (await other.call("GET", "/apps", "other"))[0] == 200
            finally:
                two.close()

    asyncio.run(main())


def test_sign_in_with_a_password_and_out(template: Template, tmp_path: Path) -> None:
    async def body(w: World) -> None:
        status, reply = await w.call("POST", "/login", "none",
                                     {"user": "alice", "password": PASSWORD})
        assert status == 200 and reply["token"].startswith("dinp_")
        assert reply["info"]["session"] and reply["info"]["expires_at"] > time.time() + 86400
        w.tokens["session"] = reply["token"]
        _, me = await w.call("GET", "/whoami", "session")
        assert (me["user"], me["role"], me["teams"]) == ("alice", "member", ["blue"])
        for wrong in ({"user": "alice", "password": "not-her-password"},
                      {"user": "nobody", "password": PASSWORD}):
            status, reply = await w.call("POST", "/login", "none", wrong)
            assert status == 401 and reply["error"] == "wrong user name or password"
        status, reply = await w.call("POST", "/login", "none", {"user": "Alice!", "password": "x"})
        assert status == 400 and reply["field"] == "user"
        assert (await w.call("POST", "/logout", "session", {}))[1]["revoked"] is True
        status, reply = await w.call("GET", "/whoami", "session")
        assert status == 401 and "revoked" in reply["error"]
        # Logging out with an API token leaves the token alone.
        assert (await w.call("POST", "/logout", "member", {}))[1]["revoked"] is False
        assert (await w.call("GET", "/whoami", "member"))[0] == 200
        status, reply = await w.call("POST", "/login", "none",
                                     {"user": "carol", "password": PASSWORD})
        assert status == 401  # disabled, and has no password anyway
        _, events = await w.call("GET", "/events?user=alice", "admin")
        assert "user alice signed in" in [e["message"] for e in events]

    run_in(template, tmp_path, body)


def test_an_agent_credential_replaced_stops_working(template: Template,
                                                    tmp_path: Path) -> None:
    async def body(w: World) -> None:
        old = w.tokens["agent"]
        assert (await w.call("GET", "/nodes/n1/cluster", "agent"))[0] == 200
        status, reply = await w.call("POST", "/nodes/n1/credential", "admin", {})
        assert status == 200 and reply["credential"] != old
        w.tokens["new"] = reply["credential"]
        status, reply = await w.call("GET", "/nodes/n1/cluster", "agent")
        assert status == 401 and "replaced by a newer one" in reply["error"]
        assert (await w.call("GET", "/nodes/n1/cluster", "new"))[0] == 200
        w.tokens["forged"] = old[:-4] + "0000"
        status, reply = await w.call("GET", "/nodes/n1/cluster", "forged")
        assert status == 401 and reply["error"] == "invalid agent credential"

    run_in(template, tmp_path, body)


def test_the_last_admin_cannot_be_disabled_and_users_are_checked(template: Template,
                                                                 tmp_path: Path) -> None:
    async def body(w: World) -> None:
        status, reply = await w.call("POST", "/users/admin/disable", "admin", {})
        assert status == 409 and "last admin" in reply["error"]
        status, reply = await w.call("POST", "/users", "admin",
                                     {"name": "erin", "teams": ["nope"]})
        assert status == 404 and "no team named 'nope'" in reply["error"]
        assert "erin" not in [u["name"] for u in (await w.call("GET", "/users", "admin"))[1]]
        status, reply = await w.call("POST", "/users", "admin", {"name": "alice"})
        assert status == 409
        status, reply = await w.call("POST", "/users", "admin",
                                     {"name": "erin", "password": "short"})
        assert status == 400 and reply["field"] == "password"
        status, made = await w.call("POST", "/users", "admin",
                                    {"name": "erin", "admin": True, "teams": ["red"]})
        assert status == 201 and made["token"].startswith("dinp_")
        w.tokens["erin"] = made["token"]
        assert (await w.call("GET", "/users", "erin"))[0] == 200  # an admin now
        status, reply = await w.call("POST", "/apps", "member", {"name": "x", "image": IMAGE,
                                                                 "team": "red"})
        assert status == 403 and "not a member of team red" in reply["error"]

    run_in(template, tmp_path, body)


def test_tokens_older_than_users_belong_to_admin_and_apps_to_team_default(
        tmp_path: Path) -> None:
    """A database of the release before users: its admin token and apps keep working."""
    store = Store(f"sqlite:///{tmp_path}/old.db")
    with store.session() as s:
        s.add(TokenRow(name="admin", digest=tokens.digest("old-admin-token"), role="admin"))
        s.commit()
    store.create_app(name="legacy", image=IMAGE, instances=1, memory_mb=64, port=8080,
                     env={}, health_path=None, team="default")
    with store.session() as s:
        s.execute(update(AppRow).values(team=None))
        s.commit()
    accounts = Accounts(store)
    assert accounts.ensure_defaults() is None  # an admin token exists: no new one
    who = accounts.principal("old-admin-token")
    assert (who.user, who.admin) == ("admin", True)
    assert store.snapshot().apps["legacy"].team == "default"
    assert accounts.ensure_defaults() is None  # and again: nothing changes
    store.close()
