"""Who may do what: the one authorization rule of the API, as a pure function.

Every API operation names what it needs (`Need`, in the OpenAPI table of
`roles/openapi.py`); the API resolves who asks (a `Principal`, from the bearer token) and
calls `check` before any handler runs, so no route goes without a rule. The rules:

- An **admin** may do anything a user may.
- A **member** sees and changes only the apps of the teams they belong to; lists (apps,
  events, teams) show only those. Nodes they may list, not drain.
- A **CI token** (scoped to one app) may read that app, deploy it (new image, env),
  restart it, roll it back and cancel its deploy; nothing else: no other app, no scale, no
  delete, no domains, no tokens, no nodes.
- An **agent** credential reports only for its own node and reads only its own
  assignments; the cluster token (held by servers, `dinp up` and older agents) is an
  agent for every node. Agents may use no user route, users no agent route.
- Who cannot be identified gets 401 (`Unauthorized`); who is known but not allowed gets
  403 (`Forbidden`), with a message saying why.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from dinp.errors import Forbidden, Unauthorized

ADMIN = "admin"
MEMBER = "member"
# Where apps older than teams go, and those an admin in no team makes.
DEFAULT_TEAM = "default"
ROLES = (ADMIN, MEMBER)
# The node name an agent principal has when it holds the cluster token: any node.
ANY_NODE = "*"


class Need(Enum):
    """What an operation requires of who asks."""

    PUBLIC = "public"  # no token at all
    SIGNED_IN = "signed-in"  # any user token, a CI token included (lists are filtered)
    MEMBER = "member"  # a user's own token (not a CI token)
    APP_READ = "app-read"  # the app's team, an admin, or a CI token of the app
    APP_DEPLOY = "app-deploy"  # as APP_READ: deploy, env, restart, rollback, cancel
    APP_CHANGE = "app-change"  # the app's team or an admin: scale, settings, domains, delete
    TEAM_READ = "team-read"  # a member of the team, or an admin
    SELF = "self"  # the user named in the path, or an admin
    ADMIN = "admin"  # admins only: nodes, users, teams, quotas
    AGENT = "agent"  # the node's agent credential, or the cluster token


@dataclass(frozen=True)
class Principal:
    """Who a request comes from."""

    user: str = ""  # the user name; "" for an agent
    admin: bool = False
    teams: frozenset[str] = frozenset()
    app: str | None = None  # a CI token: only this app
    node: str | None = None  # an agent: its node (ANY_NODE for the cluster token)
    token_id: int | None = None
    session: bool = False  # a token made by a password login (logout revokes it)

    @property
    def is_agent(self) -> bool:
        return self.node is not None

    def __str__(self) -> str:
        if self.is_agent:
            return "the cluster token" if self.node == ANY_NODE else f"node {self.node}'s agent"
        if self.app is not None:
            return f"{self.user}'s token for app {self.app}"
        return f"user {self.user}"


@dataclass(frozen=True)
class Actor:
    """Who made a change and from where, as the audit trail (events) records it."""

    user: str | None = None  # None: dinp itself
    source: str | None = None  # the client's address

    @classmethod
    def of(cls, who: Principal, source: str | None) -> Actor:
        return cls(who.user or str(who), source)


SYSTEM = Actor()


@dataclass(frozen=True)
class Target:
    """What an operation acts on, from its path (and the app's team, looked up)."""

    app: str | None = None
    app_team: str | None = None  # None: the app does not exist (the handler says 404)
    team: str | None = None
    node: str | None = None
    user: str | None = None


def check(who: Principal | None, need: Need, target: Target = Target()) -> None:
    """Allow, or raise Unauthorized (no one) or Forbidden (not this one), with why."""
    if need is Need.PUBLIC:
        return
    if who is None:
        raise Unauthorized("missing API token", hint="Run `dinp login`, or set DINP_TOKEN.")
    if need is Need.AGENT:
        _check_agent(who, target)
        return
    if who.is_agent:
        raise Forbidden(f"{who} may only report for a node; this needs a user's token")
    if need is Need.SIGNED_IN or (who.admin and who.app is None):
        return
    if who.app is not None:
        _check_scoped(who, need, target)
        return
    if need is Need.MEMBER:
        return
    if need is Need.ADMIN:
        raise Forbidden(f"{who} is not an admin; only admins may do this")
    if need is Need.SELF:
        if target.user != who.user:
            raise Forbidden(f"{who} may change only their own account")
        return
    if need is Need.TEAM_READ:
        if target.team not in who.teams:
            raise Forbidden(f"{who} is not a member of team {target.team}")
        return
    # APP_READ, APP_DEPLOY, APP_CHANGE: the app's team.
    if target.app_team is not None and target.app_team not in who.teams:
        raise Forbidden(f"app {target.app} belongs to team {target.app_team}, and {who} "
                        "is not a member of it",
                        hint=f"An admin can add you: `dinp team add-user {target.app_team} "
                        f"{who.user}`.")


APP_NEEDS = frozenset({Need.APP_READ, Need.APP_DEPLOY, Need.APP_CHANGE})
SCOPED_NEEDS = frozenset({Need.APP_READ, Need.APP_DEPLOY})


def _check_scoped(who: Principal, need: Need, target: Target) -> None:
    """A CI token: read, deploy and roll back its one app (an admin's too: scoping is
    what the token is for)."""
    if need in SCOPED_NEEDS and target.app == who.app:
        return
    raise Forbidden(f"{who} may only read, deploy, restart and roll back app {who.app}")


def _check_agent(who: Principal, target: Target) -> None:
    if not who.is_agent:
        raise Forbidden(f"{who} is not an agent: node routes take the node's agent "
                        "credential or the cluster token")
    if who.node != ANY_NODE and target.node != who.node:
        raise Forbidden(f"{who} may report only for node {who.node}, not {target.node}")


def visible_app(who: Principal, app: str, team: str | None) -> bool:
    """Whether `who` sees app `app` of `team` in lists (apps, events)."""
    if who.app is not None:
        return app == who.app
    return who.admin or (team is not None and team in who.teams)
