"""Redis Cluster and the near cache side by side with their anchors, in one run.

    pip install -e '.[bench]' && python benches/bench_scale_out.py

Starts a redis-server and a 3-master Redis Cluster (redis-server and redis-cli on PATH)
on loopback ports, then times, in µs per call, rounds of: a hit and a miss + store of
``get_user(n)`` on the single server and on the cluster, sync and async; a memory hit
and a near-cache hit (``near_cache=True`` in front of the single server). Each round
times every row once, so that the ratios (cluster / single node, near / memory) are
of the same moments; reported as the median ratio and its spread over the rounds.
Last, the delay until another process sees a change (1,000 ``.set``\\ s, each seen
before the next): p50 and p99.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cachu

ROUNDS = 7
HITS = 3000
MISSES = 800


def free_port(limit: int = 55535) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port <= limit:
            return port


def wait_port(port: int) -> None:
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"nothing listens on {port}")


def server(port: int, workdir: Path, *extra: str) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if not binary:
        sys.exit("bench_scale_out needs redis-server and redis-cli on PATH")
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir),
         *extra],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    wait_port(port)
    return proc


def start_cluster(root: Path) -> tuple[list[subprocess.Popen[bytes]], str]:
    ports = [free_port() for _ in range(3)]
    procs = [
        server(p, root / str(p), "--cluster-enabled", "yes", "--cluster-config-file", "n.conf")
        for p in ports
    ]
    subprocess.run(
        ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
         "--cluster-yes"],
        check=True, capture_output=True,
    )  # fmt: skip
    import redis

    for _ in range(200):
        infos = [redis.Redis(port=p).execute_command("CLUSTER", "INFO") for p in ports]
        if all(b"cluster_state:ok" in i for i in infos):
            break
        time.sleep(0.05)
    return procs, f"redis+cluster://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/0"


def per_call_us(fn: Callable[[], Any], n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


def functions(package: str) -> tuple[Any, Any]:
    @cachu.cache(ttl=300, package=package)
    def get_user(user_id: int) -> dict[str, Any]:
        return {"id": user_id, "name": "Ada Lovelace", "roles": ["admin", "dev"]}

    @cachu.cache(ttl=300, package=package)
    async def get_user_async(user_id: int) -> dict[str, Any]:
        return {"id": user_id, "name": "Ada Lovelace", "roles": ["admin", "dev"]}

    return get_user, get_user_async


def rows(single: str, cluster: str) -> dict[str, Callable[[], float]]:
    """name -> a function that times one round of it."""
    cachu.configure(package="b_single", backend="redis", redis_url=single)
    cachu.configure(package="b_cluster", backend="redis", redis_url=cluster)
    cachu.configure(package="b_near", backend="redis", redis_url=single, near_cache=True)
    cachu.configure(package="b_memory", backend="memory")
    loop = asyncio.new_event_loop()
    counter = iter(range(10, 10**9))
    out: dict[str, Callable[[], float]] = {}
    for name in ("single", "cluster", "near", "memory"):
        sync, coro = functions(f"b_{name}")
        sync(1)
        loop.run_until_complete(coro(1))
        out[f"{name} hit"] = lambda f=sync: per_call_us(lambda: f(1), HITS)

        async def hits(c: Any = coro) -> None:
            for _ in range(HITS):
                await c(1)

        def timed_async(run: Any = hits) -> float:
            t = time.perf_counter()
            loop.run_until_complete(run())
            return (time.perf_counter() - t) / HITS * 1e6

        out[f"{name} async hit"] = timed_async
        if name in ("single", "cluster"):
            out[f"{name} miss"] = lambda f=sync: per_call_us(lambda: f(next(counter)), MISSES)
    # The near tier serves once its tracking connection is up.
    near, _ = functions("b_near")
    deadline = time.monotonic() + 10
    while near.cache_info().near_hits == 0 and time.monotonic() < deadline:
        near(1)
        time.sleep(0.02)
    return out


READER = textwrap.dedent(
    """
    import json, sys, time, cachu, redis
    url = sys.argv[1]
    cachu.configure(package="r", backend="redis", redis_url=url, near_cache=True)
    r = redis.Redis.from_url(url)
    @cachu.cache(ttl=300, package="r")
    def f(x):
        return {"v": -1, "t": 0.0}
    last, delays = None, []
    while True:
        v = f(1)
        if v["v"] != last:
            last = v["v"]
            if v["t"]:
                delays.append(time.time() - v["t"])
            r.set("ack", last)
            if last == int(sys.argv[2]):
                break
    print(json.dumps(delays))
    """
)


def invalidation_delays(url: str, changes: int = 1000) -> list[float]:
    import redis

    control = redis.Redis.from_url(url)
    cachu.configure(package="w", backend="redis", redis_url=url)

    @cachu.cache(ttl=300, package="w")
    def f(x: int) -> dict[str, Any]:
        return {"v": -1, "t": 0.0}

    reader = subprocess.Popen(
        [sys.executable, "-c", READER, url, str(changes)], stdout=subprocess.PIPE, text=True
    )

    def acked(v: int) -> None:
        while control.get("ack") != str(v).encode():
            time.sleep(0.0002)

    f.set({"v": 0, "t": time.time()}, 1)
    acked(0)
    time.sleep(0.5)
    for v in range(1, changes + 1):
        f.set({"v": v, "t": time.time()}, 1)
        acked(v)
    out, _ = reader.communicate(timeout=60)
    return sorted(json.loads(out))


def ratio_line(name: str, num: list[float], den: list[float]) -> str:
    ratios = sorted(a / b for a, b in zip(num, den, strict=True))
    return (
        f"{name:<28} {statistics.median(ratios):5.2f}x  (rounds {ratios[0]:.2f}-{ratios[-1]:.2f})"
    )


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="cachu-bench-scale-"))
    port = free_port()
    procs = [server(port, root / "single")]
    try:
        more, cluster = start_cluster(root / "cluster")
        procs += more
        single = f"redis://127.0.0.1:{port}/0"
        table = rows(single, cluster)
        times: dict[str, list[float]] = {name: [] for name in table}
        for _ in range(ROUNDS):
            for name, run in table.items():
                times[name].append(run())
        print(f"µs per call, median of {ROUNDS} rounds (each round times every row once)")
        for name, ts in times.items():
            print(f"  {name:<24} {statistics.median(ts):8.2f}")
        print("ratios, per round")
        for a, b in [
            ("cluster hit", "single hit"),
            ("cluster miss", "single miss"),
            ("cluster async hit", "single async hit"),
            ("near hit", "memory hit"),
            ("near async hit", "memory async hit"),
            ("near hit", "single hit"),
        ]:
            print("  " + ratio_line(f"{a} / {b}", times[a], times[b]))
        delays = invalidation_delays(single)
        n = len(delays)
        print(
            f"invalidation seen by another process ({n} changes): "
            f"p50 {delays[n // 2] * 1e3:.2f} ms, p99 {delays[int(n * 0.99)] * 1e3:.2f} ms, "
            f"max {delays[-1] * 1e3:.2f} ms"
        )
    finally:
        for p in procs:
            p.terminate()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
