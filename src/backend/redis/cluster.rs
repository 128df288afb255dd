//! A Redis Cluster: the slot map, learned from any node with `CLUSTER SLOTS` and
//! refreshed when a node redirects a request (`MOVED`) or fails; requests go to the
//! master of their key's slot, follow `MOVED` and `ASK`, and a master that failed and
//! was replaced by its replica is found again without a restart.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use redis::{ErrorKind, ServerErrorKind, Value};

use super::connector::{connector, Connector, Fault};
use super::layout::Layout;
use super::op::{send, Op};
use super::slots::{slot_of, SLOTS};
use crate::errors::{CacheError, CacheResult};

/// Redirections followed for one request before it fails.
const MAX_REDIRECTS: usize = 5;
/// The slot map is asked for at most this often (a redirection or a failure asks).
const REFRESH_EVERY: Duration = Duration::from_millis(200);
/// After a refresh that no node answered, the next waits this long (the breakers'
/// period).
const RETRY_FAILED_EVERY: Duration = Duration::from_secs(1);
/// A slot without a master (`CLUSTERDOWN`, `TRYAGAIN`) is asked again after this.
const RETRY_PAUSE: Duration = Duration::from_millis(25);
const UNOWNED: u16 = u16::MAX;

/// Which node serves each slot.
struct SlotMap {
    /// Per slot, an index into `nodes` (`UNOWNED`: no master known).
    owners: Vec<u16>,
    /// The masters, each with its `host:port`.
    nodes: Vec<(String, Arc<Connector>)>,
}

impl SlotMap {
    fn empty() -> Self {
        SlotMap {
            owners: Vec::new(),
            nodes: Vec::new(),
        }
    }

    fn owner(&self, slot: u16) -> Option<&Arc<Connector>> {
        let i = *self.owners.get(usize::from(slot))?;
        self.nodes.get(usize::from(i)).map(|(_, c)| c)
    }
}

pub struct Cluster {
    pub(crate) layout: Layout,
    map: RwLock<Arc<SlotMap>>,
    /// When the map was last asked for, and why that failed if it did; held while
    /// it is asked for.
    asked: Mutex<(Option<Instant>, Option<String>)>,
}

impl Cluster {
    pub fn new(layout: Layout) -> Self {
        Cluster {
            layout,
            map: RwLock::new(Arc::new(SlotMap::empty())),
            asked: Mutex::new((None, None)),
        }
    }

    fn map(&self) -> CacheResult<Arc<SlotMap>> {
        let map = self.map.read().clone();
        if !map.owners.is_empty() {
            return Ok(map);
        }
        self.refresh()?;
        Ok(self.map.read().clone())
    }

    /// The master of `key`'s slot, if the map is known.
    pub fn node_of(&self, key: &str) -> Option<Arc<Connector>> {
        self.map.read().owner(slot_of(key.as_bytes())).cloned()
    }

    fn node(&self, key: Option<&str>) -> CacheResult<Arc<Connector>> {
        let map = self.map()?;
        let found = match key {
            Some(key) => map.owner(slot_of(key.as_bytes())),
            None => map.nodes.first().map(|(_, c)| c),
        };
        found.cloned().ok_or_else(|| {
            CacheError::Backend(format!(
                "Redis Cluster at {}: no master serves the slot of the key (the cluster is incomplete)",
                self.layout.shown
            ))
        })
    }

    /// Asks the nodes for the slot map: the known masters that are up first, then the
    /// seeds. Skipped if it was asked less than [`REFRESH_EVERY`] ago, or less than
    /// [`RETRY_FAILED_EVERY`] ago without an answer (then the failure stands while no
    /// map is known: callers do not each pay a timeout).
    pub fn refresh(&self) -> CacheResult<()> {
        let mut asked = self.asked.lock();
        let known = !self.map.read().owners.is_empty();
        let pause = if asked.1.is_some() {
            RETRY_FAILED_EVERY
        } else {
            REFRESH_EVERY
        };
        if asked.0.is_some_and(|at| at.elapsed() < pause) {
            // Asked a moment ago (perhaps by another thread): what it found stands.
            return match (&asked.1, known) {
                (Some(failure), false) => Err(CacheError::Backend(failure.clone())),
                _ => Ok(()),
            };
        }
        asked.0 = Some(Instant::now());
        let failed = self.ask_nodes();
        asked.1 = failed.as_ref().err().map(ToString::to_string);
        failed
    }

    /// One round of [`Cluster::refresh`]: the first node that answers makes the map.
    fn ask_nodes(&self) -> CacheResult<()> {
        let known = self.map.read().clone();
        let mut candidates: Vec<String> = known.nodes.iter().map(|(a, _)| a.clone()).collect();
        candidates.sort_by_key(|a| {
            known
                .nodes
                .iter()
                .find(|(b, _)| b == a)
                .is_some_and(|(_, c)| c.health.down.load(std::sync::atomic::Ordering::Relaxed))
        });
        for seed in self.layout.nodes() {
            if !candidates.contains(seed) {
                candidates.push(seed.clone());
            }
        }
        // One connect timeout in all: a cluster whose nodes do not answer costs a call
        // what one server that does not answer costs (then the breakers answer).
        let started = Instant::now();
        let mut last = None;
        for address in &candidates {
            let node = connector(&self.layout.node_url(address))?;
            if last.is_some() && started.elapsed() >= node.endpoint.connect_timeout {
                break;
            }
            let op = Op::new(redis::cmd("CLUSTER").arg("SLOTS").clone());
            match node.run(async |c| send(c, &op, false).await) {
                Ok(reply) => match self.read_slots(address, reply) {
                    Ok(map) => {
                        *self.map.write() = Arc::new(map);
                        return Ok(());
                    }
                    Err(e) => last = Some(e),
                },
                Err(e) => last = Some(e),
            }
        }
        Err(CacheError::Backend(format!(
            "Redis Cluster at {}: no node answered CLUSTER SLOTS (last: {})",
            self.layout.shown,
            last.map_or_else(|| "no node to ask".to_owned(), |e| e.to_string())
        )))
    }

    /// The map of a `CLUSTER SLOTS` reply of the node at `asked`.
    fn read_slots(&self, asked: &str, reply: Value) -> CacheResult<SlotMap> {
        let bad = || {
            CacheError::Backend(format!(
                "Redis Cluster at {}: unreadable CLUSTER SLOTS reply from {asked}",
                self.layout.shown
            ))
        };
        let Value::Array(ranges) = reply else {
            return Err(bad());
        };
        let asked_host = asked.rsplit_once(':').map_or(asked, |(h, _)| h);
        let mut map = SlotMap {
            owners: vec![UNOWNED; SLOTS],
            nodes: Vec::new(),
        };
        let mut index: HashMap<String, u16> = HashMap::new();
        for range in ranges {
            let Value::Array(fields) = range else {
                return Err(bad());
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return Err(bad());
            };
            let host = match master.first() {
                Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
                Some(Value::SimpleString(h)) => h.clone(),
                _ => return Err(bad()),
            };
            let Some(Value::Int(port)) = master.get(1) else {
                return Err(bad());
            };
            // An empty or unknown host is the host of the node that answered.
            let host = if host.is_empty() || host == "?" {
                asked_host.to_owned()
            } else if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]")
            } else {
                host
            };
            let address = format!("{host}:{port}");
            let i = if let Some(i) = index.get(&address) {
                *i
            } else {
                let i = map.nodes.len() as u16;
                map.nodes
                    .push((address.clone(), connector(&self.layout.node_url(&address))?));
                index.insert(address, i);
                i
            };
            let (start, end) = (*start as usize, *end as usize);
            if start > end || end >= SLOTS {
                return Err(bad());
            }
            map.owners[start..=end].fill(i);
        }
        if map.nodes.is_empty() {
            return Err(bad());
        }
        Ok(map)
    }

    /// `slot` is served by `address` now: the map says so at once, and is asked for
    /// again (other slots are likely moving too).
    pub fn moved(&self, slot: u16, address: &str) -> CacheResult<Arc<Connector>> {
        let _ = self.refresh();
        self.patch(slot, address)
    }

    /// The map says that `slot` is served by `address`, without asking the network.
    pub fn patch(&self, slot: u16, address: &str) -> CacheResult<Arc<Connector>> {
        let node = connector(&self.layout.node_url(address))?;
        let mut map = self.map.write();
        if map.owner(slot).is_some_and(|c| Arc::ptr_eq(c, &node)) {
            return Ok(node);
        }
        let mut patched = SlotMap {
            owners: map.owners.clone(),
            nodes: map.nodes.clone(),
        };
        if patched.owners.is_empty() {
            patched.owners = vec![UNOWNED; SLOTS];
        }
        let i = if let Some(i) = patched
            .nodes
            .iter()
            .position(|(_, c)| Arc::ptr_eq(c, &node))
        {
            i
        } else {
            patched.nodes.push((address.to_owned(), node.clone()));
            patched.nodes.len() - 1
        };
        patched.owners[usize::from(slot)] = i as u16;
        *map = Arc::new(patched);
        Ok(node)
    }

    /// Sends `op` to the master of `key`'s slot, following redirections.
    pub fn query(&self, key: Option<&str>, op: &Op) -> CacheResult<Value> {
        let mut asking: Option<Arc<Connector>> = None;
        let mut last = None;
        for _ in 0..MAX_REDIRECTS {
            let (node, ask) = match asking.take() {
                Some(node) => (node, true),
                None => (self.node(key)?, false),
            };
            match node.run_raw(async |c| send(c, op, ask).await) {
                Ok(v) => return Ok(v),
                Err(Fault::Reply(e)) => {
                    match (e.kind(), e.redirect_node()) {
                        (ErrorKind::Server(ServerErrorKind::Moved), Some((address, slot))) => {
                            self.moved(slot, address)?;
                        }
                        (ErrorKind::Server(ServerErrorKind::Ask), Some((address, _))) => {
                            asking = Some(connector(&self.layout.node_url(address))?);
                        }
                        (
                            ErrorKind::Server(
                                ServerErrorKind::TryAgain
                                | ServerErrorKind::ClusterDown
                                | ServerErrorKind::MasterDown,
                            ),
                            _,
                        ) => {
                            std::thread::sleep(RETRY_PAUSE);
                            let _ = self.refresh();
                        }
                        _ => return Err(Fault::Reply(e).into_error(&node.endpoint.shown)),
                    }
                    last = Some(node.endpoint.shown.clone());
                }
                Err(Fault::Down(e)) => {
                    // A master that is down may have been replaced by its replica.
                    let _ = self.refresh();
                    return Err(e);
                }
            }
        }
        Err(CacheError::Backend(format!(
            "Redis Cluster at {}: the request was redirected {MAX_REDIRECTS} times (last by {})",
            self.layout.shown,
            last.unwrap_or_default()
        )))
    }

    /// The masters that serve slots as far as the map knows, without asking.
    pub fn known_nodes(&self) -> Vec<Arc<Connector>> {
        Self::owners(&self.map.read()).cloned().collect()
    }

    /// The addresses in memory of [`Cluster::known_nodes`] (no reference is taken).
    pub fn known_node_ids(&self) -> Vec<usize> {
        Self::owners(&self.map.read())
            .map(|c| Arc::as_ptr(c) as usize)
            .collect()
    }

    /// The masters of `map` that serve slots.
    fn owners(map: &SlotMap) -> impl Iterator<Item = &Arc<Connector>> {
        map.nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| map.owners.contains(&(*i as u16)))
            .map(|(_, (_, c))| c)
    }

    /// The masters that serve slots.
    pub fn masters(&self) -> CacheResult<Vec<Arc<Connector>>> {
        let map = self.map()?;
        Ok(Self::owners(&map).cloned().collect())
    }

    /// `keys` by the master of their slot.
    pub fn group(&self, keys: &[String]) -> CacheResult<Vec<(Arc<Connector>, Vec<String>)>> {
        let map = self.map()?;
        let mut by_node: Vec<(Arc<Connector>, Vec<String>)> = Vec::new();
        for key in keys {
            let Some(node) = map.owner(slot_of(key.as_bytes())) else {
                continue;
            };
            match by_node.iter_mut().find(|(c, _)| Arc::ptr_eq(c, node)) {
                Some((_, group)) => group.push(key.clone()),
                None => by_node.push((node.clone(), vec![key.clone()])),
            }
        }
        Ok(by_node)
    }
}
