"""The examples of the specification, nearly verbatim, with their documented results."""

from __future__ import annotations

import time

import pytest

import cachu
from cachu import (
    cache,
    cache_clear,
    cache_delete,
    cache_get,
    cache_info,
    cache_set,
    get_backend,
)


def test_quick_start():
    calls = []

    def fetch_from_database(user_id):
        calls.append(user_id)
        return {"id": user_id}

    cachu.configure(backend="memory", key_prefix="v1:")

    @cachu.cache(ttl=300)
    def get_user(user_id: int) -> dict:
        return fetch_from_database(user_id)

    user = get_user(123)  # Cache miss - fetches from DB
    user = get_user(123)  # Cache hit - returns cached value
    assert user == {"id": 123}
    assert calls == [123]
    assert get_user.cache_key(123) == "5m:v1:get_user|user_id=123"
    cachu.configure(key_prefix="")


def test_backend_types_memory_and_null():
    runs = []

    def fetch(key):
        runs.append(key)
        return key.upper()

    @cache(ttl=300, backend="memory")
    def fast_lookup(key: str) -> str:
        return fetch(key)

    @cache(ttl=300, backend="null")
    def always_fresh(key: str) -> str:
        return fetch(key)  # Always executes, never caches

    assert fast_lookup("a") == fast_lookup("a") == "A"
    assert always_fresh("b") == always_fresh("b") == "B"
    assert runs == ["a", "b", "b"]
    assert cache_info(always_fresh).currsize == 0


def test_tags_for_grouping():
    @cache(ttl=300, tag="users")
    def get_user(user_id: int) -> dict:
        return {"user": user_id}

    @cache(ttl=300, tag="products")
    def get_product(product_id: int) -> dict:
        return {"product": product_id}

    get_user(1)
    get_user(2)
    get_product(1)
    assert get_user.cache_key(1) == "5m:get_user||users||user_id=1"

    # Clear only user caches
    assert cache_clear(tag="users", backend="memory", ttl=300) == 2
    assert cache_info(get_user).currsize == 0
    assert cache_info(get_product).currsize == 1


def test_dynamic_ttl():
    @cache(ttl=lambda result: result.get("cache_seconds", 300))
    def get_config(key: str) -> dict:
        return {"value": key, "cache_seconds": 600}

    def compute_ttl(result: dict) -> int:
        if result.get("is_stable"):
            return 3600
        return 60

    @cache(ttl=compute_ttl)
    def get_data(id: int) -> dict:
        return {"id": id, "is_stable": id % 2 == 0}

    assert get_config("a") == {"value": "a", "cache_seconds": 600}
    assert get_config.cache_key("a") == "-1s:get_config|key='a'"
    get_data(1)
    get_data(2)
    assert cache_info(get_data).currsize == 2
    backend = get_backend("memory", ttl=-1)
    assert backend.get("-1s:get_data|id=2") == {"id": 2, "is_stable": True}


def test_dynamic_ttl_expires_by_result():
    @cache(ttl=lambda result: result["ttl"])
    def short(x):
        return {"ttl": 1 if x == "short" else 60}

    short("short")
    short("long")
    time.sleep(1.2)
    assert cache_info(short).currsize == 1


def test_conditional_caching():
    users = {"a@x": {"email": "a@x"}}
    calls = []

    @cache(ttl=300, cache_if=lambda result: result is not None)
    def find_user(email: str) -> dict | None:
        calls.append(email)
        return users.get(email)

    @cache(ttl=300, cache_if=lambda result: len(result) > 0)
    def search(query: str) -> list:
        calls.append(query)
        return [query] if query else []

    find_user("missing")
    find_user("missing")
    find_user("a@x")
    find_user("a@x")
    search("")
    search("")
    search("q")
    search("q")
    assert calls == ["missing", "missing", "a@x", "", "", "q"]


def test_validation_callbacks():
    calls = []

    @cache(ttl=3600, validate=lambda entry: entry.age < 0.2)
    def get_price(symbol: str) -> float:
        calls.append(symbol)
        return 1.5

    get_price("X")
    get_price("X")
    time.sleep(0.3)
    get_price("X")
    assert calls == ["X", "X"]

    CURRENT_VERSION = 2
    version = {"v": 1}

    def check_version(entry):
        return entry.value.get("version") == CURRENT_VERSION

    @cache(ttl=86400, validate=check_version)
    def get_config() -> dict:
        return {"version": version["v"]}

    get_config()
    version["v"] = 2
    assert get_config() == {"version": 2}
    assert get_config() == {"version": 2}


def test_cache_entry_fields():
    seen = []

    def remember(entry):
        seen.append(entry)
        return True

    @cache(ttl=60, validate=remember)
    def f(x):
        return x * 2

    before = time.time()
    f(2)
    f(2)
    (entry,) = seen
    assert entry.value == 4
    assert before - 1 <= entry.created_at <= time.time()
    assert 0 <= entry.age < 5


def test_per_call_control():
    calls = []

    @cache(ttl=300)
    def get_data(id: int) -> dict:
        calls.append(id)
        return {"id": id, "n": len(calls)}

    result = get_data(123)
    assert result == {"id": 123, "n": 1}
    # Skip cache for this call only (don't read or write cache)
    result = get_data(123, _skip_cache=True)
    assert result["n"] == 2
    assert get_data(123)["n"] == 1
    # Force refresh - execute and overwrite cached value
    result = get_data(123, _overwrite_cache=True)
    assert result["n"] == 3
    assert get_data(123)["n"] == 3


def test_flags_never_reach_the_function():
    seen = {}

    @cache(ttl=300)
    def f(x, **kw):
        seen.update(kw)
        return x

    f(1, _skip_cache=True)
    f(1, _overwrite_cache=True)
    f(1, _skip_cache=False, _overwrite_cache=False)
    assert seen == {}


def test_decorator_helper_methods():
    fetched = []

    def fetch_user(user_id):
        fetched.append(user_id)
        return {"id": user_id, "name": "Fetched"}

    @cache(ttl=300)
    def get_user(user_id: int) -> dict:
        return fetch_user(user_id)

    with pytest.raises(KeyError):
        get_user.get(user_id=123)  # Raises KeyError if not cached
    assert get_user.get(default=None, user_id=123) is None

    get_user.set({"id": 123, "name": "Test"}, user_id=123)
    assert get_user(123) == {"id": 123, "name": "Test"}
    assert fetched == []

    get_user.invalidate(user_id=123)
    assert get_user.get(default=None, user_id=123) is None

    user = get_user.refresh(user_id=123)
    assert user == {"id": 123, "name": "Fetched"}
    assert get_user.get(user_id=123) == user

    user = get_user.original(123)  # Always fetches, doesn't read or write cache
    assert fetched == [123, 123]
    assert cache_info(get_user).currsize == 1


def test_cache_statistics():
    @cache(ttl=300)
    def get_user(user_id: int) -> dict:
        return {"id": user_id}

    get_user(1)
    get_user(1)
    get_user(2)
    info = cache_info(get_user)
    assert f"Hits: {info.hits}, Misses: {info.misses}, Size: {info.currsize}" == (
        "Hits: 1, Misses: 2, Size: 2"
    )


def test_excluding_parameters():
    class Logger:
        def info(self, msg):
            pass

    computed = []

    @cache(ttl=300, exclude={"logger", "context"})
    def process_data(logger, context, user_id: int, data: str) -> dict:
        logger.info(f"Processing for user {user_id}")
        computed.append(data)
        return {"data": data}

    process_data(Logger(), object(), 123, "test")  # Cache miss
    process_data(Logger(), object(), 123, "test")  # Cache hit
    assert computed == ["test"]
    assert process_data.cache_key(None, None, 123, "test") == (
        "5m:process_data|data='test' user_id=123"
    )


def test_automatic_filtering():
    class FakeConnection:
        pass

    class HasEngine:
        engine = object()

    @cache(ttl=60)
    def q(conn, _private, session, sql, **kw):
        return sql

    key = q.cache_key(FakeConnection(), 1, HasEngine(), "select 1", _x=2)
    assert key == "1m:q|sql='select 1'"


def test_crud_operations():
    @cache(ttl=300, tag="users")
    def get_user(user_id: int) -> dict:
        return {"id": user_id}

    assert cache_get(get_user, user_id=123, default=None) is None
    cache_set(get_user, {"id": 123, "name": "Updated"}, user_id=123)
    assert cache_get(get_user, user_id=123) == {"id": 123, "name": "Updated"}
    assert get_user(123) == {"id": 123, "name": "Updated"}
    cache_delete(get_user, user_id=123)
    with pytest.raises(KeyError):
        cache_get(get_user, user_id=123)


def _populate():
    @cache(ttl=300, tag="users", backend="memory")
    def users5(i):
        return i

    @cache(ttl=300, tag="items", backend="memory")
    def items5(i):
        return i

    @cache(ttl=3600, tag="users", backend="memory")
    def users60(i):
        return i

    @cache(ttl=3600, tag="users", backend="null")
    def null_users(i):
        return i

    for i in range(3):
        users5(i)
        items5(i)
        users60(i)
        null_users(i)
    return users5, items5, users60


def _sizes(*fns):
    return [cache_info(f).currsize for f in fns]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (dict(backend="memory", ttl=300), [0, 0, 3]),
        (dict(tag="users", backend="memory", ttl=300), [0, 3, 3]),
        (dict(backend="memory"), [0, 0, 0]),
        (dict(tag="users"), [0, 3, 0]),
        (dict(), [0, 0, 0]),
    ],
)
def test_clearing_table(kwargs, expected):
    fns = _populate()
    assert _sizes(*fns) == [3, 3, 3]
    cache_clear(**kwargs)
    assert _sizes(*fns) == expected


def test_clear_is_scoped_to_the_package():
    @cache(ttl=300, package="other_pkg")
    def theirs(i):
        return i

    @cache(ttl=300)
    def ours(i):
        return i

    theirs(1)
    ours(1)
    cache_clear()
    assert cache_info(theirs).currsize == 1
    assert cache_info(ours).currsize == 0
    # Cross-module clearing names the package.
    cache_clear(backend="memory", ttl=300, package="other_pkg")
    assert cache_info(theirs).currsize == 0


def test_instance_and_class_methods():
    class DB:
        def __init__(self):
            self.fetches = 0

        def fetch(self, user_id):
            self.fetches += 1
            return {"id": user_id}

    class UserRepository:
        DEFAULT_USER = {"id": -1}

        def __init__(self, db):
            self.db = db

        @cache(ttl=300)
        def get_user(self, user_id: int) -> dict:
            return self.db.fetch(user_id)

        @classmethod
        @cache(ttl=300)
        def get_default_user(cls) -> dict:
            return cls.DEFAULT_USER

        @staticmethod
        @cache(ttl=300)
        def get_guest() -> dict:
            return {"id": 0, "name": "Guest"}

    db = DB()
    repo = UserRepository(db)
    assert repo.get_user(1) == {"id": 1}
    assert repo.get_user(1) == {"id": 1}
    assert db.fetches == 1
    assert UserRepository.get_default_user() == {"id": -1}
    assert repo.get_default_user() == {"id": -1}
    assert UserRepository.get_guest() == {"id": 0, "name": "Guest"}
    assert repo.get_user.get(user_id=1) == {"id": 1}
    assert cache_info(repo.get_user).hits == 1


def test_testing_fixture_disables_everything():
    calls = []

    @cache(ttl=300)
    def f(x):
        calls.append(x)
        return x

    cachu.disable()
    assert cachu.is_disabled()
    f(1)
    f(1)
    cachu.enable()
    assert not cachu.is_disabled()
    f(1)
    f(1)
    assert calls == [1, 1, 1]


def test_direct_backend_access():
    backend = get_backend("memory", ttl=300)
    backend.set("my_key", {"data": "value"}, ttl=300)
    value = backend.get("my_key")
    assert value == {"data": "value"}
    backend.delete("my_key")
    assert backend.get("my_key") is cachu.NO_VALUE
    assert backend.get("my_key", None) is None
    assert isinstance(backend, cachu.Backend)


def test_public_api_names():
    from cachu import (  # noqa: F401
        AsyncBackend,
        Backend,
        async_cache,
        async_cache_clear,
        async_cache_delete,
        async_cache_get,
        async_cache_info,
        async_cache_set,
        cache,
        cache_clear,
        cache_delete,
        cache_get,
        cache_info,
        cache_set,
        clear_async_backends,
        configure,
        disable,
        enable,
        get_all_configs,
        get_async_backend,
        get_backend,
        get_config,
        get_redis_client,
        is_disabled,
    )


def test_wrapper_keeps_function_metadata():
    @cache(ttl=10)
    def documented(a, b=2):
        """Adds."""
        return a + b

    import inspect

    assert documented.__name__ == "documented"
    assert documented.__doc__ == "Adds."
    assert documented.__module__ == __name__
    assert documented.__wrapped__(1) == 3
    assert str(inspect.signature(documented)) == "(a, b=2)"


def test_this_readme_s_quick_start_runs_when_pasted():
    """The first Python block of the project's own README runs as it stands."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Quick start") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("querying the database") == 1  # the second call is a hit
