"""The cliff at expiry, and its absence: the worst caller latency of a hot key whose
function takes 200 ms, over a few TTL periods, with plain ``ttl`` and with each
freshness control, side by side in one run.

    python benches/bench_freshness.py [--redis URL] [--seconds 6] [--ttl 1]

Four threads call the key every 5 ms (sync), or four tasks of one loop (async). With
plain ``ttl`` a caller meets the computation at every expiry (the cliff: ~200 ms);
with ``stale_ttl`` or ``early_refresh`` no caller waits for it. The backend is memory
and file (SQLite), and Redis with ``--redis``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import cachu

COMPUTE = 0.2
CONTROLS: dict[str, dict[str, Any]] = {
    "plain ttl": {},
    "stale_ttl": {"stale_ttl": 30},
    "early_refresh=1": {"early_refresh": 1.0},
}


def sync_run(fn: Callable[[int], Any], seconds: float) -> list[float]:
    fn(1)
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def caller() -> None:
        mine = []
        while time.monotonic() < stop:
            t = time.perf_counter()
            fn(1)
            mine.append(time.perf_counter() - t)
            time.sleep(0.005)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def async_run(fn: Any, seconds: float) -> list[float]:
    async def main() -> list[float]:
        await fn(1)
        latencies: list[float] = []
        stop = time.monotonic() + seconds

        async def caller() -> None:
            while time.monotonic() < stop:
                t = time.perf_counter()
                await fn(1)
                latencies.append(time.perf_counter() - t)
                await asyncio.sleep(0.005)

        await asyncio.gather(*(caller() for _ in range(4)))
        return latencies

    return asyncio.run(main())


def measure(backend: str, mode: str, name: str, options: dict[str, Any], args: Any) -> str:
    package = f"bench_fresh_{backend}_{mode}_{name}".replace(" ", "_").replace("=", "_")
    cachu.configure(package=package, backend=backend, file_dir=args.file_dir, redis_url=args.redis)
    runs = [0]
    if mode == "sync":

        def body(x: int) -> int:
            runs[0] += 1
            time.sleep(COMPUTE)
            return x

        fn = cachu.cache(ttl=args.ttl, package=package, **options)(body)
        latencies = sync_run(fn, args.seconds)
    else:

        async def body(x: int) -> int:  # type: ignore[misc]
            runs[0] += 1
            await asyncio.sleep(COMPUTE)
            return x

        fn = cachu.cache(ttl=args.ttl, package=package, **options)(body)
        latencies = async_run(fn, args.seconds)
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)]
    slow = sum(1 for t in latencies[1:] if t > COMPUTE / 2)
    cachu.cache_clear(package=package)
    return (
        f"{backend:<7}{mode:<6}{name:<17}{max(latencies) * 1e3:>9.1f}{p99 * 1e3:>9.2f}"
        f"{statistics.median(latencies) * 1e6:>10.0f}{slow:>7}{runs[0]:>6}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", default=None, help="a Redis URL: measure Redis too")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--ttl", type=int, default=1)
    args = parser.parse_args()
    args.file_dir = tempfile.mkdtemp(prefix="cachu-bench-")
    backends = ["memory", "file"] + (["redis"] if args.redis else [])
    args.redis = args.redis or "redis://127.0.0.1:6379/0"
    print(
        f"a hot key, function {COMPUTE * 1e3:.0f} ms, ttl={args.ttl} s, "
        f"{args.seconds:.0f} s of 4 callers every 5 ms"
    )
    print(
        f"{'backend':<7}{'mode':<6}{'control':<17}{'worst ms':>9}{'p99 ms':>9}"
        f"{'median us':>10}{'waits':>7}{'runs':>6}"
    )
    for backend in backends:
        for mode in ("sync", "async"):
            for name, options in CONTROLS.items():
                print(measure(backend, mode, name, options, args), flush=True)


if __name__ == "__main__":
    main()
