"""Side-by-side benchmarks of cachu against the anchors, in one run.

    pip install -e '.[bench]' && python benches/bench_memory.py

Prints ns per call (best of several rounds) and the ratio to functools.lru_cache, for:
a hit of get_user(123) returning a small dict; a hit with keyword arguments; a miss
plus store; hits from two threads (calls per second); memory per 100 000 entries; and
the file backend against diskcache. The machine is noisy: read the ratios.
Set CACHU_REFERENCE_PYTHON to an interpreter with cachu==0.2.7 to add the original.

    python benches/bench_memory.py --turns 9

measures the three call shapes in turns instead: each round times every library once
per shape, and each ratio to lru_cache is of the same round (median and min-max over
the rounds), so that a machine whose speed drifts compares like moments.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

ROUNDS = 5


def best_ns(fn: Callable[[], Any], n: int) -> float:
    """Best-of-ROUNDS time of one call of ``fn``, in ns."""
    best = float("inf")
    for _ in range(ROUNDS):
        t = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter_ns() - t) / n)
    return best


def make_memory_caches() -> dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]]:
    """Decorator factories of each library, each a TTL cache of 300 s where it has one."""
    import cachu

    cachu.configure(package="bench_refs", memory_copy=False)
    out: dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]] = {
        "lru_cache": functools.lru_cache(maxsize=None),
        "cachu": cachu.cache(ttl=300, package="bench"),
        # Hands out the cached objects themselves, as lru_cache and the others do.
        "cachu no-copy": cachu.cache(ttl=300, package="bench_refs"),
    }
    try:
        import cachetools

        out["cachetools"] = lambda f: cachetools.cached(cachetools.TTLCache(10**6, 300))(f)
    except ImportError:
        pass
    try:
        import cachebox

        out["cachebox"] = lambda f: cachebox.cached(cachebox.TTLCache(10**6, 300))(f)
    except ImportError:
        pass
    try:
        import moka_py

        out["moka-py"] = lambda f: moka_py.cached(maxsize=10**6, ttl=300)(f)
    except ImportError:
        pass
    return out


def user(user_id: int, verbose: bool = False) -> dict[str, Any]:
    return {"id": user_id, "name": "Ada", "active": True}


def two_thread_hits_per_s(h: Callable[..., Any], seconds: float = 0.5) -> float:
    """Calls per second of a hit, from two threads at once."""
    h(1)
    stop = time.perf_counter() + seconds
    counts = [0, 0]

    def spin(i: int) -> None:
        n = 0
        while time.perf_counter() < stop:
            for _ in range(1000):
                h(1)
            n += 1000
        counts[i] = n

    threads = [threading.Thread(target=spin, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / seconds


def bench_one(
    name: str, deco: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> dict[str, float]:
    f = deco(user)
    f(123)
    f(user_id=7, verbose=True)
    g = deco(user)
    counter = iter(range(10**9))
    return {
        "hit": best_ns(lambda: f(123), 200_000),
        "hit kwargs": best_ns(lambda: f(user_id=7, verbose=True), 200_000),
        "miss+store": best_ns(lambda: g(next(counter)), 50_000),
        "2-thread hits/s": two_thread_hits_per_s(deco(user)),
        "MB per 100k": memory_per_100k(name),
    }


def bench_memory() -> dict[str, dict[str, float]]:
    results = {name: bench_one(name, deco) for name, deco in make_memory_caches().items()}
    gc.collect()
    return results


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_per_100k(name: str) -> float:
    """Resident memory added by 100 000 cached entries, measured in a fresh process."""
    out = subprocess.run(
        [sys.executable, __file__, "--memory", name], capture_output=True, text=True
    )
    return float(out.stdout.strip() or "nan")


def measure_memory(name: str) -> None:
    deco = make_memory_caches()[name]
    m = deco(user)
    m(-1)
    gc.collect()
    before = rss_bytes()
    for i in range(100_000):
        m(i)
    gc.collect()
    print((rss_bytes() - before) / 1e6)


def bench_file() -> dict[str, dict[str, float]]:
    import cachu

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as d:
        cachu.configure(file_dir=d, package="benchfile")
        f = cachu.cache(ttl=300, backend="file", package="benchfile")(user)
        f(123)
        counter = iter(range(10**9))
        results["cachu file"] = {
            "hit": best_ns(lambda: f(123), 20_000),
            "miss+store": best_ns(lambda: f(next(counter)), 2_000),
        }
        try:
            import diskcache
        except ImportError:
            return results
        dc = diskcache.Cache(os.path.join(d, "diskcache"))
        g = dc.memoize(expire=300)(user)
        g(123)
        counter2 = iter(range(10**9))
        results["diskcache"] = {
            "hit": best_ns(lambda: g(123), 20_000),
            "miss+store": best_ns(lambda: g(next(counter2)), 2_000),
        }
        dc.close()
    return results


REFERENCE_SNIPPET = """
import json, tempfile, time
from cachu.config import _registry
from cachu import cache
def best(fn, n):
    b = float('inf')
    for _ in range(5):
        t = time.perf_counter_ns()
        for _ in range(n):
            fn()
        b = min(b, (time.perf_counter_ns() - t) / n)
    return b
def user(user_id, verbose=False):
    return {'id': user_id, 'name': 'Ada', 'active': True}
f = cache(ttl=300, backend='memory', package='ref')(user)
f(123)
out = {'memory': {'hit': best(lambda: f(123), 20000)}}
c = iter(range(10**9))
g = cache(ttl=300, backend='memory', package='ref')(user)
out['memory']['miss+store'] = best(lambda: g(next(c)), 5000)
d = tempfile.mkdtemp()
_registry.configure(package='ref', file_dir=d)
h = cache(ttl=300, backend='file', package='ref')(user)
h(123)
c2 = iter(range(10**9))
out['file'] = {'hit': best(lambda: h(123), 2000), 'miss+store': best(lambda: h(next(c2)), 500)}
print(json.dumps(out))
"""


def bench_reference() -> dict[str, dict[str, float]] | None:
    py = os.environ.get("CACHU_REFERENCE_PYTHON")
    if not py:
        return None
    out = subprocess.run([py, "-c", REFERENCE_SNIPPET], capture_output=True, text=True)
    if out.returncode != 0:
        print("reference run failed:", out.stderr, file=sys.stderr)
        return None
    return json.loads(out.stdout)


def main() -> None:
    mem = bench_memory()
    base = mem["lru_cache"]
    cols = ["hit", "hit kwargs", "miss+store"]
    print(
        f"{'memory (ns/call)':<18}"
        + "".join(f"{c:>22}" for c in cols)
        + f"{'2-thread hits/s':>22}{'MB/100k':>10}"
    )
    for name, row in mem.items():
        cells = "".join(f"{row[c]:>10.0f} ({row[c] / base[c]:>5.1f}x)     " for c in cols)
        thr = row["2-thread hits/s"]
        ratio = thr / base["2-thread hits/s"]
        print(f"{name:<18}{cells}{thr / 1e6:>9.2f} M ({ratio:.2f}x){row['MB per 100k']:>9.1f}")
    ref = bench_reference()
    if ref:
        r = ref["memory"]
        print(
            f"{'cachu 0.2.7':<18}{r['hit']:>10.0f} ({r['hit'] / base['hit']:>5.1f}x)     "
            f"{'':>22}{r['miss+store']:>10.0f} ({r['miss+store'] / base['miss+store']:>5.1f}x)"
        )
    print()
    files = bench_file()
    if ref:
        files["cachu 0.2.7 file"] = ref["file"]
    anchor = files.get("diskcache")
    print(f"{'file (us/call)':<18}{'hit':>22}{'miss+store':>22}")
    for name, row in files.items():
        cells = ""
        for c in ("hit", "miss+store"):
            ratio = f"({row[c] / anchor[c]:.2f}x diskcache)" if anchor else ""
            cells += f"{row[c] / 1000:>8.1f} {ratio:<13}"
        print(f"{name:<18}{cells}")


def in_turns(rounds: int) -> None:
    """Each shape timed for every library once per round; ratios of the same round."""
    caches = make_memory_caches()
    ratios: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for shape in ("hit", "hit kwargs", "miss+store"):
            times = {}
            for name, deco in caches.items():
                f = deco(user)
                f(123)
                f(user_id=7, verbose=True)
                counter = iter(range(10**9))
                call = {
                    "hit": lambda f=f: f(123),
                    "hit kwargs": lambda f=f: f(user_id=7, verbose=True),
                    "miss+store": lambda f=f, c=counter: f(next(c)),
                }[shape]
                # As many calls as the table above makes of each shape.
                times[name] = best_ns(call, 50_000 if shape == "miss+store" else 200_000)
            for name, t in times.items():
                ratios.setdefault((name, shape), []).append(t / times["lru_cache"])
    print(f"ratio to lru_cache, {rounds} rounds: median (min-max)")
    for name in caches:
        if name == "lru_cache":
            continue
        cells = []
        for shape in ("hit", "hit kwargs", "miss+store"):
            r = sorted(ratios[(name, shape)])
            cells.append(f"{shape} {r[len(r) // 2]:.2f}x ({r[0]:.2f}-{r[-1]:.2f})")
        print(f"{name:<14} " + "   ".join(cells))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory":
        measure_memory(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "--turns":
        in_turns(int(sys.argv[2]))
    else:
        main()
