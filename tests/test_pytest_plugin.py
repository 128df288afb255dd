"""The pytest plugin shipped with the package (entry point ``pytest11``), run by
pytester in a pytest of its own; and defaults for every package in one call."""

from __future__ import annotations

import textwrap

import pytest

import cachu

pytest_plugins = ["pytester"]


def test_the_plugin_is_registered_by_the_package(pytester):
    result = pytester.runpytest_subprocess("--trace-config", "-q", "--co")
    result.stdout.fnmatch_lines(["*cachu.pytest_plugin*"])


def test_cachu_disabled_turns_caching_off_for_one_test(pytester):
    pytester.makepyfile(
        textwrap.dedent(
            """
            import cachu

            runs = []

            @cachu.cache(ttl=300, package="plugged")
            def f(x):
                runs.append(x)
                return x

            def test_off(cachu_disabled):
                assert cachu.is_disabled()
                f(1); f(1)
                assert runs == [1, 1]

            def test_on_again():
                assert not cachu.is_disabled()
                runs.clear()
                f(2); f(2)
                assert runs == [2]
            """
        )
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:randomly")
    result.assert_outcomes(passed=2)


def test_cachu_isolated_gives_a_test_its_own_cache_and_restores_everything(
    pytester, redis_url, monkeypatch
):
    pytester.makepyfile(
        textwrap.dedent(
            f"""
            import os
            import cachu

            cachu.configure(package="app", backend="file", key_prefix="v1:")
            cachu.configure(package="shared", backend="redis", redis_url={redis_url!r})
            runs = []

            @cachu.cache(ttl=300, package="app")
            def on_file(x):
                runs.append(("file", x))
                return x

            @cachu.cache(ttl=300, package="shared")
            def on_redis(x):
                runs.append(("redis", x))
                return x

            @cachu.cache(ttl=300, package="mem", backend="memory")
            def in_memory(x):
                runs.append(("memory", x))
                return x

            def test_a_before():
                cachu.configure(package="app", file_dir=os.environ["OUTER_DIR"])
                on_file(1); on_redis(1); in_memory(1)

            def test_b_isolated(cachu_isolated):
                before = len(runs)
                on_file(1); on_redis(1); in_memory(1)  # the test's own: all misses
                assert len(runs) == before + 3
                assert cachu.get_config(package="app").file_dir == str(cachu_isolated.file_dir)
                assert cachu.get_config(package="app").key_prefix.startswith(
                    cachu_isolated.key_prefix
                )
                assert os.listdir(cachu_isolated.file_dir)

            def test_c_after():
                before = len(runs)
                on_file(1); on_redis(1); in_memory(1)  # what was cached before: hits
                assert len(runs) == before
                assert cachu.get_config(package="app").key_prefix == "v1:"
                assert cachu.get_config(package="app").file_dir == os.environ["OUTER_DIR"]
            """
        )
    )
    outer = pytester.mkdir("outer")
    monkeypatch.setenv("OUTER_DIR", str(outer))
    result = pytester.runpytest_subprocess("-q")
    result.assert_outcomes(passed=3)
    # The test's own Redis entries were cleared; the others were not.
    import redis

    keys = sorted(k.decode() for k in redis.Redis.from_url(redis_url).keys("*"))
    assert keys == ["5m:on_redis|x=1"], keys


def test_configure_defaults_reaches_every_package_without_its_own(tmp_path):
    try:
        cachu.configure_defaults(backend="file", file_dir=str(tmp_path))

        @cachu.cache(ttl=300, package="never_configured")
        def f(x):
            return x

        f(1)
        assert (tmp_path / "never_configured_cache5min.db").exists()
        assert cachu.get_config(package="never_configured").backend == "file"
        cachu.configure(package="own", key_prefix="p:")  # starts from the defaults
        assert cachu.get_config(package="own").backend == "file"
        with pytest.raises(TypeError, match="package"):
            cachu.configure_defaults(package="x")
    finally:
        cachu.configure_defaults(backend="memory", file_dir="/tmp")
