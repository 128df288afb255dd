//! The `Backend` class of direct backend access, and the `NO_VALUE` sentinel.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;

use super::registry::instance;
use super::Backend;
use crate::config::{self, BackendKind};
use crate::errors::{repr_of, CacheError};
use crate::region::{parse_region_ttl, whole_seconds};

/// The value of "nothing cached here".
#[pyclass(frozen, module = "cachu._cachu", name = "NoValue")]
pub struct NoValue;

#[pymethods]
impl NoValue {
    fn __repr__(&self) -> &'static str {
        "NO_VALUE"
    }
    fn __bool__(&self) -> bool {
        false
    }
}

static NO_VALUE: PyOnceLock<Py<NoValue>> = PyOnceLock::new();

/// The one `NO_VALUE` object.
pub fn no_value(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    Ok(NO_VALUE
        .get_or_try_init(py, || Py::new(py, NoValue))?
        .bind(py)
        .clone()
        .into_any())
}

/// One backend instance: a (package, backend, TTL) region, addressed by raw keys.
#[pyclass(frozen, module = "cachu._cachu", name = "Backend")]
pub struct PyBackend {
    inner: Arc<Backend>,
}

fn ttl_arg(ttl: Option<&Bound<'_, PyAny>>, fallback: i64) -> PyResult<f64> {
    match ttl.filter(|t| !t.is_none()) {
        None => Ok(fallback.max(0) as f64),
        Some(t) => whole_seconds(t).map(|s| s as f64).ok_or_else(|| {
            CacheError::config("ttl", repr_of(t), "expected a whole number of seconds >= 0").into()
        }),
    }
}

#[pymethods]
impl PyBackend {
    /// The value stored under `key`, else `default` (`NO_VALUE` if not given).
    #[pyo3(signature = (key, *default))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &str,
        default: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match self.inner.get(py, key)? {
            Some((v, _)) => Ok(v),
            None if !default.is_empty() => default.get_item(0),
            None => no_value(py),
        }
    }

    /// `(value, created_at)`, or `(NO_VALUE, None)`.
    fn get_with_metadata<'py>(
        &self,
        py: Python<'py>,
        key: &str,
    ) -> PyResult<(Bound<'py, PyAny>, Option<f64>)> {
        Ok(match self.inner.get(py, key)? {
            Some((v, stamp)) => (v, Some(stamp.created_at)),
            None => (no_value(py)?, None),
        })
    }

    /// Stores `value` under `key` for `ttl` seconds (the region's TTL if not given).
    #[pyo3(signature = (key, value, ttl=None))]
    fn set(
        &self,
        key: &str,
        value: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let ttl = ttl_arg(ttl, self.inner.ttl)?;
        self.inner.set(value, key, ttl, None)
    }

    fn delete(&self, py: Python<'_>, key: &str) -> PyResult<()> {
        self.inner.delete(py, key)
    }

    /// Removes the keys matching a glob pattern, or every key of this region.
    #[pyo3(signature = (pattern=None))]
    fn clear(&self, py: Python<'_>, pattern: Option<&str>) -> PyResult<usize> {
        self.inner.clear(py, pattern)
    }

    /// The live keys matching a glob pattern.
    #[pyo3(signature = (pattern=None))]
    fn keys(&self, py: Python<'_>, pattern: Option<&str>) -> PyResult<Vec<String>> {
        self.inner.keys(py, pattern)
    }

    /// How many live keys match a glob pattern.
    #[pyo3(signature = (pattern=None))]
    fn count(&self, py: Python<'_>, pattern: Option<&str>) -> PyResult<usize> {
        self.inner.count(py, pattern)
    }

    /// Nothing to do: instances are shared and closed with the process.
    /// Entries held, and for the memory backend the bytes they take (tables and keys,
    /// plus `sys.getsizeof` of each stored value) and the package's `memory_maxsize`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        self.inner.stats(py)
    }

    fn close(&self) {}

    /// Removes a memory region's expired entries now; returns how many (cachu 0.6).
    fn sweep(&self) -> usize {
        self.inner.sweep()
    }

    /// Entries a memory region evicted for `memory_maxsize` so far (cachu 0.6).
    #[getter]
    fn evictions(&self) -> u64 {
        self.inner.memory_counters().0
    }

    /// Expired entries `sweep()` removed so far (cachu 0.6).
    #[getter]
    fn expired_swept(&self) -> u64 {
        self.inner.memory_counters().1
    }

    /// A redis-py client for this Redis region's server (cachu 0.6's `backend.client`).
    #[getter]
    fn client<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if self.inner.kind != BackendKind::Redis {
            return Err(pyo3::exceptions::PyAttributeError::new_err(format!(
                "a {} backend has no Redis client",
                self.inner.kind
            )));
        }
        let url = config::config_of(self.inner.package.as_deref())
            .redis_url
            .clone();
        py.import("cachu._redis")?
            .getattr("get_redis_client")?
            .call1((url,))
    }

    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind.name()
    }

    #[getter]
    fn ttl(&self) -> i64 {
        self.inner.ttl
    }

    #[getter]
    fn package(&self) -> Option<String> {
        self.inner.package.clone()
    }

    fn __contains__(&self, py: Python<'_>, key: &str) -> PyResult<bool> {
        Ok(self.inner.get(py, key)?.is_some())
    }

    fn __repr__(&self) -> String {
        let package = self
            .inner
            .package
            .as_deref()
            .map_or_else(|| "None".to_owned(), |p| format!("'{p}'"));
        format!(
            "<cachu Backend {} package={package} ttl={}>",
            self.inner.kind, self.inner.ttl
        )
    }
}

/// The backend instance of a (package, backend, TTL) region.
#[pyfunction]
#[pyo3(signature = (backend_type=None, package=None, *, ttl))]
pub fn get_backend(
    py: Python<'_>,
    backend_type: Option<&Bound<'_, PyAny>>,
    package: Option<String>,
    ttl: &Bound<'_, PyAny>,
) -> PyResult<PyBackend> {
    let package = config::resolve_package(py, package);
    let kind = match backend_type {
        Some(b) => BackendKind::parse("backend_type", b)?,
        None => config::config_of(package.as_deref()).backend,
    };
    let ttl = parse_region_ttl(ttl)?;
    Ok(PyBackend {
        inner: instance(package.as_deref(), kind, ttl)?,
    })
}

/// Every backend instance opened so far (of every package): what the pytest plugin
/// clears its test's entries from.
#[pyfunction]
pub fn _instances() -> Vec<PyBackend> {
    super::registry::all_instances()
        .into_iter()
        .map(|inner| PyBackend { inner })
        .collect()
}
