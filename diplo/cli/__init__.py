"""The `diplo` command line (entry point `diplo.cli:main`)."""

from diplo.cli.main import main

__all__ = ["main"]
