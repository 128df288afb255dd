//! The near cache's coherence: a [`Watch`] per Redis URL keeps one tracking connection
//! per master (RESP3, `CLIENT TRACKING ON BCAST` on the prefixes of the near regions'
//! keys), driven by a thread of its own, and removes from the near tiers every key that
//! any client changes, deletes or lets expire.
//!
//! What is served from a near tier is only what the watch vouches for:
//! - nothing at all while a tracking connection is missing (not made yet, dropped, its
//!   server down, a failover changed the masters): the tiers are flushed when that
//!   happens, and stay bypassed until every master is tracked again;
//! - a value read from Redis is kept only if no invalidation of its key (nor a flush)
//!   came between the read's start and the fill ([`Ticket`]): an invalidation that
//!   overtakes the reply leaves no stale copy behind;
//! - a near entry expires with the Redis entry (its `PTTL` is read with the value).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};

use super::connector::Connector;
use super::endpoint::Endpoint;
use super::topology::{topology, Topology};
use crate::backend::memory::MemoryStore;
use crate::codec::Stored;
use crate::errors::CacheResult;

/// Invalidation counters, one per bucket of key hashes.
const BUCKETS: usize = 1024;
/// How often the watch checks its connections, and pings them every few checks.
const CHECK_EVERY: Duration = Duration::from_millis(100);
const PING_EVERY_CHECKS: u32 = 5;
/// The longest pause between two tries to make the tracking connections.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// The name of a tracking connection on the server (`CLIENT LIST`).
pub const CLIENT_NAME: &str = "cachu-near";

/// What a read from Redis must show to fill a near tier: no flush and no invalidation
/// of its key since it was taken.
#[derive(Clone, Copy, Debug)]
pub struct Ticket {
    generation: u64,
    bucket: usize,
    epoch: u64,
}

/// The coherence of the near tiers in front of one Redis URL.
pub struct Watch {
    /// The URL of the servers (looked up when needed: a watch owns no server, so that
    /// the tracking thread never drops the last reference to one).
    url: String,
    /// Whether every master is tracked now.
    ready: AtomicBool,
    /// Forgotten ([`forget_watches`]), or retired once no tier is left: its thread
    /// ends, its tiers never serve again (the regions that hold it are forgotten too;
    /// new ones have a new watch).
    stopped: AtomicBool,
    /// Bumped by every flush.
    generation: AtomicU64,
    epochs: Box<[AtomicU64]>,
    /// The near tiers of this URL, and the key prefixes they track (locked after
    /// [`WATCHES`], where both are).
    tiers: Mutex<Vec<(String, Weak<MemoryStore<Stored>>)>>,
    /// The process whose thread tracks (a child of `fork()` starts its own).
    pid: AtomicU32,
    /// Invalidations received, flushes done (for `stats()`).
    pub invalidations: AtomicU64,
    pub flushes: AtomicU64,
    /// Why the tracking connections could not be made last time (`None` once they
    /// are): a server without RESP3 or `CLIENT TRACKING` (before Redis 6) says so here.
    pub trouble: Mutex<Option<String>>,
}

static WATCHES: LazyLock<Mutex<HashMap<String, Arc<Watch>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The watch of `url` with `tier` (whose keys start with `prefix`) among its tiers;
/// the watch is made on first use, and its tracking thread started in this process.
pub fn enlist(
    url: &str,
    prefix: String,
    tier: &Arc<MemoryStore<Stored>>,
) -> CacheResult<Arc<Watch>> {
    loop {
        let watch = watch(url)?;
        {
            // Under the map's lock: a watch found there is not being retired.
            let all = WATCHES.lock();
            if !all.get(url).is_some_and(|w| Arc::ptr_eq(w, &watch)) {
                continue; // retired or forgotten meanwhile
            }
            watch.add_tier(prefix, tier);
        }
        watch.ensure_tracking();
        return Ok(watch);
    }
}

/// The watch of `url`, made on first use.
fn watch(url: &str) -> CacheResult<Arc<Watch>> {
    if let Some(w) = WATCHES.lock().get(url) {
        return Ok(w.clone());
    }
    topology(url)?; // the URL is checked here
    let made = Arc::new(Watch {
        url: url.to_owned(),
        ready: AtomicBool::new(false),
        stopped: AtomicBool::new(false),
        generation: AtomicU64::new(0),
        epochs: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        tiers: Mutex::new(Vec::new()),
        pid: AtomicU32::new(0),
        invalidations: AtomicU64::new(0),
        flushes: AtomicU64::new(0),
        trouble: Mutex::new(None),
    });
    Ok(WATCHES.lock().entry(url.to_owned()).or_insert(made).clone())
}

/// Forgets every watch; their threads end at their next check.
pub fn forget_watches() {
    let all: Vec<Arc<Watch>> = WATCHES.lock().drain().map(|(_, w)| w).collect();
    for w in &all {
        w.stopped.store(true, Ordering::SeqCst);
        w.lost();
    }
}

fn bucket_of(key: &str) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % BUCKETS
}

/// The prefixes of the `tiers` still in use, those no longer in use dropped.
fn live_prefixes(tiers: &mut Vec<(String, Weak<MemoryStore<Stored>>)>) -> Vec<String> {
    tiers.retain(|(_, t)| t.strong_count() > 0);
    minimal(tiers.iter().map(|(p, _)| p.clone()).collect())
}

/// `prefixes` without those that another one covers (BCAST refuses overlapping ones).
fn minimal(mut prefixes: Vec<String>) -> Vec<String> {
    prefixes.sort();
    prefixes.dedup();
    let mut out: Vec<String> = Vec::new();
    for p in prefixes {
        if !out.iter().any(|kept| p.starts_with(kept.as_str())) {
            out.push(p);
        }
    }
    out
}

impl Watch {
    /// Adds a near tier whose keys start with `prefix`. A prefix no tracked one covers
    /// stops the serving until the tracking thread has made its connections again
    /// with it, so that no key goes untracked while it is served.
    fn add_tier(&self, prefix: String, tier: &Arc<MemoryStore<Stored>>) {
        let mut tiers = self.tiers.lock();
        tiers.retain(|(_, t)| t.strong_count() > 0);
        let covered = tiers.iter().any(|(p, _)| prefix.starts_with(p.as_str()));
        tiers.push((prefix, Arc::downgrade(tier)));
        if !covered {
            self.ready.store(false, Ordering::SeqCst);
            self.bump();
        }
    }

    /// Retires this watch if it has no tier left (their regions all forgotten, or
    /// their package moved to another URL or turned the near cache off): it leaves
    /// the map, and its thread ends and closes its connections.
    fn retire_if_unused(self: &Arc<Self>) -> bool {
        let mut all = WATCHES.lock();
        if self.tiers.lock().iter().any(|(_, t)| t.strong_count() > 0) {
            return false;
        }
        if all.get(&self.url).is_some_and(|w| Arc::ptr_eq(w, self)) {
            all.remove(&self.url);
        }
        drop(all);
        self.stopped.store(true, Ordering::SeqCst);
        self.lost();
        true
    }

    /// Whether the tracking connections made for `prefixes` track what the tiers
    /// need now (taken under the lock that [`Watch::add_tier`] takes).
    fn tracks(&self, prefixes: &[String]) -> bool {
        self.prefixes() == prefixes
    }

    /// Starts the tracking thread in this process if none runs (first use, or a child
    /// of `fork()`, which has the parent's copies but not its thread: flushed).
    fn ensure_tracking(self: &Arc<Self>) {
        if self.stopped.load(Ordering::Acquire) {
            return;
        }
        let me = crate::process::pid();
        let was = self.pid.load(Ordering::Acquire);
        if was == me
            || self
                .pid
                .compare_exchange(was, me, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        self.flush();
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("cachu-near".into())
            .spawn(move || track(&weak, me));
        if spawned.is_err() {
            self.pid.store(0, Ordering::Release); // the next call tries again
        }
    }

    /// A ticket for a read of `key` from Redis, if the tier may be filled at all.
    pub fn ticket(self: &Arc<Self>, key: &str) -> Option<Ticket> {
        self.ensure_tracking();
        let generation = self.generation.load(Ordering::SeqCst);
        if !self.ready.load(Ordering::SeqCst) {
            return None;
        }
        let bucket = bucket_of(key);
        Some(Ticket {
            generation,
            bucket,
            epoch: self.epochs[bucket].load(Ordering::SeqCst),
        })
    }

    /// Whether a read under `ticket` may still fill the tier.
    pub fn admits(&self, ticket: &Ticket) -> bool {
        self.ready.load(Ordering::SeqCst)
            && self.generation.load(Ordering::SeqCst) == ticket.generation
            && self.epochs[ticket.bucket].load(Ordering::SeqCst) == ticket.epoch
    }

    /// Whether the tiers may serve now.
    pub fn serves(self: &Arc<Self>) -> bool {
        if self.pid.load(Ordering::Relaxed) != crate::process::pid() {
            self.ensure_tracking();
            return false;
        }
        self.ready.load(Ordering::Acquire)
    }

    /// `key` changed (here or anywhere): reads under older tickets fill nothing, and
    /// the near copies go.
    pub fn invalidate(&self, key: &str) {
        self.epochs[bucket_of(key)].fetch_add(1, Ordering::SeqCst);
        for t in self.live_tiers() {
            drop(t.remove(key));
        }
    }

    /// The near tiers still in use, taken out of the lock (removing values drops
    /// them, which is not done under it).
    fn live_tiers(&self) -> Vec<Arc<MemoryStore<Stored>>> {
        self.tiers
            .lock()
            .iter()
            .filter_map(|(_, t)| t.upgrade())
            .collect()
    }

    /// Reads under older tickets fill nothing.
    pub fn bump(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Everything goes: reads under older tickets fill nothing.
    pub fn flush(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        for t in self.live_tiers() {
            drop(t.remove_matching(|_| true));
        }
    }

    /// The tracking connections are down: nothing is served until they are back.
    fn lost(&self) {
        self.ready.store(false, Ordering::SeqCst);
        self.flush();
    }

    /// The prefixes of the tiers still in use.
    fn prefixes(&self) -> Vec<String> {
        live_prefixes(&mut self.tiers.lock())
    }

    fn on_push(&self, push: PushInfo, broken: &AtomicBool) {
        match push.kind {
            PushKind::Invalidate => match push.data.first() {
                Some(Value::Array(keys)) => {
                    for key in keys {
                        if let Value::BulkString(k) = key {
                            self.invalidations.fetch_add(1, Ordering::Relaxed);
                            self.invalidate(&String::from_utf8_lossy(k));
                        }
                    }
                }
                // `FLUSHALL` / `FLUSHDB`: every key.
                _ => self.flush(),
            },
            PushKind::Disconnection => {
                broken.store(true, Ordering::SeqCst);
                self.lost();
            }
            _ => {}
        }
    }
}

/// The tracking thread of `weak` in process `pid`: makes a tracking connection per
/// master, then checks them until one drops, the masters or the prefixes change, or
/// the watch is forgotten; the tiers serve only while all are up.
///
/// The runtime runs (and the connections read their invalidations) while this thread
/// waits; everything that may drop the last reference to a watch or a server happens
/// between two runs, as a runtime cannot end inside another one.
fn track(weak: &Weak<Watch>, pid: u32) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(watch) = weak.upgrade() else { return };
        if watch.pid.load(Ordering::Acquire) != pid
            || watch.stopped.load(Ordering::Acquire)
            || watch.retire_if_unused()
        {
            return;
        }
        let prefixes = watch.prefixes();
        let masters = topology(&watch.url).and_then(|servers| servers.masters());
        drop(watch);
        let mut trouble = None;
        let masters: Vec<(Weak<Connector>, Endpoint)> = match masters {
            Ok(all) => all
                .iter()
                .map(|c| (Arc::downgrade(c), c.endpoint.clone()))
                .collect(),
            Err(e) => {
                trouble = Some(e.to_string());
                Vec::new()
            }
        };
        let broken = Arc::new(AtomicBool::new(false));
        let mut tracked: Vec<Tracked> = Vec::new();
        if !masters.is_empty() && !prefixes.is_empty() {
            runtime.block_on(async {
                for (node, endpoint) in &masters {
                    match tracking_connection(weak, endpoint, &prefixes, &broken).await {
                        Ok(con) => tracked.push((node.clone(), con)),
                        Err(e) => {
                            trouble = Some(format!("Redis at {}: {e}", endpoint.shown));
                            break;
                        }
                    }
                }
            });
            if tracked.len() != masters.len() {
                tracked.clear();
            }
        }
        if let Some(watch) = weak.upgrade() {
            *watch.trouble.lock() = trouble;
        }
        if tracked.is_empty() || broken.load(Ordering::SeqCst) {
            drop(tracked);
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        backoff = Duration::from_millis(50);
        let Some(watch) = weak.upgrade() else { return };
        {
            // Ready only if no tier came meanwhile with a prefix these do not track.
            let mut tiers = watch.tiers.lock();
            if live_prefixes(&mut tiers) == prefixes {
                watch.ready.store(true, Ordering::SeqCst);
            }
        }
        if watch.stopped.load(Ordering::SeqCst) {
            watch.lost(); // forgotten while connecting
            return;
        }
        drop(watch);
        let mut checks = 0u32;
        loop {
            checks += 1;
            let ping = checks % PING_EVERY_CHECKS == 0;
            let answered = runtime.block_on(async {
                tokio::time::sleep(CHECK_EVERY).await;
                !ping || ping_all(&mut tracked).await
            });
            let Some(watch) = weak.upgrade() else { return };
            let changed = !watch.tracks(&prefixes)
                || topology(&watch.url).map_or(true, |t| masters_changed(&t, &tracked));
            if !answered
                || changed
                || watch.stopped.load(Ordering::Acquire)
                || broken.load(Ordering::SeqCst)
                || watch.pid.load(Ordering::Acquire) != pid
            {
                watch.lost();
                break;
            }
        }
    }
}

/// Whether the masters known now differ from those tracked.
fn masters_changed(servers: &Topology, tracked: &[Tracked]) -> bool {
    let known = servers.known_node_ids();
    known.len() != tracked.len()
        || !known
            .iter()
            .all(|k| tracked.iter().any(|(t, _)| t.as_ptr() as usize == *k))
}

/// A tracked master and its tracking connection.
type Tracked = (Weak<Connector>, MultiplexedConnection);

async fn ping_all(tracked: &mut [Tracked]) -> bool {
    for (_, con) in tracked.iter_mut() {
        if redis::cmd("PING").query_async::<()>(con).await.is_err() {
            return false;
        }
    }
    true
}

/// A RESP3 connection to `node` that receives the invalidations of `prefixes`.
async fn tracking_connection(
    weak: &Weak<Watch>,
    endpoint: &Endpoint,
    prefixes: &[String],
    broken: &Arc<AtomicBool>,
) -> Result<MultiplexedConnection, String> {
    let client = endpoint.resp3_client().map_err(|e| e.to_string())?;
    let (on_push, flag) = (weak.clone(), broken.clone());
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(endpoint.connect_timeout))
        .set_response_timeout(Some(endpoint.command_timeout))
        .set_push_sender(move |push: PushInfo| {
            if let Some(w) = on_push.upgrade() {
                w.on_push(push, &flag);
            }
            Ok::<(), ()>(())
        });
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| e.to_string())?;
    redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(CLIENT_NAME)
        .query_async::<()>(&mut con)
        .await
        .map_err(|e| e.to_string())?;
    let mut on = redis::cmd("CLIENT");
    on.arg("TRACKING").arg("ON").arg("BCAST");
    for p in prefixes {
        on.arg("PREFIX").arg(p);
    }
    on.query_async::<()>(&mut con)
        .await
        .map_err(|e| e.to_string())?;
    Ok(con)
}

#[cfg(test)]
mod tests {
    use super::minimal;

    #[test]
    fn overlapping_prefixes_are_folded() {
        let got = minimal(vec![
            "5m:v1:".into(),
            "5m:".into(),
            "1h:a".into(),
            "1h:ab".into(),
            "5m:".into(),
        ]);
        assert_eq!(got, vec!["1h:a".to_owned(), "5m:".to_owned()]);
    }
}
