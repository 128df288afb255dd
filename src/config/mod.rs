//! Per-package configuration and the global on/off switch: a leaf that knows no backend.
//!
//! Each calling package (the first dotted part of the caller's module `__name__`) has
//! its own [`Config`]; packages that never called `configure` read the defaults.
//! Every change bumps a generation counter, which lets decorated functions keep their
//! resolved settings cached and re-read them only after a change. The backends learn
//! of a change through one path: the [`Listener`] they register ([`listen`]), which
//! may also refuse a configuration (an unusable Redis URL) before it takes effect.
//! `configure()` and the other Python functions are in [`py`].

pub mod py;
pub mod since_0_6;
pub mod switch;

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};

use parking_lot::RwLock;
use pyo3::prelude::*;

use crate::errors::{repr_of, CacheError, CacheResult};
use pyo3::types::PyString;

/// The kinds of backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    Memory,
    File,
    Redis,
    Null,
}

impl BackendKind {
    /// Every kind, in the order clears visit them.
    pub const ALL: [BackendKind; 4] = [
        BackendKind::Memory,
        BackendKind::File,
        BackendKind::Redis,
        BackendKind::Null,
    ];

    /// Parses a backend name, naming the offending parameter on failure.
    pub fn parse(param: &'static str, value: &Bound<'_, PyAny>) -> CacheResult<Self> {
        let bad = || {
            let dynamo = value.extract::<String>().is_ok_and(|n| n == "dynamodb");
            CacheError::UnknownBackend {
                param: param.to_owned(),
                value: repr_of(value),
                expected: format!(
                    "backend must be one of ('memory', 'file', 'redis', 'null'){}",
                    if dynamo {
                        "; the DynamoDB backend of cachu 0.6 is not provided"
                    } else {
                        ""
                    }
                ),
            }
        };
        let name = value
            .cast::<PyString>()
            .map_err(|_| bad())?
            .to_str()
            .map_err(|_| bad())?;
        match name {
            "memory" => Ok(BackendKind::Memory),
            "file" => Ok(BackendKind::File),
            "redis" => Ok(BackendKind::Redis),
            "null" => Ok(BackendKind::Null),
            _ => Err(bad()),
        }
    }

    /// The name users write.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Memory => "memory",
            BackendKind::File => "file",
            BackendKind::Redis => "redis",
            BackendKind::Null => "null",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One package's settings.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::struct_excessive_bools)] // each is an option of configure()
pub struct Config {
    pub backend: BackendKind,
    pub key_prefix: String,
    pub file_dir: String,
    pub redis_url: String,
    pub lock_timeout: f64,
    /// `on_backend_error='raise'`: a failing backend raises instead of missing.
    pub raise_backend_errors: bool,
    /// `on_lock_timeout='raise'`: a waiter past `lock_timeout` raises instead of
    /// running the function itself.
    pub raise_lock_timeout: bool,
    /// The most entries the package keeps in memory (`None`: unbounded).
    pub memory_maxsize: Option<usize>,
    /// `memory_maxbytes`: the most bytes (keys and values) the package keeps in memory.
    pub memory_maxbytes: Option<usize>,
    /// `memory_copy=False`: the memory backend keeps results themselves and hands the
    /// same object to every caller, as `functools.lru_cache` does.
    pub memory_copy: bool,
    /// The key that signs values of the file and Redis backends (`seal.rs`).
    pub signing_key: Option<Secret>,
    /// `cache_deadline`: the seconds of cache work (backend operations) one call may
    /// spend; past them it goes on without the cache (cachu 0.6).
    pub cache_deadline: Option<f64>,
    /// `memory_sweep_interval`: the most seconds between two sweeps of expired memory
    /// entries (0: every insert; infinity, the default: only as the store grows, which
    /// sweeps a shard when it has doubled since its last sweep).
    pub memory_sweep_interval: f64,
    /// `redis_socket_timeout`: the connect and command timeout of Redis, where the URL
    /// sets none.
    pub redis_socket_timeout: Option<f64>,
    /// `redis_retry_count` and `redis_health_check_interval` of cachu 0.6: kept and
    /// shown; the client reconnects by itself (one try per breaker second).
    pub redis_retry_count: i64,
    pub redis_health_check_interval: i64,
    /// `ttl_jitter`: the package's default for `@cache(ttl_jitter=...)` (0: none).
    pub ttl_jitter: f64,
    /// The package's defaults of the freshness controls (`flow/fresh.rs`): seconds
    /// (0: off) of `stale_ttl` and `stale_if_error`, `early_refresh`'s BETA and the
    /// soft `timeout` (`None`: off).
    pub stale_ttl: f64,
    pub stale_if_error: f64,
    pub early_refresh: Option<f64>,
    pub timeout: Option<f64>,
    /// `near_cache`: a memory tier in this process in front of the package's Redis
    /// regions, kept coherent by the server (`backend/redis/near.rs`), of at most
    /// `near_cache_maxsize` entries.
    pub near_cache: bool,
    pub near_cache_maxsize: usize,
}

/// A key that is never shown.
#[derive(Clone, PartialEq)]
pub struct Secret(pub Arc<[u8]>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backend: BackendKind::Memory,
            key_prefix: String::new(),
            file_dir: "/tmp".to_owned(),
            redis_url: "redis://localhost:6379/0".to_owned(),
            lock_timeout: 10.0,
            raise_backend_errors: false,
            raise_lock_timeout: false,
            memory_maxsize: None,
            memory_maxbytes: None,
            memory_copy: true,
            signing_key: None,
            cache_deadline: None,
            memory_sweep_interval: f64::INFINITY,
            redis_socket_timeout: None,
            redis_retry_count: 3,
            redis_health_check_interval: 30,
            ttl_jitter: 0.0,
            stale_ttl: 0.0,
            stale_if_error: 0.0,
            early_refresh: None,
            timeout: None,
            near_cache: false,
            near_cache_maxsize: 10_000,
        }
    }
}

/// Why freshness controls cannot go with a backend, or with each other: `None` if they
/// can. `controls` are `(name, on)` pairs; the backend is `(where it is named, kind)`.
pub fn freshness_conflict(
    backend: (&'static str, BackendKind),
    controls: [(&'static str, bool); 4],
    stale_if_error: bool,
    timeout: Option<f64>,
) -> Option<CacheError> {
    if backend.1 == BackendKind::Null {
        if let Some((name, _)) = controls.iter().find(|(_, on)| *on) {
            return Some(CacheError::config(
                *name,
                "given",
                format!(
                    "the null backend ({}) stores nothing: there is no stale value to serve",
                    backend.0
                ),
            ));
        }
    }
    if let Some(t) = timeout.filter(|_| !stale_if_error) {
        return Some(CacheError::config(
            "timeout",
            t.to_string(),
            "timeout returns the stale value of stale_if_error when a computation is slow: set stale_if_error too",
        ));
    }
    None
}

impl Config {
    /// The Redis URL that connections use: `redis_url`, with `redis_socket_timeout`
    /// as its timeouts where it sets none.
    pub fn redis_endpoint_url(&self) -> String {
        let Some(t) = self.redis_socket_timeout else {
            return self.redis_url.clone();
        };
        let (head, fragment) = match self.redis_url.split_once('#') {
            Some((h, f)) => (h, Some(f)),
            None => (self.redis_url.as_str(), None),
        };
        let mut url = head.to_owned();
        for name in ["socket_timeout", "socket_connect_timeout"] {
            if !head.contains(&format!("{name}=")) {
                url.push(if url.contains('?') { '&' } else { '?' });
                let _ = write!(url, "{name}={t}");
            }
        }
        if let Some(f) = fragment {
            url.push('#');
            url.push_str(f);
        }
        url
    }

    pub fn on_backend_error(&self) -> &'static str {
        if self.raise_backend_errors {
            "raise"
        } else {
            "miss"
        }
    }
    pub fn on_lock_timeout(&self) -> &'static str {
        if self.raise_lock_timeout {
            "raise"
        } else {
            "run"
        }
    }
}

type Registry = HashMap<Option<String>, Arc<Config>>;

static REGISTRY: LazyLock<RwLock<Registry>> = LazyLock::new(|| RwLock::new(HashMap::new()));
/// The configuration of every package that never configured its own
/// (`configure(package="*")`).
static DEFAULT: LazyLock<RwLock<Arc<Config>>> =
    LazyLock::new(|| RwLock::new(Arc::new(Config::default())));

/// The `package=` that names the defaults of every package without its own
/// configuration (no Python package is called `*`).
pub const EVERY_PACKAGE: &str = "*";
static GENERATION: AtomicU64 = AtomicU64::new(1);
/// The switches of `disable()`: [`OFF_GLOBALLY`], [`OFF_IN_SCOPES`], or 0 (all on):
/// one load on the hot path whatever is disabled.
static SWITCH: AtomicU8 = AtomicU8::new(0);
const OFF_GLOBALLY: u8 = 1;
const OFF_IN_SCOPES: u8 = 2;

/// The packages and tags that `disable(package=..., tag=...)` switched off.
#[derive(Default, Clone)]
pub struct Scopes {
    pub packages: HashSet<String>,
    pub tags: HashSet<String>,
}

static SCOPES: LazyLock<RwLock<(bool, Scopes)>> = LazyLock::new(RwLock::default);
/// The names of the cached functions of each package: the scope of a Redis clear when
/// the package has no key prefix.
static FUNCTIONS: LazyLock<RwLock<HashMap<Option<String>, HashSet<String>>>> =
    LazyLock::new(|| RwLock::new(HashMap::new()));

/// Records that `package` has a cached function called `name`.
pub fn register_function(package: Option<&str>, name: &str) {
    let mut map = FUNCTIONS.write();
    let names = map.entry(package.map(str::to_owned)).or_default();
    if !names.contains(name) {
        names.insert(name.to_owned());
    }
}

/// The names of the cached functions of `package` seen so far.
pub fn functions_of(package: Option<&str>) -> HashSet<String> {
    FUNCTIONS
        .read()
        .get(&package.map(str::to_owned))
        .cloned()
        .unwrap_or_default()
}

/// Changes whenever any package's configuration changes.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// Makes every decorated function re-read its settings and backend on its next call.
pub fn bump_generation() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// Whether `disable()` is in force for every cache.
#[inline]
pub fn is_disabled_now() -> bool {
    SWITCH.load(Ordering::Relaxed) & OFF_GLOBALLY != 0
}

/// Whether caching is off for the functions of `package` declared with `tag` (`""`:
/// untagged): globally, or by one of the scopes (OR-ed).
#[inline]
pub fn is_off(package: Option<&str>, tag: &str) -> bool {
    match SWITCH.load(Ordering::Relaxed) {
        0 => false,
        s if s & OFF_GLOBALLY != 0 => true,
        _ => is_off_in_scopes(package, tag),
    }
}

#[cold]
fn is_off_in_scopes(package: Option<&str>, tag: &str) -> bool {
    let scopes = SCOPES.read();
    package.is_some_and(|p| scopes.1.packages.contains(p))
        || (!tag.is_empty() && scopes.1.tags.contains(tag))
}

/// `disable()` with no scope turns every cache off; with a package and/or a tag, the
/// caches of those (scopes accumulate). `enable()` with no scope turns everything
/// back on; with a scope, lifts that scope only (never a global `disable()`).
pub fn switch(on: bool, package: Option<&str>, tag: Option<&str>) {
    let mut guard = SCOPES.write();
    let (globally, scopes) = &mut *guard;
    match (package, tag, on) {
        (None, None, false) => *globally = true,
        (None, None, true) => {
            *globally = false;
            *scopes = Scopes::default();
        }
        _ => {
            for (name, set) in [(package, &mut scopes.packages), (tag, &mut scopes.tags)] {
                if let Some(name) = name {
                    if on {
                        set.remove(name);
                    } else {
                        set.insert(name.to_owned());
                    }
                }
            }
        }
    }
    let any_scope = !scopes.packages.is_empty() || !scopes.tags.is_empty();
    let value =
        if *globally { OFF_GLOBALLY } else { 0 } | if any_scope { OFF_IN_SCOPES } else { 0 };
    SWITCH.store(value, Ordering::Relaxed);
}

/// Whether caching is off globally, and the scopes switched off.
pub fn switches() -> (bool, Scopes) {
    SCOPES.read().clone()
}

/// The configuration of `package`, or the defaults if it never configured.
pub fn config_of(package: Option<&str>) -> Arc<Config> {
    let reg = REGISTRY.read();
    reg.get(&package.map(str::to_owned))
        .cloned()
        .unwrap_or_else(defaults)
}

/// Whether `package` configured its own settings (else it reads the defaults).
pub fn has_own_config(package: Option<&str>) -> bool {
    REGISTRY.read().contains_key(&package.map(str::to_owned))
}

/// The package of the Python code that called into cachu: the first dotted part of the
/// nearest frame's module name that is not cachu's own; `__main__.{script stem}` for a
/// script, as 0.2.x names it (its SQLite files carry that name).
pub fn caller_package(py: Python<'_>) -> Option<String> {
    let sys = py.import("sys").ok()?;
    let mut frame = sys.getattr("_getframe").ok()?.call1((0,)).ok()?;
    while !frame.is_none() {
        let name = frame
            .getattr("f_globals")
            .ok()
            .and_then(|g| g.get_item("__name__").ok())
            .and_then(|n| n.extract::<String>().ok())
            .unwrap_or_default();
        if !name.is_empty() && name != "cachu" && !name.starts_with("cachu.") {
            let pkg = name.split('.').next().unwrap_or_default().to_owned();
            if pkg == "__main__" {
                if let Some(stem) = script_stem(&sys) {
                    return Some(format!("__main__.{stem}"));
                }
            }
            return Some(pkg);
        }
        frame = frame.getattr("f_back").ok()?;
    }
    None
}

fn script_stem(sys: &Bound<'_, PyModule>) -> Option<String> {
    let argv0: String = sys.getattr("argv").ok()?.get_item(0).ok()?.extract().ok()?;
    if argv0.is_empty() {
        return None;
    }
    let path = std::path::Path::new(&argv0);
    path.file_stem().map(|s| s.to_string_lossy().into_owned())
}

/// A package name given as `package=`, or the caller's.
pub fn resolve_package(py: Python<'_>, package: Option<String>) -> Option<String> {
    package.or_else(|| caller_package(py))
}

/// What a configuration change tells the backends.
pub struct Change<'a> {
    pub package: Option<&'a str>,
    pub old: &'a Config,
    pub new: &'a Config,
}

/// The backends' side of a configuration change: `check` may refuse a configuration
/// before it takes effect; `changed` is told of it after.
pub struct Listener {
    pub check: fn(&Config) -> CacheResult<()>,
    pub changed: fn(&Change<'_>),
}

static LISTENER: OnceLock<Listener> = OnceLock::new();

/// Registers the backends' listener (once, when the module is initialised).
pub fn listen(listener: Listener) {
    let _ = LISTENER.set(listener);
}

/// Changes the configuration of `package` with `edit`: checked by the listener first
/// (nothing changes if it refuses), then published, and the listener told.
/// `package` [`EVERY_PACKAGE`] changes the defaults that every package without its
/// own configuration reads.
pub fn update(package: Option<&str>, edit: impl FnOnce(&mut Config)) -> CacheResult<Arc<Config>> {
    let key = package.map(str::to_owned);
    let mut reg = REGISTRY.write();
    let every = package == Some(EVERY_PACKAGE);
    let old = if every {
        defaults()
    } else {
        reg.get(&key).cloned().unwrap_or_else(defaults)
    };
    let mut cfg = (*old).clone();
    edit(&mut cfg);
    if let Some(e) = freshness_conflict(
        ("the package's backend", cfg.backend),
        [
            ("stale_ttl", cfg.stale_ttl > 0.0),
            ("stale_if_error", cfg.stale_if_error > 0.0),
            ("early_refresh", cfg.early_refresh.is_some()),
            ("timeout", cfg.timeout.is_some()),
        ],
        cfg.stale_if_error > 0.0,
        cfg.timeout,
    ) {
        return Err(e);
    }
    if let Some(l) = LISTENER.get() {
        (l.check)(&cfg)?;
    }
    let cfg = Arc::new(cfg);
    if every {
        *DEFAULT.write() = cfg.clone();
    } else {
        reg.insert(key, cfg.clone());
    }
    drop(reg);
    tell(package, &old, &cfg);
    bump_generation();
    Ok(cfg)
}

fn tell(package: Option<&str>, old: &Config, new: &Config) {
    if let Some(l) = LISTENER.get() {
        (l.changed)(&Change { package, old, new });
    }
}

/// Every package's configuration and the defaults, as they are now.
pub struct Snapshot {
    packages: Registry,
    defaults: Arc<Config>,
}

/// The configuration of every package and the defaults, to [`restore`] later.
pub fn snapshot() -> Snapshot {
    Snapshot {
        packages: REGISTRY.read().clone(),
        defaults: defaults(),
    }
}

/// Puts back a [`snapshot`]: every package's configuration and the defaults as they
/// were, the backends told of each change.
pub fn restore(snapshot: &Snapshot) {
    let old_defaults = defaults();
    let old = std::mem::replace(&mut *REGISTRY.write(), snapshot.packages.clone());
    *DEFAULT.write() = snapshot.defaults.clone();
    tell(Some(EVERY_PACKAGE), &old_defaults, &snapshot.defaults);
    let keys: HashSet<&Option<String>> = old.keys().chain(snapshot.packages.keys()).collect();
    for key in keys {
        let before = old
            .get(key)
            .cloned()
            .unwrap_or_else(|| old_defaults.clone());
        let after = snapshot
            .packages
            .get(key)
            .cloned()
            .unwrap_or_else(|| snapshot.defaults.clone());
        if before != after {
            tell(key.as_deref(), &before, &after);
        }
    }
    bump_generation();
}

/// A copy of every package's configuration.
pub fn all_configs() -> Vec<(Option<String>, Arc<Config>)> {
    REGISTRY
        .read()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The defaults.
pub fn defaults() -> Arc<Config> {
    DEFAULT.read().clone()
}
