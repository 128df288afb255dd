"""Redis Cluster and Sentinel, against real servers started here: a cluster of 3
masters with a replica each, and a master with a replica watched by 3 sentinels."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from topologies import Cluster, SentinelGroup

import cachu
from conftest import configure_redis_package, coroutine_runs_on_a_cold_key, run_at_once


@pytest.fixture
def cluster(redis_cluster: Cluster) -> Cluster:
    return redis_cluster


@pytest.fixture
def sentinels(tmp_path_factory: Any) -> Iterator[SentinelGroup]:
    group = SentinelGroup(tmp_path_factory.mktemp("sentinel"))
    yield group
    group.stop()


def _slot(cluster: Cluster, key: bytes | str) -> int:
    port = cluster.masters()[0]
    return int(cluster.nodes[port].client().execute_command("CLUSTER", "KEYSLOT", key))


def test_a_cluster_serves_the_decorator_sync_and_async(cluster: Cluster, cluster_url: str) -> None:
    configure_redis_package("scale_c1", cluster_url)
    runs: list[int] = []

    @cachu.cache(ttl=60, package="scale_c1")
    def double(x: int) -> int:
        runs.append(x)
        return x * 2

    @cachu.cache(ttl=60, package="scale_c1")
    async def triple(x: int) -> int:
        runs.append(-x)
        return x * 3

    assert [double(i) for i in range(60)] == [i * 2 for i in range(60)]
    assert [double(i) for i in range(60)] == [i * 2 for i in range(60)]

    async def both() -> list[int]:
        first = [await triple(i) for i in range(60)]
        return first + [await triple(i) for i in range(60)]

    assert asyncio.run(both()) == [i * 3 for i in range(60)] * 2
    assert len(runs) == 120, "each key computed once"
    # The keys are spread over every master (each holds the slots of its share).
    per_master = {p: len(list(cluster.nodes[p].client().scan_iter())) for p in cluster.masters()}
    assert len(per_master) == 3 and all(n > 0 for n in per_master.values()), per_master
    assert sum(per_master.values()) == 120
    double.set(700, 7)
    assert double(7) == 700
    double.invalidate(7)
    assert double(7) == 14
    assert double.get(8) == 16
    assert cachu.cache_clear(package="scale_c1") == 120
    assert cluster.all_keys() == set()


def test_the_lease_of_a_key_lives_in_its_slot(cluster: Cluster, cluster_url: str) -> None:
    configure_redis_package("scale_c2", cluster_url)
    seen: list[set[bytes]] = []

    @cachu.cache(ttl=60, package="scale_c2")
    def look(x: Any) -> int:
        seen.append(cluster.all_keys())
        return 1

    for arg in (1, "a}b{", {"k": "{v}"}):
        look(arg)
    for during, arg in zip(seen, (1, "a}b{", {"k": "{v}"}), strict=True):
        (lock,) = [k for k in during if k.startswith(b"lock:")]
        assert lock.startswith(b"lock:{"), lock
        value_key = lock.split(b"}:", 1)[1]
        assert _slot(cluster, lock) == _slot(cluster, value_key), (arg, lock)
    assert not [k for k in cluster.all_keys() if k.startswith(b"lock:")], "leases released"


def test_clears_scan_every_master_and_spare_foreign_keys(
    cluster: Cluster, cluster_url: str
) -> None:
    configure_redis_package("scale_c3", cluster_url)
    client = cluster.client()
    foreign = [f"1m:other|x={i}" for i in range(1500)] + [f"app:{i}" for i in range(1500)]
    pipe = client.pipeline()
    for k in foreign:
        pipe.set(k, b"theirs")
    pipe.execute()

    @cachu.cache(ttl=60, package="scale_c3")
    def f(x: int) -> int:
        return x

    for i in range(300):
        f(i)
    region = cachu.get_backend("redis", package="scale_c3", ttl=60)
    assert region.count() == 300
    assert len(region.keys()) == 300
    assert region.count("*x=1*") == 111
    assert cachu.cache_clear(package="scale_c3") == 300
    left = cluster.all_keys()
    assert left == {k.encode() for k in foreign}


def test_a_cold_key_is_computed_once_by_three_processes(
    cluster: Cluster, cluster_url: str, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    script = f"""
import sys, threading, time, cachu
cachu.configure(package="scale_c4", backend="redis", redis_url={cluster_url!r}, lock_timeout=10)
@cachu.cache(ttl=60, package="scale_c4")
def slow(x):
    with open({str(runs)!r}, "a") as out:
        out.write("run\\n")
    time.sleep(0.5)
    return x * 2
time.sleep(max(0, float(sys.argv[1]) - time.time()))
got = []
threads = [threading.Thread(target=lambda: got.append(slow(21))) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(set(got))
"""
    assert run_at_once(sys.executable, script, 3) == ["{42}"] * 3
    assert runs.read_text().count("run") == 1


def test_a_cold_coroutine_is_computed_once_by_three_processes(
    cluster: Cluster, cluster_url: str, tmp_path: Path
) -> None:
    options = f"backend='redis', redis_url={cluster_url!r}, lock_timeout=10"
    assert coroutine_runs_on_a_cold_key(sys.executable, "scale_c5", options, tmp_path) == 1


def _reshard(cluster: Cluster, slots: int) -> None:
    """Moves ``slots`` slots from the first master to the second with redis-cli."""
    first, second = cluster.masters()[:2]
    ids = {
        p: cluster.nodes[p].client().execute_command("CLUSTER", "MYID").decode()
        for p in (first, second)
    }
    done = subprocess.run(
        ["redis-cli", "--cluster", "reshard", f"127.0.0.1:{first}", "--cluster-from", ids[first],
         "--cluster-to", ids[second], "--cluster-slots", str(slots), "--cluster-yes",
         "--cluster-pipeline", "10"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_resharding_under_load_gives_no_wrong_value_and_no_error(
    cluster: Cluster, cluster_url: str, mode: str
) -> None:
    package = f"scale_c6_{mode}"
    cachu.configure(
        package=package, backend="redis", redis_url=cluster_url, on_backend_error="raise"
    )
    errors: list[BaseException] = []
    wrong: list[tuple[int, int]] = []
    stop = threading.Event()
    calls = [0]

    @cachu.cache(ttl=120, package=package)
    def f(x: int) -> int:
        return x * 2

    @cachu.cache(ttl=120, package=package)
    async def g(x: int) -> int:
        return x * 2

    def hammer(seed: int) -> None:
        i = seed
        while not stop.is_set():
            i = (i * 7 + 3) % 2000
            try:
                got = f(i) if mode == "sync" else asyncio.run(g(i))
            except BaseException as e:  # noqa: BLE001 - every error fails the test
                errors.append(e)
                return
            calls[0] += 1
            if got != i * 2:
                wrong.append((i, got))

    threads = [threading.Thread(target=hammer, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    _reshard(cluster, 1000)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    assert not wrong, wrong[:3]
    assert calls[0] > 100


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster of its own for a test that kills a master."""
    c = Cluster(tmp_path / "own")
    yield c
    c.stop()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_killed_master_is_replaced_without_a_restart(own_cluster: Cluster, mode: str) -> None:
    package = f"scale_c7_{mode}"
    configure_redis_package(package, own_cluster.url)
    runs: list[int] = []

    @cachu.cache(ttl=120, package=package)
    def f(x: int) -> int:
        runs.append(x)
        return x * 2

    @cachu.cache(ttl=120, package=package)
    async def g(x: int) -> int:
        runs.append(x)
        return x * 2

    def call(x: int) -> int:
        return f(x) if mode == "sync" else asyncio.run(g(x))

    keys = range(200)
    assert [call(i) for i in keys] == [i * 2 for i in keys]
    victim = own_cluster.masters()[0]
    own_cluster.nodes[victim].kill()
    # Fail-open: every call answers, right, while the replica takes over.
    deadline = time.monotonic() + 30
    recovered = False
    with pytest.warns(RuntimeWarning):
        while time.monotonic() < deadline:
            before = len(runs)
            assert [call(i) for i in keys] == [i * 2 for i in keys]
            if len(runs) == before:  # every key hit: all slots are served again
                recovered = True
                break
            time.sleep(0.1)
    assert recovered, "the promoted replica never served the dead master's slots"
    assert victim not in own_cluster.masters()


def test_get_redis_client_of_a_cluster_is_a_redis_cluster(
    cluster: Cluster, cluster_url: str
) -> None:
    from redis.cluster import RedisCluster

    configure_redis_package("scale_c8", cluster_url)

    @cachu.cache(ttl=60, package="scale_c8")
    def f(x: int) -> int:
        return x

    f(1)
    client = cachu.get_redis_client(package="scale_c8")
    assert isinstance(client, RedisCluster)
    assert client.exists("1m:f|x=1") == 1


def test_bad_cluster_and_sentinel_urls_are_refused_at_configure() -> None:
    for url, word in [
        ("redis+cluster://h1:7000/3", "database 0"),
        ("redis+cluster://h1:notaport", "host:port"),
        ("redis+sentinel://s1:26379", "master"),
        ("redis+sentinel://s1:26379/m/x", "database"),
    ]:
        with pytest.raises(cachu.ConfigurationError, match="redis_url") as info:
            cachu.configure(package="scale_bad", backend="redis", redis_url=url)
        assert word in str(info.value)


def test_a_password_in_a_cluster_url_stays_masked(tmp_path: Path) -> None:
    cachu.configure(
        package="scale_pw",
        backend="redis",
        redis_url="redis+cluster://u:s3cret@127.0.0.1:1/0?socket_connect_timeout=0.2",
        on_backend_error="raise",
    )

    @cachu.cache(ttl=60, package="scale_pw")
    def f(x: int) -> int:
        return x

    with pytest.raises(cachu.BackendError) as info:
        f(1)
    assert "s3cret" not in str(info.value) and "***" in str(info.value)


# --- Sentinel -----------------------------------------------------------------------------


def test_sentinel_finds_the_master_sync_and_async(sentinels: SentinelGroup) -> None:
    configure_redis_package("scale_s1", sentinels.url)
    runs: list[int] = []

    @cachu.cache(ttl=60, package="scale_s1")
    def f(x: int) -> int:
        runs.append(x)
        return x + 1

    @cachu.cache(ttl=60, package="scale_s1")
    async def g(x: int) -> int:
        runs.append(x)
        return x + 2

    assert [f(i) for i in range(10)] * 2 == [f(i) for i in range(10)] + [f(i) for i in range(10)]

    async def twice() -> list[int]:
        return [await g(i) for i in range(10)] + [await g(i) for i in range(10)]

    assert asyncio.run(twice()) == [i + 2 for i in range(10)] * 2
    assert len(runs) == 20
    master = sentinels.master().client()
    assert len(list(master.scan_iter("1m:*"))) == 20
    client = cachu.get_redis_client(package="scale_s1")
    assert client.get("1m:f|x=1") is not None
    assert cachu.cache_clear(package="scale_s1") == 20


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_sentinel_failover_under_load_recovers(sentinels: SentinelGroup, mode: str) -> None:
    package = f"scale_s2_{mode}"
    configure_redis_package(package, sentinels.url)
    stored: list[int] = []

    @cachu.cache(ttl=120, package=package)
    def f(x: int) -> int:
        stored.append(x)
        return x * 2

    @cachu.cache(ttl=120, package=package)
    async def g(x: int) -> int:
        stored.append(x)
        return x * 2

    def call(x: int) -> int:
        return f(x) if mode == "sync" else asyncio.run(g(x))

    assert [call(i) for i in range(50)] == [i * 2 for i in range(50)]
    old = sentinels.master_port()
    sentinels.master().kill()
    killed_at = time.monotonic()
    new = None
    with pytest.warns(RuntimeWarning):
        while time.monotonic() - killed_at < 40:
            assert [call(i) for i in range(50)] == [i * 2 for i in range(50)]
            port = sentinels.master_port()
            if port != old:
                marker = 10_000 + len(stored)
                assert call(marker) == marker * 2
                node = next(n for n in sentinels.data if n.port == port)
                if any(k.endswith(f"x={marker}".encode()) for k in node.client().scan_iter()):
                    new = port  # served by the new master: a key stored now is there
                    break
            time.sleep(0.1)
    assert new is not None, "no failover happened"
    assert time.monotonic() - killed_at < 40


def test_the_near_cache_follows_a_sentinel_failover(sentinels: SentinelGroup) -> None:
    """After a failover the near cache tracks the new master: a write there reaches it."""
    import pickle
    import struct

    cachu.configure(package="scale_s3", backend="redis", redis_url=sentinels.url, near_cache=True)

    @cachu.cache(ttl=120, package="scale_s3")
    def f(x: int) -> str:
        return "computed"

    def near_serves() -> bool:
        before = f.cache_info().near_hits
        f(1)
        return f.cache_info().near_hits > before

    f.set("A", 1)
    deadline = time.monotonic() + 10
    while not near_serves():
        assert time.monotonic() < deadline, "the near cache never served"
        time.sleep(0.02)
    old = sentinels.master_port()
    sentinels.master().kill()
    new = None
    with pytest.warns(RuntimeWarning):
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            f(1)
            if sentinels.master_port() != old and near_serves():
                new = sentinels.master_port()
                break
            time.sleep(0.05)
    assert new is not None, "the near cache never served after the failover"
    master = next(n for n in sentinels.data if n.port == new).client()
    master.set("2m:f|x=1", struct.pack("=d", time.time()) + pickle.dumps("B"))
    deadline = time.monotonic() + 0.05
    while f(1) != "B":
        assert time.monotonic() < deadline, "a write on the new master did not reach the near copy"
        time.sleep(0.0005)


def test_a_url_of_the_wrong_kind_is_a_clear_error(
    cluster: Cluster, cluster_url: str, redis_url: str
) -> None:
    node = cluster.masters()[0]
    for package, url, words in [
        ("scale_w1", f"redis://127.0.0.1:{node}/0", "redis+cluster://"),
        ("scale_w2", redis_url.replace("redis://", "redis+cluster://"), "CLUSTER SLOTS"),
    ]:
        cachu.configure(package=package, backend="redis", redis_url=url, on_backend_error="raise")

        @cachu.cache(ttl=60, package=package)
        def f(x: int) -> int:
            return x

        @cachu.cache(ttl=60, package=package)
        async def g(x: int) -> int:
            return x

        with pytest.raises(cachu.BackendError, match=words.replace("+", r"\+")):
            for i in range(20):  # some keys of a node's own slots may get through
                f(i)
        with pytest.raises(cachu.BackendError, match=words.replace("+", r"\+")):
            for i in range(20):
                asyncio.run(g(i))


def test_a_cluster_over_tls_with_a_password(tmp_path: Path) -> None:
    from conftest import make_tls_files

    tls = make_tls_files(tmp_path)
    c = Cluster(tmp_path / "tls", replicas=0, tls=tls, password="s3cret-pw")
    try:
        assert c.url.startswith("rediss+cluster://:s3cret-pw@")
        configure_redis_package("scale_tls", c.url)
        runs: list[int] = []

        @cachu.cache(ttl=60, package="scale_tls")
        def f(x: int) -> int:
            runs.append(x)
            return x * 2

        @cachu.cache(ttl=60, package="scale_tls")
        async def g(x: int) -> int:
            runs.append(x)
            return x * 3

        async def twice() -> list[int]:
            return [await g(i) for i in range(20)] + [await g(i) for i in range(20)]

        assert [f(i) for i in range(20)] * 2 == [f(i) for i in range(20)] + [
            f(i) for i in range(20)
        ]
        assert asyncio.run(twice()) == [i * 3 for i in range(20)] * 2
        assert len(runs) == 40
        assert len(c.all_keys()) == 40
        assert cachu.cache_clear(package="scale_tls") == 40
    finally:
        c.stop()


def _served_through(group: SentinelGroup, package: str) -> tuple[Any, list[int]]:
    """`f` of `package`, cached on `group`'s master: a sync and an async function,
    each called twice for 5 arguments, computed once for each; `f` and its runs."""
    configure_redis_package(package, group.url)
    runs: list[int] = []

    @cachu.cache(ttl=60, package=package)
    def f(x: int) -> int:
        runs.append(x)
        return x + 1

    @cachu.cache(ttl=60, package=package)
    async def g(x: int) -> int:
        runs.append(x)
        return x + 2

    async def twice() -> list[int]:
        return [await g(i) for i in range(5)] + [await g(i) for i in range(5)]

    assert [f(i) for i in range(5)] + [f(i) for i in range(5)] == [i + 1 for i in range(5)] * 2
    assert asyncio.run(twice()) == [i + 2 for i in range(5)] * 2
    assert len(runs) == 10
    assert len(list(group.master().client().scan_iter("1m:*"))) == 10
    return f, runs


def test_sentinel_over_tls(tmp_path: Path) -> None:
    from conftest import make_tls_files

    group = SentinelGroup(tmp_path / "s", tls=make_tls_files(tmp_path))
    try:
        assert group.url.startswith("rediss+sentinel://")
        _served_through(group, "scale_s4")
    finally:
        group.stop()


def test_sentinels_with_a_password_of_their_own(tmp_path: Path) -> None:
    group = SentinelGroup(tmp_path / "s", password="master-pw", sentinel_password="sentinel-pw")
    try:
        assert "sentinel_password=sentinel-pw" in group.url
        f, runs = _served_through(group, "scale_s5")
        client = cachu.get_redis_client(package="scale_s5")
        client.set("through-redis-py", b"1")
        assert group.master().client().get("through-redis-py") == b"1"
        stats = str(cachu.get_backend(package="scale_s5", ttl=60).stats())
        assert "sentinel-pw" not in stats and "master-pw" not in stats, stats

        # Without the sentinels' password: misses that say what to add, never a hang.
        cachu.configure(package="scale_s5", redis_url=group.url.split("?")[0])
        with pytest.warns(RuntimeWarning, match=r"sentinel_password=\.\.\.") as seen:
            assert f(10) == 11
        assert not any("sentinel-pw" in str(w.message) for w in seen)
        assert f(10) == 11 and runs.count(10) == 2
    finally:
        group.stop()


@pytest.mark.parametrize(
    ("kind", "words"), [("cluster", "CLUSTER SLOTS"), ("sentinel", "no master found")]
)
def test_servers_that_do_not_answer_cost_one_timeout_not_one_per_node(
    kind: str, words: str
) -> None:
    import socket

    listeners = []
    for _ in range(4):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(16)  # connections are accepted by the kernel, never answered
        listeners.append(s)
    nodes = ",".join(f"127.0.0.1:{s.getsockname()[1]}" for s in listeners)
    path = "0" if kind == "cluster" else "mymaster/0"
    options = "socket_timeout=0.5&socket_connect_timeout=0.5"
    try:
        cachu.configure(
            package="scale_mute",
            backend="redis",
            redis_url=f"redis+{kind}://{nodes}/{path}?{options}",
        )

        @cachu.cache(ttl=60, package="scale_mute")
        def f(x: int) -> int:
            return x

        started = time.monotonic()
        with pytest.warns(RuntimeWarning, match=words):
            assert f(1) == 1  # a miss, fail-open
        assert time.monotonic() - started < 1.5, "each node cost its own timeout"
        started = time.monotonic()
        assert [f(i) for i in range(5)] == list(range(5))
        assert time.monotonic() - started < 1.0, "the breakers did not answer"
    finally:
        for s in listeners:
            s.close()
