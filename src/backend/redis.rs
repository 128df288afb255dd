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

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, Script, Value};
use tokio::runtime::Runtime;

use super::{ByteStore, LeaseReply};
use crate::config::{config_of, functions_of};
use crate::errors::{CacheError, CacheResult};
use crate::pattern::glob_match;

/// How long the breaker answers "down" before one caller tries the server again.
const BREAKER: Duration = Duration::from_secs(1);
/// Keys asked per `SCAN` step and removed per `UNLINK`.
const SCAN_COUNT: usize = 1000;
const UNLINK_BATCH: usize = 500;
const HEADER: usize = 8;

/// `GET key`, or take the lease on a miss. Returns the value (bulk), or 1 when the
/// lease is ours, 0 when another holds it.
const LEASE_SRC: &str = r"
if ARGV[3] == '1' then
  local v = redis.call('GET', KEYS[1])
  if v then return v end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[2]) == ARGV[1] then return 1 end
return 0";
static LEASE: LazyLock<Script> = LazyLock::new(|| Script::new(LEASE_SRC));

/// Store the value (when ARGV[2] is not empty) and release the lease if it is ours.
const STORE_RELEASE_SRC: &str = r"
if ARGV[2] ~= '' then
  redis.call('SETEX', KEYS[1], ARGV[1], ARGV[2])
end
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1";
static STORE_RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(STORE_RELEASE_SRC));

/// Delete a value only if it is still the one that failed to decode.
static DELETE_IF_SAME: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0",
    )
});

/// How to reach the server: what the URL says, with the query parameters that
/// redis-py also understands (`ssl_ca_certs`, `ssl_cert_reqs`, `socket_timeout`,
/// `socket_connect_timeout`) taken out.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// The URL given to redis-rs.
    url: String,
    /// The URL with any password masked, for messages.
    pub shown: String,
    ca_file: Option<String>,
    connect_timeout: Duration,
    command_timeout: Duration,
}

fn seconds_param(name: &str, value: &str) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{name}={value:?} in the URL must be a positive number of seconds"))
}

impl Endpoint {
    /// Parses a `redis://`, `rediss://` or `unix://` URL.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        if !["redis://", "rediss://", "unix://"]
            .iter()
            .any(|s| url.starts_with(s))
        {
            return Err("expected a URL starting with redis://, rediss:// or unix://".into());
        }
        let (head, fragment) = match url.split_once('#') {
            Some((h, f)) => (h, Some(f)),
            None => (url, None),
        };
        let (base, query) = head.split_once('?').unwrap_or((head, ""));
        let mut kept = Vec::new();
        let mut ep = Endpoint {
            url: String::new(),
            shown: mask_password(url),
            ca_file: None,
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
        };
        let mut insecure = fragment == Some("insecure");
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "ssl_ca_certs" => ep.ca_file = Some(v.to_owned()),
                "ssl_cert_reqs" => match v.to_ascii_lowercase().as_str() {
                    "none" => insecure = true,
                    "required" | "optional" => {}
                    _ => {
                        return Err(format!(
                            "ssl_cert_reqs={v:?} in the URL must be none, optional or required"
                        ))
                    }
                },
                "socket_timeout" => ep.command_timeout = seconds_param(k, v)?,
                "socket_connect_timeout" => ep.connect_timeout = seconds_param(k, v)?,
                _ => kept.push(pair),
            }
        }
        let mut rebuilt = base.to_owned();
        if !kept.is_empty() {
            rebuilt.push('?');
            rebuilt.push_str(&kept.join("&"));
        }
        if insecure {
            rebuilt.push_str("#insecure");
        }
        ep.url = rebuilt;
        // redis-rs checks the rest (host, port, database number).
        redis::IntoConnectionInfo::into_connection_info(ep.url.as_str())
            .map_err(|e| format!("it is not a valid Redis URL ({e})"))?;
        Ok(ep)
    }

    fn client(&self) -> CacheResult<redis::Client> {
        let fail = |e: RedisError| CacheError::Backend(format!("Redis at {}: {e}", self.shown));
        if self.url.starts_with("rediss://") {
            // rustls needs one process-wide crypto provider; another library may have
            // installed one already, which is as good.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        match &self.ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    CacheError::Backend(format!(
                        "Redis at {}: cannot read ssl_ca_certs file {path:?}: {e}",
                        self.shown
                    ))
                })?;
                redis::Client::build_with_tls(
                    self.url.as_str(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
                .map_err(fail)
            }
            None => redis::Client::open(self.url.as_str()).map_err(fail),
        }
    }
}

/// `redis://user:secret@host` → `redis://user:***@host`.
fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let auth_end = rest.find('/').unwrap_or(rest.len());
    match rest[..auth_end].rfind('@') {
        Some(at) => {
            let auth = &rest[..at];
            let user = auth.split_once(':').map_or(auth, |(u, _)| u);
            let masked = if auth.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_owned()
            };
            format!("{scheme}://{masked}{}", &rest[at..])
        }
        None => url.to_owned(),
    }
}

/// Whether the server is reachable, and since when it is not.
struct Health {
    down: AtomicBool,
    /// Milliseconds since `epoch` before which calls fail without trying.
    retry_at: AtomicU64,
    epoch: Instant,
    outages: AtomicU64,
    /// The message of the current outage: the same text for every call of it.
    message: Mutex<String>,
}

impl Health {
    fn new() -> Self {
        Health {
            down: AtomicBool::new(false),
            retry_at: AtomicU64::new(0),
            epoch: Instant::now(),
            outages: AtomicU64::new(0),
            message: Mutex::new(String::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// While the breaker is open, every caller but one per period fails at once.
    fn admit(&self) -> CacheResult<()> {
        if !self.down.load(Ordering::Acquire) {
            return Ok(());
        }
        let now = self.now_ms();
        let at = self.retry_at.load(Ordering::Acquire);
        let next = now + BREAKER.as_millis() as u64;
        if now >= at
            && self
                .retry_at
                .compare_exchange(at, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return Ok(()); // this caller probes the server
        }
        Err(self.outage_error())
    }

    /// The error of the current outage.
    fn outage_error(&self) -> CacheError {
        CacheError::Backend(self.message.lock().clone())
    }

    fn failed(&self, shown: &str, err: &dyn std::fmt::Display) -> CacheError {
        self.retry_at.store(
            self.now_ms() + BREAKER.as_millis() as u64,
            Ordering::Release,
        );
        let mut message = self.message.lock();
        if !self.down.swap(true, Ordering::AcqRel) {
            let n = self.outages.fetch_add(1, Ordering::Relaxed) + 1;
            *message = format!("Redis at {shown} is unreachable (outage {n}: {err})");
        }
        CacheError::Backend(message.clone())
    }

    fn ok(&self) {
        if self.down.load(Ordering::Relaxed) {
            self.down.store(false, Ordering::Release);
        }
    }
}

/// A connection and its number.
type Numbered = (u64, MultiplexedConnection);

/// This process's connection to one server, and the runtime that drives it.
struct Mux {
    pid: u32,
    runtime: Arc<Runtime>,
    /// The connection and its number (a failed one is dropped only if not replaced yet).
    con: Option<Numbered>,
    made: u64,
}

/// The keys of one (package, TTL region) on a shared server.
pub struct RedisStore {
    conn: Arc<Connector>,
    package: Option<String>,
    /// `{region}:`
    region: String,
}

/// Whether the error came from the server (the connection is still in step) rather
/// than from the transport.
fn is_reply_error(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(_) | ErrorKind::UnexpectedReturnType
    )
}

/// The connections to one server URL, shared by every region and package that uses
/// it, with the server's health (which the asyncio client of the async API shares).
pub struct Connector {
    endpoint: Endpoint,
    client: redis::Client,
    mux: Mutex<Option<Mux>>,
    /// Held while a connection is made, so that threads that find none open one.
    connecting: Mutex<()>,
    health: Health,
}

static CONNECTORS: LazyLock<Mutex<HashMap<String, Arc<Connector>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The connector of `url`, made on first use (no connection is opened yet).
pub fn connector(url: &str) -> CacheResult<Arc<Connector>> {
    if let Some(c) = CONNECTORS.lock().get(url) {
        return Ok(c.clone());
    }
    let endpoint =
        Endpoint::parse(url).map_err(|e| CacheError::config("redis_url", format!("{url:?}"), e))?;
    let client = endpoint.client()?;
    let fresh = Arc::new(Connector {
        endpoint,
        client,
        mux: Mutex::new(None),
        connecting: Mutex::new(()),
        health: Health::new(),
    });
    Ok(CONNECTORS
        .lock()
        .entry(url.to_owned())
        .or_insert(fresh)
        .clone())
}

/// Drops the connection of every URL; the next call connects again.
pub fn forget_connections() {
    let all: Vec<Arc<Connector>> = CONNECTORS.lock().drain().map(|(_, c)| c).collect();
    drop(all);
}

impl Connector {
    /// The runtime of this process and its connection, if one is open. A child of
    /// `fork()` leaves the parent's alone (their threads and sockets are not its own).
    fn current(&self) -> CacheResult<(Arc<Runtime>, Option<Numbered>)> {
        let mut mux = self.mux.lock();
        let pid = std::process::id();
        if let Some(m) = mux.take_if(|m| m.pid != pid) {
            std::mem::forget(m);
        }
        if mux.is_none() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| {
                    CacheError::Backend(format!(
                        "Redis at {}: cannot start the I/O runtime: {e}",
                        self.endpoint.shown
                    ))
                })?;
            *mux = Some(Mux {
                pid,
                runtime: Arc::new(runtime),
                con: None,
                made: 0,
            });
        }
        let m = mux.as_ref().expect("made above");
        Ok((m.runtime.clone(), m.con.clone()))
    }

    async fn connect(&self) -> Result<Numbered, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.endpoint.connect_timeout))
            .set_response_timeout(Some(self.endpoint.command_timeout));
        let con = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let mut mux = self.mux.lock();
        let Some(m) = mux.as_mut().filter(|m| m.pid == std::process::id()) else {
            return Ok((0, con));
        };
        m.made += 1;
        m.con = Some((m.made, con.clone()));
        Ok((m.made, con))
    }

    /// Drops connection `number` if it is still the one in use.
    fn discard(&self, number: u64) {
        let dropped = self
            .mux
            .lock()
            .as_mut()
            .and_then(|m| m.con.take_if(|(n, _)| *n == number));
        drop(dropped);
    }

    /// Runs `f` on the connection, opening it if needed. A connection that turns out
    /// closed (the server restarted) is replaced once; a transport failure opens the
    /// breaker. The caller's thread drives the I/O while it waits.
    fn run<T: Send>(
        &self,
        f: impl AsyncFnMut(&mut MultiplexedConnection) -> Result<T, RedisError> + Send,
    ) -> CacheResult<T> {
        if tokio::runtime::Handle::try_current().is_ok() {
            // A thread of a tokio runtime (a server written in Rust that runs Python
            // handlers on its workers) must not block on another runtime: the call is
            // made from a thread of its own.
            return std::thread::scope(|scope| {
                scope
                    .spawn(|| self.run_here(f))
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            });
        }
        self.run_here(f)
    }

    fn run_here<T>(
        &self,
        mut f: impl AsyncFnMut(&mut MultiplexedConnection) -> Result<T, RedisError>,
    ) -> CacheResult<T> {
        self.health.admit()?;
        let (runtime, mut open) = self.current()?;
        let mut _connecting = None;
        if open.is_none() {
            // Threads that find no connection wait for the one that makes it (the GIL
            // is released around backend calls). If that one found the server down,
            // they fail with it rather than each pay the connect timeout in turn.
            let outages = self.health.outages.load(Ordering::Acquire);
            let guard = self.connecting.lock();
            open = self.current()?.1;
            if open.is_none() {
                if self.health.outages.load(Ordering::Acquire) != outages {
                    return Err(self.health.outage_error());
                }
                _connecting = Some(guard);
            }
        }
        runtime.block_on(async {
            loop {
                let reused = open.is_some();
                let (number, mut con) = match open.take() {
                    Some(c) => c,
                    None => self
                        .connect()
                        .await
                        .map_err(|e| self.health.failed(&self.endpoint.shown, &e))?,
                };
                match f(&mut con).await {
                    Ok(v) => {
                        self.health.ok();
                        return Ok(v);
                    }
                    Err(e) if is_reply_error(&e) => {
                        return Err(CacheError::Backend(format!(
                            "Redis at {}: {e}",
                            self.endpoint.shown
                        )));
                    }
                    // A late reply is matched to its request and dropped: the
                    // connection stays in step after a timeout.
                    Err(e) if e.is_timeout() => {
                        return Err(self.health.failed(&self.endpoint.shown, &e));
                    }
                    // A connection that the server closed (it restarted, or dropped
                    // idle clients) is replaced and the call tried once on a new one.
                    Err(e) => {
                        self.discard(number);
                        if !reused {
                            return Err(self.health.failed(&self.endpoint.shown, &e));
                        }
                    }
                }
            }
        })
    }
}

impl RedisStore {
    /// An instance for `package` and `region`; connects lazily.
    pub fn open(url: &str, package: Option<String>, region: &str) -> CacheResult<Self> {
        Ok(RedisStore {
            conn: connector(url)?,
            package,
            region: format!("{region}:"),
        })
    }

    fn run<T: Send>(
        &self,
        f: impl AsyncFnMut(&mut MultiplexedConnection) -> Result<T, RedisError> + Send,
    ) -> CacheResult<T> {
        self.conn.run(f)
    }

    /// The keys of this instance matching `pattern`, as `SCAN` finds them.
    fn scan(&self, pattern: Option<&str>) -> CacheResult<Vec<String>> {
        let scope = Scope::of(self.package.as_deref(), Some(&self.region));
        self.conn.scan(&scope, pattern)
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
                .map_or_else(|| "*:".to_owned(), super::escape_glob),
            super::escape_glob(&self.prefix)
        )
    }

    fn contains(&self, key: &str) -> bool {
        let rest = match self.region {
            Some(region) => key.strip_prefix(region),
            None => key
                .split_once(':')
                .filter(|(region, _)| crate::key::ttl_of_region(region).is_some())
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

impl Connector {
    /// The keys of `scope` matching `pattern`, one `SCAN` over the keyspace.
    fn scan(&self, scope: &Scope<'_>, pattern: Option<&str>) -> CacheResult<Vec<String>> {
        let matcher = scope.matcher();
        let mut seen = HashSet::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<Vec<u8>>) = self.run(async |c| {
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
        Ok(seen.into_iter().collect())
    }

    /// Removes `keys` with `UNLINK`, in batches; returns how many existed.
    fn unlink(&self, keys: &[String]) -> CacheResult<usize> {
        let mut removed = 0;
        for batch in keys.chunks(UNLINK_BATCH) {
            removed += self.run(async |c| {
                redis::cmd("UNLINK")
                    .arg(batch)
                    .query_async::<usize>(c)
                    .await
            })?;
        }
        Ok(removed)
    }
}

/// Clears the keys of `package` in every region of the server at `url` (those matching
/// `pattern` if given): `cache_clear()` without a TTL, so that regions this process
/// never opened are cleared too.
pub fn clear_package(
    url: &str,
    package: Option<&str>,
    pattern: Option<&str>,
) -> CacheResult<usize> {
    let conn = connector(url)?;
    let keys = conn.scan(&Scope::of(package, None), pattern)?;
    conn.unlink(&keys)
}

/// Splits a stored value into the pickle and its creation time. A value too short to
/// carry the header comes back whole with a NaN time: it cannot be decoded.
fn split_value(mut data: Vec<u8>) -> (Vec<u8>, f64) {
    if data.len() < HEADER {
        return (data, f64::NAN);
    }
    let mut head = [0u8; HEADER];
    head.copy_from_slice(&data[..HEADER]);
    data.drain(..HEADER);
    (data, f64::from_ne_bytes(head))
}

pub(crate) fn pack_value(value: &[u8], created_at: f64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + value.len());
    out.extend_from_slice(&created_at.to_ne_bytes());
    out.extend_from_slice(value);
    out
}

/// Whole seconds for `SETEX` (at least one: Redis refuses zero).
pub(crate) fn setex_seconds(ttl: f64) -> u64 {
    (ttl.ceil() as u64).max(1)
}

/// The answer of the lease script.
fn lease_reply(reply: Value) -> LeaseReply {
    match reply {
        Value::BulkString(data) => {
            let (value, created) = split_value(data);
            LeaseReply::Found(value, created)
        }
        Value::Int(1) => LeaseReply::Acquired,
        _ => LeaseReply::Held,
    }
}

fn lock_key(key: &str) -> String {
    format!("lock:{key}")
}

impl ByteStore for RedisStore {
    fn get(&self, key: &str) -> CacheResult<Option<(Vec<u8>, f64)>> {
        let data: Option<Vec<u8>> =
            self.run(async |c| redis::cmd("GET").arg(key).query_async(c).await)?;
        Ok(data.map(split_value))
    }

    fn set(&self, key: &str, value: &[u8], created_at: f64, ttl: f64) -> CacheResult<()> {
        if ttl <= 0.0 {
            return self.delete(key);
        }
        let packed = pack_value(value, created_at);
        self.run(async |c| {
            redis::cmd("SETEX")
                .arg(key)
                .arg(setex_seconds(ttl))
                .arg(&packed)
                .query_async::<()>(c)
                .await
        })
    }

    fn delete(&self, key: &str) -> CacheResult<()> {
        self.run(async |c| redis::cmd("DEL").arg(key).query_async::<()>(c).await)
    }

    fn clear(&self, pattern: Option<&str>) -> CacheResult<usize> {
        let keys = self.scan(pattern)?;
        self.conn.unlink(&keys)
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
        self.run(async |c| {
            DELETE_IF_SAME
                .key(key)
                .arg(&packed)
                .invoke_async::<i64>(c)
                .await
                .map(drop)
        })
    }

    fn has_leases(&self) -> bool {
        true
    }

    fn lease(
        &self,
        key: &str,
        token: &super::Token,
        lease: Duration,
        read: bool,
    ) -> CacheResult<LeaseReply> {
        let lock = lock_key(key);
        let token = token.get();
        let reply: Value = self.run(async |c| {
            LEASE
                .key(key)
                .key(&lock)
                .arg(token)
                .arg(lease.as_millis().max(1) as u64)
                .arg(if read { "1" } else { "0" })
                .invoke_async(c)
                .await
        })?;
        Ok(lease_reply(reply))
    }

    fn store_and_release(
        &self,
        key: &str,
        value: Option<(&[u8], f64, f64)>,
        token: &str,
    ) -> CacheResult<()> {
        let lock = lock_key(key);
        let (seconds, packed) = match value {
            Some((data, created, ttl)) if ttl > 0.0 => {
                (setex_seconds(ttl), pack_value(data, created))
            }
            _ => (0, Vec::new()),
        };
        self.run(async |c| {
            STORE_RELEASE
                .key(key)
                .key(&lock)
                .arg(seconds)
                .arg(&packed)
                .arg(token)
                .invoke_async::<i64>(c)
                .await
                .map(drop)
        })
    }

    fn location(&self) -> String {
        self.conn.endpoint.shown.clone()
    }
}

/// What the asyncio client of the async API (`python/cachu/_aioredis.py`) needs
/// from this module: the same scripts, URL options and server health.
pub mod for_asyncio {
    use pyo3::exceptions::PyTypeError;
    use pyo3::prelude::*;
    use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};

    use super::{connector, Endpoint, LEASE, LEASE_SRC, STORE_RELEASE, STORE_RELEASE_SRC};
    use crate::errors::CacheError;

    /// The URL's options, as `Endpoint` reads them.
    #[pyfunction]
    pub fn _redis_endpoint<'py>(py: Python<'py>, url: &str) -> PyResult<Bound<'py, PyDict>> {
        let ep = Endpoint::parse(url)
            .map_err(|e| CacheError::config("redis_url", format!("{url:?}"), e))?;
        let d = PyDict::new(py);
        d.set_item("shown", &ep.shown)?;
        d.set_item("ca_file", &ep.ca_file)?;
        d.set_item("insecure", ep.url.ends_with("#insecure"))?;
        d.set_item("connect_timeout", ep.connect_timeout.as_secs_f64())?;
        d.set_item("command_timeout", ep.command_timeout.as_secs_f64())?;
        Ok(d)
    }

    /// `(sha1, source)` of the lease script and of the store-and-release script.
    #[pyfunction]
    pub fn _redis_scripts() -> ((String, String), (String, String)) {
        (
            (LEASE.get_hash().to_owned(), LEASE_SRC.to_owned()),
            (
                STORE_RELEASE.get_hash().to_owned(),
                STORE_RELEASE_SRC.to_owned(),
            ),
        )
    }

    /// One request in the protocol's bytes, encoded by redis-rs as the sync path's are:
    /// each argument is `bytes`, `str` or `int`.
    #[pyfunction]
    #[pyo3(signature = (*args))]
    pub fn _redis_command<'py>(args: &Bound<'py, PyTuple>) -> PyResult<Bound<'py, PyBytes>> {
        let mut cmd = redis::Cmd::new();
        for a in args {
            if let Ok(b) = a.cast::<PyBytes>() {
                cmd.arg(b.as_bytes());
            } else if let Ok(s) = a.cast::<PyString>() {
                cmd.arg(s.to_str()?);
            } else if let Ok(i) = a.extract::<i64>() {
                cmd.arg(i);
            } else {
                return Err(PyTypeError::new_err(format!(
                    "a Redis argument is bytes, str or int, not {}",
                    a.get_type().name()?
                )));
            }
        }
        Ok(PyBytes::new(args.py(), &cmd.get_packed_command()))
    }

    /// `None` if a call to `url` may go ahead, else the message of the current outage
    /// (the breaker is open).
    #[pyfunction]
    pub fn _redis_admit(url: &str) -> PyResult<Option<String>> {
        Ok(connector(url)?.health.admit().err().map(|e| e.to_string()))
    }

    /// Records a transport failure; returns the outage's message.
    #[pyfunction]
    pub fn _redis_failed(url: &str, detail: &str) -> PyResult<String> {
        let c = connector(url)?;
        Ok(c.health.failed(&c.endpoint.shown, &detail).to_string())
    }

    /// Records a successful call.
    #[pyfunction]
    pub fn _redis_ok(url: &str) -> PyResult<()> {
        connector(url)?.health.ok();
        Ok(())
    }

    pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add_function(wrap_pyfunction!(_redis_endpoint, m)?)?;
        m.add_function(wrap_pyfunction!(_redis_scripts, m)?)?;
        m.add_function(wrap_pyfunction!(_redis_command, m)?)?;
        m.add_function(wrap_pyfunction!(_redis_admit, m)?)?;
        m.add_function(wrap_pyfunction!(_redis_failed, m)?)?;
        m.add_function(wrap_pyfunction!(_redis_ok, m)?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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
