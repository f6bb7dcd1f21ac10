"""The package's version, in a module of its own: the API client's User-Agent names it
without importing the package's Python API (and, through it, the load path)."""

__version__ = "0.1.0"  # kept equal to the version in pyproject.toml
