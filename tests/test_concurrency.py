"""Single flight across real threads, copy isolation, and exceptions."""

from __future__ import annotations

import threading
import time

import pytest

import cachu
from cachu import cache


def run_threads(n, target):
    barrier = threading.Barrier(n)
    results, errors = [None] * n, [None] * n

    def body(i):
        barrier.wait()
        try:
            results[i] = target(i)
        except BaseException as e:  # noqa: BLE001
            errors[i] = e

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), "a thread hung"
    return results, errors


def test_concurrent_misses_run_the_function_once():
    calls = []

    @cache(ttl=60)
    def slow(x):
        calls.append(x)
        time.sleep(0.2)
        return {"x": x}

    results, errors = run_threads(8, lambda i: slow(1))
    assert errors == [None] * 8
    assert results == [{"x": 1}] * 8
    assert calls == [1]
    # Every waiter got its own copy.
    assert len({id(r) for r in results}) == 8
    info = cachu.cache_info(slow)
    assert (info.misses, info.hits) == (1, 7)


def test_distinct_keys_run_in_parallel():
    @cache(ttl=60)
    def slow(x):
        time.sleep(0.3)
        return x

    t = time.perf_counter()
    results, _ = run_threads(4, lambda i: slow(i))
    assert sorted(results) == [0, 1, 2, 3]
    assert time.perf_counter() - t < 1.0, "different keys must not wait for each other"


def test_an_exception_reaches_every_waiter_and_is_not_cached():
    calls = []

    class Boom(Exception):
        pass

    @cache(ttl=60)
    def failing(x):
        calls.append(x)
        time.sleep(0.2)
        raise Boom("no")

    _, errors = run_threads(6, lambda i: failing(1))
    assert all(isinstance(e, Boom) for e in errors)
    assert calls == [1]
    assert cachu.cache_info(failing).currsize == 0
    with pytest.raises(Boom):
        failing(1)
    assert calls == [1, 1]


def test_recursion_on_the_same_key_does_not_deadlock():
    depth = []

    @cache(ttl=60)
    def rec(x):
        depth.append(x)
        if len(depth) < 3:
            rec.invalidate(x=x)
            return rec(x) + 1
        return 0

    assert rec(1) == 2


def test_waiters_give_up_after_lock_timeout():
    cachu.configure(lock_timeout=0.2, package="timeout_pkg")
    calls = []

    @cache(ttl=60, package="timeout_pkg")
    def slow(x):
        calls.append(x)
        time.sleep(1.0)
        return x

    t = time.perf_counter()
    results, errors = run_threads(3, lambda i: slow(1))
    assert errors == [None] * 3 and results == [1, 1, 1]
    assert 1 < len(calls) <= 3, "waiters past lock_timeout compute for themselves"
    assert time.perf_counter() - t < 5


class Point:
    def __init__(self, x):
        self.x = x

    def __eq__(self, other):
        return isinstance(other, Point) and other.x == self.x


@pytest.mark.parametrize(
    ("make", "mutate"),
    [
        (lambda: {"a": [1, 2], "b": {"c": 1}}, lambda v: v["a"].append(3)),
        (lambda: {"a": [1, 2], "b": {"c": 1}}, lambda v: v["b"].update(d=2)),
        (lambda: {"tags": {"x"}, "n": 1}, lambda v: v["tags"].add("y")),
        (lambda: {"n": 1, "s": "x"}, lambda v: v.update(n=2)),
        (lambda: {"n": 1, "s": "x"}, lambda v: v.pop("s")),
        (lambda: {f"k{i}": [i] for i in range(9)}, lambda v: v["k8"].append(0)),
        (lambda: {1: [1], "a": 2}, lambda v: v[1].append(0)),
        (lambda: [1, [2, 3]], lambda v: v[1].append(4)),
        (lambda: {1, 2}, lambda v: v.add(3)),
        (lambda: ([1], 2), lambda v: v[0].append(5)),
        (lambda: Point(1), lambda v: setattr(v, "x", 99)),
    ],
)
def test_mutating_a_result_never_changes_the_cache(make, mutate):
    @cache(ttl=60)
    def f():
        return make()

    first = f()  # the miss: the caller owns this object
    mutate(first)
    second = f()  # a hit
    assert second == make()
    mutate(second)
    assert f() == make()


class Key(str):
    pass


def test_small_records_come_back_equal_in_order_and_compact():
    import json
    import sys

    values = [
        {"id": 1, "name": "Ada", "active": True},
        {"name": "Ada", "id": 1, "active": True},  # another order: another shape
        json.loads('{"id": 2, "name": "Bob", "roles": ["a", "b"], "meta": {"x": 1}}'),
        {"a": None, "b": 1.5, "c": b"x", "d": (1, 2), "e": frozenset({1})},
        {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6},  # six keys
        {Key("k"): 1},
        {1: "one", 2: "two"},
        {"nested": {"deep": [1]}},  # not flat: copied another way
    ]

    @cache(ttl=60, package="records")
    def f(i):
        return values[i]

    for i, v in enumerate(values):
        assert f(i) == v and list(f(i)) == list(v)  # miss, then hit
        hit = f(i)
        assert type(hit) is dict and hit is not v
        assert [type(k) for k in hit] == [type(k) for k in v]
    assert f.cache_info().hits == len(values) * 2
    assert f(3)["d"] is f(3)["d"] and f(3)["e"] is f(3)["e"]  # immutable: shared
    assert f(2)["roles"] is not f(2)["roles"]  # mutable: a copy per caller

    @cache(ttl=60, package="records")
    def g(i):
        return json.loads(json.dumps({"id": i, "name": "Ada", "roles": ["a"]}))

    for i in range(1000):
        g(i)
    stats = cachu.get_backend(package="records", ttl=60).stats()
    kept = stats["value_bytes"] / stats["entries"]
    assert kept < sys.getsizeof(g(0)), stats


def test_immutable_results_are_shared_not_copied():
    @cache(ttl=60)
    def f(x):
        return ("a", x, 2**80, "long string " * 10)

    assert f(1) is f(1)


def test_unpicklable_results_are_returned_but_not_cached():
    calls = []

    @cache(ttl=60)
    def f(x):
        calls.append(x)
        return lambda: x  # neither copyable nor picklable

    with pytest.warns(RuntimeWarning, match="not cached"):
        r = f(1)
    assert r() == 1
    assert f(1)() == 1
    assert calls == [1, 1]
    assert cachu.cache_info(f).currsize == 0


def test_user_exceptions_pass_through_unchanged():
    err = KeyError("mine")

    @cache(ttl=60)
    def f():
        raise err

    with pytest.raises(KeyError) as info:
        f()
    assert info.value is err


@cache(ttl=300, package="pickled")
def square(x: int) -> tuple[int, int]:
    import os

    return x * x, os.getpid()


@cache(ttl=300, package="pickled")
async def async_square(x: int) -> int:
    return x * x


class Geometry:
    @cache(ttl=300, package="pickled")
    def area(self, w: int, h: int) -> int:
        return w * h


def test_decorated_functions_pickle_by_reference_for_process_pools():
    import asyncio
    import multiprocessing
    import os
    import pickle
    from concurrent.futures import ProcessPoolExecutor

    for fn in (square, async_square, Geometry.area):
        assert pickle.loads(pickle.dumps(fn)) is fn
    # A process pool sends the function by name; each worker caches in its own memory.
    # (spawn: this process runs threads, which fork would copy mid-flight.)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=spawn) as pool:
        results = list(pool.map(square, [3, 4, 3]))
    assert [r[0] for r in results] == [9, 16, 9]
    assert all(pid != os.getpid() for _, pid in results)
    assert asyncio.run(async_square(5)) == 25
    # A function that cannot be found under its name is refused, as for a function.
    hidden = cache(ttl=300, package="pickled")(lambda x: x)
    with pytest.raises((pickle.PicklingError, AttributeError), match="pickle"):
        pickle.dumps(hidden)
