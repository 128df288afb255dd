//! The Redis backend, in the formats of cachu 0.2.x (FORMATS.md), so that processes
//! running either implementation share one server.
//!
//! - Values: 8 bytes of `created_at` (native-endian double) then the pickle, written
//!   with `SETEX`.
//! - A hit is one round trip; a miss is two, stampede lock included: one script "GET,
//!   or take the lease `lock:{key}`", then one script "SETEX and release the lease if
//!   it is still ours". The lease holds a random token and expires by itself, so a
//!   holder that dies delays the others by the lease at most.
//! - One redis-rs multiplexed connection per URL and process, made lazily with a
//!   connect timeout and used with a response timeout; every thread's requests share it
//!   (pipelined). It is driven by a single-threaded tokio runtime that the calling
//!   thread runs while it waits (with the GIL released): an uncontended call never
//!   hands over to another thread. Neither crosses `fork()`. After a transport failure
//!   a breaker answers at once for a while instead of paying the connect timeout on
//!   every call; one error message per outage, so the caller warns once.
//! - Clears and listings `SCAN` their own scope (region, and the package's key prefix or
//!   the names of its cached functions) and `UNLINK` in batches: keys that this library
//!   did not write are never touched.

pub mod cluster;
pub mod connector;
pub mod endpoint;
pub mod layout;
pub mod near;
pub mod op;
pub mod py;
pub mod sentinel;
pub mod slots;
pub mod topology;
pub mod wire;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use redis::{Cmd, Value};

use crate::backend::store::{ByteStore, LeaseReply};
use crate::config::{config_of, functions_of};
use crate::errors::CacheResult;
use crate::pattern::glob_match;
pub use connector::{connector, Connector};
pub use endpoint::Endpoint;
pub use topology::{topology, Op, Topology};
use wire::{pack_value, setex_seconds, split_value, Read};

/// A value read with its creation time and the seconds it has left (`None`: no expiry).
pub type Expiring = (Vec<u8>, f64, Option<f64>);

/// Keys asked per `SCAN` step and removed per `UNLINK`.
const SCAN_COUNT: usize = 1000;
const UNLINK_BATCH: usize = 500;

/// Drops the connection of every URL; the next call connects again.
pub fn forget_connections() {
    near::forget_watches();
    topology::forget_topologies();
    connector::forget_connections();
}

/// The keys of one (package, TTL region) on a shared server.
pub struct RedisStore {
    servers: Arc<Topology>,
    package: Option<String>,
    /// `{region}:`
    region: String,
}

impl RedisStore {
    /// An instance for `package` and `region`; connects lazily.
    pub fn open(url: &str, package: Option<String>, region: &str) -> CacheResult<Self> {
        Ok(RedisStore {
            servers: topology(url)?,
            package,
            region: format!("{region}:"),
        })
    }

    fn query<T: redis::FromRedisValue>(&self, key: &str, cmd: Cmd) -> CacheResult<T> {
        self.servers.query_as(Some(key), &Op::new(cmd))
    }

    /// The value of `key`, its creation time and the seconds it has left (`None`:
    /// no expiry), in one round trip: what a near cache reads.
    pub fn get_expiring(&self, key: &str) -> CacheResult<Option<Expiring>> {
        let reply = self.servers.query(Some(key), &wire::get_pttl_op(key))?;
        Ok(match wire::lease_reply_expiring(reply) {
            (LeaseReply::Found(data, created), left) => Some((data, created, left)),
            _ => None,
        })
    }

    /// [`ByteStore::lease`], with the seconds a value found has left when `read` is
    /// [`Read::Expiring`].
    pub fn lease_expiring(
        &self,
        key: &str,
        token: &crate::lease::Token,
        lease: Duration,
        read: Read,
    ) -> CacheResult<(LeaseReply, Option<f64>)> {
        let lock = self.servers.lock_key(key);
        let op = wire::lease_op(key, &lock, token.get(), lease, read);
        let reply: Value = self.servers.query(Some(key), &op)?;
        Ok(wire::lease_reply_expiring(reply))
    }

    /// The keys of this instance matching `pattern`, as `SCAN` finds them.
    fn scan(&self, pattern: Option<&str>) -> CacheResult<Vec<String>> {
        let scope = Scope::of(self.package.as_deref(), Some(&self.region));
        scan(&self.servers, &scope, pattern)
    }
}

/// The keys that belong to a package: in one region (`5m:`) or any, with the package's
/// key prefix, or without one, named after one of the package's cached functions.
struct Scope<'a> {
    region: Option<&'a str>,
    prefix: String,
    names: HashSet<String>,
}

impl<'a> Scope<'a> {
    fn of(package: Option<&str>, region: Option<&'a str>) -> Self {
        Scope {
            region,
            prefix: config_of(package).key_prefix.clone(),
            names: functions_of(package),
        }
    }

    /// The `SCAN MATCH` pattern that covers the scope (then filtered by `contains`).
    fn matcher(&self) -> String {
        format!(
            "{}{}*|*",
            self.region
                .map_or_else(|| "*:".to_owned(), crate::pattern::escape_glob),
            crate::pattern::escape_glob(&self.prefix)
        )
    }

    fn contains(&self, key: &str) -> bool {
        let rest = match self.region {
            Some(region) => key.strip_prefix(region),
            None => key
                .split_once(':')
                .filter(|(region, _)| crate::region::ttl_of_region(region).is_some())
                .map(|(_, rest)| rest),
        };
        let Some(rest) = rest else {
            return false;
        };
        let Some(bar) = rest.find('|') else {
            return false;
        };
        if self.prefix.is_empty() {
            self.names.contains(&rest[..bar])
        } else {
            rest.starts_with(&self.prefix) && bar >= self.prefix.len()
        }
    }
}

/// The keys of `scope` matching `pattern`: one `SCAN` over the keyspace of every
/// master.
fn scan(servers: &Topology, scope: &Scope<'_>, pattern: Option<&str>) -> CacheResult<Vec<String>> {
    let matcher = scope.matcher();
    let mut seen = HashSet::new();
    for node in servers.masters()? {
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<Vec<u8>>) = node.run(async |c| {
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&matcher)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .query_async(c)
                    .await
            })?;
            for raw in batch {
                let Ok(key) = String::from_utf8(raw) else {
                    continue;
                };
                if scope.contains(&key) && pattern.is_none_or(|p| glob_match(p, &key)) {
                    seen.insert(key);
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(seen.into_iter().collect())
}

/// Removes `keys` with `UNLINK`, in batches, on the server of each (one key per
/// command on a cluster, where a command's keys must share a slot); returns how many
/// existed. A key that moved meanwhile is removed where it went.
fn unlink(servers: &Topology, keys: &[String]) -> CacheResult<usize> {
    let cluster = matches!(servers, Topology::Cluster(_));
    let mut removed = 0;
    for (node, keys) in servers.group(keys)? {
        for batch in keys.chunks(UNLINK_BATCH) {
            if !cluster {
                removed += node.run(async |c| {
                    redis::cmd("UNLINK")
                        .arg(batch)
                        .query_async::<usize>(c)
                        .await
                })?;
                continue;
            }
            let mut pipe = redis::pipe();
            for key in batch {
                pipe.cmd("UNLINK").arg(key);
            }
            match node.run(async |c| pipe.query_async::<Vec<usize>>(c).await) {
                Ok(counts) => removed += counts.iter().sum::<usize>(),
                Err(_) => {
                    for key in batch {
                        let op = Op::new(redis::cmd("UNLINK").arg(key).clone());
                        removed += servers.query_as::<usize>(Some(key), &op)?;
                    }
                }
            }
        }
    }
    Ok(removed)
}

/// Clears the keys of `package` in every region of the servers at `url` (those
/// matching `pattern` if given): `cache_clear()` without a TTL, so that regions this
/// process never opened are cleared too.
pub fn clear_package(
    url: &str,
    package: Option<&str>,
    pattern: Option<&str>,
) -> CacheResult<usize> {
    let servers = topology(url)?;
    let keys = scan(&servers, &Scope::of(package, None), pattern)?;
    unlink(&servers, &keys)
}

impl ByteStore for RedisStore {
    fn get(&self, key: &str) -> CacheResult<Option<(Vec<u8>, f64)>> {
        let data: Option<Vec<u8>> = self.query(key, redis::cmd("GET").arg(key).clone())?;
        Ok(data.map(split_value))
    }

    fn set(&self, key: &str, value: &[u8], created_at: f64, ttl: f64) -> CacheResult<()> {
        if ttl <= 0.0 {
            return self.delete(key);
        }
        let packed = pack_value(value, created_at);
        self.query(
            key,
            redis::cmd("SETEX")
                .arg(key)
                .arg(setex_seconds(ttl))
                .arg(&packed)
                .clone(),
        )
    }

    fn delete(&self, key: &str) -> CacheResult<()> {
        self.query(key, redis::cmd("DEL").arg(key).clone())
    }

    fn clear(&self, pattern: Option<&str>) -> CacheResult<usize> {
        let keys = self.scan(pattern)?;
        unlink(&self.servers, &keys)
    }

    fn keys(&self, pattern: Option<&str>) -> CacheResult<Vec<String>> {
        self.scan(pattern)
    }

    /// Deletes an undecodable value only if it looks like this library's format (a
    /// pickle after the header) and is still the same value: data of other programs
    /// stored under a colliding key is left alone.
    fn discard_corrupt(&self, key: &str, value: &[u8], created_at: f64) -> CacheResult<()> {
        let pickled = value.len() >= 2 && value[0] == 0x80 && (2..=5).contains(&value[1]);
        let ours = created_at.is_finite() && (pickled || value.starts_with(crate::seal::MAGIC));
        if !ours {
            return Ok(());
        }
        let packed = pack_value(value, created_at);
        let op = wire::delete_if_same_op(key, &packed);
        self.servers.query_as::<i64>(Some(key), &op).map(drop)
    }

    fn has_leases(&self) -> bool {
        true
    }

    fn lease(
        &self,
        key: &str,
        token: &crate::lease::Token,
        lease: Duration,
        read: bool,
    ) -> CacheResult<LeaseReply> {
        self.lease_expiring(key, token, lease, Read::of(read, false))
            .map(|(reply, _)| reply)
    }

    fn store_and_release(
        &self,
        key: &str,
        value: Option<(&[u8], f64, f64)>,
        token: &str,
    ) -> CacheResult<()> {
        let lock = self.servers.lock_key(key);
        let op = wire::store_release_op(key, &lock, value, token);
        self.servers.query_as::<i64>(Some(key), &op).map(drop)
    }

    fn location(&self) -> String {
        self.servers.shown().to_owned()
    }

    fn take_recovery(&self) -> Option<String> {
        self.servers.known_nodes().iter().find_map(|c| {
            c.health.take_recovery().map(|n| {
                format!(
                    "cachu: Redis at {} recovered (outage {n} is over)",
                    c.endpoint.shown
                )
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::endpoint::mask_password;
    use super::*;

    #[test]
    fn url_parameters_of_redis_py_are_understood() {
        let ep = Endpoint::parse(
            "rediss://u:pw@h:6380/2?ssl_ca_certs=/tmp/ca.pem&socket_timeout=0.25&protocol=2",
        )
        .unwrap();
        assert_eq!(ep.url, "rediss://u:pw@h:6380/2?protocol=2");
        assert_eq!(
            ep.shown,
            "rediss://u:***@h:6380/2?ssl_ca_certs=/tmp/ca.pem&socket_timeout=0.25&protocol=2"
        );
        assert_eq!(ep.ca_file.as_deref(), Some("/tmp/ca.pem"));
        assert_eq!(ep.command_timeout, Duration::from_millis(250));
        let ep = Endpoint::parse("rediss://h?ssl_cert_reqs=none").unwrap();
        assert_eq!(ep.url, "rediss://h#insecure");
    }

    #[test]
    fn calls_from_a_thread_of_a_tokio_runtime_do_not_panic() {
        // Nothing listens on the port: the call fails, with an error, from a worker of
        // another runtime as from any thread.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = RedisStore::open(
            &format!("redis://127.0.0.1:{port}/0?socket_connect_timeout=0.5"),
            None,
            "5m",
        )
        .unwrap();
        let other = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = other.block_on(async { store.get("5m:f|x=1") }).unwrap_err();
        assert!(err.to_string().contains("unreachable"), "{err}");
    }

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        assert!(Endpoint::parse("http://h")
            .unwrap_err()
            .contains("redis://"));
        assert!(Endpoint::parse("redis://h?socket_timeout=-1")
            .unwrap_err()
            .contains("socket_timeout"));
        assert!(Endpoint::parse("redis://h:notaport/0").is_err());
    }

    #[test]
    fn values_round_trip_the_header() {
        let packed = pack_value(b"\x80\x04data", 1_700_000_000.5);
        assert_eq!(&packed[..8], &1_700_000_000.5f64.to_ne_bytes());
        let (v, t) = split_value(packed);
        assert_eq!((v.as_slice(), t), (&b"\x80\x04data"[..], 1_700_000_000.5));
        assert!(split_value(b"short".to_vec()).1.is_nan());
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(mask_password("redis://:s3cret@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(mask_password("redis://h:1/0"), "redis://h:1/0");
    }
}
