"""The package's version, from the installed distribution's metadata (one source: pyproject.toml)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tt-agents")
except PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "0.0.0+unknown"
