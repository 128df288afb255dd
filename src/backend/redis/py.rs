//! What the asyncio transport of the async API (`python/cachu/_aioredis.py`) needs
//! from the Rust side besides the requests of the call flow (`wire.rs`): the URL's
//! options, the encoding of its setup requests, and the server's health, which it
//! shares with the blocking client.
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};

use super::layout::{Layout, Shape};
use super::{connector, topology, Endpoint};
use crate::errors::CacheError;

/// The URL's options, as `Endpoint` reads them.
#[pyfunction]
pub fn _redis_endpoint<'py>(py: Python<'py>, url: &str) -> PyResult<Bound<'py, PyDict>> {
    let bad = |e: String| CacheError::config("redis_url", format!("{url:?}"), e);
    let layout = Layout::parse(url).map_err(bad)?;
    // A cluster's or Sentinel's options are those of each of its nodes.
    let ep = match layout.nodes().first() {
        Some(node) => Endpoint::parse(&layout.node_url(node)),
        None => Endpoint::parse(url),
    }
    .map_err(bad)?;
    let d = PyDict::new(py);
    d.set_item("shown", &layout.shown)?;
    d.set_item("ca_file", &ep.ca_file)?;
    d.set_item("insecure", ep.url.ends_with("#insecure"))?;
    d.set_item("connect_timeout", ep.connect_timeout.as_secs_f64())?;
    d.set_item("command_timeout", ep.command_timeout.as_secs_f64())?;
    Ok(d)
}

/// What `url` names, for `get_redis_client()`: `shape` (`single`, `cluster` or
/// `sentinel`), the `nodes` (seeds or sentinels) as `(host, port)`, the `master`'s name
/// of a Sentinel URL, and `node_url`: the URL of a single server with the options and
/// password of every data node, at the first node's address; for a Sentinel URL,
/// `sentinel_url`: the first sentinel's, with their credentials if the URL gives them.
#[pyfunction]
pub fn _redis_layout<'py>(py: Python<'py>, url: &str) -> PyResult<Bound<'py, PyDict>> {
    let layout =
        Layout::parse(url).map_err(|e| CacheError::config("redis_url", format!("{url:?}"), e))?;
    let d = PyDict::new(py);
    let (shape, master) = match &layout.shape {
        Shape::Single => ("single", None),
        Shape::Cluster(_) => ("cluster", None),
        Shape::Sentinel(_, name) => ("sentinel", Some(name.as_str())),
    };
    d.set_item("shape", shape)?;
    d.set_item("master", master)?;
    let nodes: Vec<(String, u16)> = layout
        .nodes()
        .iter()
        .filter_map(|n| {
            let (host, port) = n.rsplit_once(':')?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect();
    d.set_item("nodes", nodes)?;
    d.set_item(
        "node_url",
        layout
            .nodes()
            .first()
            .map_or_else(|| url.to_owned(), |n| layout.node_url(n)),
    )?;
    if master.is_some() {
        let first = layout.nodes().first().map(|n| layout.sentinel_url(n));
        d.set_item("sentinel_url", first)?;
    }
    Ok(d)
}

/// One request in the protocol's bytes, encoded by redis-rs as the sync path's are:
/// each argument is `bytes`, `str` or `int`.
#[pyfunction]
#[pyo3(signature = (*args))]
pub fn _redis_command<'py>(args: &Bound<'py, PyTuple>) -> PyResult<Bound<'py, PyBytes>> {
    let mut cmd = redis::Cmd::new();
    for a in args {
        if let Ok(b) = a.cast::<PyBytes>() {
            cmd.arg(b.as_bytes());
        } else if let Ok(s) = a.cast::<PyString>() {
            cmd.arg(s.to_str()?);
        } else if let Ok(i) = a.extract::<i64>() {
            cmd.arg(i);
        } else {
            return Err(PyTypeError::new_err(format!(
                "a Redis argument is bytes, str or int, not {}",
                a.get_type().name()?
            )));
        }
    }
    Ok(PyBytes::new(args.py(), &cmd.get_packed_command()))
}

/// `None` if a call to `url` may go ahead, else the message of the current outage
/// (the breaker is open).
#[pyfunction]
pub fn _redis_admit(url: &str) -> PyResult<Option<String>> {
    Ok(connector(url)?.health.admit().err().map(|e| e.to_string()))
}

/// Records a transport failure; returns the outage's message.
#[pyfunction]
pub fn _redis_failed(url: &str, detail: &str) -> PyResult<String> {
    let c = connector(url)?;
    Ok(c.health.failed(&c.endpoint.shown, &detail).to_string())
}

/// Records a successful call.
#[pyfunction]
pub fn _redis_ok(py: Python<'_>, url: &str) -> PyResult<()> {
    let c = connector(url)?;
    c.health.ok();
    if let Some(n) = c.health.take_recovery() {
        crate::warn::log(
            py,
            crate::warn::Level::Info,
            &format!(
                "cachu: Redis at {} recovered (outage {n} is over)",
                c.endpoint.shown
            ),
        );
    }
    Ok(())
}

/// The URL of the server that holds `key` among the servers of `url` (a cluster's
/// master of its slot, Sentinel's master), or `None` if not known without asking the
/// network; with `resolve`, asks it (blocking, without the GIL: call it in a thread).
#[pyfunction]
pub fn _redis_node(
    py: Python<'_>,
    url: &str,
    key: &str,
    resolve: bool,
) -> PyResult<Option<String>> {
    let servers = topology(url)?;
    if let Some(node) = servers.node_of(key) {
        return Ok(Some(node.url.clone()));
    }
    if !resolve {
        return Ok(None);
    }
    crate::exit::detach(py, || servers.resolve())?;
    Ok(servers.node_of(key).map(|n| n.url.clone()))
}

/// Finds the servers of `url` again (after a failure), unless that was done a moment
/// ago. Blocking, without the GIL: call it in a thread.
#[pyfunction]
pub fn _redis_resolve(py: Python<'_>, url: &str) -> PyResult<()> {
    let servers = topology(url)?;
    Ok(crate::exit::detach(py, || servers.resolve())?)
}

/// A cluster of `url` redirected a request: `MOVED` (the slot map learns that
/// `slot` is served by `address`) or `ASK` (`slot` is `None`: just that request goes
/// there). The URL of the server to send it to.
#[pyfunction]
#[pyo3(signature = (url, address, slot=None))]
pub fn _redis_redirect(url: &str, address: &str, slot: Option<u16>) -> PyResult<String> {
    let servers = topology(url)?;
    let node = match slot {
        Some(slot) => servers.moved_here(slot, address)?,
        None => servers.node_at(address)?,
    };
    Ok(node.url.clone())
}
