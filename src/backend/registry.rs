//! The backend instances: one per (package, backend, TTL) region, as cachu 0.2.x has
//! them, the memory budgets of packages, and what a configuration change does to them.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;
use pyo3::prelude::*;

use super::memory::Budget;
use super::{Backend, Store};
use crate::config::{self, BackendKind, Change, Config, Listener};
use crate::errors::{repr_of, CacheError, CacheResult};
use pyo3::types::PyString;

/// Tells the configuration core how the backends check and follow a change.
pub fn listen() {
    config::listen(Listener {
        check: check_config,
        changed: config_changed,
    });
}

/// A configuration the backends cannot use is refused before it takes effect.
fn check_config(cfg: &Config) -> CacheResult<()> {
    super::redis::layout::Layout::parse(&cfg.redis_url)
        .map(drop)
        .map_err(|why| {
            let shown = Python::attach(|py| repr_of(PyString::new(py, &cfg.redis_url).as_any()));
            CacheError::config("redis_url", shown, why)
        })
}

/// Regions opened under an old file directory or Redis URL give way to new ones; a new
/// memory bound applies at once.
fn config_changed(change: &Change<'_>) {
    if change.package == Some(config::EVERY_PACKAGE) {
        // The defaults: every package that reads them changes with them.
        let mut packages: Vec<Option<String>> =
            INSTANCES.lock().keys().map(|k| k.0.clone()).collect();
        packages.extend(BUDGETS.lock().keys().cloned());
        packages.sort();
        packages.dedup();
        for p in packages
            .iter()
            .filter(|p| !config::has_own_config(p.as_deref()))
        {
            config_changed(&Change {
                package: p.as_deref(),
                old: change.old,
                new: change.new,
            });
        }
        return;
    }
    let (old, new) = (change.old, change.new);
    if old.file_dir != new.file_dir {
        forget_kind(change.package, BackendKind::File);
    }
    if old.redis_endpoint_url() != new.redis_endpoint_url() {
        forget_kind(change.package, BackendKind::Redis);
    }
    let near_prefix_moved = new.near_cache && old.key_prefix != new.key_prefix;
    if old.near_cache != new.near_cache
        || old.near_cache_maxsize != new.near_cache_maxsize
        || near_prefix_moved
    {
        near_budget_of(change.package).set_max(Some(new.near_cache_maxsize));
        forget_kind(change.package, BackendKind::Redis);
    }
    if old.memory_maxsize != new.memory_maxsize {
        set_budget(change.package, new.memory_maxsize);
    }
    if old.memory_maxbytes != new.memory_maxbytes {
        budget_of(change.package).set_max_bytes(new.memory_maxbytes);
    }
    if old.memory_sweep_interval.to_bits() != new.memory_sweep_interval.to_bits() {
        budget_of(change.package).set_sweep_interval(new.memory_sweep_interval);
    }
}

type InstanceKey = (Option<String>, BackendKind, i64);

static BUDGETS: LazyLock<Mutex<HashMap<Option<String>, Arc<Budget>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The memory budget of `package` (`memory_maxsize`), shared by its memory regions.
pub fn budget_of(package: Option<&str>) -> Arc<Budget> {
    let max = config::config_of(package).memory_maxsize;
    BUDGETS
        .lock()
        .entry(package.map(str::to_owned))
        .or_insert_with(|| {
            let budget = Budget::new(max);
            let cfg = config::config_of(package);
            budget.set_sweep_interval(cfg.memory_sweep_interval);
            if cfg.memory_maxbytes.is_some() {
                budget.set_max_bytes(cfg.memory_maxbytes);
            }
            Arc::new(budget)
        })
        .clone()
}

static NEAR_BUDGETS: LazyLock<Mutex<HashMap<Option<String>, Arc<Budget>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The near cache budget of `package` (`near_cache_maxsize`), shared by its Redis
/// regions' near tiers.
pub fn near_budget_of(package: Option<&str>) -> Arc<Budget> {
    let max = config::config_of(package).near_cache_maxsize;
    NEAR_BUDGETS
        .lock()
        .entry(package.map(str::to_owned))
        .or_insert_with(|| Arc::new(Budget::new(Some(max))))
        .clone()
}

/// Applies a new `memory_maxsize` to the package's existing regions: a lower bound
/// evicts what is over it now, not at the next inserts.
pub fn set_budget(package: Option<&str>, max: Option<usize>) {
    budget_of(package).set_max(max);
}

static INSTANCES: LazyLock<Mutex<HashMap<InstanceKey, Arc<Backend>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The backend instance of a (package, kind, TTL) region, created on first use.
pub fn instance(package: Option<&str>, kind: BackendKind, ttl: i64) -> PyResult<Arc<Backend>> {
    let key = (package.map(str::to_owned), kind, ttl);
    if let Some(b) = INSTANCES.lock().get(&key) {
        return Ok(b.clone());
    }
    // Opening may do I/O (a SQLite file): not under the registry lock.
    let near_budget = || near_budget_of(package);
    let fresh = Arc::new(Backend::new(
        kind,
        key.0.clone(),
        ttl,
        budget_of(package),
        near_budget,
    )?);
    Ok(INSTANCES.lock().entry(key).or_insert(fresh).clone())
}

/// Every instance created so far, of every package.
pub fn all_instances() -> Vec<Arc<Backend>> {
    INSTANCES.lock().values().cloned().collect()
}

/// Every instance created so far for `package`, optionally of one kind and TTL.
pub fn instances_of(
    package: Option<&str>,
    kind: Option<BackendKind>,
    ttl: Option<i64>,
) -> Vec<Arc<Backend>> {
    INSTANCES
        .lock()
        .values()
        .filter(|b| b.package.as_deref() == package)
        .filter(|b| kind.is_none_or(|k| b.kind == k))
        .filter(|b| ttl.is_none_or(|t| b.ttl == t))
        .cloned()
        .collect()
}

/// Forgets every instance of `package` (all packages for `None`), closing their files
/// and connections once no decorated function holds them.
pub fn forget(package: Option<Option<&str>>) -> usize {
    let removed = forget_where(|k| package.is_none_or(|p| k.0.as_deref() == p));
    if package.is_none() {
        super::redis::forget_connections();
    }
    removed
}

/// Forgets the instances of one kind of `package`: its file directory or Redis URL
/// changed, and the next call opens the new one. (Memory regions are kept.)
pub fn forget_kind(package: Option<&str>, kind: BackendKind) -> usize {
    forget_where(|k| k.0.as_deref() == package && k.1 == kind)
}

fn forget_where(doomed: impl Fn(&InstanceKey) -> bool) -> usize {
    let removed: Vec<Arc<Backend>> = {
        let mut map = INSTANCES.lock();
        let keys: Vec<InstanceKey> = map.keys().filter(|k| doomed(k)).cloned().collect();
        keys.iter().filter_map(|k| map.remove(k)).collect()
    };
    // Decorated functions re-resolve their backend on the next call. A thread may
    // still hold a forgotten instance in its copy of a function's settings until then:
    // the entries of memory instances go now, and stop counting against the budget.
    config::bump_generation();
    for backend in &removed {
        if let Store::Memory(m) = &backend.store {
            drop(m.remove_matching(|_| true));
        }
        if let Some(near) = &backend.near {
            near.forget_matching(|_| true);
        }
    }
    removed.len()
}
