//! The Redis protocol of this library, in one place, spoken by the blocking client
//! (`mod.rs`) and by the asyncio transport of the async API
//! (`python/cachu/_aioredis.py`, which sends the requests made here and hands the
//! replies back to be read here): the value header, the lease key, the scripts, and
//! what their replies mean.
//!
//! - Values: 8 bytes of `created_at` (native-endian double) then the pickle, written
//!   with `SETEX` (FORMATS.md).
//! - The lease on computing `key` is `lock:{key}` (on a cluster `lock:{N}:{key}`, in
//!   the key's slot: `slots.rs`), holding the holder's token, with an expiry: a holder
//!   that dies delays the others by the lease at most.

use std::sync::LazyLock;
use std::time::Duration;

use redis::{Script, Value};

use super::op::Op;
use crate::backend::store::LeaseReply;

pub const HEADER: usize = 8;

/// `GET key`, or take the lease on a miss. Returns the value (bulk), or 1 when the
/// lease is ours, 0 when another holds it. With ARGV[4] = '1' (a near cache reads), a
/// value comes with its `PTTL`: `{value, pttl}`.
pub const LEASE_SRC: &str = r"
if ARGV[3] == '1' then
  local v = redis.call('GET', KEYS[1])
  if v then
    if ARGV[4] == '1' then return {v, redis.call('PTTL', KEYS[1])} end
    return v
  end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[2]) == ARGV[1] then return 1 end
return 0";
pub static LEASE: LazyLock<Script> = LazyLock::new(|| Script::new(LEASE_SRC));

/// Store the value (when ARGV[2] is not empty) and release the lease if it is ours.
pub const STORE_RELEASE_SRC: &str = r"
if ARGV[2] ~= '' then
  redis.call('SETEX', KEYS[1], ARGV[1], ARGV[2])
end
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1";
pub static STORE_RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(STORE_RELEASE_SRC));

/// `GET` with the key's `PTTL`: `{value, pttl}`, or nil.
pub const GET_PTTL_SRC: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return {v, redis.call('PTTL', KEYS[1])} end
return false";
pub static GET_PTTL: LazyLock<Script> = LazyLock::new(|| Script::new(GET_PTTL_SRC));

/// Delete a value only if it is still the one that failed to decode.
pub const DELETE_IF_SAME_SRC: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";
pub static DELETE_IF_SAME: LazyLock<Script> = LazyLock::new(|| Script::new(DELETE_IF_SAME_SRC));

/// Splits a stored value into the pickle and its creation time. A value too short to
/// carry the header comes back whole with a NaN time: it cannot be decoded.
pub fn split_value(mut data: Vec<u8>) -> (Vec<u8>, f64) {
    if data.len() < HEADER {
        return (data, f64::NAN);
    }
    let mut head = [0u8; HEADER];
    head.copy_from_slice(&data[..HEADER]);
    data.drain(..HEADER);
    (data, f64::from_ne_bytes(head))
}

pub fn pack_value(value: &[u8], created_at: f64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + value.len());
    out.extend_from_slice(&created_at.to_ne_bytes());
    out.extend_from_slice(value);
    out
}

/// Whole seconds for `SETEX` (at least one: Redis refuses zero).
pub fn setex_seconds(ttl: f64) -> u64 {
    (ttl.ceil() as u64).max(1)
}

/// The answer of the lease script, and the seconds a value found has left (when
/// asked for: a near cache reads; `None` if not asked, or it never expires).
pub fn lease_reply_expiring(reply: Value) -> (LeaseReply, Option<f64>) {
    match reply {
        Value::Array(mut parts) if parts.len() == 2 => {
            let left = match parts.pop() {
                Some(Value::Int(ms)) if ms >= 0 => Some(ms as f64 / 1000.0),
                _ => None,
            };
            (lease_reply(parts.pop().unwrap_or(Value::Nil)), left)
        }
        other => (lease_reply(other), None),
    }
}

/// The answer of the lease script.
pub fn lease_reply(reply: Value) -> LeaseReply {
    match reply {
        Value::BulkString(data) => {
            let (value, created) = split_value(data);
            LeaseReply::Found(value, created)
        }
        Value::Int(1) => LeaseReply::Acquired,
        _ => LeaseReply::Held,
    }
}

pub fn lock_key(key: &str) -> String {
    format!("lock:{key}")
}

/// `EVALSHA` of a script, and the `SCRIPT LOAD` to send first if the server answers
/// `NOSCRIPT` (it restarted, or its scripts were flushed).
pub type Request = (Vec<u8>, Vec<u8>);

/// `EVALSHA` of `script` on `keys`, with its source for the server that lacks it.
fn script_op(script: &Script, source: &'static str, keys: &[&str], args: &[&[u8]]) -> Op {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len()).arg(keys);
    for a in args {
        cmd.arg(*a);
    }
    Op {
        cmd,
        script: Some(source),
    }
}

/// The bytes of `op` and of the `SCRIPT LOAD` of its script, for the asyncio transport.
fn request_of(op: &Op) -> Request {
    let load = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(op.script.unwrap_or_default())
        .get_packed_command();
    (op.cmd.get_packed_command(), load)
}

/// The lease script: the value of `key` (when `read`), else the lease `lock` on
/// computing it, held as `token` for `lease` at most.
pub fn lease_op(key: &str, lock: &str, token: &str, lease: Duration, read: Read) -> Op {
    let millis = lease_millis(lease).to_string();
    let (read, expiring): (&[u8], &[u8]) = match read {
        Read::No => (b"0", b"0"),
        Read::Value => (b"1", b"0"),
        Read::Expiring => (b"1", b"1"),
    };
    script_op(
        &LEASE,
        LEASE_SRC,
        &[key, lock],
        &[token.as_bytes(), millis.as_bytes(), read, expiring],
    )
}

/// What the lease script reads first: nothing (take the lease), the value, or the
/// value with its `PTTL` (for a near cache).
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Read {
    No,
    Value,
    Expiring,
}

impl Read {
    pub fn of(read: bool, near: bool) -> Read {
        match (read, near) {
            (false, _) => Read::No,
            (true, false) => Read::Value,
            (true, true) => Read::Expiring,
        }
    }
}

/// `GET` of `key` with its `PTTL`.
pub fn get_pttl_op(key: &str) -> Op {
    script_op(&GET_PTTL, GET_PTTL_SRC, &[key], &[])
}

/// The store-and-release script: `(value, created_at, ttl)` stored if given (and the
/// TTL is not zero), the lease `lock` of `token` released.
pub fn store_release_op(
    key: &str,
    lock: &str,
    value: Option<(&[u8], f64, f64)>,
    token: &str,
) -> Op {
    let (seconds, packed) = store_args(value);
    let seconds = seconds.to_string();
    script_op(
        &STORE_RELEASE,
        STORE_RELEASE_SRC,
        &[key, lock],
        &[seconds.as_bytes(), &packed, token.as_bytes()],
    )
}

/// Deletes `key` if it still holds `packed`.
pub fn delete_if_same_op(key: &str, packed: &[u8]) -> Op {
    script_op(&DELETE_IF_SAME, DELETE_IF_SAME_SRC, &[key], &[packed])
}

/// [`lease_op`] as bytes for the asyncio transport.
pub fn lease_request(key: &str, lock: &str, token: &str, lease: Duration, read: Read) -> Request {
    request_of(&lease_op(key, lock, token, lease, read))
}

/// [`store_release_op`] as bytes for the asyncio transport.
pub fn store_release_request(
    key: &str,
    lock: &str,
    token: &str,
    value: Option<&(Vec<u8>, f64, f64)>,
) -> Request {
    request_of(&store_release_op(
        key,
        lock,
        value.map(|(d, c, t)| (d.as_slice(), *c, *t)),
        token,
    ))
}

/// The lease as the scripts take it: whole milliseconds, at least one.
pub fn lease_millis(lease: Duration) -> u64 {
    lease.as_millis().max(1) as u64
}

/// The `SETEX` seconds and the packed value of the store script (`(0, [])`: nothing
/// to store).
pub fn store_args(value: Option<(&[u8], f64, f64)>) -> (u64, Vec<u8>) {
    match value {
        Some((data, created, ttl)) if ttl > 0.0 => (setex_seconds(ttl), pack_value(data, created)),
        _ => (0, Vec::new()),
    }
}

/// The lease script's reply as the asyncio transport read it from the wire (`bytes`,
/// `int`, ...).
pub fn lease_reply_of(
    reply: &pyo3::Bound<'_, pyo3::PyAny>,
) -> pyo3::PyResult<(LeaseReply, Option<f64>)> {
    Ok(lease_reply_expiring(value_of(reply)?))
}

/// A reply of the asyncio transport (`bytes`, `int`, `list`, `None`) as redis-rs's.
fn value_of(reply: &pyo3::Bound<'_, pyo3::PyAny>) -> pyo3::PyResult<Value> {
    use pyo3::prelude::*;
    use pyo3::types::{PyBytes, PyInt, PyList};
    if let Ok(b) = reply.cast::<PyBytes>() {
        return Ok(Value::BulkString(b.as_bytes().to_vec()));
    }
    if reply.is_instance_of::<PyInt>() {
        return Ok(Value::Int(reply.extract()?));
    }
    if let Ok(items) = reply.cast::<PyList>() {
        return Ok(Value::Array(
            items
                .iter()
                .map(|i| value_of(&i))
                .collect::<PyResult<_>>()?,
        ));
    }
    Ok(Value::Nil)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_read_for_a_near_cache_comes_with_the_seconds_it_has_left() {
        let packed = pack_value(b"\x80\x04v", 1.5);
        let (reply, left) = lease_reply_expiring(Value::Array(vec![
            Value::BulkString(packed.clone()),
            Value::Int(2500),
        ]));
        assert!(
            matches!(reply, LeaseReply::Found(ref v, c) if v == b"\x80\x04v" && c.to_bits() == 1.5f64.to_bits())
        );
        assert_eq!(left, Some(2.5));
        // No expiry (-1): nothing to bound the near copy by.
        let (_, left) = lease_reply_expiring(Value::Array(vec![
            Value::BulkString(packed),
            Value::Int(-1),
        ]));
        assert_eq!(left, None);
        assert!(matches!(
            lease_reply_expiring(Value::Int(1)),
            (LeaseReply::Acquired, None)
        ));
        assert!(matches!(
            lease_reply_expiring(Value::Int(0)),
            (LeaseReply::Held, None)
        ));
    }

    #[test]
    fn what_the_lease_script_reads_first() {
        assert_eq!(Read::of(false, true), Read::No);
        assert_eq!(Read::of(true, false), Read::Value);
        assert_eq!(Read::of(true, true), Read::Expiring);
        let op = lease_op(
            "5m:f|x=1",
            "lock:{3}:5m:f|x=1",
            "t",
            Duration::from_secs(1),
            Read::Expiring,
        );
        let packed = String::from_utf8_lossy(&op.cmd.get_packed_command()).into_owned();
        assert!(packed.contains("lock:{3}:5m:f|x=1") && packed.ends_with("$1\r\n1\r\n$1\r\n1\r\n"));
        assert_eq!(op.script, Some(LEASE_SRC));
    }
}
