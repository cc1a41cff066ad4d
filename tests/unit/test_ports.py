"""Host-port assignment with a fake host (a set of taken ports)."""

from __future__ import annotations

from diplo.model import Observed, PortAllocation
from diplo.ports import AUTO_RANGE, assign_ports

from .factories import app, port, running


def host(*taken: int):
    return lambda ip, p, proto: p not in taken


def test_auto_port_is_chosen_in_range_and_repeatable():
    web = app("web", ports=(port(8080),))
    first = assign_ports([web], [], Observed(), host())
    second = assign_ports([web], [], Observed(), host())
    (rp,) = first.ports["web"]
    assert AUTO_RANGE[0] <= rp.host_port <= AUTO_RANGE[1] and rp.new
    assert second.ports == first.ports and first.problems == []


def test_recorded_port_is_reused():
    web = app("web", ports=(port(8080),))
    alloc = [PortAllocation("web", "8080/tcp", "", 21234)]
    (rp,) = assign_ports([web], alloc, Observed(), host()).ports["web"]
    assert rp.host_port == 21234 and not rp.new


def test_lost_ledger_keeps_the_port_of_the_running_container():
    web = app("web", ports=(port(8080),))
    c = running(web, ports=[("8080/tcp", "0.0.0.0", 23456)])
    (rp,) = assign_ports([web], [], Observed(containers=(c,)), host(23456)).ports["web"]
    assert rp.host_port == 23456


def test_auto_port_skips_taken_and_reserved_ports():
    web = app("web", ports=(port(8080),))
    probe = assign_ports([web], [], Observed(), host()).ports["web"][0].host_port
    other = [PortAllocation("other", "80/tcp", "", probe)]  # reserved by an app not applied now
    (rp,) = assign_ports([web], other, Observed(), host(probe + 1)).ports["web"]
    assert rp.host_port not in (probe, probe + 1)


def test_two_apps_pinning_one_port_is_a_problem():
    a = app("a", ports=(port(80, 18080),))
    b = app("b", ports=(port(8080, 18080),))
    result = assign_ports([a, b], [], Observed(), host())
    assert any("18080/tcp is also claimed by app 'a'" in p for p in result.problems)


def test_same_port_on_different_addresses_is_fine():
    a = app("a", ports=(port(80, 18080, "127.0.0.1"),))
    b = app("b", ports=(port(80, 18080, "127.0.0.2"),))
    assert assign_ports([a, b], [], Observed(), host()).problems == []


def test_wildcard_address_overlaps_every_address():
    a = app("a", ports=(port(80, 18080),))
    b = app("b", ports=(port(80, 18080, "127.0.0.1"),))
    assert assign_ports([a, b], [], Observed(), host()).problems


def test_port_taken_on_host_is_a_problem_for_apps_that_will_start():
    web = app("web", ports=(port(8080, 18080),))
    result = assign_ports([web], [], Observed(), host(18080))
    assert any("already in use on this host" in p for p in result.problems)
    # not checked when the app keeps its container
    unchanged = assign_ports([web], [], Observed(), host(18080), check=lambda name: False)
    assert unchanged.problems == []


def test_port_held_by_the_apps_own_container_is_fine():
    web = app("web", ports=(port(8080, 18080),))
    c = running(web, ports=[("8080/tcp", "0.0.0.0", 18080)])
    assert assign_ports([web], [], Observed(containers=(c,)), host(18080)).problems == []


def test_port_held_by_another_apps_container_is_a_problem():
    web = app("web", ports=(port(8080, 18080),))
    other = running(app("api"), ports=[("80/tcp", "0.0.0.0", 18080)])
    result = assign_ports([web], [], Observed(containers=(other,)), host(18080))
    assert any("held by the container of app 'api'" in p for p in result.problems)
