"""`python -m urbis.cli`: the command line (what tests and benchmarks start)."""

from urbis.cli.main import app

app()
