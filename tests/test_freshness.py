"""Freshness controls: stale-while-revalidate (``stale_ttl``), fail-safe
(``stale_if_error``), early refresh (``early_refresh``) and soft timeouts
(``timeout``), on every backend, sync and async, through the parity fixture."""

from __future__ import annotations

import pickle
import sqlite3
import textwrap
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

import cachu
from conftest import Flavor, run_at_once, run_python


def slow_body(flavor: Flavor, runs: list[Any], seconds: float, fail: list[bool] | None = None):
    """A body that records its runs and takes ``seconds`` (awaited in the async mode)."""

    def body(x):
        if flavor.mode == "sync":
            time.sleep(seconds)
        runs.append(x)
        if fail and fail[0]:
            raise ConnectionError("the source is down")
        return (x, len(runs))

    body.delay = seconds  # type: ignore[attr-defined]
    return body


def timed(flavor: Flavor, fn: Any, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    value = flavor.call(fn, *args)
    return value, time.perf_counter() - start


def test_a_stale_value_is_served_at_once_and_refreshed_once(flavor):
    runs: list[Any] = []
    fn = flavor.cache(slow_body(flavor, runs, 0.3), ttl=1, stale_ttl=30)
    assert flavor.call(fn, 1) == (1, 1)
    flavor.pause(1.2)
    start = time.perf_counter()
    served = flavor.call_together(fn, 8, 1)
    took = time.perf_counter() - start
    assert served == [(1, 1)] * 8  # the stale value, to every caller
    assert took < 0.25, f"callers waited {took:.3f} s for the refresh"
    flavor.pause(0.8)  # the refresh (0.3 s) is done
    assert flavor.call(fn, 1) == (1, 2)
    assert runs == [1, 1], "one refresh for 8 stale callers"
    info = cachu.cache_info(fn)
    assert (info.stale_hits, info.refreshes, info.misses) == (8, 1, 1)


def test_a_refresh_that_raises_leaves_the_stale_value(flavor, caplog):
    runs: list[Any] = []
    fail = [False]
    fn = flavor.cache(slow_body(flavor, runs, 0.05, fail), ttl=1, stale_ttl=30)
    assert flavor.call(fn, 2) == (2, 1)
    fail[0] = True
    flavor.pause(1.1)
    with caplog.at_level("WARNING", logger="cachu"):
        assert flavor.call(fn, 2) == (2, 1)
        flavor.pause(0.3)
        assert flavor.call(fn, 2) == (2, 1)  # still stale, not retried within a second
    assert len(runs) == 2
    assert "background refresh of body() raised" in caplog.text
    fail[0] = False
    flavor.pause(1.0)
    assert flavor.call(fn, 2) == (2, 1)  # starts the next refresh
    flavor.pause(0.3)
    assert flavor.call(fn, 2) == (2, 3)


def test_stale_if_error_serves_the_stale_value_within_its_window_only(flavor):
    runs: list[Any] = []
    fail = [False]
    fn = flavor.cache(slow_body(flavor, runs, 0, fail), ttl=1, stale_if_error=1.5)
    assert flavor.call(fn, 3) == (3, 1)
    fail[0] = True
    flavor.pause(1.1)
    with pytest.warns(RuntimeWarning, match=r"body\(\) raised ConnectionError; its stale"):
        assert flavor.call(fn, 3) == (3, 1)
    assert flavor.call(fn, 3) == (3, 1)  # within a second: not tried again
    assert len(runs) == 2
    assert cachu.cache_info(fn).fail_safe == 2
    flavor.pause(1.5)  # past ttl + stale_if_error
    with pytest.raises(ConnectionError, match="the source is down"):
        flavor.call(fn, 3)
    with pytest.raises(ConnectionError):  # exceptions are never cached
        flavor.call(fn, 3)
    assert len(runs) == 4


def test_stale_if_error_reaches_the_callers_that_wait_for_the_failing_one(flavor):
    runs: list[Any] = []
    fail = [False]
    fn = flavor.cache(slow_body(flavor, runs, 0.3, fail), ttl=1, stale_if_error=30)
    flavor.call(fn, 4)
    fail[0] = True
    flavor.pause(1.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert flavor.call_together(fn, 6, 4) == [(4, 1)] * 6
    assert len(runs) == 2, "one computation for the callers of one key"


def test_a_soft_timeout_returns_the_stale_value_and_stores_the_late_result(flavor):
    runs: list[Any] = []
    first = [True]

    def body(x):
        slow = not first[0]
        first[0] = False
        if slow and flavor.mode == "sync":
            time.sleep(1.0)
        runs.append(x)
        return (x, len(runs))

    fn = flavor.cache(body, ttl=1, stale_if_error=30, timeout=0.2)
    assert flavor.call(fn, 5) == (5, 1)
    body.delay = 1.0  # type: ignore[attr-defined]
    flavor.pause(1.1)
    value, took = timed(flavor, fn, 5)
    assert value == (5, 1)
    assert took < 0.35, f"the soft timeout of 0.2 s returned after {took:.3f} s"
    flavor.pause(1.3)  # the late computation ends, and is stored
    value, took = timed(flavor, fn, 5)
    assert value == (5, 2)
    assert took < 0.1
    assert len(runs) == 2
    assert cachu.cache_info(fn).fail_safe == 1


def test_early_refresh_recomputes_a_hot_key_before_it_expires(flavor):
    runs: list[Any] = []
    # A computation of delta = 0.2 s with BETA 3, hit about 24 times a second: each
    # hit with r seconds left starts a refresh with probability exp(-r / 0.6), so one
    # starts before the last 0.2 s but for a chance of exp(-24 * 0.6 * e^(-1/3)), 3e-5,
    # and on average ~1.6 s early (XFetch's lead grows with the request rate).
    fn = flavor.cache(slow_body(flavor, runs, 0.2), ttl=2, early_refresh=3.0)
    flavor.call(fn, 6)
    worst = 0.0
    deadline = time.monotonic() + 4.5
    while time.monotonic() < deadline:
        _, took = timed(flavor, fn, 6)
        worst = max(worst, took)
        flavor.pause(0.04)
    # Recomputed in the background, each time before the key expired: no caller met
    # the computation.
    assert 3 <= len(runs) <= 16, runs
    assert worst < 0.15, f"a caller waited {worst:.3f} s"
    info = cachu.cache_info(fn)
    assert info.misses == 1
    assert info.refreshes == len(runs) - 1


def test_refresh_and_overwrite_compute_in_the_caller(flavor):
    runs: list[Any] = []
    fn = flavor.cache(slow_body(flavor, runs, 0), ttl=1, stale_ttl=30)
    flavor.call(fn, 7)
    flavor.pause(1.1)
    if flavor.mode == "sync":
        assert fn.refresh(7) == (7, 2)
    else:
        assert flavor.loop.run_until_complete(fn.refresh(7)) == (7, 2)
    assert flavor.call(fn, 7, _overwrite_cache=True) == (7, 3)
    assert flavor.call(fn, 7) == (7, 3)


def test_validate_false_recomputes_now_even_when_stale_is_allowed(flavor):
    runs: list[Any] = []
    fn = flavor.cache(
        slow_body(flavor, runs, 0),
        ttl=1,
        stale_ttl=30,
        validate=lambda entry: entry.value[1] > 1,
    )
    assert flavor.call(fn, 8) == (8, 1)
    assert flavor.call(fn, 8) == (8, 2)  # refused: computed in the caller
    assert flavor.call(fn, 8) == (8, 2)


def test_set_values_go_stale_as_computed_ones_do(flavor):
    runs: list[Any] = []
    fn = flavor.cache(slow_body(flavor, runs, 0), ttl=1, stale_ttl=30)
    if flavor.mode == "sync":
        fn.set("given", 9)
    else:
        flavor.loop.run_until_complete(fn.set("given", 9))
    assert flavor.call(fn, 9) == "given"
    flavor.pause(1.1)
    assert flavor.call(fn, 9) == "given"  # stale, and refreshed
    flavor.pause(0.3)
    assert flavor.call(fn, 9) == (9, 1)


def test_freshness_controls_are_off_by_default_and_leave_stored_bytes_alone(tmp_path, redis_url):
    cachu.configure(package="fresh_off", backend="file", file_dir=str(tmp_path))

    @cachu.cache(ttl=60, package="fresh_off")
    def plain(x):
        return {"x": x}

    @cachu.cache(ttl=120, package="fresh_off", stale_ttl=600, early_refresh=1.0)
    def fresh(x):
        return {"x": x}

    plain(1)
    fresh(1)
    db = sqlite3.connect(tmp_path / "fresh_off_cache1min.db")
    value, created, expires = db.execute(
        "SELECT value, created_at, expires_at FROM cache"
    ).fetchone()
    assert value == pickle.dumps({"x": 1}), "no freshness controls: the bytes of 0.2.x"
    assert expires - created == pytest.approx(60, abs=1)
    db = sqlite3.connect(tmp_path / "fresh_off_cache2min.db")
    value, created, expires = db.execute(
        "SELECT value, created_at, expires_at FROM cache"
    ).fetchone()
    assert pickle.loads(value) == {"x": 1}, "a cachu 0.2.x reader unpickles it"
    assert expires - created == pytest.approx(720, abs=1), "kept for ttl + stale_ttl"


def test_values_with_freshness_controls_are_read_by_cachu_0_2_x(
    reference_python, redis_url, redis_server
):
    cachu.configure(package="fresh_shared", backend="redis", redis_url=redis_url)

    @cachu.cache(ttl=300, package="fresh_shared", stale_ttl=60, stale_if_error=120)
    def get_user(user_id):
        return {"id": user_id, "name": "Ada"}

    get_user(5)
    key = get_user.cache_key(5)
    assert 400 < redis_server.client().ttl(key) <= 420  # ttl + max(stale_ttl, stale_if_error)
    out = run_python(
        reference_python,
        textwrap.dedent(
            f"""
            import cachu
            cachu.configure(backend="redis", redis_url={redis_url!r})
            @cachu.cache(ttl=300)
            def get_user(user_id):
                raise AssertionError("computed: the shared value was not read")
            print(get_user(5))
            """
        ),
    )
    assert out.strip() == "{'id': 5, 'name': 'Ada'}"


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_a_stale_key_is_refreshed_once_across_processes(backend, tmp_path, this_python, request):
    url = request.getfixturevalue("redis_url") if backend == "redis" else "redis://127.0.0.1:1/0"
    runs = tmp_path / "runs"
    script = textwrap.dedent(
        f"""
        import sys, threading, time, cachu
        cachu.configure(package="fresh_procs", backend={backend!r},
                        file_dir={str(tmp_path)!r}, redis_url={url!r})
        @cachu.cache(ttl=1, stale_ttl=60, package="fresh_procs")
        def report(x):
            with open({str(runs)!r}, "a") as f:
                f.write("run\\n")
            time.sleep(0.5)
            return time.time()
        if sys.argv[1] == "fill":
            report(1)
            sys.exit()
        time.sleep(max(0, float(sys.argv[-1]) - time.time()))
        out, took = [], []
        def call():
            t = time.perf_counter()
            out.append(report(1))
            took.append(time.perf_counter() - t)
        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        time.sleep(1.5)  # this process's refresh, if it has one, ends
        print(len(set(out)), round(max(took), 3))
        """
    )
    run_python(this_python, script.replace("sys.argv[1]", "'fill'"))
    time.sleep(1.2)
    outs = run_at_once(this_python, script, 3, "call")
    for out in outs:
        distinct, worst = out.split()
        assert distinct == "1", "every caller got the stale value"
        assert float(worst) < 0.3, f"a caller waited {worst} s"
    assert runs.read_text().count("run") == 2, "filled once, refreshed once by 24 callers"


def test_a_stale_key_is_refreshed_once_by_the_tasks_of_processes(tmp_path, this_python, redis_url):
    runs = tmp_path / "runs"
    script = textwrap.dedent(
        f"""
        import asyncio, sys, time, cachu
        cachu.configure(package="fresh_aprocs", backend="redis", redis_url={redis_url!r})
        @cachu.cache(ttl=1, stale_ttl=60, package="fresh_aprocs")
        async def report(x):
            with open({str(runs)!r}, "a") as f:
                f.write("run\\n")
            await asyncio.sleep(0.5)
            return time.time()
        async def main():
            if sys.argv[1] == "fill":
                return await report(2)
            await asyncio.sleep(max(0, float(sys.argv[-1]) - time.time()))
            t = time.perf_counter()
            out = await asyncio.gather(*(report(2) for _ in range(10)))
            took = time.perf_counter() - t
            await asyncio.sleep(1.5)
            print(len(set(out)), round(took, 3))
        asyncio.run(main())
        """
    )
    run_python(this_python, script.replace("sys.argv[1]", "'fill'"))
    time.sleep(1.2)
    for out in run_at_once(this_python, script, 3, "call"):
        distinct, took = out.split()
        assert distinct == "1"
        assert float(took) < 0.3
    assert runs.read_text().count("run") == 2


def test_a_refresh_runs_in_a_copy_of_the_callers_context():
    import contextvars

    request_id = contextvars.ContextVar("request_id", default="none")
    seen: list[str] = []

    @cachu.cache(ttl=1, stale_ttl=30, package="fresh_context")
    def handler(x):
        seen.append(request_id.get())
        return x

    request_id.set("first")
    handler(1)
    time.sleep(1.1)
    request_id.set("second")
    handler(1)
    deadline = time.monotonic() + 2
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == ["first", "second"]
    assert threading.current_thread() is threading.main_thread()


def background_threads() -> int:
    return sum(
        1
        for task in Path("/proc/self/task").iterdir()
        if (task / "comm").read_text().strip().startswith("cachu-backgroun")
    )


def test_refreshes_of_many_keys_run_on_a_few_threads():
    started = threading.Event()

    @cachu.cache(ttl=1, stale_ttl=30, package="fresh_pool")
    def slow(x):
        if started.is_set():
            time.sleep(0.2)
        return x

    for i in range(100):
        slow(i)
    started.set()
    time.sleep(1.1)
    for i in range(100):
        assert slow(i) == i
    assert background_threads() <= 8
    deadline = time.monotonic() + 10
    while cachu.cache_info(slow).refreshes < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cachu.cache_info(slow).refreshes == 100


def test_a_program_exits_promptly_with_refreshes_pending(this_python):
    script = textwrap.dedent(
        """
        import time, cachu
        @cachu.cache(ttl=1, stale_ttl=60)
        def slow(x):
            time.sleep(0 if x == "fill" else 30)
            return x
        slow(1) if False else None
        @cachu.cache(ttl=1, stale_ttl=60)
        def g(x):
            if getattr(g, "filled", False):
                time.sleep(30)
            return x
        g(1); g.filled = True
        time.sleep(1.1)
        g(1)  # starts a refresh of 30 s
        time.sleep(0.2)
        print("leaving")
        """
    )
    start = time.monotonic()
    assert run_python(this_python, script, timeout=20).strip() == "leaving"
    assert time.monotonic() - start < 5


def test_a_fork_starts_without_its_parents_refreshes(this_python, tmp_path):
    runs = tmp_path / "runs"
    script = textwrap.dedent(
        f"""
        import os, time, cachu
        @cachu.cache(ttl=1, stale_ttl=60)
        def g(x):
            with open({str(runs)!r}, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            time.sleep(1.0)
            return x
        g(1)
        time.sleep(1.1)
        g(1)  # the parent's refresh starts (1 s)
        time.sleep(0.1)
        pid = os.fork()
        if pid == 0:
            g(1)  # the child's own refresh: its parent's is not its
            time.sleep(1.5)
            os._exit(0)
        os.waitpid(pid, 0)
        print("ok")
        """
    )
    assert run_python(this_python, script, timeout=30).strip() == "ok"
    pids = runs.read_text().split()
    assert len(pids) == 3 and len(set(pids)) == 2, pids


@pytest.mark.parametrize(
    ("option", "bad"),
    [
        ("stale_ttl", -1),
        ("stale_ttl", "10"),
        ("stale_ttl", True),
        ("stale_ttl", float("inf")),
        ("stale_if_error", -0.5),
        ("early_refresh", 0),
        ("early_refresh", -1.0),
        ("timeout", 0),
        ("timeout", float("nan")),
    ],
)
def test_bad_freshness_values_are_refused_naming_the_option(option, bad):
    extra = {"stale_if_error": 10} if option == "timeout" else {}
    with pytest.raises(cachu.ConfigurationError, match=option):
        cachu.cache(ttl=60, **{option: bad}, **extra)
    with pytest.raises(cachu.ConfigurationError, match=option):
        cachu.configure(package="fresh_bad", **{option: bad}, **extra)


def test_freshness_controls_that_cannot_work_are_refused():
    with pytest.raises(cachu.ConfigurationError, match="stale_if_error.*null backend"):
        cachu.cache(ttl=60, backend="null", stale_if_error=10)
    with pytest.raises(cachu.ConfigurationError, match="stale_ttl"):
        cachu.configure(package="fresh_null", backend="null", stale_ttl=10)
    with pytest.raises(cachu.ConfigurationError, match="timeout.*stale_if_error"):
        cachu.cache(ttl=60, timeout=1)
    with pytest.raises(cachu.ConfigurationError, match="timeout"):
        cachu.configure(package="fresh_timeout", timeout=1)


def test_package_defaults_apply_and_the_decorator_overrides_them():
    cachu.configure(package="fresh_defaults", stale_ttl=30, stale_if_error=60, timeout=2)
    cfg = cachu.get_config(package="fresh_defaults")
    assert (cfg.stale_ttl, cfg.stale_if_error, cfg.timeout, cfg.early_refresh) == (30, 60, 2, None)
    runs: dict[str, int] = {"default": 0, "overridden": 0}

    @cachu.cache(ttl=1, package="fresh_defaults")
    def by_default(x):
        runs["default"] += 1
        return runs["default"]

    @cachu.cache(ttl=1, package="fresh_defaults", stale_ttl=0)
    def overridden(x):
        runs["overridden"] += 1
        return runs["overridden"]

    assert by_default(1) == 1 and overridden(1) == 1
    time.sleep(1.1)
    assert by_default(1) == 1  # stale, refreshed in the background
    assert overridden(1) == 2  # no stale window: computed now


def test_get_returns_what_a_call_would_serve():
    @cachu.cache(ttl=1, stale_ttl=1, stale_if_error=5, package="fresh_get")
    def f(x):
        return x

    f(1)
    assert f.get(1) == 1
    time.sleep(1.1)
    assert f.get(1) == 1  # stale: a call serves it
    time.sleep(1.0)
    with pytest.raises(KeyError):
        f.get(1)  # kept only as the fallback of a failing computation
    assert f.get(1, default="none") == "none"
