"""The async API on the Redis backend, on real event loops and a real redis-server:
the same values and leases as the sync path, from the loop itself, never blocking it."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import threading
import time
import warnings

import pytest

import cachu
from cachu import BackendError
from conftest import (
    LoopTurns,
    RedisServer,
    configure_redis_package,
    coroutine_runs_on_a_cold_key,
    run_python,
    top_level_commands,
)

PACKAGE = "aioredisapp"


@pytest.fixture
def app(redis_url):
    """A package configured for Redis on the test's own, empty server."""
    return configure_redis_package(PACKAGE, redis_url)


def client_count(server: RedisServer) -> int:
    return len(server.client().client_list()) - 1  # without the asking client


def test_async_and_sync_functions_share_values(app):
    calls = []

    @cachu.cache(ttl=300, package=PACKAGE)
    async def get_user(user_id: int) -> dict:
        calls.append(user_id)
        return {"id": user_id}

    async def main() -> None:
        assert await get_user(1) == {"id": 1}
        assert await get_user(1) == {"id": 1}
        value = await get_user(1)
        value["id"] = "mutated by the caller"
        assert await get_user(1) == {"id": 1}

    asyncio.run(main())
    assert calls == [1]
    info = cachu.cache_info(get_user)
    assert (info.hits, info.misses, info.currsize) == (3, 1, 1)

    @cachu.cache(ttl=300, package=PACKAGE)
    def get_user(user_id: int) -> dict:  # noqa: F811 - the same key, from sync code
        raise AssertionError("must be answered from the cache")

    assert get_user(1) == {"id": 1}


def test_async_round_trips_are_one_per_hit_and_two_per_miss(app, redis_server):
    @cachu.cache(ttl=300, package=PACKAGE)
    async def square(x: int) -> int:
        return x * x

    async def main() -> tuple[int, int]:
        await square(2)  # connects and loads the scripts
        with top_level_commands(redis_server) as commands:
            assert await square(2) == 4
            await asyncio.sleep(0.2)
            hit = len(commands)
            assert await square(3) == 9
        return hit, len(commands) - hit

    hit, miss = asyncio.run(main())
    assert (hit, miss) == (1, 2)


def test_tasks_and_processes_compute_a_cold_key_once(app, tmp_path, this_python):
    count = coroutine_runs_on_a_cold_key(
        this_python, "aioredisapp", f"backend='redis', redis_url={app!r}", tmp_path
    )
    print(f"3 processes x 20 tasks, 1 cold key: the coroutine ran {count} time(s)")
    assert count == 1


def test_cancelling_the_computing_task_releases_the_lease(app, redis_server):
    runs = []

    @cachu.cache(ttl=300, package=PACKAGE)
    async def slow(x: int) -> int:
        runs.append(x)
        await asyncio.sleep(0.3)
        return x

    async def main() -> None:
        first = asyncio.create_task(slow(1))
        await asyncio.sleep(0.05)
        assert redis_server.client().get("lock:5m:slow|x=1") is not None
        waiters = [asyncio.create_task(slow(1)) for _ in range(3)]
        await asyncio.sleep(0.05)
        first.cancel()
        results = await asyncio.wait_for(asyncio.gather(*waiters), 5)
        assert results == [1, 1, 1]
        with pytest.raises(asyncio.CancelledError):
            await first

    asyncio.run(main())
    assert len(runs) == 2  # the cancelled run, then one waiter took over
    assert redis_server.client().get("lock:5m:slow|x=1") is None


def test_a_paused_server_does_not_stall_the_loop(app, redis_server):
    @cachu.cache(ttl=300, package=PACKAGE)
    async def value(x: int) -> int:
        return x

    async def main() -> int:
        await value(1)
        async with LoopTurns(pause=0.01) as turns:
            redis_server.client().execute_command("CLIENT", "PAUSE", 400)
            t0 = time.monotonic()
            assert await value(1) == 1
            assert time.monotonic() - t0 > 0.3
        return turns.count

    ticks = asyncio.run(main())
    assert ticks >= 20, f"the loop ran other tasks only {ticks} times while Redis was paused"


def test_a_silent_server_times_out_async_requests_without_stalling_the_loop(silent_server):
    """Requests sent at different moments to a server that never answers: each ends
    as a miss within the command timeout of the first, the loop keeps running."""
    cachu.configure(
        package="aiosilent",
        backend="redis",
        redis_url=f"redis://127.0.0.1:{silent_server}/0?socket_timeout=0.4&socket_connect_timeout=1",
    )

    @cachu.cache(ttl=60, package="aiosilent")
    async def f(x: int) -> int:
        return x

    async def main() -> tuple[list[float], int]:
        async with LoopTurns(pause=0.01) as turns:
            t0 = time.monotonic()

            async def call(i: int, delay: float) -> float:
                await asyncio.sleep(delay)
                assert await f(i) == i
                return time.monotonic() - t0

            calls = asyncio.gather(call(1, 0), call(2, 0.1), call(3, 0.2))
            done = await asyncio.wait_for(calls, 5)
        return done, turns.count

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        done, ticks = asyncio.run(main())
    assert all(0.35 <= d < 1.5 for d in done), done
    assert ticks >= 20, f"the loop ran other tasks only {ticks} times"


def test_redis_down_is_a_miss_for_async_calls(app, redis_server):
    calls = []

    @cachu.cache(ttl=300, package=PACKAGE)
    async def compute(x: int) -> int:
        calls.append(x)
        return x * 10

    async def main() -> None:
        assert await compute(1) == 10
        redis_server.stop()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                t0 = time.monotonic()
                results = [await compute(1) for _ in range(20)]
                assert time.monotonic() - t0 < 3
            assert results == [10] * 20
            assert len([w for w in caught if "unreachable" in str(w.message)]) == 1
            cachu.configure(package=PACKAGE, on_backend_error="raise")
            with pytest.raises(BackendError, match="unreachable"):
                await compute(2)
            cachu.configure(package=PACKAGE, on_backend_error="miss")
        finally:
            redis_server.start()
        deadline = time.monotonic() + 5
        while True:
            calls.clear()
            await compute(3)
            await compute(3)
            if calls == [3]:
                return
            assert time.monotonic() < deadline, "did not reconnect"
            await asyncio.sleep(0.2)

    asyncio.run(main())


def test_one_loop_per_thread_each_with_its_connection(app):
    @cachu.cache(ttl=300, package=PACKAGE)
    async def double(x: int) -> int:
        await asyncio.sleep(0.01)
        return 2 * x

    results: list[list[int]] = []

    def worker(offset: int) -> None:
        async def main() -> list[int]:
            return list(await asyncio.gather(*(double(offset + i) for i in range(20))))

        results.append(asyncio.run(main()))

    threads = [threading.Thread(target=worker, args=(k * 10,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(map(tuple, results)) == sorted(
        tuple(2 * (k * 10 + i) for i in range(20)) for k in range(4)
    )


def test_clear_async_backends_closes_the_loops_connections(app, redis_server):
    @cachu.cache(ttl=300, package=PACKAGE)
    async def value(x: int) -> int:
        return x

    async def main() -> tuple[int, int]:
        before = client_count(redis_server)
        await value(1)
        during = client_count(redis_server)
        await cachu.clear_async_backends(package=PACKAGE)
        await asyncio.sleep(0.1)
        after = client_count(redis_server)
        assert await value(1) == 1  # connects again
        return during - before, during - after

    opened, closed = asyncio.run(main())
    assert opened == 1 and closed == 1


def test_async_tls(tls_redis_server: RedisServer):
    cachu.configure(package="aiotls", backend="redis", redis_url=tls_redis_server.url)

    @cachu.cache(ttl=300, package="aiotls")
    async def secret(x: int) -> int:
        return x

    async def main() -> None:
        assert await secret(5) == 5
        assert await secret(5) == 5

    asyncio.run(main())
    assert cachu.cache_info(secret).hits == 1


def test_async_file_backend_runs_a_cold_key_once_and_writes_the_file(tmp_path):
    cachu.configure(package="aiofile", backend="file", file_dir=str(tmp_path))
    calls = []

    @cachu.cache(ttl=60, package="aiofile")
    async def value(x: int) -> int:
        calls.append(x)
        return x + 1

    async def main() -> list[int]:
        return list(await asyncio.gather(*(value(1) for _ in range(10))))

    assert asyncio.run(main()) == [2] * 10
    assert calls == [1]
    assert (tmp_path / "aiofile_cache1min.db").exists()
    keys = cachu.get_backend("file", package="aiofile", ttl=60).keys()
    assert keys == ["1m:value|x=1"]


@cachu.cache(ttl=300, package="perloop")
async def module_level(x: int) -> int:
    return x * 3


@pytest.fixture
def perloop(redis_url):
    cachu.configure(package="perloop", backend="redis", redis_url=redis_url)


@pytest.mark.asyncio
async def test_pytest_asyncio_loop_of_one_test(perloop):
    assert await module_level(1) == 3
    assert await module_level(1) == 3


@pytest.mark.asyncio
async def test_pytest_asyncio_loop_of_the_next_test(perloop):
    # A new event loop: the connection of the previous test's loop is not reused.
    assert await module_level(2) == 6
    assert await module_level(2) == 6
    assert cachu.cache_info(module_level).hits >= 1


def test_uvloop(app):
    """The event loop of most ASGI servers."""
    if sys.platform == "win32":
        pytest.skip("uvloop does not exist on Windows")
    try:
        import uvloop
    except ImportError:
        pytest.fail("uvloop is missing: pip install -e '.[test]'")

    @cachu.cache(ttl=300, package=PACKAGE)
    async def value(x: int) -> int:
        return x + 1

    async def main() -> list[int]:
        return [await value(1), await value(1), *await asyncio.gather(value(2), value(2))]

    assert uvloop.run(main()) == [2, 2, 3, 3]
    info = cachu.cache_info(value)
    assert (info.hits, info.misses) == (2, 2)  # the task that waited counts a hit


def test_a_forked_child_gets_its_own_runtime_and_connections(redis_url, tmp_path, this_python):
    """The parent's tokio threads and event-loop connections do not exist in a child
    of fork(): the child makes its own instead of waiting on them."""
    code = textwrap.dedent(
        f"""
        import asyncio, os, cachu
        cachu.configure(package='forkfile', backend='file', file_dir={str(tmp_path)!r})
        cachu.configure(package='forkredis', backend='redis', redis_url={redis_url!r})

        @cachu.cache(ttl=60, package='forkfile')
        async def on_file(x):
            return ('file', x, os.getpid())

        @cachu.cache(ttl=60, package='forkredis')
        async def on_redis(x):
            return ('redis', x, os.getpid())

        async def both(x):
            return [await on_file(x), await on_redis(x)]

        parent = asyncio.run(both(1))
        pid = os.fork()
        if pid == 0:
            got = asyncio.run(both(2))
            again = asyncio.run(both(1))
            os._exit(0 if got[0][2] == os.getpid() and again == parent else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        print('ok')
        """
    )
    assert run_python(this_python, code, timeout=60).strip() == "ok"


def test_password_and_database_from_the_url_sync_and_async(password_redis_server):
    """AUTH and SELECT: the sync client (redis-rs) and the asyncio one read the same URL."""
    import redis

    url = password_redis_server.url.replace("/0", "/3")
    cachu.configure(package="authdb", backend="redis", redis_url=url)

    @cachu.cache(ttl=300, package="authdb")
    def sync_value(x: int) -> int:
        return x

    @cachu.cache(ttl=300, package="authdb")
    async def async_value(x: int) -> int:
        return x

    assert sync_value(1) == 1
    assert asyncio.run(async_value(2)) == 2
    db3 = redis.Redis.from_url(url)
    assert sorted(db3.keys("*")) == [b"5m:async_value|x=2", b"5m:sync_value|x=1"]
    assert redis.Redis.from_url(url.replace("/3", "/0")).keys("*") == []
    # A wrong password is a backend failure: a miss and a warning, never a crash.
    cachu.configure(package="authdb", redis_url=url.replace("s3cret-pw", "wrong"))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert sync_value(5) == 5
        assert asyncio.run(async_value(6)) == 6
    assert b"5m:sync_value|x=5" not in db3.keys("*")


def test_a_failing_cache_if_releases_the_lease(app, redis_server):
    def refuse(result: int) -> bool:
        raise RuntimeError("cache_if failed")

    @cachu.cache(ttl=300, package=PACKAGE, cache_if=refuse)
    async def value(x: int) -> int:
        return x

    @cachu.cache(ttl=300, package=PACKAGE, cache_if=refuse)
    def sync_value(x: int) -> int:
        return x

    with pytest.raises(RuntimeError, match="cache_if failed"):
        asyncio.run(value(1))
    with pytest.raises(RuntimeError, match="cache_if failed"):
        sync_value(1)
    time.sleep(0.1)  # the async release runs in the background
    assert redis_server.client().keys("lock:*") == []


def test_large_values_and_many_concurrent_requests_on_one_connection(app):
    """Replies that span many reads, and many requests in flight on one pipelined
    connection, each answered with its own reply."""

    @cachu.cache(ttl=300, package=PACKAGE)
    async def blob(i: int) -> bytes:
        return bytes([i % 256]) * (3_000_000 if i == 0 else 1000 + i)

    async def main() -> None:
        first = await blob(0)
        assert await blob(0) == first  # a 3 MB reply
        results = await asyncio.gather(*(blob(i) for i in range(1, 200)))
        again = await asyncio.gather(*(blob(i) for i in range(1, 200)))
        for i, (a, b) in enumerate(zip(results, again, strict=True), start=1):
            assert a == b == bytes([i % 256]) * (1000 + i)

    asyncio.run(main())
    info = cachu.cache_info(blob)
    assert (info.hits, info.misses) == (200, 200)
