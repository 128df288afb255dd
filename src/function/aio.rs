//! The async API's calls: a decorated coroutine function ([`AsyncCachedFunction`]).
//!
//! Its call is the whole hit path on the memory backend: it takes the per-call switches
//! out, builds the key and answers from memory with an already completed awaitable
//! ([`Ready`], see there for Python 3.12), so a hit needs no task switch or thread hop.
//! Anything else returns the coroutine of the driver (`python/cachu/_async.py`),
//! given an [`AsyncCall`]: the flow of this call (`aio_call.rs`).

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use super::aio_call::{AsyncCall, TaskFlights, HIT_THEN};
use super::lookup::Kind;
use super::{bind_method, pickled_by_name, take_flags, CachedFunction, CallArgs};
use crate::flow::Flow;
use crate::ready::Ready;

/// A coroutine function decorated with `@cache(...)` / `@async_cache(...)`.
///
/// Calling it answers a memory hit with a completed awaitable: a [`Ready`] (no
/// coroutine is made, the event loop is not involved), or on Python 3.12 and later
/// `hit(value)`. Anything else returns the coroutine of the driver (`_async._drive`);
/// an error of the call (`validate=` raising, `on_backend_error="raise"`) is raised
/// when the result is awaited. `_async.wrap` makes it and gives it what makes
/// `inspect.iscoroutinefunction` true, the function's name and docs, and the helpers.
#[pyclass(frozen, dict, weakref, module = "cachu._cachu")]
pub struct AsyncCachedFunction {
    cached: Py<CachedFunction>,
    /// `drive(call, args, kwargs)`: the coroutine of a call that is not a memory hit.
    drive: Py<PyAny>,
    /// `hit(value)`: a coroutine that returns `value` at once, where the interpreter
    /// finishes a coroutine faster than a [`Ready`] (Python 3.12 and later: there
    /// `await` of anything but a coroutine ends by raising `StopIteration`).
    hit: Option<Py<PyAny>>,
    flights: Arc<TaskFlights>,
}

impl AsyncCachedFunction {
    /// A hit's value, as an already completed awaitable.
    #[inline]
    fn completed<'py>(&self, py: Python<'py>, v: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        match &self.hit {
            None => Ok(Ready::new(py, Ok(v))?.into_any()),
            Some(hit) => hit.bind(py).call1((v,)),
        }
    }

    /// A hit, the coroutine of the function itself (the cache is off for this call), or
    /// the driver's coroutine of a flow.
    fn call<'py>(
        &self,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = args.py();
        let cached = self.cached.bind(py);
        let this = cached.get();
        let (kwargs, flags) = take_flags(kwargs)?;
        let kwargs = kwargs.as_ref();
        if flags.skip || this.is_off() {
            return this.call_func(py, args, kwargs);
        }
        let r = this.resolve_here();
        let backend = match &r.backend {
            Ok(b) => b,
            Err((e, _)) => {
                this.count_error();
                CachedFunction::backend_failed(py, &r, e.clone_ref(py))?;
                return this.call_func(py, args, kwargs);
            }
        };
        let key = this.key_in_buffer(&r, args, kwargs)?;
        // A memory hit keeps its straight line: the flow's own read, then the flow.
        let local = backend.is_local() && !flags.overwrite;
        let peek = local || (backend.has_near() && !flags.overwrite);
        let call_of = |flow| {
            let parts = (&self.cached, &self.drive, &self.flights);
            AsyncCall::new(py, parts, r.shared(), backend, &key, flow, args, kwargs)
        };
        if peek && !r.rules.is_on() {
            if let Some(v) = this.hit(py, &r, backend, &key, CallArgs::of(args, kwargs))? {
                return self.completed(py, v);
            }
        } else if peek {
            if let Some(seen) = this.lookup(py, &r, backend, &key, CallArgs::of(args, kwargs))? {
                if let Kind::Refresh { created_at, .. } = seen.kind {
                    let call = call_of(Flow::start(r.refresh_policy(backend)));
                    // Started when awaited: the call may come before the loop runs.
                    if let Some(refresh) = call.refresh(py, created_at)? {
                        return HIT_THEN
                            .import(py, "cachu._async", "_hit_then")?
                            .call1((seen.value, refresh));
                    }
                }
                return self.completed(py, seen.value);
            }
        }
        let flow = r.flow_after(r.policy(backend, flags.overwrite), local);
        let call = call_of(flow);
        self.drive.bind(py).call1((call, args, kwargs))
    }
}

#[pymethods]
impl AsyncCachedFunction {
    #[new]
    #[pyo3(signature = (cached, drive, hit=None))]
    fn py_new(cached: Py<CachedFunction>, drive: Py<PyAny>, hit: Option<Py<PyAny>>) -> Self {
        AsyncCachedFunction {
            cached,
            drive,
            hit,
            flights: Arc::default(),
        }
    }

    #[pyo3(signature = (*args, **kwargs))]
    fn __call__<'py>(
        &self,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        // Raised by `await`, as from a coroutine (and from cachu 0.2.7's wrapper).
        self.call(args, kwargs)
            .or_else(|e| Ok(Ready::new(args.py(), Err(e))?.into_any()))
    }

    #[classmethod]
    fn __class_getitem__<'py>(
        cls: &Bound<'py, pyo3::types::PyType>,
        item: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        super::generic_alias(cls, item)
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

    /// How this function is cached, as cachu 0.6's `CacheMeta`.
    #[getter]
    fn _cache_meta<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.cached.bind(py).getattr("_cache_meta")
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
        visit.call(&self.drive)?;
        if let Some(hit) = &self.hit {
            visit.call(hit)?;
        }
        Ok(())
    }
}
