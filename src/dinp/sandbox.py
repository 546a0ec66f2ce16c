"""The sandbox every app container runs in: the hardening rules as a pure function from
what the image says (`ImageFacts`), what the instance needs (its memory) and the node's
`Policy` to the options Docker creates the container with (`Sandbox`).

An app must not hurt its node or the other apps on it, even when it is compromised or
written to misbehave. So, for every container, whatever its image asks:

- **Not root.** An image's non-root USER is kept; root (no USER, `root`, uid 0, or a name
  that the image's /etc/passwd maps to uid 0 or does not map at all) is replaced by the
  policy's unprivileged uid:gid. The container's uid is the host's (no user namespace),
  so root inside would be root on any file an escape reaches. Apps bind `$PORT` without
  a capability: Docker sets `ip_unprivileged_port_start=0` in the container's network
  namespace.
- **No capabilities at all, and no way to gain one**: every capability dropped, none
  added, `no-new-privileges` (a setuid binary gives nothing), never privileged, the
  engine's default seccomp profile, private IPC, PID and network namespaces.
- **Bounded resources**: memory, and memory+swap equal to it (no swap); a pids limit, so a
  fork bomb fails with EAGAIN inside its container instead of filling the node's process
  table; CPU shares in proportion to memory (`cpu_shares_per_gb`, with a floor), so under
  contention an app gets CPU in the share of the node it was given.
- **Read-only root filesystem**, with a size-limited tmpfs at /tmp (nosuid, nodev, owned
  by the app's user). The paths an image names in its `io.dinp.writable` label, and its
  VOLUMEs (which would otherwise be anonymous volumes on the host's disk, unbounded),
  become such tmpfs too, empty at start (what the image has there is hidden). An image
  labelled `io.dinp.read-only=false` keeps a writable root (the rest still holds).
  Images that an older `dinp build` made, before the label existed, get what their type
  needs.
- **No host mounts**, and the one app network (`app_network.py`), where containers cannot
  reach each other; only the published port on the node's address is reachable.

Tmpfs pages count against the container's memory limit, so a full /tmp is the app's own
problem: it can never take the node's memory.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dinp import const
from dinp.config import AgentConfig
from dinp.errors import ConfigError, InvalidInput

# Under contention no container gets less than this (Docker's default for a container is
# 1024): a 64 MB app still gets some CPU.
MIN_CPU_SHARES = 128
MAX_CPU_SHARES = 262144  # the kernel's (cgroup v1) maximum
MIN_PIDS_LIMIT = 8  # an app needs a few processes: the init, a shell, the app
MAX_WRITABLE_PATHS = 16
# Docker's own network modes: never the name of the app network.
RESERVED_NETWORKS = frozenset({"bridge", "host", "none", "default"})

_NETWORK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_UID_GID = re.compile(r"^(\d{1,10}):(\d{1,10})$")
_PATH = re.compile(r"^(/[A-Za-z0-9._@+=-]+)+$")
# Where no tmpfs may go: the kernel's own filesystems and the files Docker manages.
_FORBIDDEN = ("/proc", "/sys", "/dev")
_DOCKER_FILES = frozenset({"/etc/hosts", "/etc/hostname", "/etc/resolv.conf"})
# What a type needs writable when its image was made by a `dinp build` older than the
# io.dinp.writable label (the templates in build/templates/app/ set the same now).
LEGACY_WRITABLE: Mapping[str, tuple[str, ...]] = {
    "war": ("/var/cache/tomcat10", "/var/log/tomcat10", "/etc/tomcat10/Catalina"),
    "php": ("/var/lib/php/sessions",),
}


@dataclass(frozen=True, kw_only=True)
class Policy:
    """What a node's operator sets ([agent] in dinp.toml); checked when made."""

    network: str = "dinp"  # the one app network on the node's engine
    user: str = "65534:65534"  # uid:gid for images that would run as root
    pids_limit: int = 512
    tmp_size_mb: int = 64  # each tmpfs (/tmp and every writable path)
    cpu_shares_per_gb: int = 1024  # 0: Docker's default (1024 for every container)

    def __post_init__(self) -> None:
        if not _NETWORK_NAME.fullmatch(self.network) or self.network in RESERVED_NETWORKS:
            raise ConfigError(f"app_network = {self.network!r} is not a network name dinp "
                              "can own", hint="Use letters, digits, '_', '.', '-' (not "
                              f"{', '.join(sorted(RESERVED_NETWORKS))}), e.g. \"dinp\".")
        m = _UID_GID.fullmatch(self.user)
        if m is None or int(m.group(1)) == 0 or int(m.group(2)) == 0:
            raise ConfigError(f"app_user = {self.user!r} is not an unprivileged uid:gid",
                              hint="Give two numbers other than 0, e.g. \"65534:65534\".")
        if self.pids_limit < MIN_PIDS_LIMIT:
            raise ConfigError(f"pids_limit = {self.pids_limit} is too small (at least "
                              f"{MIN_PIDS_LIMIT}); an app cannot run without processes")
        if not 1 <= self.tmp_size_mb <= 1 << 20:
            raise ConfigError(f"tmp_size_mb = {self.tmp_size_mb} is not from 1 to {1 << 20}")
        if not 0 <= self.cpu_shares_per_gb <= MAX_CPU_SHARES:
            raise ConfigError(f"cpu_shares_per_gb = {self.cpu_shares_per_gb} is not from 0 "
                              f"to {MAX_CPU_SHARES}")

    @classmethod
    def of(cls, config: AgentConfig) -> Policy:
        return cls(network=config.app_network, user=config.app_user,
                   pids_limit=config.pids_limit, tmp_size_mb=config.tmp_size_mb,
                   cpu_shares_per_gb=config.cpu_shares_per_gb)

    @property
    def uid(self) -> int:
        return int(self.user.partition(":")[0])

    @property
    def gid(self) -> int:
        return int(self.user.partition(":")[2])


@dataclass(frozen=True, kw_only=True)
class ImageFacts:
    """What an image says about itself, as the engine's inspect shows it, and the uid and
    gid its USER has in the image's own /etc/passwd and /etc/group (None: unknown)."""

    id: str
    user: str = ""  # Config.User as declared; "" is root
    uid: int | None = 0
    gid: int | None = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    volumes: tuple[str, ...] = ()

    @classmethod
    def from_inspect(cls, attrs: Mapping[str, Any], *, passwd: str = "",
                     group: str = "") -> ImageFacts:
        """From `docker image inspect` and, when its USER is a name (see needs_accounts),
        the text of the image's /etc/passwd and /etc/group."""
        config = attrs.get("Config") or {}
        user = str(config.get("User") or "")
        uid, gid = resolve_user(user, passwd=passwd, group=group)
        return cls(id=str(attrs.get("Id", "")), user=user, uid=uid, gid=gid,
                   labels=dict(config.get("Labels") or {}),
                   volumes=tuple(sorted(config.get("Volumes") or {})))


@dataclass(frozen=True, kw_only=True)
class Sandbox:
    """The container's confinement, decided; `docker_options()` is what the engine gets."""

    user: str
    uid: int | None
    gid: int | None
    read_only: bool
    tmpfs: Mapping[str, str]  # mount point -> tmpfs options
    pids_limit: int
    memory_mb: int
    cpu_shares: int | None  # None: Docker's default
    network: str  # the app network's id

    def docker_options(self) -> dict[str, Any]:
        """Keyword arguments for docker-py's `containers.create`/`run`."""
        options: dict[str, Any] = {
            "user": self.user, "privileged": False, "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"], "read_only": self.read_only,
            "tmpfs": dict(self.tmpfs), "pids_limit": self.pids_limit,
            "mem_limit": f"{self.memory_mb}m", "memswap_limit": f"{self.memory_mb}m",
            "network": self.network, "ipc_mode": "private", "init": True,
        }
        if self.cpu_shares is not None:
            options["cpu_shares"] = self.cpu_shares
        return options


def confine(image: ImageFacts, *, memory_mb: int, policy: Policy, network: str) -> Sandbox:
    """The sandbox of a container of `image` given `memory_mb`; InvalidInput when one of the
    image's io.dinp.* labels is wrong (the image's fault: its start fails, saying why)."""
    user, uid, gid = run_as(image, policy)
    owner = "" if uid is None else f",uid={uid}" + ("" if gid is None else f",gid={gid}")
    # exec: apps unpack native libraries into /tmp (the JVM's, Python's); nosuid makes
    # a setuid file there worthless and nodev a device node.
    options = f"rw,nosuid,nodev,exec,size={policy.tmp_size_mb}m,mode=1777{owner}"
    return Sandbox(
        user=user, uid=uid, gid=gid, read_only=read_only(image),
        tmpfs={path: options for path in ("/tmp", *writable_paths(image))},
        pids_limit=policy.pids_limit, memory_mb=memory_mb,
        cpu_shares=cpu_shares(memory_mb, policy), network=network,
    )


def run_as(image: ImageFacts, policy: Policy) -> tuple[str, int | None, int | None]:
    """(user, uid, gid) the container runs as: the image's own USER if it is known not to
    be root, else the policy's. A name the image's files do not resolve (or that cannot be
    read) counts as root: the engine might resolve it to uid 0."""
    if image.uid:
        return image.user, image.uid, image.gid
    return policy.user, policy.uid, policy.gid


def cpu_shares(memory_mb: int, policy: Policy) -> int | None:
    """`cpu_shares_per_gb` per GiB of memory, at least MIN_CPU_SHARES; None when off."""
    if not policy.cpu_shares_per_gb:
        return None
    shares = memory_mb * policy.cpu_shares_per_gb // 1024
    return max(MIN_CPU_SHARES, min(MAX_CPU_SHARES, shares))


def read_only(image: ImageFacts) -> bool:
    value = image.labels.get(const.LABEL_READ_ONLY)
    if value is None or value.strip().lower() == "true":
        return True
    if value.strip().lower() == "false":
        return False
    raise InvalidInput(const.LABEL_READ_ONLY, f"{value!r} is neither true nor false")


def writable_paths(image: ImageFacts) -> tuple[str, ...]:
    """The tmpfs an image needs besides /tmp: its io.dinp.writable label (or, for an image
    of an older `dinp build`, its type's) and its VOLUMEs; sorted, each once."""
    label = image.labels.get(const.LABEL_WRITABLE)
    if label is None:
        named: tuple[str, ...] = LEGACY_WRITABLE.get(
            image.labels.get(const.LABEL_BUILD_TYPE, ""), ())
    else:
        named = tuple(p.strip() for p in label.split(",") if p.strip())
    if len(named) > MAX_WRITABLE_PATHS:
        raise InvalidInput(const.LABEL_WRITABLE, f"names {len(named)} paths; at most "
                           f"{MAX_WRITABLE_PATHS}")
    paths = {check_path(p, const.LABEL_WRITABLE) for p in named}
    paths.update(check_path(posixpath.normpath(v), "VOLUME") for v in image.volumes)
    paths.discard("/tmp")
    return tuple(sorted(paths))


def check_path(path: str, field: str) -> str:
    """An absolute, normalized path where a tmpfs may go."""
    if (len(path) > 256 or not _PATH.fullmatch(path) or posixpath.normpath(path) != path
            or any(part in {".", ".."} for part in path.split("/"))):
        raise InvalidInput(field, f"{path!r} is not an absolute path of letters, digits "
                           "and . _ - @ + = (no '..')")
    if path in _DOCKER_FILES or any(path == f or path.startswith(f + "/")
                                    for f in _FORBIDDEN):
        raise InvalidInput(field, f"{path!r} cannot be made writable (the engine owns it)")
    return path


# -- users -----------------------------------------------------------------------------------

def needs_accounts(user: str) -> bool:
    """Whether telling `user`'s uid and gid takes the image's /etc/passwd and /etc/group
    (a name other than root, not a number)."""
    name, _, group = user.partition(":")
    return any(part not in {"", "root"} and not part.isdigit() for part in (name, group))


def resolve_user(user: str, *, passwd: str = "", group: str = "") -> tuple[int | None,
                                                                            int | None]:
    """The (uid, gid) a USER value means in an image with these /etc/passwd and /etc/group
    texts; None for a part they do not resolve. A number without a group has its passwd
    entry's gid, else 0, as the engine does (None without the passwd text)."""
    name, _, group_name = user.partition(":")
    users = _table(passwd, gid_field=True)
    uid: int | None
    gid: int | None
    if name in {"", "root"}:
        uid, gid = 0, 0
    elif name.isdigit():
        uid = int(name)
        gid = next((g for u, g in users.values() if u == uid), 0 if passwd else None)
    else:
        uid, gid = users.get(name, (None, None))
    if group_name:
        if group_name == "root":
            gid = 0
        elif group_name.isdigit():
            gid = int(group_name)
        else:
            gid = _table(group, gid_field=False).get(group_name, (None, None))[0]
    return uid, gid


def _table(text: str, *, gid_field: bool) -> dict[str, tuple[int, int]]:
    """name -> (id, primary gid) from passwd lines (`name:x:uid:gid:…`), or name -> (gid,
    gid) from group lines (`name:x:gid:…`)."""
    found: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) < 4 or not parts[0] or not parts[2].isdigit():
            continue
        first = int(parts[2])
        second = int(parts[3]) if gid_field and parts[3].isdigit() else first
        found.setdefault(parts[0], (first, second))
    return found
