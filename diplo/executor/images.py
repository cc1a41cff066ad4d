"""Images: building an app's image, and keeping the images of recent deployments so that
a rollback needs no rebuild or pull."""

from __future__ import annotations

import structlog
from structlog.typing import FilteringBoundLogger

from diplo.errors import BuildStopped, DiploError
from diplo.executor.job import Job
from diplo.ledger import Ledger
from diplo.model import LABEL_APP, LABEL_PROJECT, AppPlan, BuildImage
from diplo.runtime.base import Runtime

log = structlog.get_logger("diplo.executor")


def build(runtime: Runtime, ledger: Ledger, p: AppPlan, action: BuildImage, job: Job) -> str:
    """Build the app's image; the build stops early when the job is cancelled or late."""
    labels = {LABEL_PROJECT: p.project, LABEL_APP: p.app}
    if p.spec is not None:
        labels = {**dict(p.spec.labels), **labels}
    labels["diplo.build-hash"] = action.build.build_hash
    try:
        image_id = runtime.build(action.tag, action.build, labels, None, job.should_stop)
    except BuildStopped:
        job.check("build")  # raises the reason: cancelled or past the deadline
        raise
    ledger.record_build(action.tag, action.build.build_hash, image_id)
    return image_id


def kept_image_ref(app: str, dep_id: int, owner: str) -> str:
    """The tag that keeps deployment `dep_id`'s image. `owner`, the ledger's identity,
    keeps it apart from another Diplo home's deployment of the same number of an app of
    the same name on this engine: a shared tag would be moved to the other's image (and a
    rollback would run it) or untagged by the other's prune."""
    return f"diplo-kept/{app}:d{dep_id}-{owner}"


def keep_image(
    runtime: Runtime,
    ledger: Ledger,
    app: str,
    dep_id: int,
    image_id: str,
    keep: int,
    bound: FilteringBoundLogger,
) -> None:
    """Tag the image this deployment runs so that a rollback needs no rebuild or pull,
    and drop the tags of older images beyond `keep` (Docker deletes an image once no tag
    and no container holds it). A deployment of an image kept already (a heal, an env
    change) shares its tag: it costs the engine nothing, and heals of a crashing app do
    not push the releases before it out of `keep`. A failure never fails the deploy."""
    try:
        tag = ledger.kept_tag(app, image_id)
        if tag is None:
            tag = kept_image_ref(app, dep_id, ledger.identity)
            runtime.tag_image(image_id, tag)
        ledger.keep_image(dep_id, tag)
    except DiploError as exc:
        bound.warning("image.keep_failed", error=exc.message)
    prune_kept_images(runtime, ledger, app, keep)


def prune_kept_images(runtime: Runtime, ledger: Ledger, app: str, keep: int) -> None:
    """drop_kept_images for a deploy: a failure is logged, never raised."""
    try:
        drop_kept_images(runtime, ledger, app, keep)
    except DiploError as exc:
        log.warning("image.prune_failed", app=app, error=exc.message)


def drop_kept_images(runtime: Runtime, ledger: Ledger, app: str, keep: int) -> list[str]:
    """Untag all but the `keep` newest of `app`'s kept images (an app that is removed
    keeps none), and forget them in the deployments that shared them; returns the tags
    dropped."""
    # newest deployment first: a tag's place is that of its newest deployment
    dropped = list(dict.fromkeys(tag for _, tag in ledger.kept_images(app)))[keep:]
    for tag in dropped:
        runtime.untag_image(tag)
        ledger.drop_kept_tag(app, tag)
    return dropped
