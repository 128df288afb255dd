//! The in-process store: a sharded map from key to value with a per-entry deadline,
//! optionally bounded by a [`Budget`] of entries shared by every store of a package.
//!
//! Bounded stores evict their least recently used entries (expired ones first), a
//! batch of 1/32 of the store at a time, so that the scan that finds them is paid once
//! per batch. Expired entries are swept by the insert that finds its shard twice as
//! full as after the last sweep: a sweep's scan is paid for by as many inserts, and a
//! shard holds at most about as many expired entries as live ones. Recency is
//! a logical clock that every insert advances; a hit stamps its entry with the clock's
//! current value (a plain load and store, no read-modify-write on the hit path).
//!
//! It is generic over the value so that it is tested without Python. It never runs
//! foreign code under a shard lock: values that leave the map (replaced, removed,
//! expired) are handed back to the caller, to be dropped after the lock is released,
//! because dropping a Python object can run arbitrary `__del__` code.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::LazyLock;
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};

use crate::process::now_ns;
pub use crate::process::unix_now;
use crate::stamp::{Fresh, Stamp};

const SHARDS: usize = 16;
/// A shard is swept of its expired entries when it holds twice as many as after its
/// last sweep, and at least this many: each sweep's scan is paid for by as many inserts.
const SWEEP_FLOOR: usize = 1024;

struct Slot<V> {
    value: V,
    created_at: f64,
    /// The value's freshness ([`Stamp`]; NaN: not said).
    fresh_for: f32,
    took: f32,
    expires_ns: u64,
    /// Last use, on the store's logical clock (bounded stores only).
    touched: AtomicU64,
}

/// The most entries a package keeps in memory, how many it keeps now, and the stores
/// that share it (its TTL regions).
pub struct Budget {
    max: AtomicUsize,
    used: AtomicUsize,
    /// `memory_sweep_interval` in nanoseconds (`u64::MAX`: sweeps only as stores grow).
    sweep_every_ns: AtomicU64,
    stores: Mutex<Vec<Weak<dyn Evict>>>,
}

/// A store that gives up entries when its budget is exceeded.
pub trait Evict: Send + Sync {
    /// Evicts until the budget is met (or the store is empty), dropping what it evicts
    /// after its locks are released.
    fn evict_now(&self);
}

impl<V: Send + Sync> Evict for MemoryStore<V> {
    fn evict_now(&self) {
        drop(self.evict_over_budget(None));
    }
}

impl Budget {
    /// A budget of `max` entries (`None`: unbounded).
    pub fn new(max: Option<usize>) -> Self {
        Budget {
            max: AtomicUsize::new(max.unwrap_or(usize::MAX)),
            used: AtomicUsize::new(0),
            sweep_every_ns: AtomicU64::new(u64::MAX),
            stores: Mutex::new(Vec::new()),
        }
    }

    /// Changes the bound; a lower one is met at once ([`Budget::enforce`]).
    pub fn set_max(&self, max: Option<usize>) {
        self.max.store(max.unwrap_or(usize::MAX), Ordering::Relaxed);
        self.enforce();
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

    /// Counts `store` among the stores that give up entries for this budget.
    pub fn enlist(&self, store: Weak<dyn Evict>) {
        let mut stores = self.stores.lock();
        stores.retain(|s| s.strong_count() > 0);
        stores.push(store);
    }

    /// When the stores are over the bound together, they give up entries in turn
    /// until it is met. No lock of the budget is held while they do.
    pub fn enforce(&self) {
        if !self.over() {
            return;
        }
        let stores: Vec<Weak<dyn Evict>> = self.stores.lock().clone();
        for store in stores.iter().filter_map(Weak::upgrade) {
            if !self.over() {
                break;
            }
            store.evict_now();
        }
    }

    fn is_bounded(&self) -> bool {
        self.max.load(Ordering::Relaxed) != usize::MAX
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

    /// Entries held now by the stores of this budget.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

impl<V> Slot<V> {
    /// Live strictly before its deadline: a TTL of zero is never live.
    fn is_live(&self, now: u64) -> bool {
        now < self.expires_ns
    }
}

/// The keys' hash: computed once per call, it picks the shard and the bucket. Seeded
/// per process, so keys chosen by an attacker cannot be made to collide.
static HASHER: LazyLock<foldhash::fast::RandomState> =
    LazyLock::new(foldhash::fast::RandomState::default);

fn hash_of(key: &str) -> u64 {
    HASHER.hash_one(key)
}

/// The tag of a key, as [`crate::key::function_head`] writes it:
/// `{region}:{prefix}{name}||{tag}||{params}` (an untagged key has one `|` after the
/// name). Costs a scan to the first `|` for an untagged key: every insert asks.
fn tag_of(key: &str) -> Option<&str> {
    let bytes = key.as_bytes();
    let bar = bytes.iter().position(|&b| b == b'|')?;
    if bytes.get(bar + 1) != Some(&b'|') {
        return None;
    }
    let start = bar + 2;
    let len = key[start..].find("||")?;
    Some(&key[start..start + len])
}

/// One shard's entries: a hash table of (key, slot) on the precomputed hash, and the
/// keys of each tag (so that a tag's clear costs its entries, not the store's).
struct Table<V> {
    entries: hashbrown::HashTable<(Box<str>, Slot<V>)>,
    tags: HashMap<Box<str>, HashSet<Box<str>>>,
    /// The size at which the next insert sweeps expired entries.
    sweep_at: usize,
    /// Sweeps so far.
    sweeps: u32,
}

impl<V> Table<V> {
    fn new() -> Self {
        Table {
            entries: hashbrown::HashTable::new(),
            tags: HashMap::new(),
            sweep_at: SWEEP_FLOOR,
            sweeps: 0,
        }
    }

    /// Moves the entries that `doomed` picks out of the table, their values into `out`.
    fn extract(&mut self, mut doomed: impl FnMut(&str, &Slot<V>) -> bool, out: &mut Vec<V>) {
        let tags = &mut self.tags;
        out.extend(
            self.entries
                .extract_if(|(k, s)| doomed(k, s))
                .map(|(k, s)| {
                    untag(tags, &k);
                    s.value
                }),
        );
    }

    /// Moves the entries of `tag` out of the table, their values into `out`; returns
    /// how many of them were live.
    fn extract_tag(&mut self, tag: &str, now: u64, out: &mut Vec<V>) -> usize {
        let Some(keys) = self.tags.remove(tag) else {
            return 0;
        };
        let mut live = 0;
        for key in keys {
            let hash = hash_of(&key);
            if let Ok(e) = self.entries.find_entry(hash, |(k, _)| *k == key) {
                let ((_, slot), _) = e.remove();
                live += usize::from(slot.is_live(now));
                out.push(slot.value);
            }
        }
        live
    }

    fn get(&self, hash: u64, key: &str) -> Option<&Slot<V>> {
        self.entries
            .find(hash, |(k, _)| &**k == key)
            .map(|(_, s)| s)
    }

    fn insert(&mut self, hash: u64, key: &str, slot: Slot<V>) -> Option<Slot<V>> {
        match self
            .entries
            .entry(hash, |(k, _)| &**k == key, |(k, _)| hash_of(k))
        {
            hashbrown::hash_table::Entry::Occupied(mut e) => {
                Some(std::mem::replace(&mut e.get_mut().1, slot))
            }
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert((key.into(), slot));
                if let Some(tag) = tag_of(key) {
                    self.tags.entry(tag.into()).or_default().insert(key.into());
                }
                None
            }
        }
    }

    fn remove(&mut self, hash: u64, key: &str) -> Option<Slot<V>> {
        let removed = self
            .entries
            .find_entry(hash, |(k, _)| &**k == key)
            .ok()
            .map(|e| e.remove().0 .1);
        if removed.is_some() {
            untag(&mut self.tags, key);
        }
        removed
    }

    fn iter(&self) -> impl Iterator<Item = (&Box<str>, &Slot<V>)> {
        self.entries.iter().map(|(k, s)| (k, s))
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn capacity(&self) -> usize {
        self.entries.capacity()
    }
}

/// Forgets `key` in the index of its tag.
fn untag(tags: &mut HashMap<Box<str>, HashSet<Box<str>>>, key: &str) {
    let Some(tag) = tag_of(key) else {
        return;
    };
    if let Some(keys) = tags.get_mut(tag) {
        keys.remove(key);
        if keys.is_empty() {
            tags.remove(tag);
        }
    }
}

struct Shard<V> {
    map: RwLock<Table<V>>,
}

/// A concurrent map with a time to live on every entry.
pub struct MemoryStore<V> {
    shards: Box<[Shard<V>]>,
    budget: Arc<Budget>,
    /// Advanced by every insert: the recency of entries.
    clock: AtomicU64,
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

impl<V> MemoryStore<V> {
    /// An empty store, counted against `budget`.
    pub fn new(budget: Arc<Budget>) -> Self {
        let shards = (0..SHARDS)
            .map(|_| Shard {
                map: RwLock::new(Table::new()),
            })
            .collect();
        MemoryStore {
            shards,
            budget,
            clock: AtomicU64::new(0),
            swept_ns: AtomicU64::new(now_ns()),
            evicted: AtomicU64::new(0),
            expired_swept: AtomicU64::new(0),
        }
    }

    fn shard(&self, hash: u64) -> &Shard<V> {
        &self.shards[shard_of(hash)]
    }

    /// Applies `f` to a live entry's value and freshness, under the shard's read lock:
    /// `f` must not call into Python beyond reference counting.
    pub fn get_with<R>(&self, key: &str, f: impl FnOnce(&V, Stamp) -> R) -> Option<R> {
        let now = now_ns();
        let hash = hash_of(key);
        let map = self.shard(hash).map.read();
        let slot = map.get(hash, key).filter(|slot| slot.is_live(now))?;
        if self.budget.is_bounded() {
            // Odd stamps for hits: newer than the last insert, older than the next.
            slot.touched.store(
                self.clock.load(Ordering::Relaxed) * 2 + 1,
                Ordering::Relaxed,
            );
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
        self.insert_at(key, value, unix_now(), ttl, None)
    }

    /// Stores `value`, created at `created_at` (Unix seconds), for `ttl` seconds, with
    /// its freshness if it has its own.
    #[must_use = "drop the returned values after the call, outside any lock"]
    #[allow(clippy::cast_possible_truncation)] // seconds kept to f32's precision
    pub fn insert_at(
        &self,
        key: &str,
        value: V,
        created_at: f64,
        ttl: f64,
        fresh: Option<Fresh>,
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
        let slot = Slot {
            value,
            created_at,
            fresh_for,
            took,
            expires_ns: now.saturating_add(ttl_ns),
            touched: AtomicU64::new((self.clock.fetch_add(1, Ordering::Relaxed) + 1) * 2),
        };
        let hash = hash_of(key);
        let shard = self.shard(hash);
        let mut out = Vec::new();
        let mut map = shard.map.write();
        match map.insert(hash, key, slot) {
            Some(old) => out.push(old.value),
            None => {
                self.budget.used.fetch_add(1, Ordering::Relaxed);
            }
        }
        let before = out.len();
        if map.len() >= map.sweep_at {
            sweep_map(&mut map, now, &mut out);
        }
        self.budget.freed(out.len() - before);
        drop(map);
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
        if self.budget.over() {
            out.extend(self.evict_over_budget(Some(key)));
        }
        out
    }

    /// Removes one entry, returning its value.
    #[must_use = "drop the returned value after the call, outside any lock"]
    pub fn remove(&self, key: &str) -> Option<V> {
        let hash = hash_of(key);
        let removed = self
            .shard(hash)
            .map
            .write()
            .remove(hash, key)
            .map(|s| s.value);
        self.budget.freed(usize::from(removed.is_some()));
        removed
    }

    /// Removes every entry whose key satisfies `pred`; returns the values and how many
    /// of them were live.
    #[must_use = "drop the returned values after the call, outside any lock"]
    pub fn remove_matching(&self, pred: impl Fn(&str) -> bool) -> (Vec<V>, usize) {
        let now = now_ns();
        let mut out = Vec::new();
        let mut live = 0;
        for shard in &*self.shards {
            shard.map.write().extract(
                |k, s| {
                    let doomed = pred(k);
                    live += usize::from(doomed && s.is_live(now));
                    doomed
                },
                &mut out,
            );
        }
        self.budget.freed(out.len());
        (out, live)
    }

    /// Removes the entries of functions tagged `tag` (as keys carry it, normalized);
    /// returns their values and how many were live. Costs the tag's entries.
    #[must_use = "drop the returned values after the call, outside any lock"]
    pub fn remove_tag(&self, tag: &str) -> (Vec<V>, usize) {
        let now = now_ns();
        let mut out = Vec::new();
        let mut live = 0;
        for shard in &*self.shards {
            live += shard.map.write().extract_tag(tag, now, &mut out);
        }
        self.budget.freed(out.len());
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
        for shard in &*self.shards {
            sweep_map(&mut shard.map.write(), now, &mut out);
        }
        self.budget.freed(out.len());
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

    /// Evicts least recently used entries, shard by shard, until the budget is met or
    /// nothing but `keep` is left.
    #[must_use = "drop the returned values after the call, outside any lock"]
    pub fn evict_over_budget(&self, keep: Option<&str>) -> Vec<V> {
        let mut out = Vec::new();
        while self.budget.over() {
            let before = out.len();
            self.evict_least_recent(keep, &mut out);
            if out.len() == before {
                break; // nothing left to evict here
            }
        }
        out
    }

    /// Removes the least recently used 1/32 of the store (at least one entry), never
    /// `keep`. One scan of the access times finds the cut-off; the batch pays for it.
    fn evict_least_recent(&self, keep: Option<&str>, out: &mut Vec<V>) {
        let now = now_ns();
        // Expired entries count as the least recently used of all.
        let recency = |s: &Slot<V>| {
            if s.is_live(now) {
                s.touched.load(Ordering::Relaxed)
            } else {
                0
            }
        };
        let mut times: Vec<u64> = Vec::new();
        for shard in &*self.shards {
            let map = shard.map.read();
            times.extend(
                map.iter()
                    .filter(|(k, _)| keep != Some(&***k))
                    .map(|(_, s)| recency(s)),
            );
        }
        if times.is_empty() {
            return;
        }
        let batch = (times.len() / 32).max(1);
        let (_, cutoff, _) = times.select_nth_unstable(batch - 1);
        let cutoff = *cutoff;
        let mut left = batch;
        for shard in &*self.shards {
            if left == 0 {
                break;
            }
            shard.map.write().extract(
                |k, s| {
                    let doomed = left > 0 && keep != Some(k) && recency(s) <= cutoff;
                    left -= usize::from(doomed);
                    doomed
                },
                out,
            );
        }
        self.budget.freed(batch - left);
        self.evicted
            .fetch_add((batch - left) as u64, Ordering::Relaxed);
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
            bytes += map.capacity() * (std::mem::size_of::<(Box<str>, Slot<V>)>() + 1);
            for (k, slot) in map.iter() {
                bytes += k.len();
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

fn sweep_map<V>(map: &mut Table<V>, now: u64, out: &mut Vec<V>) {
    map.extract(|_, s| !s.is_live(now), out);
    map.sweep_at = (map.len() * 2).max(SWEEP_FLOOR);
    map.sweeps += 1;
}

#[cfg(test)]
mod tests;
