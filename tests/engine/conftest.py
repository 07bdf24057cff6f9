"""The engine layer never mounts: pyfuse3's session calls fail the test if
anything reaches them (the layer must pass where /dev/fuse does not exist)."""

from __future__ import annotations

import pyfuse3
import pytest


@pytest.fixture(autouse=True)
def no_fuse(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an engine test reached pyfuse3 (a mount): tests/engine/ must run without /dev/fuse")
    for name in ("init", "main", "close", "terminate"):
        monkeypatch.setattr(pyfuse3, name, refuse)
