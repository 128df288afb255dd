//! W-TinyLFU: which entries a bounded package keeps (Einziger, Friedman, Manes,
//! "`TinyLFU`: A Highly Efficient Cache Admission Policy", ACM TOS 2017; Caffeine's
//! design is the reference).
//!
//! New entries enter a small LRU window; an entry pushed out of the window becomes a
//! candidate for the main space (a segmented LRU: probation, and protected for the
//! entries hit again), and is admitted only if it was asked for more often than the
//! main space's own victim (by how often each was asked for lately, halved after
//! every `10 * max` accesses so that old popularity fades), or if it was asked for
//! twice while the victim was not asked for at all in a long while. An entry held
//! counts its own hits, in its node (4 bits); a count-min sketch (4 counters of 4 bits
//! per key) counts the keys asked for that are not held, starts a new entry's count,
//! and learns an entry's count when it leaves: a hit visits the node only. A scan of
//! cold keys thus passes through the window without flushing the hot set. A hit in
//! the main space only marks its entry, which moves (to protected's warm end) when it
//! reaches its list's cold end: the second chance of CLOCK, so that a hit costs no
//! visit to the entry's neighbours. The window's share follows the evicted keys that
//! come back: keys the window let go and the main space turned away grow it (towards
//! LRU), keys the main space evicted shrink it. Expired entries found at the lists'
//! cold ends go first.
//!
//! The policy names an entry by its node (the store's slot keeps it) and its store
//! and insertion number (`seq`), so that it forgets exactly the entry removed and the
//! store removes exactly the entry chosen (by its key's hash and `seq`), never a newer
//! one of the same key. Hits are recorded without a lock into striped, lossy buffers
//! of nodes, replayed under the policy's lock by the hit that fills a buffer or by
//! the next insert: a replay visits the node alone, no index. Nothing here
//! calls Python; the store removes the victims after this lock is released.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::history::{Exit, Ghosts, Sketch};

/// One entry chosen for eviction: its store (a TTL region of the package), its key's
/// hash, its node and insertion number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Victim {
    pub store: u32,
    pub hash: u64,
    pub node: u32,
    pub seq: u64,
}

/// No node: an entry the policy does not hold (yet).
pub const NIL: u32 = u32::MAX;
/// The `seq` of a free node.
const FREE: u64 = u64::MAX;
const STRIPES: usize = 16;
const STRIPE_LEN: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Segment {
    Window,
    Probation,
    Protected,
}

struct Node {
    hash: u64,
    seq: u64,
    store: u32,
    /// Bytes it counts against `memory_maxbytes` (its key and value).
    weight: u32,
    expires_ns: u64,
    /// The policy's access count when it was last asked for (in the window: when it
    /// was last moved to the window's warm end, as it was asked for).
    touched: u32,
    segment: Segment,
    /// Asked for since it entered its segment of the main space: it moves to the warm
    /// end of protected when it reaches its list's cold end, not when asked for.
    referenced: bool,
    /// How often it was asked for lately (at most 15), as of the sketch's halving
    /// `epoch`: a hit counts here, not in the sketch, which learns the count when
    /// the entry leaves.
    count: u8,
    epoch: u8,
    prev: u32,
    next: u32,
    /// Neighbours in its store's order of insertion (the order of expiry, for a
    /// region's fixed TTL).
    older: u32,
    newer: u32,
}

/// A doubly linked list of nodes: `head` is the coldest (least recently used).
#[derive(Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
    len: usize,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
        len: 0,
    };
}

/// How the window's size follows the ghosts: a return within `REACH * max`
/// departures of its kind counts; each moves the window by `STEP * max` entries
/// (a return evicted from the main space by twice that), a move in the same
/// direction as the last by `DRIFT` times the last, at most `MOST_STEP * max`.
const REACH: f64 = 0.08;
const STEP: f64 = 0.001;
const DRIFT: f64 = 1.5;
const MOST_STEP: f64 = 0.1;
/// The window's share of the bound: from 1% to 80%.
const LEAST_WINDOW: f64 = 0.01;
const MOST_WINDOW: f64 = 0.8;
/// A victim not asked for in `STALE * max` accesses loses to a candidate asked for
/// twice.
const STALE: u32 = 3;
/// Entries moved between segments by one insert at most (a resized window moves the
/// rest with the inserts that follow).
const TRANSFER: usize = 64;

/// What the sketch and the hit buffers know a key by: the low half of its hash, its
/// low bit set (a buffer's empty slot holds 0).
fn key_of(hash: u64) -> u32 {
    hash as u32 | 1
}

struct Inner {
    nodes: Vec<Node>,
    free: Vec<u32>,
    window: List,
    probation: List,
    protected: List,
    /// Each store's nodes by insertion, oldest first.
    ages: Vec<List>,
    /// The bounds: entries and bytes (`usize::MAX`: none).
    max: usize,
    max_weight: usize,
    weight: usize,
    window_max: usize,
    sketch: Sketch,
    ghosts: Ghosts,
    /// The window's last move (entries; negative: it shrank).
    drift: f64,
    /// Accesses so far (hits replayed and inserts).
    clock: u32,
}

/// Lossy buffers of recent hits: each the entry's node (high half) and key.
struct Stripe {
    /// Hits written so far (the slot of the next is `next % STRIPE_LEN`).
    next: AtomicUsize,
    /// Hits replayed so far (changed under the policy's lock only).
    replayed: AtomicUsize,
    slots: [AtomicU64; STRIPE_LEN],
}

/// The policy of one bounded package.
pub struct TinyLfu {
    inner: Mutex<Inner>,
    stripes: Box<[Stripe]>,
}

impl Inner {
    fn new(max: usize) -> Inner {
        let window_max = (max / 100).max(1);
        Inner {
            nodes: Vec::new(),
            free: Vec::new(),
            window: List::EMPTY,
            probation: List::EMPTY,
            protected: List::EMPTY,
            ages: Vec::new(),
            max,
            max_weight: usize::MAX,
            weight: 0,
            window_max,
            sketch: Sketch::new(max),
            ghosts: Ghosts::new(max),
            drift: 0.0,
            clock: 0,
        }
    }

    fn len(&self) -> usize {
        self.window.len + self.probation.len + self.protected.len
    }

    fn list(&mut self, segment: Segment) -> &mut List {
        match segment {
            Segment::Window => &mut self.window,
            Segment::Probation => &mut self.probation,
            Segment::Protected => &mut self.protected,
        }
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next, segment) = {
            let n = &self.nodes[i as usize];
            (n.prev, n.next, n.segment)
        };
        if prev == NIL {
            self.list(segment).head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            self.list(segment).tail = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
        self.list(segment).len -= 1;
    }

    /// Links node `i` at the warm end (most recently used) of `segment`.
    fn push(&mut self, i: u32, segment: Segment) {
        let tail = self.list(segment).tail;
        {
            let n = &mut self.nodes[i as usize];
            n.segment = segment;
            n.referenced = false;
            n.prev = tail;
            n.next = NIL;
        }
        if tail == NIL {
            self.list(segment).head = i;
        } else {
            self.nodes[tail as usize].next = i;
        }
        let list = self.list(segment);
        list.tail = i;
        list.len += 1;
    }

    fn remove_node(&mut self, i: u32) -> Victim {
        self.unlink(i);
        self.unlink_age(i);
        self.weight -= self.nodes[i as usize].weight as usize;
        // The sketch keeps what the entry's own count learned.
        let count = self.count(i);
        self.sketch
            .raise_to(key_of(self.nodes[i as usize].hash), count);
        let n = &mut self.nodes[i as usize];
        let victim = Victim {
            store: n.store,
            hash: n.hash,
            node: i,
            seq: n.seq,
        };
        n.seq = FREE;
        self.free.push(i);
        victim
    }

    fn unlink_age(&mut self, i: u32) {
        let (older, newer, store) = {
            let n = &self.nodes[i as usize];
            (n.older, n.newer, n.store as usize)
        };
        if older == NIL {
            self.ages[store].head = newer;
        } else {
            self.nodes[older as usize].newer = newer;
        }
        if newer == NIL {
            self.ages[store].tail = older;
        } else {
            self.nodes[newer as usize].older = older;
        }
        self.ages[store].len -= 1;
    }

    fn push_age(&mut self, i: u32) {
        let store = self.nodes[i as usize].store as usize;
        if self.ages.len() <= store {
            self.ages.resize(store + 1, List::EMPTY);
        }
        let tail = self.ages[store].tail;
        {
            let n = &mut self.nodes[i as usize];
            n.older = tail;
            n.newer = NIL;
        }
        if tail == NIL {
            self.ages[store].head = i;
        } else {
            self.nodes[tail as usize].newer = i;
        }
        self.ages[store].tail = i;
        self.ages[store].len += 1;
    }

    /// How often node `i`'s entry was asked for lately.
    fn count(&self, i: u32) -> u8 {
        let n = &self.nodes[i as usize];
        self.sketch.aged(n.count, n.epoch)
    }

    /// Whether node `i` holds the entry `seq` of `store`.
    fn holds(&self, i: u32, store: u32, seq: u64) -> bool {
        self.nodes
            .get(i as usize)
            .is_some_and(|n| n.seq == seq && n.store == store)
    }

    /// A hit on the entry of node `i`, whose key is `key` ([`key_of`]), counted in the
    /// node. A node freed or given to another key since is left alone: the hit counts
    /// in the sketch, as one of a key not held.
    fn touch(&mut self, i: u32, key: u32) {
        self.clock = self.clock.wrapping_add(1);
        let holds_key = |n: &Node| n.seq != FREE && key_of(n.hash) == key;
        if !self.nodes.get(i as usize).is_some_and(holds_key) {
            self.sketch.increment(key);
            return;
        }
        let count = self.count(i);
        if count < 15 {
            self.sketch.added();
        }
        let (clock, epoch, window) = (self.clock, self.sketch.epoch(), self.window.len);
        let node = &mut self.nodes[i as usize];
        node.count = (count + 1).min(15);
        node.epoch = epoch;
        if node.segment != Segment::Window {
            // Marked only: it costs no visit to its neighbours (each mark is paid for
            // once, by the move at the cold end).
            node.touched = clock;
            node.referenced = true;
            return;
        }
        if (clock.wrapping_sub(node.touched) as usize) < window / 4 {
            // Moved to the warm end fewer accesses ago than a quarter of the window
            // (each access pushes one entry at most): it is still in the warmest
            // quarter, whose order chooses no victim.
            return;
        }
        node.touched = clock;
        self.unlink(i);
        self.push(i, Segment::Window);
    }

    /// Probation's coldest entries that were asked for since they entered it move to
    /// protected (at most `TRANSFER`): the coldest left is the victim.
    fn promote_referenced(&mut self) {
        for _ in 0..TRANSFER {
            let i = self.probation.head;
            if i == NIL || !self.nodes[i as usize].referenced {
                return;
            }
            self.unlink(i);
            self.push(i, Segment::Protected);
        }
    }

    /// The protected segment keeps 80% of the main space; its coldest go back to
    /// probation (at most `TRANSFER` at a time).
    fn demote_protected(&mut self) {
        let main = self.capacity().saturating_sub(self.window_max);
        let protected_max = main - main / 5;
        for _ in 0..TRANSFER {
            if self.protected.len <= protected_max {
                break;
            }
            let i = self.protected.head;
            // Asked for since it was placed: a second round in protected.
            let segment = if self.nodes[i as usize].referenced {
                Segment::Protected
            } else {
                Segment::Probation
            };
            self.unlink(i);
            self.push(i, segment);
        }
    }

    /// A new entry: its node.
    fn add(&mut self, store: u32, hash: u64, seq: u64, expires_ns: u64, weight: u32) -> u32 {
        let count = self.sketch.increment(key_of(hash));
        let epoch = self.sketch.epoch();
        self.clock = self.clock.wrapping_add(1);
        if let Some((exit, ago)) = self.ghosts.returned(hash | 1) {
            self.resize_window(exit, ago);
        }
        self.weight += weight as usize;
        let node = Node {
            hash,
            seq,
            store,
            weight,
            expires_ns,
            touched: self.clock,
            segment: Segment::Window,
            referenced: false,
            count,
            epoch,
            prev: NIL,
            next: NIL,
            older: NIL,
            newer: NIL,
        };
        let i = if let Some(i) = self.free.pop() {
            self.nodes[i as usize] = node;
            i
        } else {
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        };
        self.push(i, Segment::Window);
        self.push_age(i);
        i
    }

    /// Forgets an entry the store removed itself (node `i`, if it still holds it).
    fn forget(&mut self, store: u32, i: u32, seq: u64) {
        if self.holds(i, store, seq) {
            self.remove_node(i);
        }
    }

    /// Evicts until the policy holds at most `max` entries; `now` judges expiry.
    fn evict(&mut self, now: u64, out: &mut Vec<Victim>) {
        if self.max == usize::MAX {
            // A bound of bytes alone: the window's share of what is held now.
            let (least, most) = self.window_range();
            self.window_max = self.window_max.clamp(least, most);
        }
        // The window's overflow moves to probation, each a candidate against its
        // victim (probation's coldest).
        let mut candidates: usize = 0;
        while self.window.len > self.window_max && candidates < TRANSFER {
            let i = self.window.head;
            self.unlink(i);
            self.push(i, Segment::Probation);
            candidates += 1;
            self.ghosts.depart(Exit::Window);
        }
        while self.over() {
            if let Some(i) = self.expired_end(now) {
                out.push(self.remove_node(i));
                continue;
            }
            self.promote_referenced();
            let victim = self.probation.head;
            let candidate = self.probation.tail;
            if victim == NIL {
                // All in the window or protected: the coldest of protected, then window.
                let i = if self.protected.head == NIL {
                    self.window.head
                } else {
                    self.protected.head
                };
                out.push(self.remove_node(i));
                continue;
            }
            let rejected = if candidates == 0 || victim == candidate {
                false
            } else {
                !self.admit(candidate, victim)
            };
            candidates = candidates.saturating_sub(1);
            // An admitted candidate stays where it is: at probation's warm end.
            let (i, exit) = if rejected {
                (candidate, Exit::Window)
            } else {
                self.ghosts.depart(Exit::Main);
                (victim, Exit::Main)
            };
            self.ghosts.remember(self.nodes[i as usize].hash | 1, exit);
            out.push(self.remove_node(i));
        }
        self.demote_protected();
    }

    fn over(&self) -> bool {
        self.len() > self.max || self.weight > self.max_weight
    }

    /// The entries the main space and window divide: the bound of entries, or under a
    /// bound of bytes alone, the entries held now.
    fn capacity(&self) -> usize {
        if self.max == usize::MAX {
            self.len().max(16)
        } else {
            self.max
        }
    }

    /// Whether the candidate (node) is wanted more than the victim: asked for more
    /// often lately, by the nodes' counts, or asked for twice while the victim was not
    /// asked for in `STALE * max` accesses (its count is of a popularity it lost: when
    /// the hot set moves, the old hot keys would keep the new ones out until their
    /// counts fade). Ties go to the victim, but a warm candidate wins one time in 128 (an
    /// attacker cannot keep a key out by making its victim look hot).
    fn admit(&self, candidate: u32, victim: u32) -> bool {
        let (c, v) = (self.count(candidate), self.count(victim));
        let victim = &self.nodes[victim as usize];
        if c > v {
            return true;
        }
        let idle = self.clock.wrapping_sub(victim.touched) as usize;
        if c >= 2 && idle > self.capacity().saturating_mul(STALE as usize) {
            return true;
        }
        c > 5 && crate::process::uniform() < 1.0 / 128.0
    }

    /// An expired entry: the oldest of a store (its region's TTL makes it the first
    /// to expire), or at one of the lists' cold ends.
    fn expired_end(&self, now: u64) -> Option<u32> {
        self.ages
            .iter()
            .map(|l| l.head)
            .chain([self.window.head, self.probation.head, self.protected.head])
            .find(|&i| i != NIL && self.nodes[i as usize].expires_ns <= now)
    }

    /// The window's least and most entries.
    fn window_range(&self) -> (usize, usize) {
        let capacity = self.capacity() as f64;
        let least = (capacity * LEAST_WINDOW).max(1.0);
        (least as usize, (capacity * MOST_WINDOW).max(least) as usize)
    }

    /// An evicted key asked for again, `ago` departures of its kind after it left:
    /// had the window (or, for `Exit::Main`, the main space) been larger by that much,
    /// it would have been a hit. Returns soon enough move the window towards the side
    /// that lost them, faster while they keep pointing the same way.
    fn resize_window(&mut self, exit: Exit, ago: u32) {
        let capacity = self.capacity() as f64;
        if f64::from(ago) > capacity * REACH {
            return;
        }
        let step = (capacity * STEP).max(1.0);
        let toward = match exit {
            Exit::Window => step,
            Exit::Main => -2.0 * step,
        };
        self.drift = if self.drift * toward > 0.0 {
            (self.drift * DRIFT).clamp(-capacity * MOST_STEP, capacity * MOST_STEP)
        } else {
            toward
        };
        let (least, most) = self.window_range();
        let window = (self.window_max as f64 + self.drift).round();
        self.window_max = window.clamp(least as f64, most as f64) as usize;
        self.demote_protected();
    }
}

impl TinyLfu {
    pub fn new(max: usize) -> TinyLfu {
        TinyLfu {
            inner: Mutex::new(Inner::new(max)),
            stripes: (0..STRIPES)
                .map(|_| Stripe {
                    next: AtomicUsize::new(0),
                    replayed: AtomicUsize::new(0),
                    slots: std::array::from_fn(|_| AtomicU64::new(0)),
                })
                .collect(),
        }
    }

    /// A hit on the entry of `hash` held by node `node` (`NIL`: not held yet, not
    /// counted): recorded without a lock (a full buffer is replayed by the hit that
    /// fills it, if the policy is free).
    #[inline]
    pub fn record_hit(&self, node: u32, hash: u64) {
        if node == NIL {
            return;
        }
        let stripe = &self.stripes[(hash >> 40) as usize % STRIPES];
        let at = stripe.next.fetch_add(1, Ordering::Relaxed);
        let hit = u64::from(node) << 32 | u64::from(key_of(hash));
        stripe.slots[at % STRIPE_LEN].store(hit, Ordering::Relaxed);
        if at % STRIPE_LEN == STRIPE_LEN - 1 {
            if let Some(mut inner) = self.inner.try_lock() {
                self.replay(&mut inner);
            }
        }
    }

    /// Replays the hits written since the last replay (at most a stripe's length of
    /// each: older ones were overwritten).
    fn replay(&self, inner: &mut Inner) {
        for stripe in &*self.stripes {
            let end = stripe.next.load(Ordering::Relaxed);
            let start = stripe
                .replayed
                .load(Ordering::Relaxed)
                .max(end.saturating_sub(STRIPE_LEN));
            for at in start..end {
                // A load and a store, not a swap: a locked swap would fence every
                // slot's misses (sketch, node) from the next's. A hit written between
                // the two is lost, as buffers lose hits anyway.
                let slot = &stripe.slots[at % STRIPE_LEN];
                let hit = slot.load(Ordering::Relaxed);
                slot.store(0, Ordering::Relaxed);
                if hit != 0 {
                    inner.touch((hit >> 32) as u32, hit as u32);
                }
            }
            stripe.replayed.store(end, Ordering::Relaxed);
        }
    }

    /// A new entry of `store` weighing `weight` bytes (or a new value of an entry:
    /// `replaced` is the node and seq it had): its node, and the entries to evict for
    /// it (it may be one of them).
    #[allow(clippy::too_many_arguments)] // what names an entry, and what it weighs
    pub fn inserted(
        &self,
        store: u32,
        hash: u64,
        seq: u64,
        expires_ns: u64,
        weight: usize,
        replaced: Option<(u32, u64)>,
        now: u64,
    ) -> (u32, Vec<Victim>) {
        let mut inner = self.inner.lock();
        self.replay(&mut inner);
        if let Some((node, old)) = replaced {
            inner.forget(store, node, old);
        }
        let weight = u32::try_from(weight).unwrap_or(u32::MAX);
        let node = inner.add(store, hash, seq, expires_ns, weight);
        let mut out = Vec::new();
        inner.evict(now, &mut out);
        (node, out)
    }

    /// Entries of `store` it does not hold yet, `(node, hash, seq, expiry, weight)`
    /// (a package bounded anew): each one's node is written back in place of `NIL` or
    /// of a stale one; the entries to evict go to `out`.
    pub fn adopt(
        &self,
        store: u32,
        entries: &mut [(&mut u32, u64, u64, u64, u32)],
        now: u64,
        out: &mut Vec<Victim>,
    ) {
        let mut inner = self.inner.lock();
        for (node, hash, seq, expires_ns, weight) in entries {
            if !inner.holds(**node, store, *seq) {
                **node = inner.add(store, *hash, *seq, *expires_ns, *weight);
                inner.evict(now, out);
            }
        }
    }

    /// Entries `(node, seq)` the store `store` removed itself (deleted, cleared,
    /// expired).
    pub fn forget(&self, store: u32, removed: &[(u32, u64)]) {
        if removed.iter().all(|&(node, _)| node == NIL) {
            return;
        }
        let mut inner = self.inner.lock();
        for &(node, seq) in removed {
            inner.forget(store, node, seq);
        }
    }

    /// New bounds of entries and bytes (`usize::MAX`: none); the entries to evict to
    /// meet them.
    pub fn set_bounds(&self, max: usize, max_weight: usize, now: u64) -> Vec<Victim> {
        let mut inner = self.inner.lock();
        inner.max_weight = max_weight;
        if max != inner.max {
            inner.max = max;
            let entries = if max == usize::MAX {
                // Sized for entries of about 256 bytes.
                (max_weight / 256).clamp(16, 1 << 22)
            } else {
                max
            };
            inner.window_max = (entries / 100).max(1);
            inner.sketch = Sketch::new(entries);
            inner.ghosts = Ghosts::new(entries);
        }
        let mut out = Vec::new();
        inner.evict(now, &mut out);
        out
    }

    /// Forgets every entry (the bounds were lifted; new ones come with
    /// [`TinyLfu::set_bounds`]).
    pub fn clear(&self) {
        *self.inner.lock() = Inner::new(16);
    }

    /// Entries the policy holds.
    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    /// Bytes the entries held weigh.
    pub fn weight(&self) -> usize {
        self.inner.lock().weight
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests;
