//! Warnings to the user, each said once per process (a broken backend must not flood
//! the log on every call), and the same records on the standard `logging` module's
//! `cachu` logger, where services collect them: a warning's reported location is a
//! line inside the library, a log record's logger and level are what operators filter.

use std::collections::HashSet;
use std::sync::LazyLock;

use parking_lot::Mutex;
use pyo3::exceptions::PyRuntimeWarning;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `logging.getLogger("cachu")`.
fn logger(py: Python<'_>) -> Option<&Bound<'_, PyAny>> {
    LOGGER
        .get_or_try_init(py, || {
            py.import("logging")?
                .getattr("getLogger")?
                .call1(("cachu",))
                .map(Bound::unbind)
        })
        .ok()
        .map(|l| l.bind(py))
}

/// Logging's levels, as `logging.DEBUG`... are.
#[derive(Clone, Copy)]
pub enum Level {
    Debug = 10,
    Info = 20,
    Warning = 30,
}

/// Whether the `cachu` logger records `level` (so a message need not be made).
pub fn enabled(py: Python<'_>, level: Level) -> bool {
    logger(py)
        .and_then(|l| l.call_method1("isEnabledFor", (level as i32,)).ok())
        .and_then(|r| r.is_truthy().ok())
        .unwrap_or(false)
}

/// A record on the `cachu` logger. A failing handler never fails the call.
pub fn log(py: Python<'_>, level: Level, message: &str) {
    if let Some(l) = logger(py) {
        if let Err(e) = l.call_method1("log", (level as i32, message)) {
            e.write_unraisable(py, None);
        }
    }
}

static SAID: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(|| Mutex::new(HashSet::new()));

/// Emits a `RuntimeWarning` with `message` unless one with the same `topic` was emitted.
pub fn once(py: Python<'_>, topic: &str, message: &str) {
    let first = SAID.lock().insert(topic.to_owned());
    if first {
        log(py, Level::Warning, message);
        let category = py.get_type::<PyRuntimeWarning>();
        let Ok(msg) = std::ffi::CString::new(message.replace('\0', " ")) else {
            return;
        };
        // A warnings filter set to "error" turns this into an exception: the cache
        // still must not fail the call, so it is reported as unraisable instead.
        if let Err(e) = PyErr::warn(py, &category, &msg, 1) {
            e.write_unraisable(py, None);
        }
    }
}

/// A cached value that could not be unpickled.
pub fn undecodable(py: Python<'_>, location: &str, key: &str, err: &PyErr) {
    once(
        py,
        &format!("undecodable:{location}"),
        &format!("cachu: a cached value in {location} could not be decoded ({err}); key {key:?} is treated as a miss"),
    );
}

/// A backend that failed; the call went on without the cache.
pub fn backend_failed(py: Python<'_>, err: &PyErr) {
    once(
        py,
        &format!("backend:{err}"),
        &format!("cachu: the cache backend failed and the call went on without it: {err}"),
    );
}

/// A result that can be neither copied nor pickled: returned to the caller, not cached.
pub fn not_cached(py: Python<'_>, function: (&str, u64), err: &PyErr) {
    uncached(
        py,
        function,
        &format!("it can be neither copied nor pickled ({err})"),
    );
}

/// A result whose dynamic TTL returned no TTL: returned to the caller, not cached.
pub fn bad_ttl(py: Python<'_>, function: (&str, u64), err: &PyErr) {
    uncached(py, function, &err.to_string());
}

/// Said once per decorated function (its name and id) and reason.
fn uncached(py: Python<'_>, (name, id): (&str, u64), why: &str) {
    once(
        py,
        &format!("not-cached:{id}:{why}"),
        &format!("cachu: the result of {name}() was not cached: {why}"),
    );
}
