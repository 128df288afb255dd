"""Hit ratio of bounded caches: synthetic traces replayed through each library's
decorator, side by side in one run.

    python benches/bench_hit_ratio.py [--accesses 300000] [--sizes 1000,10000,100000]

Traces (seeded, reproducible), over 1M keys:
- ``zipf-0.8``, ``zipf-1.0``: Zipf-distributed keys, alpha 0.8 and 1.0;
- ``zipf-0.8+scans``, ``zipf-1.0+scans``: the same, with a scan of 5,000 cold keys
  (never seen again) after every 20,000 accesses;
- ``shifting``: 80% of accesses to a hot set of 2,000 keys that moves every 50,000
  accesses, 20% uniform.

Reports the hit ratio (1 - computations / accesses) and ns per access for cachu
(``memory_maxsize``), theine (W-TinyLFU), moka-py (TinyLFU), cachetools' LRU, cachebox's
LRU and functools.lru_cache (LRU, the floor of per-access cost).
"""

from __future__ import annotations

import argparse
import bisect
import functools
import itertools
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import cachu

KEYS = 1_000_000


def zipf(alpha: float, n: int, rng: random.Random) -> list[int]:
    weights = itertools.accumulate(1.0 / (k**alpha) for k in range(1, KEYS + 1))
    cumulative = list(weights)
    total = cumulative[-1]
    # Ranks are shuffled onto keys, so that hot keys are not the small integers.
    perm = list(range(KEYS))
    rng.shuffle(perm)
    return [perm[bisect.bisect_left(cumulative, rng.random() * total)] for _ in range(n)]


def with_scans(trace: list[int], rng: random.Random) -> list[int]:
    out: list[int] = []
    cold = KEYS  # keys beyond the Zipf range: never repeated
    for i, key in enumerate(trace):
        out.append(key)
        if i % 20_000 == 19_999:
            out.extend(range(cold, cold + 5_000))
            cold += 5_000
    return out[: len(trace)]


def shifting(n: int, rng: random.Random) -> list[int]:
    out = []
    for i in range(n):
        if rng.random() < 0.8:
            base = (i // 50_000) * 2_000
            out.append(base + rng.randrange(2_000))
        else:
            out.append(rng.randrange(KEYS))
    return out


def traces(n: int) -> Iterator[tuple[str, list[int]]]:
    for alpha in (0.8, 1.0):
        base = zipf(alpha, n, random.Random(int(alpha * 10)))
        yield f"zipf-{alpha}", base
        yield f"zipf-{alpha}+scans", with_scans(base, random.Random(7))
    yield "shifting", shifting(n, random.Random(11))


def cachu_cached(size: int) -> Callable[[Callable[[int], int]], Any]:
    package = f"hit_ratio_{size}_{time.monotonic_ns()}"
    cachu.configure(package=package, memory_maxsize=size, memory_copy=False)
    return cachu.cache(ttl=86_400, package=package)


def theine_cached(size: int) -> Callable[[Callable[[int], int]], Any]:
    from theine import Memoize

    def decorate(fn: Callable[[int], int]) -> Any:
        memo = Memoize(size, None)(fn)
        memo.key(lambda x: str(x))
        return memo

    return decorate


def moka_cached(size: int) -> Callable[[Callable[[int], int]], Any]:
    import moka_py

    return moka_py.cached(maxsize=size)


def cachetools_cached(size: int) -> Callable[[Callable[[int], int]], Any]:
    import cachetools

    return lambda fn: cachetools.cached(cachetools.LRUCache(maxsize=size))(fn)


def cachebox_cached(size: int) -> Callable[[Callable[[int], int]], Any]:
    import cachebox

    return lambda fn: cachebox.cached(cachebox.LRUCache(maxsize=size))(fn)


def lru_cached(size: int) -> Callable[[Callable[[int], int]], Any]:
    return functools.lru_cache(maxsize=size)


LIBRARIES: dict[str, Callable[[int], Callable[[Callable[[int], int]], Any]]] = {
    "cachu": cachu_cached,
    "theine": theine_cached,
    "moka-py": moka_cached,
    "cachetools LRU": cachetools_cached,
    "cachebox LRU": cachebox_cached,
    "lru_cache": lru_cached,
}


def replay(make: Callable[[int], Any], size: int, trace: list[int]) -> tuple[float, float]:
    misses = [0]

    def compute(x: int) -> int:
        misses[0] += 1
        return x

    fn = make(size)(compute)
    start = time.perf_counter()
    for key in trace:
        fn(key)
    took = time.perf_counter() - start
    return 1 - misses[0] / len(trace), took / len(trace) * 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accesses", type=int, default=300_000)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--only", default="", help="comma-separated libraries")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    libraries = {
        name: make
        for name, make in LIBRARIES.items()
        if not args.only or name in args.only.split(",")
    }
    print(f"{args.accesses} accesses per trace; hit ratio (ns per access)")
    print(f"{'trace':<16}{'size':>7}" + "".join(f"{name:>18}" for name in libraries))
    for name, trace in traces(args.accesses):
        for size in sizes:
            cells = []
            for make in libraries.values():
                ratio, ns = replay(make, size, trace)
                cells.append(f"{ratio:.3f} ({ns:4.0f})")
            print(f"{name:<16}{size:>7}" + "".join(f"{c:>18}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
