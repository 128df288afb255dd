"""The near cache in front of Redis (``configure(near_cache=True)``), against real
servers: another process's writes reach this one's near copies within milliseconds; a
dropped tracking connection or an outage never leaves a stale copy served."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import cachu
from conftest import RedisServer

# A process that reads ``f(1)`` of package ``near_r`` as fast as it can, through its
# near cache, and acknowledges each new version it sees in the Redis key ``ack``
# (with the delay since the writer made it). It stops when ``stop`` is set, and prints
# its delays and counters as JSON.
READER = textwrap.dedent(
    """
    import asyncio, json, sys, time, cachu, redis
    url, mode, control = sys.argv[1], sys.argv[2], sys.argv[3]
    cachu.configure(package="near_r", backend="redis", redis_url=url, near_cache=True)
    r = redis.Redis.from_url(control)

    if mode == "sync":
        @cachu.cache(ttl=300, package="near_r")
        def f(x):
            return {"v": -1, "t": 0.0}

        read = lambda: f(1)
    else:
        @cachu.cache(ttl=300, package="near_r")
        async def f(x):
            return {"v": -1, "t": 0.0}

        loop = asyncio.new_event_loop()
        read = lambda: loop.run_until_complete(f(1))
    fn = f
    delays, last = [], None
    r.set("reader", "up")
    deadline = time.time() + 120
    while time.time() < deadline:
        v = read()
        if v["v"] != last:
            last = v["v"]
            if v["t"]:
                delays.append(time.time() - v["t"])
            r.set("ack", last)
        if r.exists("stop") and last == int(r.get("stop")):
            break
    info = fn.cache_info()
    print(json.dumps({"delays": delays, "hits": info.hits, "near_hits": info.near_hits}))
    """
)


def _value(version: int) -> dict[str, Any]:
    return {"v": version, "t": time.time()}


def _wait_ack(control: Any, version: int, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if control.get("ack") == str(version).encode():
            return
        time.sleep(0.0005)
    raise AssertionError(f"the reader did not see version {version} within {timeout} s")


def _start_reader(url: str, mode: str, control_url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", READER, url, mode, control_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(reader: subprocess.Popen[str], control: Any, last: int) -> dict[str, Any]:
    control.set("stop", last)
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def _writer_and_reader(
    url: str, server: RedisServer, mode: str, f: Any, first: int
) -> tuple[Any, subprocess.Popen[str]]:
    """This process writes `f(1)` of package ``near_w`` (the reader's `f(1)`: the same
    key, neither has a key prefix); the reader has seen version ``first`` and serves
    from its near cache."""
    control = server.client()
    control.delete("ack", "stop", "reader")
    cachu.configure(package="near_w", backend="redis", redis_url=url)
    reader = _start_reader(url, mode, server.url)
    f.set(_value(first), 1)
    _wait_ack(control, first, timeout=20)
    time.sleep(0.5)  # its tracking connection is up
    return control, reader


@pytest.fixture(params=["single", "cluster"])
def near_url(request: Any) -> str:
    if request.param == "cluster":
        return str(request.getfixturevalue("cluster_url"))
    return str(request.getfixturevalue("redis_url"))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_writes_of_another_process_reach_the_near_copies_within_50_ms(
    near_url: str, redis_server: RedisServer, mode: str
) -> None:
    """1,000 `.set`s here, each seen by the reader before the next: p99 of the delay."""
    version = [-1]

    @cachu.cache(ttl=300, package="near_w")
    def f(x: int) -> dict[str, Any]:
        return _value(version[0])

    control, reader = _writer_and_reader(near_url, redis_server, mode, f, 0)
    changes = 1000
    for version in range(1, changes + 1):
        f.set(_value(version), 1)
        _wait_ack(control, version)
    result = _finish(reader, control, changes)
    delays = sorted(result["delays"])
    assert len(delays) >= changes
    p99 = delays[int(len(delays) * 0.99)]
    p50 = delays[len(delays) // 2]
    print(f"near cache invalidation ({mode}): p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms")
    assert p99 < 0.05, p99
    # The reader answered from its near cache: Redis was asked about once per change.
    assert result["hits"] - result["near_hits"] <= 2 * changes + 50, result
    assert result["near_hits"] > changes, result


@pytest.mark.parametrize("change", ["set", "invalidate", "overwrite", "cache_clear"])
def test_every_kind_of_change_reaches_the_other_process(
    redis_url: str, redis_server: RedisServer, change: str
) -> None:
    version = [1]

    @cachu.cache(ttl=300, package="near_w")
    def f(x: int) -> dict[str, Any]:
        return _value(version[0])

    control, reader = _writer_and_reader(redis_url, redis_server, "sync", f, 1)
    version[0] = 2
    if change == "set":
        f.set(_value(2), 1)
    elif change == "overwrite":
        f(1, _overwrite_cache=True)
    elif change == "invalidate":
        f.invalidate(1)
    else:
        cachu.cache_clear(package="near_w")
    if change in ("invalidate", "cache_clear"):
        # Gone from Redis: the reader computes its own (-1) within 50 ms.
        deadline = time.monotonic() + 0.05
        while control.get("ack") != b"-1":
            assert time.monotonic() < deadline, "the reader still serves its near copy"
            time.sleep(0.0005)
        result = _finish(reader, control, -1)
    else:
        _wait_ack(control, 2, timeout=0.05)
        result = _finish(reader, control, 2)
    assert result["near_hits"] > 0


def _pickled(value: Any) -> bytes:
    """A value in the 0.2.x format (FORMATS.md): created_at, then the pickle."""
    return struct.pack("=d", time.time()) + pickle.dumps(value)


def _near_ready(f: Any, arg: int, timeout: float = 10) -> None:
    """Until calls of ``f(arg)`` are answered by the near cache."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = f.cache_info().near_hits
        f(arg)
        if f.cache_info().near_hits > before:
            return
        time.sleep(0.02)
    raise AssertionError("the near cache never served")


def _serving_a(url: str, package: str) -> Any:
    """`f` of `package` (computing "computed"), its `f(1)` set to "A" and served from
    the near cache."""
    cachu.configure(package=package, backend="redis", redis_url=url, near_cache=True)

    @cachu.cache(ttl=300, package=package)
    def f(x: int) -> str:
        return "computed"

    f.set("A", 1)
    _near_ready(f, 1)
    return f


def test_a_killed_tracking_connection_leaves_nothing_stale(
    redis_url: str, redis_server: RedisServer
) -> None:
    f = _serving_a(redis_url, "near_k")
    client = redis_server.client()
    trackers = [c for c in client.client_list() if c.get("name") == "cachu-near"]
    assert len(trackers) == 1
    client.client_kill_filter(_id=trackers[0]["id"])
    client.set("5m:f|x=1", _pickled("B"))  # no invalidation reaches this process
    seen = []
    deadline = time.monotonic() + 0.05
    while time.monotonic() < deadline or seen[-1] != "B":
        seen.append(f(1))
        assert time.monotonic() < deadline + 1
    assert "B" in seen and "A" not in seen[seen.index("B") :], seen[:5]
    # The tracking connection comes back, and the near cache serves again.
    _near_ready(f, 1)
    assert f(1) == "B"


def _trackers(server: RedisServer) -> int:
    return sum(c.get("name") == "cachu-near" for c in server.client().client_list())


def _tracking_threads() -> int:
    tasks = Path(f"/proc/{os.getpid()}/task")
    return sum((t / "comm").read_text().strip() == "cachu-near" for t in tasks.iterdir())


def _until(what: str, done: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_url_no_near_region_uses_any_more_keeps_no_connection_nor_thread(
    redis_url: str, redis_server: RedisServer, tmp_path: Any
) -> None:
    other = RedisServer(tmp_path)
    try:
        _until("earlier tests' tracking threads ended", lambda: _tracking_threads() == 0)
        f = _serving_a(redis_url, "near_m")
        assert _trackers(redis_server) == 1 and _tracking_threads() == 1
        cachu.configure(package="near_m", redis_url=other.url)
        other.client().set("5m:f|x=1", _pickled("B"))
        _near_ready(f, 1)  # served by the new server's watch
        assert f(1) == "B"
        _until("the old server's tracking connection closed", lambda: _trackers(redis_server) == 0)
        _until("the old watch's thread ended", lambda: _tracking_threads() == 1)
        assert _trackers(other) == 1
        cachu.configure(package="near_m", near_cache=False)
        assert f(1) == "B"  # from Redis now
        _until("the tracking connection closed", lambda: _trackers(other) == 0)
        _until("the last tracking thread ended", lambda: _tracking_threads() == 0)
        cachu.configure(package="near_m", near_cache=True)  # and back: a new watch
        _near_ready(f, 1)
        assert _trackers(other) == 1 and _tracking_threads() == 1
    finally:
        other.stop()


def test_an_outage_flushes_the_near_cache(tmp_path: Any) -> None:
    server = RedisServer(tmp_path)
    try:
        cachu.configure(package="near_o", backend="redis", redis_url=server.url, near_cache=True)
        computed = []

        @cachu.cache(ttl=300, package="near_o")
        def f(x: int) -> str:
            computed.append(x)
            return f"computed-{len(computed)}"

        assert f(1) == "computed-1"
        _near_ready(f, 1)
        server.stop()
        with pytest.warns(RuntimeWarning):
            during = [f(1) for _ in range(3)]
        assert "computed-1" not in during, during  # the near copy is gone with the server
        server.start()
        server.client().set("5m:f|x=1", _pickled("B"))
        deadline = time.monotonic() + 10
        while f(1) != "B":
            assert time.monotonic() < deadline, "the restarted server's value never served"
            time.sleep(0.05)
        _near_ready(f, 1)
        assert f(1) == "B"
    finally:
        server.stop()


def test_a_near_copy_never_outlives_its_redis_ttl(redis_url: str) -> None:
    cachu.configure(package="near_t", backend="redis", redis_url=redis_url, near_cache=True)
    runs = []

    @cachu.cache(ttl=lambda result: result["ttl"], package="near_t")
    def f(x: int) -> dict[str, Any]:
        runs.append(x)
        return {"ttl": 1, "run": len(runs)}

    first = f(1)
    _near_ready(f, 1)
    assert f(1) == first
    time.sleep(1.1)
    assert f(1)["run"] == 2, "the near copy outlived the Redis entry"


def test_near_copies_are_copies(redis_url: str) -> None:
    cachu.configure(package="near_c", backend="redis", redis_url=redis_url, near_cache=True)

    @cachu.cache(ttl=300, package="near_c")
    def f(x: int) -> list[int]:
        return [1, 2]

    f(1)
    _near_ready(f, 1)
    got = f(1)
    got.append(3)
    assert f(1) == [1, 2]


def test_near_cache_maxsize_bounds_the_near_tier(redis_url: str) -> None:
    cachu.configure(
        package="near_m",
        backend="redis",
        redis_url=redis_url,
        near_cache=True,
        near_cache_maxsize=50,
    )

    @cachu.cache(ttl=300, package="near_m")
    def f(x: int) -> int:
        return x

    _near_ready(f, 0)
    for i in range(500):
        f(i)
    for i in range(500):
        assert f(i) == i
    region = cachu.get_backend("redis", package="near_m", ttl=300)
    assert region.stats()["near_entries"] <= 50


def test_async_calls_are_served_by_the_near_cache(redis_url: str) -> None:
    cachu.configure(package="near_a", backend="redis", redis_url=redis_url, near_cache=True)

    @cachu.cache(ttl=300, package="near_a")
    async def g(x: int) -> int:
        return x * 2

    async def main() -> list[int]:
        out = [await g(1)]
        deadline = time.monotonic() + 10
        while g.cache_info().near_hits == 0:
            assert time.monotonic() < deadline
            out.append(await g(1))
            await asyncio.sleep(0.02)
        return out

    assert set(asyncio.run(main())) == {2}
    assert g.cache_info().near_hits > 0


def test_near_cache_options_are_checked() -> None:
    for name, value in [("near_cache", 1), ("near_cache", "yes"), ("near_cache_maxsize", 0),
                        ("near_cache_maxsize", -1), ("near_cache_maxsize", 2.5)]:  # fmt: skip
        with pytest.raises(cachu.ConfigurationError, match=name):
            cachu.configure(package="near_bad", **{name: value})
    cfg = cachu.configure(package="near_ok", near_cache=True, near_cache_maxsize=7)
    assert (cfg.near_cache, cfg.near_cache_maxsize) == (True, 7)


def test_a_forked_child_starts_its_own_tracking(redis_url: str, redis_server: RedisServer) -> None:
    """A child of fork() has the parent's near copies but not its tracking thread: it
    serves none of them until its own tracking connection is up, and then sees writes."""
    import os

    f = _serving_a(redis_url, "near_f")
    client = redis_server.client()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            client.set("5m:f|x=1", _pickled("B"))  # while no tracking of its own is up
            first = f(1)
            _near_ready(f, 1)
            client.set("5m:f|x=1", _pickled("C"))
            deadline = time.monotonic() + 0.05
            while f(1) != "C" and time.monotonic() < deadline:
                time.sleep(0.0005)
            os.write(write, f"{first} {f(1)}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    got = os.read(read, 100).decode()
    assert os.WEXITSTATUS(status) == 0 and got == "B C", got


def test_a_server_that_cannot_track_keys_is_asked_every_time_and_says_why(tmp_path: Any) -> None:
    """Without `CLIENT` (renamed away here, as on a managed server; or a Redis before 6,
    which has no tracking), the near cache never serves: every call asks Redis, and the
    region's stats say why."""
    from conftest import free_port, redis_server_binary

    port = free_port()
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--rename-command", "CLIENT", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"redis://127.0.0.1:{port}/0"
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        cachu.configure(package="near_n", backend="redis", redis_url=url, near_cache=True)
        runs = []

        @cachu.cache(ttl=300, package="near_n")
        def f(x: int) -> int:
            runs.append(x)
            return x * 2

        for _ in range(20):
            assert f(1) == 2
            time.sleep(0.02)
        info = f.cache_info()
        assert (info.hits, info.near_hits, len(runs)) == (19, 0, 1)
        stats = cachu.get_backend("redis", package="near_n", ttl=300).stats()
        assert stats["near_serving"] is False
        assert "CLIENT" in stats["near_trouble"] or "unknown command" in stats["near_trouble"]
    finally:
        proc.terminate()
        proc.wait(10)
