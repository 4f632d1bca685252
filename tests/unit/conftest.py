"""
Fixtures of the unit tier: a service in memory per test (see
L{tests.unit.harness}); nothing here starts a process or opens a socket.
"""

from __future__ import annotations

import pytest

from .harness import Service


@pytest.fixture
def service() -> Service:
    return Service()
