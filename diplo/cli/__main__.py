"""`python -m diplo.cli`."""

from diplo.cli.main import main

main()
