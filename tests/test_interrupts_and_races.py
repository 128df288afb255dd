"""What a hostile run found: waits that ignored Ctrl-C, a forked child waiting for its
parent's computation, overwrites that returned another caller's value, package names
that left file_dir, and options that were accepted although they meant nothing. Real
signals, forks, threads, files and servers; every wait is bounded."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import cachu
from cachu import ConfigurationError

BACKENDS = ["memory", "file", "redis"]


def run_script(code: str, *args: str, timeout: float = 60) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


INTERRUPTED_WAIT = """
import signal, sys, threading, time, cachu
backend, url, fd = sys.argv[1], sys.argv[2], sys.argv[3]
cachu.configure(backend=backend, redis_url=url, file_dir=fd, lock_timeout=10)

@cachu.cache(ttl=300)
def f(x):
    time.sleep(3)
    return x

threading.Thread(target=f, args=(1,), daemon=True).start()
time.sleep(0.3)
sent = []
def interrupt():
    sent.append(time.monotonic())
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
threading.Timer(0.3, interrupt).start()
try:
    f(1)
    print("not interrupted")
except KeyboardInterrupt:
    print(f"{time.monotonic() - sent[0]:.3f}")
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_interrupts_a_wait_for_another_thread_s_computation(backend, redis_url, tmp_path):
    out = run_script(INTERRUPTED_WAIT, backend, redis_url, str(tmp_path))
    assert out != "not interrupted"
    # A Python lock wait raises at once; 2.8 s late before (the other computation's end).
    assert float(out) < 0.5, out


FORKED_CHILD = """
import os, sys, threading, time, cachu
backend, url, fd = sys.argv[1], sys.argv[2], sys.argv[3]
cachu.configure(backend=backend, redis_url=url, file_dir=fd, lock_timeout=5)
parent = os.getpid()

@cachu.cache(ttl=300)
def f(x):
    if os.getpid() == parent:
        time.sleep(3)
    return x

threading.Thread(target=f, args=(1,), daemon=True).start()
time.sleep(0.3)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    t = time.monotonic()
    value = f(1)
    os.write(w, f"{value} {time.monotonic() - t:.3f}".encode())
    os._exit(0)
os.waitpid(pid, 0)
print(os.read(r, 100).decode())
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_forked_child_never_waits_for_its_parent_s_computation(backend, redis_url, tmp_path):
    out = run_script(FORKED_CHILD, backend, redis_url, str(tmp_path))
    value, seconds = out.split()
    assert value == "1"
    assert float(seconds) < 1.0, f"the child waited {seconds} s (lock_timeout is 5 s)"


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_overwrite_always_returns_its_own_computation(backend, redis_url, tmp_path):
    cachu.configure(
        package="overwrite_race", backend=backend, redis_url=redis_url, file_dir=str(tmp_path)
    )
    computed = threading.local()

    @cachu.cache(ttl=300, package="overwrite_race")
    def f(x):
        computed.value = ("computed", threading.get_ident(), os.urandom(4).hex())
        return computed.value

    wrong: list[object] = []
    done: list[bool] = []
    stop = threading.Event()

    def overwrite() -> None:
        for _ in range(300):
            computed.value = None
            v = f(0, _overwrite_cache=True)
            if v != computed.value:
                wrong.append(v)
        done.append(True)

    def setter() -> None:
        while not stop.is_set():
            cachu.cache_set(f, "SET", x=0)

    threads = [threading.Thread(target=overwrite) for _ in range(2)]
    s = threading.Thread(target=setter)
    s.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    s.join(10)
    assert len(done) == 2
    assert wrong == [], f"{len(wrong)} of 600 overwrites returned a value they did not compute"


@pytest.mark.parametrize("package", ["../evil", "../../x", "/abs/olute", "a/b", "..", "a\\b"])
def test_file_names_from_package_names_stay_inside_file_dir(package, tmp_path):
    fd = tmp_path / "cache"
    fd.mkdir()
    cachu.configure(package=package, backend="file", file_dir=str(fd))

    @cachu.cache(ttl=300, package=package)
    def f(x):
        return x

    assert f(1) == 1 and f(1) == 1
    assert cachu.cache_info(f).hits == 1
    made = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert made and all(m.startswith("cache/") and m.count("/") == 1 for m in made), made
    assert cachu.cache_clear(package=package) == 1


def test_ordinary_package_names_keep_their_0_2_file_names(tmp_path):
    cachu.configure(package="myapp", backend="file", file_dir=str(tmp_path))

    @cachu.cache(ttl=300, package="myapp")
    def f(x):
        return x

    f(1)
    assert (tmp_path / "myapp_cache5min.db").exists()


def test_every_async_operation_is_a_coroutine_function():
    for name in [n for n in cachu.__all__ if n.startswith("async_") and n != "async_cache"]:
        assert inspect.iscoroutinefunction(getattr(cachu, name)), name

    @cachu.cache(ttl=300, package="async_ops")
    async def f(x):
        return x

    async def main():
        await f(1)
        return await cachu.async_cache_clear(backend="memory", ttl=300, package="async_ops")

    assert asyncio.run(main()) == 1
    # Made and never awaited, it starts nothing.
    coro = cachu.async_cache_clear(backend="memory", ttl=300, package="async_ops")
    coro.close()


def test_exclude_must_name_a_parameter():
    with pytest.raises(ConfigurationError, match=r"exclude='nope'.*f\(\) has no parameter"):

        @cachu.cache(ttl=300, exclude={"nope"})
        def f(a, b):
            return a

    @cachu.cache(ttl=300, exclude={"trace_id"})
    def g(a, **kwargs):
        return a

    assert g(1, trace_id="x") == g(1, trace_id="y") == 1
    assert cachu.cache_info(g).hits == 1


def test_a_lower_memory_maxsize_applies_at_once():
    cachu.configure(package="shrink", memory_maxsize=0)

    @cachu.cache(ttl=300, package="shrink")
    def f(x):
        return x

    for i in range(3000):
        f(i)
    assert cachu.cache_info(f).currsize == 3000
    cachu.configure(package="shrink", memory_maxsize=1000)
    assert cachu.cache_info(f).currsize <= 1000
    f(5000)
    assert cachu.cache_info(f).currsize <= 1000


EXIT_WITH_A_DAEMON = """
import sys, threading, time, cachu
backend, where, url, follow, nap = sys.argv[1:6]
cachu.configure(backend=backend, file_dir=where, redis_url=url, lock_timeout=10)

@cachu.cache(ttl=300)
def f(x):
    time.sleep(float(nap))
    return x

threading.Thread(target=f, args=(1,), daemon=True).start()
time.sleep(0.2)
print(f(1) if follow == "1" else "left")
"""


@pytest.mark.parametrize("backend", ["memory", "file", "redis"])
@pytest.mark.parametrize(
    ("follow", "nap"),
    [("1", "0.6"), ("0", "0.4"), ("0", "5")],
    ids=["main-follows-the-daemon", "daemon-finishing-at-exit", "daemon-left-computing"],
)
def test_the_interpreter_exits_cleanly_with_a_daemon_thread_in_a_cached_call(
    backend: str, follow: str, nap: str, tmp_path, redis_url: str
) -> None:
    """A daemon thread inside a call (computing, storing, releasing its lease) when the
    interpreter exits: the process ends normally, without waiting for a long one."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_WITH_A_DAEMON, backend, str(tmp_path), redis_url, follow, nap],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.strip() == ("1" if follow == "1" else "left")
    assert time.monotonic() - started < 4.5, "the exit waited for the daemon's computation"
