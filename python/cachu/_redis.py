"""Access to the configured Redis server through redis-py (the ``cachu[redis]`` extra)."""

from typing import Any, Optional

from cachu._cachu import _caller_package, get_config


def get_redis_client(package: Optional[str] = None) -> Any:
    """A redis-py client for the ``redis_url`` of the caller's package (or ``package``)."""
    try:
        import redis
    except ImportError as e:
        raise ImportError("get_redis_client() needs redis-py: pip install cachu[redis]") from e
    if package is None:
        package = _caller_package()
    return redis.Redis.from_url(get_config(package=package).redis_url)
