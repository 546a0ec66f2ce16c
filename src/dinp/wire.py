"""The agent <-> server messages, parsed strictly so a malformed heartbeat harms nothing.

A heartbeat carries the node's whole real state; the reply carries the node's whole
assignment, so a lost message is repaired by the next one.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dinp import validation
from dinp.errors import InvalidInput

# Limits of what an agent may send (also stated in the API document).
MAX_NUMBER = 1 << 40  # capacities, memory, releases
MAX_ITEMS = 10_000  # containers or failures in one heartbeat
MAX_INSTANCE_ID = 16
MAX_MESSAGE = 2000  # why an instance cannot start
MAX_DETAIL = 300  # the last answer of a failing health check
MAX_STOP_GRACE = 3600.0  # seconds between SIGTERM and SIGKILL
MAX_ID = 200  # agent and cluster ids
MAX_LONG_POLL = 60.0  # seconds an assignments long-poll may wait
FULL_REPORT_SECONDS = 30.0  # an agent sends its whole report at least this often

CONTAINER_STATES = frozenset(
    {"created", "running", "restarting", "paused", "exited", "dead", "removing"}
)
HEALTH_STATES = frozenset({"starting", "healthy", "unhealthy"})


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    instance: str
    app: str
    release: int
    state: str
    health: str
    port: int | None
    # Why it is not healthy: the health check's last answer ("" when healthy, or from
    # agents older than the field).
    health_detail: str = ""
    started_at: float | None = None  # Unix seconds; None from older agents
    restarts: int = 0  # times the agent started the instance again on this node
    memory_mb: int | None = None  # in use now; None when not known

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"instance": self.instance, "app": self.app,
                                "release": self.release, "state": self.state,
                                "health": self.health, "port": self.port}
        if self.health_detail:
            body["health_detail"] = self.health_detail
        if self.started_at is not None:
            body["started_at"] = self.started_at
        if self.restarts:
            body["restarts"] = self.restarts
        if self.memory_mb is not None:
            body["memory_mb"] = self.memory_mb
        return body


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an instance could not start or keeps stopping, and how many times in a row it
    did; `crash`: its container ran and exited (or was killed), as opposed to not
    starting at all or never becoming healthy."""

    message: str
    count: int = 1
    crash: bool = False

    def to_json(self, instance: str) -> dict[str, Any]:
        return {"instance": instance, "message": self.message, "count": self.count,
                "crash": self.crash}


@dataclass(frozen=True)
class Heartbeat:
    node: str
    address: str
    capacity_mb: int
    free_mb: int
    containers: tuple[ContainerInfo, ...]
    # Instances the agent could not start or that keep failing, with the reason (bad
    # image, engine refused, the exit of a crash, never healthy…).
    failures: Mapping[str, Failure] = field(default_factory=dict)
    # Who reports: one id per agent process (a node name has one live agent at a time),
    # and the cluster whose containers it lists ("" until the server said which).
    # None from agents older than these fields.
    agent: str | None = None
    cluster: str | None = None
    # The port of the agent's logs listener on `address` (GET /logs); None from agents
    # older than it, or one whose listener is not up.
    logs_port: int | None = None
    # The digest of this report (state_digest), so later beats may say "the same";
    # None from agents older than short beats.
    digest: str | None = None
    # The assignment revision the agent holds: a reply to an agent holding the current
    # one leaves out its instances. None from older agents.
    rev: str | None = None

    @functools.cached_property
    def by_instance(self) -> dict[str, ContainerInfo]:
        """The containers by instance id (the first of each, as a scan finds it), made
        once per heartbeat for the server's look-ups."""
        out: dict[str, ContainerInfo] = {}
        for c in self.containers:
            out.setdefault(c.instance, c)
        return out

    def to_json(self) -> dict[str, Any]:
        body = {"node": self.node, "address": self.address, "capacity_mb": self.capacity_mb,
                "free_mb": self.free_mb, "containers": [c.to_json() for c in self.containers],
                "failures": [f.to_json(i) for i, f in self.failures.items()]}
        if self.agent is not None:
            body["agent"] = self.agent
        if self.cluster is not None:
            body["cluster"] = self.cluster
        if self.logs_port is not None:
            body["logs_port"] = self.logs_port
        if self.digest is not None:
            body["digest"] = self.digest
        if self.rev is not None:
            body["rev"] = self.rev
        return body

    def state_digest(self) -> str:
        """What the server must know of this report, as a short digest: everything but
        the memory figures, which change every beat and only inform (a report whose
        digest the server already holds is sent as a short `Beat`)."""
        containers = [dataclasses.replace(c, memory_mb=None).to_json() for c in self.containers]
        blob = json.dumps([self.address, self.capacity_mb, self.logs_port, self.cluster,
                           containers, [f.to_json(i) for i, f in self.failures.items()]],
                          sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class Beat:
    """A short heartbeat: "nothing changed since my report `same_as`", which the server
    acknowledged holding. A node that runs 30 steady instances sends this instead of its
    whole report (the server spends a tenth of the time on it); at least every
    FULL_REPORT_SECONDS it sends the whole report again (its memory figures)."""

    node: str
    same_as: str
    free_mb: int
    agent: str | None = None
    cluster: str | None = None
    rev: str | None = None  # the assignment the agent holds

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"node": self.node, "same_as": self.same_as,
                                "free_mb": self.free_mb}
        for key in ("agent", "cluster", "rev"):
            if getattr(self, key) is not None:
                body[key] = getattr(self, key)
        return body


@dataclass(frozen=True, slots=True)
class Assignment:
    """One instance a node must run, with everything the agent needs to start it."""

    id: str
    app: str
    release: int
    image: str
    memory_mb: int
    port: int
    env: dict[str, str]
    health_path: str | None
    # Seconds from SIGTERM to SIGKILL when its container stops; None: the agent's
    # stop_timeout (a server older than the field).
    stop_grace: float | None = None

    def to_json(self) -> dict[str, Any]:
        body = {"id": self.id, "app": self.app, "release": self.release, "image": self.image,
                "memory_mb": self.memory_mb, "port": self.port, "env": self.env,
                "health_path": self.health_path}
        if self.stop_grace is not None:
            body["stop_grace"] = self.stop_grace
        return body


def _int(data: dict[str, Any], key: str, *, low: int = 0, high: int = MAX_NUMBER) -> int:
    value = validation.whole_number(data.get(key))
    if value is None or not low <= value <= high:
        raise InvalidInput(key, f"expected a whole number from {low} to {high}, "
                           f"got {data.get(key)!r}")
    return value


def _str(data: dict[str, Any], key: str, *, max_len: int = 255) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise InvalidInput(key, f"expected a non-empty string, got {value!r}")
    return value


# Agent and cluster ids: printable ASCII without spaces (they are logged).
ID_TEXT = re.compile(rf"^[!-~]{{0,{MAX_ID}}}$")


def _optional_id(data: dict[str, Any], key: str) -> str | None:
    if key not in data:  # sent by agents older than the field
        return None
    value = data[key]
    if not isinstance(value, str) or not ID_TEXT.fullmatch(value):
        raise InvalidInput(key, f"expected at most {MAX_ID} printable ASCII characters")
    return value


def _agent_id(data: dict[str, Any]) -> str | None:
    value = _optional_id(data, "agent")
    if value == "":
        raise InvalidInput("agent", "expected the agent's id, got an empty string")
    return value


DIGEST = re.compile(r"^[0-9a-f]{1,64}$")


def _digest(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not DIGEST.fullmatch(value):
        raise InvalidInput(key, "expected a digest: 1 to 64 lowercase hex digits")
    return value


def parse_beat(node: str, data: dict[str, Any]) -> Beat:
    """A short heartbeat (one with `same_as`)."""
    same = _digest(data, "same_as")
    if same is None:
        raise InvalidInput("same_as", "expected the digest of a report the server holds")
    return Beat(node=validation.node_name(node), same_as=same,
                free_mb=_int(data, "free_mb", low=0), agent=_agent_id(data),
                cluster=_optional_id(data, "cluster"), rev=_digest(data, "rev"))


def parse_heartbeat(node: str, data: object) -> Heartbeat:
    if not isinstance(data, dict):
        raise InvalidInput("heartbeat", "expected a JSON object")
    containers = data.get("containers")
    if not isinstance(containers, list) or len(containers) > MAX_ITEMS:
        raise InvalidInput("containers", "expected a list")
    parsed = []
    for c in containers:
        if not isinstance(c, dict):
            raise InvalidInput("containers", "each container must be an object")
        state, health = _str(c, "state"), _str(c, "health")
        if state not in CONTAINER_STATES:
            raise InvalidInput("state", f"unknown container state {state!r}")
        if health not in HEALTH_STATES:
            raise InvalidInput("health", f"unknown health {health!r}")
        port = c.get("port")
        if port is not None:
            port = validation.port(port, "port")
        detail = c.get("health_detail", "")
        if not isinstance(detail, str) or len(detail) > MAX_DETAIL:
            raise InvalidInput("health_detail", f"expected at most {MAX_DETAIL} characters")
        started = c.get("started_at")
        if started is not None and (isinstance(started, bool) or not isinstance(
                started, int | float) or not 0 <= started <= MAX_NUMBER):
            raise InvalidInput("started_at", "expected Unix seconds")
        parsed.append(ContainerInfo(
            instance=_str(c, "instance", max_len=MAX_INSTANCE_ID),
            app=validation.app_name(c.get("app"), allow_reserved=True),
            release=_int(c, "release", low=1), state=state, health=health, port=port,
            health_detail=detail,
            started_at=None if started is None else float(started),
            restarts=_int(c, "restarts") if "restarts" in c else 0,
            memory_mb=_int(c, "memory_mb") if c.get("memory_mb") is not None else None,
        ))
    failures = data.get("failures", [])
    if not isinstance(failures, list) or len(failures) > MAX_ITEMS:
        raise InvalidInput("failures", "expected a list")
    failed: dict[str, Failure] = {}
    for f in failures:
        if not isinstance(f, dict):
            raise InvalidInput("failures", "each failure must be an object")
        crash = f.get("crash", False)
        if not isinstance(crash, bool):
            raise InvalidInput("crash", "expected true or false")
        failed[_str(f, "instance", max_len=MAX_INSTANCE_ID)] = Failure(
            _str(f, "message", max_len=MAX_MESSAGE),
            count=_int(f, "count", low=1) if "count" in f else 1, crash=crash)
    return Heartbeat(
        digest=_digest(data, "digest"), rev=_digest(data, "rev"),
        node=validation.node_name(node), address=_str(data, "address"),
        capacity_mb=_int(data, "capacity_mb", low=0), free_mb=_int(data, "free_mb", low=0),
        containers=tuple(parsed), failures=failed,
        agent=_agent_id(data), cluster=_optional_id(data, "cluster"),
        logs_port=validation.port(data["logs_port"], "logs_port")
        if data.get("logs_port") is not None else None,
    )


def _stop_grace(item: dict[str, Any]) -> float | None:
    if item.get("stop_grace") is None:
        return None
    value = item["stop_grace"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            0 <= value <= MAX_STOP_GRACE):
        raise InvalidInput("stop_grace", f"expected seconds from 0 to {MAX_STOP_GRACE:g}")
    return float(value)


def parse_assignments(data: object) -> tuple[str, list[Assignment]]:
    """The agent's side: (revision, instances) from a heartbeat reply or a long-poll."""
    if not isinstance(data, dict) or not isinstance(data.get("instances"), list):
        raise InvalidInput("assignments", "expected an object with an 'instances' list")
    out = []
    for item in data["instances"]:
        if not isinstance(item, dict):
            raise InvalidInput("assignments", "each instance must be an object")
        out.append(Assignment(
            id=_str(item, "id", max_len=16),
            app=validation.app_name(item.get("app"), allow_reserved=True),
            release=_int(item, "release", low=1), image=validation.image(item.get("image")),
            memory_mb=_int(item, "memory_mb", low=1), port=validation.port(item.get("port")),
            env=validation.env(item.get("env")),
            health_path=validation.health_path(item.get("health_path"), stored=True),
            stop_grace=_stop_grace(item),
        ))
    return str(data.get("rev", "")), out


def assignments_rev(items: list[Assignment]) -> str:
    """A short digest of a node's assignment, so a long-poll knows when it changed."""
    return assignments_rev_of([assignment_text(a) for a in items])


def assignment_text(item: Assignment) -> str:
    """One instance's part of what assignments_rev digests."""
    return json.dumps(item.to_json(), sort_keys=True)


def assignments_rev_of(texts: list[str]) -> str:
    """assignments_rev of the items whose assignment_text these are (as json.dumps
    joins a list)."""
    return hashlib.sha256(f"[{', '.join(texts)}]".encode()).hexdigest()[:16]
