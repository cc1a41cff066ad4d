"""The health state machine and the restart backoff schedule (pure)."""

from __future__ import annotations

import pytest

from diplo.health import (
    BACKOFF_CAP,
    Backoff,
    Health,
    HealthPolicy,
    Probe,
    Tracker,
    observed_health,
    policy_of,
)
from diplo.model import HealthSpec

POLICY = HealthPolicy(interval=1, timeout=1, retries=3, start_period=5)
OK, BAD = Probe(True, "HTTP 200"), Probe(False, "connection refused")


def run(probes, uptimes, policy=POLICY):
    t = Tracker()
    for probe, uptime in zip(probes, uptimes, strict=True):
        t = t.step(policy, running=True, uptime=uptime, probe=probe)
    return t


def test_policy_of_carries_the_timings_and_whether_there_is_a_probe():
    http = HealthSpec(
        kind="http", port=80, interval=2, timeout=0.5, retries=5, start_period=7, start_interval=1
    )
    assert policy_of(http) == HealthPolicy(
        interval=2, timeout=0.5, retries=5, start_period=7, probed=True
    )
    for kind in ("tcp", "cmd"):
        assert policy_of(HealthSpec(kind=kind)).probed
    # No health check: no probe, healthy once up for start_period (the defaults agree).
    assert policy_of(HealthSpec()) == HealthPolicy(probed=False)


def test_health_is_ordered_best_first():
    assert Health.HEALTHY < Health.STARTING < Health.UNHEALTHY < Health.CRASHED
    assert Health.CRASHED < Health.MISSING < Health.UNKNOWN
    assert max(Health.HEALTHY, Health.UNHEALTHY) == Health.UNHEALTHY


def test_first_success_is_healthy_even_during_start_period():
    assert run([OK], [0.5]).status == Health.HEALTHY


def test_failures_during_start_period_do_not_count():
    t = run([BAD] * 10, [0.1 * i for i in range(10)])
    assert t.status == Health.STARTING and t.failures == 0
    assert t.last == BAD


def test_retries_failures_after_start_period_make_it_unhealthy():
    t = run([BAD, BAD], [6, 7])
    assert t.status == Health.STARTING and t.failures == 2
    t = t.step(POLICY, running=True, uptime=8, probe=BAD)
    assert t.status == Health.UNHEALTHY and t.failures == 3


def test_healthy_app_stays_healthy_below_retries_and_a_success_resets():
    t = run([OK, BAD, BAD], [1, 2, 3])
    assert t.status == Health.HEALTHY and t.failures == 2
    t = t.step(POLICY, running=True, uptime=4, probe=OK)
    assert t.failures == 0
    t = run([OK, BAD, BAD, BAD], [1, 2, 3, 4])
    assert t.status == Health.UNHEALTHY  # once healthy, start_period no longer shields


def test_exited_container_is_crashed():
    t = Tracker().step(POLICY, running=False, uptime=1)
    assert t.status == Health.CRASHED


def test_no_probe_means_healthy_after_start_period_of_uptime():
    policy = HealthPolicy(start_period=3, probed=False)
    assert Tracker().step(policy, running=True, uptime=1).status == Health.STARTING
    assert Tracker().step(policy, running=True, uptime=3).status == Health.HEALTHY


@pytest.mark.parametrize(
    ("engine", "expected"),
    [("healthy", Health.HEALTHY), ("starting", Health.STARTING), ("unhealthy", Health.UNHEALTHY)],
)
def test_image_healthcheck_verdict_is_used(engine, expected):
    policy = HealthPolicy(probed=False)
    assert Tracker().step(policy, running=True, uptime=0, engine_health=engine).status == expected


def test_no_probe_result_keeps_the_state():
    t = run([OK], [1])
    assert t.step(POLICY, running=True, uptime=2, probe=None) == t


def test_observed_health_snapshot():
    probed = POLICY
    assert (
        observed_health(probed, exists=False, running=False, restarting=False, uptime=0, probe=None)
        == Health.MISSING
    )
    assert (
        observed_health(probed, exists=True, running=True, restarting=True, uptime=9, probe=OK)
        == Health.CRASHED
    )
    assert (
        observed_health(probed, exists=True, running=True, restarting=False, uptime=9, probe=OK)
        == Health.HEALTHY
    )
    assert (
        observed_health(probed, exists=True, running=True, restarting=False, uptime=9, probe=BAD)
        == Health.UNHEALTHY
    )
    assert (
        observed_health(probed, exists=True, running=True, restarting=False, uptime=1, probe=BAD)
        == Health.STARTING
    )
    plain = HealthPolicy(start_period=3, probed=False)
    assert (
        observed_health(plain, exists=True, running=True, restarting=False, uptime=10, probe=None)
        == Health.HEALTHY
    )
    assert (
        observed_health(
            plain,
            exists=True,
            running=True,
            restarting=False,
            uptime=10,
            probe=None,
            engine_health="unhealthy",
        )
        == Health.UNHEALTHY
    )


def test_backoff_doubles_from_one_second_to_the_cap():
    b = Backoff()
    delays = []
    for _ in range(12):
        delays.append(b.delay())
        b = b.failed()
    assert delays[:9] == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert delays[9:] == [BACKOFF_CAP] * 3 == [300.0] * 3


def test_backoff_resets_after_ten_minutes_healthy():
    b = Backoff().failed().failed().failed()
    assert b.crash_looping and b.delay() == 8
    b = b.healthy(now=1000.0)
    b = b.healthy(now=1000.0 + 599)
    assert b.delay() == 8  # not yet
    b = b.healthy(now=1000.0 + 600)
    assert b.delay() == 1 and not b.crash_looping


def test_a_failure_interrupts_the_healthy_streak():
    b = Backoff().failed().healthy(now=0.0)
    b = b.failed().healthy(now=500.0)
    assert b.healthy(now=700.0).delay() == 4  # healthy since 500, only 200 s
