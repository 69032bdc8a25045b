"""`python -m lmopt` runs the CLI."""

from lmopt.cli import main

main()
