//! The values a decorated function hands out about itself: `CacheEntry` (to
//! `validate=`), `CacheInfo`, and the counters behind it.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Weak};

use parking_lot::Mutex;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::PyTraverseError;

use crate::errors::repr_of;

/// Hit and miss counters of one decorated function.
pub struct Stats {
    pub package: Option<String>,
    /// The function's `__qualname__`, for [`metrics`].
    pub function: String,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Backend failures its calls met (each a miss, or raised).
    pub errors: AtomicU64,
    /// Stale values served (`stale_ttl`), also counted as hits.
    pub stale_hits: AtomicU64,
    /// Background refreshes that computed the function.
    pub refreshes: AtomicU64,
    /// Stale values served instead of an exception or a slow computation
    /// (`stale_if_error`, `timeout`).
    pub fail_safe: AtomicU64,
    /// Hits answered by the near tier in front of Redis (also hits).
    pub near_hits: AtomicU64,
}

impl Stats {
    pub(crate) fn new(package: Option<String>, function: String) -> Stats {
        Stats {
            package,
            function,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            stale_hits: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            fail_safe: AtomicU64::new(0),
            near_hits: AtomicU64::new(0),
        }
    }

    fn counters(&self) -> [&AtomicU64; 7] {
        [
            &self.hits,
            &self.misses,
            &self.errors,
            &self.stale_hits,
            &self.refreshes,
            &self.fail_safe,
            &self.near_hits,
        ]
    }

    /// `cache_info()` of a function with `currsize` entries.
    pub(crate) fn info(&self, currsize: usize) -> CacheInfo {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheInfo {
            hits: get(&self.hits),
            misses: get(&self.misses),
            currsize,
            stale_hits: get(&self.stale_hits),
            refreshes: get(&self.refreshes),
            fail_safe: get(&self.fail_safe),
            near_hits: get(&self.near_hits),
        }
    }
}

pub(crate) static ALL_STATS: LazyLock<Mutex<Vec<Weak<Stats>>>> =
    LazyLock::new(|| Mutex::new(Vec::new()));

/// Zeroes the counters of every decorated function of `package`.
pub fn reset_stats(package: Option<&str>) {
    let mut all = ALL_STATS.lock();
    all.retain(|w| w.strong_count() > 0);
    for s in all.iter().filter_map(Weak::upgrade) {
        if s.package.as_deref() == package {
            for c in s.counters() {
                c.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// A value handed to `validate=` callbacks.
#[pyclass(frozen, module = "cachu._cachu", name = "CacheEntry")]
pub struct CacheEntry {
    #[pyo3(get)]
    pub(crate) value: Py<PyAny>,
    #[pyo3(get)]
    pub(crate) created_at: f64,
    #[pyo3(get)]
    pub(crate) age: f64,
}

#[pymethods]
impl CacheEntry {
    #[new]
    fn py_new(value: Py<PyAny>, created_at: f64, age: f64) -> Self {
        CacheEntry {
            value,
            created_at,
            age,
        }
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "CacheEntry(value={}, created_at={}, age={})",
            repr_of(self.value.bind(py)),
            self.created_at,
            self.age
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.value)
    }
}

/// Statistics of one decorated function.
#[pyclass(frozen, eq, module = "cachu._cachu", name = "CacheInfo")]
#[derive(PartialEq, Eq)]
pub struct CacheInfo {
    #[pyo3(get)]
    pub(crate) hits: u64,
    #[pyo3(get)]
    pub(crate) misses: u64,
    #[pyo3(get)]
    pub(crate) currsize: usize,
    /// Stale values served while refreshed in the background (also hits).
    #[pyo3(get)]
    pub(crate) stale_hits: u64,
    /// Background refreshes that computed the function.
    #[pyo3(get)]
    pub(crate) refreshes: u64,
    /// Stale values served instead of an exception or a slow computation.
    #[pyo3(get)]
    pub(crate) fail_safe: u64,
    /// Hits answered by the near tier in front of Redis, without the network (also
    /// hits; the others of a Redis region asked Redis).
    #[pyo3(get)]
    pub(crate) near_hits: u64,
}

#[pymethods]
impl CacheInfo {
    #[new]
    #[pyo3(signature = (hits, misses, currsize, stale_hits=0, refreshes=0, fail_safe=0, near_hits=0))]
    fn py_new(
        hits: u64,
        misses: u64,
        currsize: usize,
        stale_hits: u64,
        refreshes: u64,
        fail_safe: u64,
        near_hits: u64,
    ) -> Self {
        CacheInfo {
            hits,
            misses,
            currsize,
            stale_hits,
            refreshes,
            fail_safe,
            near_hits,
        }
    }

    /// The counters of the freshness controls are shown once one of them counts.
    fn __repr__(&self) -> String {
        let mut out = format!(
            "CacheInfo(hits={}, misses={}, currsize={}",
            self.hits, self.misses, self.currsize
        );
        if self.stale_hits + self.refreshes + self.fail_safe > 0 {
            let _ = write!(
                out,
                ", stale_hits={}, refreshes={}, fail_safe={}",
                self.stale_hits, self.refreshes, self.fail_safe
            );
        }
        if self.near_hits > 0 {
            let _ = write!(out, ", near_hits={}", self.near_hits);
        }
        out.push(')');
        out
    }
}

/// Counters a service exports (`cachu.metrics()`): per decorated function its hits,
/// misses and backend errors; per Redis server its outages so far and whether it is
/// down now; per file or Redis region the backend operations of sync calls and the
/// seconds they took (a mean latency between two scrapes).
#[pyfunction]
pub fn metrics(py: Python<'_>) -> PyResult<Bound<'_, pyo3::types::PyDict>> {
    use pyo3::types::{PyDict, PyList};
    let functions = PyList::empty(py);
    let all: Vec<_> = {
        let mut all = ALL_STATS.lock();
        all.retain(|w| w.strong_count() > 0);
        all.iter().filter_map(Weak::upgrade).collect()
    };
    for s in all {
        let d = PyDict::new(py);
        d.set_item("package", s.package.as_deref())?;
        d.set_item("function", &s.function)?;
        d.set_item("hits", s.hits.load(Ordering::Relaxed))?;
        d.set_item("misses", s.misses.load(Ordering::Relaxed))?;
        d.set_item("errors", s.errors.load(Ordering::Relaxed))?;
        d.set_item("stale_hits", s.stale_hits.load(Ordering::Relaxed))?;
        d.set_item("near_hits", s.near_hits.load(Ordering::Relaxed))?;
        d.set_item("refreshes", s.refreshes.load(Ordering::Relaxed))?;
        d.set_item("fail_safe", s.fail_safe.load(Ordering::Relaxed))?;
        functions.append(d)?;
    }
    let servers = PyList::empty(py);
    for (server, outages, down) in crate::backend::redis::connector::health_of_all() {
        let d = PyDict::new(py);
        d.set_item("server", server)?;
        d.set_item("outages", outages)?;
        d.set_item("down", down)?;
        servers.append(d)?;
    }
    let regions = PyList::empty(py);
    for b in crate::backend::registry::all_instances() {
        let ops = b.io_ops.load(Ordering::Relaxed);
        if ops == 0 {
            continue;
        }
        let d = PyDict::new(py);
        d.set_item("package", b.package.as_deref())?;
        d.set_item("backend", b.kind.name())?;
        d.set_item("ttl", b.ttl)?;
        d.set_item("operations", ops)?;
        d.set_item("seconds", b.io_ns.load(Ordering::Relaxed) as f64 / 1e9)?;
        regions.append(d)?;
    }
    let out = PyDict::new(py);
    out.set_item("functions", functions)?;
    out.set_item("redis", servers)?;
    out.set_item("backends", regions)?;
    Ok(out)
}
