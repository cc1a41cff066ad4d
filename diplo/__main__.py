"""`python -m diplo`."""

from diplo.cli import main

main()
