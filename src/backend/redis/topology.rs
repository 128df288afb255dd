//! Where a request goes: the one server of a `redis://` URL, the master of the key's
//! slot in a Redis Cluster, or the master that Sentinel names. Every server is a
//! [`Connector`] of its own (one connection, one breaker), shared with any other URL
//! that reaches it.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;
use redis::Value;

use super::cluster::Cluster;
use super::connector::{connector, Connector, Fault};
use super::layout::{Layout, Shape};
use super::op::send;
pub use super::op::Op;
use super::sentinel::Sentinel;
use super::slots::cluster_lock_key;
use super::wire::lock_key;
use crate::errors::{CacheError, CacheResult};

/// The servers of one URL.
pub enum Topology {
    Single(Arc<Connector>),
    Cluster(Cluster),
    Sentinel(Sentinel),
}

static TOPOLOGIES: LazyLock<Mutex<HashMap<String, Arc<Topology>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The servers of `url`, made on first use (no connection is opened yet).
pub fn topology(url: &str) -> CacheResult<Arc<Topology>> {
    if let Some(t) = TOPOLOGIES.lock().get(url) {
        return Ok(t.clone());
    }
    let layout =
        Layout::parse(url).map_err(|e| CacheError::config("redis_url", format!("{url:?}"), e))?;
    let made = Arc::new(match layout.shape {
        Shape::Single => Topology::Single(connector(url)?),
        Shape::Cluster(_) => Topology::Cluster(Cluster::new(layout)),
        Shape::Sentinel(..) => Topology::Sentinel(Sentinel::new(layout)),
    });
    Ok(TOPOLOGIES
        .lock()
        .entry(url.to_owned())
        .or_insert(made)
        .clone())
}

/// Forgets every URL's servers (their connections close once unused).
pub(crate) fn forget_topologies() {
    let all: Vec<Arc<Topology>> = TOPOLOGIES.lock().drain().map(|(_, t)| t).collect();
    drop(all);
}

impl Topology {
    /// The URL as shown in messages (password masked).
    pub fn shown(&self) -> &str {
        match self {
            Topology::Single(c) => &c.endpoint.shown,
            Topology::Cluster(c) => &c.layout.shown,
            Topology::Sentinel(s) => &s.layout.shown,
        }
    }

    /// `op`, sent where `key` lives (any master for a request without a key).
    pub fn query(&self, key: Option<&str>, op: &Op) -> CacheResult<Value> {
        match self {
            Topology::Single(c) => c
                .run_raw(async |con| send(con, op, false).await)
                .map_err(|fault| match fault {
                    Fault::Reply(e) if is_cluster_reply(&e) => CacheError::Backend(format!(
                        "Redis at {} is a node of a Redis Cluster ({e}): its URL is a redis+cluster:// one",
                        c.endpoint.shown
                    )),
                    other => other.into_error(&c.endpoint.shown),
                }),
            Topology::Cluster(c) => c.query(key, op),
            Topology::Sentinel(s) => s.query(op),
        }
    }

    /// `op`, with its reply read as `T`.
    pub fn query_as<T: redis::FromRedisValue>(&self, key: Option<&str>, op: &Op) -> CacheResult<T> {
        let value = self.query(key, op)?;
        redis::from_redis_value(value).map_err(|e: redis::ParsingError| {
            CacheError::Backend(format!("Redis at {}: {e}", self.shown()))
        })
    }

    /// The servers known now, without asking the network.
    pub fn known_nodes(&self) -> Vec<Arc<Connector>> {
        match self {
            Topology::Single(c) => vec![c.clone()],
            Topology::Cluster(c) => c.known_nodes(),
            Topology::Sentinel(s) => s.known_master().into_iter().collect(),
        }
    }

    /// The addresses of [`Topology::known_nodes`] in memory, to compare with: no
    /// reference is taken (a thread that must not drop the last one asks this).
    pub fn known_node_ids(&self) -> Vec<usize> {
        match self {
            Topology::Single(c) => vec![Arc::as_ptr(c) as usize],
            Topology::Cluster(c) => c.known_node_ids(),
            Topology::Sentinel(s) => s.known_master_id().into_iter().collect(),
        }
    }

    /// Every master: the servers that `SCAN` of the whole keyspace must visit.
    pub fn masters(&self) -> CacheResult<Vec<Arc<Connector>>> {
        match self {
            Topology::Single(c) => Ok(vec![c.clone()]),
            Topology::Cluster(c) => c.masters(),
            Topology::Sentinel(s) => Ok(vec![s.master()?]),
        }
    }

    /// The keys of `keys` grouped by the server that holds them.
    pub fn group(&self, keys: &[String]) -> CacheResult<Vec<(Arc<Connector>, Vec<String>)>> {
        match self {
            Topology::Cluster(c) => c.group(keys),
            _ => Ok(vec![(self.masters()?.remove(0), keys.to_vec())]),
        }
    }

    /// The lease key of `key`: `lock:{key}` as cachu 0.2.x takes it, and on a cluster
    /// one in the key's slot ([`cluster_lock_key`]).
    pub fn lock_key(&self, key: &str) -> String {
        match self {
            Topology::Cluster(_) => cluster_lock_key(key),
            _ => lock_key(key),
        }
    }

    /// The server that `key` lives on as far as this process knows, without asking
    /// the network (`None`: ask with [`Topology::resolve`] first).
    pub fn node_of(&self, key: &str) -> Option<Arc<Connector>> {
        match self {
            Topology::Single(c) => Some(c.clone()),
            Topology::Cluster(c) => c.node_of(key),
            Topology::Sentinel(s) => s.known_master(),
        }
    }

    /// Finds the servers again (the slot map, Sentinel's master) unless that was done
    /// a moment ago. Blocking: called without the GIL.
    pub fn resolve(&self) -> CacheResult<()> {
        match self {
            Topology::Single(_) => Ok(()),
            Topology::Cluster(c) => c.refresh(),
            Topology::Sentinel(s) => s.resolve(false).map(drop),
        }
    }

    /// A cluster said that `slot` is served by `address` now (`MOVED`): the server
    /// of that address, noted without asking the network.
    pub fn moved_here(&self, slot: u16, address: &str) -> CacheResult<Arc<Connector>> {
        match self {
            Topology::Cluster(c) => c.patch(slot, address),
            _ => Err(CacheError::Backend(format!(
                "Redis at {} redirected a request ({slot} {address}): it is a cluster node, whose URL is a redis+cluster:// one",
                self.shown()
            ))),
        }
    }

    /// The server of a data node's `address` (`host:port`), as this URL reaches it.
    pub fn node_at(&self, address: &str) -> CacheResult<Arc<Connector>> {
        match self {
            Topology::Cluster(c) => connector(&c.layout.node_url(address)),
            Topology::Sentinel(s) => connector(&s.layout.node_url(address)),
            Topology::Single(c) => Ok(c.clone()),
        }
    }
}

/// Whether a single server's reply says that it is a cluster node: a redirection, or
/// a refusal of keys of several slots.
fn is_cluster_reply(e: &redis::RedisError) -> bool {
    e.redirect_node().is_some()
        || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::CrossSlot)
}
