//! The I/O requests of an async call's backend steps: the file backend's, run on the
//! runtime, and the Redis backend's, sent by the loop's own connection.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::{AsyncCall, Fetched};
use crate::backend::redis::wire;
use crate::flow::Step;
use crate::runtime;

impl AsyncCall {
    /// Starts the I/O of a step of the file backend on the runtime.
    pub(super) fn file_io(&mut self, py: Python<'_>, step: Step) -> PyResult<()> {
        let store = self.store().expect("the file backend is a byte store");
        let key = self.key.clone();
        let token = self.token();
        let lease = self.r.lock_timeout;
        let awaitable = match step {
            Step::Read | Step::Lease { .. } => {
                let read = !matches!(step, Step::Lease { read: false });
                runtime::awaitable(py, async move {
                    let reply = store.lease_async(key, token, lease, read).await?;
                    Ok(Fetched(Some(reply)))
                })?
            }
            _ => {
                let value = self.encoded(py)?;
                runtime::awaitable(py, async move {
                    store.store_and_release_async(key, value, token).await?;
                    Ok(Fetched(None))
                })?
            }
        };
        self.op = Some(awaitable.unbind());
        Ok(())
    }

    /// The request of a step of the Redis backend, for the loop's connection.
    pub(super) fn redis_io(&mut self, py: Python<'_>, step: Step) -> PyResult<()> {
        let token = self.token();
        let lock = match &self.servers {
            Some(servers) => servers.lock_key(&self.key),
            None => wire::lock_key(&self.key),
        };
        let (request, load) = if let Step::Lease { read } = step {
            let near = self.backend.near.as_ref().filter(|_| read);
            self.near_read = near.map(|n| (n.ticket(&self.key), None));
            let read = wire::Read::of(read, near.is_some());
            wire::lease_request(&self.key, &lock, &token, self.r.lock_timeout, read)
        } else {
            let value = self.encoded(py)?;
            wire::store_release_request(&self.key, &lock, &token, value.as_ref())
        };
        self.op = Some(
            (PyBytes::new(py, &request), PyBytes::new(py, &load))
                .into_pyobject(py)?
                .into_any()
                .unbind(),
        );
        Ok(())
    }
}
