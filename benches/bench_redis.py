"""The Redis backend side by side with its anchors, in one run, on one redis-server.

    pip install -e '.[bench]' && python benches/bench_redis.py

Starts its own redis-server on a free loopback port (PATH, else $REDIS_SERVER), then
times, in µs per call (best of several rounds): a raw redis-py GET (the floor; hiredis
parses when installed), a raw GET + SET (the floor of a miss), dogpile.cache's Redis
backend, the published cachu 0.2.7 (with CACHU_REFERENCE_PYTHON pointing at an
interpreter that has cachu==0.2.7 and redis-py), and this cachu: a hit of
get_user(123) returning a small dict, and a miss + store. Ratios are to the raw floors.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

ROUNDS = 5
HITS = 5000
MISSES = 2000

# Run in this interpreter and in the reference one: times cachu's own decorator.
CACHU_SNIPPET = """
import json, sys, time
import cachu
cachu.configure(backend='redis', redis_url=sys.argv[1])

def best(fn, n, rounds=5):
    out = float('inf')
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        out = min(out, (time.perf_counter() - t) / n)
    return out * 1e6

@cachu.cache(ttl=300)
def get_user(user_id):
    return {'id': user_id, 'name': 'Ada Lovelace', 'roles': ['admin', 'dev']}

get_user(123)
counter = iter(range(10**9))
hit = best(lambda: get_user(123), int(sys.argv[2]))
miss = best(lambda: get_user(next(counter) + 1000), int(sys.argv[3]))
print(json.dumps({'hit': hit, 'miss': miss}))
"""


def best_us(fn: Callable[[], Any], n: int) -> float:
    out = float("inf")
    for _ in range(ROUNDS):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        out = min(out, (time.perf_counter() - t) / n)
    return out * 1e6


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server") or os.environ.get("REDIS_SERVER")
    if not binary:
        sys.exit("bench_redis needs redis-server on PATH or in $REDIS_SERVER")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="cachu-bench-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.01)
    return proc, f"redis://127.0.0.1:{port}/0"


def run_snippet(python: str, url: str) -> dict[str, float]:
    out = subprocess.run(
        [python, "-c", CACHU_SNIPPET, url, str(HITS), str(MISSES)],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout))


def main() -> None:
    import pickle

    import redis

    proc, url = start_server()
    try:
        client = redis.Redis.from_url(url)
        value = pickle.dumps({"id": 123, "name": "Ada Lovelace", "roles": ["admin", "dev"]})
        client.set("raw:user:123", value)
        counter = iter(range(10**9))

        def get_set() -> None:
            key = f"raw:miss:{next(counter)}"
            client.get(key)
            client.set(key, value, ex=300)

        rows: dict[str, dict[str, float]] = {
            "raw redis-py": {
                "hit": best_us(lambda: client.get("raw:user:123"), HITS),
                "miss": best_us(get_set, MISSES),
            }
        }
        try:
            from dogpile.cache import make_region

            region = make_region().configure(
                "dogpile.cache.redis",
                expiration_time=300,
                arguments={"url": url, "distributed_lock": True, "thread_local_lock": False},
            )

            def user(user_id: int) -> dict[str, Any]:
                return {"id": user_id, "name": "Ada Lovelace", "roles": ["admin", "dev"]}

            cached = region.cache_on_arguments()(user)
            cached(123)
            rows["dogpile.cache"] = {
                "hit": best_us(lambda: cached(123), HITS),
                "miss": best_us(lambda: cached(next(counter) + 10**6), MISSES),
            }
        except ImportError:
            print("(dogpile.cache not installed: pip install dogpile.cache)")
        reference = os.environ.get("CACHU_REFERENCE_PYTHON")
        if reference:
            client.flushall()
            rows["cachu 0.2.7"] = run_snippet(reference, url)
        client.flushall()
        rows["cachu"] = run_snippet(sys.executable, url)
    finally:
        proc.terminate()
        proc.wait()

    floor = rows["raw redis-py"]
    hiredis = "hiredis" if redis.utils.HIREDIS_AVAILABLE else "pure-Python parser"
    print(f"Redis on loopback, µs per call (best of {ROUNDS}); redis-py with {hiredis}")
    print(f"{'':16}{'hit':>9}{'x GET':>8}{'miss+store':>12}{'x GET+SET':>11}")
    for name, r in rows.items():
        print(
            f"{name:16}{r['hit']:9.1f}{r['hit'] / floor['hit']:8.2f}"
            f"{r['miss']:12.1f}{r['miss'] / floor['miss']:11.2f}"
        )


if __name__ == "__main__":
    main()
