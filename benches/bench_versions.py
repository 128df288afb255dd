"""The memory hit on each CPython version, in one run.

    python benches/bench_versions.py /path/to/python3.10 /path/to/python3.13 ...

Each interpreter must have this cachu installed (a wheel built for it). For each, in
ns per call (best of several rounds, rounds alternating between the interpreters so
that a noisy moment falls on all of them): a sync hit ``get_user(123)`` and its
anchor ``functools.lru_cache``; the keyword hit ``f(k, 'eu-west-1',
flags=('beta', 2))`` and lru_cache's; an async hit ``await get_user(123)`` and its
floor, ``await`` of a coroutine that returns at once.
"""

from __future__ import annotations

import json
import subprocess
import sys

ROUNDS = 5

SNIPPET = r"""
import asyncio, functools, json, sys, time
import cachu

def user(user_id):
    return {"id": user_id, "name": "Ada", "roles": ["admin"]}

def region(k, zone, flags=()):
    return k

hit = cachu.cache(ttl=300)(user)
kw = cachu.cache(ttl=300)(region)
lru = functools.lru_cache(maxsize=None)(user)
lru_kw = functools.lru_cache(maxsize=None)(region)

@cachu.cache(ttl=300)
async def ahit(user_id):
    return {"id": user_id, "name": "Ada", "roles": ["admin"]}

async def floor(user_id):
    return user_id

N = 100_000

def per_call(fn):
    t = time.perf_counter()
    for _ in range(N):
        fn()
    return (time.perf_counter() - t) / N * 1e9

async def per_await(coro_fn):
    t = time.perf_counter()
    for _ in range(N):
        await coro_fn(123)
    return (time.perf_counter() - t) / N * 1e9

hit(123); lru(123); kw(1, "eu-west-1", flags=("beta", 2)); lru_kw(1, "eu-west-1", flags=("beta", 2))
out = {
    "hit": per_call(lambda: hit(123)),
    "lru hit": per_call(lambda: lru(123)),
    "kw hit": per_call(lambda: kw(1, "eu-west-1", flags=("beta", 2))),
    "lru kw hit": per_call(lambda: lru_kw(1, "eu-west-1", flags=("beta", 2))),
}
async def main():
    await ahit(123)
    out["async hit"] = await per_await(ahit)
    out["await floor"] = await per_await(floor)
asyncio.run(main())
print(json.dumps(out))
"""


def version(python: str) -> str:
    return subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def main() -> None:
    pythons = sys.argv[1:] or [sys.executable]
    best: dict[str, dict[str, float]] = {}
    for _ in range(ROUNDS):
        for py in pythons:
            got = json.loads(
                subprocess.run(
                    [py, "-c", SNIPPET], capture_output=True, text=True, check=True
                ).stdout
            )
            mine = best.setdefault(py, {})
            for k, v in got.items():
                mine[k] = min(mine.get(k, float("inf")), v)
    print("| CPython | hit `get_user(123)` | keyword hit | async hit | `await` floor |")
    print("|---|---|---|---|---|")
    for py in pythons:
        b = best[py]
        print(
            f"| {version(py)} | {b['hit']:.0f} ({b['hit'] / b['lru hit']:.1f}× lru_cache) "
            f"| {b['kw hit']:.0f} ({b['kw hit'] / b['lru kw hit']:.1f}×) "
            f"| {b['async hit']:.0f} ({b['async hit'] / b['await floor']:.1f}× floor) "
            f"| {b['await floor']:.0f} |"
        )


if __name__ == "__main__":
    main()
