//! `@cache(...)`: the decorator, which makes a [`CachedFunction`] of a function (and of
//! a coroutine function, the async front of `_async.py` around it).

use parking_lot::Mutex;
use pyo3::prelude::*;

use super::options::Options;
use super::CachedFunction;
use crate::errors::{repr_of, CacheError};
use crate::vectorcall;

/// The decorator that `cache(...)` returns.
#[pyclass(frozen, module = "cachu._cachu")]
pub struct Decorator {
    options: Mutex<Option<Options>>,
}

impl Decorator {
    pub fn new(options: Options) -> Self {
        Decorator {
            options: Mutex::new(Some(options)),
        }
    }
}

#[pymethods]
impl Decorator {
    fn __call__(&self, py: Python<'_>, func: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        if !func.is_callable() {
            return Err(
                CacheError::config("func", repr_of(func), "@cache decorates a function").into(),
            );
        }
        let options = {
            let opts = self.options.lock();
            opts.as_ref().map(|o| o.clone_ref(py))
        }
        .ok_or_else(|| {
            CacheError::config("func", repr_of(func), "this decorator was already used")
        })?;
        let is_async = py
            .import("inspect")?
            .getattr("iscoroutinefunction")?
            .call1((func,))?
            .is_truthy()?;
        let cached = Bound::new(py, CachedFunction::new(py, func, options)?)?;
        vectorcall::install(&cached, &cached.get().entry);
        if crate::warn::enabled(py, crate::warn::Level::Debug) {
            crate::warn::log(py, crate::warn::Level::Debug, &cached.get().describe(py));
        }
        py.import("functools")?
            .getattr("update_wrapper")?
            .call1((&cached, func))?;
        if is_async {
            // The coroutine front lives in Python: it awaits, and calls back into this
            // object for keys and storage.
            return Ok(py
                .import("cachu._async")?
                .getattr("wrap")?
                .call1((cached,))?
                .unbind());
        }
        Ok(cached.into_any().unbind())
    }
}

/// `cache(...)`: a decorator that caches a function's results.
#[pyfunction]
#[pyo3(signature = (ttl=None, backend=None, tag=None, exclude=None, cache_if=None, validate=None, package=None))]
pub fn cache(
    py: Python<'_>,
    ttl: Option<&Bound<'_, PyAny>>,
    backend: Option<&Bound<'_, PyAny>>,
    tag: Option<&Bound<'_, PyAny>>,
    exclude: Option<&Bound<'_, PyAny>>,
    cache_if: Option<&Bound<'_, PyAny>>,
    validate: Option<&Bound<'_, PyAny>>,
    package: Option<&Bound<'_, PyAny>>,
) -> PyResult<Decorator> {
    let default_ttl = 300_i64.into_pyobject(py)?.into_any();
    let ttl = ttl.unwrap_or(&default_ttl);
    Ok(Decorator::new(Options::parse(
        py, ttl, backend, tag, exclude, cache_if, validate, package,
    )?))
}
