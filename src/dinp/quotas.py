"""Team quotas: how much memory and how many instances a team's apps may ask for, as a
pure check the store runs inside the transaction that makes the change.

What counts is what is asked for (instances x memory of every app of the team), not the
extra instances a rollout starts for a while. A change that shrinks what an app asks for
is always allowed, even past a quota lowered since: it moves the team towards it.
"""

from __future__ import annotations

from dataclasses import dataclass

from dinp.errors import Conflict


class QuotaExceeded(Conflict):
    """A create, scale or deploy would take the team past its quota."""


@dataclass(frozen=True)
class Usage:
    instances: int = 0
    memory_mb: int = 0

    @classmethod
    def of(cls, instances: int, memory_mb: int) -> Usage:
        return cls(instances, instances * memory_mb)

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.instances + other.instances, self.memory_mb + other.memory_mb)

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.instances - other.instances, self.memory_mb - other.memory_mb)


@dataclass(frozen=True)
class Quota:
    instances: int | None = None  # None: no limit
    memory_mb: int | None = None


def check(team: str, quota: Quota, used: Usage, before: Usage, after: Usage) -> None:
    """Allow the team's usage to go from `used` (which includes `before`, the app as it
    is) to `used - before + after`, or raise QuotaExceeded with the numbers."""
    total = used - before + after
    if (quota.instances is not None and after.instances > before.instances
            and total.instances > quota.instances):
        raise QuotaExceeded(
            f"team {team}'s quota is {quota.instances} instance(s): its apps ask for "
            f"{used.instances} now, and this would make it {total.instances}",
            hint="Scale another app of the team down, or ask an admin to raise the quota "
            f"(`dinp team quota {team} --instances N`).")
    if (quota.memory_mb is not None and after.memory_mb > before.memory_mb
            and total.memory_mb > quota.memory_mb):
        raise QuotaExceeded(
            f"team {team}'s quota is {quota.memory_mb}m of memory: its apps ask for "
            f"{used.memory_mb}m now, and this would make it {total.memory_mb}m "
            f"({after.memory_mb - before.memory_mb:+}m)",
            hint="Use less memory or fewer instances, or ask an admin to raise the quota "
            f"(`dinp team quota {team} --memory SIZE`).")
