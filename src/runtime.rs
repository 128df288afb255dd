//! Every tokio runtime of the crate: the one behind the async API with its bridge to
//! asyncio, and the ones that blocking Redis clients drive from the calling thread.
//!
//! One multi-threaded runtime per process for the async API, made on first use. A
//! child of `fork()` inherits the parent's runtime without its threads: it makes its
//! own, and leaves the inherited one alone (`process::ForkLocal`).
//! Awaitables are made with pyo3-async-runtimes' generic bridge over this runtime.

use std::cell::OnceCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3_async_runtimes::generic::{self, ContextExt, Runtime as GenericRuntime};
use pyo3_async_runtimes::TaskLocals;
use tokio::runtime::{Builder, Handle, Runtime};
use tokio::task::{JoinError, JoinHandle};

use crate::errors::{CacheError, CacheResult};
use crate::process::ForkLocal;

/// Worker threads of the runtime: I/O waits, it does not compute.
const WORKERS: usize = 2;

static RUNTIME: ForkLocal<Arc<Runtime>> = ForkLocal::new();

/// The handle of this process's runtime, started now if it is not running; a clear
/// error if it cannot start (the process may be out of threads).
pub fn try_handle() -> CacheResult<Handle> {
    let rt = RUNTIME.get_or_try_init(|| {
        Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name("cachu-io")
            .enable_all()
            .build()
            .map(Arc::new)
            .map_err(|e| {
                CacheError::Backend(format!(
                    "cannot start the tokio runtime of the async API: {e}"
                ))
            })
    })?;
    Ok(rt.handle().clone())
}

/// A runtime without threads of its own, driven by the thread that waits on it (the
/// blocking Redis client: an uncontended call never hands over to another thread).
pub fn driven_by_caller() -> std::io::Result<Runtime> {
    Builder::new_current_thread().enable_all().build()
}

/// Stops this process's runtime at interpreter exit (`atexit`), while threads may
/// still take the GIL: a worker that is handing a result to an event loop finishes that
/// (with the GIL released here, waiting at most a second), instead of meeting a
/// finalizing interpreter, which ends such a thread by an unwind that aborts the
/// process.
#[pyfunction]
pub fn _shutdown_runtime(py: Python<'_>) {
    if let Some(rt) = RUNTIME.take() {
        crate::exit::detach(py, || {
            if let Ok(rt) = Arc::try_unwrap(rt) {
                rt.shutdown_timeout(std::time::Duration::from_secs(1));
            }
        });
    }
}

/// The handle of this process's runtime, which [`awaitable`] has started.
fn handle() -> Handle {
    try_handle().expect("cachu: the tokio runtime was started by awaitable()")
}

/// Runs blocking work (SQLite) where the future runs, a worker of this runtime, which
/// first hands its other tasks to the rest of the runtime (`block_in_place`): the
/// worker becomes a thread of the blocking pool for that long. Measured on an async
/// file hit: 103-111 us through `spawn_blocking` (the worker wakes a blocking thread,
/// which wakes the worker again), against 86-87 us here.
///
/// An `async fn` without an await: the work must run when the future is polled on a
/// worker, never where the future is made.
#[allow(clippy::unused_async)]
pub async fn blocking<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::block_in_place(f)
}

/// The runtime as pyo3-async-runtimes sees it.
pub struct CachuRuntime;

tokio::task_local! {
    static TASK_LOCALS: OnceCell<TaskLocals>;
}

impl GenericRuntime for CachuRuntime {
    type JoinError = JoinError;
    type JoinHandle = JoinHandle<()>;

    fn spawn<F>(fut: F) -> Self::JoinHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        handle().spawn(fut)
    }

    fn spawn_blocking<F>(f: F) -> Self::JoinHandle
    where
        F: FnOnce() + Send + 'static,
    {
        handle().spawn_blocking(f)
    }
}

impl ContextExt for CachuRuntime {
    fn scope<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R> + Send>>
    where
        F: Future<Output = R> + Send + 'static,
    {
        let cell = OnceCell::new();
        let _ = cell.set(locals);
        Box::pin(TASK_LOCALS.scope(cell, fut))
    }

    fn get_task_locals() -> Option<TaskLocals> {
        TASK_LOCALS
            .try_with(|c| c.get().cloned())
            .unwrap_or_default()
    }
}

/// An asyncio awaitable, on the running loop, of a Rust future run on the runtime.
pub fn awaitable<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    // Started here, where a failure can still be an exception, so that the runtime's
    // `spawn` (which cannot fail) finds it running.
    try_handle()?;
    generic::future_into_py::<CachuRuntime, F, T>(py, fut)
}
