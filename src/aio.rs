//! The native half of the async API; `python/cachu/_async.py` drives it.
//!
//! [`AsyncCachedFunction`] is a decorated coroutine function. Its call is the whole hit
//! path on the memory backend: it takes the per-call switches out, builds the key and
//! answers from memory with an already completed awaitable ([`Ready`], see there for
//! Python 3.12), so a hit needs no task switch or thread hop. Anything else returns the
//! coroutine of the slow path, given a [`Probe`] that says what to do. For the file
//! backend, the slow path awaits `_afetch` / `_astore`: SQLite work on the blocking pool
//! of the runtime (`runtime.rs`). Redis is spoken from the event loop itself
//! (`python/cachu/_aioredis.py`, a thread hop costs as much as the round trip), with
//! `_pack` / `_accept` from here: the same values, leases and round trips as the sync
//! path.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::backend::memory::unix_now;
use crate::backend::redis::{pack_value, setex_seconds};
use crate::backend::{decode, Backend, ByteStore, Decoded, LeaseReply};
use crate::codec;
use crate::config::{self, BackendKind};
use crate::decorator::{
    bind_method, lease_token, pickled_by_name, take_flags, CachedFunction, Resolved,
};
use crate::ready::Ready;
use crate::runtime;
use crate::warn;

/// What the slow path of an async call has to do.
#[pyclass(frozen, module = "cachu._cachu")]
pub struct Probe {
    /// Run the function without the cache (`_skip_cache`, `disable()`, or a backend
    /// that cannot be opened).
    #[pyo3(get)]
    skip: bool,
    /// The backend answers without I/O (memory, null).
    #[pyo3(get)]
    local: bool,
    #[pyo3(get)]
    overwrite: bool,
    #[pyo3(get)]
    key: String,
    /// The keyword arguments without the switches.
    #[pyo3(get)]
    kwargs: Option<Py<PyDict>>,
    /// The server of the Redis backend (the asyncio client talks to it).
    #[pyo3(get)]
    redis_url: Option<String>,
}

/// What a call of a coroutine function finds first.
enum Probed<'py> {
    /// The value, answered from memory.
    Hit(Bound<'py, PyAny>),
    /// What the slow path must do.
    Slow(Probe),
}

/// The whole hit path of an async call on the memory backend (the per-call switches
/// taken out, the key built in the thread's buffer, the value looked up, validated and
/// copied), else what the slow path needs.
#[inline]
fn probe<'py>(
    cached: &Bound<'py, CachedFunction>,
    args: &Bound<'py, PyTuple>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Probed<'py>> {
    let py = cached.py();
    let this = cached.get();
    let (kwargs, flags) = take_flags(kwargs)?;
    let probe = |skip: bool, local: bool, key: String| Probe {
        skip,
        local,
        overwrite: flags.overwrite,
        key,
        kwargs: kwargs.as_ref().map(|k| k.clone().unbind()),
        redis_url: None,
    };
    if flags.skip || config::is_disabled_now() {
        return Ok(Probed::Slow(probe(true, true, String::new())));
    }
    let r = this.resolve_here();
    let backend = match &r.backend {
        Ok(b) => b,
        Err((e, _)) => {
            CachedFunction::backend_failed(py, &r, e.clone_ref(py))?;
            return Ok(Probed::Slow(probe(true, true, String::new())));
        }
    };
    let key = this.key_in_buffer(&r, args, kwargs.as_ref())?;
    let local = backend.is_local();
    if local && !flags.overwrite {
        if let Some(v) = this.lookup(py, &r, backend, &key)? {
            return Ok(Probed::Hit(v));
        }
    }
    let mut slow = probe(false, local, key.to_owned());
    if backend.kind == BackendKind::Redis {
        slow.redis_url = Some(
            config::config_of(backend.package.as_deref())
                .redis_url
                .clone(),
        );
    }
    Ok(Probed::Slow(slow))
}

/// A coroutine function decorated with `@cache(...)` / `@async_cache(...)`.
///
/// Calling it answers a memory hit with a completed awaitable: a [`Ready`] (no
/// coroutine is made, the event loop is not involved), or on Python 3.12 and later
/// `hit(value)`. Anything else returns the coroutine of the slow path (`_async.py`),
/// given the [`Probe`] and the arguments; an error of the call (`validate=` raising,
/// `on_backend_error="raise"`) is raised when the result is awaited.
/// `_async.wrap` makes it and gives it what makes `inspect.iscoroutinefunction` true
/// (`__code__`, `__defaults__`, `__kwdefaults__`), the function's name and docs, and
/// the async helpers.
#[pyclass(frozen, dict, weakref, module = "cachu._cachu")]
pub struct AsyncCachedFunction {
    cached: Py<CachedFunction>,
    /// `slow(probe, args)`: the coroutine of a call that is not a memory hit.
    slow: Py<PyAny>,
    /// `hit(value)`: a coroutine that returns `value` at once, where the interpreter
    /// finishes a coroutine faster than a [`Ready`] (Python 3.12 and later: there
    /// `await` of anything but a coroutine ends by raising `StopIteration`).
    hit: Option<Py<PyAny>>,
}

#[pymethods]
impl AsyncCachedFunction {
    #[new]
    #[pyo3(signature = (cached, slow, hit=None))]
    fn py_new(cached: Py<CachedFunction>, slow: Py<PyAny>, hit: Option<Py<PyAny>>) -> Self {
        AsyncCachedFunction { cached, slow, hit }
    }

    #[pyo3(signature = (*args, **kwargs))]
    fn __call__<'py>(
        &self,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = args.py();
        match probe(self.cached.bind(py), args, kwargs) {
            Ok(Probed::Hit(value)) => match &self.hit {
                None => Ok(Ready::new(py, Ok(value))?.into_any()),
                Some(hit) => hit.bind(py).call1((value,)),
            },
            Ok(Probed::Slow(p)) => self.slow.bind(py).call1((p, args)),
            // Raised by `await`, as from a coroutine (and from cachu 0.2.7's wrapper).
            Err(e) => Ok(Ready::new(py, Err(e))?.into_any()),
        }
    }

    fn __get__(
        slf: &Bound<'_, Self>,
        obj: Option<&Bound<'_, PyAny>>,
        _owner: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        bind_method(slf.as_any(), obj)
    }

    /// Pickled by reference, as a function is.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        pickled_by_name(slf.as_any())
    }

    /// The decorated function's core: keys, storage, statistics.
    #[getter]
    fn __cachu__(&self, py: Python<'_>) -> Py<CachedFunction> {
        self.cached.clone_ref(py)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "<cached coroutine function {}>",
            self.cached.bind(py).get().name()
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.cached)?;
        visit.call(&self.slow)?;
        if let Some(hit) = &self.hit {
            visit.call(hit)?;
        }
        Ok(())
    }
}

/// The settings in force, the backend, and its store of pickled values.
type Io = (Arc<Resolved>, Arc<Backend>, Arc<dyn ByteStore>);

/// What every I/O step of the async path needs, resolved once per step.
fn io_backend(cached: &Bound<'_, CachedFunction>) -> PyResult<Io> {
    let this = cached.get();
    let r = this.resolve();
    let backend = this.backend_or_err(cached.py(), &r)?;
    let store = backend.byte_store().ok_or_else(|| {
        crate::errors::CacheError::Backend(format!(
            "the {} backend does no I/O: it has no async fetch",
            backend.kind.name()
        ))
    })?;
    Ok((r, backend, store))
}

/// Bytes handed from the runtime to Python.
pub struct Raw(Vec<u8>);

impl<'py> IntoPyObject<'py> for Raw {
    type Target = PyBytes;
    type Output = Bound<'py, PyBytes>;
    type Error = Infallible;

    fn into_pyobject(self, py: Python<'py>) -> Result<Self::Output, Self::Error> {
        Ok(PyBytes::new(py, &self.0))
    }
}

/// `(0, value bytes, created_at)` found; `(1, None, 0.0)` the lease is ours;
/// `(2, None, 0.0)` another caller holds it.
type Fetched = (u8, Option<Raw>, f64);

/// Awaitable: the stored value of `key` (when `read`), else the lease on computing it.
#[pyfunction]
pub fn _afetch<'py>(
    cached: &Bound<'py, CachedFunction>,
    key: String,
    token: String,
    read: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let (r, _, store) = io_backend(cached)?;
    let lease = r.lock_timeout;
    runtime::awaitable(cached.py(), async move {
        let reply = store.lease_async(key, token, lease, read).await?;
        Ok::<Fetched, PyErr>(match reply {
            LeaseReply::Found(data, created) => (0, Some(Raw(data)), created),
            LeaseReply::Acquired => (1, None, 0.0),
            LeaseReply::Held => (2, None, 0.0),
        })
    })
}

/// `(True, value)` if fetched bytes decode and pass `validate=`, else `(False, None)`.
/// An undecodable value is reported and discarded off the event loop.
#[pyfunction]
pub fn _accept<'py>(
    cached: &Bound<'py, CachedFunction>,
    key: String,
    data: &[u8],
    created_at: f64,
) -> PyResult<(bool, Bound<'py, PyAny>)> {
    let py = cached.py();
    let this = cached.get();
    let miss = || (false, py.None().into_bound(py));
    let (_, backend, store) = io_backend(cached)?;
    let signing = backend.signing_key();
    let value = match decode(
        py,
        store.as_ref(),
        signing.as_deref(),
        &key,
        data,
        created_at,
    ) {
        Decoded::Value(v) => v,
        Decoded::Miss => return Ok(miss()),
        Decoded::Corrupt => {
            // Discarded off the event loop.
            let data = data.to_vec();
            runtime::try_handle()?
                .spawn_blocking(move || store.discard_corrupt(&key, &data, created_at));
            return Ok(miss());
        }
    };
    match this.validated(py, value, created_at)? {
        Some(v) => {
            this.stats.hits.fetch_add(1, Ordering::Relaxed);
            Ok((true, v))
        }
        None => Ok(miss()),
    }
}

/// Awaitable: stores a computed `result` (as `cache_if` and the TTL say) and releases
/// the lease of `token`. Counts the miss.
#[pyfunction]
pub fn _astore<'py>(
    cached: &Bound<'py, CachedFunction>,
    key: String,
    token: String,
    result: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let (_, backend, store) = io_backend(cached)?;
    let value = value_to_store(cached, &backend, result)?;
    runtime::awaitable(cached.py(), async move {
        store.store_and_release_async(key, value, token).await?;
        Ok(())
    })
}

/// What a computed `result` is stored as: `(pickle, created_at, ttl)`, or `None` when
/// `cache_if` refuses it or it cannot be pickled (said once). Counts the miss.
fn value_to_store(
    cached: &Bound<'_, CachedFunction>,
    backend: &Backend,
    result: &Bound<'_, PyAny>,
) -> PyResult<Option<(Vec<u8>, f64, f64)>> {
    let this = cached.get();
    this.stats.misses.fetch_add(1, Ordering::Relaxed);
    let Some(ttl) = this.ttl_if_wanted(result)? else {
        return Ok(None);
    };
    match codec::dumps(result) {
        Ok(data) => Ok(Some((backend.encode(data.as_bytes()), unix_now(), ttl))),
        Err(e) => {
            warn::not_cached(cached.py(), this.name(), &e);
            Ok(None)
        }
    }
}

/// For the asyncio Redis client: `(SETEX seconds, header + pickle)` to store for
/// `result`, or `None`. Counts the miss.
#[pyfunction]
pub fn _pack<'py>(
    cached: &Bound<'py, CachedFunction>,
    result: &Bound<'py, PyAny>,
) -> PyResult<Option<(u64, Bound<'py, PyBytes>)>> {
    let (_, backend, _) = io_backend(cached)?;
    Ok(
        value_to_store(cached, &backend, result)?.and_then(|(data, created, ttl)| {
            (ttl > 0.0).then(|| {
                (
                    setex_seconds(ttl),
                    PyBytes::new(cached.py(), &pack_value(&data, created)),
                )
            })
        }),
    )
}

/// Releases the lease of `token` in the background (a cancelled or failed computation).
#[pyfunction]
pub fn _release_soon(
    cached: &Bound<'_, CachedFunction>,
    key: String,
    token: String,
) -> PyResult<()> {
    let (_, _, store) = io_backend(cached)?;
    runtime::try_handle()?.spawn(async move {
        let _ = store.store_and_release_async(key, None, token).await;
    });
    Ok(())
}

/// `(token, lock_timeout seconds, raise on lock timeout)` for one slow call.
#[pyfunction]
pub fn _lease_params(cached: &Bound<'_, CachedFunction>) -> (String, f64, bool) {
    let r = cached.get().resolve();
    (
        lease_token(),
        r.lock_timeout.as_secs_f64(),
        r.raise_lock_timeout,
    )
}

/// A backend error met by the async path: raised with `on_backend_error='raise'`,
/// else said once. With `miss`, the caller runs the function next: counted as a miss.
#[pyfunction]
#[pyo3(signature = (cached, error, miss=false))]
pub fn _backend_failed(
    cached: &Bound<'_, CachedFunction>,
    error: Bound<'_, PyAny>,
    miss: bool,
) -> PyResult<()> {
    let py = cached.py();
    let this = cached.get();
    if miss {
        this.stats.misses.fetch_add(1, Ordering::Relaxed);
    }
    CachedFunction::backend_failed(py, &this.resolve(), PyErr::from_value(error))
}

/// The error a waiter past `lock_timeout` raises.
#[pyfunction]
pub fn _lock_timeout_error(cached: &Bound<'_, CachedFunction>, key: &str) -> PyErr {
    CachedFunction::lock_timed_out(key, &cached.get().resolve())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Probe>()?;
    m.add_class::<AsyncCachedFunction>()?;
    m.add_function(wrap_pyfunction!(_afetch, m)?)?;
    m.add_function(wrap_pyfunction!(_accept, m)?)?;
    m.add_function(wrap_pyfunction!(_astore, m)?)?;
    m.add_function(wrap_pyfunction!(_pack, m)?)?;
    m.add_function(wrap_pyfunction!(_release_soon, m)?)?;
    m.add_function(wrap_pyfunction!(_lease_params, m)?)?;
    m.add_function(wrap_pyfunction!(_backend_failed, m)?)?;
    m.add_function(wrap_pyfunction!(_lock_timeout_error, m)?)?;
    m.add_function(wrap_pyfunction!(crate::runtime::_shutdown_runtime, m)?)?;
    Ok(())
}
