"""Users, teams, tokens and agent credentials in the database: who may use the API.

Blocking, like the store it shares its engine with (the server calls it from its database
thread). Tokens are looked up on every request, never cached: an expired or revoked
token, or a disabled user, is refused by every server process at once. Every change is
an event with who made it and from where.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import sqlalchemy.exc
from sqlalchemy import delete, func, update
from sqlmodel import Session, col, select

from dinp import access, passwords, tokens
from dinp.access import DEFAULT_TEAM, Actor, Principal
from dinp.errors import Conflict, NotFound, Unauthorized
from dinp.models import AppRow, EventRow, MemberRow, NodeCredentialRow, TeamRow, TokenRow, UserRow
from dinp.quotas import Quota, Usage
from dinp.store import Store

log = logging.getLogger(__name__)

ADMIN_USER = "admin"  # the first admin, and the owner of tokens older than users


@dataclass(frozen=True)
class TeamView:
    team: TeamRow
    members: list[str] = field(default_factory=list)
    apps: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)

    def to_json(self) -> dict[str, object]:
        return {"name": self.team.name, "members": self.members, "apps": self.apps,
                "quota": {"instances": self.team.instances_quota,
                          "memory_mb": self.team.memory_quota_mb},
                "usage": {"instances": self.usage.instances,
                          "memory_mb": self.usage.memory_mb},
                "created_at": self.team.created_at}


def token_json(row: TokenRow, *, now: float | None = None) -> dict[str, object]:
    """A token as listings show it: never the secret, only its first characters."""
    now = time.time() if now is None else now
    state = ("revoked" if row.revoked_at is not None else
             "expired" if row.expires_at is not None and row.expires_at <= now else "active")
    return {"id": row.id, "name": row.name, "user": row.user, "app": row.app,
            "prefix": row.prefix, "session": row.session, "state": state,
            "expires_at": row.expires_at, "revoked_at": row.revoked_at,
            "created_by": row.created_by, "created_at": row.created_at}


def user_json(row: UserRow, teams: Sequence[str]) -> dict[str, object]:
    return {"name": row.name, "role": row.role, "teams": list(teams),
            "disabled": row.disabled, "password": row.password is not None,
            "created_by": row.created_by, "created_at": row.created_at}


def _event(s: Session, actor: Actor, message: str, *, app: str | None = None) -> None:
    s.add(EventRow(app=app, message=message, user=actor.user, source=actor.source))


class Accounts:
    def __init__(self, store: Store) -> None:
        self.store = store

    # -- the first start, and databases older than users --------------------------------

    def ensure_defaults(self, preset_admin_token: str = "") -> str | None:
        """Make what a server needs to be usable, keeping every row of an older database:
        tokens made before users belong to user `admin`, apps made before teams to team
        `default`. With no admin yet, make user `admin` and its first token (the preset
        one, if given): returned to be shown once; None when an admin had one."""
        with self.store.session() as s:
            legacy_tokens = s.exec(select(TokenRow).where(col(TokenRow.user).is_(None))).all()
            if legacy_tokens and s.get(UserRow, ADMIN_USER) is None:
                s.add(UserRow(name=ADMIN_USER, role=access.ADMIN, created_by="dinp"))
            for row in legacy_tokens:
                row.user, row.prefix = ADMIN_USER, row.prefix or "(older)"
                s.add(row)
            if s.exec(select(AppRow).where(col(AppRow.team).is_(None))).first() is not None:
                if s.get(TeamRow, DEFAULT_TEAM) is None:
                    s.add(TeamRow(name=DEFAULT_TEAM))
                s.execute(update(AppRow).where(col(AppRow.team).is_(None))
                          .values(team=DEFAULT_TEAM))
            s.commit()
            admins = s.exec(select(UserRow).where(UserRow.role == access.ADMIN,
                                                  col(UserRow.disabled).is_(False))).all()
            admin_tokens = s.exec(select(TokenRow).where(
                col(TokenRow.user).in_([u.name for u in admins]),
                col(TokenRow.revoked_at).is_(None))).first() if admins else None
            if admin_tokens is not None:
                return None
            if s.get(UserRow, ADMIN_USER) is None:
                s.add(UserRow(name=ADMIN_USER, role=access.ADMIN, created_by="dinp"))
            token = preset_admin_token or tokens.new_user_token()
            s.add(self._token_row(token, name="admin", user=ADMIN_USER, by="dinp"))
            _event(s, access.SYSTEM, f"user {ADMIN_USER} made, with its first token")
            try:
                s.commit()
            except sqlalchemy.exc.IntegrityError:  # another server made it meanwhile
                return None
            return token

    # -- who asks -------------------------------------------------------------------

    def principal(self, token: str) -> Principal:
        """The user a token acts as, with their role and teams as they are now; or
        Unauthorized saying why not (unknown, expired, revoked, user disabled)."""
        with self.store.session() as s:
            row = s.exec(select(TokenRow).where(TokenRow.digest == tokens.digest(token))).first()
            if row is None:
                raise Unauthorized("invalid API token", hint="Run `dinp login` again.")
            if row.revoked_at is not None:
                raise Unauthorized("this API token was revoked", hint="Run `dinp login`.")
            if row.expires_at is not None and row.expires_at <= time.time():
                raise Unauthorized("this API token has expired", hint="Run `dinp login`.")
            user = s.get(UserRow, row.user) if row.user else None
            if user is None:
                raise Unauthorized("this API token's user no longer exists")
            if user.disabled:
                raise Unauthorized(f"user {user.name} is disabled",
                                   hint="An admin can enable it: `dinp user disable "
                                   f"{user.name} --undo`.")
            teams = frozenset(s.exec(select(MemberRow.team).where(MemberRow.user == user.name)))
        return Principal(user=user.name, admin=user.role == access.ADMIN, teams=teams,
                         app=row.app, token_id=row.id, session=row.session)

    def login(self, name: str, password: str, *, ttl: float,
              actor: Actor) -> tuple[str, dict[str, object]]:
        """A session token for a user who gave the right password (shown once)."""
        with self.store.session() as s:
            user = s.get(UserRow, name)
            ok = passwords.verify(password, user.password if user else None)
            if user is None or not ok:
                log.warning("failed sign-in for user %r from %s", name, actor.source)
                raise Unauthorized("wrong user name or password")
            if user.disabled:
                raise Unauthorized(f"user {name} is disabled")
            token = tokens.new_user_token()
            row = self._token_row(token, name="session", user=name, by=name,
                                  expires_at=time.time() + ttl, session=True)
            s.add(row)
            _event(s, actor, f"user {name} signed in")
            s.commit()
            return token, token_json(row)

    # -- tokens -----------------------------------------------------------------------

    @staticmethod
    def _token_row(token: str, *, name: str, user: str, by: str, app: str | None = None,
                   expires_at: float | None = None, session: bool = False) -> TokenRow:
        return TokenRow(name=name, digest=tokens.digest(token), user=user, app=app,
                        prefix=token[:9], expires_at=expires_at, session=session,
                        created_by=by)

    def create_token(self, *, owner: str, name: str, app: str | None,
                     expires_in: float | None, actor: Actor) -> tuple[str, dict[str, object]]:
        """A new API token of `owner` (for app `app` only, if given), shown once."""
        with self.store.session() as s:
            if s.get(UserRow, owner) is None:
                raise NotFound(f"no user named {owner!r}")
            if app is not None and s.get(AppRow, app) is None:
                raise NotFound(f"no app named {app!r}", hint="`dinp app list` shows the apps.")
            token = tokens.new_user_token()
            row = self._token_row(token, name=name, user=owner, by=actor.user or "", app=app,
                                  expires_at=time.time() + expires_in if expires_in else None)
            s.add(row)
            scope = f" for app {app}" if app else ""
            _event(s, actor, f"token {name!r} of {owner}{scope} made", app=app)
            s.commit()
            return token, token_json(row)

    def tokens(self, owner: str | None) -> list[dict[str, object]]:
        """The tokens of `owner` (None: everyone's), newest first."""
        with self.store.session() as s:
            query = select(TokenRow).order_by(col(TokenRow.id).desc())
            if owner is not None:
                query = query.where(TokenRow.user == owner)
            now = time.time()
            return [token_json(r, now=now) for r in s.exec(query)]

    def revoke_token(self, token_id: int, *, who: Principal, actor: Actor) -> dict[str, object]:
        """Revoke a token (one's own; an admin's, anyone's): refused from the next request."""
        with self.store.session() as s:
            row = s.get(TokenRow, token_id)
            if row is None or (row.user != who.user and not who.admin):
                raise NotFound(f"you have no token {token_id}",
                               hint="`dinp token list` shows yours.")
            if row.revoked_at is None:
                row.revoked_at = time.time()
                s.add(row)
                _event(s, actor, f"token {row.name!r} ({row.id}) of {row.user} revoked",
                       app=row.app)
                s.commit()
            return token_json(row)

    # -- users ------------------------------------------------------------------------

    def create_user(self, *, name: str, admin: bool, password: str | None,
                    teams: Iterable[str], actor: Actor) -> tuple[dict[str, object], str | None]:
        """A new user, in `teams`; with no password, also their first API token (shown
        once, for the admin to hand over)."""
        teams = sorted(set(teams))
        with self.store.session() as s:
            if s.get(UserRow, name) is not None:
                raise Conflict(f"a user named {name!r} exists already")
            for team in teams:
                self._team(s, team)
            user = UserRow(name=name, role=access.ADMIN if admin else access.MEMBER,
                           password=passwords.hash_password(password) if password else None,
                           created_by=actor.user or "")
            s.add(user)
            for team in teams:
                s.add(MemberRow(team=team, user=name))
            token = None
            if password is None:
                token = tokens.new_user_token()
                s.add(self._token_row(token, name="first", user=name, by=actor.user or ""))
            in_teams = f" in {', '.join(teams)}" if teams else ""
            _event(s, actor, f"user {name} made ({user.role}){in_teams}")
            try:
                s.commit()
            except sqlalchemy.exc.IntegrityError as exc:
                raise Conflict(f"a user named {name!r} exists already") from exc
            return user_json(user, teams), token

    def users(self) -> list[dict[str, object]]:
        with self.store.session() as s:
            teams: dict[str, list[str]] = {}
            for m in s.exec(select(MemberRow).order_by(col(MemberRow.team))):
                teams.setdefault(m.user, []).append(m.team)
            return [user_json(u, teams.get(u.name, []))
                    for u in s.exec(select(UserRow).order_by(col(UserRow.name)))]

    def set_disabled(self, name: str, disabled: bool, *, actor: Actor) -> dict[str, object]:
        """Disable a user (every token of theirs is refused from the next request) or
        enable them again. The last admin cannot be disabled."""
        with self.store.session() as s:
            user = self._user(s, name)
            if disabled and user.role == access.ADMIN and not user.disabled:
                others = s.exec(select(func.count()).select_from(UserRow).where(
                    UserRow.role == access.ADMIN, col(UserRow.disabled).is_(False),
                    UserRow.name != name)).one()
                if not others:
                    raise Conflict(f"{name} is the last admin: disabling it would leave "
                                   "nobody to manage the platform")
            if user.disabled != disabled:
                user.disabled = disabled
                s.add(user)
                _event(s, actor, f"user {name} {'disabled' if disabled else 'enabled'}")
                s.commit()
            teams = list(s.exec(select(MemberRow.team).where(MemberRow.user == name)))
            return user_json(user, teams)

    def set_password(self, name: str, password: str, *, actor: Actor) -> None:
        with self.store.session() as s:
            user = self._user(s, name)
            user.password = passwords.hash_password(password)
            s.add(user)
            _event(s, actor, f"password of user {name} changed")
            s.commit()

    @staticmethod
    def _user(s: Session, name: str) -> UserRow:
        user = s.get(UserRow, name)
        if user is None:
            raise NotFound(f"no user named {name!r}", hint="`dinp user list` shows them.")
        return user

    # -- teams --------------------------------------------------------------------------

    @staticmethod
    def _team(s: Session, name: str) -> TeamRow:
        team = s.get(TeamRow, name)
        if team is None:
            raise NotFound(f"no team named {name!r}", hint="`dinp team list` shows them.")
        return team

    def create_team(self, name: str, quota: Quota, *, actor: Actor) -> TeamView:
        with self.store.session() as s:
            if s.get(TeamRow, name) is not None:
                raise Conflict(f"a team named {name!r} exists already")
            team = TeamRow(name=name, memory_quota_mb=quota.memory_mb,
                           instances_quota=quota.instances)
            s.add(team)
            _event(s, actor, f"team {name} made")
            try:
                s.commit()
            except sqlalchemy.exc.IntegrityError as exc:
                raise Conflict(f"a team named {name!r} exists already") from exc
            return TeamView(team)

    def teams(self, only: frozenset[str] | None = None) -> list[TeamView]:
        """Every team (or those in `only`), with members, apps and what they ask for."""
        with self.store.session() as s:
            rows = [t for t in s.exec(select(TeamRow).order_by(col(TeamRow.name)))
                    if only is None or t.name in only]
            members: dict[str, list[str]] = {}
            for m in s.exec(select(MemberRow).order_by(col(MemberRow.user))):
                members.setdefault(m.team, []).append(m.user)
            apps: dict[str, list[AppRow]] = {}
            for a in s.exec(select(AppRow).order_by(col(AppRow.name))):
                apps.setdefault(a.team or "", []).append(a)
        return [TeamView(t, members.get(t.name, []), [a.name for a in apps.get(t.name, [])],
                         sum((Usage.of(a.instances, a.memory_mb) for a in apps.get(t.name, [])),
                             Usage()))
                for t in rows]

    def team(self, name: str) -> TeamView:
        views = self.teams(frozenset({name}))
        if not views:
            raise NotFound(f"no team named {name!r}", hint="`dinp team list` shows them.")
        return views[0]

    def add_member(self, team: str, user: str, *, actor: Actor) -> TeamView:
        with self.store.session() as s:
            self._team(s, team)
            self._user(s, user)
            if s.get(MemberRow, (team, user)) is None:
                s.add(MemberRow(team=team, user=user))
                _event(s, actor, f"user {user} added to team {team}")
                try:
                    s.commit()
                except sqlalchemy.exc.IntegrityError:
                    s.rollback()  # added by another request meanwhile: the same outcome
        return self.team(team)

    def remove_member(self, team: str, user: str, *, actor: Actor) -> TeamView:
        with self.store.session() as s:
            self._team(s, team)
            row = s.get(MemberRow, (team, user))
            if row is None:
                raise NotFound(f"{user} is not a member of team {team}")
            s.delete(row)
            _event(s, actor, f"user {user} removed from team {team}")
            s.commit()
        return self.team(team)

    def set_quota(self, team: str, quota: Quota, *, actor: Actor) -> TeamView:
        with self.store.session() as s:
            row = self._team(s, team)
            row.memory_quota_mb, row.instances_quota = quota.memory_mb, quota.instances
            s.add(row)
            words = ", ".join(
                f"{what} {'no limit' if value is None else value}" for what, value in
                (("instances", quota.instances), ("memory",
                                                  None if quota.memory_mb is None
                                                  else f"{quota.memory_mb}m")))
            _event(s, actor, f"team {team}'s quota: {words}")
            s.commit()
        return self.team(team)

    def delete_team(self, team: str, *, actor: Actor) -> None:
        with self.store.session() as s:
            self._team(s, team)
            apps = list(s.exec(select(AppRow.name).where(AppRow.team == team)))
            if apps:
                raise Conflict(f"team {team} still has app(s): {', '.join(sorted(apps))}",
                               hint="Delete them or move them first.")
            s.execute(delete(MemberRow).where(col(MemberRow.team) == team))
            s.execute(delete(TeamRow).where(col(TeamRow.name) == team))
            _event(s, actor, f"team {team} deleted")
            s.commit()

    # -- agent credentials ------------------------------------------------------------

    def new_node_generation(self, node: str, *, actor: Actor) -> int:
        """A new generation for `node`'s agent credential: the ones before stop working.
        (Only the current generation of a node with a row is valid: none before the
        first credential is made.)"""
        with self.store.session() as s:
            row = s.get(NodeCredentialRow, node)
            if row is None:
                row = NodeCredentialRow(node=node, generation=1)
            else:
                row.generation += 1
            s.add(row)
            _event(s, actor, f"a new agent credential for node {node} (the ones before no "
                   "longer work)")
            s.commit()
            return row.generation
