"""The executor: runs a Plan against a Runtime and records it in the Ledger.

`run.py` schedules apps and keeps the ledger; `job.py` is one app's deploy (deadline,
cancel); `strategy.py` is the seam for how a container is replaced, `recreate.py` the
one strategy today; `gate.py` waits for health with `probes.py`; `images.py` builds and
keeps images; `containers.py` says what is created."""

from diplo.executor.containers import container_spec
from diplo.executor.images import drop_kept_images, kept_image_ref
from diplo.executor.job import NullReporter, Reporter
from diplo.executor.run import ApplyResult, AppOutcome, Executor

__all__ = [
    "AppOutcome",
    "ApplyResult",
    "Executor",
    "NullReporter",
    "Reporter",
    "container_spec",
    "drop_kept_images",
    "kept_image_ref",
]
