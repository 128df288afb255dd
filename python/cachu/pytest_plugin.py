"""The pytest plugin of cachu (registered by the package's ``pytest11`` entry point).

Fixtures:

- ``cachu_disabled``: caching off for the test (``cachu.disable()``), and the switches
  as they were afterwards.
- ``cachu_isolated``: a cache of the test's own: every package's (and the defaults')
  ``file_dir`` is the test's temporary directory and its key prefix gains a prefix of
  the test's, so memory, file and Redis entries of the test are new and its own. After
  the test its entries are cleared and every configuration is put back as it was.
  Gives an object with ``file_dir`` and ``key_prefix``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import cachu
from cachu._cachu import _config_restore, _config_snapshot, _instances
from cachu._config import EVERY_PACKAGE


@dataclass(frozen=True)
class IsolatedCache:
    """Where a test's isolated cache lives."""

    file_dir: Path
    key_prefix: str


@pytest.fixture
def cachu_disabled() -> Iterator[None]:
    """Caching is off for this test; the switches are put back afterwards."""
    before = cachu.get_disabled_scopes()
    cachu.disable()
    try:
        yield
    finally:
        cachu.enable()
        if before.globally:
            cachu.disable()
        for package in before.packages:
            cachu.disable(package=package)
        for tag in before.tags:
            cachu.disable(tag=tag)


@pytest.fixture
def cachu_isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IsolatedCache]:
    """A cache of this test's own, on every backend; everything is put back after."""
    snapshot = _config_snapshot()
    file_dir = tmp_path_factory.mktemp("cachu")
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    packages = [p for p in cachu.get_all_configs() if p not in ("_default", None)]
    for package in [EVERY_PACKAGE, *packages]:
        old = cachu.get_config(package=package)
        cachu.configure(package=package, file_dir=str(file_dir), key_prefix=prefix + old.key_prefix)
    try:
        yield IsolatedCache(file_dir=file_dir, key_prefix=prefix)
    finally:
        # The test's own entries go: its keys carry its prefix (its files are in its
        # own directory); what was cached before the test stays.
        for backend in _instances():
            if backend.kind in ("memory", "redis"):
                with contextlib.suppress(cachu.CacheError):
                    backend.clear(f"*:{prefix}*")
        _config_restore(snapshot)
