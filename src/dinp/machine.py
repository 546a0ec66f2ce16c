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
