"""The `python -m cachu` entry points run on a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_and_shows_hits():
    proc = subprocess.run(
        [sys.executable, "-m", "cachu", "demo"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "CacheInfo(hits=1, misses=1, currsize=1)" in proc.stdout
    assert "cached value is still {'id': 123, 'name': 'user 123'}" in proc.stdout
    assert "10 tasks at once ran it once: CacheInfo(hits=9, misses=1" in proc.stdout
    assert "Done." in proc.stdout


def test_bench_prints_a_ratio():
    proc = subprocess.run(
        [sys.executable, "-m", "cachu", "bench", "-n", "1000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "x lru_cache" in proc.stdout
