"""Health, pure: the ordered health states, the state machine that turns probe results
into a state, and the restart backoff schedule. No clock here: times are passed in."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum

from diplo.model import HealthSpec


class Health(IntEnum):
    """Ordered from best to worst, so that `max()` of several is the app's health."""

    HEALTHY = 0
    STARTING = 1
    UNHEALTHY = 2
    CRASHED = 3  # exited, or restarting after an exit
    MISSING = 4  # no container
    UNKNOWN = 5

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class HealthPolicy:
    interval: float = 1.0
    timeout: float = 2.0
    retries: int = 3
    start_period: float = 3.0
    probed: bool = True  # False: no probe at all; healthy once up for start_period


def policy_of(health: HealthSpec) -> HealthPolicy:
    """The state machine's view of an app's `health:` (the deploy gate and `diplo status`
    must judge alike, so this is the one place that converts)."""
    return HealthPolicy(
        health.interval, health.timeout, health.retries, health.start_period, health.kind != "none"
    )


@dataclass(frozen=True)
class Probe:
    """One probe's outcome; `at` is seconds since the container started."""

    ok: bool
    detail: str
    latency: float = 0.0
    at: float = 0.0


@dataclass(frozen=True)
class Tracker:
    """What the state machine remembers between probes."""

    status: Health = Health.STARTING
    failures: int = 0  # consecutive failures that count (outside start_period)
    ever_healthy: bool = False
    last: Probe | None = None

    def step(
        self,
        policy: HealthPolicy,
        *,
        running: bool,
        uptime: float,
        probe: Probe | None = None,
        engine_health: str = "",
    ) -> Tracker:
        """The next state after looking at the container (and probing it, if it has a
        probe). `engine_health` is Docker's own verdict for an image HEALTHCHECK."""
        if not running:
            return replace(self, status=Health.CRASHED, last=probe or self.last)
        if engine_health:
            status = {
                "healthy": Health.HEALTHY,
                "starting": Health.STARTING,
                "unhealthy": Health.UNHEALTHY,
            }.get(engine_health, Health.UNKNOWN)
            return replace(self, status=status, ever_healthy=self.ever_healthy or status == 0)
        if not policy.probed:
            status = Health.HEALTHY if uptime >= policy.start_period else Health.STARTING
            return replace(self, status=status, ever_healthy=self.ever_healthy or status == 0)
        if probe is None:
            return self
        if probe.ok:
            return Tracker(Health.HEALTHY, 0, True, probe)
        if uptime < policy.start_period and not self.ever_healthy:
            # Failures while the app boots do not count (compose's start_period).
            return replace(self, status=Health.STARTING, last=probe)
        failures = self.failures + 1
        if failures >= policy.retries:
            return Tracker(Health.UNHEALTHY, failures, self.ever_healthy, probe)
        # Below `retries`, the state stays what it was (healthy, or still starting).
        return Tracker(self.status, failures, self.ever_healthy, probe)


# --- restart backoff -----------------------------------------------------------------------

BACKOFF_START = 1.0
BACKOFF_CAP = 300.0
BACKOFF_RESET_AFTER = 600.0


@dataclass(frozen=True)
class Backoff:
    """Restart backoff for an app that exits or turns unhealthy after a good deploy:
    1 s, doubling to a cap of 5 min; back to 1 s after 10 min healthy."""

    restarts: int = 0
    healthy_since: float | None = None

    def delay(self) -> float:
        return min(BACKOFF_CAP, BACKOFF_START * (2**self.restarts))

    def failed(self) -> Backoff:
        """The app failed again: the next restart waits `delay()`; count it."""
        return Backoff(self.restarts + 1, None)

    def healthy(self, now: float) -> Backoff:
        """The app is healthy at `now`; long enough healthy resets the schedule."""
        since = self.healthy_since if self.healthy_since is not None else now
        if now - since >= BACKOFF_RESET_AFTER:
            return Backoff(0, since)
        return Backoff(self.restarts, since)

    @property
    def crash_looping(self) -> bool:
        return self.restarts >= 3


def observed_health(
    policy: HealthPolicy,
    *,
    exists: bool,
    running: bool,
    restarting: bool,
    uptime: float,
    probe: Probe | None,
    engine_health: str = "",
) -> Health:
    """The health of an app seen once (as `diplo status` sees it), from one look at its
    container and at most one probe."""
    if not exists:
        return Health.MISSING
    if restarting or not running:
        return Health.CRASHED
    if engine_health and not policy.probed:
        return (
            Tracker().step(policy, running=True, uptime=uptime, engine_health=engine_health).status
        )
    if not policy.probed or probe is None:
        return Health.HEALTHY if uptime >= policy.start_period else Health.STARTING
    if probe.ok:
        return Health.HEALTHY
    return Health.STARTING if uptime < policy.start_period else Health.UNHEALTHY
