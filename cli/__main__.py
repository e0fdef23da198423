"""`python -m meshmarket.cli` is `mesh` (used where the console script may not be on PATH: tests, the devnet)."""

from meshmarket.cli.main import main

main(prog_name="mesh")
