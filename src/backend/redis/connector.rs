//! Connections to one Redis server: one multiplexed connection per URL and process,
//! made lazily and driven by the calling thread, and the server's health (a breaker,
//! one message per outage).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError};
use tokio::runtime::Runtime;

use super::endpoint::Endpoint;
use crate::errors::{CacheError, CacheResult};
use crate::process::ForkLocal;

/// How long the breaker answers "down" before one caller tries the server again.
const BREAKER: Duration = Duration::from_secs(1);
/// Whether the server is reachable, and since when it is not.
pub(crate) struct Health {
    pub(crate) down: AtomicBool,
    /// Milliseconds since `epoch` before which calls fail without trying.
    retry_at: AtomicU64,
    epoch: Instant,
    pub(crate) outages: AtomicU64,
    /// The message of the current outage: the same text for every call of it.
    message: Mutex<String>,
    /// The outage that ended last, until it is reported ([`Health::take_recovery`]).
    recovered: AtomicU64,
}

impl Health {
    fn new() -> Self {
        Health {
            down: AtomicBool::new(false),
            retry_at: AtomicU64::new(0),
            epoch: Instant::now(),
            outages: AtomicU64::new(0),
            message: Mutex::new(String::new()),
            recovered: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// While the breaker is open, every caller but one per period fails at once.
    pub(crate) fn admit(&self) -> CacheResult<()> {
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

    pub(crate) fn failed(&self, shown: &str, err: &dyn std::fmt::Display) -> CacheError {
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

    pub(crate) fn ok(&self) {
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::AcqRel) {
            let n = self.outages.load(Ordering::Relaxed);
            self.recovered.store(n, Ordering::Release);
        }
    }

    /// The number of the outage that ended since the last look, if one did: said by a
    /// caller that holds the GIL (the one that saw the end does not).
    pub(crate) fn take_recovery(&self) -> Option<u64> {
        if self.recovered.load(Ordering::Relaxed) == 0 {
            return None;
        }
        Some(self.recovered.swap(0, Ordering::AcqRel)).filter(|n| *n != 0)
    }
}

/// A connection and its number.
type Numbered = (u64, MultiplexedConnection);

/// This process's connection to one server, and the runtime that drives it.
struct Mux {
    runtime: Arc<Runtime>,
    /// The connection and its number (a failed one is dropped only if not replaced yet).
    con: Option<Numbered>,
    made: u64,
}

/// Whether the error came from the server (the connection is still in step) rather
/// than from the transport.
fn is_reply_error(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(_) | ErrorKind::UnexpectedReturnType
    )
}

/// How a call to one server failed.
pub(crate) enum Fault {
    /// The server answered with an error (the connection is still in step).
    Reply(RedisError),
    /// The server could not be reached, or did not answer in time: an outage.
    Down(CacheError),
}

impl Fault {
    pub(crate) fn into_error(self, shown: &str) -> CacheError {
        match self {
            Fault::Reply(e) => CacheError::Backend(format!("Redis at {shown}: {e}")),
            Fault::Down(e) => e,
        }
    }
}

/// The connections to one server URL, shared by every region and package that uses
/// it, with the server's health (which the asyncio client of the async API shares).
pub struct Connector {
    /// The URL this connector was made for (the key of [`connector`]).
    pub(crate) url: String,
    pub(crate) endpoint: Endpoint,
    client: redis::Client,
    /// Neither the connection nor its runtime crosses `fork()`.
    mux: ForkLocal<Mux>,
    /// Held while a connection is made, so that threads that find none open one.
    connecting: Mutex<()>,
    pub(crate) health: Health,
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
        url: url.to_owned(),
        endpoint,
        client,
        mux: ForkLocal::new(),
        connecting: Mutex::new(()),
        health: Health::new(),
    });
    Ok(CONNECTORS
        .lock()
        .entry(url.to_owned())
        .or_insert(fresh)
        .clone())
}

/// Every server this process has talked to: its URL as shown (password masked), how
/// many outages it had, and whether it is down now.
pub fn health_of_all() -> Vec<(String, u64, bool)> {
    let all: Vec<Arc<Connector>> = CONNECTORS.lock().values().cloned().collect();
    let mut out: Vec<(String, u64, bool)> = all
        .iter()
        .map(|c| {
            (
                c.endpoint.shown.clone(),
                c.health.outages.load(Ordering::Relaxed),
                c.health.down.load(Ordering::Relaxed),
            )
        })
        .collect();
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    out
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
        self.mux.with(|mux| {
            if mux.is_none() {
                let runtime = crate::runtime::driven_by_caller().map_err(|e| {
                    CacheError::Backend(format!(
                        "Redis at {}: cannot start the I/O runtime: {e}",
                        self.endpoint.shown
                    ))
                })?;
                *mux = Some(Mux {
                    runtime: Arc::new(runtime),
                    con: None,
                    made: 0,
                });
            }
            let m = mux.as_ref().expect("made above");
            Ok((m.runtime.clone(), m.con.clone()))
        })
    }

    async fn connect(&self) -> Result<Numbered, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.endpoint.connect_timeout))
            .set_response_timeout(Some(self.endpoint.command_timeout));
        let con = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(self.mux.with(|mux| match mux.as_mut() {
            Some(m) => {
                m.made += 1;
                m.con = Some((m.made, con.clone()));
                (m.made, con)
            }
            None => (0, con),
        }))
    }

    /// Drops connection `number` if it is still the one in use.
    fn discard(&self, number: u64) {
        let dropped = self.mux.with(|mux| {
            mux.as_mut()
                .and_then(|m| m.con.take_if(|(n, _)| *n == number))
        });
        drop(dropped);
    }

    /// Runs `f` on the connection, opening it if needed. A connection that turns out
    /// closed (the server restarted) is replaced once; a transport failure opens the
    /// breaker. The caller's thread drives the I/O while it waits.
    pub(crate) fn run<T: Send>(
        &self,
        f: impl AsyncFnMut(&mut MultiplexedConnection) -> Result<T, RedisError> + Send,
    ) -> CacheResult<T> {
        self.run_raw(f)
            .map_err(|fault| fault.into_error(&self.endpoint.shown))
    }

    /// [`Connector::run`], with the server's error replies (a cluster's redirections
    /// among them) handed back as they came.
    pub(crate) fn run_raw<T: Send>(
        &self,
        f: impl AsyncFnMut(&mut MultiplexedConnection) -> Result<T, RedisError> + Send,
    ) -> Result<T, Fault> {
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
    ) -> Result<T, Fault> {
        self.health.admit().map_err(Fault::Down)?;
        let (runtime, mut open) = self.current().map_err(Fault::Down)?;
        let mut _connecting = None;
        if open.is_none() {
            // Threads that find no connection wait for the one that makes it (the GIL
            // is released around backend calls). If that one found the server down,
            // they fail with it rather than each pay the connect timeout in turn.
            let outages = self.health.outages.load(Ordering::Acquire);
            let guard = self.connecting.lock();
            open = self.current().map_err(Fault::Down)?.1;
            if open.is_none() {
                if self.health.outages.load(Ordering::Acquire) != outages {
                    return Err(Fault::Down(self.health.outage_error()));
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
                        .map_err(|e| Fault::Down(self.health.failed(&self.endpoint.shown, &e)))?,
                };
                match f(&mut con).await {
                    Ok(v) => {
                        self.health.ok();
                        return Ok(v);
                    }
                    Err(e) if is_reply_error(&e) => return Err(Fault::Reply(e)),
                    // A late reply is matched to its request and dropped: the
                    // connection stays in step after a timeout.
                    Err(e) if e.is_timeout() => {
                        return Err(Fault::Down(self.health.failed(&self.endpoint.shown, &e)));
                    }
                    // A connection that the server closed (it restarted, or dropped
                    // idle clients) is replaced and the call tried once on a new one.
                    Err(e) => {
                        self.discard(number);
                        if !reused {
                            return Err(Fault::Down(self.health.failed(&self.endpoint.shown, &e)));
                        }
                    }
                }
            }
        })
    }
}
