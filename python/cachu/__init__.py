"""cachu: caching for Python functions, with a Rust core.

Memory, file (SQLite), Redis and null backends; per-package configuration;
tags, dynamic TTL, conditional caching, validation, and an async API. The API of
cachu 0.2.7, with the names cachu 0.6 added.
"""

from cachu import backends as backends
from cachu import presets as presets
from cachu._async import AsyncBackend as AsyncBackend
from cachu._async import async_cache as async_cache
from cachu._async import async_cache_clear as async_cache_clear
from cachu._async import async_cache_delete as async_cache_delete
from cachu._async import async_cache_get as async_cache_get
from cachu._async import async_cache_info as async_cache_info
from cachu._async import async_cache_set as async_cache_set
from cachu._async import clear_async_backends as clear_async_backends
from cachu._async import get_async_backend as get_async_backend
from cachu._cachu import NO_VALUE as NO_VALUE
from cachu._cachu import Backend as Backend
from cachu._cachu import BackendError as BackendError
from cachu._cachu import BackendNotFoundError as BackendNotFoundError
from cachu._cachu import CacheConfig as CacheConfig
from cachu._cachu import CachedFunction as CachedFunction
from cachu._cachu import CacheEntry as CacheEntry
from cachu._cachu import CacheError as CacheError
from cachu._cachu import CacheInfo as CacheInfo
from cachu._cachu import CacheLockTimeout as CacheLockTimeout
from cachu._cachu import ConfigurationError as ConfigurationError
from cachu._cachu import DisabledScopes as DisabledScopes
from cachu._cachu import __version__ as __version__
from cachu._cachu import cache as cache
from cachu._cachu import cache_clear as cache_clear
from cachu._cachu import cache_delete as cache_delete
from cachu._cachu import cache_get as cache_get
from cachu._cachu import cache_info as cache_info
from cachu._cachu import cache_set as cache_set
from cachu._cachu import clear_backends as clear_backends
from cachu._cachu import configure as configure
from cachu._cachu import disable as disable
from cachu._cachu import enable as enable
from cachu._cachu import get_all_configs as get_all_configs
from cachu._cachu import get_backend as get_backend
from cachu._cachu import get_config as get_config
from cachu._cachu import get_disabled_scopes as get_disabled_scopes
from cachu._cachu import is_disabled as is_disabled
from cachu._cachu import metrics as metrics
from cachu._config import configure_defaults as configure_defaults
from cachu._redis import get_redis_client as get_redis_client
from cachu._since_0_6 import BACKENDS as BACKENDS
from cachu._since_0_6 import CacheMeta as CacheMeta
from cachu._since_0_6 import aget_backend as aget_backend
from cachu._since_0_6 import get_async_cache_info as get_async_cache_info
from cachu._since_0_6 import get_cache_info as get_cache_info

__all__ = [
    "BACKENDS",
    "NO_VALUE",
    "AsyncBackend",
    "Backend",
    "BackendError",
    "BackendNotFoundError",
    "CacheConfig",
    "CacheEntry",
    "CacheError",
    "CacheInfo",
    "CacheLockTimeout",
    "CacheMeta",
    "CachedFunction",
    "ConfigurationError",
    "DisabledScopes",
    "__version__",
    "aget_backend",
    "async_cache",
    "async_cache_clear",
    "async_cache_delete",
    "async_cache_get",
    "async_cache_info",
    "async_cache_set",
    "backends",
    "cache",
    "cache_clear",
    "cache_delete",
    "cache_get",
    "cache_info",
    "cache_set",
    "clear_async_backends",
    "clear_backends",
    "configure",
    "configure_defaults",
    "disable",
    "enable",
    "get_all_configs",
    "get_async_backend",
    "get_async_cache_info",
    "get_backend",
    "get_cache_info",
    "get_config",
    "get_disabled_scopes",
    "get_redis_client",
    "is_disabled",
    "metrics",
    "presets",
]


def _register_exit_hook() -> None:
    """Daemon threads inside a cached call at interpreter exit: see ``src/exit.rs``."""
    import atexit

    from cachu._cachu import _at_exit

    atexit.register(_at_exit)


_register_exit_hook()
del _register_exit_hook
