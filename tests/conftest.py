"""Shared fixtures: a clean cache per test, temp dirs for files, and the published
cachu 0.2.7 in a virtual environment of its own, for compatibility tests."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

import cachu
from cachu import _cachu

REFERENCE_VERSION = "0.2.7"


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Every test starts with no backend instances and caching enabled."""
    _cachu.clear_all_backends()
    cachu.enable()
    yield
    cachu.enable()
    _cachu.clear_all_backends()


@pytest.fixture(scope="session")
def reference_python(tmp_path_factory) -> str:
    """The interpreter of a virtual environment with the published cachu 0.2.7.

    Set CACHU_REFERENCE_PYTHON to reuse one; otherwise it is created with pip, which
    needs the package index. A failure says so: compatibility is never skipped.
    """
    given = os.environ.get("CACHU_REFERENCE_PYTHON")
    if given:
        return given
    root = tmp_path_factory.mktemp("reference-venv")
    venv.EnvBuilder(with_pip=True).create(root)
    py = str(root / "bin" / "python")
    proc = subprocess.run(
        [py, "-m", "pip", "install", "-q", f"cachu=={REFERENCE_VERSION}"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"could not install cachu=={REFERENCE_VERSION} into a venv for the compatibility "
            f"tests (pip needs the package index):\n{proc.stderr}"
        )
    return py


def run_python(python: str, code: str, cwd: Path | None = None, timeout: float = 60) -> str:
    """Runs a snippet in another interpreter; returns its stdout, fails loudly."""
    proc = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )
    assert proc.returncode == 0, f"snippet failed:\n{proc.stderr}"
    return proc.stdout


@pytest.fixture
def this_python() -> str:
    return sys.executable
