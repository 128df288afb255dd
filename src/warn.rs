//! Warnings to the user, each said once per process: a broken backend must not flood
//! the log on every call.

use std::collections::HashSet;
use std::sync::LazyLock;

use parking_lot::Mutex;
use pyo3::exceptions::PyRuntimeWarning;
use pyo3::prelude::*;

static SAID: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(|| Mutex::new(HashSet::new()));

/// Emits a `RuntimeWarning` with `message` unless one with the same `topic` was emitted.
pub fn once(py: Python<'_>, topic: &str, message: &str) {
    let first = SAID.lock().insert(topic.to_owned());
    if first {
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
