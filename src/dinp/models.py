"""Database tables of the desired state (SQLModel; MySQL/MariaDB or SQLite).

Rows hold what *should* be; what runs is known from agent heartbeats and container labels.
Times are Unix seconds (floats) so MySQL and SQLite agree without time zone surprises.
"""

from __future__ import annotations

import json
import time

from sqlalchemy import Column, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def now() -> float:
    return time.time()


class AppRow(SQLModel, table=True):
    __tablename__ = "apps"

    name: str = Field(primary_key=True, max_length=63)
    image: str = Field(max_length=255)
    instances: int
    memory_mb: int
    port: int
    health_path: str | None = Field(default=None, max_length=200)
    env_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    domains_json: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    release: int = 1
    created_at: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now)

    @property
    def env(self) -> dict[str, str]:
        value: dict[str, str] = json.loads(self.env_json)
        return value

    @property
    def domains(self) -> list[str]:
        value: list[str] = json.loads(self.domains_json)
        return value


class ReleaseRow(SQLModel, table=True):
    """An immutable snapshot of what an app runs: image plus env, numbered per app."""

    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("app", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    app: str = Field(max_length=63, index=True)
    version: int
    image: str = Field(max_length=255)
    env_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    created_at: float = Field(default_factory=now)


class InstanceRow(SQLModel, table=True):
    """One placed instance: the scheduler decided that `node` runs `app` at `release`."""

    __tablename__ = "instances"

    id: str = Field(primary_key=True, max_length=16)
    app: str = Field(max_length=63, index=True)
    release: int
    node: str = Field(max_length=63, index=True)
    memory_mb: int
    created_at: float = Field(default_factory=now)


class NodeRow(SQLModel, table=True):
    __tablename__ = "nodes"

    name: str = Field(primary_key=True, max_length=63)
    address: str = Field(max_length=255)
    capacity_mb: int
    status: str = Field(default="ready", max_length=16)
    # Instances the node already ran when this database first heard of it: not ours to
    # remove (an empty or wrong database must never make agents stop what runs).
    foreign_json: str = Field(default="[]", sa_column=Column(Text, nullable=False,
                                                             default="[]"))
    first_seen: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now)

    @property
    def foreign(self) -> list[str]:
        value: list[str] = json.loads(self.foreign_json or "[]")
        return value


class EventRow(SQLModel, table=True):
    __tablename__ = "events"

    id: int | None = Field(default=None, primary_key=True)
    at: float = Field(default_factory=now, index=True)
    app: str | None = Field(default=None, max_length=63, index=True)
    node: str | None = Field(default=None, max_length=63)
    message: str = Field(sa_column=Column(Text, nullable=False))


class TokenRow(SQLModel, table=True):
    """API tokens, stored as SHA-256 digests: the database never holds a usable token."""

    __tablename__ = "tokens"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=63)
    digest: str = Field(max_length=64, unique=True)
    role: str = Field(default="admin", max_length=16)
    created_at: float = Field(default_factory=now)
