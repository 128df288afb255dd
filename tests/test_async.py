"""The async API on real event loops."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import threading
import time

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
from conftest import coroutine_runs_on_a_cold_key, run_at_once


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
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        t = asyncio.create_task(ticker())
        for i in range(50):
            await f(i)
            await f(i)
        t.cancel()
        return ticks

    assert asyncio.run(main()) > 50


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
