"""The Redis backend against real redis-server processes started by the tests:
formats shared with the published cachu 0.2.7, round trips, leases across processes,
scoped clears, TLS, outages and undecodable values."""

from __future__ import annotations

import pickle
import struct
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest

import cachu
from cachu import BackendError, CacheLockTimeout
from conftest import (
    RedisServer,
    configure_redis_package,
    run_at_once,
    run_python,
    top_level_commands,
)

PACKAGE = "redisapp"


@pytest.fixture
def app(redis_url):
    """A package configured for Redis on the test's own, empty server."""
    return configure_redis_package(PACKAGE, redis_url)


def test_readme_redis_example_hits_and_stores_the_documented_format(app, redis_server):
    calls = []

    @cachu.cache(ttl=86400, backend="redis", package=PACKAGE)
    def get_user(user_id: int) -> dict:
        calls.append(user_id)
        return {"id": user_id, "name": "Ada"}

    before = time.time()
    assert get_user(123) == {"id": 123, "name": "Ada"}
    assert get_user(123) == {"id": 123, "name": "Ada"}
    assert calls == [123]
    info = cachu.cache_info(get_user)
    assert (info.hits, info.misses, info.currsize) == (1, 1, 1)

    r = redis_server.client()
    raw = r.get("1d:get_user|user_id=123")
    created = struct.unpack("d", raw[:8])[0]
    assert before - 1 <= created <= time.time() + 1
    assert pickle.loads(raw[8:]) == {"id": 123, "name": "Ada"}
    assert 86390 < r.ttl("1d:get_user|user_id=123") <= 86400

    value = get_user(123)
    value["name"] = "changed by the caller"
    assert get_user(123)["name"] == "Ada"

    get_user.invalidate(user_id=123)
    assert r.get("1d:get_user|user_id=123") is None
    assert get_user.get(user_id=123, default="gone") == "gone"
    get_user.set({"id": 123, "name": "Set"}, user_id=123)
    assert get_user(123) == {"id": 123, "name": "Set"}
    assert calls == [123]


def test_a_hit_is_one_round_trip_and_a_miss_two(app, redis_server):
    @cachu.cache(ttl=300, package=PACKAGE)
    def square(x: int) -> int:
        return x * x

    square(2)  # loads the scripts once
    with top_level_commands(redis_server) as commands:
        assert square(2) == 4  # hit
        time.sleep(0.2)
        hit = len(commands)
        assert square(3) == 9  # miss: lease, compute, store and release
    miss = len(commands) - hit
    assert hit == 1, commands
    assert miss == 2, commands[hit:]


def test_threads_share_one_multiplexed_connection(redis_server, redis_url):
    """Every thread's requests go over one connection per URL and process."""
    url = configure_redis_package("onesocket", redis_server.url.rsplit("/", 1)[0] + "/7")

    @cachu.cache(ttl=300, package="onesocket")
    def double(x: int) -> int:
        time.sleep(0.01)
        return 2 * x

    probe = redis_server.client()
    connections_before = probe.info("stats")["total_connections_received"]
    start = threading.Barrier(8)
    results: dict[int, list[int]] = {}

    def work(i: int) -> None:
        start.wait()
        results[i] = [double(i % 3) for _ in range(50)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == {i: [2 * (i % 3)] * 50 for i in range(8)}
    clients = probe.client_list()
    assert [c["db"] for c in clients].count("7") == 1, (url, clients)
    # Threads that found no connection waited for the one being made.
    assert probe.info("stats")["total_connections_received"] == connections_before + 1


def test_threads_starting_against_a_silent_server_fail_fast_together():
    """A server that accepts but never answers: the first thread pays the connect
    timeout, the others that waited for its connection fail with it at once."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0?socket_connect_timeout=0.5&socket_timeout=0.5"
    configure_redis_package("silent", url)

    @cachu.cache(ttl=300, package="silent")
    def ident(x: int) -> int:
        return x

    start = threading.Barrier(8)
    results: dict[int, int] = {}

    def work(i: int) -> None:
        start.wait()
        results[i] = ident(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    elapsed = time.perf_counter() - t0
    silent.close()
    assert results == {i: i for i in range(8)}  # each call ran its function: a miss
    assert elapsed < 2.5, f"8 threads took {elapsed:.1f} s: they paid the timeout in turn"
    assert any("unreachable" in str(w.message) for w in said), [str(w.message) for w in said]


def test_values_are_shared_with_the_published_package_both_ways(
    app, redis_server, reference_python, this_python
):
    ours = f"""
import cachu
cachu.configure(backend='redis', redis_url={app!r})
calls = []
@cachu.cache(ttl=300, tag='users')
def get_user(user_id):
    calls.append(user_id)
    return {{'id': user_id, 'by': 'first'}}
print(get_user(1), get_user(2), len(calls))
"""
    # The published package writes; this one reads without calling the function.
    out = run_python(reference_python, ours.replace("'first'", "'reference'"))
    assert "2" in out.split()[-1]
    out = run_python(this_python, ours.replace("'first'", "'this'"))
    assert out.strip().endswith("0"), out
    assert "'reference'" in out
    # And the other way round, after a clear from this side.
    run_python(
        this_python,
        f"import cachu; cachu.configure(backend='redis', redis_url={app!r}); "
        "import redis; r = redis.Redis.from_url("
        f"{app!r}); [r.delete(k) for k in r.keys('5m:*')]",
    )
    out = run_python(this_python, ours.replace("'first'", "'this'"))
    assert out.strip().endswith("2")
    out = run_python(reference_python, ours.replace("'first'", "'reference'"))
    assert out.strip().endswith("0"), out
    assert "'this'" in out


def test_clears_never_touch_keys_this_library_did_not_write(app, redis_server):
    r = redis_server.client()
    foreign = {f"app:{i}": b"x" for i in range(2000)}
    foreign.update({f"5m:sessions:{i}": b"y" for i in range(500)})  # a region-like name
    foreign.update({f"5m:other|{i}": b"z" for i in range(500)})  # not a function of ours
    foreign.update({f"lock:{i}": b"w" for i in range(100)})
    r.mset(foreign)

    @cachu.cache(ttl=300, tag="users", package=PACKAGE)
    def get_user(user_id: int) -> int:
        return user_id

    @cachu.cache(ttl=3600, package=PACKAGE)
    def get_item(item_id: int) -> int:
        return item_id

    def fill() -> None:
        for i in range(50):
            get_user(i)
            get_item(i)

    for clear in (
        lambda: cachu.cache_clear(package=PACKAGE),
        lambda: cachu.cache_clear(tag="users", package=PACKAGE),
        lambda: cachu.cache_clear(backend="redis", package=PACKAGE),
        lambda: cachu.cache_clear(backend="redis", ttl=300, package=PACKAGE),
        lambda: cachu.cache_clear(ttl=3600, package=PACKAGE),
        lambda: cachu.get_backend("redis", package=PACKAGE, ttl=300).clear(),
        lambda: cachu.get_backend("redis", package=PACKAGE, ttl=300).clear("*"),
    ):
        fill()
        removed = clear()
        assert removed is None or removed > 0
        left = {k.decode() for k in r.scan_iter(count=1000)}
        assert set(foreign) <= left, "a foreign key was deleted"
    cachu.cache_clear(package=PACKAGE)
    assert {k.decode() for k in r.scan_iter(count=1000)} == set(foreign)


def test_key_prefix_scopes_clears_between_packages(redis_url, redis_server):
    cachu.configure(package="lib_a", backend="redis", redis_url=redis_url, key_prefix="lib_a:")
    cachu.configure(package="lib_b", backend="redis", redis_url=redis_url, key_prefix="lib_b:")

    @cachu.cache(ttl=300, package="lib_a")
    def fetch(x: int) -> str:
        return f"a{x}"

    @cachu.cache(ttl=300, package="lib_b")
    def fetch_b(x: int) -> str:
        return f"b{x}"

    fetch(1)
    fetch_b(1)
    assert cachu.cache_clear(package="lib_a") == 1
    keys = sorted(k.decode() for k in redis_server.client().keys("*"))
    assert keys == ["5m:lib_b:fetch_b|x=1"]


def test_one_computation_per_key_across_processes(app, tmp_path, this_python):
    script = textwrap.dedent(
        f"""
        import sys, time, cachu
        cachu.configure(package='redisapp', backend='redis', redis_url={app!r})
        @cachu.cache(ttl=300, package='redisapp')
        def slow(x):
            with open({str(tmp_path / "runs")!r}, 'a') as f:
                f.write('run\\n')
            time.sleep(0.5)
            return x * 2
        start = float(sys.argv[1])
        time.sleep(max(0, start - time.time()))
        print(slow(21))
        """
    )
    outs = run_at_once(this_python, script, 4, timeout=30)
    assert outs == ["42"] * 4
    runs = (tmp_path / "runs").read_text().count("run")
    print(f"4 processes, 1 cold key: the function ran {runs} time(s)")
    assert runs == 1


def test_a_dead_lease_holder_delays_others_by_the_lease_at_most(app, tmp_path, this_python):
    cachu.configure(package=PACKAGE, lock_timeout=1.5)
    marker = tmp_path / "computing"
    holder = subprocess.Popen(
        [
            this_python,
            "-c",
            textwrap.dedent(
                f"""
                import time, cachu
                cachu.configure(package='redisapp', backend='redis', redis_url={app!r},
                                lock_timeout=1.5)
                @cachu.cache(ttl=300, package='redisapp')
                def work(x):
                    open({str(marker)!r}, 'w').close()
                    time.sleep(60)
                work(1)
                """
            ),
        ]
    )
    deadline = time.monotonic() + 20
    while not marker.exists():
        assert time.monotonic() < deadline and holder.poll() is None
        time.sleep(0.02)
    holder.kill()
    holder.wait()

    @cachu.cache(ttl=300, package=PACKAGE)
    def work(x: int) -> str:
        return "computed here"

    t0 = time.monotonic()
    assert work(1) == "computed here"
    waited = time.monotonic() - t0
    assert waited < 1.5 + 1.0, waited


def test_lock_timeout_runs_the_function_or_raises_as_configured(app, redis_server):
    cachu.configure(package=PACKAGE, lock_timeout=0.3)

    @cachu.cache(ttl=300, package=PACKAGE)
    def value(x: int) -> int:
        return x + 1

    # Another process holds the lease (a token that is not ours, for 60 s).
    redis_server.client().set("lock:5m:value|x=1", "someone-else", ex=60)
    t0 = time.monotonic()
    assert value(1) == 2
    assert 0.25 < time.monotonic() - t0 < 2
    redis_server.client().delete("5m:value|x=1")
    cachu.configure(package=PACKAGE, on_lock_timeout="raise")
    with pytest.raises(CacheLockTimeout, match="lock_timeout"):
        value(1)
    # The foreign lease is not ours to release.
    assert redis_server.client().get("lock:5m:value|x=1") == b"someone-else"


def test_waiters_get_the_holders_value_when_it_is_stored(app, redis_server):
    @cachu.cache(ttl=300, package=PACKAGE)
    def value(x: int) -> str:
        return "mine"

    r = redis_server.client()
    r.set("lock:5m:value|x=7", "another-process", ex=60)

    def other_process_finishes() -> None:
        time.sleep(0.3)
        r.set("5m:value|x=7", struct.pack("d", time.time()) + pickle.dumps("theirs"), ex=300)
        r.delete("lock:5m:value|x=7")

    t = threading.Thread(target=other_process_finishes)
    t.start()
    assert value(7) == "theirs"
    t.join()


def test_threads_of_one_process_wait_for_the_local_holder(app):
    runs = []

    @cachu.cache(ttl=300, package=PACKAGE)
    def slow(x: int) -> int:
        runs.append(x)
        time.sleep(0.3)
        return x

    barrier = threading.Barrier(8)
    results = []

    def worker() -> None:
        barrier.wait()
        results.append(slow(5))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [5] * 8
    assert runs == [5]


def test_an_exception_releases_the_lease_and_is_not_cached(app, redis_server):
    attempts = []

    @cachu.cache(ttl=300, package=PACKAGE)
    def flaky(x: int) -> int:
        attempts.append(x)
        if len(attempts) == 1:
            raise ValueError("first call fails")
        return x

    with pytest.raises(ValueError, match="first call fails"):
        flaky(1)
    assert redis_server.client().get("lock:5m:flaky|x=1") is None
    assert flaky(1) == 1
    assert attempts == [1, 1]


def test_redis_down_is_a_miss_with_one_warning_and_recovery(app, redis_server):
    calls = []

    @cachu.cache(ttl=300, package=PACKAGE)
    def compute(x: int) -> int:
        calls.append(x)
        return x * 10

    assert compute(1) == 10
    redis_server.stop()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.monotonic()
            results = [compute(1) for _ in range(20)]
            elapsed = time.monotonic() - t0
        assert results == [10] * 20
        assert elapsed < 3, f"20 calls with Redis down took {elapsed:.1f}s"
        said = [w for w in caught if "unreachable" in str(w.message)]
        assert len(said) == 1, [str(w.message) for w in caught]

        cachu.configure(package=PACKAGE, on_backend_error="raise")
        with pytest.raises(BackendError, match="unreachable"):
            compute(2)
        cachu.configure(package=PACKAGE, on_backend_error="miss")
    finally:
        redis_server.start()
    # Back: after the breaker's period, the library reconnects by itself.
    deadline = time.monotonic() + 5
    while True:
        calls.clear()
        compute(3)
        compute(3)
        if calls == [3]:
            break
        assert time.monotonic() < deadline, "did not reconnect"
        time.sleep(0.2)


def test_a_silent_server_costs_the_timeout_once_not_on_every_call(silent_server):
    """A server that accepts connections and never answers: the first call waits the
    command timeout, then the breaker answers at once until its period is over."""
    cachu.configure(
        package="silent",
        backend="redis",
        redis_url=f"redis://127.0.0.1:{silent_server}/0?socket_timeout=0.3&socket_connect_timeout=0.3",
    )

    @cachu.cache(ttl=60, package="silent")
    def f(x: int) -> int:
        return x

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        durations = []
        for i in range(30):
            t0 = time.monotonic()
            assert f(i) == i
            durations.append(time.monotonic() - t0)
    # Without the breaker, 30 calls would take 30 x 0.3 s.
    assert sum(durations) < 3, durations
    assert durations[0] >= 0.25
    assert sorted(durations)[len(durations) // 2] < 0.01, "the breaker did not open"


def test_undecodable_values_miss_and_only_ours_are_deleted(app, redis_server):
    @cachu.cache(ttl=300, package=PACKAGE)
    def value(x: int) -> str:
        return f"fresh{x}"

    r = redis_server.client()
    header = struct.pack("d", time.time())
    # Our format, but the pickle names a module that does not exist.
    broken = header + b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x07nomodul\x94."
    r.set("5m:value|x=1", broken, ex=300)
    r.set("5m:value|x=2", b"plain text of another program", ex=300)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert value(1) == "fresh1"
        assert value(2) == "fresh2"
    # The broken one of ours was replaced; the foreign one too, by the store of the
    # miss, but a read alone never deletes it:
    assert pickle.loads(r.get("5m:value|x=1")[8:]) == "fresh1"
    r.set("5m:value|x=3", b"plain text of another program", ex=300)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert value.get(x=3, default="miss") == "miss"
    assert r.get("5m:value|x=3") == b"plain text of another program"


def test_network_io_releases_the_gil(app, redis_server):
    @cachu.cache(ttl=300, package=PACKAGE)
    def value(x: int) -> int:
        return x

    value(1)
    r = redis_server.client()
    ticks = 0
    stop = threading.Event()

    def spin() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    r.execute_command("CLIENT", "PAUSE", 400)  # the server answers nobody for 0.4 s
    t = threading.Thread(target=spin)
    t.start()
    t0 = time.monotonic()
    value(1)
    elapsed = time.monotonic() - t0
    stop.set()
    t.join()
    assert elapsed > 0.3
    assert ticks > 10_000, f"the other thread ran only {ticks} times while we waited"


def test_tls_with_a_throwaway_certificate(tls_redis_server: RedisServer):
    url = tls_redis_server.url
    assert url.startswith("rediss://")
    cachu.configure(package="tlsapp", backend="redis", redis_url=url)
    calls = []

    @cachu.cache(ttl=300, package="tlsapp")
    def secret(x: int) -> int:
        calls.append(x)
        return x

    assert secret(1) == 1
    assert secret(1) == 1
    assert calls == [1]
    client = cachu.get_redis_client(package="tlsapp")
    assert client.get("5m:secret|x=1")[8:] == pickle.dumps(1)


def test_tls_refuses_an_unknown_certificate(tls_redis_server: RedisServer):
    plain = tls_redis_server.url.split("?")[0]
    cachu.configure(package="tlsbad", backend="redis", redis_url=plain, on_backend_error="raise")

    @cachu.cache(ttl=300, package="tlsbad")
    def f(x: int) -> int:
        return x

    with pytest.raises(BackendError):
        f(1)


def test_bad_redis_urls_are_refused_at_configure_time():
    for bad in ("http://h", "redis://h:port/0", "redis://h/0?socket_timeout=soon", 42):
        with pytest.raises(cachu.ConfigurationError, match="redis_url"):
            cachu.configure(package="badurl", redis_url=bad)


def test_fork_children_open_their_own_connections(app, this_python):
    code = textwrap.dedent(
        f"""
        import os, cachu
        cachu.configure(package='redisapp', backend='redis', redis_url={app!r})
        @cachu.cache(ttl=300, package='redisapp')
        def f(x):
            return os.getpid()
        parent = f(1)
        pid = os.fork()
        if pid == 0:
            ok = f(1) == parent and f(2) == os.getpid()
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert f(1) == parent and f(2) != os.getpid()
        print('ok')
        """
    )
    assert run_python(this_python, code).strip() == "ok"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))


def test_get_redis_client_without_redis_py_says_what_to_install(this_python):
    # An interpreter where `import redis` fails, as it does without the extra.
    out = run_python(
        this_python,
        "import sys; sys.modules['redis'] = None\n"
        "import cachu\n"
        "try:\n"
        "    cachu.get_redis_client()\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n",
    )
    assert "ImportError:" in out and "pip install cachu[redis]" in out, out
