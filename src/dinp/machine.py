"""Facts about the machine a node runs on."""

from __future__ import annotations

from pathlib import Path

RESERVED_FOR_SYSTEM_MB = 512


def meminfo_mb(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name == field:
            return int(rest.split()[0]) // 1024
    raise KeyError(field)


def default_capacity_mb() -> int:
    """What a node offers apps unless configured: total memory less a system reserve."""
    return max(0, meminfo_mb("MemTotal") - RESERVED_FOR_SYSTEM_MB)


def free_mb() -> int:
    return meminfo_mb("MemAvailable")


CGROUP = Path("/sys/fs/cgroup")


def _cgroup_dirs(container_id: str) -> tuple[Path, ...]:
    """Where the engine puts a container's memory cgroup: v1 or v2, with the cgroupfs or
    the systemd driver."""
    scope = f"docker-{container_id}.scope"
    return (CGROUP / "memory" / "docker" / container_id,
            CGROUP / "memory" / "system.slice" / scope,
            CGROUP / "docker" / container_id, CGROUP / "system.slice" / scope)


def container_memory_mb(container_id: str) -> int | None:
    """Memory a container uses now, as `docker stats` counts it (its cgroup's usage less
    the inactive page cache), read from the cgroup files; None where they are not found
    (another engine layout, the agent in a container without them)."""
    for d in _cgroup_dirs(container_id):
        for usage_file, cache_key in (("memory.usage_in_bytes", "total_inactive_file"),
                                      ("memory.current", "inactive_file")):
            try:
                usage = int((d / usage_file).read_text())
                stats = (d / "memory.stat").read_text()
            except (OSError, ValueError):
                continue
            cache = next((int(v) for k, _, v in (line.partition(" ")
                                                 for line in stats.splitlines())
                          if k == cache_key and v.isdigit()), 0)
            return max(0, usage - cache) >> 20
    return None
