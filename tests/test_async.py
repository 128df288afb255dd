"""The async API on real event loops."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import threading
import time
import types

import pytest

import cachu
from cachu import (
    async_cache,
    async_cache_clear,
    async_cache_delete,
    async_cache_get,
    async_cache_info,
    async_cache_set,
    cache,
)
from cachu._cachu import Ready
from conftest import LoopTurns, coroutine_runs_on_a_cold_key, run_at_once


def test_async_example_of_the_readme():
    calls = []

    async def fetch_from_database(user_id):
        calls.append(user_id)
        return {"id": user_id}

    @async_cache(ttl=300, backend="memory")
    async def get_user(user_id: int) -> dict:
        return await fetch_from_database(user_id)

    async def main():
        user = await get_user(123)  # Cache miss
        user = await get_user(123)  # Cache hit
        assert user == {"id": 123}
        user = await get_user(123, _skip_cache=True)
        user = await get_user(123, _overwrite_cache=True)
        assert calls == [123, 123, 123]

        cached = await async_cache_get(get_user, user_id=123)
        assert cached == {"id": 123}
        await async_cache_set(get_user, {"id": 123, "name": "Test"}, user_id=123)
        assert await get_user(123) == {"id": 123, "name": "Test"}
        await async_cache_delete(get_user, user_id=123)
        assert await async_cache_get(get_user, None, user_id=123) is None
        await get_user(123)
        assert await async_cache_clear(backend="memory", ttl=300) == 1
        info = await async_cache_info(get_user)
        assert info.currsize == 0

    asyncio.run(main())


def test_async_helpers():
    fetched = []

    @cache(ttl=300)
    async def get_user(user_id: int) -> dict:
        fetched.append(user_id)
        return {"id": user_id}

    async def main():
        with pytest.raises(KeyError):
            await get_user.get(user_id=123)
        await get_user.set({"id": 123}, user_id=123)
        assert await get_user.get(user_id=123) == {"id": 123}
        await get_user.invalidate(user_id=123)
        user = await get_user.refresh(user_id=123)
        assert user == {"id": 123}
        user = await get_user.original(123)
        assert fetched == [123, 123]

    asyncio.run(main())
    assert asyncio.iscoroutinefunction(get_user)
    assert get_user.__name__ == "get_user"


@pytest.fixture(params=["ready", "coroutine"])
def hit_kind(request, monkeypatch):
    """Both ways a memory hit is handed to ``await``, whichever Python runs the tests:
    the native ``Ready`` (chosen up to 3.11) and the at-once coroutine (from 3.12)."""
    from cachu import _async

    monkeypatch.setattr(_async, "_HIT", None if request.param == "ready" else _async._finished)
    return Ready if request.param == "ready" else types.CoroutineType


def test_a_hit_is_handed_over_as_this_python_awaits_fastest():
    @cache(ttl=300)
    async def f(x):
        return x

    async def main():
        await f(1)
        hit = f(1)
        # Up to 3.11 `await` finishes Ready through am_send, with no exception; from
        # 3.12 it would raise StopIteration for it, and an at-once coroutine is cheaper.
        assert type(hit) is (Ready if sys.version_info < (3, 12) else types.CoroutineType)
        assert await hit == 1

    asyncio.run(main())


def test_a_memory_hit_is_a_completed_awaitable_that_never_yields_to_the_loop(hit_kind):
    @cache(ttl=300)
    async def get_user(user_id: int) -> dict:
        await asyncio.sleep(0)
        return {"id": user_id, "roles": ["admin"]}

    async def main():
        first = await get_user(1)
        async with LoopTurns() as turns:
            before = turns.count
            for _ in range(1000):
                hit = get_user(1)
                assert type(hit) is hit_kind
                if hit_kind is types.CoroutineType:
                    assert hit.__qualname__ == get_user.__qualname__
                assert await hit == first
            # No await of a hit let another task run: no task switch.
            assert turns.count == before
        # A miss is a coroutine that does yield.
        miss = get_user(2)
        assert asyncio.iscoroutine(miss) and type(miss).__name__ == "coroutine"
        assert await miss == {"id": 2, "roles": ["admin"]}
        # Each hit hands out its own copy.
        a, b = await get_user(1), await get_user(1)
        assert a == b and a is not b and a["roles"] is not b["roles"]

    asyncio.run(main())
    info = cachu.cache_info(get_user)
    assert (info.hits, info.misses) == (1002, 2)


def test_a_hit_is_a_coroutine_for_asyncio(hit_kind):
    @cache(ttl=300)
    async def pair(x):
        return (x, "y")

    async def main():
        await pair(1)
        # Task, gather and ensure_future take it as they take a coroutine.
        assert await asyncio.create_task(pair(1)) == (1, "y")
        assert await asyncio.gather(pair(1), pair(1)) == [(1, "y"), (1, "y")]
        assert await asyncio.ensure_future(pair(1)) == (1, "y")
        hit = pair(1)
        assert asyncio.iscoroutine(hit)
        assert isinstance(hit, __import__("collections").abc.Coroutine)
        assert type(hit) is hit_kind
        assert await hit == (1, "y")
        with pytest.raises(RuntimeError, match="already awaited"):
            await hit
        # The coroutine protocol, driven by hand: a tuple comes back whole.
        hit = pair(1)
        with pytest.raises(StopIteration) as stop:
            hit.send(None)
        assert stop.value.value == (1, "y")
        refused = pair(1)
        with pytest.raises(TypeError, match="non-None"):
            refused.send(5)
        refused.close()
        with pytest.raises(KeyError, match="thrown"):
            pair(1).throw(KeyError("thrown"))
        with pytest.raises(ValueError):
            pair(1).throw(ValueError)
        closed = pair(1)
        closed.close()
        with pytest.raises(RuntimeError, match="already awaited"):
            await closed

    asyncio.run(main())
    # asyncio.run takes a hit as its main coroutine.
    assert asyncio.run(pair(1)) == (1, "y")


def test_errors_of_a_call_are_raised_by_await_and_coroutines_bear_the_functions_name(hit_kind):
    def refuse(entry):
        raise ValueError("validate refused")

    @cache(ttl=60, validate=refuse)
    async def checked(x):
        return x

    async def main():
        assert await checked(1) == 1
        pending = checked(1)  # a hit whose validate= raises: not raised by the call
        with pytest.raises(ValueError, match="validate refused"):
            await pending
        got = await asyncio.gather(checked(1), return_exceptions=True)
        assert isinstance(got[0], ValueError)
        # A miss is a coroutine named after the function (tasks show it, and so does
        # the warning about a coroutine never awaited).
        miss = checked(2)
        assert (miss.__name__, miss.__qualname__) == ("checked", checked.__qualname__)
        assert await miss == 2

    asyncio.run(main())


def test_decorated_coroutine_functions_look_like_coroutine_functions():
    import inspect

    async def plain(user_id: int, verbose: bool = False, *, lang: str = "en") -> dict:
        """Docs."""
        return {"id": user_id}

    get_user = cache(ttl=300)(plain)
    for check in (inspect.iscoroutinefunction, asyncio.iscoroutinefunction):
        assert check(get_user), check
    assert not inspect.iscoroutinefunction(cache(ttl=300)(lambda x: x))
    assert inspect.signature(get_user) == inspect.signature(plain)
    assert get_user.__name__ == "plain" and get_user.__doc__ == "Docs."
    assert get_user.__wrapped__ is plain
    assert get_user.__module__ == plain.__module__
    assert get_user.__globals__ is plain.__globals__

    class Service:
        @cache(ttl=300)
        async def lookup(self, x):
            return x * 2

    s = Service()
    assert inspect.iscoroutinefunction(s.lookup)
    # Decorated twice: the outer one sees a coroutine function too.
    twice = cache(ttl=60)(cache(ttl=300)(plain))
    assert inspect.iscoroutinefunction(twice)

    async def main():
        assert await s.lookup(4) == await s.lookup(4) == 8
        assert await twice(3) == await twice(3) == {"id": 3}

    asyncio.run(main())
    assert cachu.cache_info(Service.lookup).hits == 1
    assert cachu.cache_info(twice).hits == 1
    if hasattr(inspect, "markcoroutinefunction"):  # Python 3.12 and later

        class Handler:
            __name__ = "handler"

            async def __call__(self, x):
                return x

        marked = cache(ttl=300)(inspect.markcoroutinefunction(Handler()))
        assert inspect.iscoroutinefunction(marked)
        assert asyncio.run(marked(1)) == 1


def test_concurrent_tasks_run_the_coroutine_once():
    calls = []

    @cache(ttl=60)
    async def slow(x):
        calls.append(x)
        await asyncio.sleep(0.1)
        return {"x": x}

    async def main():
        results = await asyncio.gather(*(slow(1) for _ in range(20)))
        assert all(r == {"x": 1} for r in results)
        assert len({id(r) for r in results}) == 20

    asyncio.run(main())
    assert calls == [1]


def test_cancelling_the_computing_task_lets_a_waiter_take_over():
    calls = []

    @cache(ttl=60)
    async def slow(x):
        calls.append(x)
        await asyncio.sleep(0.2)
        return x

    async def main():
        leader = asyncio.create_task(slow(1))
        await asyncio.sleep(0.01)
        follower = asyncio.create_task(slow(1))
        await asyncio.sleep(0.01)
        leader.cancel()
        assert await asyncio.wait_for(follower, 5) == 1
        with pytest.raises(asyncio.CancelledError):
            await leader

    asyncio.run(main())
    assert calls == [1, 1]


def test_exceptions_reach_every_task_and_are_not_cached():
    @cache(ttl=60)
    async def failing(x):
        await asyncio.sleep(0.05)
        raise ValueError("no")

    async def main():
        results = await asyncio.gather(*(failing(1) for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in results)

    asyncio.run(main())
    assert cachu.cache_info(failing).currsize == 0


def test_file_backend_does_not_block_the_loop(tmp_path):
    cachu.configure(file_dir=str(tmp_path), package="async_file")

    @cache(ttl=300, backend="file", package="async_file")
    async def f(x):
        return "v" * 1000

    async def main():
        async with LoopTurns() as turns:
            for i in range(50):
                await f(i)
                await f(i)
        return turns.count

    assert asyncio.run(main()) > 50


def test_a_file_locked_by_another_program_at_the_first_call_does_not_block_the_loop(
    tmp_path, this_python
):
    """The first call opens the file: while another process holds it exclusively,
    the open waits (SQLite's busy timeout) on the blocking pool, and the loop runs on.
    (Another process: two SQLite libraries in one process do not see each other's
    locks, which SQLite documents as a way to corrupt a file.)"""
    import subprocess

    cachu.configure(file_dir=str(tmp_path), package="busyfile")

    @cache(ttl=300, backend="file", package="busyfile")
    async def f(x):
        return x

    holder = subprocess.Popen(
        [
            this_python,
            "-c",
            textwrap.dedent(f"""
            import sqlite3, sys, time
            db = sqlite3.connect({str(tmp_path / "busyfile_cache5min.db")!r}, isolation_level=None)
            db.execute("CREATE TABLE theirs (x)")
            db.execute("BEGIN EXCLUSIVE")
            db.execute("INSERT INTO theirs VALUES (1)")
            print("locked", flush=True)
            time.sleep(0.6)
            db.execute("COMMIT")
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"

    async def main():
        async with LoopTurns(pause=0.01) as turns:
            t0 = time.monotonic()
            assert await f(1) == 1
            waited = time.monotonic() - t0
        return waited, turns.count

    waited, turns = asyncio.run(main())
    assert holder.wait(timeout=10) == 0
    assert waited >= 0.3, "the file was not locked at the first call"
    assert turns >= 20, f"the loop ran other tasks only {turns} times in {waited:.2f}s"
    assert asyncio.run(f(1)) == 1
    assert cachu.cache_info(f).hits == 1


def test_one_loop_per_thread():
    @cache(ttl=60)
    async def f(x):
        await asyncio.sleep(0.01)
        return x * 2

    out = []

    def worker(i):
        out.append(asyncio.run(f(i)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(out) == [0, 2, 4, 6]


def test_async_backend_access():
    async def main():
        backend = await cachu.get_async_backend("memory", ttl=300)
        await backend.set("k", {"v": 1})
        assert await backend.get("k") == {"v": 1}
        await backend.delete("k")
        assert await backend.get("k") is cachu.NO_VALUE
        await cachu.clear_async_backends()

    asyncio.run(main())


def test_disable_applies_to_async():
    calls = []

    @cache(ttl=60)
    async def f(x):
        calls.append(x)
        return x

    async def main():
        cachu.disable()
        await f(1)
        await f(1)
        cachu.enable()

    t = time.perf_counter()
    asyncio.run(main())
    assert calls == [1, 1]
    assert time.perf_counter() - t < 5


@pytest.mark.skipif(sys.platform != "linux", reason="file leases are taken on Linux only")
def test_tasks_and_processes_compute_a_cold_file_key_once(tmp_path, this_python):
    count = coroutine_runs_on_a_cold_key(
        this_python, "aiofileapp", f"backend='file', file_dir={str(tmp_path)!r}", tmp_path
    )
    assert count == 1, f"3 processes x 20 tasks on one cold key ran the coroutine {count} times"


def test_processes_exit_cleanly_right_after_awaiting_the_runtime(tmp_path, this_python):
    """The last awaits of a program hand their results to the loop from a runtime
    thread; the interpreter's exit must not catch that thread half-way (it used to
    abort the process, now and then)."""
    script = textwrap.dedent(
        f"""
        import asyncio, sys, cachu
        cachu.configure(package='exits', backend='file', file_dir={str(tmp_path)!r})
        @cachu.cache(ttl=300, package='exits')
        async def f(x):
            return x
        async def main():
            for i in range(100):
                await f(i % 7)
            await asyncio.gather(*(f(i) for i in range(20)))
        start = float(sys.argv[1])
        asyncio.run(main())
        print('ok')
        """
    )
    outs = run_at_once(this_python, script, 8, lead=0.5, timeout=60)
    assert outs == ["ok"] * 8
