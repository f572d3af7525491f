"""Fixtures shared by the builder tests."""

from __future__ import annotations

import pytest

from tests.builder.http_server import serving

_PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy")


@pytest.fixture
def server(monkeypatch):
    """A local HTTP server (:class:`tests.builder.http_server.Server`), proxies unset."""
    for var in _PROXY_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    with serving() as srv:
        yield srv
