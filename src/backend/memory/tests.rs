use super::table::{tag_of, Slot, SWEEP_FLOOR};
use super::*;

#[test]
fn stores_and_reads_back() {
    let s = MemoryStore::default();
    assert!(s.insert("5m:f|x=1", "one".to_owned(), 300.0).is_empty());
    assert_eq!(
        s.get_with("5m:f|x=1", |v, _| v.clone()).as_deref(),
        Some("one")
    );
    assert_eq!(s.get_with("5m:f|x=2", |v, _| v.clone()), None);
    let replaced = s.insert("5m:f|x=1", "uno".to_owned(), 300.0);
    assert_eq!(replaced, vec!["one".to_owned()]);
    assert_eq!(s.remove("5m:f|x=1").as_deref(), Some("uno"));
    assert_eq!(s.get_with("5m:f|x=1", |v, _| v.clone()), None);
}

#[test]
fn expired_entries_are_misses_and_get_swept() {
    let s = MemoryStore::default();
    let _ = s.insert("k", 1, 0.0);
    std::thread::sleep(std::time::Duration::from_millis(2));
    assert_eq!(s.get_with("k", |v, _| *v), None);
    assert_eq!(s.count_matching(|_| true), 0);
    assert_eq!(s.sweep(), vec![1]);
    assert_eq!(s.sweep(), Vec::<i32>::new());
}

#[test]
fn created_at_is_unix_time() {
    let s = MemoryStore::default();
    let before = unix_now();
    let _ = s.insert("k", (), 60.0);
    let created = s.get_with("k", |(), c| c.created_at).unwrap();
    assert!(created >= before && created <= unix_now());
}

#[test]
fn selective_removal_and_counting() {
    let s = MemoryStore::default();
    for i in 0..100 {
        let tag = if i % 2 == 0 { "|even|" } else { "|odd|" };
        let _ = s.insert(&format!("5m:f|{tag}|i={i}"), i, 300.0);
    }
    assert_eq!(s.count_matching(|k| k.contains("|even|")), 50);
    let (removed, live) = s.remove_matching(|k| k.contains("|odd|"));
    assert_eq!((removed.len(), live), (50, 50));
    assert_eq!(s.count_matching(|_| true), 50);
    assert_eq!(
        s.keys_matching(|k| k.ends_with("i=4")),
        vec!["5m:f||even||i=4"]
    );
}

#[test]
fn inserts_sweep_expired_entries_on_the_way() {
    let s = MemoryStore::default();
    let n = SWEEP_FLOOR * SHARDS;
    let mut swept = 0;
    for i in 0..n {
        swept += s.insert(&format!("old{i}"), i, 0.0).len(); // expired at once
    }
    for i in 0..n {
        swept += s.insert(&format!("new{i}"), i, 300.0).len();
    }
    assert!(
        swept > n / 2,
        "only {swept} of {n} expired entries swept by inserts"
    );
    assert!(s.len() < n * 3 / 2, "{} entries held", s.len());
}

#[test]
fn sweeps_are_rare_however_large_the_store() {
    // A sweep scans its shard, so it comes only after the shard doubled since the
    // last one: a million live entries do not make every insert slower. (One entry
    // in a thousand is expired at once, so that there is something to sweep.)
    let s = MemoryStore::default();
    let n = 1 << 20;
    for i in 0..n {
        let ttl = if i % 1000 == 0 { 0.0 } else { 300.0 };
        let _ = s.insert(&format!("k{i}"), i, ttl);
    }
    assert!(s.len() >= n - n / 1000 - 1);
    let per_shard = n / SHARDS / SWEEP_FLOOR; // 64: what a sweep per 1024 inserts did
    for shard in &*s.shards {
        let sweeps = shard.map.read().sweeps;
        assert!(
            sweeps <= per_shard.ilog2() + 1,
            "{sweeps} sweeps of one shard"
        );
    }
}

#[test]
fn a_store_none_of_whose_entries_expired_yet_is_not_scanned() {
    let s = MemoryStore::default();
    for i in 0..SWEEP_FLOOR * SHARDS * 8 {
        let _ = s.insert(&format!("k{i}"), i, 300.0);
    }
    let sweeps: u32 = s.shards.iter().map(|sh| sh.map.read().sweeps).sum();
    assert_eq!(sweeps, 0);
    // One expired entry: an insert into its shard (which doubled) sweeps it.
    let swept = s.insert("gone", 0, 0.0).len();
    let swept = swept
        + (0..SWEEP_FLOOR * SHARDS)
            .map(|i| s.insert(&format!("more{i}"), i, 300.0).len())
            .sum::<usize>();
    assert_eq!((swept, s.len()), (1, SWEEP_FLOOR * SHARDS * 9));
}

#[test]
fn concurrent_readers_and_writers() {
    let s = Arc::new(MemoryStore::default());
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..2000 {
                    let key = format!("k{}", i % 97);
                    let _ = s.insert(&key, t * 10_000 + i, 300.0);
                    assert!(s.get_with(key.as_str(), |v, _| *v).is_some());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(s.count_matching(|_| true), 97);
}

#[test]
fn a_budget_keeps_the_entries_asked_for_again() {
    let budget = Arc::new(Budget::new(Some(64)));
    let s = MemoryStore::new(budget.clone());
    for i in 0..64 {
        let _ = s.insert(&format!("k{i}"), i, 300.0);
    }
    assert_eq!((budget.used(), s.len()), (64, 64));
    // The first half is asked for again: the rest, and newcomers seen once, go first.
    for _ in 0..3 {
        for i in 0..32 {
            assert!(s.get_with(format!("k{i}").as_str(), |v, _| *v).is_some());
        }
    }
    let mut evicted = Vec::new();
    for i in 64..200 {
        evicted.extend(s.insert(&format!("k{i}"), i, 300.0));
        assert!(budget.used() <= 64, "{} entries kept", budget.used());
    }
    assert_eq!(budget.used(), s.len());
    assert_eq!(evicted.len(), 200 - 64);
    assert!(
        evicted.iter().all(|&i| i >= 32),
        "an entry asked for again was evicted"
    );
    assert_eq!(s.remove("k5"), Some(5));
    let (removed, _) = s.remove_matching(|_| true);
    assert_eq!((removed.len(), budget.used()), (s.len() + removed.len(), 0));
}

#[test]
fn a_budget_evicts_expired_entries_before_live_ones() {
    // Two regions of a package: the short one's entries have expired.
    let budget = Arc::new(Budget::new(Some(64)));
    let long = MemoryStore::<u32>::enlisted(budget.clone());
    let short = MemoryStore::<u32>::enlisted(budget.clone());
    for i in 0..32 {
        let _ = long.insert(&format!("5m:live{i}"), i, 300.0);
    }
    for i in 0..32 {
        let _ = short.insert(&format!("1s:gone{i}"), 100 + i, 0.0);
    }
    for i in 32..64 {
        let _ = long.insert(&format!("5m:live{i}"), i, 300.0);
    }
    assert_eq!(
        long.count_matching(|_| true),
        64,
        "a live entry was evicted"
    );
    assert_eq!(short.len(), 0, "the expired entries went first");
    assert_eq!(budget.used(), 64);
}

#[test]
fn budgets_are_shared_by_the_stores_of_a_package() {
    let budget = Arc::new(Budget::new(Some(10)));
    let a = MemoryStore::<u32>::enlisted(budget.clone());
    let b = MemoryStore::<u32>::enlisted(budget.clone());
    for i in 0..10 {
        let _ = a.insert(&format!("a{i}"), i, 300.0);
    }
    for i in 0..5 {
        let _ = b.insert(&format!("b{i}"), i, 300.0);
        assert!(
            !budget.over(),
            "the package's bound holds across its stores"
        );
    }
    assert_eq!(budget.used(), a.len() + b.len());
    assert_eq!(budget.used(), 10);
    // Lowering the bound evicts at once, from every store.
    budget.set_max(Some(4));
    assert_eq!((budget.used(), a.len() + b.len()), (4, 4));
}

#[test]
fn bounds_hold_under_threads() {
    let budget = Arc::new(Budget::new(Some(500)));
    let s = MemoryStore::<u64>::enlisted(budget.clone());
    on_threads(&s, 8, |s, t| {
        // Keys removed and replaced as others insert them: an entry can leave before
        // the policy's node for it is written to its slot.
        for i in 0..5_000u64 {
            let key = format!("k{}", (i * 7 + t * 13) % 3_000);
            let hit = s.get_with(key.as_str(), |v, _| *v).is_some();
            if i % 7 == 0 {
                let _ = s.remove(&key);
            } else if !hit || i % 5 == 0 {
                drop(s.insert(&key, i, 300.0));
            }
        }
    });
    assert!(budget.used() <= 500, "{} entries kept", budget.used());
    assert_eq!(budget.used(), s.len());
    assert_eq!(
        budget.policy_len(),
        s.len(),
        "the policy counts every entry once"
    );
}

#[test]
fn a_tag_clear_removes_the_tag_s_entries_only() {
    let s = MemoryStore::<u32>::default();
    for i in 0..100 {
        drop(s.insert(&format!("5m:f||users||x={i}"), i, 60.0));
        drop(s.insert(&format!("5m:g|x={i}"), i, 60.0));
        drop(s.insert(&format!("5m:h||other||x={i}"), i, 60.0));
    }
    assert_eq!(s.remove("5m:f||users||x=0"), Some(0));
    let (removed, live) = s.remove_tag("users");
    assert_eq!((removed.len(), live), (99, 99));
    assert_eq!(s.len(), 200);
    assert!(s.keys_matching(|k| k.contains("||users||")).is_empty());
    // The index forgets what leaves by any path.
    drop(s.remove_matching(|k| k.starts_with("5m:h")));
    assert_eq!(s.remove_tag("other").0.len(), 0);
    let shard_tags: usize = s.shards.iter().map(|sh| sh.map.read().tags.len()).sum();
    assert_eq!(shard_tags, 0);
    assert_eq!(tag_of("5m:f||a.b||x=1"), Some("a.b"));
    assert_eq!(tag_of("5m:f|x='a'"), None);
    assert_eq!(tag_of("5m:f|x='a||b||c'"), None);
}

#[test]
fn a_sweep_interval_sweeps_expired_entries_on_the_next_insert() {
    let budget = Arc::new(Budget::new(None));
    let s = MemoryStore::new(budget.clone());
    for i in 0..10 {
        drop(s.insert(&format!("k{i}"), i, 0.0)); // expired at once
    }
    assert_eq!(s.len(), 10);
    budget.set_sweep_interval(0.0);
    let swept = s.insert("live", 99, 60.0);
    assert_eq!(swept.len(), 10);
    assert_eq!((s.len(), budget.used()), (1, 1));
}

#[test]
fn a_chosen_entry_replaced_meanwhile_is_not_removed() {
    // The policy named the entry as it was inserted; a newer value of the key (a new
    // insertion) is another entry, and stays.
    let budget = Arc::new(Budget::new(Some(100)));
    let s = MemoryStore::<u32>::enlisted(budget.clone());
    let _ = s.insert("k", 1, 300.0);
    let hash = crate::key::hash_of("k");
    let (node, seq) = s.names(Slot::name)[0];
    let _ = s.insert("k", 2, 300.0);
    Evict::evict(
        &*s,
        &[Victim {
            store: 0,
            hash,
            node,
            seq,
        }],
    );
    assert_eq!(s.get_with("k", |v, _| *v), Some(2));
    let (node, seq) = s.names(Slot::name)[0];
    Evict::evict(
        &*s,
        &[Victim {
            store: 0,
            hash,
            node,
            seq,
        }],
    );
    assert_eq!(s.get_with("k", |v, _| *v), None);
    assert_eq!(budget.used(), 0);
}

#[test]
fn entries_removed_as_they_are_inserted_leave_no_node_behind() {
    // Four keys inserted and removed by four threads at once: many leave before the
    // inserting thread writes the policy's node to their slot.
    let budget = Arc::new(Budget::new(Some(1_000)));
    let s = MemoryStore::<u64>::enlisted(budget.clone());
    on_threads(&s, 4, |s, t| {
        for i in 0..20_000u64 {
            let key = format!("k{}", (i + t) % 4);
            if (i + t) % 2 == 0 {
                drop(s.insert(&key, i, 300.0));
            } else {
                let _ = s.remove(&key);
            }
        }
    });
    assert_eq!((budget.policy_len(), budget.used()), (s.len(), s.len()));
}

/// Runs `work(store, t)` on `n` threads at once, `t` the thread's number.
fn on_threads(s: &Arc<MemoryStore<u64>>, n: u64, work: fn(&MemoryStore<u64>, u64)) {
    let threads: Vec<_> = (0..n)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || work(&s, t))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn an_entry_of_a_table_fills_one_cache_line() {
    // The key's pointer and hash, the value (16 bytes), the slot's times, freshness, seq
    // and node.
    use super::table::Held;
    assert_eq!(std::mem::size_of::<Held<crate::codec::Stored>>(), 64);
    assert_eq!(std::mem::align_of::<Held<crate::codec::Stored>>(), 64);
}
