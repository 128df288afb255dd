//! `@cache(...)`: the decorator, which makes a [`CachedFunction`] of a function (and of
//! a coroutine function, the async front of `_async.py` around it).

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use super::options::{FreshOptions, Options};
use super::CachedFunction;
use crate::errors::{repr_of, CacheError};
use crate::vectorcall;

/// The decorator that `cache(...)` returns.
///
/// `@cache` without parentheses hands the function itself to `cache()`, where a
/// dynamic TTL would stand (`cache(compute_ttl)`, which cachu 0.2.7 takes). A named
/// function given so is both: if the decorator is then applied to a function, it is
/// that function's dynamic TTL; if it is called otherwise, it stands for that
/// function cached with the default options (`@cache` is `@cache()`), made on first
/// use. A bare-decorated function called with one function as its only argument is
/// taken for the first case: such a function is decorated with `@cache()`.
#[pyclass(frozen, module = "cachu._cachu")]
pub struct Decorator {
    /// The options, or `None` when the callable given cannot be a TTL (bare use only).
    options: Option<Options>,
    /// `@cache` without parentheses: the function, and the default options.
    bare: Option<(Py<PyAny>, Options)>,
    decorated: PyOnceLock<Py<PyAny>>,
}

impl Decorator {
    pub fn new(options: Options) -> Self {
        Decorator {
            options: Some(options),
            bare: None,
            decorated: PyOnceLock::new(),
        }
    }

    fn decorate(
        &self,
        py: Python<'_>,
        func: &Bound<'_, PyAny>,
        options: Options,
    ) -> PyResult<Py<PyAny>> {
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

    /// What a bare `@cache` stands for: its function, cached with the default options.
    pub(crate) fn bare_function<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Option<&Bound<'py, PyAny>>> {
        let Some((func, defaults)) = &self.bare else {
            return Ok(None);
        };
        let decorated = self.decorated.get_or_try_init(py, || {
            self.decorate(py, func.bind(py), defaults.clone_ref(py))
        })?;
        Ok(Some(decorated.bind(py)))
    }
}

#[pymethods]
impl Decorator {
    #[pyo3(signature = (*args, **kwargs))]
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        args: &Bound<'py, pyo3::types::PyTuple>,
        kwargs: Option<&Bound<'py, pyo3::types::PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let no_keywords = kwargs.is_none_or(pyo3::types::PyDictMethods::is_empty);
        if let (1, true, Some(options)) = (args.len(), no_keywords, &self.options) {
            let func = args.get_item(0)?;
            if func.is_callable() {
                return Ok(self
                    .decorate(py, &func, options.clone_ref(py))?
                    .into_bound(py));
            }
            if self.bare.is_none() {
                return Err(CacheError::config(
                    "func",
                    repr_of(&func),
                    "@cache decorates a function",
                )
                .into());
            }
        }
        match self.bare_function(py)? {
            Some(f) => f.call(args, kwargs),
            None => {
                Err(
                    CacheError::config("func", repr_of(args), "@cache(...) decorates one function")
                        .into(),
                )
            }
        }
    }

    /// A bare `@cache`'s function's attributes (`.get`, `__name__`, ...).
    fn __getattr__<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        match self.bare_function(py)? {
            Some(f) => f.getattr(name),
            None => Err(pyo3::exceptions::PyAttributeError::new_err(format!(
                "'Decorator' object has no attribute '{name}'"
            ))),
        }
    }

    /// A bare `@cache` on a method, looked up on an instance.
    fn __get__<'py>(
        slf: &Bound<'py, Self>,
        obj: Option<&Bound<'py, PyAny>>,
        owner: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        match slf.get().bare_function(py)? {
            Some(f) => f.call_method1(
                "__get__",
                (
                    obj.map_or_else(|| py.None().into_bound(py), Clone::clone),
                    owner.cloned(),
                ),
            ),
            None => Ok(slf.clone().into_any()),
        }
    }
}

/// Whether `value`, given where a TTL stands, may be a function under a bare `@cache`:
/// a function defined with `def` (a lambda is a TTL).
fn may_be_bare(value: &Bound<'_, PyAny>) -> bool {
    let py = value.py();
    py.import("inspect")
        .and_then(|i| i.getattr("isfunction")?.call1((value,)))
        .and_then(|r| r.is_truthy())
        .unwrap_or(false)
        && value
            .getattr(pyo3::intern!(py, "__name__"))
            .and_then(|n| n.extract::<String>())
            .is_ok_and(|n| n != "<lambda>")
}

/// `cache(...)`: a decorator that caches a function's results (`@cache(ttl=300)`; bare
/// `@cache` is `@cache()`).
#[pyfunction]
#[pyo3(signature = (ttl=None, backend=None, tag=None, exclude=None, cache_if=None, validate=None, package=None, *, ttl_jitter=None, stale_ttl=None, stale_if_error=None, early_refresh=None, timeout=None))]
#[allow(clippy::too_many_arguments)] // the decorator's options, as users write them
pub fn cache(
    py: Python<'_>,
    ttl: Option<&Bound<'_, PyAny>>,
    backend: Option<&Bound<'_, PyAny>>,
    tag: Option<&Bound<'_, PyAny>>,
    exclude: Option<&Bound<'_, PyAny>>,
    cache_if: Option<&Bound<'_, PyAny>>,
    validate: Option<&Bound<'_, PyAny>>,
    package: Option<&Bound<'_, PyAny>>,
    ttl_jitter: Option<&Bound<'_, PyAny>>,
    stale_ttl: Option<&Bound<'_, PyAny>>,
    stale_if_error: Option<&Bound<'_, PyAny>>,
    early_refresh: Option<&Bound<'_, PyAny>>,
    timeout: Option<&Bound<'_, PyAny>>,
) -> PyResult<Decorator> {
    let default_ttl = 300_i64.into_pyobject(py)?.into_any();
    let jitter = ttl_jitter
        .filter(|j| !j.is_none())
        .map(crate::region::parse_jitter)
        .transpose()?;
    let control = |name: &'static str, v: Option<&Bound<'_, PyAny>>| {
        v.filter(|v| !v.is_none())
            .map(|v| crate::region::parse_freshness(name, v))
            .transpose()
    };
    let fresh = FreshOptions {
        stale_ttl: control("stale_ttl", stale_ttl)?,
        stale_if_error: control("stale_if_error", stale_if_error)?,
        early_refresh: control("early_refresh", early_refresh)?,
        timeout: control("timeout", timeout)?,
    };
    let others = [
        backend,
        tag,
        exclude,
        cache_if,
        validate,
        package,
        ttl_jitter,
        stale_ttl,
        stale_if_error,
        early_refresh,
        timeout,
    ];
    if let Some(func) = ttl.filter(|t| may_be_bare(t) && others.iter().all(Option::is_none)) {
        // Both readings are kept; the use decides (see `Decorator`).
        let defaults = Options::parse(py, &default_ttl, None, None, None, None, None, None)?;
        let as_ttl = Options::parse(py, func, None, None, None, None, None, None).ok();
        return Ok(Decorator {
            options: as_ttl,
            bare: Some((func.clone().unbind(), defaults)),
            decorated: PyOnceLock::new(),
        });
    }
    let ttl = ttl.unwrap_or(&default_ttl);
    let mut options = Options::parse(py, ttl, backend, tag, exclude, cache_if, validate, package)?;
    options.ttl_jitter = jitter;
    options.fresh = fresh;
    check_freshness(&options)?;
    Ok(Decorator::new(options))
}

/// Freshness controls that cannot work where the function is cached (the null
/// backend), or without each other (`timeout` without `stale_if_error`), are refused
/// at decoration, naming the option. The package's defaults count as they are now.
fn check_freshness(o: &Options) -> PyResult<()> {
    let cfg = crate::config::config_of(o.package.as_deref());
    let f = o.fresh;
    let backend = match o.backend {
        Some(kind) => ("backend=", kind),
        None => ("the package's backend", cfg.backend),
    };
    let stale_if_error = f.stale_if_error.unwrap_or(cfg.stale_if_error) > 0.0;
    match crate::config::freshness_conflict(
        backend,
        [
            ("stale_ttl", f.stale_ttl.is_some_and(|v| v > 0.0)),
            ("stale_if_error", f.stale_if_error.is_some_and(|v| v > 0.0)),
            ("early_refresh", f.early_refresh.is_some()),
            ("timeout", f.timeout.is_some()),
        ],
        stale_if_error,
        f.timeout,
    ) {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
