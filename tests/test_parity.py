"""Sync and async calls take the same decisions on every backend: one call flow, tested
through one fixture that runs each behaviour for memory, file and Redis, sync and async.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

import cachu
from cachu import BackendError, CacheLockTimeout
from conftest import Flavor, configure_flavor, free_port

MODES = ["sync", "async"]


class Unpicklable:
    """Neither copied nor pickled: it holds a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()


@pytest.mark.parametrize("on_backend_error", ["miss", "raise"])
def test_an_unpicklable_result_is_returned_not_cached_and_said_so(
    flavor, tmp_path, on_backend_error
):
    configure_flavor(flavor, tmp_path, flavor.url, on_backend_error=on_backend_error)
    runs = []

    def make(x):
        runs.append(x)
        return Unpicklable()

    fn = flavor.cache(make)
    with pytest.warns(RuntimeWarning, match=r"make\(\) was not cached: it can be neither"):
        assert isinstance(flavor.call(fn, 1), Unpicklable)
    assert isinstance(flavor.call(fn, 1), Unpicklable)
    assert runs == [1, 1]


def test_exceptions_are_never_cached(flavor):
    runs = []

    def fails(x):
        runs.append(x)
        raise LookupError(f"no {x}")

    fn = flavor.cache(fails)
    for _ in range(2):
        with pytest.raises(LookupError, match="no 7"):
            flavor.call(fn, 7)
    assert runs == [7, 7]


def test_hits_misses_and_values_are_the_same_whoever_calls(flavor):
    runs = []

    def get_user(user_id, region="eu"):
        runs.append(user_id)
        return {"id": user_id, "region": region, "tags": [user_id]}

    fn = flavor.cache(get_user)
    first = flavor.call(fn, 1)
    first["tags"].append("mutated by the caller")
    assert flavor.call(fn, 1) == {"id": 1, "region": "eu", "tags": [1]}
    assert flavor.call(fn, user_id=1) == {"id": 1, "region": "eu", "tags": [1]}
    assert flavor.call(fn, 2, region="us") == {"id": 2, "region": "us", "tags": [2]}
    assert runs == [1, 2]
    info = cachu.cache_info(fn)
    assert (info.hits, info.misses, info.currsize) == (2, 2, 2)


def test_a_cold_key_is_computed_once_by_concurrent_callers(flavor):
    runs = []

    def slow(x):
        runs.append(x)
        time.sleep(0.3 if flavor.mode == "sync" else 0)
        return {"x": x}

    slow.delay = 0.3  # type: ignore[attr-defined]
    fn = flavor.cache(slow)
    assert flavor.call_together(fn, 8, 5) == [{"x": 5}] * 8
    assert runs == [5]
    info = cachu.cache_info(fn)
    assert (info.hits, info.misses) == (7, 1)


def test_concurrent_callers_get_the_leader_s_exception(flavor):
    runs = []

    def slow_failure(x):
        runs.append(x)
        time.sleep(0.2 if flavor.mode == "sync" else 0)
        raise KeyError(x)

    slow_failure.delay = 0.2  # type: ignore[attr-defined]
    fn = flavor.cache(slow_failure)

    def call_catching(x):
        try:
            return flavor.call(fn, x) if flavor.mode == "sync" else None
        except KeyError as e:
            return e

    if flavor.mode == "sync":
        results = flavor.call_together(call_catching, 4, 3)
    else:

        async def catching(x):
            try:
                return await fn(x)
            except KeyError as e:
                return e

        results = flavor.call_together(catching, 4, 3)
    assert all(isinstance(r, KeyError) for r in results), results
    assert runs == [3]


@pytest.mark.parametrize("callback", ["validate", "cache_if", "ttl"])
def test_a_raising_callback_raises_to_the_caller(flavor, callback):
    def boom(*_):
        raise ArithmeticError(f"{callback} failed")

    runs = []

    def value(x):
        runs.append(x)
        return x

    fn = flavor.cache(value, **{callback: boom})
    if callback == "validate":
        flavor.call(fn, 1)  # stores: validate runs on what is found
    with pytest.raises(ArithmeticError, match=f"{callback} failed"):
        flavor.call(fn, 1)
    # Nothing was left locked: the next call is not held up by a lease.
    started = time.monotonic()
    with pytest.raises(ArithmeticError):
        flavor.call(fn, 1)
    assert time.monotonic() - started < 2


def test_a_dynamic_ttl_that_returns_no_ttl_is_not_cached(flavor):
    runs = []

    def value(x):
        runs.append(x)
        return {"v": x}

    fn = flavor.cache(value, ttl=lambda r: "sixty")
    with pytest.warns(RuntimeWarning, match="not cached.*ttl"):
        assert flavor.call(fn, 4) == {"v": 4}
    assert flavor.call(fn, 4) == {"v": 4}
    assert runs == [4, 4]


def test_validate_false_recomputes_and_cache_if_false_stores_nothing(flavor):
    runs = []

    def value(x):
        runs.append(x)
        return {"v": x, "n": len(runs)}

    fresh = flavor.cache(value, validate=lambda entry: entry.value["n"] > 1)
    assert flavor.call(fresh, 1)["n"] == 1
    assert flavor.call(fresh, 1)["n"] == 2  # refused: computed again, and stored
    assert flavor.call(fresh, 1)["n"] == 2

    def refused(x):
        runs.append(x)
        return x

    never = flavor.cache(refused, cache_if=lambda r: False)
    flavor.call(never, 9)
    flavor.call(never, 9)
    assert runs.count(9) == 2
    assert cachu.cache_info(never).currsize == 0


def test_an_overwrite_returns_what_it_computed(flavor):
    n = []

    def counter(x):
        n.append(x)
        return len(n)

    fn = flavor.cache(counter)
    assert flavor.call(fn, 0) == 1
    assert flavor.call(fn, 0, _overwrite_cache=True) == 2
    assert flavor.call(fn, 0) == 2
    assert flavor.call(fn, 0, _skip_cache=True) == 3
    assert flavor.call(fn, 0) == 2


@contextlib.contextmanager
def redis_down(mode: str, name: str, tmp_path: Any, **options: Any) -> Iterator[Flavor]:
    """A flavor whose Redis URL has no server behind it."""
    f = Flavor("redis", mode, f"parity_{name}_{mode}")
    f.url = f"redis://127.0.0.1:{free_port()}/0?socket_connect_timeout=0.2"  # type: ignore[attr-defined]
    try:
        configure_flavor(f, tmp_path, f.url, **options)  # type: ignore[attr-defined]
        yield f
    finally:
        f.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_redis_outage_raises_backend_error_when_configured_to(mode, tmp_path):
    with redis_down(mode, "down", tmp_path, on_backend_error="raise") as f:
        runs = []

        def value(x):
            runs.append(x)
            return x

        fn = f.cache(value)
        with pytest.raises(BackendError, match="unreachable"):
            f.call(fn, 1)
        assert runs == []
        configure_flavor(f, tmp_path, f.url, on_backend_error="miss")  # type: ignore[attr-defined]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert f.call(fn, 1) == 1
        assert runs == [1]


@pytest.mark.parametrize("mode", MODES)
def test_stampede_protection_holds_while_redis_is_down(mode, tmp_path):
    with redis_down(mode, "stampede_down", tmp_path, on_backend_error="miss") as f:
        runs = []

        def slow(x):
            runs.append(x)
            time.sleep(0.3 if mode == "sync" else 0)
            return x * 2

        slow.delay = 0.3  # type: ignore[attr-defined]
        fn = f.cache(slow)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert f.call_together(fn, 8, 21) == [42] * 8
        assert runs == [21]


@pytest.mark.parametrize("backend", ["memory", "file", "redis"])
@pytest.mark.parametrize("mode", MODES)
def test_a_waiter_past_lock_timeout_raises_when_configured_to(backend, mode, tmp_path, request):
    url = request.getfixturevalue("redis_url") if backend == "redis" else "redis://127.0.0.1:1/0"
    f = Flavor(backend, mode, f"parity_timeout_{backend}_{mode}")
    try:
        configure_flavor(f, tmp_path, url, lock_timeout=0.3, on_lock_timeout="raise")

        def slow(x):
            time.sleep(1.0 if mode == "sync" else 0)
            return x

        slow.delay = 1.0  # type: ignore[attr-defined]
        fn = f.cache(slow)
        if mode == "sync":
            outcomes = f.call_together(lambda x: _outcome(fn, x), 2, 1)
        else:

            async def outcome(x):
                try:
                    return await fn(x)
                except CacheLockTimeout as e:
                    return e

            outcomes = f.call_together(outcome, 2, 1)
        assert sorted(type(o).__name__ for o in outcomes) == ["CacheLockTimeout", "int"]
    finally:
        f.close()


def _outcome(fn: Any, x: Any) -> Any:
    try:
        return fn(x)
    except CacheLockTimeout as e:
        return e


def test_ttl_jitter_spreads_the_expiries_of_entries_filled_together(flavor):
    def value(x):
        return x

    fn = flavor.cache(value, ttl=1000, ttl_jitter=0.5)
    for i in range(40):
        flavor.call(fn, i)
    if flavor.backend == "memory":
        return  # memory keeps deadlines internally; its spread is checked below
    if flavor.backend == "redis":
        client = flavor.redis_client()
        ttls = [client.ttl(k) for k in client.scan_iter(match=f"16m:{value.__name__}|*")]
    else:
        import sqlite3

        path = next(p for p in __import__("pathlib").Path(flavor.file_dir).glob("*16min.db"))
        rows = sqlite3.connect(path).execute("SELECT expires_at - created_at FROM cache").fetchall()
        ttls = [r[0] for r in rows]
    assert len(ttls) == 40
    assert all(499 <= t <= 1000 for t in ttls), ttls
    assert max(ttls) - min(ttls) > 100, ttls  # spread, not all equal


def test_ttl_jitter_expires_memory_entries_apart():
    cachu.configure(package="jitter_memory", ttl_jitter=0.9)

    @cachu.cache(ttl=2, package="jitter_memory")
    def value(x):
        return x

    for i in range(50):
        value(i)
    time.sleep(1.1)  # a jitter of 0.9 keeps each for 0.2 to 2 s: about half are gone
    left = cachu.cache_info(value).currsize
    assert 5 < left < 45, left
    assert cachu.get_config(package="jitter_memory").ttl_jitter == 0.9


@pytest.mark.parametrize("bad", [-0.1, 1, 1.5, True, "0.1"])
def test_a_bad_ttl_jitter_is_refused_naming_it(bad):
    with pytest.raises(cachu.ConfigurationError, match="ttl_jitter"):
        cachu.cache(ttl=60, ttl_jitter=bad)
    with pytest.raises(cachu.ConfigurationError, match="ttl_jitter"):
        cachu.configure(package="jitter_bad", ttl_jitter=bad)
