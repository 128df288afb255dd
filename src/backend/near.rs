//! The near tier of a Redis region (`configure(near_cache=True)`): a memory store in
//! this process in front of the region's Redis keys, kept coherent by the server
//! (`redis/near.rs`). A hit found there is a memory hit (same copy isolation, no
//! network); a value read from Redis fills it when the watch vouches for the read; a
//! write here removes the key at once (before the server's invalidation comes back).

use std::sync::Arc;

use pyo3::prelude::*;

use super::memory::{Budget, MemoryStore};
use super::redis::near::{enlist, Ticket, Watch};
use super::redis::RedisStore;
use crate::codec::Stored;
use crate::errors::CacheResult;
use crate::stamp::{Fresh, Stamp};

pub(crate) struct Near {
    pub(crate) tier: Arc<MemoryStore<Stored>>,
    pub(crate) watch: Arc<Watch>,
    pub(crate) redis: Arc<RedisStore>,
    /// `memory_copy`: values are copied in and out as the memory backend copies them.
    copy: bool,
}

impl Near {
    /// The near tier of a region of `url` whose keys start with `prefix`, counted
    /// against the package's near budget.
    pub(crate) fn open(
        url: &str,
        prefix: String,
        redis: Arc<RedisStore>,
        budget: Arc<Budget>,
        copy: bool,
    ) -> CacheResult<Near> {
        let tier = MemoryStore::enlisted(budget);
        let watch = enlist(url, prefix, &tier)?;
        Ok(Near {
            tier,
            watch,
            redis,
            copy,
        })
    }

    /// The near copy of `key`, if the tier serves now.
    #[inline]
    pub(crate) fn get<'py>(
        &self,
        py: Python<'py>,
        key: &str,
    ) -> PyResult<Option<(Bound<'py, PyAny>, Stamp)>> {
        if !self.watch.serves() {
            return Ok(None);
        }
        let Some((stored, stamp)) = self.tier.get_with(key, |v, s| (v.clone_ref(py), s)) else {
            return Ok(None);
        };
        Ok(Some((stored.materialize(py)?, stamp)))
    }

    /// A ticket for a read of `key` from Redis (`None`: the tier is not filled now).
    pub(crate) fn ticket(&self, key: &str) -> Option<Ticket> {
        self.watch.ticket(key)
    }

    /// Keeps `value`, read from Redis under `ticket` with `left` seconds to live
    /// (`None`: no expiry there), if no invalidation of its key came meanwhile. Checked
    /// again after the insert: an invalidation that ran between the check and the
    /// insert found nothing to remove, so the copy goes now.
    pub(crate) fn fill(
        &self,
        value: &Bound<'_, PyAny>,
        ticket: Option<Ticket>,
        key: &str,
        stamp: &Stamp,
        left: Option<f64>,
    ) {
        let Some(ticket) = ticket else { return };
        if left.is_some_and(|s| s <= 0.0) || !self.watch.admits(&ticket) {
            return;
        }
        let Ok(stored) = Stored::capture_as(value, self.copy) else {
            return; // kept as Redis keeps it: the next read asks Redis again
        };
        let fresh = stamp.fresh_for.is_finite().then_some(Fresh {
            fresh_for: stamp.fresh_for,
            took: stamp.took,
        });
        let weight = key.len();
        let ttl = left.unwrap_or(f64::INFINITY);
        let replaced = self
            .tier
            .insert_at(key, stored, stamp.created_at, ttl, fresh, weight);
        if !self.watch.admits(&ticket) {
            drop(self.tier.remove(key));
        }
        if self.tier.over_budget() {
            self.tier.budget().enforce();
        }
        drop(replaced);
    }

    /// `key` was written or deleted here.
    pub(crate) fn forget(&self, key: &str) {
        self.watch.invalidate(key);
    }

    /// Keys matching `pred` were removed here: their copies go, and reads under way
    /// fill nothing.
    pub(crate) fn forget_matching(&self, pred: impl Fn(&str) -> bool) {
        self.watch.bump();
        drop(self.tier.remove_matching(pred));
    }
}
