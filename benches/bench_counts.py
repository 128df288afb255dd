"""Instructions and last-level cache misses per call, counted by valgrind's cachegrind:
figures that a noisy machine cannot blur.

    python benches/bench_counts.py calls    # a hit, a keyword hit, a miss + store
    python benches/bench_counts.py access   # an access of a bounded cache, Zipf 1.0

Each figure is the difference between a run of N and one of 2N calls, divided by N, so
that start-up and set-up cancel out (the Python loop around the call is included).
``PYTHONHASHSEED=0``; the objects of the set-up are frozen out of the collector.

``calls``: instructions and last-level misses (a 2 MB, 16-way last-level cache
simulated) per call, cachu (with and without ``memory_copy``) beside
``functools.lru_cache``. ``access``: the same per access of 300,000 seeded Zipf 1.0
accesses over 1M keys (``bench_hit_ratio.py``'s trace), through ``memory_maxsize`` at
10k and 100k entries with ``memory_copy=False``, beside ``lru_cache(maxsize=...)``.
Needs ``valgrind`` (``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import array
import functools
import gc
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

# The script's own directory is first on sys.path: its neighbours' workloads are shared.
from bench_memory import user

LL = "--LL=2097152,16,64"
ACCESSES = 300_000


def region(user_id: int, zone: str, flags: tuple[str, int] = ("", 0)) -> int:
    return user_id


def decorator(lib: str, package: str) -> Callable[[Callable[..., Any]], Any]:
    if lib == "lru_cache":
        return functools.lru_cache(maxsize=None)
    import cachu

    copy = lib == "cachu"
    cachu.configure(package=package, memory_copy=copy)
    return cachu.cache(ttl=300, package=package)


def call_loop(lib: str, shape: str, n: int) -> None:
    """``n`` calls of one shape, after the set-up."""
    deco = decorator(lib, f"counts_{shape.replace(' ', '_')}")
    if shape == "miss + store":
        g = deco(user)
        g(-1)
        gc.freeze()
        for i in range(n):
            g(i)
        return
    if shape == "keyword hit":
        h = deco(region)
        h(5, "eu-west-1", flags=("beta", 2))
        gc.freeze()
        for _ in range(n):
            h(5, "eu-west-1", flags=("beta", 2))
        return
    f = deco(user)
    f(123)
    f(user_id=7, verbose=True)
    gc.freeze()
    if shape == "hit":
        for _ in range(n):
            f(123)
    else:
        for _ in range(n):
            f(user_id=7, verbose=True)


def access_loop(lib: str, size: int, trace_file: str, n: int) -> None:
    """The first ``n`` accesses of the trace, through a cache of ``size`` entries."""
    keys = array.array("q")
    with open(trace_file, "rb") as f:
        keys.frombytes(f.read())
    if lib == "lru_cache":
        deco: Callable[[Callable[..., Any]], Any] = functools.lru_cache(maxsize=size)
    else:
        import cachu

        cachu.configure(package="counts_access", memory_maxsize=size, memory_copy=False)
        deco = cachu.cache(ttl=3600, package="counts_access")

    @deco
    def load(k: int) -> int:
        return k

    gc.freeze()
    for i in range(n):
        load(keys[i])


def counted(argv: list[str], cache_sim: bool) -> tuple[int, int]:
    """Instructions and last-level misses of one run of this script with ``argv``."""
    with tempfile.NamedTemporaryFile(suffix=".cg") as out:
        cmd = ["valgrind", "--tool=cachegrind", f"--cachegrind-out-file={out.name}"]
        cmd += ["--cache-sim=yes", LL] if cache_sim else ["--cache-sim=no"]
        env = dict(os.environ, PYTHONHASHSEED="0")
        cmd += [sys.executable, __file__, "--child", *argv]
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        events: list[str] = []
        totals: list[int] = []
        with open(out.name) as f:
            for line in f:
                if line.startswith("events:"):
                    events = line.split()[1:]
                elif line.startswith("summary:"):
                    totals = [int(v) for v in line.split()[1:]]
    got = dict(zip(events, totals, strict=True))
    misses = sum(got.get(e, 0) for e in ("ILmr", "DLmr", "DLmw"))
    return got["Ir"], misses


def per_call(argv: list[str], n: int, cache_sim: bool) -> tuple[float, float]:
    """Instructions and last-level misses of one call: (run of 2n - run of n) / n."""
    ir1, ll1 = counted([*argv, str(n)], cache_sim)
    ir2, ll2 = counted([*argv, str(2 * n)], cache_sim)
    return (ir2 - ir1) / n, max(ll2 - ll1, 0) / n


def zipf_trace(path: str) -> None:
    from bench_hit_ratio import zipf

    keys = array.array("q", zipf(1.0, ACCESSES, random.Random(1)))
    with open(path, "wb") as f:
        keys.tofile(f)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        what, *rest = sys.argv[2:]
        if what == "call":
            call_loop(rest[0], rest[1], int(rest[2]))
        else:
            access_loop(rest[0], int(rest[1]), rest[2], int(rest[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["calls", "access"])
    parser.add_argument("--sizes", default="10000,100000")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("bench_counts.py needs valgrind: apt-get install valgrind")
    if args.what == "calls":
        libs = ["lru_cache", "cachu", "cachu no-copy"]
        print("instructions per call (last-level misses)")
        print(f"{'':<18}" + "".join(f"{lib:>20}" for lib in libs))
        for shape in ["hit", "hit with kwargs", "keyword hit", "miss + store"]:
            n = 50_000 if shape == "miss + store" else 20_000
            counts = [per_call(["call", lib, shape], n, True) for lib in libs]
            cells = "".join(f"{f'{ir:,.0f} ({ll:.2f})':>20}" for ir, ll in counts)
            print(f"{shape:<18}" + cells)
        return
    with tempfile.TemporaryDirectory() as d:
        trace = os.path.join(d, "zipf-1.0")
        zipf_trace(trace)
        print("per access, Zipf 1.0: instructions / last-level misses")
        for size in (int(s) for s in args.sizes.split(",")):
            for lib in ["lru_cache", "cachu"]:
                half = ACCESSES // 2
                ir, ll = per_call(["access", lib, str(size), trace], half, True)
                print(f"  {size:>7,} entries  {lib:<10} {ir:>8,.0f} / {ll:.2f}")


if __name__ == "__main__":
    main()
