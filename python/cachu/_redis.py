"""Access to a Redis server through redis-py (the ``cachu[redis]`` extra)."""

from __future__ import annotations

from typing import Any, Optional

from cachu._cachu import _caller_package, _redis_layout, get_config


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
    ``get_redis_client()``. Other keyword arguments go to ``redis.Redis.from_url``.

    For a ``redis+cluster://`` URL it is a ``redis.cluster.RedisCluster`` of the seed
    nodes; for ``redis+sentinel://``, the master client of a ``redis.sentinel.Sentinel``
    (``Sentinel.master_for``), which follows failovers."""
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
    layout = _redis_layout(url)
    if layout["shape"] == "cluster":
        from redis.cluster import ClusterNode, RedisCluster

        nodes = [ClusterNode(host, port) for host, port in layout["nodes"]]
        return RedisCluster.from_url(layout["node_url"], startup_nodes=nodes, **kwargs)
    if layout["shape"] == "sentinel":
        from redis.connection import SSLConnection, parse_url
        from redis.sentinel import Sentinel

        options = parse_url(layout["node_url"])
        for name in ("host", "port"):
            options.pop(name, None)
        if options.pop("connection_class", None) is SSLConnection:
            options["ssl"] = True
        # The sentinels get the URL's transport options, and their own credentials if
        # it gives them (``sentinel_password=``); the URL's password is the master's.
        to_sentinels = {
            k: v for k, v in options.items() if k.startswith("ssl") or k.startswith("socket")
        }
        sentinel_auth = parse_url(layout["sentinel_url"])
        for name in ("username", "password"):
            if sentinel_auth.get(name):
                to_sentinels[name] = sentinel_auth[name]
        sentinel = Sentinel(layout["nodes"], sentinel_kwargs=to_sentinels, **options)
        return sentinel.master_for(layout["master"], **kwargs)
    return redis.Redis.from_url(url, **kwargs)
