"""The app network: the one Docker network of an engine that every dinp app container
joins, a bridge made with inter-container communication disabled
(`com.docker.network.bridge.enable_icc=false`) and labelled `io.dinp.managed=true`.

On it, a container reaches the outside (the company's databases, package mirrors:
through the bridge's gateway and the host's NAT) but not another container of that
network: the engine drops traffic between two ports of the bridge (an iptables rule in
FORWARD, which bridged traffic passes through with `br_netfilter`). Other networks of the
engine are cut off too, by the engine's own isolation between bridges. What an app
serves is reached only through its published port on the node's address, which is where
routers and health checks connect.

Why one network and not one per app: each bridge takes a subnet from the engine's
default address pools, which hold about 30 of them; one network with icc disabled
isolates every container on it from every other just as well.

The agent makes it when it is missing, before it starts a container. Two agents sharing
an engine may make it at the same moment, and the engine does not stop that (it checks
for a duplicate name, but not under a lock). While two networks share the name the engine
starts no container on either ("ambiguous"), so such a start fails and is retried with
backoff. Every agent, each time, lists the networks of that name with our label, uses the
oldest, and removes the others unless a container uses them (the engine refuses then):
the duplicates are gone at the next start. No other network is ever removed, and a
network of that name that dinp did not make (no label) is refused, never used or touched.
"""

from __future__ import annotations

import contextlib
import re
import time
from datetime import datetime
from typing import Any

import docker
import docker.errors

from dinp import const
from dinp.errors import ConfigError

ICC_OPTION = "com.docker.network.bridge.enable_icc"
_CREATED = re.compile(r"^([^.Z+]+?)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")
_LAST = (1 << 62, 0)


def ensure(client: docker.DockerClient, name: str) -> str:
    """The id of the app network `name`, made if it is missing; ConfigError if a network
    of that name is not dinp's or lets containers talk to each other."""
    found = _named(client, name)
    if not found:
        # Another agent may make it meanwhile: any error is judged by what exists after.
        with contextlib.suppress(docker.errors.APIError):
            client.api.create_network(
                name, driver="bridge", options={ICC_OPTION: "false"},
                labels={const.LABEL_MANAGED: "true"}, check_duplicate=True)
        found = _settled(client, name)
        if not found:
            raise ConfigError(f"the app network {name} cannot be made on this engine")
    chosen = min(found, key=lambda n: (_created(n.get("Created", "")), n["Id"]))
    if (chosen.get("Options") or {}).get(ICC_OPTION) != "false":
        raise ConfigError(
            f"the app network {name} lets containers reach each other ({ICC_OPTION} is not "
            "false)",
            hint=f"Remove it (dinp makes it again), or make it with -o {ICC_OPTION}=false.")
    for extra in found:
        if extra is not chosen:
            with contextlib.suppress(docker.errors.APIError):  # in use: left for later
                client.api.remove_network(extra["Id"])
    return str(chosen["Id"])


def _settled(client: docker.DockerClient, name: str, *, quiet: float = 0.5,
             limit: float = 5.0) -> list[dict[str, Any]]:
    """The networks called `name` once no new one has appeared for `quiet` seconds: an
    agent racing this one may have listed none before this one's create and made its own,
    which an engine under load can take a while to finish. Choosing only then, every
    racer sees every copy and takes the same oldest one."""
    deadline = time.monotonic() + limit
    found = _named(client, name)
    stable_since = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - stable_since < quiet:
        time.sleep(0.1)
        again = _named(client, name)
        if {n["Id"] for n in again} != {n["Id"] for n in found}:
            found, stable_since = again, time.monotonic()
    return found


def _named(client: docker.DockerClient, name: str) -> list[dict[str, Any]]:
    """The networks called exactly `name` (the engine's filter matches parts of names),
    each dinp's; ConfigError if one of them is not."""
    named = [n for n in client.api.networks(names=[name]) if n.get("Name") == name]
    foreign = [n for n in named
               if (n.get("Labels") or {}).get(const.LABEL_MANAGED) != "true"]
    if foreign:
        raise ConfigError(
            f"a network named {name} exists that dinp did not make (no "
            f"{const.LABEL_MANAGED}=true label); dinp does not use or touch it",
            hint="Set app_network in [agent] to another name, or remove that network.")
    return named


def _created(value: str) -> tuple[int, int]:
    """A network's `Created` (RFC 3339 with nanoseconds, trailing zeros cut) as (seconds,
    nanoseconds), to sort by; one that cannot be read sorts last."""
    m = _CREATED.fullmatch(value)
    if m is None:
        return _LAST
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    try:
        seconds = int(datetime.fromisoformat(m.group(1) + zone).timestamp())
    except ValueError:
        return _LAST
    return seconds, int((m.group(2) or "0")[:9].ljust(9, "0"))
