"""The backends by class, for introspection as cachu 0.6 names them::

    isinstance(cachu.get_backend("memory", ttl=300), cachu.backends.MemoryBackend)

Every backend instance is a ``cachu.Backend``; these classes tell its kind. cachu
0.6's ``DynamoDBBackend`` is not provided.
"""

from __future__ import annotations

from typing import Any

from cachu._cachu import Backend

__all__ = ["MemoryBackend", "NullBackend", "RedisBackend", "SqliteBackend"]


class _KindOf(type):
    """``isinstance(backend, cls)``: a ``Backend`` of the class's kind."""

    kind: str

    def __instancecheck__(cls, instance: Any) -> bool:
        return isinstance(instance, Backend) and instance.kind == cls.kind


class MemoryBackend(metaclass=_KindOf):
    """A backend of kind ``'memory'``: this process's memory."""

    kind = "memory"


class SqliteBackend(metaclass=_KindOf):
    """A backend of kind ``'file'``: a SQLite file in ``file_dir``."""

    kind = "file"


class RedisBackend(metaclass=_KindOf):
    """A backend of kind ``'redis'``: the server at ``redis_url``."""

    kind = "redis"


class NullBackend(metaclass=_KindOf):
    """A backend of kind ``'null'``: stores nothing."""

    kind = "null"
