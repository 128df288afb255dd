//! One shard's table of the in-process store: entries by key, on the key's
//! precomputed hash, with the keys of each tag, and when to sweep it of expired
//! entries.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};

use super::thin::ThinStr;
use crate::key::hash_of;

/// A shard is swept of its expired entries when it holds twice as many as after its
/// last sweep, and at least this many: each sweep's scan is paid for by as many inserts.
pub(super) const SWEEP_FLOOR: usize = 1024;

/// An entry's value and what the store knows of it (what it weighs is the policy's to
/// know).
pub(super) struct Slot<V> {
    pub(super) value: V,
    pub(super) created_at: f64,
    pub(super) expires_ns: u64,
    /// The value's freshness ([`crate::stamp::Stamp`]; NaN: not said).
    pub(super) fresh_for: f32,
    pub(super) took: f32,
    /// Its insertion number in this store (wrapping): with its node, it names it to the
    /// policy.
    pub(super) seq: u32,
    /// Its node in the package's policy ([`super::policy::NIL`]: none, or not yet): a
    /// hit names it.
    pub(super) node: AtomicU32,
}

impl<V> Slot<V> {
    /// Live strictly before its deadline: a TTL of zero is never live.
    pub(super) fn is_live(&self, now: u64) -> bool {
        now < self.expires_ns
    }

    /// What names it to the policy: its node and insertion number.
    pub(super) fn name(&self) -> (u32, u64) {
        (self.node.load(Ordering::Relaxed), u64::from(self.seq))
    }

    /// Whether it is the entry the policy names `(node, seq)`: a slot that has not
    /// learnt its node yet is named by its `seq` alone.
    fn is(&self, node: u32, seq: u64) -> bool {
        let own = self.node.load(Ordering::Relaxed);
        u64::from(self.seq) == seq && (own == node || own == super::policy::NIL)
    }
}

/// The tag of a key, as [`crate::key::function_head`] writes it:
/// `{region}:{prefix}{name}||{tag}||{params}` (an untagged key has one `|` after the
/// name). Costs a scan to the first `|` for an untagged key: every insert asks.
pub(super) fn tag_of(key: &str) -> Option<&str> {
    let bytes = key.as_bytes();
    let bar = bytes.iter().position(|&b| b == b'|')?;
    if bytes.get(bar + 1) != Some(&b'|') {
        return None;
    }
    let start = bar + 2;
    let len = key[start..].find("||")?;
    Some(&key[start..start + len])
}

/// An entry of a table: its key, the key's hash (so that growing the table reads no
/// key: a rehash that followed each key's pointer missed the cache once per entry) and
/// its slot. 64 bytes for a value of 16, aligned to a cache line: a lookup that finds
/// its entry reads one line of the table, not two.
#[repr(align(64))]
pub(super) struct Held<V> {
    pub(super) key: ThinStr,
    pub(super) hash: u64,
    pub(super) slot: Slot<V>,
}

impl<V> Held<V> {
    /// Whether it is the entry of `key` (of hash `hash`): the hash first, so that a
    /// control byte that matches by chance costs no visit to another key's bytes.
    #[inline]
    fn is(&self, hash: u64, key: &str) -> bool {
        self.hash == hash && *self.key == *key
    }
}

/// One shard's entries: a hash table of keys and slots on the precomputed hash, and the
/// keys of each tag (so that a tag's clear costs its entries, not the store's).
pub(super) struct Table<V> {
    pub(super) entries: hashbrown::HashTable<Held<V>>,
    pub(super) tags: HashMap<Box<str>, HashSet<Box<str>>>,
    /// The size at which the next insert sweeps expired entries.
    sweep_at: usize,
    /// The earliest deadline of its entries, or an earlier one (entries removed since
    /// the last sweep are not looked at): before it, a sweep would find nothing.
    soonest: u64,
    /// Sweeps so far.
    pub(super) sweeps: u32,
}

impl<V> Table<V> {
    pub(super) fn new() -> Self {
        Table {
            entries: hashbrown::HashTable::new(),
            tags: HashMap::new(),
            sweep_at: SWEEP_FLOOR,
            soonest: u64::MAX,
            sweeps: 0,
        }
    }

    /// Moves the entries that `doomed` picks out of the table, their values into `out`
    /// and their names (hash, seq) into `gone`.
    pub(super) fn extract(
        &mut self,
        mut doomed: impl FnMut(&str, &Slot<V>) -> bool,
        out: &mut Vec<V>,
        gone: &mut Vec<(u32, u64)>,
    ) {
        let tags = &mut self.tags;
        out.extend(
            self.entries
                .extract_if(|e| doomed(&e.key, &e.slot))
                .map(|e| {
                    untag(tags, &e.key);
                    gone.push(e.slot.name());
                    e.slot.value
                }),
        );
    }

    /// Removes the entry of `hash` the policy names `(node, seq)`, if it is still there.
    pub(super) fn remove_exact(&mut self, hash: u64, node: u32, seq: u64) -> Option<Slot<V>> {
        let e = self
            .entries
            .find_entry(hash, |e| e.slot.is(node, seq))
            .ok()?;
        let (held, _) = e.remove();
        untag(&mut self.tags, &held.key);
        Some(held.slot)
    }

    /// Moves the entries of `tag` out of the table, their values into `out`; returns
    /// how many of them were live.
    pub(super) fn extract_tag(
        &mut self,
        tag: &str,
        now: u64,
        out: &mut Vec<V>,
        gone: &mut Vec<(u32, u64)>,
    ) -> usize {
        let Some(keys) = self.tags.remove(tag) else {
            return 0;
        };
        let mut live = 0;
        for key in keys {
            let hash = hash_of(&key);
            if let Ok(e) = self.entries.find_entry(hash, |e| e.is(hash, &key)) {
                let (Held { slot, .. }, _) = e.remove();
                live += usize::from(slot.is_live(now));
                gone.push(slot.name());
                out.push(slot.value);
            }
        }
        live
    }

    pub(super) fn get(&self, hash: u64, key: &str) -> Option<&Slot<V>> {
        self.entries
            .find(hash, |e| e.is(hash, key))
            .map(|e| &e.slot)
    }

    /// Stores `slot` as the entry of `key` (its `key`): the entry it replaces, or
    /// `Err(slot)` for a key longer than a table holds (4 GiB).
    pub(super) fn insert(
        &mut self,
        hash: u64,
        key: &str,
        slot: Slot<V>,
    ) -> Result<Option<Slot<V>>, Slot<V>> {
        match self.entries.entry(hash, |e| e.is(hash, key), |e| e.hash) {
            hashbrown::hash_table::Entry::Occupied(mut e) => {
                self.soonest = self.soonest.min(slot.expires_ns);
                Ok(Some(std::mem::replace(&mut e.get_mut().slot, slot)))
            }
            hashbrown::hash_table::Entry::Vacant(e) => {
                let Some(thin) = ThinStr::new(key) else {
                    return Err(slot);
                };
                self.soonest = self.soonest.min(slot.expires_ns);
                e.insert(Held {
                    key: thin,
                    hash,
                    slot,
                });
                if let Some(tag) = tag_of(key) {
                    self.tags.entry(tag.into()).or_default().insert(key.into());
                }
                Ok(None)
            }
        }
    }

    pub(super) fn remove(&mut self, hash: u64, key: &str) -> Option<Slot<V>> {
        let removed = self
            .entries
            .find_entry(hash, |e| e.is(hash, key))
            .ok()
            .map(|e| e.remove().0.slot);
        if removed.is_some() {
            untag(&mut self.tags, key);
        }
        removed
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, &Slot<V>)> {
        self.entries.iter().map(|e| (&*e.key, &e.slot))
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn capacity(&self) -> usize {
        self.entries.capacity()
    }

    /// Whether an insert should sweep: the table doubled since the last sweep, and an
    /// entry may have expired.
    pub(super) fn wants_sweep(&self, now: u64) -> bool {
        self.len() >= self.sweep_at && now >= self.soonest
    }

    /// Moves the expired entries out, their values into `out` and their names into
    /// `gone`.
    pub(super) fn sweep(&mut self, now: u64, out: &mut Vec<V>, gone: &mut Vec<(u32, u64)>) {
        let mut soonest = u64::MAX;
        self.extract(
            |_, s| {
                let live = s.is_live(now);
                if live {
                    soonest = soonest.min(s.expires_ns);
                }
                !live
            },
            out,
            gone,
        );
        self.soonest = soonest;
        self.sweep_at = (self.len() * 2).max(SWEEP_FLOOR);
        self.sweeps += 1;
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
