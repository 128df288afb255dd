//! The in-process store: a sharded map from key to value with a per-entry deadline,
//! optionally bounded by a [`Budget`] of entries shared by every store of a package.
//!
//! A bounded package chooses what to keep with W-TinyLFU (`policy.rs`), shared by its
//! stores (its TTL regions): every insert evicts what the policy chooses, in O(1),
//! expired entries first; a hit is recorded in a lock-free buffer. Each entry carries
//! its insertion number, so that the store removes exactly the entry chosen. Expired
//! entries are swept by the insert that finds its shard twice as full as after the
//! last sweep: a sweep's scan is paid for by as many inserts, and a shard holds at most
//! about as many expired entries as live ones.
//!
//! It is generic over the value so that it is tested without Python. It never runs
//! foreign code under a shard lock: values that leave the map (replaced, removed,
//! expired) are handed back to the caller, to be dropped after the lock is released,
//! because dropping a Python object can run arbitrary `__del__` code.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};

mod history;
pub mod policy;
mod table;
mod thin;

use crate::key::{hash_of, Keyed};
use crate::process::now_ns;
pub use crate::process::unix_now;
use crate::stamp::{Fresh, Stamp};
use policy::{TinyLfu, Victim, NIL};
use table::{Slot, Table};

const SHARDS: usize = 16;
/// The most entries a package keeps in memory, how many it keeps now, the stores that
/// share it (its TTL regions, by id) and the policy that chooses among their entries.
pub struct Budget {
    max: AtomicUsize,
    /// `memory_maxbytes` (`usize::MAX`: none).
    max_bytes: AtomicUsize,
    used: AtomicUsize,
    /// `memory_sweep_interval` in nanoseconds (`u64::MAX`: sweeps only as stores grow).
    sweep_every_ns: AtomicU64,
    /// A store's id is its place here.
    stores: Mutex<Vec<Weak<dyn Evict>>>,
    policy: TinyLfu,
}

/// A store that gives up the entries its package's policy chooses.
pub trait Evict: Send + Sync {
    /// Removes the entries chosen (those still there), dropping them after its locks
    /// are released.
    fn evict(&self, victims: &[Victim]);
    /// Hands every entry to the policy, which starts to count them (a package bounded
    /// anew); returns the entries it chose to evict meanwhile, of any store.
    fn adopt(&self, now: u64) -> Vec<Victim>;
}

impl<V: Send + Sync> Evict for MemoryStore<V> {
    fn evict(&self, victims: &[Victim]) {
        let mut out = Vec::new();
        self.remove_chosen(victims, &mut out);
        drop(out);
    }

    fn adopt(&self, now: u64) -> Vec<Victim> {
        let mut victims = Vec::new();
        for shard in &*self.shards {
            let mut map = shard.map.write();
            let mut entries: Vec<_> = map
                .entries
                .iter_mut()
                .map(|e| {
                    // Stored while unbounded: weighed as nothing (entries are weighed only
                    // while a bound of bytes is set).
                    let (hash, s) = (e.hash, &mut e.slot);
                    (s.node.get_mut(), hash, u64::from(s.seq), s.expires_ns, 0)
                })
                .collect();
            self.budget
                .policy
                .adopt(self.id, &mut entries, now, &mut victims);
        }
        victims
    }
}

impl Budget {
    /// A budget of `max` entries (`None`: unbounded).
    pub fn new(max: Option<usize>) -> Self {
        Budget {
            max: AtomicUsize::new(max.unwrap_or(usize::MAX)),
            max_bytes: AtomicUsize::new(usize::MAX),
            used: AtomicUsize::new(0),
            sweep_every_ns: AtomicU64::new(u64::MAX),
            stores: Mutex::new(Vec::new()),
            policy: TinyLfu::new(max.unwrap_or(16)),
        }
    }

    /// Changes the bound of entries; a lower one is met at once.
    pub fn set_max(&self, max: Option<usize>) {
        let bytes = self.max_bytes.load(Ordering::Relaxed);
        self.set_bounds(max, Some(bytes).filter(|b| *b != usize::MAX));
    }

    /// Changes the bound of bytes (`memory_maxbytes`); a lower one is met at once.
    pub fn set_max_bytes(&self, max_bytes: Option<usize>) {
        let max = self.max.load(Ordering::Relaxed);
        self.set_bounds(Some(max).filter(|m| *m != usize::MAX), max_bytes);
    }

    /// Changes both bounds. A package that was unbounded hands its entries to the
    /// policy first; one that is unbounded now forgets them.
    fn set_bounds(&self, max: Option<usize>, max_bytes: Option<usize>) {
        let was_bounded = self.is_bounded();
        self.max.store(max.unwrap_or(usize::MAX), Ordering::Relaxed);
        self.max_bytes
            .store(max_bytes.unwrap_or(usize::MAX), Ordering::Relaxed);
        if !self.is_bounded() {
            self.policy.clear();
            return;
        }
        let now = now_ns();
        let (max, bytes) = (max.unwrap_or(usize::MAX), max_bytes.unwrap_or(usize::MAX));
        let mut victims = self.policy.set_bounds(max, bytes, now);
        if !was_bounded {
            for store in self.live_stores() {
                victims.extend(store.adopt(now));
            }
        }
        self.dispatch(&victims, None);
    }

    /// Whether entries are weighed (a bound of bytes is set).
    pub fn weighs(&self) -> bool {
        self.max_bytes.load(Ordering::Relaxed) != usize::MAX
    }

    /// The bound of bytes, if any, and the bytes held.
    pub fn bytes(&self) -> (Option<usize>, usize) {
        let max = self.max_bytes.load(Ordering::Relaxed);
        (Some(max).filter(|m| *m != usize::MAX), self.policy.weight())
    }

    fn live_stores(&self) -> Vec<Arc<dyn Evict>> {
        self.stores
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Has the stores remove the entries the policy chose; those of `here` (the store
    /// asking, and its id) are left to it.
    fn dispatch(&self, victims: &[Victim], here: Option<u32>) {
        if victims.iter().all(|v| Some(v.store) == here) {
            return;
        }
        let stores: Vec<Option<Arc<dyn Evict>>> =
            self.stores.lock().iter().map(Weak::upgrade).collect();
        for (id, store) in stores.iter().enumerate() {
            let id = id as u32;
            if Some(id) == here {
                continue;
            }
            let Some(store) = store else { continue };
            let mine: Vec<Victim> = victims.iter().filter(|v| v.store == id).copied().collect();
            if !mine.is_empty() {
                store.evict(&mine);
            }
        }
    }

    /// Sweeps expired entries at least every `seconds` (on the next insert after
    /// that long); infinity leaves sweeps to the stores' growth alone.
    pub fn set_sweep_interval(&self, seconds: f64) {
        let ns = if seconds.is_finite() {
            (seconds.max(0.0) * 1e9) as u64
        } else {
            u64::MAX
        };
        self.sweep_every_ns.store(ns, Ordering::Relaxed);
    }

    /// Counts `store` among the stores that give up entries for this budget; returns
    /// its id.
    pub fn enlist(&self, store: Weak<dyn Evict>) -> u32 {
        let mut stores = self.stores.lock();
        stores.push(store);
        (stores.len() - 1) as u32
    }

    /// When the stores are over the bound together, the policy's choices leave until
    /// it is met. No lock of the budget is held while they do.
    pub fn enforce(&self) {
        if !self.over() {
            return;
        }
        let max = self.max.load(Ordering::Relaxed);
        let bytes = self.max_bytes.load(Ordering::Relaxed);
        let victims = self.policy.set_bounds(max, bytes, now_ns());
        self.dispatch(&victims, None);
    }

    fn is_bounded(&self) -> bool {
        self.max.load(Ordering::Relaxed) != usize::MAX
            || self.max_bytes.load(Ordering::Relaxed) != usize::MAX
    }

    fn over(&self) -> bool {
        self.used.load(Ordering::Relaxed) > self.max.load(Ordering::Relaxed)
    }

    fn freed(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// The bound, if any.
    pub fn max(&self) -> Option<usize> {
        Some(self.max.load(Ordering::Relaxed)).filter(|m| *m != usize::MAX)
    }

    /// Entries the policy tracks (all of the stores', when bounded).
    pub fn policy_len(&self) -> usize {
        self.policy.len()
    }

    /// Entries held now by the stores of this budget.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

struct Shard<V> {
    map: RwLock<Table<V>>,
}

/// A concurrent map with a time to live on every entry.
pub struct MemoryStore<V> {
    shards: Box<[Shard<V>]>,
    budget: Arc<Budget>,
    /// Advanced by every insert: the entries' insertion numbers.
    clock: AtomicU32,
    /// Its id among its budget's stores.
    id: u32,
    /// When the last sweep by time ran (`Budget::set_sweep_interval`).
    swept_ns: AtomicU64,
    /// Entries evicted for the budget, and expired entries swept, so far.
    evicted: AtomicU64,
    expired_swept: AtomicU64,
}

impl<V> Drop for MemoryStore<V> {
    fn drop(&mut self) {
        // The entries leave with the store: the package's budget no longer counts them.
        self.budget.freed(self.len());
        if self.budget.is_bounded() {
            let gone = self.names(Slot::name);
            self.budget.policy.forget(self.id, &gone);
        }
    }
}

impl<V> Default for MemoryStore<V> {
    fn default() -> Self {
        Self::new(Arc::new(Budget::new(None)))
    }
}

/// The shard of a hash: bits the table does not use for buckets (low bits) nor for
/// its tags (the top seven).
fn shard_of(hash: u64) -> usize {
    ((hash >> 32) as usize) % SHARDS
}

impl<V: Send + Sync + 'static> MemoryStore<V> {
    /// An empty store, counted against `budget` and enlisted among its stores (whose
    /// entries its policy chooses from).
    pub fn enlisted(budget: Arc<Budget>) -> Arc<Self> {
        Arc::new_cyclic(|weak: &Weak<Self>| {
            let weak: Weak<dyn Evict> = weak.clone();
            let id = budget.enlist(weak);
            MemoryStore::with_id(budget, id)
        })
    }
}

impl<V> MemoryStore<V> {
    /// An empty store, counted against `budget`, the only store of its policy's (see
    /// [`MemoryStore::enlisted`] for a package's stores).
    pub fn new(budget: Arc<Budget>) -> Self {
        Self::with_id(budget, 0)
    }

    fn with_id(budget: Arc<Budget>, id: u32) -> Self {
        let shards = (0..SHARDS)
            .map(|_| Shard {
                map: RwLock::new(Table::new()),
            })
            .collect();
        MemoryStore {
            shards,
            budget,
            clock: AtomicU32::new(0),
            id,
            swept_ns: AtomicU64::new(now_ns()),
            evicted: AtomicU64::new(0),
            expired_swept: AtomicU64::new(0),
        }
    }

    /// What `f` makes of every entry, for the policy.
    fn names<R>(&self, f: impl Fn(&Slot<V>) -> R) -> Vec<R> {
        self.shards
            .iter()
            .flat_map(|shard| {
                shard
                    .map
                    .read()
                    .iter()
                    .map(|(_, s)| f(s))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Tells the policy of entries `(node, seq)` the store removed (a bounded
    /// package's only).
    fn forget(&self, gone: &[(u32, u64)]) {
        if self.budget.is_bounded() {
            self.budget.policy.forget(self.id, gone);
        }
    }

    /// Removes the entries of this store the policy chose (those still there), their
    /// values into `out`; the others' stores remove theirs.
    fn remove_chosen(&self, victims: &[Victim], out: &mut Vec<V>) {
        let before = out.len();
        for v in victims.iter().filter(|v| v.store == self.id) {
            let removed = self
                .shard(v.hash)
                .map
                .write()
                .remove_exact(v.hash, v.node, v.seq);
            if let Some(slot) = removed {
                out.push(slot.value);
            }
        }
        let n = out.len() - before;
        self.budget.freed(n);
        self.evicted.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn shard(&self, hash: u64) -> &Shard<V> {
        &self.shards[shard_of(hash)]
    }

    /// Applies `f` to a live entry's value and freshness, under the shard's read lock:
    /// `f` must not call into Python beyond reference counting.
    pub fn get_with<K, R>(&self, key: &K, f: impl FnOnce(&V, Stamp) -> R) -> Option<R>
    where
        K: Keyed + ?Sized,
    {
        let now = now_ns();
        let hash = key.hash();
        let map = self.shard(hash).map.read();
        let slot = map.get(hash, key.text()).filter(|slot| slot.is_live(now))?;
        if self.budget.is_bounded() {
            let node = slot.node.load(Ordering::Relaxed);
            self.budget.policy.record_hit(node, hash);
        }
        Some(f(
            &slot.value,
            Stamp {
                created_at: slot.created_at,
                fresh_for: f64::from(slot.fresh_for),
                took: f64::from(slot.took),
            },
        ))
    }

    /// Stores `value` for `ttl` seconds (created now). Returns the values that left the
    /// map: the one replaced, and any expired ones swept on the way.
    #[must_use = "drop the returned values after the call, outside any lock"]
    pub fn insert(&self, key: &str, value: V, ttl: f64) -> Vec<V> {
        self.insert_at(key, value, unix_now(), ttl, None, key.len())
    }

    /// Stores `value`, created at `created_at` (Unix seconds), for `ttl` seconds, with
    /// its freshness if it has its own, weighing `weight` bytes (for `memory_maxbytes`).
    #[must_use = "drop the returned values after the call, outside any lock"]
    #[allow(clippy::cast_possible_truncation)] // seconds kept to f32's precision
    pub fn insert_at<K: Keyed + ?Sized>(
        &self,
        key: &K,
        value: V,
        created_at: f64,
        ttl: f64,
        fresh: Option<Fresh>,
        weight: usize,
    ) -> Vec<V> {
        let now = now_ns();
        let ttl_ns = if ttl.is_finite() {
            (ttl.max(0.0) * 1e9) as u64
        } else {
            u64::MAX
        };
        let (fresh_for, took) = fresh.map_or((f32::NAN, f32::NAN), |f| {
            (f.fresh_for as f32, f.took as f32)
        });
        let seq = self.clock.fetch_add(1, Ordering::Relaxed);
        let expires_ns = now.saturating_add(ttl_ns);
        let slot = Slot {
            value,
            created_at,
            fresh_for,
            took,
            expires_ns,
            seq,
            node: AtomicU32::new(NIL),
        };
        let hash = key.hash();
        let shard = self.shard(hash);
        let mut out = Vec::new();
        let mut gone = Vec::new();
        let mut map = shard.map.write();
        let replaced = match map.insert(hash, key.text(), slot) {
            Ok(Some(old)) => {
                let name = old.name();
                out.push(old.value);
                Some(name)
            }
            Ok(None) => {
                self.budget.used.fetch_add(1, Ordering::Relaxed);
                None
            }
            // A key of 4 GiB or more is not kept: later calls miss.
            Err(slot) => {
                out.push(slot.value);
                return out;
            }
        };
        let before = out.len();
        if map.wants_sweep(now) {
            map.sweep(now, &mut out, &mut gone);
        }
        self.budget.freed(out.len() - before);
        drop(map);
        if self.budget.is_bounded() {
            let policy = &self.budget.policy;
            policy.forget(self.id, &gone);
            let seq = u64::from(seq);
            let (node, victims) =
                policy.inserted(self.id, hash, seq, expires_ns, weight, replaced, now);
            // The slot learns its node, unless it left meanwhile: then the policy
            // forgets it here (whoever removed it saw no node to forget).
            let placed = shard.map.read().get(hash, key.text()).map(|slot| {
                if u64::from(slot.seq) == seq {
                    slot.node.store(node, Ordering::Relaxed);
                }
                u64::from(slot.seq) == seq
            });
            if placed != Some(true) {
                policy.forget(self.id, &[(node, seq)]);
            }
            self.remove_chosen(&victims, &mut out);
            self.budget.dispatch(&victims, Some(self.id));
        }
        let every = self.budget.sweep_every_ns.load(Ordering::Relaxed);
        if every != u64::MAX {
            let last = self.swept_ns.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= every
                && self
                    .swept_ns
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                out.extend(self.sweep());
            }
        }
        out
    }

    /// Removes one entry, returning its value.
    #[must_use = "drop the returned value after the call, outside any lock"]
    pub fn remove(&self, key: &str) -> Option<V> {
        let hash = hash_of(key);
        let removed = self.shard(hash).map.write().remove(hash, key);
        self.budget.freed(usize::from(removed.is_some()));
        removed.map(|s| {
            self.forget(&[s.name()]);
            s.value
        })
    }

    /// Removes every entry whose key satisfies `pred`; returns the values and how many
    /// of them were live.
    #[must_use = "drop the returned values after the call, outside any lock"]
    pub fn remove_matching(&self, pred: impl Fn(&str) -> bool) -> (Vec<V>, usize) {
        let now = now_ns();
        let mut out = Vec::new();
        let mut gone = Vec::new();
        let mut live = 0;
        for shard in &*self.shards {
            shard.map.write().extract(
                |k, s| {
                    let doomed = pred(k);
                    live += usize::from(doomed && s.is_live(now));
                    doomed
                },
                &mut out,
                &mut gone,
            );
        }
        self.budget.freed(out.len());
        self.forget(&gone);
        (out, live)
    }

    /// Removes the entries of functions tagged `tag` (as keys carry it, normalized);
    /// returns their values and how many were live. Costs the tag's entries.
    #[must_use = "drop the returned values after the call, outside any lock"]
    pub fn remove_tag(&self, tag: &str) -> (Vec<V>, usize) {
        let now = now_ns();
        let mut out = Vec::new();
        let mut gone = Vec::new();
        let mut live = 0;
        for shard in &*self.shards {
            live += shard.map.write().extract_tag(tag, now, &mut out, &mut gone);
        }
        self.budget.freed(out.len());
        self.forget(&gone);
        (out, live)
    }

    /// The keys of live entries that satisfy `pred`.
    pub fn keys_matching(&self, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let now = now_ns();
        let mut out = Vec::new();
        for shard in &*self.shards {
            let map = shard.map.read();
            out.extend(
                map.iter()
                    .filter(|(k, s)| s.is_live(now) && pred(k))
                    .map(|(k, _)| k.to_string()),
            );
        }
        out
    }

    /// How many live entries satisfy `pred`.
    pub fn count_matching(&self, pred: impl Fn(&str) -> bool) -> usize {
        let now = now_ns();
        self.shards
            .iter()
            .map(|shard| {
                shard
                    .map
                    .read()
                    .iter()
                    .filter(|(k, s)| s.is_live(now) && pred(k))
                    .count()
            })
            .sum()
    }

    /// Removes every expired entry now.
    #[must_use = "drop the returned values after the call, outside any lock"]
    pub fn sweep(&self) -> Vec<V> {
        let now = now_ns();
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for shard in &*self.shards {
            shard.map.write().sweep(now, &mut out, &mut gone);
        }
        self.budget.freed(out.len());
        self.forget(&gone);
        self.expired_swept
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        out
    }

    /// Entries evicted for the budget, and expired entries swept by [`MemoryStore::sweep`],
    /// so far.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.evicted.load(Ordering::Relaxed),
            self.expired_swept.load(Ordering::Relaxed),
        )
    }

    /// The budget this store counts against.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Whether the package's budget is exceeded.
    pub fn over_budget(&self) -> bool {
        self.budget.over()
    }

    /// `(entries, bytes held by the store itself, the values)`: the bytes count the
    /// tables at their capacity and every key; the values are handed back (as `f`
    /// makes them, under the shard lock: no foreign code there) for the caller to size.
    pub fn footprint<R>(&self, f: impl Fn(&V) -> R) -> (usize, usize, Vec<R>) {
        let mut entries = 0;
        let mut bytes = std::mem::size_of::<Self>();
        let mut values = Vec::new();
        for shard in &*self.shards {
            let map = shard.map.read();
            entries += map.len();
            bytes += map.capacity() * (std::mem::size_of::<table::Held<V>>() + 1);
            for (k, slot) in map.iter() {
                bytes += k.len() + 4;
                values.push(f(&slot.value));
            }
        }
        (entries, bytes, values)
    }

    /// How many entries this store holds, expired ones included.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.map.read().len()).sum()
    }

    /// Whether the store holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests;
