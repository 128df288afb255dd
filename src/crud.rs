//! Module-level operations on decorated functions and on whole regions:
//! `cache_get`, `cache_set`, `cache_delete`, `cache_clear`, `cache_info`.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::backend::registry::{instance, instances_of};
use crate::backend::{self};
use crate::config::{self, BackendKind};
use crate::errors::{repr_of, CacheError};
use crate::function::values::{reset_stats, CacheInfo};
use crate::function::CachedFunction;
use crate::pattern::tag_pattern;
use crate::region::parse_region_ttl;

/// The cached function behind `func`: itself, a bound method of it, or an async front.
pub fn cached_of<'py>(func: &Bound<'py, PyAny>) -> PyResult<Bound<'py, CachedFunction>> {
    let py = func.py();
    if let Ok(f) = func.cast::<CachedFunction>() {
        return Ok(f.clone());
    }
    // A function under a bare `@cache`.
    if let Ok(d) = func.cast::<crate::function::decorator::Decorator>() {
        if let Some(f) = d.get().bare_function(py)? {
            return cached_of(&f.clone());
        }
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
    f.get()
        .set(r#fn.py(), value, &PyTuple::empty(r#fn.py()), kwargs)
}

/// Removes the entry of these arguments.
#[pyfunction]
#[pyo3(signature = (r#fn, **kwargs))]
pub fn cache_delete(r#fn: &Bound<'_, PyAny>, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
    let f = cached_of(r#fn)?;
    f.get()
        .invalidate(r#fn.py(), &PyTuple::empty(r#fn.py()), kwargs)
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
    let package = package.as_deref();
    let mut total = 0;
    let targets = if let (Some(kind), Some(ttl)) = (kind, ttl) {
        vec![instance(package, kind, ttl)?]
    } else {
        let mut targets = instances_of(package, kind, ttl);
        if ttl.is_none() {
            if kind.is_none_or(|k| k == BackendKind::File) {
                // Regions on disk that this process has not opened yet.
                for region in file_regions_on_disk(package) {
                    if let Ok(b) = instance(package, BackendKind::File, region) {
                        targets.push(b);
                    }
                }
            }
            if uses_redis(package, kind, &targets) {
                // Every region of the server at once, opened here or not.
                let url = config::config_of(package).redis_endpoint_url();
                let pat = pattern.clone();
                let pkg = package.map(str::to_owned);
                total += crate::exit::detach(py, || {
                    backend::redis::clear_package(&url, pkg.as_deref(), pat.as_deref())
                })?;
                for b in targets.iter().filter(|b| b.kind == BackendKind::Redis) {
                    b.forget_near_matching(pattern.as_deref());
                }
                targets.retain(|b| b.kind != BackendKind::Redis);
            }
        }
        targets
    };
    let mut seen = std::collections::HashSet::new();
    for b in targets {
        // Two TTLs of one region (300 and 301) are one file: cleared once.
        if seen.insert(std::sync::Arc::as_ptr(&b)) {
            total += match &tag {
                Some(tag) if pattern.is_some() => b.clear_tag(py, tag)?,
                _ => b.clear(py, pattern.as_deref())?,
            };
        }
    }
    reset_stats(package);
    Ok(total)
}

/// The TTLs of the package's SQLite files in its `file_dir`.
fn file_regions_on_disk(package: Option<&str>) -> Vec<i64> {
    // Files of no package have generic names (`cache5min.db`): not worth the risk of
    // opening another program's file.
    if package.is_none_or(str::is_empty) {
        return Vec::new();
    }
    let dir = config::config_of(package).file_dir.clone();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            crate::region::ttl_of_sqlite_file(package, name.to_str()?)
        })
        .collect()
}

/// Whether a clear should reach the package's Redis server: asked for by name, or the
/// package's backend, or a Redis region opened by it. (A package that never uses Redis
/// does not wait for a server that may not exist.)
fn uses_redis(
    package: Option<&str>,
    kind: Option<BackendKind>,
    opened: &[std::sync::Arc<backend::Backend>],
) -> bool {
    match kind {
        Some(k) => k == BackendKind::Redis,
        None => {
            config::config_of(package).backend == BackendKind::Redis
                || opened.iter().any(|b| b.kind == BackendKind::Redis)
        }
    }
}

/// Forgets the backend instances of `package` (every package if `None`).
#[pyfunction]
#[pyo3(signature = (package=None))]
pub fn clear_backends(package: Option<String>) -> usize {
    backend::registry::forget(Some(package.as_deref()))
}

/// Forgets every backend instance of every package.
#[pyfunction]
pub fn clear_all_backends() -> usize {
    backend::registry::forget(None)
}
