"""Database tables of the desired state (SQLModel; MySQL/MariaDB or SQLite).

Rows hold what *should* be; what runs is known from agent heartbeats and container labels.

Two column types keep MySQL and SQLite answering alike:

- `NAME`: names (apps, nodes, instance ids, digests) compare byte for byte. MySQL's
  default collation ignores case and trailing spaces, so `PRCASE` or `prcase ` would find
  `prcase` and delete it. Even `utf8mb4_bin` pads spaces on MariaDB, and the no-pad binary
  collations are named differently on MySQL and MariaDB: on both, names are VARBINARY,
  where every byte counts. Validation refuses such names before they get here anyway.
- `TIME`: Unix seconds as a double (MySQL's FLOAT is single precision: 2-minute steps
  at today's times). No time zones to disagree about.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import BigInteger, Column, Double, String, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.types import VARBINARY, TypeDecorator, TypeEngine
from sqlmodel import Field, SQLModel

from dinp.releases import ReleaseSpec

MYSQL_DIALECTS = frozenset({"mysql", "mariadb"})


class ExactName(TypeDecorator[str]):
    """A string compared byte for byte: VARBINARY on MySQL/MariaDB, VARCHAR elsewhere."""

    impl = String
    cache_ok = True

    def __init__(self, length: int = 63) -> None:
        super().__init__(length)
        self.length = length

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in MYSQL_DIALECTS:
            return dialect.type_descriptor(VARBINARY(self.length))
        return dialect.type_descriptor(String(self.length))

    def process_bind_param(self, value: str | None, dialect: Dialect) -> Any:
        if value is not None and dialect.name in MYSQL_DIALECTS:
            return value.encode()
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if isinstance(value, bytes | bytearray):
            return bytes(value).decode(errors="replace")
        return value  # type: ignore[no-any-return]


def name_type(length: int = 63) -> ExactName:
    return ExactName(length)


NAME = name_type()
TIME: Double[float] = Double()


def now() -> float:
    return time.time()


class AppRow(SQLModel, table=True):
    __tablename__ = "apps"

    name: str = Field(primary_key=True, sa_type=NAME)
    image: str = Field(max_length=255)
    instances: int
    memory_mb: int
    port: int
    health_path: str | None = Field(default=None, max_length=200)
    env_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    # Unused since custom domains have their own table (kept for older databases).
    domains_json: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    release: int = 1
    # The team whose members may see and change the app (None only in databases made
    # before teams, until the server's first start puts those apps in team "default").
    team: str | None = Field(default=None, sa_type=NAME, index=True)
    # Rollouts: new instances started at once (0: a quarter of the count, at least one),
    # and how long a release may take to come up before it is halted.
    surge: int = 0
    deploy_timeout: float = Field(default=120.0, sa_type=TIME)
    # Seconds an instance that leaves has between SIGTERM and SIGKILL.
    stop_grace: float = Field(default=10.0, sa_type=TIME)
    # HTTPS: plain-HTTP requests redirected (308) to https, and the max-age of the HSTS
    # header on TLS responses (0: none); for its host and custom domains alike.
    https_redirect: bool = False
    hsts: int = 0
    created_at: float = Field(default_factory=now, sa_type=TIME)
    updated_at: float = Field(default_factory=now, sa_type=TIME)

    @property
    def env(self) -> dict[str, str]:
        value: dict[str, str] = json.loads(self.env_json)
        return value


class ReleaseRow(SQLModel, table=True):
    """An immutable record of what an app runs, numbered per app: everything its
    instances start with, who made it and what changed from the one before."""

    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("app", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    app: str = Field(sa_type=NAME, index=True)
    version: int
    image: str = Field(max_length=255)
    env_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    # Null in rows made before they were kept here: filled from the app at upgrade.
    port: int | None = None
    memory_mb: int | None = None
    health_path: str | None = Field(default=None, max_length=200)
    change: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    created_by: str = Field(default="", max_length=200)
    # deploying, deployed, failed or cancelled (rollouts.py); why, when it failed.
    status: str = Field(default="deployed", max_length=16)
    failure: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    created_at: float = Field(default_factory=now, sa_type=TIME)

    def spec(self, app: AppRow) -> ReleaseSpec:
        """What this release runs (the app's own settings where an old row lacks them)."""
        return ReleaseSpec(
            image=self.image, env=json.loads(self.env_json or "{}"),
            port=self.port if self.port is not None else app.port,
            memory_mb=self.memory_mb if self.memory_mb is not None else app.memory_mb,
            health_path=self.health_path if self.port is not None else app.health_path,
        )


class InstanceRow(SQLModel, table=True):
    """One placed instance: the scheduler decided that `node` runs `app` at `release`."""

    __tablename__ = "instances"

    id: str = Field(primary_key=True, sa_type=name_type(16))
    app: str = Field(sa_type=NAME, index=True)
    release: int
    node: str = Field(sa_type=NAME, index=True)
    memory_mb: int
    created_at: float = Field(default_factory=now, sa_type=TIME)


class DomainRow(SQLModel, table=True):
    """A custom domain routed to an app: one app per domain (the primary key), stored
    lowercase, written to Redis as the original's `/cname/<domain>`."""

    __tablename__ = "domains"

    domain: str = Field(primary_key=True, sa_type=name_type(253))
    app: str = Field(sa_type=NAME, index=True)
    created_at: float = Field(default_factory=now, sa_type=TIME)


class CertificateRow(SQLModel, table=True):
    """A custom domain's certificate, ordered by the leading server from the ACME
    directory (acme_orders.py has the states and when each moves on). The row outlives
    its domain only while it is being revoked. The private key is never in a repr."""

    __tablename__ = "certificates"

    domain: str = Field(primary_key=True, sa_type=name_type(253))
    app: str = Field(sa_type=NAME, index=True)
    state: str = Field(default="pending", max_length=16)
    chain_pem: str = Field(default="", sa_column=Column(Text, nullable=False, default=""),
                           repr=False)
    key_pem: str = Field(default="", sa_column=Column(Text, nullable=False, default=""),
                         repr=False)
    not_before: float | None = Field(default=None, sa_type=TIME)
    not_after: float | None = Field(default=None, sa_type=TIME)
    issued_at: float | None = Field(default=None, sa_type=TIME)
    last_error: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    attempts: int = 0  # failed orders in a row
    next_attempt_at: float = Field(default=0.0, sa_type=TIME)
    created_at: float = Field(default_factory=now, sa_type=TIME)
    updated_at: float = Field(default_factory=now, sa_type=TIME)


class AcmeAccountRow(SQLModel, table=True):
    """The ACME account the servers order with, one per directory URL: made once, its
    key kept (a new key would be a new account, and could not revoke the old one's
    certificates)."""

    __tablename__ = "acme_accounts"

    directory: str = Field(primary_key=True, sa_type=name_type(255))
    key_pem: str = Field(sa_column=Column(Text, nullable=False), repr=False)
    uri: str = Field(default="", max_length=255)
    email: str = Field(default="", max_length=255)
    created_at: float = Field(default_factory=now, sa_type=TIME)


class NodeRow(SQLModel, table=True):
    __tablename__ = "nodes"

    name: str = Field(primary_key=True, sa_type=NAME)
    address: str = Field(max_length=255)
    capacity_mb: int
    status: str = Field(default="ready", max_length=16)
    # Instances the node already ran when this database first heard of it: not ours to
    # remove (an empty or wrong database must never make agents stop what runs).
    foreign_json: str = Field(default="[]", sa_column=Column(Text, nullable=False,
                                                             default="[]"))
    first_seen: float = Field(default_factory=now, sa_type=TIME)
    updated_at: float = Field(default_factory=now, sa_type=TIME)
    # The agent process that reports for the node (see the server's node ownership), so
    # a restarted server goes on refusing a second agent.
    agent: str | None = Field(default=None, sa_type=name_type(200))

    @property
    def foreign(self) -> list[str]:
        value: list[str] = json.loads(self.foreign_json or "[]")
        return value


class EventRow(SQLModel, table=True):
    __tablename__ = "events"

    id: int | None = Field(default=None, primary_key=True)
    at: float = Field(default_factory=now, sa_type=TIME, index=True)
    app: str | None = Field(default=None, sa_type=NAME, index=True)
    node: str | None = Field(default=None, sa_type=NAME)
    message: str = Field(sa_column=Column(Text, nullable=False))
    # Who made the change and from where (an IP address); None: dinp itself.
    user: str | None = Field(default=None, sa_type=name_type(100), index=True)
    source: str | None = Field(default=None, max_length=64)


class TokenRow(SQLModel, table=True):
    """API tokens, stored as SHA-256 digests: the database never holds a usable token.
    Each belongs to a user and acts as that user (whose role and teams are read on every
    request), or as that user for one app only (`app`: a CI pipeline's token)."""

    __tablename__ = "tokens"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_type=NAME)
    digest: str = Field(sa_type=name_type(64), unique=True)
    # Only for tokens made before users existed (their user is "admin"); unused since.
    role: str = Field(default="", max_length=16)
    user: str | None = Field(default=None, sa_type=NAME, index=True)
    app: str | None = Field(default=None, sa_type=NAME)
    prefix: str = Field(default="", max_length=16)  # its first characters, to tell it apart
    session: bool = False  # made by a password login: `dinp logout` revokes it
    expires_at: float | None = Field(default=None, sa_type=TIME)
    revoked_at: float | None = Field(default=None, sa_type=TIME)
    created_by: str = Field(default="", sa_type=NAME)
    created_at: float = Field(default_factory=now, sa_type=TIME)


class UserRow(SQLModel, table=True):
    """A person (or a robot account): admin or member, in teams (MemberRow)."""

    __tablename__ = "users"

    name: str = Field(primary_key=True, sa_type=name_type(100))
    role: str = Field(default="member", max_length=16)  # access.ADMIN or access.MEMBER
    # An scrypt hash (passwords.py); None: the user signs in with tokens only.
    password: str | None = Field(default=None, max_length=255)
    disabled: bool = False
    created_by: str = Field(default="", sa_type=name_type(100))
    created_at: float = Field(default_factory=now, sa_type=TIME)


class TeamRow(SQLModel, table=True):
    """Apps belong to a team; its members may change them. Quotas: None is no limit."""

    __tablename__ = "teams"

    name: str = Field(primary_key=True, sa_type=NAME)
    memory_quota_mb: int | None = None  # instances x memory of all its apps
    instances_quota: int | None = None
    created_at: float = Field(default_factory=now, sa_type=TIME)


class MemberRow(SQLModel, table=True):
    __tablename__ = "team_members"

    team: str = Field(primary_key=True, sa_type=NAME)
    user: str = Field(primary_key=True, sa_type=name_type(100))


class NodeCredentialRow(SQLModel, table=True):
    """The generation of a node's agent credential (tokens.node_credential): making a new
    one bumps it, and the credentials of older generations stop working."""

    __tablename__ = "node_credentials"

    node: str = Field(primary_key=True, sa_type=NAME)
    generation: int = 0


class LeaseRow(SQLModel, table=True):
    """Which server leads (runs the reconcile loop and takes the agents' reports), until
    when, and how to reach it: taken and renewed with one conditional UPDATE (see
    Store.claim_lease). `epoch` grows with each new holder; the leader's writes carry it,
    so a server that lost the lease without knowing it changes nothing."""

    __tablename__ = "leases"

    name: str = Field(primary_key=True, sa_type=NAME)
    holder: str = Field(sa_type=name_type(200))
    url: str = Field(default="", max_length=255)
    epoch: int = 0
    expires_at: float = Field(sa_type=TIME)


class ClusterRow(SQLModel, table=True):
    """The cluster's identity, made once at the first start and kept: every container
    the cluster starts carries it (label io.dinp.cluster), so several clusters can share
    one Docker engine and never touch each other's containers. One row, key 1."""

    __tablename__ = "cluster"

    key: int = Field(default=1, primary_key=True)
    id: str = Field(sa_type=name_type(32))
    created_at: float = Field(default_factory=now, sa_type=TIME)
    # Bumped by every transaction that adds or deletes instance rows: a snapshot whose
    # counter matches the one it last read keeps the rows it holds (150,000 at 5,000
    # nodes) instead of reading them again.
    instances_rev: int = Field(default=0, sa_type=BigInteger)
    # The same for every other table a snapshot reads (apps, releases, nodes, domains,
    # certificates, node credentials): moved by every transaction that writes one.
    desired_rev: int = Field(default=0, sa_type=BigInteger)
