"""Releases: what an app runs, numbered and immutable, and the changes that make them.

Every change to what runs (a new image, env vars set or unset, port, memory, health
check, a restart, a rollback) makes release N+1 from release N; nothing edits a release.
Instances run the release they were placed with, so during a rolling deploy the old ones
keep their image and env while the new ones start. This module is pure: the store keeps
releases, the planner rolls instances from one to the next.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from dinp import validation
from dinp.errors import Conflict, InvalidInput


@dataclass(frozen=True, slots=True)
class ReleaseSpec:
    """Everything an instance of a release is started with."""

    image: str
    env: Mapping[str, str] = field(default_factory=dict)
    port: int = 8080
    memory_mb: int = 256
    health_path: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "env": dict(self.env), "port": self.port,
                "memory_mb": self.memory_mb, "health_path": self.health_path}


@dataclass(frozen=True)
class Change:
    """What a deploy asks for; None (or empty) leaves that part as it is."""

    image: str | None = None
    set_env: Mapping[str, str] = field(default_factory=dict)
    unset_env: frozenset[str] = frozenset()
    port: int | None = None
    memory_mb: int | None = None
    health_path: str | None = None
    clear_health_path: bool = False
    restart: bool = False  # a new release even if nothing else changes

    def is_empty(self) -> bool:
        return self == Change()


def apply(spec: ReleaseSpec, change: Change) -> ReleaseSpec:
    """The release `change` makes from `spec`; its env checked as a whole (size)."""
    env = {k: v for k, v in spec.env.items() if k not in change.unset_env}
    env.update(change.set_env)
    new = replace(
        spec,
        image=change.image or spec.image,
        env=validation.env(env),
        port=change.port or spec.port,
        memory_mb=change.memory_mb or spec.memory_mb,
        health_path=None if change.clear_health_path else (change.health_path
                                                            or spec.health_path),
    )
    if new == spec and not change.restart:
        raise Conflict("nothing would change: the app runs exactly this already",
                       hint="Give another image, env, port, memory or health path, or use "
                       "`dinp app restart`.")
    return new


def describe(old: ReleaseSpec | None, new: ReleaseSpec, *, restart: bool = False) -> str:
    """What changed, in words for `dinp app releases`; env values never appear."""
    if old is None:
        return f"created from {new.image}"
    parts = []
    if new.image != old.image:
        parts.append(f"image {new.image}")
    added = sorted(set(new.env) - set(old.env))
    removed = sorted(set(old.env) - set(new.env))
    changed = sorted(k for k in set(new.env) & set(old.env) if new.env[k] != old.env[k])
    if added:
        parts.append("set " + ", ".join(added))
    if changed:
        parts.append("changed " + ", ".join(changed))
    if removed:
        parts.append("unset " + ", ".join(removed))
    if new.port != old.port:
        parts.append(f"port {new.port}")
    if new.memory_mb != old.memory_mb:
        parts.append(f"memory {new.memory_mb}m")
    if new.health_path != old.health_path:
        parts.append(f"health {new.health_path or 'tcp'}")
    if not parts:
        return "restart" if restart else "no change"
    return "; ".join(parts)


def parse_change(data: Mapping[str, Any]) -> Change:
    """A deploy request's body: every field checked as on create."""
    known = {"image", "env", "unset", "port", "memory", "health_path", "restart"}
    unknown = set(data) - known
    if unknown:
        raise InvalidInput(sorted(unknown)[0], "unknown field")
    unset = data.get("unset", [])
    if not isinstance(unset, list) or not all(isinstance(k, str) for k in unset):
        raise InvalidInput("unset", "expected a list of variable names")
    for key in unset:
        if not validation.ENV_KEY.fullmatch(key):
            raise InvalidInput("unset", f"{key!r} is not a valid variable name")
    health = validation.health_path(data["health_path"]) if "health_path" in data else None
    restart = data.get("restart", False)
    if not isinstance(restart, bool):
        raise InvalidInput("restart", "expected true or false")
    return Change(
        image=validation.image(data["image"]) if "image" in data else None,
        set_env=validation.env(data.get("env")),
        unset_env=frozenset(unset),
        port=validation.port(data["port"]) if "port" in data else None,
        memory_mb=validation.memory_field(data["memory"]) if "memory" in data else None,
        health_path=health,
        clear_health_path="health_path" in data and health is None,
        restart=restart,
    )


def spec_from_json(image: str, env_json: str, port: int, memory_mb: int,
                   health_path: str | None) -> ReleaseSpec:
    return ReleaseSpec(image=image, env=json.loads(env_json or "{}"), port=port,
                       memory_mb=memory_mb, health_path=health_path)
