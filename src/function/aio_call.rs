//! The async driver: one call of a decorated coroutine function through the call flow
//! ([`AsyncCall`]), driven by awaiting (`python/cachu/_async.py` awaits; every
//! decision is taken here).
//!
//! [`AsyncCall::next`] does every step that needs no waiting (memory reads and stores,
//! joining this loop's computation of the key, the callbacks) and stops at the first
//! that does, saying what to await ([`Await`]): the backend's I/O (SQLite on the tokio
//! runtime; Redis on the loop's own connection, with the requests made and the replies
//! read by `backend/redis/wire.rs`), another task's computation, a pause, or the
//! function itself. A refresh is a call of its own, run as a task of the loop.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use super::background::Refreshing;
use super::lookup::{Judge, Kind, Seen};
use super::{failure, CachedFunction, CallArgs, Resolved};
use crate::backend::redis::near::Ticket;
use crate::backend::redis::{topology, wire, Topology};
use crate::backend::{decode, Backend, ByteStore, Decoded, Kept, LeaseReply};
use crate::codec::Stored;
use crate::config::{self, BackendKind};
use crate::flow::{Answer, Flow, Step};
use crate::lease::lease_token;
use crate::process::unix_now;
use crate::runtime;
use crate::stamp::Stamp;

mod io;

/// What the driver awaits next.
#[pyclass(eq, eq_int, frozen, module = "cachu._cachu")]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Await {
    /// The backend: [`AsyncCall::op`] (a Redis request, or an awaitable), then
    /// [`AsyncCall::replied`] or [`AsyncCall::failed`].
    Io,
    /// Another task's computation ([`AsyncCall::follow`], at most [`AsyncCall::wait`]
    /// seconds), then [`AsyncCall::waited`].
    Follow,
    /// `asyncio.sleep(wait)`, then [`AsyncCall::slept`].
    Pause,
    /// The function, then [`AsyncCall::computed`] or [`AsyncCall::raised`].
    Compute,
    /// Nothing: return [`AsyncCall::value`].
    Return,
    /// Nothing: raise [`AsyncCall::error`].
    Raise,
}

/// The computations in progress on each event loop, by key: the future that the
/// callers of one loop wait on, and the task that computes.
#[derive(Default)]
pub(crate) struct TaskFlights {
    map: Mutex<HashMap<FlightSlot, (Py<PyAny>, usize)>>,
}

/// The event loop (by address) and the key of a computation.
type FlightSlot = (usize, String);

static ASYNCIO: PyOnceLock<(Py<PyAny>, Py<PyAny>)> = PyOnceLock::new();

/// `cachu._async._background`: runs a coroutine as a task of the running loop.
static BACKGROUND: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `cachu._async._hit_then`: a hit that starts a coroutine (a refresh) when awaited.
pub(crate) static HIT_THEN: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `(asyncio.get_running_loop(), asyncio.current_task())` of the caller.
fn loop_and_task(py: Python<'_>) -> PyResult<(Bound<'_, PyAny>, Bound<'_, PyAny>)> {
    let (get_loop, current_task) = ASYNCIO.get_or_try_init(py, || -> PyResult<_> {
        let asyncio = py.import("asyncio")?;
        Ok((
            asyncio.getattr("get_running_loop")?.unbind(),
            asyncio.getattr("current_task")?.unbind(),
        ))
    })?;
    Ok((get_loop.bind(py).call0()?, current_task.bind(py).call0()?))
}

/// What the file backend's I/O answers, handed back to [`AsyncCall::replied`].
#[pyclass(module = "cachu._cachu")]
pub struct Fetched(Option<LeaseReply>);

/// One call of a coroutine function through the call flow.
#[pyclass(module = "cachu._cachu")]
pub struct AsyncCall {
    cached: Py<CachedFunction>,
    /// `drive(call, args, kwargs)` (of [`AsyncCachedFunction`]): starts a refresh.
    drive: Py<PyAny>,
    r: Arc<Resolved>,
    backend: Arc<Backend>,
    key: String,
    token: Option<String>,
    flow: Flow,
    flights: Arc<TaskFlights>,
    /// The server of the Redis backend (the loop's connection to it carries the I/O).
    #[pyo3(get)]
    redis_url: Option<String>,
    /// The servers of `redis_url`.
    servers: Option<Arc<Topology>>,
    /// A read from Redis for the near tier: its ticket, and the seconds the value
    /// found has left.
    near_read: Option<(Option<Ticket>, Option<f64>)>,
    /// The loop and the future of the computation this call leads.
    leading: Option<(usize, Py<PyAny>)>,
    /// The future of the computation this call follows.
    #[pyo3(get)]
    follow: Option<Py<PyAny>>,
    /// Seconds to wait or pause.
    #[pyo3(get)]
    wait: f64,
    /// The I/O to await: a Redis request and the script load to send if the server
    /// does not know the script, or an awaitable.
    #[pyo3(get)]
    op: Option<Py<PyAny>>,
    /// What the call returns.
    #[pyo3(get)]
    value: Option<Py<PyAny>>,
    /// What the value found is good for.
    found: Kind,
    /// An expired value, served if the computation fails or is slow.
    fallback: Option<Py<PyAny>>,
    result: Option<Py<PyAny>>,
    /// What the call raises.
    error: Option<PyErr>,
    /// The lease, while this call holds it.
    held: Option<crate::lease::Held>,
    /// The call's arguments (for the callbacks that take them).
    args: Py<PyTuple>,
    kwargs: Option<Py<PyDict>>,
    /// When the I/O awaited started (counted only with a `cache_deadline`).
    io_started: Option<std::time::Instant>,
    /// When the computation started, and how long it took (seconds).
    computing_since: Option<std::time::Instant>,
    took: f64,
    /// How values found are judged (a refresh: news only if newer).
    judge: Judge,
    /// A background refresh holds the key's refresh in this process.
    refreshing: Option<Refreshing>,
}

impl AsyncCall {
    /// The flow of one call of `cached` (with its driver and its loops' flights), as
    /// the driver carries it.
    #[allow(clippy::too_many_arguments)] // what a call is made of
    pub(crate) fn new(
        py: Python<'_>,
        (cached, drive, flights): (&Py<CachedFunction>, &Py<PyAny>, &Arc<TaskFlights>),
        r: Arc<Resolved>,
        backend: &Arc<Backend>,
        key: &str,
        flow: Flow,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> AsyncCall {
        let redis_url = (backend.kind == BackendKind::Redis)
            .then(|| config::config_of(backend.package.as_deref()).redis_endpoint_url());
        let servers = redis_url.as_deref().and_then(|url| topology(url).ok());
        AsyncCall {
            cached: cached.clone_ref(py),
            drive: drive.clone_ref(py),
            r,
            backend: backend.clone(),
            key: key.to_owned(),
            token: None,
            flow,
            flights: flights.clone(),
            redis_url,
            servers,
            near_read: None,
            leading: None,
            follow: None,
            wait: 0.0,
            op: None,
            value: None,
            found: Kind::Fresh,
            fallback: None,
            result: None,
            error: None,
            held: None,
            args: args.clone().unbind(),
            kwargs: kwargs.map(|k| k.clone().unbind()),
            io_started: None,
            computing_since: None,
            took: f64::NAN,
            judge: Judge::Call,
            refreshing: None,
        }
    }

    fn store(&self) -> Option<Arc<dyn ByteStore>> {
        self.backend.byte_store()
    }

    fn token(&mut self) -> String {
        self.token.get_or_insert_with(lease_token).clone()
    }

    fn answer(&mut self, answer: Answer) {
        self.charge_io();
        self.flow.answer(answer);
        self.forget_released_lease();
    }

    /// A backend error at the current step (see [`failure`]).
    fn fail(&mut self, py: Python<'_>, e: Option<PyErr>) {
        self.charge_io();
        if e.is_some() {
            self.cached.get().count_error();
        }
        let kept = self.error.take();
        self.error = failure(py, &mut self.flow, e, kept);
        self.forget_released_lease();
    }

    /// Notes how long the computation took (for early refresh).
    fn timed_computation(&mut self) {
        if let Some(t) = self.computing_since.take() {
            self.took = t.elapsed().as_secs_f64();
        }
    }

    /// Counts the time of the I/O just awaited (with a `cache_deadline`).
    fn charge_io(&mut self) {
        if let Some(t) = self.io_started.take() {
            self.flow.charge(t.elapsed());
        }
    }

    /// Once the flow no longer holds the lease, neither does this process.
    fn forget_released_lease(&mut self) {
        if !self.flow.holds_lease() {
            self.held = None;
        }
    }

    /// The call's arguments, for the callbacks that take them.
    fn call_args<'py>(&self, py: Python<'py>) -> (Bound<'py, PyTuple>, Option<Bound<'py, PyDict>>) {
        (
            self.args.bind(py).clone(),
            self.kwargs.as_ref().map(|k| k.bind(py).clone()),
        )
    }

    /// A value found: validated and judged (and counted, with the hit).
    fn found(&mut self, py: Python<'_>, value: Bound<'_, PyAny>, stamp: Stamp) -> PyResult<()> {
        let (args, kwargs) = self.call_args(py);
        let seen = self.cached.get().validated(
            py,
            &self.r,
            &self.key,
            value,
            stamp,
            CallArgs::of(&args, kwargs.as_ref()),
            self.judge,
        )?;
        match seen {
            Some(seen) => self.seen(seen),
            None => self.answer(Answer::Missing),
        }
        Ok(())
    }

    /// A value found and judged.
    fn seen(&mut self, seen: Seen<'_>) {
        let answer = seen.kind.answer();
        if seen.kind == Kind::Fallback {
            self.fallback = Some(seen.value.unbind());
        } else {
            self.found = seen.kind;
            self.value = Some(seen.value.unbind());
        }
        self.answer(answer);
    }

    fn is_refresh(&self) -> bool {
        matches!(self.judge, Judge::NewerThan(_))
    }

    /// Starts this call's key's refresh (it is one: see [`AsyncCachedFunction`]) as a
    /// task of the running loop (`cachu._async._background`, which keeps it until
    /// done); the value served was created at `created_at`. Returns the coroutine to
    /// start, if one starts: one per key in this process.
    pub(crate) fn refresh(
        mut self,
        py: Python<'_>,
        created_at: f64,
    ) -> PyResult<Option<Bound<'_, PyAny>>> {
        let Some(refreshing) = Refreshing::start(self.cached.get().id(), &self.key) else {
            return Ok(None);
        };
        self.refreshing = Some(refreshing);
        self.judge = Judge::NewerThan(created_at);
        let args = self.args.clone_ref(py);
        let kwargs = self.kwargs.as_ref().map(|k| k.clone_ref(py));
        let drive = self.drive.clone_ref(py);
        drive.bind(py).call1((self, args, kwargs)).map(Some)
    }

    /// A sibling of this call that refreshes its key in the background.
    fn refresh_of(&self, py: Python<'_>) -> AsyncCall {
        let args = self.args.bind(py);
        let kwargs = self.kwargs.as_ref().map(|k| k.bind(py));
        AsyncCall::new(
            py,
            (&self.cached, &self.drive, &self.flights),
            self.r.clone(),
            &self.backend,
            &self.key,
            Flow::start(self.r.refresh_policy(&self.backend)),
            args,
            kwargs,
        )
    }

    /// Bytes found: decoded, or discarded (off the loop) if they cannot be.
    fn found_bytes(&mut self, py: Python<'_>, data: Vec<u8>, created_at: f64) -> PyResult<()> {
        let store = self.store().expect("bytes come from a byte store");
        let signing = self.backend.signing_key();
        match decode(
            py,
            store.as_ref(),
            signing.as_deref(),
            &self.key,
            &data,
            created_at,
        ) {
            Decoded::Value(v, stamp) => {
                if let (Some(near), Some((ticket, left))) =
                    (&self.backend.near, self.near_read.take())
                {
                    near.fill(&v, ticket, &self.key, &stamp, left);
                }
                return self.found(py, v, stamp);
            }
            Decoded::Miss => {}
            Decoded::Corrupt => {
                let key = self.key.clone();
                runtime::try_handle()?
                    .spawn_blocking(move || store.discard_corrupt(&key, &data, created_at));
            }
        }
        self.answer(Answer::Missing);
        Ok(())
    }

    /// The leader publishes to the tasks of its loop: a result (copied for each), or an
    /// exception; `None` abandons (they start again).
    fn publish(&mut self, py: Python<'_>, outcome: Option<Result<&Bound<'_, PyAny>, &PyErr>>) {
        let Some((loop_id, fut)) = self.leading.take() else {
            return;
        };
        {
            let mut map = self.flights.map.lock();
            let slot = (loop_id, self.key.clone());
            if map.get(&slot).is_some_and(|(f, _)| f.is(&fut)) {
                map.remove(&slot);
            }
        }
        // No lock is held here: these run Python.
        let fut = fut.bind(py);
        let done = match outcome {
            Some(Ok(v)) => fut.call_method1("set_result", (v,)),
            Some(Err(e)) => fut
                .call_method1("set_exception", (e.value(py),))
                // Retrieved: no "exception was never retrieved" without followers.
                .and_then(|_| fut.call_method0("exception")),
            None => fut.call_method0("cancel"),
        };
        drop(done); // a future already done (the loop closed) is left as it is
    }

    /// Joins (or only looks for) this loop's computation of the key.
    fn join(&mut self, py: Python<'_>, lead: bool) -> PyResult<Answer> {
        let (event_loop, task) = loop_and_task(py)?;
        let slot = (event_loop.as_ptr() as usize, self.key.clone());
        let me = task.as_ptr() as usize;
        if let Some((fut, leader)) = self.flights.map.lock().get(&slot) {
            if *leader == me {
                return Ok(Answer::Reentrant);
            }
            self.follow = Some(fut.clone_ref(py));
            return Ok(Answer::Follower);
        }
        if !lead {
            // A lease of this process's parent has no computation here: compute.
            if crate::lease::held_by_parent(&self.key) {
                return Ok(Answer::Reentrant);
            }
            return Ok(Answer::NoFlight);
        }
        // Made with no lock held; the loop runs one task at a time, so the slot is
        // still free.
        let fut = event_loop.call_method0("create_future")?.unbind();
        self.flights
            .map
            .lock()
            .insert(slot.clone(), (fut.clone_ref(py), me));
        self.leading = Some((slot.0, fut));
        Ok(Answer::Leader)
    }

    /// What the `Store` step writes to a byte store: `(encoded pickle, created_at,
    /// ttl)`, or `None` (nothing to store: refused, unpicklable, or a `Release`).
    fn encoded(&mut self, py: Python<'_>) -> PyResult<Option<(Vec<u8>, f64, f64)>> {
        if self.flow.step() == Step::Release {
            return Ok(None);
        }
        let Some(kept) = self.prepare_store(py)? else {
            return Ok(None);
        };
        let data = self.backend.encode_stored(py, &kept.stored, kept.fresh)?;
        Ok(Some((data, unix_now(), kept.ttl)))
    }

    /// The `Store` step's decisions: what is kept and for how long, published to the
    /// tasks that wait. Callback errors are raised (the caller answers `Raised`).
    fn prepare_store(&mut self, py: Python<'_>) -> PyResult<Option<Kept>> {
        let result = self
            .result
            .as_ref()
            .expect("Store comes after Computed")
            .clone_ref(py);
        let result = result.bind(py);
        let this = self.cached.get();
        let (args, kwargs) = self.call_args(py);
        match this.to_store(
            &self.r,
            result,
            CallArgs::of(&args, kwargs.as_ref()),
            self.took,
        ) {
            Ok(value) => {
                let shared =
                    CachedFunction::published(py, result, value.as_ref().map(|k| &k.stored));
                self.publish(py, Some(Ok(&shared.materialize(py)?)));
                Ok(value)
            }
            Err(e) => {
                self.publish(py, Some(Err(&e)));
                Err(e)
            }
        }
    }

    /// Does the steps that need no waiting; returns what to await.
    #[allow(clippy::too_many_lines)] // one arm per step of the flow
    fn advance(&mut self, py: Python<'_>) -> PyResult<Await> {
        let local = self.backend.is_local();
        loop {
            let step = self.flow.step();
            match step {
                Step::Read if local => {
                    let this = self.cached.get();
                    let (args, kwargs) = self.call_args(py);
                    match this.read(
                        py,
                        &self.r,
                        &self.backend,
                        self.key.as_str(),
                        CallArgs::of(&args, kwargs.as_ref()),
                        self.judge,
                    )? {
                        Ok(Some(seen)) => self.seen(seen),
                        Ok(None) => self.answer(Answer::Missing),
                        Err(e) => self.fail(py, Some(e)),
                    }
                }
                Step::Read | Step::Lease { .. } | Step::Store { .. } | Step::Release => {
                    if local {
                        self.local_store(py);
                        continue;
                    }
                    let started = if self.redis_url.is_some() {
                        self.redis_io(py, step)
                    } else {
                        self.file_io(py, step)
                    };
                    match started {
                        Ok(()) => {
                            self.io_started = self.flow.timed().then(std::time::Instant::now);
                            return Ok(Await::Io);
                        }
                        Err(e) if matches!(step, Step::Store { .. }) && self.op.is_none() => {
                            // `cache_if` or the TTL raised: the lease is released.
                            self.error = Some(e);
                            self.answer(Answer::Raised);
                        }
                        Err(e) => return Err(e),
                    }
                }
                Step::Join | Step::Find => {
                    let answer = self.join(py, step == Step::Join)?;
                    self.answer(answer);
                }
                Step::Follow(wait) => {
                    self.wait = wait.as_secs_f64();
                    return Ok(Await::Follow);
                }
                Step::Pause(nap) => {
                    self.wait = nap.as_secs_f64();
                    return Ok(Await::Pause);
                }
                Step::Compute => {
                    if self.flow.gave_up_waiting() {
                        CachedFunction::log_gave_up(py, &self.key, &self.r);
                    }
                    if !self.is_refresh() {
                        self.cached.get().count_miss();
                    }
                    self.computing_since = Some(std::time::Instant::now());
                    return Ok(Await::Compute);
                }
                Step::Followed => {
                    if self.error.is_some() {
                        return Ok(Await::Raise); // the followed computation raised
                    }
                    self.cached.get().count_hit();
                    return Ok(Await::Return);
                }
                Step::Hit | Step::HitRefresh => {
                    self.cached.get().count_seen(self.found);
                    if let Kind::Refresh { created_at, .. } = self.found {
                        if let Some(refresh) = self.refresh_of(py).refresh(py, created_at)? {
                            BACKGROUND
                                .import(py, "cachu._async", "_background")?
                                .call1((refresh,))?;
                        }
                    }
                    return Ok(Await::Return);
                }
                Step::FailSafe => {
                    self.value = self.fallback.take();
                    let error = self.error.take();
                    self.cached
                        .get()
                        .served_fallback(py, &self.key, error.as_ref());
                    return Ok(Await::Return);
                }
                Step::Skipped => {
                    self.value = None;
                    return Ok(Await::Return);
                }
                Step::Computed => {
                    if self.leading.is_some() {
                        let result = self.result.as_ref().map(|r| r.clone_ref(py));
                        if let Some(result) = result {
                            self.publish(py, Some(Ok(result.bind(py))));
                        }
                    }
                    self.value = self.result.take();
                    if self.is_refresh() {
                        self.cached.get().count_refresh();
                    }
                    return Ok(Await::Return);
                }
                Step::Reraise if self.is_refresh() => {
                    if let Some(e) = self.error.take() {
                        self.cached.get().refresh_failed(py, &self.key, &e);
                    }
                    self.value = None;
                    return Ok(Await::Return);
                }
                Step::Reraise | Step::RaiseBackend => return Ok(Await::Raise),
                Step::RaiseLockTimeout => {
                    self.error = Some(CachedFunction::lock_timed_out(&self.key, &self.r));
                    return Ok(Await::Raise);
                }
            }
        }
    }

    /// `Store` / `Release` on the memory (or null) backend, inline.
    fn local_store(&mut self, py: Python<'_>) {
        if self.flow.step() == Step::Release {
            self.answer(Answer::Stored);
            return;
        }
        match self.prepare_store(py) {
            Ok(value) => {
                let done = value.map_or(Ok(()), |kept| {
                    self.backend.set_stored(py, &kept, self.key.as_str())
                });
                match done {
                    Ok(()) => self.answer(Answer::Stored),
                    Err(e) => self.fail(py, Some(e)),
                }
            }
            Err(e) => {
                self.error = Some(e);
                self.answer(Answer::Raised);
            }
        }
    }
}

#[pymethods]
impl AsyncCall {
    /// The key, when its server depends on it (a cluster's slot, Sentinel's master):
    /// the asyncio transport asks [`crate::backend::redis::py`] where it lives.
    #[getter]
    fn redis_key(&self) -> Option<&str> {
        match self.servers.as_deref() {
            Some(Topology::Single(_)) | None => None,
            Some(_) => Some(&self.key),
        }
    }

    /// Does what needs no waiting; returns what to await.
    fn next(&mut self, py: Python<'_>) -> PyResult<Await> {
        self.op = None;
        self.advance(py)
    }

    /// The reply of [`Await::Io`]: a Redis reply, or the file backend's answer.
    fn replied(&mut self, py: Python<'_>, reply: &Bound<'_, PyAny>) -> PyResult<()> {
        let step = self.flow.step();
        if matches!(step, Step::Store { .. } | Step::Release) {
            if let (Some(near), Step::Store { .. }) = (&self.backend.near, step) {
                near.forget(&self.key); // written here: the near copy goes at once
            }
            self.answer(Answer::Stored);
            return Ok(());
        }
        let lease = if let Ok(fetched) = reply.cast::<Fetched>() {
            fetched.borrow_mut().0.take()
        } else {
            let (lease, left) = wire::lease_reply_of(reply)?;
            if let Some((_, l)) = self.near_read.as_mut() {
                *l = left;
            }
            Some(lease)
        };
        match lease {
            Some(LeaseReply::Found(data, created_at)) => self.found_bytes(py, data, created_at)?,
            // A store without leases answers a miss with the lease.
            Some(LeaseReply::Acquired) if step == Step::Read => self.answer(Answer::Missing),
            Some(LeaseReply::Acquired) => {
                self.held = Some(crate::lease::hold(&self.key));
                self.answer(Answer::Acquired);
            }
            Some(LeaseReply::Held) => self.answer(Answer::Held),
            None => self.answer(Answer::Missing),
        }
        Ok(())
    }

    /// The backend failed ([`Await::Io`]); `None` when the I/O was cancelled.
    fn failed(&mut self, py: Python<'_>, error: Option<Bound<'_, PyAny>>) {
        self.fail(py, error.map(PyErr::from_value));
    }

    /// What the call raises.
    #[getter]
    fn error(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.error
            .as_ref()
            .map(|e| e.value(py).clone().into_any().unbind())
    }

    /// Whether the I/O awaited releases a lease (a cancellation does not stop it).
    #[getter]
    fn releasing(&self) -> bool {
        self.flow.step() == Step::Release
    }

    fn computed(&mut self, result: Py<PyAny>) {
        self.timed_computation();
        self.result = Some(result);
        self.answer(Answer::Computed);
    }

    fn raised(&mut self, py: Python<'_>, error: Bound<'_, PyAny>) {
        self.timed_computation();
        let e = PyErr::from_value(error);
        let ordinary = CachedFunction::reaches_followers(py, &e);
        if ordinary {
            self.publish(py, Some(Err(&e)));
        } else {
            self.publish(py, None);
        }
        self.error = Some(e);
        self.answer(if ordinary {
            Answer::Raised
        } else {
            Answer::Interrupted
        });
    }

    /// Seconds the computation may still run before the caller gets the fallback
    /// (`timeout`), or `None`: the driver awaits it to the end.
    #[getter]
    fn soft_timeout(&self) -> Option<f64> {
        self.flow.soft_timeout().map(|d| d.as_secs_f64())
    }

    /// The computation ran past `timeout`: the caller returns the fallback (this
    /// returns it), and the driver goes on with this call in the background.
    fn leave(&mut self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.cached.get().served_fallback(py, &self.key, None);
        self.fallback.as_ref().map(|v| v.clone_ref(py))
    }

    /// The future followed is done, or the wait ended.
    fn waited(&mut self, py: Python<'_>) -> PyResult<()> {
        let Some(fut) = self.follow.take() else {
            return Ok(());
        };
        let fut = fut.bind(py);
        if !fut.call_method0("done")?.is_truthy()? {
            self.answer(Answer::TimedOut);
        } else if fut.call_method0("cancelled")?.is_truthy()? {
            self.answer(Answer::Abandoned);
        } else {
            let exc = fut.call_method0("exception")?;
            if exc.is_none() {
                let v = fut.call_method0("result")?;
                let copy = Stored::capture_as(&v, self.r.copy)
                    .and_then(|s| s.materialize(py))
                    .unwrap_or(v);
                self.value = Some(copy.unbind());
                self.answer(Answer::Followed);
            } else {
                self.error = Some(PyErr::from_value(exc));
                self.answer(Answer::FollowedError);
            }
        }
        Ok(())
    }

    fn slept(&mut self) {
        self.answer(Answer::Slept);
    }

    /// The driver stops (its coroutine was closed): the tasks that wait start again.
    fn abandon(&mut self, py: Python<'_>) {
        self.publish(py, None);
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.cached)?;
        visit.call(&self.drive)?;
        visit.call(&self.args)?;
        if let Some(k) = &self.kwargs {
            visit.call(k)?;
        }
        for o in [
            &self.follow,
            &self.op,
            &self.value,
            &self.result,
            &self.fallback,
        ]
        .into_iter()
        .flatten()
        {
            visit.call(o)?;
        }
        if let Some((_, fut)) = &self.leading {
            visit.call(fut)?;
        }
        Ok(())
    }
}

impl Drop for AsyncCall {
    /// A call dropped while it leads (its coroutine never finished): the tasks that
    /// wait for it start again instead of waiting out `lock_timeout`.
    fn drop(&mut self) {
        if self.leading.is_some() {
            // Not at interpreter exit, when nothing waits any more.
            let _ = Python::try_attach(|py| self.publish(py, None));
        }
    }
}
