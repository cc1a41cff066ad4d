"""The executor: runs a Plan against a Runtime and records it in the Ledger."""

from diplo.executor.run import (
    ApplyResult,
    AppOutcome,
    Executor,
    NullReporter,
    Reporter,
    container_spec,
    drop_kept_images,
    kept_image_ref,
)

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
