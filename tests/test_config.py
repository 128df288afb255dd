"""configure / get_config / get_all_configs, package isolation, and bad options."""

from __future__ import annotations

import pytest

import cachu
from cachu import ConfigurationError, cache


def test_defaults():
    cfg = cachu.get_config(package="never_configured_pkg")
    assert (cfg.backend, cfg.key_prefix, cfg.file_dir, cfg.redis_url) == (
        "memory",
        "",
        "/tmp",
        "redis://localhost:6379/0",
    )
    assert cfg.lock_timeout == 10.0


def test_package_isolation(tmp_path):
    cachu.configure(key_prefix="lib_a:", redis_url="redis://redis-a:6379/0", package="library_a")
    cachu.configure(key_prefix="lib_b:", redis_url="redis://redis-b:6379/0", package="library_b")
    assert cachu.get_config(package="library_a").key_prefix == "lib_a:"
    assert cachu.get_config(package="library_b").redis_url == "redis://redis-b:6379/0"
    all_configs = cachu.get_all_configs()
    assert all_configs["library_a"]["key_prefix"] == "lib_a:"
    assert all_configs["_default"]["key_prefix"] == ""

    @cache(ttl=300, package="library_a")
    def get_shared_data(id: int) -> dict:
        return {"id": id}

    assert get_shared_data.cache_key(1) == "5m:lib_a:get_shared_data|id=1"


def test_caller_package_is_detected():
    cachu.configure(key_prefix="mine:")
    assert cachu.get_config().key_prefix == "mine:"
    assert cachu.get_all_configs()[__name__.split(".")[0]]["key_prefix"] == "mine:"
    cachu.configure(key_prefix="")


def test_configure_after_decoration_applies():
    @cache(ttl=60)
    def f(x):
        return x

    assert f.cache_key(1) == "1m:f|x=1"
    cachu.configure(key_prefix="v2:")
    assert f.cache_key(1) == "1m:v2:f|x=1"
    cachu.configure(key_prefix="")


def test_configure_reaches_threads_that_called_before(tmp_path):
    """Each thread keeps its own copy of a function's settings for its calls: a
    configure() from another thread replaces it at the thread's next call."""
    import queue
    import threading

    cachu.configure(key_prefix="", package="threadcfg")
    calls = []

    @cache(ttl=60, package="threadcfg")
    def f(x):
        calls.append(x)
        return x

    asks: queue.Queue = queue.Queue()
    answers: queue.Queue = queue.Queue()

    def worker():
        while (x := asks.get()) is not None:
            f(x)
            answers.put(cachu.get_backend(package="threadcfg", ttl=60).keys())

    t = threading.Thread(target=worker)
    t.start()
    try:
        asks.put(1)
        assert answers.get(timeout=10) == ["1m:f|x=1"]
        cachu.configure(key_prefix="v2:", package="threadcfg")
        asks.put(1)
        assert sorted(answers.get(timeout=10)) == ["1m:f|x=1", "1m:v2:f|x=1"]
        assert calls == [1, 1]
        cachu.configure(backend="null", package="threadcfg")
        asks.put(2)
        answers.get(timeout=10)
        asks.put(2)
        answers.get(timeout=10)
        assert calls == [1, 1, 2, 2]
    finally:
        asks.put(None)
        t.join()
        cachu.configure(key_prefix="", backend="memory", package="threadcfg")


def test_partial_update_keeps_other_options():
    cachu.configure(key_prefix="keep:", package="partial_pkg")
    cachu.configure(backend="null", package="partial_pkg")
    cfg = cachu.get_config(package="partial_pkg")
    assert (cfg.key_prefix, cfg.backend) == ("keep:", "null")


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        (dict(backend="memcache"), ["backend", "'memcache'"]),
        (dict(backend=1), ["backend", "1"]),
        (dict(key_prefix=5), ["key_prefix", "5"]),
        (dict(file_dir="/definitely/not/here"), ["file_dir", "/definitely/not/here"]),
        (dict(redis_url="http://x"), ["redis_url", "http://x"]),
        (dict(lock_timeout=-1), ["lock_timeout", "-1"]),
        (dict(lock_timeout="10"), ["lock_timeout", "'10'"]),
        (dict(lock_timeout=True), ["lock_timeout", "True"]),
        (dict(colour="blue"), ["colour", "'blue'"]),
    ],
)
def test_bad_configure_options_name_parameter_and_value(kwargs, names):
    before = cachu.get_all_configs()
    with pytest.raises(ConfigurationError) as info:
        cachu.configure(**kwargs)
    for name in names:
        assert name in str(info.value)
    assert cachu.get_all_configs() == before, "a failed configure must change nothing"


def test_file_dir_must_be_writable():
    # Nobody, root included, creates files in /proc.
    with pytest.raises(ConfigurationError, match="file_dir=.*/proc.*not writable"):
        cachu.configure(file_dir="/proc", package="ro_pkg")


def test_file_dir_accepts_pathlike(tmp_path):
    cachu.configure(file_dir=tmp_path, package="pathlike_pkg")
    assert cachu.get_config(package="pathlike_pkg").file_dir == str(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        (dict(ttl=-5), "ttl"),
        (dict(ttl="300"), "ttl"),
        (dict(ttl=1.5), "ttl"),
        (dict(ttl=True), "ttl"),
        (dict(backend="memcache"), "backend"),
        (dict(cache_if=3), "cache_if"),
        (dict(validate="yes"), "validate"),
        (dict(tag=["users"]), "tag"),
        (dict(exclude="logger"), "exclude"),
        (dict(exclude={1, 2}), "exclude"),
        (dict(package=3), "package"),
    ],
)
def test_bad_decorator_options_fail_at_decoration(kwargs, param):
    with pytest.raises(ConfigurationError) as info:
        cache(**kwargs)
    assert str(info.value).startswith(f"{param}=")


def test_configuration_error_is_value_and_type_error():
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(ConfigurationError, TypeError)
    assert issubclass(ConfigurationError, cachu.CacheError)


def test_whole_float_ttl_is_accepted():
    @cache(ttl=300.0)
    def f(x):
        return x

    assert f.cache_key(1) == "5m:f|x=1"


def test_decorating_a_non_callable_fails():
    with pytest.raises(ConfigurationError, match="func"):
        cache(ttl=1)(42)


def test_not_decorated_function_in_crud():
    def plain():
        pass

    for op in (cachu.cache_info, cachu.cache_delete):
        with pytest.raises(ConfigurationError, match="not decorated"):
            op(plain)


@pytest.mark.parametrize("bad", ["60", -5, None, 1.5, True, float("nan")])
def test_a_dynamic_ttl_returning_no_ttl_keeps_the_result_uncached_and_says_why(bad):
    runs = []

    @cache(ttl=lambda r: bad, package="bad_dynamic_ttl")
    def f(x):
        runs.append(x)
        return {"x": x}

    with pytest.warns(RuntimeWarning, match="not cached") as said:
        assert f(1) == {"x": 1}
    assert "ttl" in str(said[0].message) and repr(bad) in str(said[0].message)
    assert f(1) == {"x": 1}
    assert runs == [1, 1]  # the function ran; its result was never stored
