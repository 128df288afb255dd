//! A master found through Redis Sentinel, and found again after a failover: when the
//! master stops answering or answers as a replica (`READONLY`), the sentinels are asked
//! again (at most every [`ASK_EVERY`]); until they name a new one, calls fail at once
//! through the old master's breaker (misses, fail-open).

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use redis::Value;

use super::connector::{connector, Connector, Fault};
use super::layout::{Layout, Shape};
use super::op::{is_read_only, send, Op};
use crate::errors::{CacheError, CacheResult};

const ASK_EVERY: Duration = Duration::from_millis(200);
/// After a round that found no master, the next waits this long (the breakers' period).
const RETRY_FAILED_EVERY: Duration = Duration::from_secs(1);

pub struct Sentinel {
    pub(crate) layout: Layout,
    master: RwLock<Option<Arc<Connector>>>,
    /// When the sentinels were last asked, and why no master came of it if none did;
    /// held while they are asked.
    asked: Mutex<(Option<Instant>, Option<String>)>,
}

impl Sentinel {
    pub fn new(layout: Layout) -> Self {
        Sentinel {
            layout,
            master: RwLock::new(None),
            asked: Mutex::new((None, None)),
        }
    }

    fn name(&self) -> &str {
        match &self.layout.shape {
            Shape::Sentinel(_, name) => name,
            _ => "",
        }
    }

    /// The master as last found, without asking.
    pub fn known_master(&self) -> Option<Arc<Connector>> {
        self.master.read().clone()
    }

    /// The address in memory of the master found last (no reference is taken).
    pub fn known_master_id(&self) -> Option<usize> {
        self.master.read().as_ref().map(|m| Arc::as_ptr(m) as usize)
    }

    /// The master: the one found last while it is up, else the one the sentinels name.
    pub fn master(&self) -> CacheResult<Arc<Connector>> {
        if let Some(m) = self.known_master() {
            if !m.health.down.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(m);
            }
        }
        self.resolve(false)
    }

    /// Asks the sentinels which server is the master (unless they were asked a moment
    /// ago and named one).
    pub fn resolve(&self, now: bool) -> CacheResult<Arc<Connector>> {
        let mut asked = self.asked.lock();
        let recently = |pause| asked.0.is_some_and(|at: Instant| at.elapsed() < pause);
        match (self.known_master(), &asked.1) {
            (Some(m), _) if !now && recently(ASK_EVERY) => return Ok(m),
            // None answered a moment ago: that stands (callers do not each pay a timeout).
            (None, Some(failure)) if recently(RETRY_FAILED_EVERY) => {
                return Err(CacheError::Backend(failure.clone()));
            }
            _ => {}
        }
        asked.0 = Some(Instant::now());
        let found = self.ask_sentinels();
        asked.1 = found.as_ref().err().map(ToString::to_string);
        found
    }

    /// One round of [`Sentinel::resolve`]: the first sentinel that names the master.
    /// One connect timeout in all, as for one server that does not answer.
    fn ask_sentinels(&self) -> CacheResult<Arc<Connector>> {
        let started = Instant::now();
        let mut why = String::from("no sentinel answered");
        for (i, address) in self.layout.nodes().iter().enumerate() {
            let sentinel = connector(&self.layout.sentinel_url(address))?;
            if i > 0 && started.elapsed() >= sentinel.endpoint.connect_timeout {
                break;
            }
            let op = Op::new(
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(self.name())
                    .clone(),
            );
            match sentinel.run(async |c| send(c, &op, false).await) {
                Ok(Value::Array(parts)) if parts.len() == 2 => {
                    let text = |v: &Value| match v {
                        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                        Value::SimpleString(s) => s.clone(),
                        Value::Int(i) => i.to_string(),
                        _ => String::new(),
                    };
                    let (host, port) = (text(&parts[0]), text(&parts[1]));
                    let host = if host.contains(':') {
                        format!("[{host}]")
                    } else {
                        host
                    };
                    let master = connector(&self.layout.node_url(&format!("{host}:{port}")))?;
                    *self.master.write() = Some(master.clone());
                    return Ok(master);
                }
                Ok(_) => {
                    why = format!("sentinel {address} knows no master named {:?}", self.name());
                }
                Err(e) => {
                    why = e.to_string();
                    if why.contains("NOAUTH") && !self.layout.sentinels_have_password() {
                        why.push_str(
                            "; the sentinels ask for a password of their own: \
                             give it as ?sentinel_password=... in the URL",
                        );
                    }
                }
            }
        }
        Err(CacheError::Backend(format!(
            "Redis Sentinel at {}: no master found ({why})",
            self.layout.shown
        )))
    }

    pub fn query(&self, op: &Op) -> CacheResult<Value> {
        let master = self.master()?;
        match master.run_raw(async |c| send(c, op, false).await) {
            Ok(v) => Ok(v),
            Err(Fault::Reply(e)) if is_read_only(&e) => {
                // A failover demoted it: the next call asks the sentinels.
                let _ = self.resolve(true);
                Err(Fault::Reply(e).into_error(&master.endpoint.shown))
            }
            Err(fault) => Err(fault.into_error(&master.endpoint.shown)),
        }
    }
}
