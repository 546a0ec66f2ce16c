"""The heartbeat pace: the interval a server hands its agents as the cluster grows, and
the node timeout that goes with it; an agent taking it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from dinp.config import AgentConfig
from dinp.pace import Pace
from dinp.roles.agent import Agent


def test_a_small_cluster_keeps_the_configured_pace() -> None:
    pace = Pace(interval=2.0, timeout=6.0, max_rate=500.0)
    pace.update(nodes=1000, now=0.0)  # 500 heartbeats a second: at the limit
    assert (pace.heartbeat_interval, pace.node_timeout) == (2.0, 6.0)


def test_a_big_cluster_is_told_a_longer_interval_and_waited_for_in_proportion() -> None:
    pace = Pace(interval=2.0, timeout=6.0, max_rate=500.0)
    pace.update(nodes=5000, now=0.0)
    assert (pace.heartbeat_interval, pace.node_timeout) == (10.0, 30.0)
    unlimited = Pace(interval=2.0, timeout=6.0, max_rate=0.0)
    unlimited.update(nodes=50_000, now=0.0)
    assert unlimited.heartbeat_interval == 2.0


def test_the_interval_shrinks_only_after_a_node_timeout_and_by_half_at_most() -> None:
    """Agents take a shorter interval at their next beat, up to an old interval later:
    the timeout must still cover that, so it never falls below half of what it was."""
    pace = Pace(interval=2.0, timeout=6.0, max_rate=500.0)
    pace.update(nodes=10_000, now=0.0)
    assert pace.heartbeat_interval == 20.0
    pace.update(nodes=100, now=1.0)  # most nodes gone
    pace.update(nodes=100, now=60.0)  # less than a node timeout (60 s) since
    assert pace.heartbeat_interval == 20.0
    pace.update(nodes=100, now=61.0)
    assert (pace.heartbeat_interval, pace.node_timeout) == (10.0, 30.0)
    seen = []
    for now in range(62, 200):
        pace.update(nodes=100, now=float(now))
        seen.append(pace.heartbeat_interval)
    assert sorted(set(seen), reverse=True) == [10.0, 5.0, 2.5, 2.0]  # halves, then rests
    pace.update(nodes=3000, now=200.0)  # grows again at once
    assert pace.heartbeat_interval == 6.0


def _agent() -> Any:
    agent = Agent(AgentConfig(node_name="n1", server="http://127.0.0.1:1",
                              cluster_token="x" * 32, heartbeat_interval=2.0),
                  SimpleNamespace(any_cluster=False))  # type: ignore[arg-type]
    agent.state.cluster = "c1"
    return agent


@pytest.mark.parametrize(("sent", "taken"), [
    (10.0, 10.0), (7, 7.0), (0.0, 2.0), (-1, 2.0), (1e9, 2.0), ("10", 2.0), (True, 2.0),
    (None, 2.0)])
def test_an_agent_heartbeats_as_often_as_the_server_asks(sent: object, taken: float) -> None:
    agent = _agent()
    reply = {"node": "n1", "status": "ready", "rev": "r1", "cluster": "c1", "foreign": [],
             "instances": []}
    if sent is not None:
        reply["heartbeat_interval"] = sent
    agent.take_assignment(reply)
    assert agent.interval == taken
