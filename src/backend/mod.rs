//! Backends, and the registry that gives each (package, backend, TTL) its own instance
//! as cachu 0.2.x does.

pub mod memory;
pub mod python;
pub mod sqlite;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;
use pyo3::prelude::*;

use crate::codec::{self, Stored};
use crate::config::{config_of, BackendKind};
use crate::errors::{CacheError, CacheResult};
use crate::pattern::glob_match;
use memory::{unix_now, MemoryStore};

/// A store of pickled values: the file and Redis backends. Its methods do I/O and are
/// called with the GIL released.
pub trait ByteStore: Send + Sync {
    /// The pickled value and its creation time, if present and not expired.
    fn get(&self, key: &str) -> CacheResult<Option<(Vec<u8>, f64)>>;
    /// Stores a pickled value created at `created_at` for `ttl` seconds.
    fn set(&self, key: &str, value: &[u8], created_at: f64, ttl: f64) -> CacheResult<()>;
    /// Removes one key.
    fn delete(&self, key: &str) -> CacheResult<()>;
    /// Removes the keys matching a glob (all of this store's keys for `None`).
    fn clear(&self, pattern: Option<&str>) -> CacheResult<usize>;
    /// The live keys matching a glob.
    fn keys(&self, pattern: Option<&str>) -> CacheResult<Vec<String>>;
    /// Removes a key whose value could not be decoded.
    fn discard_corrupt(&self, key: &str) -> CacheResult<()> {
        self.delete(key)
    }
    /// Where the data lives, for messages.
    fn location(&self) -> String;
}

enum Store {
    Memory(MemoryStore<Stored>),
    Bytes(Box<dyn ByteStore>),
    Null,
}

/// One backend instance: a (package, kind, TTL) region.
pub struct Backend {
    pub kind: BackendKind,
    pub package: Option<String>,
    pub ttl: i64,
    store: Store,
}

fn matches(pattern: Option<&str>, key: &str) -> bool {
    pattern.is_none_or(|p| glob_match(p, key))
}

impl Backend {
    fn new(kind: BackendKind, package: Option<String>, ttl: i64) -> CacheResult<Self> {
        let store = match kind {
            BackendKind::Memory => Store::Memory(MemoryStore::new()),
            BackendKind::Null => Store::Null,
            BackendKind::File => {
                let cfg = config_of(package.as_deref());
                let path = std::path::Path::new(&cfg.file_dir)
                    .join(crate::key::sqlite_file_name(package.as_deref(), ttl));
                Store::Bytes(Box::new(sqlite::SqliteStore::open(path)?))
            }
            BackendKind::Redis => {
                return Err(CacheError::Backend(
                    "backend='redis' is not available in this build yet; use 'memory', 'file' or 'null'"
                        .to_owned(),
                ))
            }
        };
        Ok(Backend {
            kind,
            package,
            ttl,
            store,
        })
    }

    /// Whether values are kept in this process (no I/O on reads).
    pub fn is_memory(&self) -> bool {
        matches!(self.store, Store::Memory(_))
    }

    /// A value for the caller and its creation time, or `None` on a miss.
    pub fn get<'py>(
        &self,
        py: Python<'py>,
        key: &str,
    ) -> PyResult<Option<(Bound<'py, PyAny>, f64)>> {
        match &self.store {
            Store::Memory(m) => {
                let Some((stored, created)) = m.get_with(key, |v, c| (v.clone_ref(py), c)) else {
                    return Ok(None);
                };
                Ok(Some((stored.materialize(py)?, created)))
            }
            Store::Bytes(b) => {
                let Some((data, created)) = py.detach(|| b.get(key))? else {
                    return Ok(None);
                };
                match codec::loads(py, &data) {
                    Ok(v) => Ok(Some((v, created))),
                    Err(err) => {
                        crate::warn::undecodable(py, &b.location(), key, &err);
                        let _ = py.detach(|| b.discard_corrupt(key));
                        Ok(None)
                    }
                }
            }
            Store::Null => Ok(None),
        }
    }

    /// Stores `value` for `ttl` seconds. Fails if the value cannot be kept (e.g. it
    /// cannot be pickled) or the backend fails.
    pub fn set(&self, value: &Bound<'_, PyAny>, key: &str, ttl: f64) -> PyResult<()> {
        let py = value.py();
        match &self.store {
            Store::Memory(m) => {
                let stored = Stored::capture(value)?;
                let replaced = m.insert(key, stored, ttl);
                drop(replaced);
            }
            Store::Bytes(b) => {
                write_bytes(py, b.as_ref(), key, codec::dumps(value)?.as_bytes(), ttl)?;
            }
            Store::Null => {}
        }
        Ok(())
    }

    /// Stores an already-captured value (memory only; others pickle it).
    pub fn set_stored(&self, py: Python<'_>, stored: &Stored, key: &str, ttl: f64) -> PyResult<()> {
        match &self.store {
            Store::Memory(m) => {
                let replaced = m.insert(key, stored.clone_ref(py), ttl);
                drop(replaced);
                Ok(())
            }
            // Already pickled: written as is, not unpickled to be pickled again.
            Store::Bytes(b) => match stored {
                Stored::Pickled(data) => {
                    write_bytes(py, b.as_ref(), key, data.bind(py).as_bytes(), ttl)
                }
                _ => self.set(&stored.materialize(py)?, key, ttl),
            },
            Store::Null => Ok(()),
        }
    }

    /// Removes one key.
    pub fn delete(&self, py: Python<'_>, key: &str) -> PyResult<()> {
        match &self.store {
            Store::Memory(m) => drop(m.remove(key)),
            Store::Bytes(b) => py.detach(|| b.delete(key))?,
            Store::Null => {}
        }
        Ok(())
    }

    /// Removes the keys matching a glob (every key of this instance for `None`);
    /// returns how many live entries were removed.
    pub fn clear(&self, py: Python<'_>, pattern: Option<&str>) -> PyResult<usize> {
        Ok(match &self.store {
            Store::Memory(m) => {
                let (removed, live) = m.remove_matching(|k| matches(pattern, k));
                drop(removed);
                live
            }
            Store::Bytes(b) => py.detach(|| b.clear(pattern))?,
            Store::Null => 0,
        })
    }

    /// The live keys matching a glob.
    pub fn keys(&self, py: Python<'_>, pattern: Option<&str>) -> PyResult<Vec<String>> {
        Ok(match &self.store {
            Store::Memory(m) => m.keys_matching(|k| matches(pattern, k)),
            Store::Bytes(b) => py.detach(|| b.keys(pattern))?,
            Store::Null => Vec::new(),
        })
    }

    /// How many live keys start with `prefix`.
    pub fn count_prefix(&self, py: Python<'_>, prefix: &str) -> PyResult<usize> {
        Ok(match &self.store {
            Store::Memory(m) => m.count_matching(|k| k.starts_with(prefix)),
            Store::Bytes(b) => {
                let pattern = format!("{}*", escape_glob(prefix));
                py.detach(|| b.keys(Some(&pattern)))?.len()
            }
            Store::Null => 0,
        })
    }

    /// How many live keys match a glob.
    pub fn count(&self, py: Python<'_>, pattern: Option<&str>) -> PyResult<usize> {
        Ok(match &self.store {
            Store::Memory(m) => m.count_matching(|k| matches(pattern, k)),
            _ => self.keys(py, pattern)?.len(),
        })
    }
}

/// Writes a pickled value created now, with the GIL released.
fn write_bytes(
    py: Python<'_>,
    store: &dyn ByteStore,
    key: &str,
    data: &[u8],
    ttl: f64,
) -> PyResult<()> {
    let created = unix_now();
    py.detach(|| store.set(key, data, created, ttl))?;
    Ok(())
}

/// Escapes the glob metacharacters of a literal.
pub fn escape_glob(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len());
    for c in literal.chars() {
        match c {
            '*' | '?' | '[' => {
                out.push('[');
                out.push(c);
                out.push(']');
            }
            _ => out.push(c),
        }
    }
    out
}

type InstanceKey = (Option<String>, BackendKind, i64);

static INSTANCES: LazyLock<Mutex<HashMap<InstanceKey, Arc<Backend>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The backend instance of a (package, kind, TTL) region, created on first use.
pub fn instance(package: Option<&str>, kind: BackendKind, ttl: i64) -> PyResult<Arc<Backend>> {
    let key = (package.map(str::to_owned), kind, ttl);
    if let Some(b) = INSTANCES.lock().get(&key) {
        return Ok(b.clone());
    }
    // Opening may do I/O (a SQLite file): not under the registry lock.
    let fresh = Arc::new(Backend::new(kind, key.0.clone(), ttl)?);
    Ok(INSTANCES.lock().entry(key).or_insert(fresh).clone())
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
    let removed: Vec<Arc<Backend>> = {
        let mut map = INSTANCES.lock();
        let doomed: Vec<InstanceKey> = map
            .keys()
            .filter(|k| package.is_none_or(|p| k.0.as_deref() == p))
            .cloned()
            .collect();
        doomed.iter().filter_map(|k| map.remove(k)).collect()
    };
    // Decorated functions re-resolve their backend on the next call.
    crate::config::bump_generation();
    removed.len()
}
