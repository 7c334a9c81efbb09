"""CLI fixtures: the random-init tiny package of the API tests."""

from tests.api.conftest import tiny_package  # noqa: F401
