"""The async API: coroutine functions under ``@cache`` / ``@async_cache``, and the
``async_cache_*`` operations.

Every decision of a call is the Rust core's call flow, the same as for sync functions
(keys, validation, single flight, leases, what is stored, what a failure does); this
module only awaits what it is told to. A memory hit is answered by the native call of
the decorated function with an already completed awaitable (no task switch, no thread
hop); anything else awaits ``_drive``: SQLite work on the core's tokio runtime, Redis
on the event loop's own connection (``_aioredis``), with the requests and replies made
and read by the core. Concurrent misses of one key within an event loop run the
coroutine once; across processes, the backend's lease does the same.
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
    AsyncCall,
    Await,
    BackendError,
    CachedFunction,
    _caller_package,
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
_IO, _FOLLOW, _PAUSE, _COMPUTE, _RETURN = (
    Await.Io,
    Await.Follow,
    Await.Pause,
    Await.Compute,
    Await.Return,
)


async def _run_io(local: bool, fn: Callable[..., Any], *args: Any) -> Any:
    """Runs ``fn`` inline when its backend does no I/O (memory), else in a worker thread."""
    if local:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))


async def _offload(cached: CachedFunction, fn: Callable[..., Any], *args: Any) -> Any:
    """Runs ``fn`` for the helpers of ``cached``: inline for the memory backend."""
    return await _run_io(cached._is_memory, fn, *args)


async def _io(call: AsyncCall) -> None:
    """The backend's I/O of the step the call is at."""
    op = call.op
    try:
        if call.redis_url is not None:
            reply = await _aioredis.call(call.redis_url, *op, call.redis_key)
        else:
            reply = await op
    except BackendError as e:
        call.failed(e)  # the core raises it, or says it and goes on without the cache
    except asyncio.CancelledError:
        if not call.releasing:
            raise
        call.failed(None)  # the lease expires by itself
    else:
        call.replied(reply)


async def _follow(call: AsyncCall) -> None:
    """Waits for another task's computation of the key, for ``call.wait`` at most."""
    fut = call.follow
    try:
        await asyncio.wait_for(asyncio.shield(fut), call.wait)
    except asyncio.CancelledError:
        if not fut.cancelled():
            raise  # this task is cancelled
    except Exception:  # noqa: BLE001 - the leader's exception, or the wait's timeout
        pass
    call.waited()  # what the future holds (or that it is not done) is the core's to read


# Background work of the calls (refreshes, computations past their soft timeout): kept
# referenced until done, as the event loop keeps only weak references to tasks.
_pending: set[asyncio.Task[Any]] = set()


def _background(coroutine: Any) -> None:
    """Runs ``coroutine`` as a task of the running loop (closed if there is none)."""
    try:
        task = asyncio.get_running_loop().create_task(coroutine)
    except RuntimeError:
        coroutine.close()
        return
    _pending.add(task)
    task.add_done_callback(_pending.discard)


async def _hit_then(value: Any, refresh: Any) -> Any:
    """A hit that starts ``refresh`` (a coroutine) as it is awaited."""
    _background(refresh)
    return value


def _settle(call: AsyncCall, task: asyncio.Future[Any]) -> None:
    """Tells the call how the computation ``task`` ended."""
    if task.cancelled():
        call.raised(asyncio.CancelledError())
    elif task.exception() is not None:
        call.raised(task.exception())
    else:
        call.computed(task.result())


async def _carry_on(
    func: Callable[..., Any],
    call: AsyncCall,
    task: asyncio.Future[Any],
    args: tuple[Any, ...],
    kwargs: Optional[dict[str, Any]],
) -> None:
    """The rest of a call whose caller left it (its computation ran past ``timeout``):
    the result is stored when it comes."""
    await asyncio.wait((task,))
    _settle(call, task)
    try:
        await _drive(func, call, args, kwargs)
    except BaseException:  # noqa: BLE001 - nobody waits for it any more; the core said it
        pass


async def _compute(
    func: Callable[..., Any],
    call: AsyncCall,
    args: tuple[Any, ...],
    kwargs: Optional[dict[str, Any]],
) -> bool:
    """Runs the function; ``False`` when the caller leaves it running (``timeout``)."""
    soft = call.soft_timeout
    if soft is None:
        try:
            result = await func(*args, **(kwargs or {}))
        except GeneratorExit:
            call.abandon()
            raise
        except BaseException as e:
            call.raised(e)
        else:
            call.computed(result)
        return True
    task = asyncio.ensure_future(func(*args, **(kwargs or {})))
    try:
        await asyncio.wait((task,), timeout=soft)
    except BaseException:
        _background(_carry_on(func, call, task, args, kwargs))
        raise
    if not task.done():
        _background(_carry_on(func, call, task, args, kwargs))
        return False
    _settle(call, task)
    return True


async def _drive(
    func: Callable[..., Any],
    call: AsyncCall,
    args: tuple[Any, ...],
    kwargs: Optional[dict[str, Any]],
) -> Any:
    """Awaits what the call flow asks for, until it returns or raises."""
    while True:
        do = call.next()
        if do == _IO:
            await _io(call)
        elif do == _COMPUTE:
            if not await _compute(func, call, args, kwargs):
                return call.leave()
        elif do == _FOLLOW:
            await _follow(call)
        elif do == _PAUSE:
            await asyncio.sleep(call.wait)
            call.slept()
        elif do == _RETURN:
            return call.value
        else:
            raise call.error


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
    # A memory hit is answered by the native call; anything else awaits _drive.
    drive = functools.partial(_named(_drive, func), func)
    hit = None if _HIT is None else _named(_HIT, func)
    wrapper = AsyncCachedFunction(cached, drive, hit)
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

    async def set_(value: Any, *args: Any, **kwargs: Any) -> None:
        await _offload(cached, functools.partial(cached.set, value, *args, **kwargs))

    async def invalidate(*args: Any, **kwargs: Any) -> None:
        await _offload(cached, functools.partial(cached.invalidate, *args, **kwargs))

    async def clear(_global: bool = False, **kwargs: Any) -> int:
        return await _offload(cached, functools.partial(cached.clear, _global, **kwargs))

    async def refresh(*args: Any, **kwargs: Any) -> Any:
        await invalidate(*args, **kwargs)
        return await wrapper(*args, **kwargs)

    async def original(*args: Any, **kwargs: Any) -> Any:
        return await func(*args, **kwargs)

    wrapper.get = get  # type: ignore[attr-defined]
    wrapper.set = set_  # type: ignore[attr-defined]
    wrapper.invalidate = invalidate  # type: ignore[attr-defined]
    wrapper.refresh = refresh  # type: ignore[attr-defined]
    wrapper.clear = clear  # type: ignore[attr-defined]
    wrapper.original = original  # type: ignore[attr-defined]
    wrapper.cache_key = cached.cache_key  # type: ignore[attr-defined]
    wrapper.cache_info = cached.cache_info  # type: ignore[attr-defined]
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


async def async_cache_clear(
    tag: Optional[str] = None,
    backend: Optional[str] = None,
    ttl: Optional[int] = None,
    package: Optional[str] = None,
) -> int:
    """Clears entries as ``cache_clear`` does, in a worker thread; returns the count."""
    if package is None:
        package = _caller_package()
    return await asyncio.get_running_loop().run_in_executor(
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
