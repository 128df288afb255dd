//! The sync driver: a call of a decorated function, each step of the call flow done
//! with blocking I/O (the GIL released around it), and the helpers of the function.
//!
//! A memory hit keeps a straight line (switches, key, [`CachedFunction::lookup`],
//! copy) in front of the flow; everything else is [`CachedFunction::drive`]. Waits
//! (for another thread's computation, between looks at a lease held elsewhere) are
//! sliced so that a signal (Ctrl-C) is raised within [`SIGNAL_SLICE`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::PyTraverseError;

use super::values::CacheInfo;
use super::{
    bind_method, failure, pickled_by_name, take_flags, CachedFunction, CallArgs, Outcome, Resolved,
};
use crate::backend::{Backend, Lease, Token};
use crate::codec::Stored;
use crate::flight::{Flight, Join, Leader, Waited};
use crate::flow::{Answer, Flow, Step};
use crate::pattern::escape_glob;
use crate::vectorcall::FastCall;

/// The longest a wait goes without looking for a signal.
pub const SIGNAL_SLICE: Duration = Duration::from_millis(50);

/// Sleeps `nap` with the GIL released, looking for signals every [`SIGNAL_SLICE`].
pub(crate) fn sleep_interruptibly(py: Python<'_>, nap: Duration) -> PyResult<()> {
    let until = Instant::now() + nap;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        py.detach(|| std::thread::sleep(left.min(SIGNAL_SLICE)));
        py.check_signals()?;
    }
}

/// Waits up to `wait` for another thread's computation, with the GIL released,
/// looking for signals every [`SIGNAL_SLICE`].
fn wait_interruptibly(
    py: Python<'_>,
    flight: &Flight<Outcome>,
    wait: Duration,
) -> PyResult<Waited<Outcome>> {
    let until = Instant::now() + wait;
    loop {
        let slice = (Instant::now() + SIGNAL_SLICE).min(until);
        match py.detach(|| flight.wait_until(slice)) {
            Waited::TimedOut if Instant::now() < until => py.check_signals()?,
            waited => return Ok(waited),
        }
    }
}

/// What one call has gathered while the flow runs.
#[derive(Default)]
struct Gathered<'a, 'py> {
    found: Option<Bound<'py, PyAny>>,
    leader: Option<Leader<'a, Outcome>>,
    flight: Option<Arc<Flight<Outcome>>>,
    followed: Option<Arc<Outcome>>,
    result: Option<Bound<'py, PyAny>>,
    /// The exception the call raises if it ends raising.
    error: Option<PyErr>,
    /// The backend's error at the step just done.
    failed: Option<PyErr>,
    /// The lease, while this call holds it.
    held: Option<crate::lease::Held>,
}

impl Gathered<'_, '_> {
    /// The leader hands `outcome` to the threads that wait for it.
    fn publish(&mut self, outcome: Outcome) {
        if let Some(l) = self.leader.take() {
            l.finish(outcome);
        }
    }
}

impl CachedFunction {
    /// Runs the call flow from `flow` with blocking I/O.
    #[allow(clippy::too_many_lines)] // one arm per step of the flow
    fn drive<'py>(
        &self,
        py: Python<'py>,
        r: &Resolved,
        backend: &Backend,
        key: &str,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
        mut flow: Flow,
    ) -> PyResult<Bound<'py, PyAny>> {
        let token = Token::lazy();
        let call = CallArgs::of(args, kwargs);
        let mut got = Gathered::default();
        loop {
            let step = flow.step();
            let started = (flow.timed() && step.is_io()).then(Instant::now);
            let answer = match step {
                Step::Read => match self.read(py, backend, key, call)? {
                    Ok(Some(v)) => {
                        got.found = Some(v);
                        Answer::Found
                    }
                    Ok(None) => Answer::Missing,
                    Err(e) => {
                        got.failed = Some(e);
                        Answer::Failed
                    }
                },
                Step::Lease { read } => {
                    match backend.lease(py, key, &token, r.lock_timeout, read) {
                        Ok(Lease::Found(v, created_at)) => {
                            match self.validated(py, v, created_at, call)? {
                                Some(v) => {
                                    got.found = Some(v);
                                    Answer::Found
                                }
                                None => Answer::Missing,
                            }
                        }
                        Ok(Lease::Acquired) => {
                            got.held = Some(crate::lease::hold(key));
                            Answer::Acquired
                        }
                        Ok(Lease::Held) => Answer::Held,
                        Err(e) => {
                            got.failed = Some(e);
                            Answer::Failed
                        }
                    }
                }
                Step::Join => match self.flights.join(key) {
                    Join::Leader(l) => {
                        got.leader = Some(l);
                        Answer::Leader
                    }
                    Join::Follower(f) => {
                        got.flight = Some(f);
                        Answer::Follower
                    }
                    Join::Reentrant => Answer::Reentrant,
                },
                Step::Find => match self.flights.find(key) {
                    Some(Join::Follower(f)) => {
                        got.flight = Some(f);
                        Answer::Follower
                    }
                    Some(_) => Answer::Reentrant,
                    // The lease is this process's parent's: compute (and store) here.
                    None if crate::lease::held_by_parent(key) => Answer::Reentrant,
                    None => Answer::NoFlight,
                },
                Step::Follow(wait) => {
                    let flight = got.flight.take().expect("Follow comes after a Follower");
                    match wait_interruptibly(py, &flight, wait)? {
                        Waited::Done(outcome) => {
                            got.followed = Some(outcome);
                            Answer::Followed
                        }
                        Waited::Abandoned => Answer::Abandoned,
                        Waited::TimedOut => Answer::TimedOut,
                    }
                }
                Step::Pause(nap) => {
                    sleep_interruptibly(py, nap)?;
                    Answer::Slept
                }
                Step::Compute => {
                    if flow.gave_up_waiting() {
                        Self::log_gave_up(py, key, r);
                    }
                    self.count_miss();
                    match self.call_func(py, args, kwargs) {
                        Ok(v) => {
                            got.result = Some(v);
                            Answer::Computed
                        }
                        Err(e) => {
                            if Self::reaches_followers(py, &e) {
                                got.publish(Err(e.clone_ref(py)));
                            }
                            got.error = Some(e);
                            Answer::Raised
                        }
                    }
                }
                Step::Store { release } => {
                    let result = got.result.clone().expect("Store comes after Computed");
                    match self.to_store(r, &result, call) {
                        Err(e) => {
                            got.publish(Err(e.clone_ref(py)));
                            got.error = Some(e);
                            Answer::Raised
                        }
                        Ok(value) => {
                            let stored = value.as_ref().map(|(s, _)| s);
                            got.publish(Ok(Self::published(py, &result, stored)));
                            let value = value.as_ref().map(|(s, ttl)| (s, *ttl));
                            let done = if release {
                                backend.store_and_release(py, value, key, token.get())
                            } else {
                                value.map_or(Ok(()), |(s, ttl)| backend.set_stored(py, s, key, ttl))
                            };
                            match done {
                                Ok(()) => Answer::Stored,
                                Err(e) => {
                                    got.failed = Some(e);
                                    Answer::Failed
                                }
                            }
                        }
                    }
                }
                Step::Release => match backend.store_and_release(py, None, key, token.get()) {
                    Ok(()) => Answer::Stored,
                    Err(e) => {
                        got.failed = Some(e);
                        Answer::Failed
                    }
                },
                Step::Hit => {
                    self.count_hit();
                    return Ok(got.found.take().expect("Hit comes after Found"));
                }
                Step::Followed => {
                    let outcome = got.followed.take().expect("Followed comes after a wait");
                    return self.followed(py, &outcome);
                }
                Step::Computed => {
                    let result = got.result.take().expect("Computed comes after Compute");
                    if got.leader.is_some() {
                        // Not stored (the backend failed): the waiters get copies.
                        let copy = Stored::capture_as(&result, r.copy).ok();
                        got.publish(Ok(Self::published(py, &result, copy.as_ref())));
                    }
                    return Ok(result);
                }
                Step::Reraise | Step::RaiseBackend => {
                    return Err(got.error.take().expect("an error comes before Raise"));
                }
                Step::RaiseLockTimeout => return Err(Self::lock_timed_out(key, r)),
            };
            if let Some(t) = started {
                flow.charge(t.elapsed());
            }
            if answer == Answer::Failed {
                self.count_error();
                got.error = failure(py, &mut flow, got.failed.take(), got.error.take());
                continue;
            }
            flow.answer(answer);
        }
    }

    /// The settings and key a write helper (`.set`, `.invalidate`) uses, or `None`
    /// while caching is off (nothing is written).
    fn key_to_write(
        &self,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Option<(Arc<Resolved>, String)>> {
        if self.is_off() {
            return Ok(None);
        }
        let r = self.resolve();
        let key = self.key(&r, args, kwargs)?;
        Ok(Some((r, key)))
    }

    /// Any call, as `tp_call` receives it.
    fn call_packed<'py>(
        slf: &Bound<'py, Self>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let this = slf.get();
        let py = slf.py();
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
                Self::backend_failed(py, &r, e.clone_ref(py))?;
                return this.call_func(py, args, kwargs);
            }
        };
        let key = this.key_in_buffer(&r, args, kwargs)?;
        // A memory hit keeps its straight line: the flow's own read, then the flow.
        let local = !backend.has_leases() && !flags.overwrite;
        if local {
            if let Some(v) = this.lookup(py, &r, backend, &key, CallArgs::of(args, kwargs))? {
                return Ok(v);
            }
        }
        let policy = r.policy(backend, flags.overwrite);
        let flow = if local {
            Flow::missed(policy)
        } else {
            Flow::start(policy)
        };
        this.drive(py, &r, backend, &key, args, kwargs, flow)
    }
}

impl FastCall for CachedFunction {
    /// `f(123)`: the key is built from the interpreter's argument array; only a miss
    /// packs the arguments (to call the function).
    #[inline]
    fn call_positional<'py>(
        slf: &Bound<'py, Self>,
        args: &[Bound<'py, PyAny>],
    ) -> PyResult<Bound<'py, PyAny>> {
        let this = slf.get();
        let py = slf.py();
        if !this.is_off() && this.takes_positional(args.len()) {
            let r = this.resolve_here();
            if let Ok(backend) = &r.backend {
                if !backend.has_leases() {
                    let key = this.key_positional(py, &r, args)?;
                    let call = CallArgs { args, kwargs: None };
                    if let Some(v) = this.lookup(py, &r, backend, &key, call)? {
                        return Ok(v);
                    }
                    let args = PyTuple::new(py, args)?;
                    let flow = Flow::missed(r.policy(backend, false));
                    return this.drive(py, &r, backend, &key, &args, None, flow);
                }
            }
        }
        Self::call_packed(slf, &PyTuple::new(py, args)?, None)
    }
}

/// An optional default, the positional arguments and the keyword arguments without it.
type DefaultAndArgs<'py> = (
    Option<Bound<'py, PyAny>>,
    Bound<'py, PyTuple>,
    Option<Bound<'py, PyDict>>,
);

/// Splits the arguments of `.get()`: `default=` is the default; else a lone positional
/// argument that cannot bind (the function has no positional parameter, or its first
/// one is given by keyword too) is, as in cachu 0.2.7's `f.get(None, user_id=1)`;
/// other positional arguments bind as in a call (`f.get(123)` is `user_id=123`).
fn split_default<'py>(
    args: &Bound<'py, PyTuple>,
    kwargs: Option<&Bound<'py, PyDict>>,
    first_parameter: Option<&str>,
) -> PyResult<DefaultAndArgs<'py>> {
    let py = args.py();
    let kwargs = kwargs.map(PyDictMethods::copy).transpose()?;
    let mut default = None;
    if let Some(k) = &kwargs {
        if let Some(d) = k.get_item(pyo3::intern!(py, "default"))? {
            k.del_item(pyo3::intern!(py, "default"))?;
            default = Some(d);
        }
    }
    let taken = match (first_parameter, &kwargs) {
        (None, _) => true,
        (Some(name), Some(k)) => k.contains(name)?,
        (Some(_), None) => false,
    };
    if default.is_none() && args.len() == 1 && taken {
        return Ok((Some(args.get_item(0)?), PyTuple::empty(py), kwargs));
    }
    Ok((default, args.clone(), kwargs))
}

#[pymethods]
impl CachedFunction {
    /// Calls that do not come through vectorcall (`vectorcall.rs`).
    #[pyo3(signature = (*args, **kwargs))]
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Self::call_packed(slf, args, kwargs)
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

    /// Pickled by reference, as a function is (for process pools).
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        pickled_by_name(slf.as_any())
    }

    /// The cached value for these arguments, without calling the function; `default`
    /// if there is none, else `KeyError`. Arguments bind to the function's parameters
    /// as in a call; a lone positional argument beside keyword ones is the default, as
    /// in cachu 0.2.7 (`f.get(None, user_id=1)`). While caching is off nothing is
    /// cached; with a failing backend, a miss (or `BackendError`, with
    /// `on_backend_error='raise'`).
    #[pyo3(signature = (*args, **kwargs))]
    fn get<'py>(
        slf: &Bound<'py, Self>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let (default, args, kwargs) = split_default(args, kwargs, this.plan.first_positional())?;
        let r = this.resolve();
        let key = this.key(&r, &args, kwargs.as_ref())?;
        let found = if this.is_off() {
            None
        } else {
            match this.backend_or_err(py, &r).and_then(|b| b.get(py, &key)) {
                Ok(found) => found,
                Err(e) => {
                    Self::backend_failed(py, &r, e)?;
                    None
                }
            }
        };
        match found {
            Some((v, _)) => Ok(v),
            None => default.ok_or_else(|| Self::missing(&key)),
        }
    }

    /// Stores `value` for these arguments (bound as in a call). A failing backend
    /// raises `BackendError`: nobody is told a value is cached that is not. While
    /// caching is off, nothing is stored.
    #[pyo3(signature = (value, *args, **kwargs))]
    pub fn set(
        &self,
        py: Python<'_>,
        value: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let Some((r, key)) = self.key_to_write(args, kwargs)? else {
            return Ok(());
        };
        let ttl = self.ttl_to_set(value, CallArgs::of(args, kwargs))?;
        self.backend_or_err(py, &r)?.set(value, &key, ttl)
    }

    /// Removes the entry of these arguments (bound as in a call). A failing backend
    /// raises `BackendError`: nobody is told a stale entry is gone that is not. While
    /// caching is off, there is nothing to remove.
    #[pyo3(signature = (*args, **kwargs))]
    pub fn invalidate(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let Some((r, key)) = self.key_to_write(args, kwargs)? else {
            return Ok(());
        };
        self.backend_or_err(py, &r)?.delete(py, &key)
    }

    /// Removes the entry of these arguments, then calls (and caches) again.
    #[pyo3(signature = (*args, **kwargs))]
    fn refresh<'py>(
        slf: &Bound<'py, Self>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        slf.get().invalidate(slf.py(), args, kwargs)?;
        Self::__call__(slf, args, kwargs)
    }

    /// Removes the entries whose arguments include these (all of this function's with
    /// none); `_global=True` matches them under any key prefix. Returns how many were
    /// removed (cachu 0.6's partial-match clear).
    #[pyo3(signature = (_global=false, **kwargs))]
    #[allow(clippy::used_underscore_binding)] // cachu 0.6's name of the parameter
    fn clear(
        &self,
        py: Python<'_>,
        _global: bool,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<usize> {
        let r = self.resolve();
        let mut fragments = Vec::new();
        let mut given = 0;
        if let Some(kwargs) = kwargs {
            for (k, v) in kwargs.iter() {
                given += 1;
                let name: String = k.extract()?;
                if let Some(f) = self.plan.fragment(&name, &v)? {
                    fragments.push((name, f));
                }
            }
        }
        if given > 0 && fragments.is_empty() {
            crate::warn::once(
                py,
                &format!("clear-all:{}", self.id),
                &format!(
                    "cachu: {}.clear(): every argument given is left out of keys; all of its entries are cleared",
                    self.name
                ),
            );
        }
        fragments.sort();
        let head = if _global {
            let region = &r.head[..=r.head.find(':').unwrap_or(0)];
            format!("{}*{}", escape_glob(region), escape_glob(&self.head))
        } else {
            escape_glob(&r.head)
        };
        let mut pattern = head;
        for (_, f) in &fragments {
            pattern.push('*');
            pattern.push_str(&escape_glob(f));
        }
        pattern.push('*');
        self.backend_or_err(py, &r)?.clear(py, Some(&pattern))
    }

    /// How this function is cached, as cachu 0.6's `CacheMeta`.
    #[getter]
    fn _cache_meta<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let kwargs = PyDict::new(py);
        kwargs.set_item("ttl", this.ttl.region_ttl())?;
        let kind = this
            .backend
            .unwrap_or_else(|| crate::config::config_of(this.package.as_deref()).backend);
        kwargs.set_item("backend", kind.name())?;
        kwargs.set_item("tag", &this.tag)?;
        kwargs.set_item(
            "exclude",
            pyo3::types::PySet::new(py, this.plan.excluded())?,
        )?;
        kwargs.set_item("cache_if", this.cache_if.as_ref().map(|f| f.clone_ref(py)))?;
        kwargs.set_item("validate", this.validate.as_ref().map(|f| f.clone_ref(py)))?;
        kwargs.set_item("package", this.package.as_deref())?;
        kwargs.set_item("key_generator", slf.getattr("cache_key")?)?;
        py.import("cachu._since_0_6")?
            .getattr("CacheMeta")?
            .call((), Some(&kwargs))
    }

    /// Calls the undecorated function: the cache is neither read nor written.
    #[pyo3(signature = (*args, **kwargs))]
    fn original<'py>(
        &self,
        py: Python<'py>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.call_func(py, args, kwargs)
    }

    /// The key a call with these arguments reads and writes.
    #[pyo3(signature = (*args, **kwargs))]
    fn cache_key(
        &self,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<String> {
        let (kwargs, _) = take_flags(kwargs)?;
        self.key_for(args, kwargs.as_ref())
    }

    /// Hits and misses of this function, and how many entries it has in its backend
    /// (0 while caching is off, when no backend is asked; 0 with a warning when the
    /// backend fails, or `BackendError` with `on_backend_error='raise'`): a status
    /// endpoint keeps working in an outage.
    pub fn cache_info(&self, py: Python<'_>) -> PyResult<CacheInfo> {
        let currsize = if self.is_off() {
            0
        } else {
            let r = self.resolve();
            let prefix = self.entries_prefix();
            match self
                .backend_or_err(py, &r)
                .and_then(|b| b.count_prefix(py, &prefix))
            {
                Ok(n) => n,
                Err(e) => {
                    Self::backend_failed(py, &r, e)?;
                    0
                }
            }
        };
        Ok(CacheInfo {
            hits: self.stats.hits.load(std::sync::atomic::Ordering::Relaxed),
            misses: self.stats.misses.load(std::sync::atomic::Ordering::Relaxed),
            currsize,
        })
    }

    /// Whether this function's backend keeps values in this process (no I/O).
    #[getter]
    fn _is_memory(&self, py: Python<'_>) -> bool {
        self.backend_now(py).is_ok_and(|b| b.is_memory())
    }

    fn __repr__(&self) -> String {
        format!("<cached function {}>", self.name)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.traverse(&visit)
    }
}
