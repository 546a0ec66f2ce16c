"""The rollout judge: when a release is deployed, when it has failed, and why."""

from __future__ import annotations

from typing import Any

from dinp import rollouts
from dinp.rollouts import DEPLOYED, DEPLOYING, FAILED, Progress
from dinp.scheduler import ContainerReport, NodeReport, Placed, Real


def judge(progress: Progress, **overrides: Any) -> rollouts.Verdict | None:
    args: dict[str, Any] = dict(release=2, status=DEPLOYING, made_at=100.0, now=150.0,
                                deploy_timeout=120.0, first=False, progress=progress,
                                failures={}, unplaceable=None)
    args.update(overrides)
    return rollouts.judge(**args)


def test_deployed_when_exactly_the_count_runs_healthy_and_no_old_one_is_left() -> None:
    assert judge(Progress(3, 3, 3, 0)) == rollouts.Verdict(DEPLOYED)
    assert judge(Progress(3, 3, 3, 1)) is None  # an old one still serves
    assert judge(Progress(3, 3, 2, 0)) is None
    assert judge(Progress(0, 0, 0, 0)) == rollouts.Verdict(DEPLOYED)  # scaled to zero


def test_failed_only_past_the_deadline_and_never_the_first_release() -> None:
    late = {"now": 100.0 + 121}
    assert judge(Progress(3, 3, 1, 3)) is None  # on its way
    verdict = judge(Progress(3, 3, 1, 3), **late)
    assert verdict is not None and verdict.status == FAILED
    assert verdict.reason.startswith("release 2: 1 of 3 new instance(s) healthy after 120 s")
    assert judge(Progress(3, 3, 1, 3), first=True, **late) is None
    assert judge(Progress(3, 3, 1, 3), status=DEPLOYED, **late) is None


def test_the_reason_says_what_was_seen() -> None:
    late = {"now": 1000.0}
    pulled = judge(Progress(2, 2, 0, 2), failures={"a": "cannot pull reg/x:9",
                                                   "b": "cannot pull reg/x:9"}, **late)
    assert pulled is not None and pulled.reason.endswith("; cannot pull reg/x:9")
    room = judge(Progress(2, 0, 0, 2), unplaceable="2 instance(s) need 512m each; the "
                 "largest free is 300m on n3", **late)
    assert room is not None and "largest free is 300m on n3" in room.reason
    silent = judge(Progress(2, 2, 0, 2), **late)
    assert silent is not None and silent.reason.endswith("did not pass their health check")


def test_progress_counts_new_healthy_and_old() -> None:
    rows = [Placed("n1", "web", 2, "a", 64), Placed("n2", "web", 2, "a", 64),
            Placed("o1", "web", 1, "a", 64)]
    reports = {"a": NodeReport("a", 0.0, 1024, (
        ContainerReport("n1", "web", 2, True, True, "x:1"),
        ContainerReport("n2", "web", 2, True, False, "x:2"),
        ContainerReport("o1", "web", 1, True, True, "x:3")))}
    assert rollouts.progress(2, 2, rows, Real(reports, complete=True)) == Progress(2, 2, 1, 1)


def test_surge_defaults_to_a_quarter() -> None:
    assert [rollouts.surge(n, 0) for n in (1, 3, 4, 10, 100)] == [1, 1, 1, 3, 25]
    assert rollouts.surge(10, 5) == 5
