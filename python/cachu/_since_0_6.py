"""The names cachu 0.6 added, beside 0.2.7's: code written for either runs unchanged."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from cachu._async import _run_io
from cachu._cachu import Backend, CacheInfo, _caller_package, cache_info, get_backend

#: The backend names `configure(backend=...)` and `@cache(backend=...)` take.
BACKENDS = ("memory", "file", "redis", "null")


@dataclass(frozen=True)
class CacheMeta:
    """How a decorated function is cached: its ``_cache_meta`` attribute."""

    ttl: int
    backend: str
    tag: str
    exclude: set[str]
    cache_if: Optional[Callable[..., Any]]
    validate: Optional[Callable[..., Any]]
    package: Optional[str]
    key_generator: Callable[..., str]


def get_cache_info(fn: Any) -> CacheInfo:
    """Hits, misses and current size of a decorated function (``cache_info``)."""
    return cache_info(fn)


async def get_async_cache_info(fn: Any) -> CacheInfo:
    """``get_cache_info`` for ``await``: off the loop unless the backend is memory."""
    from cachu._async import async_cache_info

    return await async_cache_info(fn)


class AsyncCapableBackend:
    """A backend instance as cachu 0.6's ``aget_backend`` gives it: the methods of
    ``Backend`` (``get``, ``set``, ...), and each as a coroutine with an ``a`` before
    its name (``aget``, ``aset``, ...), run off the loop unless the backend is memory."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def __getattr__(self, name: str) -> Any:
        if name.startswith("a") and hasattr(self._backend, name[1:]):
            method = getattr(self._backend, name[1:])

            async def run(*args: Any, **kwargs: Any) -> Any:
                local = self._backend.kind == "memory"
                return await _run_io(local, functools.partial(method, *args, **kwargs))

            run.__name__ = name
            return run
        return getattr(self._backend, name)

    def __repr__(self) -> str:
        return f"<cachu backend {self._backend!r}, sync and async>"


async def aget_backend(
    backend_type: Optional[str] = None, package: Optional[str] = None, *, ttl: int
) -> AsyncCapableBackend:
    """The backend instance of a (package, backend, TTL) region, for ``await``."""
    if package is None:
        package = _caller_package()
    return AsyncCapableBackend(get_backend(backend_type, package, ttl=ttl))
