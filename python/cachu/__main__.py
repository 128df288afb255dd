"""``python -m cachu``: ``demo`` (a short tour), ``bench`` (a quick timing), and the
operator's ``keys``, ``stats``, ``get`` and ``clear`` on a cache directory or a Redis
server (``python -m cachu keys --help``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from typing import Any

import cachu
from cachu import _cli


def demo() -> int:
    """Decorates a few functions and shows what the cache does with them."""
    cachu.configure(backend="memory", key_prefix="demo:")
    calls: list[int] = []

    @cachu.cache(ttl=300, tag="users")
    def get_user(user_id: int) -> dict[str, Any]:
        calls.append(user_id)
        return {"id": user_id, "name": f"user {user_id}"}

    print("cachu", cachu.__version__, "- a tour")
    print("\n1. The first call computes, the second is a hit:")
    get_user(123)
    get_user(123)
    print(f"   function ran {len(calls)} time(s); key = {get_user.cache_key(123)!r}")
    print(f"   {cachu.cache_info(get_user)}")

    print("\n2. A caller that mutates its result does not change the cache:")
    user = get_user(123)
    user["name"] = "changed by the caller"
    print(f"   cached value is still {get_user(123)!r}")

    print("\n3. Helpers: .get / .set / .invalidate / .refresh / .original")
    get_user.set({"id": 7, "name": "set by hand"}, user_id=7)
    print(f"   get_user.get(user_id=7) = {get_user.get(user_id=7)!r}")
    get_user.invalidate(user_id=7)
    print(f"   after invalidate: {get_user.get(default='<nothing>', user_id=7)!r}")

    print("\n4. Per-call control and conditional caching:")
    get_user(123, _overwrite_cache=True)
    print(f"   _overwrite_cache ran the function again: {len(calls)} calls so far")

    @cachu.cache(ttl=60, cache_if=lambda r: r is not None)
    def find(email: str) -> dict[str, str] | None:
        return None if "@" not in email else {"email": email}

    find("nobody")
    find("a@b.c")
    print(f"   only results that are not None are kept: currsize={cachu.cache_info(find).currsize}")

    print("\n5. Tags clear groups of entries:")
    for uid in range(5):
        get_user(uid)
    print(f"   before: {cachu.cache_info(get_user).currsize} users cached")
    cleared = cachu.cache_clear(tag="users", backend="memory", ttl=300)
    print(
        f"   cache_clear(tag='users') removed {cleared}; now {cachu.cache_info(get_user).currsize}"
    )

    print("\n6. The file backend persists entries in SQLite:")
    with tempfile.TemporaryDirectory() as d:
        cachu.configure(file_dir=d)

        @cachu.cache(ttl=3600, backend="file")
        def square(x: int) -> int:
            return x * x

        square(12)
        print(f"   square(12) = {square(12)}, {cachu.cache_info(square)}")
        cachu.clear_backends()

    print("\n7. disable() turns every cache off (handy in tests):")
    cachu.disable()
    before = len(calls)
    get_user(123)
    cachu.enable()
    print(f"   while disabled the function ran: {len(calls) - before} time(s)")

    print("\n8. Coroutine functions: the same decorator, awaited")

    @cachu.cache(ttl=300)
    async def fetch_user(user_id: int) -> dict[str, Any]:
        await asyncio.sleep(0.05)  # the database
        return {"id": user_id}

    async def tour() -> None:
        await asyncio.gather(*(fetch_user(5) for _ in range(10)))
        print(f"   10 tasks at once ran it once: {cachu.cache_info(fetch_user)}")
        t = time.perf_counter()
        for _ in range(10_000):
            await fetch_user(5)
        per_hit = (time.perf_counter() - t) / 10_000 * 1e6
        print(f"   a hit is awaited without a task switch: {per_hit:.2f} us")

    asyncio.run(tour())
    print("\nDone.")
    return 0


def bench(n: int) -> int:
    """Times a memory hit next to functools.lru_cache."""
    import functools

    @functools.cache
    def lru(user_id: int) -> dict[str, int]:
        return {"id": user_id}

    @cachu.cache(ttl=300)
    def cached(user_id: int) -> dict[str, int]:
        return {"id": user_id}

    def timeit(f: Any) -> float:
        f(123)
        t = time.perf_counter()
        for _ in range(n):
            f(123)
        return (time.perf_counter() - t) / n * 1e9

    a, b = timeit(lru), timeit(cached)
    print(f"lru_cache hit: {a:7.0f} ns\ncachu hit:     {b:7.0f} ns  ({b / a:.1f}x lru_cache)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cachu", description=__doc__)
    parser.add_argument("--version", action="version", version=f"cachu {cachu.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="a short tour of the library")
    b = sub.add_parser("bench", help="time a memory hit next to functools.lru_cache")
    b.add_argument("-n", type=int, default=200_000)
    _cli.add_commands(sub)
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo()
    if args.command == "bench":
        return bench(args.n)
    return _cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
