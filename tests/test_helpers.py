"""The helpers (.get, .set, .invalidate, .refresh, cache_info) and the CRUD functions
where users meet them: while caching is off, while the backend is down, and with
positional arguments."""

from __future__ import annotations

import asyncio
import warnings

import pytest

import cachu
from cachu import BackendError
from conftest import free_port


@pytest.fixture
def redis_down(tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0?socket_connect_timeout=0.2"
    cachu.configure(package="helpers_down", backend="redis", redis_url=url)
    yield "helpers_down"


def test_helpers_bind_positional_arguments_as_calls_do():
    @cachu.cache(ttl=300, package="helpers")
    def get_user(user_id, region="eu"):
        return {"id": user_id, "region": region}

    get_user(123)
    assert get_user.get(123) == {"id": 123, "region": "eu"}
    assert get_user.get(123, region="eu") == get_user.get(user_id=123)
    assert get_user.get(7, default=None) is None
    # cachu 0.2.7's form: a lone positional beside keywords is the default.
    assert get_user.get(None, user_id=8) is None
    get_user.set({"id": 5}, 5)
    assert get_user(5) == {"id": 5}
    get_user.invalidate(123)
    with pytest.raises(KeyError):
        get_user.get(123)
    assert get_user.refresh(123) == {"id": 123, "region": "eu"}
    assert cachu.cache_info(get_user).currsize == 2


def test_while_caching_is_off_no_helper_touches_a_backend(redis_down):
    @cachu.cache(ttl=300, package=redis_down)
    def get_user(user_id):
        return {"id": user_id}

    cachu.disable()
    try:
        assert get_user(1) == {"id": 1}
        assert get_user.get(1, default="none") == "none"
        with pytest.raises(KeyError):
            get_user.get(user_id=1)
        get_user.set({"id": 2}, user_id=2)  # nothing is stored
        get_user.invalidate(user_id=1)  # nothing to remove
        assert get_user.refresh(user_id=3) == {"id": 3}
        assert cachu.cache_get(get_user, user_id=1, default=0) == 0
        cachu.cache_set(get_user, {"id": 9}, user_id=9)
        cachu.cache_delete(get_user, user_id=9)
        info = cachu.cache_info(get_user)
        assert info.currsize == 0 and get_user.cache_info() == info
    finally:
        cachu.enable()


def test_in_an_outage_reads_miss_and_writes_raise(redis_down):
    @cachu.cache(ttl=300, package=redis_down)
    def get_user(user_id):
        return {"id": user_id}

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert get_user(1) == {"id": 1}
        assert get_user.get(1, default="fallback") == "fallback"
        assert cachu.cache_get(get_user, user_id=1, default=None) is None
        info = cachu.cache_info(get_user)  # a /stats endpoint keeps working
        assert (info.currsize, info.misses) == (0, 1)
    assert any("backend failed" in str(w.message) for w in said)
    for write in (
        lambda: get_user.set({"id": 1}, user_id=1),
        lambda: get_user.invalidate(user_id=1),
        lambda: cachu.cache_delete(get_user, user_id=1),
        lambda: cachu.cache_set(get_user, 1, user_id=1),
    ):
        with pytest.raises(BackendError):
            write()
    cachu.configure(package=redis_down, on_backend_error="raise")
    with pytest.raises(BackendError):
        get_user.get(1, default=None)
    with pytest.raises(BackendError):
        cachu.cache_info(get_user)


def test_async_functions_have_the_same_helpers():
    @cachu.cache(ttl=300, package="helpers_async")
    async def get_user(user_id):
        return {"id": user_id}

    async def main():
        await get_user(1)
        assert await get_user.get(1) == {"id": 1}
        await get_user.set({"id": 2}, 2)
        assert await get_user(2) == {"id": 2}
        await get_user.invalidate(1)
        assert get_user.cache_info().currsize == 1
        assert get_user.cache_info() == cachu.cache_info(get_user)

    asyncio.run(main())
    sync_helpers = {"get", "set", "invalidate", "refresh", "original", "cache_key", "cache_info"}
    assert all(callable(getattr(get_user, name)) for name in sync_helpers | {"clear"})


def test_bare_cache_without_parentheses_is_cache_with_defaults():
    runs = []

    @cachu.cache
    def get_user(user_id):
        runs.append(user_id)
        return {"id": user_id}

    assert get_user(1) == get_user(1) == {"id": 1}
    assert runs == [1]
    assert get_user.__name__ == "get_user"
    assert get_user.cache_key(1).startswith("5m:get_user|")  # the default ttl, 300
    assert get_user.get(user_id=1) == {"id": 1}
    assert cachu.cache_info(get_user).hits == 1

    class Repo:
        @cachu.cache
        def find(self, x):
            runs.append(("find", x))
            return x

    assert Repo().find(2) == Repo().find(2) == 2
    assert runs.count(("find", 2)) == 1

    @cachu.cache
    async def fetch(x):
        runs.append(("fetch", x))
        return x

    async def main():
        assert await fetch(3) == await fetch(3) == 3

    asyncio.run(main())
    assert runs.count(("fetch", 3)) == 1


def test_a_named_function_given_by_position_is_still_a_dynamic_ttl():
    def compute_ttl(result):
        return 3600 if result["stable"] else 60

    @cachu.cache(compute_ttl)  # cachu 0.2.7 takes the ttl by position
    def get_data(x):
        return {"stable": x > 0}

    assert get_data(1) == {"stable": True}
    assert get_data.cache_key(1).startswith("-1s:get_data|")
