//! Interpreter exit with daemon threads inside a cached call.
//!
//! Before 3.14, CPython ends a daemon thread that wants the GIL back after finalization
//! has begun with `pthread_exit`, a forced unwind; crossing the `catch_unwind` of a call
//! into this library, that unwind aborts the process ("exception not rethrown"). So at
//! exit (an `atexit` hook, which runs after the non-daemon threads were joined and before
//! finalization):
//! - the exiting thread waits a moment (at most [`GRACE`], without the GIL) for the
//!   computations under way in other threads to finish their cache work: a daemon
//!   thread that has just computed a value stores it and releases its lease;
//! - from then on, any other thread that comes back from a wait without the GIL
//!   ([`detach`]) parks for good instead of taking the GIL: it is a daemon thread that
//!   the process is leaving behind, and it ends with the process.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

/// The longest the exit waits for the cache work of other threads.
const GRACE: Duration = Duration::from_secs(1);

static EXITING: AtomicBool = AtomicBool::new(false);
static EXIT_THREAD: OnceLock<ThreadId> = OnceLock::new();
/// Calls of the sync driver under way (the miss path: computations, stores, waits).
static IN_FLOWS: AtomicUsize = AtomicUsize::new(0);

/// Counts a call of the sync driver while it lives.
pub struct InFlow(());

impl InFlow {
    pub fn enter() -> InFlow {
        IN_FLOWS.fetch_add(1, Ordering::AcqRel);
        InFlow(())
    }
}

impl Drop for InFlow {
    fn drop(&mut self) {
        IN_FLOWS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `py.detach(f)`, except that a thread left behind by the interpreter's exit parks
/// instead of taking the GIL back.
#[inline]
pub fn detach<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> T {
    py.detach(|| {
        let out = f();
        park_if_left_behind();
        out
    })
}

/// Parks this thread for good if the interpreter is exiting in another one.
pub fn park_if_left_behind() {
    if EXITING.load(Ordering::Acquire)
        && EXIT_THREAD
            .get()
            .is_some_and(|t| *t != std::thread::current().id())
    {
        loop {
            std::thread::park();
        }
    }
}

/// The `atexit` hook (`python/cachu/__init__.py`).
#[pyfunction]
pub fn _at_exit(py: Python<'_>) {
    let _ = EXIT_THREAD.set(std::thread::current().id());
    let deadline = Instant::now() + GRACE;
    py.detach(|| {
        while IN_FLOWS.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    EXITING.store(true, Ordering::Release);
}
