"""Code written for cachu 0.6 runs too: its names, options and behaviour, in the style
of its README's examples, beside every name and behaviour of 0.2.7."""

from __future__ import annotations

import asyncio
import datetime
import time

import pytest

import cachu
from cachu import ConfigurationError, cache, presets

PKG = "from06"


def test_the_quick_start_of_0_6_runs():
    cachu.configure(backend_default="memory", key_prefix="v1:", package=PKG)
    calls = []

    @cachu.cache(ttl=300, package=PKG)
    def get_user(user_id: int) -> dict:
        calls.append(user_id)
        return {"id": user_id}

    assert get_user(123) == get_user(123) == {"id": 123}
    assert calls == [123]
    assert get_user.cache_key(123).startswith("5m:v1:get_user|")
    config = cachu.get_config(package=PKG)
    assert (config.backend_default, config.backend) == ("memory", "memory")


def test_backend_and_backend_default_are_one_option():
    cachu.configure(backend_default="null", package=PKG)
    assert cachu.get_config(package=PKG).backend == "null"
    cachu.configure(backend="memory", backend_default="memory", package=PKG)
    with pytest.raises(ConfigurationError, match="backend_default"):
        cachu.configure(backend="file", backend_default="redis", package=PKG)
    assert cachu.get_config(package=PKG).backend == "memory"


def test_fail_open_is_on_backend_error():
    cachu.configure(fail_open=False, package=PKG)
    config = cachu.get_config(package=PKG)
    assert (config.fail_open, config.on_backend_error) == (False, "raise")
    cachu.configure(on_backend_error="miss", package=PKG)
    assert cachu.get_config(package=PKG).fail_open is True
    with pytest.raises(ConfigurationError, match="fail_open"):
        cachu.configure(on_backend_error="raise", fail_open=True, package=PKG)
    with pytest.raises(ConfigurationError, match="fail_open"):
        cachu.configure(fail_open="yes", package=PKG)


@pytest.mark.parametrize(
    ("option", "bad"),
    [
        ("cache_deadline", 0),
        ("cache_deadline", float("nan")),
        ("memory_sweep_interval", -1),
        ("redis_socket_timeout", True),
        ("redis_retry_count", -1),
        ("redis_health_check_interval", 1.5),
    ],
)
def test_the_0_6_options_refuse_bad_values(option, bad):
    with pytest.raises(ConfigurationError, match=option):
        cachu.configure(package=PKG, **{option: bad})


def test_the_0_6_options_are_kept_and_shown():
    cachu.configure(
        package=PKG,
        cache_deadline=0.5,
        memory_sweep_interval=30,
        redis_socket_timeout=0.25,
        redis_retry_count=1,
        redis_health_check_interval=10,
    )
    c = cachu.get_config(package=PKG)
    assert (c.cache_deadline, c.memory_sweep_interval, c.redis_socket_timeout) == (0.5, 30, 0.25)
    assert (c.redis_retry_count, c.redis_health_check_interval) == (1, 10)
    assert cachu.get_all_configs()[PKG]["cache_deadline"] == 0.5


def test_dynamodb_is_refused_clearly():
    with pytest.raises(ConfigurationError, match="DynamoDB backend of cachu 0.6 is not provided"):
        cachu.configure(backend_default="dynamodb", package=PKG)
    with pytest.raises(ConfigurationError, match="not provided"):
        cachu.configure(dynamodb_table="t", package=PKG)


def test_error_messages_hold_the_phrases_the_releases_tests_match(tmp_path):
    with pytest.raises(ValueError, match="backend must be one of"):
        cachu.configure(backend_default="mongodb", package=PKG)
    with pytest.raises(ValueError, match="file_dir must be an existing directory"):
        cachu.configure(file_dir=str(tmp_path / "missing"), package=PKG)
    with pytest.raises(cachu.BackendNotFoundError, match="backend must be one of"):
        cachu.get_backend("mongodb", ttl=300)
    assert issubclass(cachu.BackendNotFoundError, ConfigurationError)
    assert issubclass(cachu.BackendNotFoundError, ValueError)


def test_args_aware_ttl_and_cache_if_see_the_filtered_arguments():
    seen = []

    def ttl(result, args):
        seen.append(dict(args))
        return 900 if args["date"] == datetime.date.today() else 86400

    @cache(
        ttl=ttl,
        cache_if=lambda result, args: bool(result) or args["date"] != datetime.date.today(),
        package=PKG,
        exclude={"trace"},
    )
    def get_filings(date, self_=None, _private=1, trace=None, limit=10):
        return [] if date == datetime.date.today() else ["f"]

    today = datetime.date.today()
    past = datetime.date(2020, 1, 1)
    assert get_filings(past, trace="t") == ["f"]
    assert seen == [{"date": past, "limit": 10, "self_": None}]
    assert get_filings(past) == ["f"]
    assert cachu.cache_info(get_filings).hits == 1
    # Empty for today: not cached (cache_if), so computed again.
    get_filings(today)
    get_filings(today)
    assert cachu.cache_info(get_filings).misses == 3


def test_a_two_argument_validate_sees_the_arguments():
    @cache(ttl=300, validate=lambda entry, args: args["fresh"] is False, package=PKG)
    def value(x, fresh=False):
        return time.monotonic()

    first = value(1)
    assert value(1) == first
    assert value(1, fresh=True) != value(1, fresh=True)


def test_arity_is_decided_at_decoration():
    @cache(ttl=300, cache_if=lambda result, args=None: args is not None, package=PKG)
    def with_default(x):
        return x

    with_default(1)
    with_default(1)
    assert cachu.cache_info(with_default).hits == 1

    @cache(ttl=300, cache_if=bool, package=PKG)  # no readable signature: one argument
    def builtin_predicate(x):
        return x

    assert builtin_predicate(0) == 0

    for bad in (lambda: True, lambda a, b, c: True):
        with pytest.raises(TypeError, match="cache_if"):

            @cache(ttl=300, cache_if=bad, package=PKG)
            def f(x):
                return x


def test_a_one_argument_predicate_gets_the_value_alone():
    got = []

    @cache(ttl=lambda result: got.append(result) or 60, package=PKG)
    def f(x):
        return {"x": x}

    f(1)
    assert got == [{"x": 1}]


def test_the_today_aware_preset():
    today = datetime.date(2024, 5, 2)
    fetched = []

    @cache(
        tag="filings",
        package=PKG,
        **presets.today_aware(
            date_param="date", today_ttl=900, past_ttl=86400, today_fn=lambda: today
        ),
    )
    def get_filings(date):
        fetched.append(date)
        return [] if date == today else []

    get_filings(today)
    get_filings(today)  # empty for today: not cached
    get_filings(datetime.date(2024, 5, 1))
    get_filings(datetime.date(2024, 5, 1))  # empty for a past date: cached
    assert fetched == [today, today, datetime.date(2024, 5, 1)]
    keys = cachu.get_backend("memory", PKG, ttl=-1).keys()
    assert any("2024, 5, 1" in k for k in keys)

    @cache(package=PKG, **presets.today_aware(date_param="day", today_ttl=1, past_ttl=2))
    def wrong(date):
        return [1]

    with pytest.raises(KeyError, match="date_param='day'"):
        wrong(today)


def test_scoped_disable_enable_and_snapshot():
    calls = []

    @cache(ttl=300, package="alpha", tag="docs")
    def doc(x):
        calls.append(("doc", x))
        return x

    @cache(ttl=300, package="beta")
    def other(x):
        calls.append(("other", x))
        return x

    for f in (doc, other):
        f(1)
        f(1)
    assert len(calls) == 2
    cachu.disable(tag="docs")
    doc(1)
    other(1)
    assert calls[-1] == ("doc", 1) and len(calls) == 3
    assert cachu.is_disabled(tag="docs") and not cachu.is_disabled(package="beta")
    assert not cachu.is_disabled()
    cachu.disable(package="beta")
    other(1)
    assert calls[-1] == ("other", 1)
    scopes = cachu.get_disabled_scopes()
    assert scopes.globally is False
    assert scopes.packages == frozenset({"beta"}) and scopes.tags == frozenset({"docs"})
    cachu.enable(package="beta")
    other(1)
    assert len(calls) == 4  # beta hits again
    # A scoped enable does not lift a global disable.
    cachu.disable()
    cachu.enable(tag="docs")
    assert cachu.is_disabled() and cachu.get_disabled_scopes().globally
    cachu.enable()
    assert cachu.get_disabled_scopes() == cachu.get_disabled_scopes()
    assert not cachu.get_disabled_scopes().tags and not cachu.is_disabled(tag="docs")
    with pytest.raises(ValueError, match="tag must be a non-empty name"):
        cachu.disable(tag="")


def test_scoped_disable_reaches_async_functions():
    @cache(ttl=300, package="gamma")
    async def f(x):
        return time.monotonic()

    async def main():
        a = await f(1)
        assert await f(1) == a
        cachu.disable(package="gamma")
        assert await f(1) != a
        cachu.enable()
        assert await f(1) == a

    asyncio.run(main())


def test_the_clear_helper_matches_partially():
    @cache(ttl=300, package=PKG)
    def report(user_id, month):
        return (user_id, month)

    for u in (1, 2):
        for m in ("jan", "feb"):
            report(u, m)
    assert report.clear(user_id=1) == 2
    assert cachu.cache_info(report).currsize == 2
    assert report.clear(user_id=2, month="feb") == 1
    assert report.clear() == 1
    assert cachu.cache_info(report).currsize == 0


def test_the_0_6_names_exist():
    for name in [
        "BACKENDS",
        "BackendNotFoundError",
        "CacheMeta",
        "DisabledScopes",
        "aget_backend",
        "backends",
        "get_async_cache_info",
        "get_cache_info",
        "get_disabled_scopes",
        "presets",
    ]:
        assert name in cachu.__all__ and hasattr(cachu, name), name
    assert set(cachu.BACKENDS) == {"memory", "file", "redis", "null"}

    @cache(ttl=60, tag="t", exclude={"x"}, package=PKG)
    def f(x, y):
        return y

    meta = f._cache_meta
    assert isinstance(meta, cachu.CacheMeta)
    assert (meta.ttl, meta.backend, meta.tag, meta.exclude, meta.package) == (
        60,
        "memory",
        "t",
        {"x"},
        PKG,
    )
    assert meta.key_generator(1, 2) == f.cache_key(1, 2)
    f(1, 2)
    assert cachu.get_cache_info(f) == cachu.cache_info(f)
    assert asyncio.run(cachu.get_async_cache_info(f)).misses == 1


def test_backends_by_class(tmp_path):
    cachu.configure(file_dir=str(tmp_path), package=PKG)
    memory = cachu.get_backend("memory", PKG, ttl=300)
    assert isinstance(memory, cachu.backends.MemoryBackend)
    assert not isinstance(memory, cachu.backends.RedisBackend)
    assert isinstance(cachu.get_backend("file", PKG, ttl=300), cachu.backends.SqliteBackend)
    assert isinstance(cachu.get_backend("null", PKG, ttl=300), cachu.backends.NullBackend)

    async def main():
        b = await cachu.aget_backend("memory", PKG, ttl=300)
        await b.aset("k", {"v": 1})
        assert await b.aget("k") == {"v": 1}
        assert b.get("k") == {"v": 1}
        await b.adelete("k")
        assert await b.acount() == 0

    asyncio.run(main())


def _counted(mode: str, package: str, runs: list[int]):
    """A cached function of `package` that records its runs, called in `mode`."""
    if mode == "sync":

        @cache(ttl=300, package=package)
        def value(x):
            runs.append(x)
            return x

        return value

    @cache(ttl=300, package=package)
    async def avalue(x):
        runs.append(x)
        return x

    return lambda x: asyncio.run(avalue(x))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_past_the_cache_deadline_a_call_stores_nothing_and_returns(mode, redis_url, redis_server):
    """The lease takes longer than the deadline (the server pauses writes): the call
    computes, stores nothing, releases its lease and returns."""
    for deadline, expected_runs in ((None, 1), (0.1, 2)):
        package = f"deadline_{mode}_{deadline}"
        cachu.configure(backend="redis", redis_url=redis_url, package=package, key_prefix=package)
        if deadline:
            cachu.configure(cache_deadline=deadline, package=package)
        runs: list[int] = []
        call = _counted(mode, package, runs)

        redis_server.client().execute_command("CLIENT", "PAUSE", 300, "WRITE")
        started = time.monotonic()
        assert call(1) == 1
        assert time.monotonic() - started < 2
        assert call(1) == 1
        assert len(runs) == expected_runs, (deadline, runs)
        assert not [k for k in redis_server.client().keys("lock:*")], "a lease was left held"


def test_get_redis_client_takes_0_2_and_0_6_forms(redis_url, redis_server):
    cachu.configure(package=PKG, redis_url=redis_url)
    for client in (
        cachu.get_redis_client(package=PKG),
        cachu.get_redis_client(
            cachu.get_config(package=PKG).redis_url,
            health_check_interval=30,
            socket_timeout=1.0,
            retry_count=2,
        ),
    ):
        client.set("direct_key", "value")
        assert redis_server.client().get("direct_key") == b"value"


def test_the_memory_backend_s_sweep_and_counters():
    cachu.configure(package="mylib", memory_maxsize=10)

    @cache(ttl=0, package="mylib")
    def gone(x):
        return x

    @cache(ttl=300, package="mylib")
    def kept(x):
        return x

    for i in range(5):
        gone(i)  # a TTL of 0: expired at once
    backend = cachu.get_backend("memory", package="mylib", ttl=0)
    assert backend.sweep() == 5
    assert (backend.evictions, backend.expired_swept) == (0, 5)
    for i in range(30):
        kept(i)
    region = cachu.get_backend("memory", package="mylib", ttl=300)
    assert region.evictions >= 20


def test_a_redis_backend_s_client(redis_url, redis_server):
    cachu.configure(package=PKG, redis_url=redis_url)
    backend = cachu.get_backend("redis", PKG, ttl=300)
    backend.client.set("direct_key", "value")
    assert redis_server.client().get("direct_key") == b"value"
    with pytest.raises(AttributeError, match="no Redis client"):
        _ = cachu.get_backend("memory", PKG, ttl=300).client
