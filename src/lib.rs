//! cachu: caching for Python functions, with a Rust core.
//!
//! This file only declares the modules and the Python extension `cachu._cachu`.

pub mod backend;
pub mod codec;
pub mod config;
pub mod crud;
pub mod errors;
pub mod exit;
pub mod flight;
pub mod flow;
pub mod function;
pub mod key;
pub mod lease;
pub mod pattern;
pub mod process;
pub mod ready;
pub mod region;
pub mod runtime;
pub mod seal;
pub mod stamp;
pub mod vectorcall;
pub mod warn;

#[pyo3::pymodule]
mod _cachu {
    #[pymodule_export]
    use crate::backend::py::{_instances, get_backend, NoValue, PyBackend};
    #[pymodule_export]
    use crate::backend::redis::py::{
        _redis_admit, _redis_command, _redis_endpoint, _redis_failed, _redis_layout, _redis_node,
        _redis_ok, _redis_redirect, _redis_resolve,
    };
    #[pymodule_export]
    use crate::config::py::{
        _caller_package, _config_restore, _config_snapshot, configure, get_all_configs, get_config,
        ConfigSnapshot, PyConfig,
    };
    #[pymodule_export]
    use crate::config::switch::{
        disable, enable, get_disabled_scopes, is_disabled, DisabledScopes,
    };
    #[pymodule_export]
    use crate::crud::{
        cache_clear, cache_delete, cache_get, cache_info, cache_set, clear_all_backends,
        clear_backends,
    };
    #[pymodule_export]
    use crate::exit::_at_exit;
    #[pymodule_export]
    use crate::function::aio::AsyncCachedFunction;
    #[pymodule_export]
    use crate::function::aio_call::{AsyncCall, Await, Fetched};
    #[pymodule_export]
    use crate::function::decorator::{cache, Decorator};
    #[pymodule_export]
    use crate::function::values::{metrics, CacheEntry, CacheInfo};
    #[pymodule_export]
    use crate::function::CachedFunction;
    #[pymodule_export]
    use crate::pattern::_escape_glob;
    #[pymodule_export]
    use crate::region::{_region_name, _ttl_of_region, _ttl_of_sqlite_file};
    #[pymodule_export]
    use crate::runtime::_shutdown_runtime;

    use pyo3::prelude::*;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        crate::errors::register(m)?;
        crate::ready::register(m)?;
        m.add("NO_VALUE", crate::backend::py::no_value(m.py())?)?;
        crate::backend::registry::listen();
        Ok(())
    }
}
