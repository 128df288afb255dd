//! Backends: [`Backend`], the facade over the store of one (package, backend, TTL)
//! region (memory, SQLite, Redis or null), and the decoding of stored values. The
//! instances themselves, one per region as cachu 0.2.x has them, are the registry's.

pub mod memory;
pub(crate) mod near;
pub mod py;
pub mod redis;
pub mod registry;
pub mod sqlite;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;

use crate::codec::{self, Stored};
use crate::config::{config_of, BackendKind};
use crate::errors::CacheResult;
use crate::key::Keyed;
pub use crate::lease::Token;
use crate::pattern::glob_match;
use crate::process::unix_now;
use crate::stamp::{self, Fresh, Stamp};
use memory::{Budget, MemoryStore};
pub use store::{BoxFuture, ByteStore, LeaseReply};

/// What [`Backend::lease`] found.
pub enum Lease<'py> {
    /// A cached value and its freshness.
    Found(Bound<'py, PyAny>, Stamp),
    /// The lease is ours: compute, then [`Backend::store_and_release`].
    Acquired,
    /// Another caller holds the lease.
    Held,
}

/// A value to store: what is kept, for how many seconds, and (for a function with
/// freshness controls) how long it is fresh and took to compute.
pub struct Kept {
    pub stored: Stored,
    pub ttl: f64,
    pub fresh: Option<Fresh>,
}

pub(crate) enum Store {
    Memory(Arc<MemoryStore<Stored>>),
    Bytes(Arc<dyn ByteStore>),
    Null,
}

/// One backend instance: a (package, kind, TTL) region.
pub struct Backend {
    pub kind: BackendKind,
    pub package: Option<String>,
    pub ttl: i64,
    pub(crate) store: Store,
    /// The near tier in front of a Redis region (`near_cache=True`).
    pub(crate) near: Option<near::Near>,
    /// The backend operations of sync calls (file, Redis) and the time they took,
    /// for `cachu.metrics()`.
    pub(crate) io_ops: std::sync::atomic::AtomicU64,
    pub(crate) io_ns: std::sync::atomic::AtomicU64,
}

fn matches(pattern: Option<&str>, key: &str) -> bool {
    pattern.is_none_or(|p| glob_match(p, key))
}

impl Backend {
    /// The instance of a (package, kind, TTL) region; a memory one counts against
    /// `budget`, the package's.
    pub(crate) fn new(
        kind: BackendKind,
        package: Option<String>,
        ttl: i64,
        budget: Arc<Budget>,
        near_budget: impl FnOnce() -> Arc<Budget>,
    ) -> CacheResult<Self> {
        let mut near = None;
        let store = match kind {
            BackendKind::Memory => Store::Memory(MemoryStore::enlisted(budget)),
            BackendKind::Null => Store::Null,
            BackendKind::File => {
                let cfg = config_of(package.as_deref());
                let path = std::path::Path::new(&cfg.file_dir)
                    .join(crate::region::sqlite_file_name(package.as_deref(), ttl));
                Store::Bytes(Arc::new(sqlite::SqliteStore::open(path)))
            }
            BackendKind::Redis => {
                let cfg = config_of(package.as_deref());
                let url = cfg.redis_endpoint_url();
                let region = crate::region::region_name(ttl);
                let redis = Arc::new(redis::RedisStore::open(&url, package.clone(), &region)?);
                if cfg.near_cache {
                    let prefix = format!("{region}:{}", cfg.key_prefix);
                    near = Some(near::Near::open(
                        &url,
                        prefix,
                        redis.clone(),
                        near_budget(),
                        cfg.memory_copy,
                    )?);
                }
                Store::Bytes(redis)
            }
        };
        Ok(Backend {
            kind,
            package,
            ttl,
            store,
            near,
            io_ops: std::sync::atomic::AtomicU64::new(0),
            io_ns: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Runs the I/O `f` of the byte store `b` with the GIL released; then, with the GIL
    /// back, reports an outage of the store that has ended (on the `cachu` logger).
    fn io<T: Send>(
        &self,
        py: Python<'_>,
        b: &Arc<dyn ByteStore>,
        f: impl FnOnce() -> T + Send,
    ) -> T {
        use std::sync::atomic::Ordering::Relaxed;
        let started = std::time::Instant::now();
        let out = crate::exit::detach(py, f);
        self.io_ops.fetch_add(1, Relaxed);
        self.io_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
        if let Some(message) = b.take_recovery() {
            crate::warn::log(py, crate::warn::Level::Info, &message);
        }
        out
    }

    /// Reports an outage of this backend's store that has ended, if one has: for the
    /// async API, whose I/O runs elsewhere.
    pub fn report_recovery(&self, py: Python<'_>) {
        if let Store::Bytes(b) = &self.store {
            if let Some(message) = b.take_recovery() {
                crate::warn::log(py, crate::warn::Level::Info, &message);
            }
        }
    }

    /// The store of pickled values, for the async API (`None` for memory and null).
    pub fn byte_store(&self) -> Option<Arc<dyn ByteStore>> {
        match &self.store {
            Store::Bytes(b) => Some(b.clone()),
            _ => None,
        }
    }

    /// Whether a call never waits for I/O (memory and null).
    pub fn is_local(&self) -> bool {
        !matches!(self.store, Store::Bytes(_))
    }

    /// Whether values are kept in this process (no I/O on reads).
    pub fn is_memory(&self) -> bool {
        matches!(self.store, Store::Memory(_))
    }

    /// A value for the caller and its freshness, or `None` on a miss.
    pub fn get<'py, K: Keyed + ?Sized>(
        &self,
        py: Python<'py>,
        key: &K,
    ) -> PyResult<Option<(Bound<'py, PyAny>, Stamp)>> {
        match &self.store {
            Store::Memory(_) => self.peek(py, key),
            Store::Bytes(b) => self.get_bytes(py, b, key.text()),
            Store::Null => Ok(None),
        }
    }

    /// [`Backend::get`] of a byte store, through its near tier if it has one.
    fn get_bytes<'py>(
        &self,
        py: Python<'py>,
        b: &Arc<dyn ByteStore>,
        key: &str,
    ) -> PyResult<Option<(Bound<'py, PyAny>, Stamp)>> {
        if let Some(near) = &self.near {
            if let Some(hit) = near.get(py, key)? {
                return Ok(Some(hit));
            }
            let ticket = near.ticket(key);
            let Some((data, created, left)) = self.io(py, b, || near.redis.get_expiring(key))?
            else {
                return Ok(None);
            };
            let found = self.decoded(py, b, key, &data, created);
            if let Some((value, stamp)) = &found {
                near.fill(value, ticket, key, stamp, left);
            }
            return Ok(found);
        }
        let Some((data, created)) = self.io(py, b, || b.get(key))? else {
            return Ok(None);
        };
        Ok(self.decoded(py, b, key, &data, created))
    }

    /// What is kept in this process: a memory region's value, or a Redis region's
    /// near copy (`None` for anything that needs I/O).
    #[inline]
    pub fn peek<'py, K: Keyed + ?Sized>(
        &self,
        py: Python<'py>,
        key: &K,
    ) -> PyResult<Option<(Bound<'py, PyAny>, Stamp)>> {
        match (&self.store, &self.near) {
            (Store::Memory(m), _) => {
                let Some((stored, stamp)) = m.get_with(key, |v, s| (v.clone_ref(py), s)) else {
                    return Ok(None);
                };
                Ok(Some((stored.materialize(py)?, stamp)))
            }
            (_, Some(near)) => near.get(py, key.text()),
            _ => Ok(None),
        }
    }

    /// Whether calls look for a near copy before asking Redis.
    #[inline]
    pub fn has_near(&self) -> bool {
        self.near.is_some()
    }

    /// A stored value decoded (an undecodable one of this library's is discarded).
    fn decoded<'py>(
        &self,
        py: Python<'py>,
        b: &Arc<dyn ByteStore>,
        key: &str,
        data: &[u8],
        created: f64,
    ) -> Option<(Bound<'py, PyAny>, Stamp)> {
        let signing = self.signing_key();
        decode_or_discard(py, b.as_ref(), signing.as_deref(), key, data, created)
    }

    /// A write or delete of `key` here: its near copy goes.
    fn forget_near(&self, key: &str) {
        if let Some(near) = &self.near {
            near.forget(key);
        }
    }

    /// The package's signing key, if values are signed.
    pub fn signing_key(&self) -> Option<Arc<[u8]>> {
        config_of(self.package.as_deref())
            .signing_key
            .as_ref()
            .map(|s| s.0.clone())
    }

    /// What a pickle is stored as: with the trailer of its freshness if it has its
    /// own (`stamp.rs`), signed when the package has a signing key.
    pub fn encode(&self, pickle: &[u8], fresh: Option<Fresh>) -> Vec<u8> {
        let stamped;
        let pickle = match fresh {
            Some(fresh) => {
                let mut data = pickle.to_vec();
                stamp::append(&mut data, fresh);
                stamped = data;
                &stamped[..]
            }
            None => pickle,
        };
        match self.signing_key() {
            Some(key) => crate::seal::seal(&key, pickle),
            None => pickle.to_vec(),
        }
    }

    /// What a byte store keeps of a captured value: its pickle (a value kept pickled is
    /// written as is, not unpickled to be pickled again), signed when the package
    /// signs. For every write, sync and async.
    pub fn encode_stored(
        &self,
        py: Python<'_>,
        stored: &Stored,
        fresh: Option<Fresh>,
    ) -> PyResult<Vec<u8>> {
        Ok(match stored {
            Stored::Pickled(data) => self.encode(data.bind(py).as_bytes(), fresh),
            other => self.encode(codec::dumps(&other.materialize(py)?)?.as_bytes(), fresh),
        })
    }

    /// Writes a pickled value created now.
    fn write_bytes(
        &self,
        py: Python<'_>,
        store: &Arc<dyn ByteStore>,
        key: &str,
        data: &[u8],
        ttl: f64,
    ) -> PyResult<()> {
        let created = unix_now();
        self.io(py, store, || store.set(key, data, created, ttl))?;
        Ok(())
    }

    /// Whether misses take a lease that other processes honour (Redis).
    pub fn has_leases(&self) -> bool {
        matches!(&self.store, Store::Bytes(b) if b.has_leases())
    }

    /// The value of `key` (when `read`), else a lease on computing it: one round trip.
    /// An undecodable value counts as absent.
    pub fn lease<'py>(
        &self,
        py: Python<'py>,
        key: &str,
        token: &Token,
        lease: Duration,
        read: bool,
    ) -> PyResult<Lease<'py>> {
        let Store::Bytes(b) = &self.store else {
            return Ok(Lease::Acquired);
        };
        let (reply, near) = match &self.near {
            Some(near) if read => {
                let ticket = near.ticket(key);
                let read = redis::wire::Read::Expiring;
                let (reply, left) =
                    self.io(py, b, || near.redis.lease_expiring(key, token, lease, read))?;
                (reply, Some((near, ticket, left)))
            }
            _ => (self.io(py, b, || b.lease(key, token, lease, read))?, None),
        };
        Ok(match reply {
            LeaseReply::Found(data, created) => match self.decoded(py, b, key, &data, created) {
                Some((v, stamp)) => {
                    if let Some((near, ticket, left)) = near {
                        near.fill(&v, ticket, key, &stamp, left);
                    }
                    Lease::Found(v, stamp)
                }
                None => return self.lease(py, key, token, lease, false),
            },
            LeaseReply::Acquired => Lease::Acquired,
            LeaseReply::Held => Lease::Held,
        })
    }

    /// Stores the value (if given) and releases the lease of `token`.
    pub fn store_and_release(
        &self,
        py: Python<'_>,
        value: Option<&Kept>,
        key: &str,
        token: &str,
    ) -> PyResult<()> {
        let Store::Bytes(b) = &self.store else {
            return value.map_or(Ok(()), |kept| self.set_stored(py, kept, key));
        };
        let pickled = value
            .map(|k| Ok::<_, PyErr>((self.encode_stored(py, &k.stored, k.fresh)?, k.ttl)))
            .transpose()?;
        let created = unix_now();
        let value = pickled
            .as_ref()
            .map(|(d, ttl)| (d.as_slice(), created, *ttl));
        let stored = value.is_some();
        self.io(py, b, || b.store_and_release(key, value, token))?;
        if stored {
            self.forget_near(key);
        }
        Ok(())
    }

    /// Stores `value` for `ttl` seconds (with its freshness, if it has its own). Fails
    /// if the value cannot be kept (e.g. it cannot be pickled) or the backend fails.
    pub fn set(
        &self,
        value: &Bound<'_, PyAny>,
        key: &str,
        ttl: f64,
        fresh: Option<Fresh>,
    ) -> PyResult<()> {
        let py = value.py();
        match &self.store {
            Store::Memory(m) => {
                let copy = crate::config::config_of(self.package.as_deref()).memory_copy;
                let stored = Stored::capture_as(value, copy)?;
                let weight = weight_of(py, m, key, &stored);
                let replaced = m.insert_at(key, stored, unix_now(), ttl, fresh, weight);
                drop(replaced);
                self.keep_budget(m);
            }
            Store::Bytes(b) => {
                let data = self.encode(codec::dumps(value)?.as_bytes(), fresh);
                self.write_bytes(py, b, key, &data, ttl)?;
                self.forget_near(key);
            }
            Store::Null => {}
        }
        Ok(())
    }

    /// Stores an already-captured value (memory only; others pickle it).
    pub fn set_stored<K: Keyed + ?Sized>(
        &self,
        py: Python<'_>,
        kept: &Kept,
        key: &K,
    ) -> PyResult<()> {
        match &self.store {
            Store::Memory(m) => {
                let stored = kept.stored.clone_ref(py);
                let weight = weight_of(py, m, key.text(), &stored);
                let replaced = m.insert_at(key, stored, unix_now(), kept.ttl, kept.fresh, weight);
                drop(replaced);
                self.keep_budget(m);
                Ok(())
            }
            Store::Bytes(b) => {
                let data = self.encode_stored(py, &kept.stored, kept.fresh)?;
                self.write_bytes(py, b, key.text(), &data, kept.ttl)?;
                self.forget_near(key.text());
                Ok(())
            }
            Store::Null => Ok(()),
        }
    }

    /// When this store could not meet the package's budget alone, its siblings (the
    /// package's other memory regions) give up entries.
    fn keep_budget(&self, m: &MemoryStore<Stored>) {
        if m.over_budget() {
            m.budget().enforce();
        }
    }

    /// Removes the expired entries of a memory region now; returns how many (other
    /// stores expire entries by themselves: 0).
    pub fn sweep(&self) -> usize {
        match &self.store {
            Store::Memory(m) => m.sweep().len(),
            _ => 0,
        }
    }

    /// A memory region's entries evicted for the budget and expired ones swept so far.
    pub fn memory_counters(&self) -> (u64, u64) {
        match &self.store {
            Store::Memory(m) => m.counters(),
            _ => (0, 0),
        }
    }

    /// Removes one key.
    pub fn delete(&self, py: Python<'_>, key: &str) -> PyResult<()> {
        match &self.store {
            Store::Memory(m) => drop(m.remove(key)),
            Store::Bytes(b) => {
                self.io(py, b, || b.delete(key))?;
                self.forget_near(key);
            }
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
            Store::Bytes(b) => {
                let removed = self.io(py, b, || b.clear(pattern))?;
                self.forget_near_matching(pattern);
                removed
            }
            Store::Null => 0,
        })
    }

    /// Keys matching `pattern` were cleared (by this region or for its package): their
    /// near copies go.
    pub fn forget_near_matching(&self, pattern: Option<&str>) {
        if let Some(near) = &self.near {
            near.forget_matching(|k| matches(pattern, k));
        }
    }

    /// Removes the entries of functions tagged `tag`; returns how many live ones were
    /// removed. The memory store finds them in its tag index; the others by a glob.
    pub fn clear_tag(&self, py: Python<'_>, tag: &str) -> PyResult<usize> {
        let Store::Memory(m) = &self.store else {
            return self.clear(py, crate::pattern::tag_pattern(tag).as_deref());
        };
        let normalized = crate::key::normalize_tag(tag);
        if normalized.is_empty() {
            return self.clear(py, None);
        }
        let (removed, live) = m.remove_tag(&normalized[1..normalized.len() - 1]);
        drop(removed);
        Ok(live)
    }

    /// The live keys matching a glob.
    pub fn keys(&self, py: Python<'_>, pattern: Option<&str>) -> PyResult<Vec<String>> {
        Ok(match &self.store {
            Store::Memory(m) => m.keys_matching(|k| matches(pattern, k)),
            Store::Bytes(b) => self.io(py, b, || b.keys(pattern))?,
            Store::Null => Vec::new(),
        })
    }

    /// How many live keys start with `prefix`.
    pub fn count_prefix(&self, py: Python<'_>, prefix: &str) -> PyResult<usize> {
        Ok(match &self.store {
            Store::Memory(m) => m.count_matching(|k| k.starts_with(prefix)),
            Store::Bytes(b) => {
                let pattern = format!("{}*", escape_glob(prefix));
                self.io(py, b, || b.keys(Some(&pattern)))?.len()
            }
            Store::Null => 0,
        })
    }

    /// What this instance holds, for `Backend.stats()`: entries, and for the memory
    /// backend the bytes of its tables and keys and (shallow, `sys.getsizeof`) of its
    /// values.
    pub fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let d = pyo3::types::PyDict::new(py);
        d.set_item("backend", self.kind.name())?;
        match &self.store {
            Store::Memory(m) => {
                let (entries, table, values) = m.footprint(|v| v.clone_ref(py));
                let value_bytes: usize = values.iter().map(|v| v.own_size(py)).sum();
                d.set_item("entries", entries)?;
                d.set_item("table_bytes", table)?;
                d.set_item("value_bytes", value_bytes)?;
                d.set_item(
                    "bytes_per_entry",
                    if entries == 0 {
                        0.0
                    } else {
                        (table + value_bytes) as f64 / entries as f64
                    },
                )?;
                let budget = &m.budget();
                d.set_item("package_entries", budget.used())?;
                d.set_item("memory_maxsize", budget.max())?;
                let (max_bytes, bytes) = budget.bytes();
                d.set_item("memory_maxbytes", max_bytes)?;
                d.set_item("package_bytes", bytes)?;
            }
            _ => {
                d.set_item("entries", self.count(py, None)?)?;
            }
        }
        if let Some(near) = &self.near {
            use std::sync::atomic::Ordering::Relaxed;
            d.set_item("near_entries", near.tier.len())?;
            d.set_item("near_cache_maxsize", near.tier.budget().max())?;
            d.set_item("near_serving", near.watch.serves())?;
            d.set_item("near_invalidations", near.watch.invalidations.load(Relaxed))?;
            d.set_item("near_flushes", near.watch.flushes.load(Relaxed))?;
            d.set_item("near_trouble", near.watch.trouble.lock().clone())?;
        }
        Ok(d)
    }

    /// How many live keys match a glob.
    pub fn count(&self, py: Python<'_>, pattern: Option<&str>) -> PyResult<usize> {
        Ok(match &self.store {
            Store::Memory(m) => m.count_matching(|k| matches(pattern, k)),
            _ => self.keys(py, pattern)?.len(),
        })
    }
}

/// The bytes an entry counts against `memory_maxbytes`: its key, and its value as
/// `sys.getsizeof` measures it and its direct members (a value kept pickled: its
/// pickle). Measured only when the package has such a bound.
fn weight_of(py: Python<'_>, m: &MemoryStore<Stored>, key: &str, stored: &Stored) -> usize {
    if !m.budget().weighs() {
        return key.len();
    }
    key.len() + stored.weight(py)
}

/// What a stored value turned out to be.
pub enum Decoded<'py> {
    Value(Bound<'py, PyAny>, Stamp),
    /// Not usable, and left as it is (refused by the signature check, or without a
    /// creation time).
    Miss,
    /// Could not be unpickled: the caller discards it (`ByteStore::discard_corrupt`).
    Corrupt,
}

/// Unpickles a stored value. A refusal of the signature check or an undecodable value
/// is reported (once per place and kind); a refused value is never unpickled.
pub fn decode<'py>(
    py: Python<'py>,
    store: &dyn ByteStore,
    signing_key: Option<&[u8]>,
    key: &str,
    data: &[u8],
    created: f64,
) -> Decoded<'py> {
    let pickle = match crate::seal::open(signing_key, data) {
        Ok(p) => p,
        Err(why) => {
            crate::warn::once(
                py,
                &format!("refused:{}:{why:?}", store.location()),
                &format!(
                    "cachu: a cached value in {} was not unpickled: {why}; key {key:?} is treated as a miss",
                    store.location()
                ),
            );
            return Decoded::Miss;
        }
    };
    let (pickle, fresh) = stamp::split(pickle);
    match codec::loads(py, pickle) {
        Ok(v) if created.is_finite() => Decoded::Value(v, Stamp::of(created, fresh)),
        Ok(_) => Decoded::Miss,
        Err(err) => {
            crate::warn::undecodable(py, &store.location(), key, &err);
            Decoded::Corrupt
        }
    }
}

/// [`decode`], discarding an undecodable value now (with the GIL released).
fn decode_or_discard<'py>(
    py: Python<'py>,
    store: &dyn ByteStore,
    signing_key: Option<&[u8]>,
    key: &str,
    data: &[u8],
    created: f64,
) -> Option<(Bound<'py, PyAny>, Stamp)> {
    match decode(py, store, signing_key, key, data, created) {
        Decoded::Value(v, stamp) => Some((v, stamp)),
        Decoded::Miss => None,
        Decoded::Corrupt => {
            let _ = crate::exit::detach(py, || store.discard_corrupt(key, data, created));
            None
        }
    }
}

pub use crate::pattern::escape_glob;
