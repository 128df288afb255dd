"""The README's examples as a type checker sees them: checked by `mypy --strict` and
`basedpyright` in .ci/run (not collected by pytest). A decorated function keeps its
parameters and result; its helpers are typed."""

from __future__ import annotations

import asyncio
from typing import Any, Optional, assert_type

import cachu
from cachu import CacheEntry, CacheInfo, async_cache, cache


@cache(ttl=300)
def get_user(user_id: int) -> dict[str, Any]:
    return {"id": user_id}


assert_type(get_user(123), dict[str, Any])
assert_type(get_user.get(user_id=123), dict[str, Any])
assert_type(get_user.get(default=None, user_id=123), Optional[dict[str, Any]])
get_user.set({"id": 123, "name": "Test"}, user_id=123)
get_user.invalidate(user_id=123)
assert_type(get_user.refresh(123), dict[str, Any])
assert_type(get_user.original(123), dict[str, Any])
assert_type(get_user.cache_key(123), str)
assert_type(get_user.cache_info(), CacheInfo)
assert_type(cachu.cache_info(get_user), CacheInfo)


@cache(ttl=lambda result: 60 if result else 5, tag="users", exclude={"trace"})
def find(name: str, trace: Optional[str] = None) -> Optional[int]:
    return len(name) or None


assert_type(find("ada"), Optional[int])


@cache(ttl=3600, validate=lambda entry: entry.age < 1800)
def get_price(symbol: str) -> float:
    return 1.0


def check_version(entry: CacheEntry) -> bool:
    return bool(entry.value)


@cache(ttl=86400, validate=check_version, cache_if=lambda result, args: bool(result))
def get_config() -> dict[str, int]:
    return {"version": 1}


assert_type(get_price("X"), float)
assert_type(get_config(), dict[str, int])


class UserRepository:
    @cache(ttl=300)
    def get(self, user_id: int) -> str:
        return str(user_id)


assert_type(UserRepository().get(1), str)


@cache(ttl=300)
async def get_user_async(user_id: int) -> dict[str, int]:
    return {"id": user_id}


@async_cache(ttl=60)
async def count(n: int) -> int:
    return n


async def main() -> None:
    assert_type(await get_user_async(123), dict[str, int])
    assert_type(await get_user_async.get(user_id=123), dict[str, int])
    assert_type(await get_user_async.get(default=None, user_id=123), Optional[dict[str, int]])
    await get_user_async.set({"id": 1}, user_id=1)
    await get_user_async.invalidate(user_id=1)
    assert_type(await get_user_async.refresh(1), dict[str, int])
    assert_type(await count(2), int)
    assert_type(get_user_async.cache_info(), CacheInfo)


asyncio.run(main())
