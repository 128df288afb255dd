"""The async API: coroutine functions under ``@cache`` / ``@async_cache``, and the
``async_cache_*`` operations.

Keys, validation, copies and storage are the Rust core's (the same as for sync
functions); this module only awaits. A memory hit is answered by the native call of
the decorated function with an already completed awaitable (no task switch, no
thread hop); anything else awaits ``_slow``. SQLite work is awaited on the
blocking pool of the core's tokio runtime; Redis is spoken from the event loop itself
(``_aioredis``), with the lease protocol of the sync path: one round trip for a hit,
two for a miss. Concurrent misses of one key within an event loop run the coroutine
once; across processes, the Redis lease does the same.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import inspect
import sys
import types
from collections.abc import Callable
from typing import Any, Optional

from cachu import _aioredis
from cachu._cachu import (
    AsyncCachedFunction,
    BackendError,
    CachedFunction,
    Probe,
    _accept,
    _afetch,
    _astore,
    _backend_failed,
    _caller_package,
    _lease_params,
    _lock_timeout_error,
    _pack,
    _release_soon,
    _shutdown_runtime,
    cache,
    cache_clear,
    cache_delete,
    cache_get,
    cache_info,
    cache_set,
    clear_backends,
    get_backend,
)

async_cache = cache

# The core's I/O runtime stops at exit while Python still lets its threads finish.
atexit.register(_shutdown_runtime)

_MISSING = object()


async def _run_io(local: bool, fn: Callable[..., Any], *args: Any) -> Any:
    """Runs ``fn`` inline when its backend does no I/O (memory), else in a worker thread."""
    if local:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))


async def _offload(cached: CachedFunction, fn: Callable[..., Any], *args: Any) -> Any:
    """Runs ``fn`` for the helpers of ``cached``: inline for the memory backend."""
    return await _run_io(cached._is_memory, fn, *args)


# What _afetch answers.
_FOUND, _LEASED, _HELD = 0, 1, 2
# The longest pause between two looks at a lease held by another process.
_MAX_POLL = 0.05

# (loop, key) -> the future of a computation in progress on that loop.
_Flights = dict[tuple[int, str], "asyncio.Future[Any]"]


async def _follow(cached: CachedFunction, fut: asyncio.Future[Any], timeout: float) -> Any:
    """The result of another task's computation (a copy), or ``_MISSING`` if that task
    was cancelled or did not finish in time."""
    try:
        return cached._copy(await asyncio.wait_for(asyncio.shield(fut), timeout))
    except asyncio.CancelledError:
        if not fut.cancelled():
            raise
        return _MISSING
    except asyncio.TimeoutError:
        return _MISSING


async def _lead(flights: _Flights, slot: tuple[int, str], compute: Callable[[], Any]) -> Any:
    """Runs ``compute`` as the task that others of its loop wait for."""
    fut = asyncio.get_running_loop().create_future()
    flights[slot] = fut
    try:
        result = await compute()
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


async def _local_miss(
    cached: CachedFunction, flights: _Flights, probe: Probe, args: tuple[Any, ...]
) -> Any:
    """A miss of the memory (or null) backend: the coroutine runs once per key and loop."""
    func = cached.__wrapped__
    kwargs = probe.kwargs or {}
    slot = (id(asyncio.get_running_loop()), probe.key)
    while not probe.overwrite and slot in flights:
        got = await _follow(cached, flights[slot], float("inf"))
        if got is not _MISSING:
            return got

    async def compute() -> Any:
        result = await func(*args, **kwargs)
        cached._store(probe.key, result)
        return result

    return await _lead(flights, slot, compute)


async def _fetch(
    cached: CachedFunction, probe: Probe, token: str, lease: float, read: bool
) -> tuple[int, Optional[bytes], float]:
    """The value, or the lease: Redis from this loop, the file backend on the runtime."""
    if probe.redis_url is not None:
        return await _aioredis.fetch(probe.redis_url, probe.key, token, lease, read)
    return await _afetch(cached, probe.key, token, read)


async def _put(cached: CachedFunction, probe: Probe, token: str, result: Any) -> None:
    """Stores a computed result (as cache_if and the TTL say) and releases the lease."""
    try:
        if probe.redis_url is not None:
            packed = _pack(cached, result)
            await _aioredis.store_release(probe.redis_url, probe.key, token, packed)
        else:
            await _astore(cached, probe.key, token, result)
    except BackendError as e:
        _backend_failed(cached, e)


async def _release(cached: CachedFunction, probe: Probe, token: str) -> None:
    """Releases the lease of a computation that failed or was cancelled. Awaited, so
    that it is done before the caller's loop may end; the file backend's runs on the
    runtime and needs no waiting."""
    if probe.redis_url is None:
        _release_soon(cached, probe.key, token)
        return
    try:
        await _aioredis.store_release(probe.redis_url, probe.key, token, None)
    except (BackendError, asyncio.CancelledError):
        pass  # the lease expires by itself


async def _io_call(
    cached: CachedFunction, flights: _Flights, probe: Probe, args: tuple[Any, ...]
) -> Any:
    """A call on the file or Redis backend. One task per key and loop asks the backend
    (the others wait for its answer): one round trip answers with the value or the
    lease; a miss computes, then stores and releases in a second one. A lease held
    by another process is polled until lock_timeout."""
    func = cached.__wrapped__
    kwargs = probe.kwargs or {}
    key = probe.key
    loop = asyncio.get_running_loop()
    slot = (id(loop), key)
    token, lock_timeout, raise_on_timeout = _lease_params(cached)
    deadline = loop.time() + lock_timeout
    while not probe.overwrite and slot in flights:
        got = await _follow(cached, flights[slot], max(0.0, deadline - loop.time()))
        if got is not _MISSING:
            return got
        if loop.time() >= deadline:
            break

    async def ask() -> Any:
        read = not probe.overwrite
        pause = 0.002
        while True:
            try:
                kind, data, created = await _fetch(cached, probe, token, lock_timeout, read)
            except BackendError as e:
                _backend_failed(cached, e, True)  # raises with on_backend_error='raise'
                return await func(*args, **kwargs)
            if kind == _FOUND:
                found, value = _accept(cached, key, data, created)
                if found:
                    return value
                read = False
                continue
            if kind == _LEASED:
                try:
                    result = await func(*args, **kwargs)
                    # cache_if and a dynamic TTL run here too: whatever they raise, the
                    # lease is released.
                    await _put(cached, probe, token, result)
                except BaseException:
                    await _release(cached, probe, token)
                    raise
                return result
            # Another process holds the lease.
            if loop.time() >= deadline:
                if raise_on_timeout:
                    raise _lock_timeout_error(cached, key)
                result = await func(*args, **kwargs)
                await _put(cached, probe, token, result)
                return result
            await asyncio.sleep(min(pause, max(0.0, deadline - loop.time())))
            pause = min(pause * 2, _MAX_POLL)
            read = True

    return await _lead(flights, slot, ask)


async def _slow(
    cached: CachedFunction, flights: _Flights, probe: Probe, args: tuple[Any, ...]
) -> Any:
    """A call that is not a memory hit, as the probe says."""
    if probe.skip:
        return await cached.__wrapped__(*args, **(probe.kwargs or {}))
    if probe.local:
        return await _local_miss(cached, flights, probe, args)
    return await _io_call(cached, flights, probe, args)


async def _finished(value: Any) -> Any:
    """A memory hit on Python 3.12 and later (see ``_HIT``)."""
    return value


# How a memory hit is handed to ``await``. Up to Python 3.11, ``await`` finishes the
# native ``Ready`` through its ``am_send`` slot with no exception: the fastest. From
# 3.12 it raises ``StopIteration`` to end anything but a coroutine, and a coroutine
# that returns at once is faster than that.
_HIT = None if sys.version_info < (3, 12) else _finished


def _named(coroutine_function: Any, like: Any) -> Any:
    """``coroutine_function`` under the name of ``like``: a coroutine is named after the
    function that made it, and that name is what tasks show and what "coroutine ...
    was never awaited" says."""
    named = types.FunctionType(
        coroutine_function.__code__, coroutine_function.__globals__, like.__name__
    )
    named.__qualname__ = getattr(like, "__qualname__", like.__name__)
    return named


def wrap(cached: CachedFunction) -> AsyncCachedFunction:
    """The coroutine function that stands for ``cached`` (a coroutine function)."""
    func = cached.__wrapped__
    flights: _Flights = {}
    # A memory hit is answered by the native call; anything else awaits _slow.
    slow = functools.partial(_named(_slow, func), cached, flights)
    hit = None if _HIT is None else _named(_HIT, func)
    wrapper = AsyncCachedFunction(cached, slow, hit)
    functools.update_wrapper(wrapper, func)
    # What inspect.iscoroutinefunction (and asyncio's, FastAPI's, Starlette's) reads
    # on a callable that is not a Python function, as for Cython's functions.
    code = getattr(func, "__code__", None)
    if isinstance(code, types.CodeType) and code.co_flags & inspect.CO_COROUTINE:
        wrapper.__code__ = code  # type: ignore[attr-defined]
        wrapper.__defaults__ = getattr(func, "__defaults__", None)  # type: ignore[attr-defined]
        wrapper.__kwdefaults__ = getattr(func, "__kwdefaults__", None)  # type: ignore[attr-defined]
    else:  # a callable marked as a coroutine function (Python 3.12 and later)
        inspect.markcoroutinefunction(wrapper)  # type: ignore[attr-defined]
    wrapper.__globals__ = getattr(func, "__globals__", {})  # type: ignore[attr-defined]

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
        return await _run_io(self._backend.kind == "memory", getattr(self._backend, name), *args)

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
    """Forgets the backend instances of ``package`` (the caller's if not given) and
    closes this event loop's Redis connections (the next call connects again)."""
    if package is None:
        package = _caller_package()
    clear_backends(package)
    await _aioredis.close_connections()
