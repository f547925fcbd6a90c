"""Serving-side helpers for tests that import the server (unit tests, in the image)."""

from __future__ import annotations

from container import ServeConfig
from serve.fetch import FetchPolicy


def fetch_policy(**changes) -> FetchPolicy:
    """The URL settings as served by default (ServeConfig's), with `changes`."""
    return FetchPolicy(**{**vars(FetchPolicy.from_config(ServeConfig())), **changes})
