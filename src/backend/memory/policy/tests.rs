//! The policy against traces: hit ratios beside an exact LRU, scans, expiry, and the
//! bounds of entries and bytes.

use super::*;

/// Replays `trace` through a policy of `max` entries: the hit ratio.
fn hit_ratio(max: usize, trace: &[u64]) -> f64 {
    let p = TinyLfu::new(max);
    let mut resident = std::collections::HashSet::new();
    let mut hits = 0;
    for (seq, &key) in trace.iter().enumerate() {
        let hash = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        if resident.contains(&hash) {
            hits += 1;
            p.record_hit(hash);
            continue;
        }
        resident.insert(hash);
        for v in p.inserted(0, hash, seq as u64, u64::MAX, 1, None, 0) {
            resident.remove(&v.hash);
        }
        assert!(resident.len() <= max);
    }
    f64::from(hits) / trace.len() as f64
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
    let mut insert = |p: &TinyLfu, key: u64| {
        seq += 1;
        p.inserted(0, key * 2 + 1, seq, u64::MAX, 1, None, 0)
    };
    let mut resident = std::collections::HashSet::new();
    for round in 0..20 {
        for key in 0..80 {
            if resident.contains(&key) {
                p.record_hit(key * 2 + 1);
            } else {
                resident.insert(key);
                for v in insert(&p, key) {
                    resident.remove(&(v.hash / 2));
                }
            }
        }
        let _ = round;
    }
    for cold in 1000..3000 {
        resident.insert(cold);
        for v in insert(&p, cold) {
            resident.remove(&(v.hash / 2));
        }
    }
    let kept = (0..80).filter(|k| resident.contains(k)).count();
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
            .is_empty());
    }
    let out = p.inserted(0, 99, 10, u64::MAX, 1, None, 100);
    assert_eq!(
        out,
        [Victim {
            store: 1,
            hash: 19,
            seq: 9
        }]
    );
}

#[test]
fn a_replaced_or_forgotten_entry_leaves_no_trace() {
    let p = TinyLfu::new(10);
    let _ = p.inserted(0, 3, 1, u64::MAX, 1, None, 0);
    let _ = p.inserted(0, 3, 2, u64::MAX, 1, Some(1), 0);
    assert_eq!(p.len(), 1);
    p.forget(&[(3, 1)]); // not the entry there now
    assert_eq!(p.len(), 1);
    p.forget(&[(3, 2)]);
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
