"""What cachu promises when things go wrong or grow: bounded memory, bad input,
many threads and processes at once. Real threads, processes and servers; every wait
is bounded so that a bug fails fast instead of hanging."""

from __future__ import annotations

import gc
import threading

import pytest

import cachu
from cachu import ConfigurationError


def test_memory_maxsize_bounds_a_package_and_keeps_the_recently_used():
    cachu.configure(package="bounded", memory_maxsize=100)
    try:

        @cachu.cache(ttl=300, package="bounded")
        def square(x: int) -> int:
            return x * x

        @cachu.cache(ttl=3600, package="bounded")
        def cube(x: int) -> int:
            return x * x * x

        hot = list(range(10))
        for i in range(2000):
            square(1000 + i)
            if i % 20 == 0:
                for h in hot:
                    square(h)  # keeps the hot keys recently used
            cube(i)
        total = cachu.cache_info(square).currsize + cachu.cache_info(cube).currsize
        assert total <= 100, total
        before = cachu.cache_info(square).hits
        for h in hot:
            square(h)
        assert cachu.cache_info(square).hits - before == len(hot), "a hot key was evicted"
        assert cachu.get_config(package="bounded").memory_maxsize == 100
        # 0 removes the bound.
        cachu.configure(package="bounded", memory_maxsize=0)
        for i in range(300):
            square(10_000 + i)
        assert cachu.cache_info(square).currsize >= 300
    finally:
        cachu.configure(package="bounded", memory_maxsize=0)


class Tracked:
    """Counts its live instances."""

    alive = 0

    def __init__(self) -> None:
        Tracked.alive += 1

    def __del__(self) -> None:
        Tracked.alive -= 1

    def __reduce__(self):  # noqa: ANN204 - pickled by the cache
        return (Tracked, ())


def test_evicted_values_are_released():
    cachu.configure(package="release", memory_maxsize=10)
    try:

        @cachu.cache(ttl=300, package="release")
        def make(i: int) -> list:
            return [Tracked()]

        before = Tracked.alive
        for i in range(200):
            make(i)
        gc.collect()
        assert cachu.cache_info(make).currsize <= 10
        assert Tracked.alive - before <= 12, "evicted values are still alive"
    finally:
        cachu.configure(package="release", memory_maxsize=0)


@pytest.mark.parametrize("bad", [-1, 1.5, "100", True, [10]])
def test_bad_memory_maxsize_is_refused(bad):
    with pytest.raises(ConfigurationError, match="memory_maxsize"):
        cachu.configure(package="badmax", memory_maxsize=bad)


def test_bounded_memory_under_threads():
    cachu.configure(package="boundedthreads", memory_maxsize=500)
    try:

        @cachu.cache(ttl=300, package="boundedthreads")
        def f(x: int) -> int:
            return x

        errors: list[BaseException] = []

        def worker(base: int) -> None:
            try:
                for i in range(3000):
                    assert f(base + i % 700) == base + i % 700
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(k * 10_000,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        assert cachu.cache_info(f).currsize <= 500
    finally:
        cachu.configure(package="boundedthreads", memory_maxsize=0)
