"""`python -m otc_pipeline` runs the `otc` command line."""

from .cli import app

app()
