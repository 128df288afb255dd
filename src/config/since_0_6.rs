//! The options of `configure()` that cachu 0.6 added, taken from its keyword
//! arguments: code written for 0.6 configures this library unchanged.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt};

use super::{BackendKind, Config};
use crate::errors::{repr_of, CacheError, CacheResult};
use crate::region::parse_freshness;

/// Every option `configure()` takes, for the message about one it does not.
pub const ALL_OPTIONS: &str = "backend (or backend_default), key_prefix, file_dir, redis_url, \
lock_timeout, on_backend_error (or fail_open), on_lock_timeout, memory_maxsize, memory_copy, \
signing_key, cache_deadline, memory_sweep_interval, redis_socket_timeout, redis_retry_count, \
redis_health_check_interval, ttl_jitter, stale_ttl, stale_if_error, early_refresh, timeout, memory_maxbytes, near_cache and near_cache_maxsize";

/// The 0.6 options given to one `configure()` call.
#[derive(Default)]
pub struct Since06 {
    pub backend_default: Option<BackendKind>,
    pub fail_open: Option<bool>,
    cache_deadline: Option<f64>,
    memory_sweep_interval: Option<f64>,
    redis_socket_timeout: Option<f64>,
    redis_retry_count: Option<i64>,
    redis_health_check_interval: Option<i64>,
    ttl_jitter: Option<f64>,
    /// The freshness controls' defaults (not of 0.6: they are this library's).
    stale_ttl: Option<f64>,
    stale_if_error: Option<f64>,
    early_refresh: Option<f64>,
    timeout: Option<f64>,
    /// `memory_maxbytes` (0 removes the bound).
    memory_maxbytes: Option<usize>,
    /// The near cache in front of Redis (`backend/redis/near.rs`).
    near_cache: Option<bool>,
    near_cache_maxsize: Option<usize>,
}

fn number(value: &Bound<'_, PyAny>) -> Option<f64> {
    let is_number = (value.is_instance_of::<PyInt>() || value.is_instance_of::<PyFloat>())
        && !value.is_instance_of::<PyBool>();
    is_number.then(|| value.extract::<f64>().ok()).flatten()
}

fn positive_seconds(param: &'static str, value: &Bound<'_, PyAny>) -> CacheResult<f64> {
    number(value)
        .filter(|v| v.is_finite() && *v > 0.0)
        .ok_or_else(|| {
            CacheError::config(
                param,
                repr_of(value),
                format!("{param} must be a positive number of seconds"),
            )
        })
}

fn whole(param: &'static str, value: &Bound<'_, PyAny>) -> CacheResult<i64> {
    (value.is_instance_of::<PyInt>() && !value.is_instance_of::<PyBool>())
        .then(|| value.extract::<i64>().ok())
        .flatten()
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            CacheError::config(
                param,
                repr_of(value),
                format!("{param} must be a non-negative integer"),
            )
        })
}

fn flag(param: &'static str, value: &Bound<'_, PyAny>) -> CacheResult<bool> {
    value
        .cast_exact::<PyBool>()
        .map(pyo3::types::PyBoolMethods::is_true)
        .map_err(|_| CacheError::config(param, repr_of(value), "expected True or False"))
}

fn entries(param: &'static str, value: &Bound<'_, PyAny>) -> CacheResult<usize> {
    match whole(param, value)? {
        0 => Err(CacheError::config(
            param,
            "0",
            format!("{param} must be a positive number of entries (near_cache=False turns the near cache off)"),
        )),
        n => Ok(n as usize),
    }
}

/// The 0.6 options among `options` (each `None` is left alone, as in 0.6); any other
/// name is refused, naming it.
pub fn parse(options: Option<&Bound<'_, PyDict>>) -> PyResult<Since06> {
    let mut out = Since06::default();
    let Some(options) = options else {
        return Ok(out);
    };
    for (name, value) in options.iter() {
        let name: String = name.extract()?;
        if value.is_none() {
            continue;
        }
        match name.as_str() {
            "backend_default" => {
                out.backend_default = Some(BackendKind::parse("backend_default", &value)?);
            }
            "fail_open" => out.fail_open = Some(flag("fail_open", &value)?),
            "cache_deadline" => {
                out.cache_deadline = Some(positive_seconds("cache_deadline", &value)?);
            }
            "memory_sweep_interval" => {
                let v = number(&value).filter(|v| *v >= 0.0 && !v.is_nan()).ok_or_else(|| {
                    CacheError::config(
                        "memory_sweep_interval",
                        repr_of(&value),
                        "memory_sweep_interval must be a non-negative number of seconds, or float('inf') to sweep only as the store grows",
                    )
                })?;
                out.memory_sweep_interval = Some(v);
            }
            "redis_socket_timeout" => {
                out.redis_socket_timeout = Some(positive_seconds("redis_socket_timeout", &value)?);
            }
            "redis_retry_count" => {
                out.redis_retry_count = Some(whole("redis_retry_count", &value)?);
            }
            "ttl_jitter" => out.ttl_jitter = Some(crate::region::parse_jitter(&value)?),
            "stale_ttl" => out.stale_ttl = Some(parse_freshness("stale_ttl", &value)?),
            "stale_if_error" => {
                out.stale_if_error = Some(parse_freshness("stale_if_error", &value)?);
            }
            "early_refresh" => {
                out.early_refresh = Some(parse_freshness("early_refresh", &value)?);
            }
            "timeout" => out.timeout = Some(parse_freshness("timeout", &value)?),
            "memory_maxbytes" => {
                out.memory_maxbytes = Some(whole("memory_maxbytes", &value)? as usize);
            }
            "near_cache" => out.near_cache = Some(flag("near_cache", &value)?),
            "near_cache_maxsize" => {
                out.near_cache_maxsize = Some(entries("near_cache_maxsize", &value)?);
            }
            "redis_health_check_interval" => {
                out.redis_health_check_interval =
                    Some(whole("redis_health_check_interval", &value)?);
            }
            dynamo if dynamo.starts_with("dynamodb_") => {
                return Err(CacheError::config(
                    name.clone(),
                    repr_of(&value),
                    "the DynamoDB backend of cachu 0.6 is not provided by this cachu",
                )
                .into())
            }
            _ => {
                return Err(CacheError::config(
                    name.clone(),
                    repr_of(&value),
                    format!("configure() has no option '{name}'; the options are {ALL_OPTIONS}"),
                )
                .into())
            }
        }
    }
    Ok(out)
}

impl Since06 {
    /// Writes the options given into `cfg`.
    pub fn apply(&self, cfg: &mut Config) {
        if let Some(v) = self.backend_default {
            cfg.backend = v;
        }
        if let Some(v) = self.fail_open {
            cfg.raise_backend_errors = !v;
        }
        if let Some(v) = self.cache_deadline {
            cfg.cache_deadline = Some(v);
        }
        if let Some(v) = self.memory_sweep_interval {
            cfg.memory_sweep_interval = v;
        }
        if let Some(v) = self.redis_socket_timeout {
            cfg.redis_socket_timeout = Some(v);
        }
        if let Some(v) = self.redis_retry_count {
            cfg.redis_retry_count = v;
        }
        if let Some(v) = self.redis_health_check_interval {
            cfg.redis_health_check_interval = v;
        }
        if let Some(v) = self.ttl_jitter {
            cfg.ttl_jitter = v;
        }
        if let Some(v) = self.stale_ttl {
            cfg.stale_ttl = v;
        }
        if let Some(v) = self.stale_if_error {
            cfg.stale_if_error = v;
        }
        if let Some(v) = self.early_refresh {
            cfg.early_refresh = Some(v);
        }
        if let Some(v) = self.timeout {
            cfg.timeout = Some(v);
        }
        if let Some(n) = self.memory_maxbytes {
            cfg.memory_maxbytes = (n > 0).then_some(n);
        }
        if let Some(v) = self.near_cache {
            cfg.near_cache = v;
        }
        if let Some(n) = self.near_cache_maxsize {
            cfg.near_cache_maxsize = n;
        }
    }
}
