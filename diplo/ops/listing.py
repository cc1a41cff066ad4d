"""One engine listing shared by many reconciles: a resync of 500 apps lists the engine once,
not 500 times (each a full listing of containers, images, networks and volumes, all
contending for the engine while a drift waits to be healed). After client-go's shared
informers: the engine's events keep it current, by app.

Why a shared listing is safe for a reconcile of app X, which holds X's lock:
- X's own containers are never taken from it. Only a holder of X's lock changes them (a
  worker, `diplo apply`, a restart), so a listing taken before X's lock was taken may
  miss what the last holder did: they are listed again, filtered to X, after the lock
  (`observe`, which callers call with the locks held). The one exception is a listing
  that this very call took, after the lock.
- Everything else (other apps' containers and their host ports, foreign container names,
  images, networks, volumes) is not protected by X's lock: a listing of one's own could be
  out of date by the time it is used just the same. The planner uses it to find port and
  name clashes (host ports are also probed) and to decide whether to pull an image or
  create a network or volume; a stale answer fails a step with the engine's reason, and
  the reconcile is retried on a new listing (`invalidate` on every failure).
- An engine event of an app's container marks that app (`event`): the next reconcile
  lists its containers again, with its own. A change of this process's that touched only
  containers does the same (`changed`); any other (images, networks, volumes) drops the
  whole listing. So it is never older than what the event stream has told Diplo.
- What the stream does not report (images, networks, foreign containers) is seen within
  `max_age` and at each resync (`renew`): the next caller takes a new listing. Meanwhile
  a caller that must not wait (a heal: `observe(wait=False)`) is given the listing it
  replaces, with its apps and the marked ones listed again: no older, for what it uses,
  than a listing of its own taken a moment before the new one. At 500 apps a whole
  listing takes 150-300 ms, which a heal right after a resync waited for."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

from diplo.model import Observed, ObservedContainer
from diplo.ops.context import Context

MAX_AGE = 30.0  # s: changes that raise no event of Diplo's containers are seen this late


class SharedListing:
    def __init__(
        self,
        ctx: Context,
        max_age: float = MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ctx = ctx  # its engine, when first listed (a context creates it lazily)
        self._max_age = max_age
        self._clock = clock
        self._cond = threading.Condition()
        self._base: Observed | None = None
        self._taken_at = 0.0
        self._generation = 0  # bumped by invalidate: a listing begun before it is not kept
        self._listing = False  # one thread lists it whole at a time; the others wait
        self._renew = False  # a new listing is wanted; the old one serves who cannot wait
        self._marks: dict[str, int] = {}  # app -> events since its containers were listed

    def invalidate(self) -> None:
        """Drop the listing: it may be wrong (a change of ours beyond containers, a
        failure)."""
        with self._cond:
            self._base = None
            self._renew = False
            self._marks.clear()
            self._generation += 1

    def renew(self) -> None:
        """Take a new listing before the next use (a resync: what no event reports)."""
        with self._cond:
            self._renew = self._base is not None

    def event(self, app: str) -> None:
        """A container of `app` came, went or changed state."""
        with self._cond:
            if self._base is not None or self._listing:
                self._marks[app] = self._marks.get(app, 0) + 1

    def changed(self, apps: Iterable[str]) -> None:
        """This process changed these apps' containers, and nothing else."""
        for app in apps:
            self.event(app)

    def _fresh(self) -> Observed | None:
        if self._base is not None and self._clock() - self._taken_at > self._max_age:
            self._renew = True
        return None if self._renew else self._base

    def _settled(self) -> Observed | None:
        """The listing once no thread is taking it (with `_cond` held); None: none now."""
        while self._fresh() is None and self._listing:
            self._cond.wait()
        return self._fresh()

    def peek(self, app: str) -> Observed | None:
        """The listing as it stands, without the lock of `app` and without listing its
        containers again; None when an event or a change of ours marked `app` since it
        was taken. Fit only to find that nothing changed (see controller/memo.py): any
        change after it raises an event of its own, which reconciles the app."""
        with self._cond:
            base = self._settled()
            if base is not None:
                return None if app in self._marks else base
        return self.observe(frozenset())  # lists it whole, for the looks that follow

    def observe(self, apps: frozenset[str], wait: bool = True) -> Observed:
        """What the engine holds, with `apps`' containers as they are now. Call it with
        those apps' locks held. `wait=False`: while another thread takes a new listing,
        the one it replaces will do (see the module's doc)."""
        with self._cond:
            if not wait and self._listing and self._renew and self._base is not None:
                base: Observed | None = self._base
            else:
                base = self._settled()
            if base is None:
                self._listing = True
                generation = self._generation
            marks = dict(self._marks)
        if base is None:
            try:
                base = self._ctx.runtime.observe()
            finally:
                with self._cond:
                    self._listing = False
                    if generation == self._generation:
                        self._base, self._taken_at, self._renew = base, self._clock(), False
                        # events while it was taken may be missing from it: kept marked
                        self._marks = {
                            a: n - marks.get(a, 0)
                            for a, n in self._marks.items()
                            if n > marks.get(a, 0)
                        }
                    self._cond.notify_all()
            return base  # listed after the caller's locks: fresh for its apps too
        again = apps | set(marks)
        if not again:
            return base
        fresh = self._ctx.runtime.observe(containers_only=True, apps=again).containers
        merged = _merge(base, again, fresh)
        with self._cond:
            # kept for the others, and the marks it settles dropped; not while a new one is
            # taken (those marks are what it may miss)
            if self._base is base and not self._listing:
                self._base = merged
                for app, seen in marks.items():
                    if self._marks.get(app) == seen:
                        del self._marks[app]
        return merged


def _merge(
    base: Observed, apps: set[str] | frozenset[str], fresh: Iterable[ObservedContainer]
) -> Observed:
    others = [c for c in base.containers if c.app not in apps]
    merged = sorted([*others, *fresh], key=lambda o: (o.app, o.replica, o.created))
    return replace(base, containers=tuple(merged))
