//! The store of pickled values that the file and Redis backends are, as the
//! [`Backend`](super::Backend) facade and the async driver use it.

use std::sync::Arc;
use std::time::Duration;

use crate::errors::CacheResult;
use crate::lease::Token;

/// A store of pickled values: the file and Redis backends. Its methods do I/O and are
/// called with the GIL released.
pub trait ByteStore: Send + Sync + 'static {
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
    /// Removes a key whose value (as `get` returned it) could not be decoded.
    fn discard_corrupt(&self, key: &str, _value: &[u8], _created_at: f64) -> CacheResult<()> {
        self.delete(key)
    }
    /// Whether misses take a lease that other processes see ([`ByteStore::lease`]).
    fn has_leases(&self) -> bool {
        false
    }
    /// The value of `key` (when `read`), else a lease on computing it, held as `token`
    /// for at most `lease`.
    fn lease(
        &self,
        key: &str,
        token: &Token,
        lease: Duration,
        read: bool,
    ) -> CacheResult<LeaseReply> {
        let _ = (token, lease);
        if read {
            if let Some((value, created)) = self.get(key)? {
                return Ok(LeaseReply::Found(value, created));
            }
        }
        Ok(LeaseReply::Acquired)
    }
    /// Stores `(value, created_at, ttl)` if given, and releases the lease of `token`.
    fn store_and_release(
        &self,
        key: &str,
        value: Option<(&[u8], f64, f64)>,
        token: &str,
    ) -> CacheResult<()> {
        let _ = token;
        self.store_if_given(key, value)
    }
    /// Stores `(value, created_at, ttl)` if given.
    fn store_if_given(&self, key: &str, value: Option<(&[u8], f64, f64)>) -> CacheResult<()> {
        match value {
            Some((data, created, ttl)) => self.set(key, data, created, ttl),
            None => Ok(()),
        }
    }
    /// Where the data lives, for messages.
    fn location(&self) -> String;

    /// The message of an outage of this store that has ended since the last look.
    fn take_recovery(&self) -> Option<String> {
        None
    }

    /// [`ByteStore::lease`] for the async API: by default on the runtime's blocking pool.
    fn lease_async(
        self: Arc<Self>,
        key: String,
        token: String,
        lease: Duration,
        read: bool,
    ) -> BoxFuture<CacheResult<LeaseReply>> {
        Box::pin(crate::runtime::blocking(move || {
            self.lease(&key, &Token::given(token), lease, read)
        }))
    }

    /// [`ByteStore::store_and_release`] for the async API.
    fn store_and_release_async(
        self: Arc<Self>,
        key: String,
        value: Option<(Vec<u8>, f64, f64)>,
        token: String,
    ) -> BoxFuture<CacheResult<()>> {
        Box::pin(crate::runtime::blocking(move || {
            let value = value.as_ref().map(|(d, c, t)| (d.as_slice(), *c, *t));
            self.store_and_release(&key, value, &token)
        }))
    }
}

/// A future of the async API, run on the runtime.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

/// What [`ByteStore::lease`] found.
pub enum LeaseReply {
    /// The stored value and its creation time.
    Found(Vec<u8>, f64),
    /// The lease is ours: compute, then [`ByteStore::store_and_release`].
    Acquired,
    /// Another caller (maybe in another process) holds the lease.
    Held,
}
