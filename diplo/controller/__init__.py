"""`diplo serve`: the long-running controller (work queue, triggers, reconcile loop)."""
