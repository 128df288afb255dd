"""The async API: coroutine functions under ``@cache`` / ``@async_cache``, and the
``async_cache_*`` operations.

Keys, validation, copies and storage are the Rust core's (the same as for sync
functions); this module only awaits. Memory lookups answer inline; lookups and
writes of the file backend run in a worker thread so the event loop never blocks.
Concurrent misses of one key within an event loop run the coroutine once.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Callable, Optional

from cachu._cachu import (
    CachedFunction,
    _caller_package,
    cache,
    cache_clear,
    cache_delete,
    cache_get,
    cache_info,
    cache_set,
    clear_backends,
    get_backend,
    is_disabled,
)

async_cache = cache

_MISSING = object()


def _offload(cached: CachedFunction, fn: Callable[..., Any], *args: Any) -> Any:
    """Runs ``fn`` inline for the memory backend, else in a worker thread."""
    if cached._is_memory:
        fut = asyncio.get_running_loop().create_future()
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting caller
            fut.set_exception(e)
        return fut
    return asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))


def wrap(cached: CachedFunction) -> Callable[..., Any]:
    """The coroutine function that stands for ``cached`` (a coroutine function)."""
    func = cached.__wrapped__
    # (loop, key) -> the future of the computation in progress.
    flights: dict[tuple[int, str], asyncio.Future[Any]] = {}

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        skip = kwargs.pop("_skip_cache", False)
        overwrite = kwargs.pop("_overwrite_cache", False)
        if skip or is_disabled():
            return await func(*args, **kwargs)
        key = cached.cache_key(*args, **kwargs)
        if not overwrite:
            found, value = await _offload(cached, cached._lookup, key)
            if found:
                return value
        loop = asyncio.get_running_loop()
        slot = (id(loop), key)
        while not overwrite and slot in flights:
            fut = flights[slot]
            try:
                return cached._copy(await asyncio.shield(fut))
            except asyncio.CancelledError:
                if not fut.cancelled():
                    raise
                # The computing task was cancelled: take over.
        fut = loop.create_future()
        flights[slot] = fut
        try:
            result = await func(*args, **kwargs)
            await _offload(cached, cached._store, key, result)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        else:
            fut.set_result(result)
            return result
        finally:
            if flights.get(slot) is fut:
                del flights[slot]

    async def get(*args: Any, **kwargs: Any) -> Any:
        return await _offload(cached, functools.partial(cached.get, *args, **kwargs))

    async def set_(value: Any, **kwargs: Any) -> None:
        await _offload(cached, functools.partial(cached.set, value, **kwargs))

    async def invalidate(**kwargs: Any) -> None:
        await _offload(cached, functools.partial(cached.invalidate, **kwargs))

    async def refresh(**kwargs: Any) -> Any:
        await invalidate(**kwargs)
        return await wrapper(**kwargs)

    async def original(*args: Any, **kwargs: Any) -> Any:
        return await func(*args, **kwargs)

    wrapper.get = get  # type: ignore[attr-defined]
    wrapper.set = set_  # type: ignore[attr-defined]
    wrapper.invalidate = invalidate  # type: ignore[attr-defined]
    wrapper.refresh = refresh  # type: ignore[attr-defined]
    wrapper.original = original  # type: ignore[attr-defined]
    wrapper.cache_key = cached.cache_key  # type: ignore[attr-defined]
    wrapper.__cachu__ = cached  # type: ignore[attr-defined]
    return wrapper


def _cached(fn: Any) -> CachedFunction:
    inner = getattr(fn, "__cachu__", None)
    return inner if isinstance(inner, CachedFunction) else fn


async def async_cache_get(fn: Any, default: Any = _MISSING, **kwargs: Any) -> Any:
    """The cached value for these arguments, else ``default``, else ``KeyError``."""
    args = () if default is _MISSING else (default,)
    return await _offload(_cached(fn), functools.partial(cache_get, fn, *args, **kwargs))


async def async_cache_set(fn: Any, value: Any, **kwargs: Any) -> None:
    """Stores ``value`` for these arguments."""
    await _offload(_cached(fn), functools.partial(cache_set, fn, value, **kwargs))


async def async_cache_delete(fn: Any, **kwargs: Any) -> None:
    """Removes the entry of these arguments."""
    await _offload(_cached(fn), functools.partial(cache_delete, fn, **kwargs))


async def async_cache_info(fn: Any) -> Any:
    """Hits, misses and current size of a decorated function."""
    return await _offload(_cached(fn), cache_info, fn)


def async_cache_clear(
    tag: Optional[str] = None,
    backend: Optional[str] = None,
    ttl: Optional[int] = None,
    package: Optional[str] = None,
) -> Any:
    """Clears entries as ``cache_clear`` does; returns an awaitable of the count."""
    if package is None:
        package = _caller_package()
    return asyncio.get_running_loop().run_in_executor(
        None, functools.partial(cache_clear, tag, backend, ttl, package)
    )


class AsyncBackend:
    """Awaitable access to one backend instance; I/O runs in a worker thread."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    @property
    def sync(self) -> Any:
        """The underlying ``Backend``."""
        return self._backend

    async def _run(self, name: str, *args: Any) -> Any:
        method = getattr(self._backend, name)
        if self._backend.kind == "memory":
            return method(*args)
        return await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(method, *args)
        )

    async def get(self, key: str, *default: Any) -> Any:
        return await self._run("get", key, *default)

    async def get_with_metadata(self, key: str) -> Any:
        return await self._run("get_with_metadata", key)

    async def set(self, key: str, value: Any, ttl: Optional[int] = None) -> None:
        await self._run("set", key, value, ttl)

    async def delete(self, key: str) -> None:
        await self._run("delete", key)

    async def clear(self, pattern: Optional[str] = None) -> int:
        return await self._run("clear", pattern)

    async def keys(self, pattern: Optional[str] = None) -> list[str]:
        return await self._run("keys", pattern)

    async def count(self, pattern: Optional[str] = None) -> int:
        return await self._run("count", pattern)

    async def close(self) -> None:
        self._backend.close()

    def __repr__(self) -> str:
        return f"<cachu AsyncBackend of {self._backend!r}>"


async def get_async_backend(
    backend_type: Optional[str] = None, package: Optional[str] = None, *, ttl: int
) -> AsyncBackend:
    """The backend instance of a (package, backend, TTL) region, for ``await``."""
    if package is None:
        package = _caller_package()
    return AsyncBackend(get_backend(backend_type, package, ttl=ttl))


async def clear_async_backends(package: Optional[str] = None) -> None:
    """Forgets the backend instances of ``package`` (the caller's if not given)."""
    if package is None:
        package = _caller_package()
    clear_backends(package)
