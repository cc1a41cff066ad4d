"""The REST API of `diplo serve` (FastAPI)."""
