"""How often agents heartbeat: the configured interval, stretched so that a cluster's
heartbeats stay under `max_heartbeats_per_second`, and the node timeout with it.

A server answers every heartbeat on one core. Past a few thousand nodes at a 2-5 s
interval, the heartbeats alone are more than that core: replies queue, every node is
heard late, and live nodes look silent. The server therefore hands agents a longer
interval as the cluster grows (Nomad does the same with its heartbeat TTL), and waits
for silence that much longer. A smaller cluster gets the configured values unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Pace:
    """The interval handed to agents and the node timeout that goes with it."""

    interval: float  # heartbeat_interval, as configured
    timeout: float  # node_timeout, as configured
    max_rate: float  # max_heartbeats_per_second; 0: no limit
    _current: float = field(init=False)
    _lower_since: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._current = self.interval

    def update(self, nodes: int, now: float) -> None:
        """Follow the cluster's size. The interval grows at once (the timeout grows with
        it, so no node is late for it). It shrinks only once the size has called for
        less during a whole node timeout, and at most by half each time: agents take the
        shorter interval at their next beat, up to an old interval later, and the
        shorter timeout (three intervals by default) still covers that."""
        want = self.interval
        if self.max_rate > 0:
            want = max(want, nodes / self.max_rate)
        current = self._current
        if want >= current:
            self._current, self._lower_since = want, None
        elif self._lower_since is None:
            self._lower_since = now
        elif now - self._lower_since >= self.node_timeout:
            self._current, self._lower_since = max(want, current / 2), None

    @property
    def heartbeat_interval(self) -> float:
        return self._current

    @property
    def node_timeout(self) -> float:
        """The configured node timeout, in proportion to the interval handed out."""
        if self.interval <= 0:
            return self.timeout
        return self.timeout * self.heartbeat_interval / self.interval
