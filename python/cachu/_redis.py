"""Access to a Redis server through redis-py (the ``cachu[redis]`` extra)."""

from __future__ import annotations

from typing import Any, Optional

from cachu._cachu import _caller_package, get_config


def get_redis_client(
    url: Optional[str] = None,
    *,
    package: Optional[str] = None,
    health_check_interval: Optional[int] = None,
    socket_timeout: Optional[float] = None,
    retry_count: Optional[int] = None,
    **kwargs: Any,
) -> Any:
    """A redis-py client: for ``url`` if given (cachu 0.6's form,
    ``get_redis_client(cfg.redis_url, socket_timeout=...)``), else for the
    ``redis_url`` of the caller's package (or ``package``), as in cachu 0.2.7's
    ``get_redis_client()``. Other keyword arguments go to ``redis.Redis.from_url``."""
    try:
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry
    except ImportError as e:
        raise ImportError("get_redis_client() needs redis-py: pip install cachu[redis]") from e
    if url is not None and "://" not in url:
        package, url = url, None  # a package given by position
    if url is None:
        if package is None:
            package = _caller_package()
        url = get_config(package=package).redis_url
    if health_check_interval is not None:
        kwargs["health_check_interval"] = health_check_interval
    if socket_timeout is not None:
        kwargs.setdefault("socket_timeout", socket_timeout)
        kwargs.setdefault("socket_connect_timeout", socket_timeout)
    if retry_count is not None:
        kwargs["retry"] = Retry(ExponentialBackoff(), retry_count)
    return redis.Redis.from_url(url, **kwargs)
