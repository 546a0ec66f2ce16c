"""A thin wrapper around the Docker engine for dinp's containers.

Labels are the truth about what runs: an agent sees only containers labelled
`io.dinp.managed=true`, `io.dinp.node=<its node>` and `io.dinp.cluster=<its cluster>`, so
several agents, and several clusters, can share one engine, and nothing dinp did not start
is ever touched. Containers made before clusters had ids carry no cluster label: they are
listed as `legacy`, and the agent adopts only those the server assigns to it. Until the
agent knows its cluster (the server tells it), it sees no container at all. Every call
here blocks; the agent runs them in threads.

Every container starts confined: `sandbox.confine` decides how from what its image says
(read once per image id) and the node's policy, and it joins the engine's app network
(`app_network`), where containers cannot reach each other.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import docker.errors
import docker.models.images

from dinp import app_network, const, sandbox
from dinp.docker_engine import DockerEngine, split_ref
from dinp.errors import ConfigError, DinpError, InvalidInput
from dinp.sandbox import ImageFacts, Policy
from dinp.wire import Assignment

log = logging.getLogger(__name__)
# How long one call to the engine may wait: a stuck engine must show in the node's report
# (the heartbeat runs beside these calls), not hang a converge for minutes.
ENGINE_TIMEOUT = 60
# The most of an image's /etc/passwd or /etc/group that is read to tell its USER's uid.
MAX_ACCOUNTS_BYTES = 1 << 20


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    app: str
    instance: str
    release: int
    state: str  # Docker's: created, running, exited, dead, …
    host_port: int | None
    # Made by a dinp older than cluster ids (no cluster label): ours only if assigned.
    legacy: bool = False
    stop_grace: float | None = None  # from its label; None: the agent's stop_timeout
    created: float = 0.0  # Unix seconds (a container is made anew at each start)

    @property
    def running(self) -> bool:
        return self.state == "running"

    @classmethod
    def from_summary(cls, summary: dict[str, Any], address: str | None = None) -> Container:
        """Build from an entry of the engine's container list (no inspect needed). With
        `address`, only a port published there counts (a node whose advertise address
        changed must not check or route its containers' old ports)."""
        labels = summary.get("Labels") or {}
        host_port = next(
            (p.get("PublicPort") for p in summary.get("Ports") or []
             if p.get("PublicPort") and (address is None or p.get("IP") == address)),
            None,
        )
        try:
            release = int(labels.get(const.LABEL_RELEASE, "0"))
        except ValueError:
            release = 0
        try:
            grace: float | None = float(labels[const.LABEL_STOP_GRACE])
        except (KeyError, ValueError):
            grace = None
        return cls(
            id=summary["Id"], name=(summary.get("Names") or ["?"])[0].lstrip("/"),
            app=labels.get(const.LABEL_APP, ""), instance=labels.get(const.LABEL_INSTANCE, ""),
            release=release, state=summary.get("State", "unknown"), host_port=host_port,
            legacy=const.LABEL_CLUSTER not in labels, stop_grace=grace,
            created=float(summary.get("Created") or 0),
        )


def exit_words(state: dict[str, Any], *, stopped: bool = False) -> str:
    """How a container ended, from its inspected State: `exited with code 3`, `ran out of
    memory`, or that dinp stopped it (`stopped`, as whoever stopped it knows)."""
    code = state.get("ExitCode")
    if state.get("OOMKilled"):
        return "ran out of memory"
    if stopped:
        return f"stopped by dinp (exit code {code})"
    return f"exited with code {code}"


class StartFailed(DinpError):
    """An instance's container could not be started (bad image, engine refused, …)."""


class DockerRuntime:
    """The containers of one node on one Docker engine."""

    def __init__(self, *, node: str, advertise: str, base_url: str = "",
                 cluster: str = "", policy: Policy | None = None) -> None:
        self.node = node
        self.advertise = advertise
        self.policy = policy or Policy()
        # What each image says about itself, by image id (an id names one content).
        self._images: dict[str, ImageFacts] = {}
        self._network_lock = threading.Lock()
        # Set once the server said which cluster this node belongs to; "" sees nothing.
        self.cluster = cluster
        # A server older than cluster ids: containers are matched by node name alone.
        self.any_cluster = False
        self.engine = DockerEngine(base_url, timeout=ENGINE_TIMEOUT, section="agent")
        self.base_url = self.engine.where
        self.client = self.engine.client
        # Called with a container's id (and whether dinp stopped it) just before one of
        # ours is removed, in the removing thread: the agent keeps its last lines there.
        self.before_remove: Callable[[str, bool], None] | None = None

    def _removing(self, container_id: str, *, stopped: bool) -> None:
        if self.before_remove is None:
            return
        try:
            self.before_remove(container_id, stopped)
        except Exception:  # keeping its lines must never keep a container
            log.exception("could not keep the last lines of %s", container_id[:12])

    def errors(self) -> contextlib.AbstractContextManager[None]:
        return self.engine.errors()

    def _filters(self) -> dict[str, Any]:
        return {"label": [f"{const.LABEL_MANAGED}=true", f"{const.LABEL_NODE}={self.node}"]}

    def list(self) -> list[Container]:
        if not self.cluster and not self.any_cluster:
            return []
        with self.errors():
            summaries = self.client.api.containers(all=True, filters=self._filters())
        # The engine filtered by label already; check again so a stray container can
        # never be taken for ours.
        return [Container.from_summary(s, self.advertise) for s in summaries
                if self._ours(s.get("Labels"))]

    def _ours(self, labels: dict[str, str] | None) -> bool:
        """Managed by dinp, labelled for this node and this cluster (or made before
        clusters had ids): the only containers we touch."""
        labels = labels or {}
        if labels.get(const.LABEL_MANAGED) != "true" or labels.get(const.LABEL_NODE) != self.node:
            return False
        if self.any_cluster:
            return True
        return bool(self.cluster) and labels.get(const.LABEL_CLUSTER,
                                                 self.cluster) == self.cluster

    def start(self, a: Assignment, cluster: str | None = None) -> Container:
        """Create and start the container of assignment `a`, pulling its image if needed,
        labelled with `cluster` (default: the runtime's; none for a server older than
        cluster ids)."""
        cluster = self.cluster if cluster is None else cluster
        if not cluster and not self.any_cluster:
            raise StartFailed(f"cannot start {a.id}: the node does not know its cluster yet")
        labels = {
            const.LABEL_MANAGED: "true", const.LABEL_APP: a.app, const.LABEL_INSTANCE: a.id,
            const.LABEL_RELEASE: str(a.release), const.LABEL_NODE: self.node,
        }
        if cluster:
            labels[const.LABEL_CLUSTER] = cluster
        if a.stop_grace is not None:
            labels[const.LABEL_STOP_GRACE] = f"{a.stop_grace:g}"
        env = {**a.env, "PORT": str(a.port), "DINP_APP": a.app, "DINP_INSTANCE": a.id,
               "DINP_RELEASE": str(a.release)}
        name = const.container_name(a.app, a.id)
        with self.errors():
            try:
                self._remove_by_name(name)
                facts = self._facts(self._ensure_image(a.image), name, labels)
                with self._network_lock:  # this agent's starts never race to make it
                    network = app_network.ensure(self.client, self.policy.network)
                box = sandbox.confine(facts, memory_mb=a.memory_mb, policy=self.policy,
                                      network=network)
                c = self.client.containers.run(  # type: ignore[call-overload]
                    a.image, name=name, detach=True, labels=labels, environment=env,
                    ports={f"{a.port}/tcp": (self.advertise, None)},
                    restart_policy={"Name": "no"},
                    log_config={"Type": "json-file", "Config": {"max-size": "10m",
                                                                  "max-file": "3"}},
                    **box.docker_options(),
                )
                c.reload()
            except (InvalidInput, ConfigError) as exc:  # its image's labels, the network
                raise StartFailed(f"cannot start {name} from {a.image}: {exc}") from exc
            except docker.errors.APIError as exc:
                raise StartFailed(f"cannot start {name} from {a.image}: "
                                  f"{exc.explanation or exc}") from exc
        ports = c.attrs["NetworkSettings"]["Ports"].get(f"{a.port}/tcp") or []
        host_port = int(ports[0]["HostPort"]) if ports else None
        return Container(id=c.id, name=name, app=a.app, instance=a.id, release=a.release,
                         state=c.status, host_port=host_port, stop_grace=a.stop_grace)

    def _ensure_image(self, image: str) -> docker.models.images.Image:
        try:
            return self.client.images.get(image)
        except docker.errors.ImageNotFound:
            log.info("pulling %s", image)
            repo, tag = split_ref(image)  # tag: a digest, if the image names one
            self.client.images.pull(repo, tag=tag)
            return self.client.images.get(image)

    def _facts(self, image: docker.models.images.Image, name: str,
               labels: dict[str, str]) -> ImageFacts:
        """What `image` says about itself, read once per image id. A USER given by name
        is looked up in the image's own /etc/passwd and /etc/group, read from a container
        made (never started) under the instance's name and labels, so that a crash on
        the way leaves only a dead container of the instance, which is replaced."""
        key = str(image.id)
        facts = self._images.get(key)
        if facts is not None:
            return facts
        user = str((image.attrs.get("Config") or {}).get("User") or "")
        accounts = {"passwd": "", "group": ""}
        if sandbox.needs_accounts(user):
            probe = self.client.api.create_container(
                key, name=name, labels=labels, entrypoint=["/dinp-never-started"],
                network_disabled=True)["Id"]
            try:
                for file in accounts:
                    accounts[file] = self._read_file(probe, f"/etc/{file}")
            finally:
                self.client.api.remove_container(probe, force=True)
        facts = ImageFacts.from_inspect(image.attrs, **accounts)
        self._images[key] = facts
        return facts

    def _read_file(self, container: str, path: str) -> str:
        """A small text file of a container's filesystem; "" if it has none there."""
        try:
            stream, _ = self.client.api.get_archive(container, path)
        except docker.errors.NotFound:
            return ""
        data = bytearray()
        for chunk in stream:
            data += chunk
            if len(data) > MAX_ACCOUNTS_BYTES + 4096:
                break
        try:
            with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
                member = next((m for m in tar if m.isfile()), None)
                handle = tar.extractfile(member) if member is not None else None
                return handle.read(MAX_ACCOUNTS_BYTES).decode(errors="replace") \
                    if handle is not None else ""
        except tarfile.TarError:
            return ""

    def _remove_by_name(self, name: str) -> None:
        """A leftover container with our name (crashed start, dead instance) goes first,
        but only if it is ours."""
        try:
            old = self.client.containers.get(name)
        except docker.errors.NotFound:
            return
        if self._ours(old.labels):
            self._removing(str(old.id), stopped=False)
            old.remove(force=True, v=True)

    def exit_info(self, container: Container, *, lines: int = 5) -> str:
        """How a container ended, in words: its exit code (or that it ran out of memory)
        and its last lines of output, so a crash can be explained once it is gone."""
        with self.errors():
            try:
                state = self.client.api.inspect_container(container.id)["State"]
                raw = self.client.api.logs(container.id, stdout=True, stderr=True,
                                           tail=lines)
            except docker.errors.NotFound:
                return "exited (the container is gone)"
        how = exit_words(state)
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        tail = " | ".join(line.strip() for line in text.splitlines() if line.strip())
        return f"{how}: {tail[-400:]}" if tail else how

    def stop(self, container: Container, *, timeout: float) -> None:
        """Stop (SIGTERM, then SIGKILL after `timeout`) and remove one of our containers."""
        with self.errors():
            try:
                c = self.client.containers.get(container.id)
                if not self._ours(c.labels):
                    return
                running = c.status == "running"
                if running:
                    c.stop(timeout=math.ceil(timeout))
                self._removing(str(c.id), stopped=running)
                c.remove(force=True, v=True)  # with its anonymous volumes
            except docker.errors.NotFound:
                pass

    def events(self) -> Iterator[dict[str, Any]]:
        """A blocking stream of this node's container events; ends when closed."""
        with self.errors():
            stream = self.client.events(decode=True, filters={
                "type": "container", "label": [f"{const.LABEL_NODE}={self.node}"],
            })
        self._events = stream
        yield from stream

    def close(self) -> None:
        events = getattr(self, "_events", None)
        if events is not None:
            events.close()
        self.engine.close()

