"""What the `cachu` logger of the standard logging module records: each decorated
function's resolved settings (DEBUG), an outage and its recovery, results that are not
cached, and waits given up."""

from __future__ import annotations

import logging
import threading
import time
import warnings

import cachu
from conftest import RedisServer


def test_decoration_logs_the_resolved_package_backend_and_ttl(caplog):
    cachu.configure(package="logged", backend="null")
    with caplog.at_level(logging.DEBUG, logger="cachu"):

        @cachu.cache(ttl=300, package="logged")
        def get_user(user_id):
            return user_id

        @cachu.cache(ttl=60, package="unconfigured_pkg")
        def other(x):
            return x

    records = [r.getMessage() for r in caplog.records if r.name == "cachu"]
    assert any(
        "get_user" in m
        and "'logged'" in m
        and "backend null" in m
        and "configure()" in m
        and "ttl=300" in m
        and "region 5m" in m
        for m in records
    ), records
    assert any("other" in m and "no configure() of its own" in m for m in records), records


def test_an_outage_and_its_recovery_are_logged_with_the_password_masked(caplog, tmp_path):
    server = RedisServer(tmp_path, password="s3cret-pass")
    try:
        url = server.url + "?socket_connect_timeout=0.3&socket_timeout=0.3"
        cachu.configure(package="outage_log", backend="redis", redis_url=url)

        @cachu.cache(ttl=300, package="outage_log")
        def f(x):
            return x

        with caplog.at_level(logging.INFO, logger="cachu"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert f(1) == 1
            server.stop()
            assert f(2) == 2  # the outage begins: a miss, said once
            assert f(3) == 3
            server.start()
            time.sleep(1.1)  # the breaker lets a caller try again after a second
            assert f(4) == 4
            assert f(4) == 4
        messages = [r.getMessage() for r in caplog.records if r.name == "cachu"]
        failed = [m for m in messages if "unreachable" in m]
        recovered = [m for m in messages if "recovered" in m]
        assert len(failed) == 1, messages
        assert len(recovered) == 1, messages
        assert all("s3cret-pass" not in m and "***" in m for m in failed + recovered)
        assert [r.levelname for r in caplog.records if "recovered" in r.getMessage()] == ["INFO"]
    finally:
        server.stop()


def test_results_not_cached_and_waits_given_up_are_logged(caplog):
    cachu.configure(package="log_misc", lock_timeout=0.2)

    @cachu.cache(ttl=300, package="log_misc")
    def unpicklable(x):
        return threading.Lock()

    @cachu.cache(ttl=300, package="log_misc")
    def slow(x):
        time.sleep(0.6)
        return x

    with caplog.at_level(logging.WARNING, logger="cachu"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unpicklable(1)
        t = threading.Thread(target=slow, args=(1,))
        t.start()
        time.sleep(0.05)
        assert slow(1) == 1
        t.join()
    messages = [r.getMessage() for r in caplog.records if r.name == "cachu"]
    assert any("unpicklable() was not cached" in m for m in messages), messages
    assert any("lock_timeout" in m and "computing it here" in m for m in messages), messages


def test_metrics_count_per_function_and_export_to_prometheus(tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest

    from cachu.prometheus import CachuCollector
    from conftest import free_port

    cachu.configure(package="metered")
    dead = f"redis://127.0.0.1:{free_port()}/0?socket_connect_timeout=0.2"
    cachu.configure(package="metered_down", backend="redis", redis_url=dead)

    @cachu.cache(ttl=300, package="metered")
    def get_user(user_id):
        return user_id

    @cachu.cache(ttl=300, package="metered_down")
    def get_order(order_id):
        return order_id

    for i in (1, 1, 1, 2):
        get_user(i)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        get_order(1)
    by_name = {(f["package"], f["function"]): f for f in cachu.metrics()["functions"]}
    user = by_name[("metered", get_user.__qualname__)]
    assert (user["hits"], user["misses"], user["errors"]) == (2, 2, 0)
    order = by_name[("metered_down", get_order.__qualname__)]
    assert order["errors"] >= 1 and order["misses"] == 1
    servers = {s["server"]: s for s in cachu.metrics()["redis"]}
    assert servers[dead]["down"] and servers[dead]["outages"] >= 1

    registry = CollectorRegistry()
    registry.register(CachuCollector())
    text = generate_latest(registry).decode()
    qualname = get_user.__qualname__
    assert f'cachu_hits_total{{function="{qualname}",package="metered"}} 2.0' in text
    assert "cachu_redis_down{server=" in text

    cachu.configure(package="metered_file", backend="file", file_dir=str(tmp_path))

    @cachu.cache(ttl=300, package="metered_file")
    def on_file(x):
        return x

    on_file(1)
    on_file(1)
    region = [b for b in cachu.metrics()["backends"] if b["package"] == "metered_file"]
    assert len(region) == 1 and region[0]["operations"] >= 3 and region[0]["seconds"] > 0
    assert "cachu_backend_seconds_total{" in generate_latest(registry).decode()
