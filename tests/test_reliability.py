"""What cachu promises when things go wrong or grow: bounded memory, bad input,
many threads and processes at once. Real threads, processes and servers; every wait
is bounded so that a bug fails fast instead of hanging."""

from __future__ import annotations

import gc
import sys
import threading

import pytest

import cachu
from cachu import ConfigurationError
from conftest import run_at_once


def test_memory_maxsize_bounds_a_package_and_keeps_the_recently_used():
    cachu.configure(package="bounded", memory_maxsize=100)
    try:

        @cachu.cache(ttl=300, package="bounded")
        def square(x: int) -> int:
            return x * x

        @cachu.cache(ttl=3600, package="bounded")
        def cube(x: int) -> int:
            return x * x * x

        hot = list(range(10))
        for i in range(2000):
            square(1000 + i)
            if i % 20 == 0:
                for h in hot:
                    square(h)  # keeps the hot keys recently used
            cube(i)
        total = cachu.cache_info(square).currsize + cachu.cache_info(cube).currsize
        assert total <= 100, total
        before = cachu.cache_info(square).hits
        for h in hot:
            square(h)
        assert cachu.cache_info(square).hits - before == len(hot), "a hot key was evicted"
        assert cachu.get_config(package="bounded").memory_maxsize == 100
        # 0 removes the bound.
        cachu.configure(package="bounded", memory_maxsize=0)
        for i in range(300):
            square(10_000 + i)
        assert cachu.cache_info(square).currsize >= 300
    finally:
        cachu.configure(package="bounded", memory_maxsize=0)


class Tracked:
    """Counts its live instances."""

    alive = 0

    def __init__(self) -> None:
        Tracked.alive += 1

    def __del__(self) -> None:
        Tracked.alive -= 1

    def __reduce__(self):  # noqa: ANN204 - pickled by the cache
        return (Tracked, ())


def test_evicted_values_are_released():
    cachu.configure(package="release", memory_maxsize=10)
    try:

        @cachu.cache(ttl=300, package="release")
        def make(i: int) -> list:
            return [Tracked()]

        before = Tracked.alive
        for i in range(200):
            make(i)
        gc.collect()
        assert cachu.cache_info(make).currsize <= 10
        assert Tracked.alive - before <= 12, "evicted values are still alive"
    finally:
        cachu.configure(package="release", memory_maxsize=0)


def test_hits_release_what_they_hold_at_once():
    """A hit takes a reference to the cached object and gives it back before it
    returns: after 10 000 hits its reference count is what it was (a reference left
    for later would pile up, one per hit, along with the memory to remember it)."""
    import asyncio

    cachu.configure(package="refs_once", memory_copy=False)

    @cachu.cache(ttl=300, package="refs_once")
    def value(x: int) -> list:
        return [x]

    @cachu.cache(ttl=300, package="refs_once")
    async def async_value(x: int) -> list:
        return [x]

    held = value(1)
    before = sys.getrefcount(held)
    for _ in range(10_000):
        value(1)
        value(x=1)
    assert sys.getrefcount(held) == before

    async def main() -> int:
        held = await async_value(1)
        before = sys.getrefcount(held)
        for _ in range(10_000):
            await async_value(1)
        return sys.getrefcount(held) - before

    assert asyncio.run(main()) == 0


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


def test_clear_backends_frees_memory_entries_that_other_threads_called():
    """A thread keeps its own copy of a function's settings; clear_backends() still
    frees the entries of the memory region it pointed at, at once."""
    import queue

    cachu.configure(package="freed", memory_copy=False)  # keeps the objects themselves

    @cachu.cache(ttl=300, package="freed")
    def make(i: int) -> Tracked:
        return Tracked()

    asks: queue.Queue = queue.Queue()
    done: queue.Queue = queue.Queue()

    def worker() -> None:
        while (n := asks.get()) is not None:
            for i in range(n):
                make(i)
            done.put(True)

    t = threading.Thread(target=worker)
    t.start()
    try:
        gc.collect()
        before = Tracked.alive
        asks.put(50)
        done.get(timeout=10)
        gc.collect()
        assert Tracked.alive - before >= 50
        cachu.clear_backends(package="freed")  # the worker thread calls nothing after
        gc.collect()
        assert Tracked.alive - before <= 1, f"{Tracked.alive - before} entries still alive"
    finally:
        asks.put(None)
        t.join()


def test_memory_copy_false_hands_out_the_cached_object_itself(tmp_path):
    cachu.configure(package="refs", memory_copy=False, file_dir=str(tmp_path))
    try:
        assert cachu.get_config(package="refs").memory_copy is False
        calls = []

        @cachu.cache(ttl=300, package="refs")
        def user(i: int) -> dict:
            calls.append(i)
            return {"id": i, "tags": ["a"]}

        first = user(1)
        assert user(1) is first and user(1) is first  # the object itself, no copy
        first["tags"].append("changed")  # and so a mutation reaches the cache
        assert user(1)["tags"] == ["a", "changed"] and calls == [1]

        # Objects that can be neither copied nor pickled are cached too.
        @cachu.cache(ttl=300, package="refs")
        def make(i: int):  # noqa: ANN202
            return lambda: i

        assert make(2) is make(2)
        cachu.cache_set(make, first, i=3)
        assert make(3) is first

        # The file backend still stores pickles: callers get their own objects.
        @cachu.cache(ttl=300, backend="file", package="refs")
        def from_file(i: int) -> dict:
            return {"id": i}

        assert from_file(1) == from_file(1) and from_file(1) is not from_file(1)

        # Coroutines too, and tasks that waited for the computation get the same object.
        import asyncio

        @cachu.cache(ttl=300, package="refs")
        async def fetch(i: int) -> dict:
            await asyncio.sleep(0.01)
            return {"id": i}

        async def together() -> list:
            return await asyncio.gather(*(fetch(5) for _ in range(3)), fetch(5))

        got = asyncio.run(together())
        assert all(g is got[0] for g in got)

        # Back to copies: new entries are copied again.
        cachu.configure(package="refs", memory_copy=True)
        second = user(2)
        assert user(2) == second and user(2) is not second
    finally:
        cachu.configure(package="refs", memory_copy=True)


@pytest.mark.parametrize("bad", [-1, 1.5, "100", True, [10]])
def test_bad_memory_maxsize_is_refused(bad):
    with pytest.raises(ConfigurationError, match="memory_maxsize"):
        cachu.configure(package="badmax", memory_maxsize=bad)


def test_bounded_memory_under_threads():
    cachu.configure(package="boundedthreads", memory_maxsize=500)
    try:

        @cachu.cache(ttl=300, package="boundedthreads")
        def f(x: int) -> int:
            return x

        errors: list[BaseException] = []

        def worker(base: int) -> None:
            try:
                for i in range(3000):
                    assert f(base + i % 700) == base + i % 700
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(k * 10_000,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        assert cachu.cache_info(f).currsize <= 500
    finally:
        cachu.configure(package="boundedthreads", memory_maxsize=0)


class Crafted:
    """An argument whose repr is whatever the test says."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def test_reprs_with_key_separators_never_collide_with_other_arguments():
    @cachu.cache(ttl=300, package="collide")
    def pair(a, b=0):  # noqa: ANN001, ANN202
        return ("computed", repr(a), b)

    assert pair(1, 2) == ("computed", "1", 2)
    # Each of these would have written the key of pair(1, 2) (or of each other).
    for tricky in (Crafted("1 b=2"), Crafted("1|b=2"), "1 b=2", Crafted("1\u241esb=2")):
        assert pair(tricky) == ("computed", repr(tricky), 0)
    keys = {pair.cache_key(1, 2)} | {
        pair.cache_key(t) for t in (Crafted("1 b=2"), Crafted("1|b=2"), "1 b=2")
    }
    assert len(keys) == 4
    # Plain values keep the keys of cachu 0.2.x.
    assert pair.cache_key(1, 2) == "5m:pair|a=1 b=2"
    assert pair.cache_key("x", b="y") == "5m:pair|a='x' b='y'"


def test_functions_with_kwargs_are_guarded_against_any_name():
    @cachu.cache(ttl=300, package="collide")
    def anything(**kwargs):  # noqa: ANN003, ANN202
        return sorted(kwargs)

    assert anything(a=1, z=2) == ["a", "z"]
    assert anything(a=Crafted("1 z=2")) == ["a"]


def test_reprs_with_memory_addresses_are_warned_about_once():
    @cachu.cache(ttl=300, package="address")
    def f(x):  # noqa: ANN001, ANN202
        return 1

    with pytest.warns(RuntimeWarning, match="memory address"):
        f(object())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f(object())  # said once per function


def test_text_that_looks_like_an_address_is_not_warned_about():
    @cachu.cache(ttl=300, package="address")
    def g(x):  # noqa: ANN001, ANN202
        return x

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert g("meet at 0x10") == "meet at 0x10"
        assert g("meet at 0x10") == "meet at 0x10"
    assert g.cache_info().hits == 1


def test_tags_with_separators_and_glob_characters_clear_only_their_own():
    @cachu.cache(ttl=300, package="tags", tag="us*")
    def starred(x: int) -> int:
        return x

    @cachu.cache(ttl=300, package="tags", tag="users")
    def users(x: int) -> int:
        return x

    @cachu.cache(ttl=300, package="tags", tag="|a|b|")
    def piped(x: int) -> int:
        return x

    starred(1)
    users(1)
    piped(1)
    assert piped.cache_key(1) == "5m:piped||a.b||x=1"
    assert cachu.cache_clear(tag="us*", package="tags") == 1
    assert cachu.cache_info(users).currsize == 1
    assert cachu.cache_clear(tag="a|b", package="tags") == 1
    assert cachu.cache_info(users).currsize == 1


@pytest.mark.parametrize(
    ("option", "bad"),
    [
        ("backend", "mongodb"),
        ("backend", 3),
        ("key_prefix", 5),
        ("file_dir", "/no/such/directory"),
        ("file_dir", 12),
        ("redis_url", "http://localhost"),
        ("redis_url", b"redis://localhost"),
        ("lock_timeout", -1),
        ("lock_timeout", "10"),
        ("lock_timeout", True),
        ("on_backend_error", "ignore"),
        ("on_lock_timeout", 1),
        ("memory_maxsize", -5),
        ("memory_copy", 0),
        ("memory_copy", "no"),
        ("no_such_option", 1),
    ],
)
def test_every_configure_option_refuses_wrong_values_and_changes_nothing(option, bad):
    cachu.configure(package="strict", key_prefix="kept:", lock_timeout=3)
    before = cachu.get_config(package="strict")
    with pytest.raises(ConfigurationError, match=option) as info:
        cachu.configure(package="strict", **{"key_prefix": "changed:", option: bad})
    assert repr(bad)[:20] in str(info.value) or option == "file_dir"
    assert cachu.get_config(package="strict") == before


def test_enormous_keys_work_on_every_backend(tmp_path, redis_url):
    cachu.configure(package="huge", file_dir=str(tmp_path), redis_url=redis_url)
    big = "x" * 1_000_000
    for backend in ("memory", "file", "redis"):
        calls = []

        @cachu.cache(ttl=300, backend=backend, package="huge")
        def echo(s: str, _calls: list = calls) -> int:
            _calls.append(1)
            return len(s)

        assert echo(big) == 1_000_000
        assert echo(big) == 1_000_000
        assert calls == [1], backend


class Unpicklable:
    def __reduce__(self):  # noqa: ANN204
        raise TypeError("this object refuses to be pickled")


def test_unpicklable_results_are_returned_not_cached_and_lose_nothing(tmp_path, redis_url):
    cachu.configure(package="unpick", file_dir=str(tmp_path), redis_url=redis_url)
    for backend in ("memory", "file", "redis"):

        def make(kind: str):  # noqa: ANN202
            return Unpicklable() if kind == "bad" else {"kind": kind}

        make.__name__ = f"make_{backend}"  # one warning per function
        make = cachu.cache(ttl=300, backend=backend, package="unpick")(make)

        assert make("good") == {"kind": "good"}
        with pytest.warns(RuntimeWarning, match="not cached"):
            value = make("bad")
        assert isinstance(value, Unpicklable)
        assert isinstance(make("bad"), Unpicklable)  # computed again: nothing was stored
        info = cachu.cache_info(make)
        assert (info.hits, info.misses, info.currsize) == (0, 3, 1), backend
        assert make("good") == {"kind": "good"}
        assert cachu.cache_info(make).hits == 1


class Trap:
    """Unpickling this creates a file: proof that a value was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.path, "w"))


SECRET = "a signing key of more than 16 bytes"


def test_signed_values_on_redis_refuse_tampering(redis_url, redis_server, tmp_path):
    cachu.configure(package="signed", backend="redis", redis_url=redis_url, signing_key=SECRET)
    try:
        calls = []

        @cachu.cache(ttl=300, package="signed")
        def value(x: int) -> dict:
            calls.append(x)
            return {"x": x}

        assert value(1) == {"x": 1}
        assert value(1) == {"x": 1}
        assert calls == [1]
        r = redis_server.client()
        raw = r.get("5m:value|x=1")
        assert raw[8:].startswith(b"cachu-hmac1:")
        assert repr(cachu.get_config(package="signed")).count("<secret>") == 1
        assert SECRET not in repr(cachu.get_config(package="signed"))

        # Someone with write access to Redis plants a pickle that runs code.
        import pickle
        import struct
        import time

        trap = tmp_path / "unpickled"
        evil = pickle.dumps(Trap(str(trap)))
        header = struct.pack("d", time.time())
        forged = raw[:8] + raw[8:][: 12 + 32] + evil  # a valid-looking tag, other data
        for planted in (header + evil, forged):
            r.set("5m:value|x=1", planted, ex=300)
            with pytest.warns(RuntimeWarning, match="not unpickled"):
                assert value(1) == {"x": 1}
            assert not trap.exists(), "a tampered value was unpickled"
            assert value(1) == {"x": 1}  # the miss stored a signed value again

        # Signed with another key: refused as well (said once already, above).
        cachu.configure(package="signed", signing_key="another key, also 16+ bytes")
        calls.clear()
        assert value(1) == {"x": 1}
        assert calls == [1]
    finally:
        cachu.configure(package="signed", signing_key="")


def test_signed_values_on_files(tmp_path):
    cachu.configure(
        package="signedfile", backend="file", file_dir=str(tmp_path), signing_key=SECRET
    )
    try:

        @cachu.cache(ttl=300, package="signedfile")
        def value(x: int) -> int:
            return x * 2

        assert value(2) == 4
        import sqlite3

        con = sqlite3.connect(tmp_path / "signedfile_cache5min.db")
        (blob,) = con.execute("SELECT value FROM cache").fetchone()
        assert blob.startswith(b"cachu-hmac1:")
        con.execute("UPDATE cache SET value = ?", (blob[:-3] + b"J.",))
        con.commit()
        con.close()
        with pytest.warns(RuntimeWarning, match="not unpickled"):
            assert value(2) == 4
    finally:
        cachu.configure(package="signedfile", signing_key="")


@pytest.mark.parametrize("bad", ["short", b"too short", 12345, ["a list"]])
def test_bad_signing_keys_are_refused_without_showing_them(bad):
    with pytest.raises(ConfigurationError, match="signing_key") as info:
        cachu.configure(package="badkey", signing_key=bad)
    if isinstance(bad, (str, bytes)):
        assert repr(bad) not in str(info.value)


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


def test_memory_per_entry_is_reported_by_backend_stats():
    cachu.configure(package="sized", memory_maxsize=1000)
    try:

        @cachu.cache(ttl=300, package="sized")
        def user(i: int) -> dict:
            return {"id": i, "name": "Ada Lovelace"}

        for i in range(500):
            user(i)
        stats = cachu.get_backend("memory", package="sized", ttl=300).stats()
        assert stats["entries"] == 500
        assert stats["package_entries"] == 500 and stats["memory_maxsize"] == 1000
        # A key, a slot and a small dict: between a few dozen and a few hundred bytes.
        assert 100 < stats["bytes_per_entry"] < 1000, stats
        # Each value kept as a record: a tuple of its two values and its shape.
        assert stats["value_bytes"] >= 500 * sys.getsizeof((0, 0, 0)), stats
    finally:
        cachu.configure(package="sized", memory_maxsize=0)


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


def test_records_with_nested_members_are_copied_at_every_level():
    """The common JSON-like record: a dict whose members include a list, a dict, a set."""
    import asyncio

    @cachu.cache(ttl=300, package="records")
    def record(i: int) -> dict:
        return {"id": i, "roles": ["admin"], "meta": {"k": 1}, "tags": {1, 2}, "t": (1, 2)}

    @cachu.cache(ttl=300, package="records")
    async def arecord(i: int) -> dict:
        return record.original(i)

    async def twice() -> tuple:
        return await arecord(1), await arecord(1)

    for first, second in ((record(1), record(1)), asyncio.run(twice())):
        first["roles"].append("intruder")
        first["meta"]["k"] = 2
        first["tags"].add(3)
        first["id"] = -1
        assert second == {
            "id": 1,
            "roles": ["admin"],
            "meta": {"k": 1},
            "tags": {1, 2},
            "t": (1, 2),
        }
    hit = record(1)
    hit["roles"].append("intruder")
    hit["meta"]["k"] = 3
    hit["tags"].clear()
    assert record(1) == {"id": 1, "roles": ["admin"], "meta": {"k": 1}, "tags": {1, 2}, "t": (1, 2)}
    assert record(1) is not record(1)


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
