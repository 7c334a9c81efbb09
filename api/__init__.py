"""The FastAPI service: embed, classify, search, attention, health and metrics."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dinoserve")
except PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0.0.0"
