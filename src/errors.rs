//! The library's errors, and their mapping to Python exceptions in one place.
//!
//! The Python classes are built at import time so that they can subclass several
//! builtins at once (`ConfigurationError` is a `ValueError` *and* a `TypeError`, so
//! that code written against either keeps catching it).

use std::fmt;

use pyo3::exceptions::PyKeyError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

/// Everything that can go wrong inside the library (errors raised by the user's own
/// function are not wrapped: they pass through unchanged).
#[derive(Debug)]
#[non_exhaustive]
pub enum CacheError {
    /// A bad option: names the parameter, shows the value, says what is accepted.
    Config {
        param: String,
        value: String,
        expected: String,
    },
    /// A backend name that names no backend (a [`CacheError::Config`] too).
    UnknownBackend {
        param: String,
        value: String,
        expected: String,
    },
    /// A backend failed (disk, database, network).
    Backend(String),
    /// A key that is not in the cache and no default was given.
    Missing(String),
    /// A caller waited longer than `lock_timeout` for another's computation.
    LockTimeout(String),
}

impl CacheError {
    /// A configuration error for `param`, whose value is shown through `repr`.
    pub fn config(
        param: impl Into<String>,
        value: impl Into<String>,
        expected: impl Into<String>,
    ) -> Self {
        CacheError::Config {
            param: param.into(),
            value: value.into(),
            expected: expected.into(),
        }
    }
}

impl fmt::Display for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheError::Config {
                param,
                value,
                expected,
            }
            | CacheError::UnknownBackend {
                param,
                value,
                expected,
            } => write!(f, "{param}={value} is not valid: {expected}"),
            CacheError::Backend(msg) | CacheError::Missing(msg) | CacheError::LockTimeout(msg) => {
                f.write_str(msg)
            }
        }
    }
}

impl std::error::Error for CacheError {}

/// The Python exception classes, created once per interpreter.
struct Classes {
    cache_error: Py<PyType>,
    configuration_error: Py<PyType>,
    backend_not_found: Py<PyType>,
    backend_error: Py<PyType>,
    lock_timeout: Py<PyType>,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

fn make_class(
    py: Python<'_>,
    name: &str,
    bases: &Bound<'_, PyTuple>,
    doc: &str,
) -> PyResult<Py<PyType>> {
    let ns = PyDict::new(py);
    ns.set_item("__module__", "cachu")?;
    ns.set_item("__doc__", doc)?;
    let ty = py
        .import("builtins")?
        .getattr("type")?
        .call1((name, bases, ns))?;
    Ok(ty.cast_into::<PyType>()?.unbind())
}

fn classes(py: Python<'_>) -> PyResult<&Classes> {
    CLASSES.get_or_try_init(py, || {
        let builtins = py.import("builtins")?;
        let b = |n: &str| builtins.getattr(n);
        let cache_error = make_class(
            py,
            "CacheError",
            &PyTuple::new(py, [b("Exception")?])?,
            "Base class of every error raised by cachu itself.",
        )?;
        let ce = cache_error.bind(py).clone().into_any();
        let configuration_error = make_class(
            py,
            "ConfigurationError",
            &PyTuple::new(py, [ce.clone(), b("ValueError")?, b("TypeError")?])?,
            "A bad option, raised at configure or decoration time; names the parameter and the value.",
        )?;
        let backend_not_found = make_class(
            py,
            "BackendNotFoundError",
            &PyTuple::new(py, [configuration_error.bind(py).clone().into_any()])?,
            "A backend name that names no backend (cachu 0.6's name; a ConfigurationError).",
        )?;
        let backend_error = make_class(
            py,
            "BackendError",
            &PyTuple::new(py, [ce.clone()])?,
            "A cache backend failed (disk, database or network).",
        )?;
        let lock_timeout = make_class(
            py,
            "CacheLockTimeout",
            &PyTuple::new(py, [ce, b("TimeoutError")?])?,
            "Waited longer than lock_timeout for another caller's computation of the same key.",
        )?;
        Ok::<_, PyErr>(Classes {
            cache_error,
            configuration_error,
            backend_not_found,
            backend_error,
            lock_timeout,
        })
    })
}

/// Adds the exception classes to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let c = classes(m.py())?;
    m.add("CacheError", c.cache_error.bind(m.py()))?;
    m.add("ConfigurationError", c.configuration_error.bind(m.py()))?;
    m.add("BackendNotFoundError", c.backend_not_found.bind(m.py()))?;
    m.add("BackendError", c.backend_error.bind(m.py()))?;
    m.add("CacheLockTimeout", c.lock_timeout.bind(m.py()))?;
    Ok(())
}

impl From<CacheError> for PyErr {
    fn from(err: CacheError) -> PyErr {
        Python::attach(|py| {
            let c = match classes(py) {
                Ok(c) => c,
                Err(e) => return e,
            };
            let ty = match &err {
                CacheError::Config { .. } => &c.configuration_error,
                CacheError::UnknownBackend { .. } => &c.backend_not_found,
                CacheError::Backend(_) => &c.backend_error,
                CacheError::LockTimeout(_) => &c.lock_timeout,
                CacheError::Missing(msg) => return PyKeyError::new_err(msg.clone()),
            };
            PyErr::from_type(ty.bind(py).clone(), err.to_string())
        })
    }
}

/// `Result` with the library's error.
pub type CacheResult<T> = Result<T, CacheError>;

/// `repr(value)`, or a placeholder when `repr` itself fails: for error messages only.
pub fn repr_of(value: &Bound<'_, PyAny>) -> String {
    value
        .repr()
        .map_or_else(|_| "<unrepresentable>".to_owned(), |r| r.to_string())
}
