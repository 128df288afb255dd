//! The sync driver: each step of the call flow done with blocking I/O (the GIL
//! released around it).
//!
//! [`drive`] runs one [`Call`] from a [`Flow`] to its end. Waits (for another
//! thread's computation, between looks at a lease held elsewhere, for a computation
//! with a soft timeout) are sliced so that a signal (Ctrl-C) is raised within
//! [`SIGNAL_SLICE`]. Background work runs here too, on the pool (`background.rs`): a
//! refresh is a call of its own ([`refresh_later`]); a computation that outlives its
//! caller's `timeout` takes the rest of its call (the store) with it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use super::background::{self, Handoff, Refreshing};
use super::lookup::{Judge, Kind, Seen};
use super::{failure, CachedFunction, CallArgs, Outcome, Resolved};
use crate::backend::{Backend, Lease, Token};
use crate::codec::Stored;
use crate::flight::{Flight, Join, Leader, Waited};
use crate::flow::{Answer, Flow, Step};
use crate::key::KeyBuf;

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
        crate::exit::detach(py, || std::thread::sleep(left.min(SIGNAL_SLICE)));
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
        match crate::exit::detach(py, || flight.wait_until(slice)) {
            Waited::TimedOut if Instant::now() < until => py.check_signals()?,
            waited => return Ok(waited),
        }
    }
}

/// What the function returned or raised.
type Computed = PyResult<Py<PyAny>>;

/// What one call works on. Owned: a computation that outlives its caller's soft
/// timeout takes the rest of the call (storing its result) to the pool thread, and a
/// background refresh is a call of its own there.
pub(crate) struct Call {
    func: Py<CachedFunction>,
    r: Arc<Resolved>,
    backend: Arc<Backend>,
    /// The key, in the buffer it was built in (no copy).
    key: KeyBuf,
    args: Py<PyTuple>,
    kwargs: Option<Py<PyDict>>,
    token: Token,
    /// Work done in another thread than the caller's: `None` for a call.
    elsewhere: Option<Box<Elsewhere>>,
}

/// What work done in another thread than the caller's needs.
struct Elsewhere {
    /// The caller's `contextvars` (a copy).
    context: Py<PyAny>,
    /// How values found are judged.
    judge: Judge,
    /// A background refresh holds the key's refresh in this process.
    _refreshing: Option<Refreshing>,
}

/// What one call has gathered while the flow runs.
#[derive(Default)]
struct Gathered {
    found: Option<(Py<PyAny>, Kind)>,
    fallback: Option<Py<PyAny>>,
    leader: Option<Leader<Outcome>>,
    flight: Option<Arc<Flight<Outcome>>>,
    followed: Option<Arc<Outcome>>,
    result: Option<Py<PyAny>>,
    /// Seconds the computation took.
    took: f64,
    /// The exception the call raises if it ends raising.
    error: Option<PyErr>,
    /// The backend's error at the step just done.
    failed: Option<PyErr>,
    /// The lease, while this call holds it.
    held: Option<crate::lease::Held>,
}

impl Gathered {
    /// The leader hands the outcome `make` makes to the threads that wait for it
    /// (made only if one does).
    fn publish(&mut self, make: impl FnOnce() -> Outcome) {
        if let Some(l) = self.leader.take() {
            l.finish(make);
        }
    }

    /// A value found: the answer to give the flow.
    fn seen(&mut self, seen: Seen<'_>) -> Answer {
        let answer = seen.kind.answer();
        if seen.kind == Kind::Fallback {
            self.fallback = Some(seen.value.unbind());
        } else {
            self.found = Some((seen.value.unbind(), seen.kind));
        }
        answer
    }

    /// The outcome of the computation: the answer to give the flow.
    fn computed(&mut self, py: Python<'_>, outcome: PyResult<Py<PyAny>>, took: f64) -> Answer {
        self.took = took;
        match outcome {
            Ok(v) => {
                self.result = Some(v);
                Answer::Computed
            }
            Err(e) => {
                let ordinary = CachedFunction::reaches_followers(py, &e);
                if ordinary {
                    self.publish(|| Err(e.clone_ref(py)));
                }
                self.error = Some(e);
                if ordinary {
                    Answer::Raised
                } else {
                    Answer::Interrupted
                }
            }
        }
    }
}

impl Call {
    pub(crate) fn new<'py>(
        func: &Bound<'py, CachedFunction>,
        r: Arc<Resolved>,
        backend: Arc<Backend>,
        key: KeyBuf,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> Call {
        Call {
            func: func.clone().unbind(),
            r,
            backend,
            key,
            args: args.clone().unbind(),
            kwargs: kwargs.map(|k| k.clone().unbind()),
            token: Token::lazy(),
            elsewhere: None,
        }
    }

    /// Runs the function with the call's arguments (in the caller's context, from
    /// another thread).
    fn run(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let this = self.func.get();
        let args = self.args.bind(py);
        let kwargs = self.kwargs.as_ref().map(|k| k.bind(py));
        match self.elsewhere.as_ref().map(|e| &e.context) {
            None => this.call_func(py, args, kwargs),
            Some(ctx) => {
                let mut all = vec![this.func.bind(py).clone()];
                all.extend(args.iter());
                let all = PyTuple::new(py, all)?;
                ctx.bind(py).getattr(intern!(py, "run"))?.call(all, kwargs)
            }
        }
        .map(Bound::unbind)
    }

    /// The function run on a pool thread, waited for at most `left`: its outcome, or
    /// `Err(handoff)` when it runs longer (or `None` when the pool cannot take it).
    fn run_within(
        &self,
        py: Python<'_>,
        left: Duration,
    ) -> PyResult<Result<Computed, Arc<Handoff<Computed>>>> {
        let handoff = Handoff::new();
        let job = Call {
            func: self.func.clone_ref(py),
            r: self.r.clone(),
            backend: self.backend.clone(),
            key: KeyBuf::of(String::new()),
            args: self.args.clone_ref(py),
            kwargs: self.kwargs.as_ref().map(|k| k.clone_ref(py)),
            token: Token::lazy(),
            elsewhere: Some(Box::new(Elsewhere {
                context: copy_context(py)?,
                judge: Judge::Call,
                _refreshing: None,
            })),
        };
        let h = handoff.clone();
        let taken = background::submit(move || {
            // At interpreter exit the computation is dropped.
            crate::exit::park_if_left_behind();
            let _ = Python::try_attach(|py| h.finish(job.run(py)));
        });
        if !taken {
            return Ok(Ok(self.run(py)));
        }
        let until = Instant::now() + left;
        loop {
            let slice = (Instant::now() + SIGNAL_SLICE).min(until);
            match crate::exit::detach(py, || handoff.wait_until(slice)) {
                background::Waited::Done(outcome) => return Ok(Ok(outcome)),
                background::Waited::Running if Instant::now() < until => py.check_signals()?,
                background::Waited::Running => return Ok(Err(handoff)),
            }
        }
    }
}

/// `contextvars.copy_context()`.
pub(crate) fn copy_context(py: Python<'_>) -> PyResult<Py<PyAny>> {
    Ok(py
        .import(intern!(py, "contextvars"))?
        .call_method0(intern!(py, "copy_context"))?
        .unbind())
}

/// Starts a background refresh of `call`'s key, whose value created at `created_at` was
/// just served: one per key in this process, on the pool, in a copy of the caller's
/// context. Nothing happens if one runs already (or the key failed a moment ago).
pub(crate) fn refresh_later(py: Python<'_>, mut call: Call, created_at: f64) -> PyResult<()> {
    let Some(refreshing) = Refreshing::start(call.func.get().id(), &call.key) else {
        return Ok(());
    };
    call.elsewhere = Some(Box::new(Elsewhere {
        context: copy_context(py)?,
        judge: Judge::NewerThan(created_at),
        _refreshing: Some(refreshing),
    }));
    let flow = Flow::start(call.r.refresh_policy(&call.backend));
    // A full queue drops the refresh (and its hold on the key): a later call asks again.
    background::submit(move || {
        crate::exit::park_if_left_behind();
        let _ = Python::try_attach(|py| {
            if let Err(e) = drive(py, call, flow, Gathered::default()) {
                e.write_unraisable(py, None);
            }
        });
    });
    Ok(())
}

/// Runs the call flow from `flow` with blocking I/O.
#[inline]
pub(crate) fn run(py: Python<'_>, call: Call, flow: Flow) -> PyResult<Bound<'_, PyAny>> {
    let _counted = crate::exit::InFlow::enter();
    drive(py, call, flow, Gathered::default())
}

#[allow(clippy::too_many_lines)] // one arm per step of the flow
fn drive(
    py: Python<'_>,
    call: Call,
    mut flow: Flow,
    mut got: Gathered,
) -> PyResult<Bound<'_, PyAny>> {
    let func = call.func.clone_ref(py);
    let this = func.get();
    let args = call.args.bind(py).clone();
    let kwargs = call.kwargs.as_ref().map(|k| k.bind(py).clone());
    // Borrowed from the call until it is handed on (a refresh, a soft timeout).
    let judge = call.elsewhere.as_ref().map_or(Judge::Call, |e| e.judge);
    let (r, backend, key) = (&*call.r, &*call.backend, &call.key);
    // How long the computation takes matters to early refresh only.
    let timed = r.rules.is_on();
    let refresh = matches!(judge, Judge::NewerThan(_));
    let callargs = CallArgs::of(&args, kwargs.as_ref());
    loop {
        let step = flow.step();
        let started = (flow.timed() && step.is_io()).then(Instant::now);
        let answer = match step {
            Step::Read => match this.read(py, r, backend, key, callargs, judge)? {
                Ok(Some(seen)) => got.seen(seen),
                Ok(None) => Answer::Missing,
                Err(e) => {
                    got.failed = Some(e);
                    Answer::Failed
                }
            },
            Step::Lease { read } => {
                match backend.lease(py, key, &call.token, r.lock_timeout, read) {
                    Ok(Lease::Found(v, stamp)) => {
                        match this.validated(py, r, key, v, stamp, callargs, judge)? {
                            Some(seen) => got.seen(seen),
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
            Step::Join => match this.flights.join(key) {
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
            Step::Find => match this.flights.find(key) {
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
                        let raised = outcome.is_err();
                        got.followed = Some(outcome);
                        if raised {
                            Answer::FollowedError
                        } else {
                            Answer::Followed
                        }
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
                    CachedFunction::log_gave_up(py, key, r);
                }
                if !refresh {
                    this.count_miss();
                }
                let began = timed.then(Instant::now);
                let took = move || began.map_or(f64::NAN, |t| t.elapsed().as_secs_f64());
                let outcome = match flow.soft_timeout() {
                    None => call.run(py),
                    Some(left) => match call.run_within(py, left)? {
                        Ok(outcome) => outcome,
                        Err(handoff) => {
                            // Slower than `timeout`: the caller gets the fallback; the
                            // computation goes on, and the rest of this call with it.
                            let fallback =
                                got.fallback.take().expect("a soft timeout has a fallback");
                            this.served_fallback(py, key, None);
                            handoff.leave(move |outcome| {
                                crate::exit::park_if_left_behind();
                                let _ = Python::try_attach(|py| {
                                    let answer = got.computed(py, outcome, took());
                                    flow.answer(answer);
                                    // What it returns or raises reaches nobody.
                                    let _ = drive(py, call, flow, got);
                                });
                            });
                            return Ok(fallback.into_bound(py));
                        }
                    },
                };
                got.computed(py, outcome, took())
            }
            Step::Store { release } => {
                let result = got
                    .result
                    .as_ref()
                    .expect("Store comes after Computed")
                    .bind(py)
                    .clone();
                match this.to_store(r, &result, callargs, got.took) {
                    Err(e) => {
                        got.publish(|| Err(e.clone_ref(py)));
                        got.error = Some(e);
                        Answer::Raised
                    }
                    Ok(kept) => {
                        got.publish(|| {
                            Ok(CachedFunction::published(
                                py,
                                &result,
                                kept.as_ref().map(|k| &k.stored),
                            ))
                        });
                        let done = if release {
                            backend.store_and_release(py, kept.as_ref(), key, call.token.get())
                        } else {
                            kept.as_ref()
                                .map_or(Ok(()), |k| backend.set_stored(py, k, key))
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
            Step::Release => match backend.store_and_release(py, None, key, call.token.get()) {
                Ok(()) => Answer::Stored,
                Err(e) => {
                    got.failed = Some(e);
                    Answer::Failed
                }
            },
            Step::Hit | Step::HitRefresh => {
                let (value, kind) = got.found.take().expect("Hit comes after Found");
                this.count_seen(kind);
                if let Kind::Refresh { created_at, .. } = kind {
                    refresh_later(py, call, created_at)?;
                }
                return Ok(value.into_bound(py));
            }
            Step::FailSafe => {
                let fallback = got.fallback.take().expect("FailSafe comes after Fallback");
                let error = got.error.take().or_else(|| {
                    got.followed
                        .as_ref()
                        .and_then(|o| o.as_ref().as_ref().err().map(|e| e.clone_ref(py)))
                });
                this.served_fallback(py, key, error.as_ref());
                return Ok(fallback.into_bound(py));
            }
            Step::Skipped => return Ok(py.None().into_bound(py)),
            Step::Followed => {
                let outcome = got.followed.take().expect("Followed comes after a wait");
                return this.followed(py, &outcome);
            }
            Step::Computed => {
                let result = got
                    .result
                    .take()
                    .expect("Computed comes after Compute")
                    .into_bound(py);
                // Not stored (the backend failed): the waiters get copies.
                got.publish(|| {
                    let copy = Stored::capture_as(&result, r.copy).ok();
                    Ok(CachedFunction::published(py, &result, copy.as_ref()))
                });
                if refresh {
                    this.count_refresh();
                }
                return Ok(result);
            }
            Step::Reraise | Step::RaiseBackend => {
                let e = got.error.take().expect("an error comes before Raise");
                if refresh {
                    this.refresh_failed(py, key, &e);
                    return Ok(py.None().into_bound(py));
                }
                return Err(e);
            }
            Step::RaiseLockTimeout => return Err(CachedFunction::lock_timed_out(key, r)),
        };
        if let Some(t) = started {
            flow.charge(t.elapsed());
        }
        if answer == Answer::Failed {
            this.count_error();
            got.error = failure(py, &mut flow, got.failed.take(), got.error.take());
            continue;
        }
        flow.answer(answer);
    }
}
