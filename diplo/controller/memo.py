"""What a resync's look at an app can skip: the lock, a listing of the app's containers and
two passes of the planner, when everything the planner reads of that app is what it was
the last time it found nothing to do.

A resync looks at every app to catch what the engine's events missed. At 500 apps the
full look (lock, ledger pins, a listing of the app, two plans) cost the controller most
of a core. The planner is a pure function of the desired app (pins applied), the app's
containers, the image IDs of the engine and the app's ledger record; the listing that the
resync took whole after it began holds the first three. When they and the record equal
those of the last look that found nothing to do, this one would find nothing either.

Why no lock is needed: the listing is not older than this resync, and every change to
the app since it was taken (a deploy of another process, a container killed) raises an
engine event, which marks the app in the listing (then `peek` gives None) and reconciles
it in the normal lane. A change the events do not show (an image retagged, a ledger
record rewritten) differs in the fingerprint. When in doubt, the full look runs."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from diplo.model import AppRecord, DesiredApp, Observed, ObservedContainer
from diplo.planner import normalize_image


@dataclass(frozen=True)
class Fingerprint:
    spec: DesiredApp
    containers: tuple[tuple[object, ...], ...]
    image: str | None  # the ID the engine gives the app's image now
    record: AppRecord | None


def _container(c: ObservedContainer) -> tuple[object, ...]:
    # all the planner reads of a container; not its status text ("Up 3 minutes")
    return (c.id, c.name, c.project, c.replica, c.spec_hash, c.state, c.image_id, c.ports)


def fingerprint(spec: DesiredApp, observed: Observed, record: AppRecord | None) -> Fingerprint:
    containers = tuple(_container(c) for c in observed.of_app(spec.name))
    # The app's image only: a host keeps hundreds of tags (five per app for rollbacks),
    # and comparing them all cost more than the look it saves.
    ref = normalize_image(spec.image)
    image = observed.images.get(ref) or (ref if ref in observed.images.values() else None)
    return Fingerprint(spec, containers, image, record)


class NothingToDo:
    """Per app, the fingerprint of its last full look that found nothing to do."""

    def __init__(self) -> None:
        self._seen: dict[str, Fingerprint] = {}
        self._lock = threading.Lock()

    def remember(self, app: str, seen: Fingerprint | None) -> None:
        """After a full look: `seen` when it found nothing to do, else None (forgotten)."""
        with self._lock:
            if seen is None:
                self._seen.pop(app, None)
            else:
                self._seen[app] = seen

    def __contains__(self, app: str) -> bool:
        return app in self._seen

    def still(self, app: str, now: Fingerprint) -> bool:
        with self._lock:
            return self._seen.get(app) == now
