"""The inspects the health loop keeps: an answer is given again only while the engine's
event stream is connected and says nothing of the container, and the listing shows it as
it was."""

from __future__ import annotations

from diplo.model import ContainerState
from diplo.runtime.statecache import TOUCHED_KEPT, StateCache

from .factories import Clock

UP = ContainerState("running", 0, "", started_at=100.0, ip="10.0.0.2")
LISTED = "running"


def kept(cache: StateCache, cid: str = "c1", listed: str = LISTED) -> ContainerState | None:
    return cache.get(cid, listed)


def inspected(cache: StateCache, cid: str = "c1", state: ContainerState = UP) -> None:
    cache.put(cid, LISTED, state, cache.mark())


def test_nothing_is_kept_without_an_event_stream():
    cache = StateCache()
    inspected(cache)
    assert kept(cache) is None


def test_an_answer_is_kept_while_the_stream_is_quiet():
    cache = StateCache()
    cache.watching()
    inspected(cache)
    assert kept(cache) == UP
    assert kept(cache, "c2") is None  # another container: never inspected


def test_an_event_of_the_container_drops_its_answer_only():
    cache = StateCache()
    cache.watching()
    inspected(cache, "c1")
    inspected(cache, "c2")
    cache.event("c1")
    assert kept(cache, "c1") is None
    assert kept(cache, "c2") == UP


def test_an_event_during_the_inspect_keeps_nothing():
    cache = StateCache()
    cache.watching()
    mark = cache.mark()
    cache.event("c1")  # it restarted while the engine answered
    cache.put("c1", LISTED, UP, mark)
    assert kept(cache) is None
    inspected(cache)  # the next inspect, begun after the event, is kept
    assert kept(cache) == UP


def test_a_stream_that_ends_or_reconnects_drops_everything():
    cache = StateCache()
    cache.watching()
    inspected(cache)
    cache.unwatched()
    assert kept(cache) is None
    cache.watching()
    assert kept(cache) is None  # what happened while no stream was connected is unknown
    mark = cache.mark()
    cache.unwatched()
    cache.watching()
    cache.put("c1", LISTED, UP, mark)  # begun under the stream before: not kept
    assert kept(cache) is None


def test_a_listing_that_shows_it_otherwise_drops_it():
    cache = StateCache()
    cache.watching()
    inspected(cache)
    assert kept(cache, listed="running (unhealthy)") is None
    assert kept(cache) is None  # dropped, not only skipped


def test_answers_age_out():
    clock = Clock()
    cache = StateCache(max_age=30.0, clock=clock)
    cache.watching()
    inspected(cache)
    clock.now = 29.0
    assert kept(cache) == UP
    clock.now = 31.0
    assert kept(cache) is None


def test_the_events_remembered_are_bounded():
    cache = StateCache()
    cache.watching()
    mark = cache.mark()
    for i in range(TOUCHED_KEPT + 1):
        cache.event(f"x{i}")
    assert len(cache._touched) <= TOUCHED_KEPT
    cache.put("x0", LISTED, UP, mark)  # its event was forgotten: so nothing in flight is kept
    assert kept(cache, "x0") is None
    inspected(cache, "x0")
    assert kept(cache, "x0") == UP
