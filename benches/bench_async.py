"""The async API side by side with its anchors, in one run.

    pip install -e '.[bench]' && python benches/bench_async.py

Memory: an awaited hit of get_user(123) (a small dict) for this cachu and moka-py's
async cache, with a plain ``await`` of a coroutine as the floor. Redis (on its own
redis-server, on a free loopback port): a raw ``redis.asyncio`` GET and GET + SET
(the floors), aiocache's Redis cache, and this cachu, hit and miss + store.
Microseconds per call, best of several rounds taken in turns (a round of each, then
the next), so that a slow spell of the machine falls on every row; read the ratios.
"""

from __future__ import annotations

import asyncio
import pickle
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench_redis import start_server

ROUNDS = 5


async def best_us(fn: Callable[[], Awaitable[Any]], n: int) -> float:
    return (await interleaved({"": fn}, n))[""]


async def interleaved(fns: dict[str, Callable[[], Awaitable[Any]]], n: int) -> dict[str, float]:
    """Best µs per call of each, measured in turns (round 1 of each, round 2 of each,
    ...), so that a slow spell of the machine falls on every row alike."""
    out = dict.fromkeys(fns, float("inf"))
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            t = time.perf_counter()
            for _ in range(n):
                await fn()
            out[name] = min(out[name], (time.perf_counter() - t) / n)
    return {name: v * 1e6 for name, v in out.items()}


def user(user_id: int) -> dict[str, Any]:
    return {"id": user_id, "name": "Ada Lovelace", "roles": ["admin", "dev"]}


async def memory() -> dict[str, float]:
    import cachu

    async def plain(user_id: int) -> dict[str, Any]:
        return user(user_id)

    cached = cachu.cache(ttl=300, package="bench_async")(plain)
    await cached(123)
    fns = {"await of a coroutine": lambda: plain(123), "cachu": lambda: cached(123)}
    try:
        import moka_py

        moka = moka_py.cached(maxsize=10_000, ttl=300)(plain)
        await moka(123)
        fns["moka-py"] = lambda: moka(123)
    except ImportError:
        print("(moka-py not installed)")
    return await interleaved(fns, 100_000)


async def redis_rows(url: str) -> dict[str, dict[str, float]]:
    import redis.asyncio as aioredis

    import cachu

    client = aioredis.Redis.from_url(url)
    value = pickle.dumps(user(123))
    await client.set("raw:user:123", value)
    counter = iter(range(10**9))

    async def get_set() -> None:
        key = f"raw:miss:{next(counter)}"
        await client.get(key)
        await client.set(key, value, ex=300)

    hits: dict[str, Callable[[], Awaitable[Any]]] = {
        "raw redis.asyncio": lambda: client.get("raw:user:123")
    }
    misses: dict[str, Callable[[], Awaitable[Any]]] = {"raw redis.asyncio": get_set}
    try:
        from aiocache import Cache, cached
        from aiocache.serializers import PickleSerializer

        host, port = url.split("//")[1].split("/")[0].split(":")

        @cached(
            ttl=300,
            cache=Cache.REDIS,
            endpoint=host,
            port=int(port),
            serializer=PickleSerializer(),
        )
        async def aio_user(user_id: int) -> dict[str, Any]:
            return user(user_id)

        await aio_user(123)
        hits["aiocache"] = lambda: aio_user(123)
        misses["aiocache"] = lambda: aio_user(next(counter) + 10**6)
    except ImportError:
        print("(aiocache not installed: pip install aiocache)")

    cachu.configure(package="bench_async_redis", backend="redis", redis_url=url)

    @cachu.cache(ttl=300, package="bench_async_redis")
    async def get_user(user_id: int) -> dict[str, Any]:
        return user(user_id)

    await get_user(123)
    hits["cachu"] = lambda: get_user(123)
    misses["cachu"] = lambda: get_user(next(counter) + 2 * 10**6)
    hit_us = await interleaved(hits, 3000)
    miss_us = await interleaved(misses, 1000)
    rows = {name: {"hit": hit_us[name], "miss": miss_us[name]} for name in hits}
    await client.aclose()
    return rows


def main() -> None:
    mem = asyncio.run(memory())
    floor = mem["await of a coroutine"]
    print(f"async memory hit, µs per call (best of {ROUNDS}); ratio to moka-py")
    for name, us in mem.items():
        ratio = f"{us / mem['moka-py']:.2f}" if "moka-py" in mem else "-"
        print(f"  {name:24}{us:8.3f}{ratio:>8}")
    print(f"  (the floor, a bare await of a coroutine: {floor:.3f})")

    proc, url = start_server()
    try:
        rows = asyncio.run(redis_rows(url))
    finally:
        proc.terminate()
        proc.wait()
    base = rows["raw redis.asyncio"]
    print("async Redis on loopback, µs per call; ratios to the raw GET and GET+SET")
    print(f"  {'':22}{'hit':>8}{'x GET':>8}{'miss+store':>12}{'x GET+SET':>11}")
    for name, r in rows.items():
        print(
            f"  {name:22}{r['hit']:8.1f}{r['hit'] / base['hit']:8.2f}"
            f"{r['miss']:12.1f}{r['miss'] / base['miss']:11.2f}"
        )


if __name__ == "__main__":
    main()
