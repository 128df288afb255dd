"""Many processes at once, servers that die and come back, configurations that change
under running code, an interpreter that shuts down. Real processes and servers; every
wait is bounded so that a bug fails fast instead of hanging."""

from __future__ import annotations

import sys
import threading

import pytest

import cachu
from conftest import run_at_once


def test_a_cached_function_called_while_the_interpreter_shuts_down(this_python):
    """A ``__del__`` that runs at interpreter exit may call a cached function: it is
    answered (on 3.13, pyo3's checked attach panicked there, and the process aborted)."""
    import subprocess
    import textwrap

    code = textwrap.dedent("""
        import cachu

        @cachu.cache(ttl=60)
        def f(x):
            return x + 1

        class Late:
            def __del__(self):
                print("late", f(1), f(1), flush=True)

        keep = Late()
    """)
    proc = subprocess.run([this_python, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "late 2 2"


STAMPEDE = """
import os, random, sys, threading, time, cachu
backend, url, log, start = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
cachu.configure(package='stampede', backend=backend, redis_url=url, file_dir=os.path.dirname(log))

@cachu.cache(ttl=300, package='stampede')
def work(k):
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f'{os.getpid()} {k}\\n'.encode())
    os.close(fd)
    time.sleep(0.02)
    return k * 2

def worker(seed):
    keys = list(range(100))
    random.Random(seed).shuffle(keys)
    for k in keys:
        assert work(k) == k * 2

time.sleep(max(0, start - time.time()))
threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print('ok')
"""


@pytest.mark.parametrize("backend", ["memory", "file", "redis"])
def test_stampede_of_8_threads_in_4_processes_on_100_cold_keys(
    backend, redis_url, tmp_path, this_python
):
    from collections import Counter

    log = tmp_path / "runs.log"
    outs = run_at_once(this_python, STAMPEDE, 4, backend, redis_url, str(log), lead=2, timeout=120)
    assert outs == ["ok"] * 4
    runs = [line.split() for line in log.read_text().splitlines()]
    per_process = Counter((pid, k) for pid, k in runs)
    per_key = Counter(k for _, k in runs)
    print(
        f"{backend}: {len(runs)} computations for 100 keys x 4 processes x 8 threads "
        f"(max {max(per_process.values())} per key per process, "
        f"max {max(per_key.values())} per key overall)"
    )
    assert len(per_key) == 100
    assert max(per_process.values()) == 1, "a process computed a key twice"
    if backend == "redis" or (backend == "file" and sys.platform == "linux"):
        assert max(per_key.values()) == 1, "two processes computed one key"


def test_redis_killed_and_restarted_under_threads_and_an_event_loop(redis_server):
    import asyncio
    import time
    import warnings

    url = redis_server.url + "?socket_connect_timeout=0.2&socket_timeout=0.5"
    cachu.configure(package="chaos", backend="redis", redis_url=url)

    @cachu.cache(ttl=300, package="chaos")
    def double(x: int) -> int:
        return 2 * x

    @cachu.cache(ttl=300, package="chaos")
    async def triple(x: int) -> int:
        return 3 * x

    stop = threading.Event()
    slowest = [0.0]
    wrong: list[str] = []
    calls = [0]

    def timed(check) -> None:  # noqa: ANN001
        t0 = time.monotonic()
        check()
        slowest[0] = max(slowest[0], time.monotonic() - t0)
        calls[0] += 1

    def thread_worker(seed: int) -> None:
        i = seed
        while not stop.is_set():
            i = (i + 7) % 50

            def check(i: int = i) -> None:
                if double(i) != 2 * i:
                    wrong.append(f"double({i})")

            timed(check)

    async def loop_worker() -> None:
        i = 0
        while not stop.is_set():
            i = (i + 3) % 50
            t0 = time.monotonic()
            if await triple(i) != 3 * i:
                wrong.append(f"triple({i})")
            slowest[0] = max(slowest[0], time.monotonic() - t0)
            calls[0] += 1
            await asyncio.sleep(0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        threads = [threading.Thread(target=thread_worker, args=(k,)) for k in range(8)]
        loop_thread = threading.Thread(target=lambda: asyncio.run(loop_worker()))
        for t in [*threads, loop_thread]:
            t.start()
        time.sleep(0.7)
        redis_server.proc.kill()  # SIGKILL mid-load
        redis_server.proc.wait()
        redis_server.proc = None
        time.sleep(1.0)
        redis_server.start()
        time.sleep(2.0)  # the breaker lets a probe through, connections come back
        stop.set()
        for t in [*threads, loop_thread]:
            t.join(30)
    assert not wrong, wrong[:5]
    print(f"{calls[0]} calls; the slowest took {slowest[0]:.3f}s")
    assert slowest[0] < 2.0, "a call waited longer than the timeouts allow"
    before = cachu.cache_info(double).hits
    assert double(1) == 2 and double(1) == 2
    assert cachu.cache_info(double).hits > before, "did not reconnect"


def test_cache_clear_reaches_regions_this_process_never_opened(tmp_path, redis_url, redis_server):
    from cachu import _cachu

    cachu.configure(package="fileclear", backend="file", file_dir=str(tmp_path))

    @cachu.cache(ttl=300, package="fileclear")
    def five(x: int) -> int:
        return x

    @cachu.cache(ttl=7200, package="fileclear")
    def two_hours(x: int) -> int:
        return x

    five(1), two_hours(1), two_hours(2)
    _cachu.clear_all_backends()  # as in a fresh process: no region is open
    (tmp_path / "otherapp_cache5min.db").write_bytes(b"another package's file")
    assert cachu.cache_clear(package="fileclear") == 3
    assert (tmp_path / "otherapp_cache5min.db").read_bytes() == b"another package's file"
    assert cachu.cache_info(five).currsize == 0

    cachu.configure(package="redisclear", backend="redis", redis_url=redis_url, key_prefix="rc:")
    r = redis_server.client()
    r.set("5m:other:thing|x=1", b"foreign")

    @cachu.cache(ttl=300, package="redisclear")
    def a(x: int) -> int:
        return x

    @cachu.cache(ttl=86400, package="redisclear")
    def b(x: int) -> int:
        return x

    a(1), b(1), b(2)
    _cachu.clear_all_backends()
    assert cachu.cache_clear(package="redisclear") == 3
    assert sorted(r.keys("*")) == [b"5m:other:thing|x=1"]


def test_a_new_file_dir_or_redis_url_applies_to_decorated_functions(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    cachu.configure(package="moved", backend="file", file_dir=str(first))
    calls = []

    @cachu.cache(ttl=60, package="moved")
    def f(x: int) -> int:
        calls.append(x)
        return x

    @cachu.cache(ttl=60, backend="memory", package="moved")
    def g(x: int) -> int:
        return x

    f(1), g(1)
    cachu.configure(package="moved", file_dir=str(second))
    f(1)
    assert calls == [1, 1], "the old directory's entry was used"
    assert (first / "moved_cache1min.db").exists() and (second / "moved_cache1min.db").exists()
    assert cachu.cache_info(g).currsize == 1, "memory regions are kept"
