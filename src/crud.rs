//! Module-level operations on decorated functions and on whole regions:
//! `cache_get`, `cache_set`, `cache_delete`, `cache_clear`, `cache_info`.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::backend::{self, instance, instances_of};
use crate::config::{self, BackendKind};
use crate::decorator::{parse_region_ttl, reset_stats, CacheInfo, CachedFunction};
use crate::errors::{repr_of, CacheError};
use crate::pattern::tag_pattern;

/// The cached function behind `func`: itself, a bound method of it, or an async front.
pub fn cached_of<'py>(func: &Bound<'py, PyAny>) -> PyResult<Bound<'py, CachedFunction>> {
    let py = func.py();
    if let Ok(f) = func.cast::<CachedFunction>() {
        return Ok(f.clone());
    }
    for attr in [intern!(py, "__func__"), intern!(py, "__cachu__")] {
        if let Ok(inner) = func.getattr(attr) {
            if let Ok(f) = inner.cast_into::<CachedFunction>() {
                return Ok(f);
            }
        }
    }
    Err(CacheError::config("fn", repr_of(func), "it is not decorated with @cache").into())
}

/// The cached value for these arguments, else `default`, else `KeyError`.
#[pyfunction]
#[pyo3(signature = (r#fn, *args, **kwargs))]
pub fn cache_get<'py>(
    r#fn: &Bound<'py, PyAny>,
    args: &Bound<'py, PyTuple>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    cached_of(r#fn)?.call_method(intern!(r#fn.py(), "get"), args, kwargs)
}

/// Stores `value` for these arguments.
#[pyfunction]
#[pyo3(signature = (r#fn, value, **kwargs))]
pub fn cache_set(
    r#fn: &Bound<'_, PyAny>,
    value: &Bound<'_, PyAny>,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<()> {
    let f = cached_of(r#fn)?;
    f.get().set(r#fn.py(), value, kwargs)
}

/// Removes the entry of these arguments.
#[pyfunction]
#[pyo3(signature = (r#fn, **kwargs))]
pub fn cache_delete(r#fn: &Bound<'_, PyAny>, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
    let f = cached_of(r#fn)?;
    f.get().invalidate(r#fn.py(), kwargs)
}

/// Hits, misses and current size of a decorated function.
#[pyfunction]
#[pyo3(signature = (r#fn,))]
pub fn cache_info(r#fn: &Bound<'_, PyAny>) -> PyResult<CacheInfo> {
    let f = cached_of(r#fn)?;
    f.get().cache_info(r#fn.py())
}

/// Clears the entries of the caller's package (or `package`), narrowed by tag, backend
/// and TTL region as the table in the README says. Returns how many were removed.
#[pyfunction]
#[pyo3(signature = (tag=None, backend=None, ttl=None, package=None))]
pub fn cache_clear(
    py: Python<'_>,
    tag: Option<&Bound<'_, PyAny>>,
    backend: Option<&Bound<'_, PyAny>>,
    ttl: Option<&Bound<'_, PyAny>>,
    package: Option<String>,
) -> PyResult<usize> {
    let package = config::resolve_package(py, package);
    let tag: Option<String> = match tag.filter(|t| !t.is_none()) {
        Some(t) => Some(
            t.extract()
                .map_err(|_| CacheError::config("tag", repr_of(t), "expected a str"))?,
        ),
        None => None,
    };
    let pattern = tag.as_deref().and_then(tag_pattern);
    let kind = backend
        .map(|b| BackendKind::parse("backend", b))
        .transpose()?;
    let ttl = ttl
        .filter(|t| !t.is_none())
        .map(parse_region_ttl)
        .transpose()?;
    let targets = match (kind, ttl) {
        (Some(kind), Some(ttl)) => vec![instance(package.as_deref(), kind, ttl)?],
        _ => instances_of(package.as_deref(), kind, ttl),
    };
    let mut total = 0;
    for b in targets {
        total += b.clear(py, pattern.as_deref())?;
    }
    reset_stats(package.as_deref());
    Ok(total)
}

/// Forgets the backend instances of `package` (every package if `None`).
#[pyfunction]
#[pyo3(signature = (package=None))]
pub fn clear_backends(package: Option<String>) -> usize {
    backend::forget(Some(package.as_deref()))
}

/// Forgets every backend instance of every package.
#[pyfunction]
pub fn clear_all_backends() -> usize {
    backend::forget(None)
}
