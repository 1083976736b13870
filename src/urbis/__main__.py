"""`python -m urbis`: the command line."""

from urbis.cli.main import app

app()
