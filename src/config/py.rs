//! The Python face of the configuration: `configure()`, `get_config()`, `CacheConfig`,
//! and the parsing of every option, naming the one that is wrong.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyInt, PyString};

use super::{config_of, defaults, resolve_package, update, BackendKind, Config, Secret};
use crate::errors::{repr_of, CacheError, CacheResult};

fn parse_str(param: &'static str, value: &Bound<'_, PyAny>) -> CacheResult<String> {
    value
        .cast::<PyString>()
        .ok()
        .and_then(|s| s.to_str().ok().map(str::to_owned))
        .ok_or_else(|| CacheError::config(param, repr_of(value), "expected a str"))
}

fn parse_file_dir(value: &Bound<'_, PyAny>) -> CacheResult<String> {
    let path: std::path::PathBuf = value.extract().map_err(|_| {
        CacheError::config("file_dir", repr_of(value), "expected a str or os.PathLike")
    })?;
    let shown = path.display().to_string();
    if !path.is_dir() {
        return Err(CacheError::config(
            "file_dir",
            format!("{shown:?}"),
            "file_dir must be an existing directory",
        ));
    }
    if !is_writable(&path) {
        return Err(CacheError::config(
            "file_dir",
            format!("{shown:?}"),
            "the directory is not writable",
        ));
    }
    Ok(shown)
}

/// Whether a file can be created in `dir` (permission bits alone do not say, e.g. for root).
fn is_writable(dir: &std::path::Path) -> bool {
    let probe = dir.join(format!(".cachu-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            true
        }
        Err(e) => e.kind() == std::io::ErrorKind::AlreadyExists,
    }
}

/// At least 16 bytes (a `str` is taken as UTF-8); empty removes the key. The value is
/// never shown, not even in the error.
fn parse_signing_key(value: &Bound<'_, PyAny>) -> CacheResult<Option<Secret>> {
    let bytes: Vec<u8> = if let Ok(s) = value.cast::<PyString>() {
        s.to_str()
            .map_err(|_| CacheError::config("signing_key", "<str>", "not valid UTF-8"))?
            .as_bytes()
            .to_vec()
    } else if let Ok(b) = value.cast::<pyo3::types::PyBytes>() {
        b.as_bytes().to_vec()
    } else {
        return Err(CacheError::config(
            "signing_key",
            format!(
                "<{}>",
                value
                    .get_type()
                    .name()
                    .map_or_else(|_| "?".into(), |n| n.to_string())
            ),
            "expected str or bytes",
        ));
    };
    match bytes.len() {
        0 => Ok(None),
        1..=15 => Err(CacheError::config(
            "signing_key",
            "<secret>",
            "too short: use at least 16 bytes (32 random bytes is right)",
        )),
        _ => Ok(Some(Secret(bytes.into()))),
    }
}

/// `True` or `False` (not a number or a string).
fn parse_bool(param: &'static str, value: &Bound<'_, PyAny>) -> CacheResult<bool> {
    match value.cast_exact::<pyo3::types::PyBool>() {
        Ok(b) => Ok(b.is_true()),
        Err(_) => Err(CacheError::config(
            param,
            repr_of(value),
            "expected True or False",
        )),
    }
}

/// A number of entries; 0 removes the bound.
fn parse_maxsize(value: &Bound<'_, PyAny>) -> CacheResult<Option<usize>> {
    let is_int = value.is_instance_of::<PyInt>() && !value.is_instance_of::<pyo3::types::PyBool>();
    match value.extract::<i64>() {
        Ok(0) if is_int => Ok(None),
        Ok(n) if is_int && n > 0 => Ok(Some(n as usize)),
        _ => Err(CacheError::config(
            "memory_maxsize",
            repr_of(value),
            "expected a whole number of entries >= 1 (0 removes the bound)",
        )),
    }
}

/// One of two words; `true` for the second.
fn parse_choice(
    param: &'static str,
    value: &Bound<'_, PyAny>,
    choices: [&str; 2],
) -> CacheResult<bool> {
    let word = parse_str(param, value)?;
    match choices.iter().position(|c| *c == word) {
        Some(i) => Ok(i == 1),
        None => Err(CacheError::config(
            param,
            repr_of(value),
            format!("expected {:?} or {:?}", choices[0], choices[1]),
        )),
    }
}

/// A positive number of seconds (`bool` is not a number here).
pub fn parse_seconds(param: &'static str, value: &Bound<'_, PyAny>) -> CacheResult<f64> {
    let is_number = value.is_instance_of::<PyInt>() || value.is_instance_of::<PyFloat>();
    let is_bool = value.is_instance_of::<pyo3::types::PyBool>();
    match value.extract::<f64>() {
        Ok(v) if is_number && !is_bool && v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(CacheError::config(
            param,
            repr_of(value),
            "expected a positive number of seconds",
        )),
    }
}

/// A snapshot of one package's configuration.
#[pyclass(frozen, module = "cachu._cachu", name = "CacheConfig")]
pub struct PyConfig {
    inner: Arc<Config>,
}

#[pymethods]
impl PyConfig {
    #[getter]
    fn backend(&self) -> &'static str {
        self.inner.backend.name()
    }
    #[getter]
    fn key_prefix(&self) -> &str {
        &self.inner.key_prefix
    }
    #[getter]
    fn file_dir(&self) -> &str {
        &self.inner.file_dir
    }
    #[getter]
    fn redis_url(&self) -> &str {
        &self.inner.redis_url
    }
    #[getter]
    fn lock_timeout(&self) -> f64 {
        self.inner.lock_timeout
    }
    #[getter]
    fn on_backend_error(&self) -> &'static str {
        self.inner.on_backend_error()
    }
    #[getter]
    fn on_lock_timeout(&self) -> &'static str {
        self.inner.on_lock_timeout()
    }
    #[getter]
    fn memory_maxsize(&self) -> Option<usize> {
        self.inner.memory_maxsize
    }
    #[getter]
    fn memory_copy(&self) -> bool {
        self.inner.memory_copy
    }
    /// Whether values are signed (the key itself is never shown).
    #[getter]
    fn signing_key(&self) -> Option<&'static str> {
        self.inner.signing_key.as_ref().map(|_| "<secret>")
    }

    /// cachu 0.6's name of `backend`.
    #[getter]
    fn backend_default(&self) -> &'static str {
        self.inner.backend.name()
    }
    /// cachu 0.6's view of `on_backend_error`: `True` for `'miss'`.
    #[getter]
    fn fail_open(&self) -> bool {
        !self.inner.raise_backend_errors
    }
    #[getter]
    fn cache_deadline(&self) -> Option<f64> {
        self.inner.cache_deadline
    }
    #[getter]
    fn memory_sweep_interval(&self) -> f64 {
        self.inner.memory_sweep_interval
    }
    #[getter]
    fn redis_socket_timeout(&self) -> Option<f64> {
        self.inner.redis_socket_timeout
    }
    #[getter]
    fn redis_retry_count(&self) -> i64 {
        self.inner.redis_retry_count
    }
    #[getter]
    fn redis_health_check_interval(&self) -> i64 {
        self.inner.redis_health_check_interval
    }
    #[getter]
    fn ttl_jitter(&self) -> f64 {
        self.inner.ttl_jitter
    }
    #[getter]
    fn memory_maxbytes(&self) -> Option<usize> {
        self.inner.memory_maxbytes
    }
    #[getter]
    fn near_cache(&self) -> bool {
        self.inner.near_cache
    }
    #[getter]
    fn near_cache_maxsize(&self) -> usize {
        self.inner.near_cache_maxsize
    }
    #[getter]
    fn stale_ttl(&self) -> f64 {
        self.inner.stale_ttl
    }
    #[getter]
    fn stale_if_error(&self) -> f64 {
        self.inner.stale_if_error
    }
    #[getter]
    fn early_refresh(&self) -> Option<f64> {
        self.inner.early_refresh
    }
    #[getter]
    fn timeout(&self) -> Option<f64> {
        self.inner.timeout
    }

    /// The settings as a plain dict.
    fn as_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        config_dict(py, &self.inner)
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<PyConfig>()
            .is_ok_and(|o| *o.get().inner == *self.inner)
    }

    fn __repr__(&self) -> String {
        let c = &self.inner;
        Python::attach(|py| {
            let r = |s: &str| repr_of(&PyString::new(py, s).into_any());
            format!(
                "CacheConfig(backend={}, key_prefix={}, file_dir={}, redis_url={}, lock_timeout={:?}, on_backend_error={}, on_lock_timeout={}, memory_maxsize={}, memory_copy={}, signing_key={})",
                r(c.backend.name()),
                r(&c.key_prefix),
                r(&c.file_dir),
                r(&c.redis_url),
                c.lock_timeout,
                r(c.on_backend_error()),
                r(c.on_lock_timeout()),
                c.memory_maxsize.map_or_else(|| "None".to_owned(), |n| n.to_string()),
                if c.memory_copy { "True" } else { "False" },
                if c.signing_key.is_some() { "'<secret>'" } else { "None" },
            )
        })
    }
}

fn config_dict<'py>(py: Python<'py>, c: &Config) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("backend", c.backend.name())?;
    d.set_item("key_prefix", &c.key_prefix)?;
    d.set_item("file_dir", &c.file_dir)?;
    d.set_item("redis_url", &c.redis_url)?;
    d.set_item("lock_timeout", c.lock_timeout)?;
    d.set_item("on_backend_error", c.on_backend_error())?;
    d.set_item("on_lock_timeout", c.on_lock_timeout())?;
    d.set_item("memory_maxsize", c.memory_maxsize)?;
    d.set_item("memory_copy", c.memory_copy)?;
    d.set_item("signing_key", c.signing_key.as_ref().map(|_| "<secret>"))?;
    // cachu 0.6's names and options.
    d.set_item("backend_default", c.backend.name())?;
    d.set_item("fail_open", !c.raise_backend_errors)?;
    d.set_item("cache_deadline", c.cache_deadline)?;
    d.set_item("memory_sweep_interval", c.memory_sweep_interval)?;
    d.set_item("redis_socket_timeout", c.redis_socket_timeout)?;
    d.set_item("redis_retry_count", c.redis_retry_count)?;
    d.set_item("redis_health_check_interval", c.redis_health_check_interval)?;
    d.set_item("ttl_jitter", c.ttl_jitter)?;
    d.set_item("memory_maxbytes", c.memory_maxbytes)?;
    d.set_item("stale_ttl", c.stale_ttl)?;
    d.set_item("stale_if_error", c.stale_if_error)?;
    d.set_item("early_refresh", c.early_refresh)?;
    d.set_item("timeout", c.timeout)?;
    d.set_item("near_cache", c.near_cache)?;
    d.set_item("near_cache_maxsize", c.near_cache_maxsize)?;
    Ok(d)
}

fn present_arg<'py>(v: Option<&Bound<'py, PyAny>>) -> Option<Bound<'py, PyAny>> {
    v.filter(|v| !v.is_none()).cloned()
}

/// Configures the caller's package (or `package`). Options left as `None` keep their
/// current value; an unknown option or a bad value raises `ConfigurationError` and
/// changes nothing.
#[pyfunction]
#[pyo3(signature = (backend=None, key_prefix=None, file_dir=None, redis_url=None, lock_timeout=None, on_backend_error=None, on_lock_timeout=None, memory_maxsize=None, memory_copy=None, signing_key=None, *, package=None, **unknown))]
pub fn configure(
    py: Python<'_>,
    backend: Option<&Bound<'_, PyAny>>,
    key_prefix: Option<&Bound<'_, PyAny>>,
    file_dir: Option<&Bound<'_, PyAny>>,
    redis_url: Option<&Bound<'_, PyAny>>,
    lock_timeout: Option<&Bound<'_, PyAny>>,
    on_backend_error: Option<&Bound<'_, PyAny>>,
    on_lock_timeout: Option<&Bound<'_, PyAny>>,
    memory_maxsize: Option<&Bound<'_, PyAny>>,
    memory_copy: Option<&Bound<'_, PyAny>>,
    signing_key: Option<&Bound<'_, PyAny>>,
    package: Option<String>,
    unknown: Option<&Bound<'_, PyDict>>,
) -> PyResult<PyConfig> {
    let later = super::since_0_6::parse(unknown)?;
    let backend = present_arg(backend)
        .map(|v| BackendKind::parse("backend", &v))
        .transpose()?;
    let key_prefix = present_arg(key_prefix)
        .map(|v| parse_str("key_prefix", &v))
        .transpose()?;
    let file_dir = present_arg(file_dir)
        .map(|v| parse_file_dir(&v))
        .transpose()?;
    let redis_url = present_arg(redis_url)
        .map(|v| parse_str("redis_url", &v))
        .transpose()?;
    let lock_timeout = present_arg(lock_timeout)
        .map(|v| parse_seconds("lock_timeout", &v))
        .transpose()?;
    let raise_backend_errors = present_arg(on_backend_error)
        .map(|v| parse_choice("on_backend_error", &v, ["miss", "raise"]))
        .transpose()?;
    let memory_maxsize = present_arg(memory_maxsize)
        .map(|v| parse_maxsize(&v))
        .transpose()?;
    let memory_copy = present_arg(memory_copy)
        .map(|v| parse_bool("memory_copy", &v))
        .transpose()?;
    let signing_key = present_arg(signing_key)
        .map(|v| parse_signing_key(&v))
        .transpose()?;
    if let (Some(a), Some(b)) = (backend, later.backend_default) {
        if a != b {
            return Err(CacheError::config(
                "backend_default",
                format!("'{b}'"),
                format!("backend='{a}' was given too: they are one option (backend_default is cachu 0.6's name); give one"),
            )
            .into());
        }
    }
    if let (Some(raise), Some(open)) = (raise_backend_errors, later.fail_open) {
        if raise == open {
            return Err(CacheError::config(
                "fail_open",
                if open { "True" } else { "False" },
                "on_backend_error was given too, and says the opposite (fail_open=True is on_backend_error='miss')",
            )
            .into());
        }
    }
    let raise_lock_timeout = present_arg(on_lock_timeout)
        .map(|v| parse_choice("on_lock_timeout", &v, ["run", "raise"]))
        .transpose()?;

    let package = resolve_package(py, package);
    // The backends check what is theirs to check (the Redis URL), then are told.
    let cfg = update(package.as_deref(), |cfg| {
        if let Some(v) = backend {
            cfg.backend = v;
        }
        if let Some(v) = key_prefix {
            cfg.key_prefix = v;
        }
        if let Some(v) = file_dir {
            cfg.file_dir = v;
        }
        if let Some(v) = redis_url {
            cfg.redis_url = v;
        }
        if let Some(v) = lock_timeout {
            cfg.lock_timeout = v;
        }
        if let Some(v) = raise_backend_errors {
            cfg.raise_backend_errors = v;
        }
        if let Some(v) = raise_lock_timeout {
            cfg.raise_lock_timeout = v;
        }
        if let Some(v) = memory_maxsize {
            cfg.memory_maxsize = v;
        }
        if let Some(v) = memory_copy {
            cfg.memory_copy = v;
        }
        if let Some(v) = signing_key {
            cfg.signing_key = v;
        }
        later.apply(cfg);
    })?;
    Ok(PyConfig { inner: cfg })
}

/// The configuration of the caller's package (or `package`).
#[pyfunction]
#[pyo3(signature = (package=None))]
pub fn get_config(py: Python<'_>, package: Option<String>) -> PyConfig {
    let package = resolve_package(py, package);
    PyConfig {
        inner: config_of(package.as_deref()),
    }
}

/// Every configured package's settings as dicts, plus `'_default'`.
#[pyfunction]
pub fn get_all_configs(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("_default", config_dict(py, &defaults())?)?;
    for (pkg, cfg) in &super::all_configs() {
        out.set_item(pkg.as_deref(), config_dict(py, cfg)?)?;
    }
    Ok(out)
}

/// The package of the nearest caller outside cachu.
#[pyfunction]
pub fn _caller_package(py: Python<'_>) -> Option<String> {
    super::caller_package(py)
}

/// Every package's configuration and the defaults, kept to be put back
/// (`_config_restore`): what the pytest plugin's isolated cache restores.
#[pyclass(frozen, module = "cachu._cachu")]
pub struct ConfigSnapshot(super::Snapshot);

/// The configuration of every package and the defaults, as they are now.
#[pyfunction]
pub fn _config_snapshot() -> ConfigSnapshot {
    ConfigSnapshot(super::snapshot())
}

/// Puts back what `_config_snapshot` kept.
#[pyfunction]
pub fn _config_restore(snapshot: &ConfigSnapshot) {
    super::restore(&snapshot.0);
}
