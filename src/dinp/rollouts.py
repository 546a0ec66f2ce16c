"""Rollouts: how far an app's current release has come, and when a deploy has failed.

A pure judge the server calls each reconcile, like the planner: it reads the app, its
release's status, its instances and what the agents report, and says what to record.

Rules it keeps:
- A release being deployed is *deployed* once the app runs exactly its count of
  instances of it, all healthy, and none of an older release is left.
- It has *failed* when that has not happened by `deploy_timeout` after the release was
  made; the reason says what was seen, in words: the agents' own reasons (image cannot be
  pulled, never became healthy, the exit of a crash), or that no node had room. A failed
  release is halted: the app goes back to the release before it, whose instances still
  serve at full count (the planner removes old instances only once new ones are
  healthy), and the failed one's instances are removed.
- The first release of an app has nothing to go back to: it is never halted, its state
  says what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dinp.scheduler import Placed, Real

DEPLOYING = "deploying"
DEPLOYED = "deployed"
FAILED = "failed"
CANCELLED = "cancelled"


@dataclass(frozen=True)
class Progress:
    """Where a rollout stands: new instances placed and healthy, old ones left."""

    wanted: int
    placed: int
    healthy: int
    old: int

    @property
    def done(self) -> bool:
        return self.healthy == self.wanted == self.placed and self.old == 0


def progress(release: int, wanted: int, instances: Sequence[Placed], real: Real) -> Progress:
    new = [i for i in instances if i.release == release]
    return Progress(wanted=wanted, placed=len(new),
                    healthy=sum(1 for i in new if real.healthy(i)),
                    old=sum(1 for i in instances if i.release != release))


@dataclass(frozen=True)
class Verdict:
    status: str  # DEPLOYED or FAILED
    reason: str = ""


def judge(*, release: int, status: str, made_at: float, now: float, deploy_timeout: float,
          first: bool, progress: Progress, failures: Mapping[str, str],
          unplaceable: str | None) -> Verdict | None:
    """What to record of a release `status` DEPLOYING; None while it is on its way.
    `failures`: the agents' reasons by instance of this release; `unplaceable`: why the
    planner could not place all of them, if it could not."""
    if status != DEPLOYING:
        return None
    if progress.done:
        return Verdict(DEPLOYED)
    if first or now - made_at < deploy_timeout:
        return None
    return Verdict(FAILED, failure_reason(release, progress, failures, unplaceable,
                                          deploy_timeout))


def failure_reason(release: int, progress: Progress, failures: Mapping[str, str],
                   unplaceable: str | None, deploy_timeout: float) -> str:
    """Why release `release` did not come up, in words."""
    head = (f"release {release}: {progress.healthy} of {progress.wanted} new instance(s) "
            f"healthy after {deploy_timeout:g} s")
    if unplaceable:
        return f"{head}; {unplaceable}"
    if failures:
        reasons = sorted(set(failures.values()))
        more = f" (and {len(reasons) - 1} other reason(s))" if len(reasons) > 1 else ""
        return f"{head}; {reasons[0]}{more}"
    return f"{head}; they did not pass their health check"


def surge(instances: int, setting: int) -> int:
    """New instances started at once in a rollout: the app's setting, else a quarter of
    its count (at least one)."""
    return setting if setting > 0 else max(1, -(-instances // 4))
