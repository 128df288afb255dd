//! The policy against traces: hit ratios beside an exact LRU, scans, expiry, and the
//! bounds of entries and bytes.

use super::*;

/// Replays `trace` through a policy of `max` entries: the hit ratio.
fn hit_ratio(max: usize, trace: &[u64]) -> f64 {
    let p = TinyLfu::new(max);
    let mut resident = Resident::default();
    let mut hits = 0;
    for (seq, &key) in trace.iter().enumerate() {
        let hash = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        if let Some(&node) = resident.get(&hash) {
            hits += 1;
            p.record_hit(node, hash);
            continue;
        }
        resident.insert_into(&p, hash, seq as u64);
        assert!(resident.len() <= max);
    }
    f64::from(hits) / trace.len() as f64
}

/// The entries a store would hold, by hash: their nodes.
#[derive(Default)]
struct Resident(std::collections::HashMap<u64, u32>);

impl std::ops::Deref for Resident {
    type Target = std::collections::HashMap<u64, u32>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Resident {
    /// Inserts the entry of `hash` as `seq` (of store 0), and removes the victims.
    fn insert_into(&mut self, p: &TinyLfu, hash: u64, seq: u64) {
        let (node, victims) = p.inserted(0, hash, seq, u64::MAX, 1, None, 0);
        self.0.insert(hash, node);
        for v in victims {
            self.0.remove(&v.hash);
        }
    }
}

fn zipf(n: usize, keys: u64, alpha: f64, seed: u64) -> Vec<u64> {
    let cumulative: Vec<f64> = (1..=keys)
        .scan(0.0, |acc, k| {
            *acc += 1.0 / (k as f64).powf(alpha);
            Some(*acc)
        })
        .collect();
    let total = *cumulative.last().unwrap();
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            let u = (xorshift(&mut x) >> 11) as f64 / (1u64 << 53) as f64 * total;
            cumulative.partition_point(|&c| c < u) as u64
        })
        .collect()
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// 80% of the accesses to a hot set of `hot` keys that moves every `phase`
/// accesses, the rest uniform over `keys` others.
fn shifting(n: usize, hot: u64, phase: usize, keys: u64) -> Vec<u64> {
    let mut x = 11;
    (0..n)
        .map(|i| {
            if xorshift(&mut x) % 5 != 0 {
                (i / phase) as u64 * hot + xorshift(&mut x) % hot
            } else {
                (1 << 32) | (xorshift(&mut x) % keys)
            }
        })
        .collect()
}

fn lru_ratio(max: usize, trace: &[u64]) -> f64 {
    let mut last = std::collections::HashMap::new();
    let mut order = std::collections::BTreeMap::new();
    let mut hits = 0;
    for (t, &k) in trace.iter().enumerate() {
        if let Some(old) = last.insert(k, t) {
            order.remove(&old);
            hits += 1;
        } else if order.len() == max {
            let (_, victim) = order.pop_first().unwrap();
            last.remove(&victim);
        }
        order.insert(t, k);
    }
    f64::from(hits) / trace.len() as f64
}

#[test]
fn recency_wins_when_the_hot_set_moves() {
    // The new hot keys are asked for less often, so far, than the old ones were:
    // the window grows and stale victims give way, or they would be turned away.
    let trace = shifting(200_000, 400, 25_000, 1_000_000);
    let (tiny, lru) = (hit_ratio(2_000, &trace), lru_ratio(2_000, &trace));
    assert!(
        tiny >= lru - 0.002,
        "W-TinyLFU {tiny:.4} against LRU {lru:.4}"
    );
    let small = (hit_ratio(200, &trace), lru_ratio(200, &trace));
    assert!(small.0 > small.1 + 0.02, "at 200 entries: {small:?}");
}

#[test]
fn frequency_beats_recency_on_a_skewed_trace() {
    let trace = zipf(60_000, 20_000, 0.9, 7);
    let (tiny, lru) = (hit_ratio(200, &trace), lru_ratio(200, &trace));
    assert!(
        tiny > lru + 0.03,
        "W-TinyLFU {tiny:.3} against LRU {lru:.3}"
    );
}

#[test]
fn a_scan_does_not_flush_the_hot_set() {
    let p = TinyLfu::new(100);
    let mut seq = 0;
    let mut resident = Resident::default();
    for _ in 0..20 {
        for key in 0..80 {
            let hash = key * 2 + 1;
            if let Some(&node) = resident.get(&hash) {
                p.record_hit(node, hash);
            } else {
                seq += 1;
                resident.insert_into(&p, hash, seq);
            }
        }
    }
    for cold in 1000..3000 {
        seq += 1;
        resident.insert_into(&p, cold * 2 + 1, seq);
    }
    let kept = (0..80)
        .filter(|k| resident.contains_key(&(k * 2 + 1)))
        .count();
    assert!(kept >= 70, "{kept} of 80 hot keys kept through a scan");
    assert!(p.len() <= 100);
}

#[test]
fn expired_entries_go_first() {
    // Store 1 (a region of short TTL) holds the newest entry, expired by now.
    let p = TinyLfu::new(10);
    for k in 0..10u64 {
        let (store, expires) = if k == 9 { (1, 10) } else { (0, u64::MAX) };
        assert!(p
            .inserted(store, k * 2 + 1, k, expires, 1, None, 0)
            .1
            .is_empty());
    }
    let (_, out) = p.inserted(0, 99, 10, u64::MAX, 1, None, 100);
    assert_eq!(
        out,
        [Victim {
            store: 1,
            hash: 19,
            node: 9,
            seq: 9
        }]
    );
}

#[test]
fn a_replaced_or_forgotten_entry_leaves_no_trace() {
    let p = TinyLfu::new(10);
    let (first, _) = p.inserted(0, 3, 1, u64::MAX, 1, None, 0);
    let (second, _) = p.inserted(0, 3, 2, u64::MAX, 1, Some((first, 1)), 0);
    assert_eq!(p.len(), 1);
    // Not the entry there now, though its node may be the same: nor another store's.
    p.forget(0, &[(first, 1), (second, 1)]);
    p.forget(1, &[(second, 2)]);
    assert_eq!(p.len(), 1);
    p.forget(0, &[(second, 2)]);
    assert!(p.is_empty());
}

#[test]
fn a_bound_of_bytes_holds_alone_and_with_one_of_entries() {
    let p = TinyLfu::new(16);
    let _ = p.set_bounds(usize::MAX, 1000, 0);
    for k in 0..100u64 {
        let _ = p.inserted(0, k * 2 + 1, k, u64::MAX, 90, None, 0);
        assert!(p.weight() <= 1000, "{} bytes kept", p.weight());
    }
    assert_eq!(p.len(), 11);
    let _ = p.set_bounds(5, 1000, 0);
    assert_eq!((p.len(), p.weight()), (5, 450));
}

#[test]
fn a_hit_through_a_node_given_to_another_key_moves_nothing() {
    // A slot's node outlives the entry by a moment (a hit recorded as its entry is
    // evicted): replayed later, it must not count for the key that took the node.
    let p = TinyLfu::new(100);
    let (a, _) = p.inserted(0, 3, 1, u64::MAX, 1, None, 0);
    p.forget(0, &[(a, 1)]);
    let (b, _) = p.inserted(0, 5, 2, u64::MAX, 1, None, 0);
    assert_eq!(a, b, "the free node is taken again");
    let _ = p.inserted(0, 7, 3, u64::MAX, 1, None, 0);
    let marked = |p: &TinyLfu| {
        let inner = p.inner.lock();
        let node = &inner.nodes[b as usize];
        (node.segment, node.referenced)
    };
    assert_eq!(marked(&p), (Segment::Probation, false));
    p.record_hit(a, 3);
    let _ = p.inserted(0, 9, 4, u64::MAX, 1, None, 0);
    assert_eq!(marked(&p), (Segment::Probation, false));
    p.record_hit(b, 5);
    let _ = p.inserted(0, 11, 5, u64::MAX, 1, None, 0);
    assert_eq!(marked(&p), (Segment::Probation, true));
}
