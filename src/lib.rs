//! cachu: caching for Python functions, with a Rust core.
//!
//! This file only wires the modules into the Python extension `cachu._cachu`.

pub mod aio;
pub mod backend;
pub mod codec;
pub mod config;
pub mod crud;
pub mod decorator;
pub mod errors;
pub mod flight;
pub mod key;
pub mod pattern;
pub mod ready;
pub mod runtime;
pub mod seal;
pub mod vectorcall;
pub mod warn;

use pyo3::prelude::*;

#[pymodule]
fn _cachu(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    m.add("NO_VALUE", backend::python::no_value(m.py())?)?;
    m.add_class::<config::PyConfig>()?;
    m.add_class::<decorator::CachedFunction>()?;
    m.add_class::<decorator::CacheEntry>()?;
    m.add_class::<decorator::CacheInfo>()?;
    m.add_class::<decorator::Decorator>()?;
    m.add_class::<backend::python::PyBackend>()?;
    m.add_class::<backend::python::NoValue>()?;
    m.add_function(wrap_pyfunction!(config::configure, m)?)?;
    m.add_function(wrap_pyfunction!(config::_caller_package, m)?)?;
    m.add_function(wrap_pyfunction!(config::get_config, m)?)?;
    m.add_function(wrap_pyfunction!(config::get_all_configs, m)?)?;
    m.add_function(wrap_pyfunction!(config::disable, m)?)?;
    m.add_function(wrap_pyfunction!(config::enable, m)?)?;
    m.add_function(wrap_pyfunction!(config::is_disabled, m)?)?;
    m.add_function(wrap_pyfunction!(decorator::cache, m)?)?;
    m.add_function(wrap_pyfunction!(crud::cache_get, m)?)?;
    m.add_function(wrap_pyfunction!(crud::cache_set, m)?)?;
    m.add_function(wrap_pyfunction!(crud::cache_delete, m)?)?;
    m.add_function(wrap_pyfunction!(crud::cache_clear, m)?)?;
    m.add_function(wrap_pyfunction!(crud::cache_info, m)?)?;
    m.add_function(wrap_pyfunction!(crud::clear_backends, m)?)?;
    m.add_function(wrap_pyfunction!(crud::clear_all_backends, m)?)?;
    m.add_function(wrap_pyfunction!(backend::python::get_backend, m)?)?;
    aio::register(m)?;
    ready::register(m)?;
    backend::redis::for_asyncio::register(m)?;
    Ok(())
}
