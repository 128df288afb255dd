//! `@cache(...)`: the decorator factory, the cached function and its helpers.
//!
//! Decoration reads the signature and validates every option once. A call is one
//! Rust function: check the switches, build the key, look it up, and on a miss run the
//! function once per key however many threads ask (see `flight.rs`).

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use pyo3::exceptions::PyException;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyString, PyTuple};
use pyo3::{intern, PyTraverseError};

use crate::backend::memory::unix_now;
use crate::backend::{self, Backend, Lease};
use crate::codec::Stored;
use crate::config::{self, BackendKind};
use crate::errors::{repr_of, CacheError};
use crate::flight::{Flights, Join, Waited};
use crate::key::{function_head, region_name, KeyPlan};
use crate::vectorcall::{self, FastCall};
use crate::warn;

/// The longest pause between two looks at a lease held by another process.
const MAX_POLL: Duration = Duration::from_millis(50);

/// A token that names one lease holder, unique across processes and calls: a random
/// seed drawn once per process (a child of `fork()` shares it, so the process id is
/// part of the token too) and a counter.
pub(crate) fn lease_token() -> String {
    use std::fmt::Write;
    use std::hash::{BuildHasher, Hasher};
    static SEED: LazyLock<u64> = LazyLock::new(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    });
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // `{seed}-{pid}-`, written once per process.
    static PREFIX: Mutex<(u32, String)> = Mutex::new((0, String::new()));
    let pid = std::process::id();
    let mut token = {
        let mut prefix = PREFIX.lock();
        if prefix.0 != pid || prefix.1.is_empty() {
            *prefix = (pid, format!("{:016x}-{pid:x}-", *SEED));
        }
        let mut token = String::with_capacity(prefix.1.len() + 16);
        token.push_str(&prefix.1);
        token
    };
    let _ = write!(token, "{:x}", COUNTER.fetch_add(1, Ordering::Relaxed));
    token
}

thread_local! {
    static KEY_BUF: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
}

/// A key built in a buffer that this thread reuses from call to call. A nested call
/// (a `repr` or the function calling another cached one) finds the buffer taken and
/// uses a fresh one: reentrancy costs an allocation, never a wrong key.
pub(crate) struct KeyBuf(String);

impl KeyBuf {
    fn take() -> Self {
        KeyBuf(KEY_BUF.try_with(std::cell::Cell::take).unwrap_or_default())
    }
}

impl std::ops::Deref for KeyBuf {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Drop for KeyBuf {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        if buf.capacity() <= 4096 {
            buf.clear();
            let _ = KEY_BUF.try_with(|c| c.set(buf));
        }
    }
}

/// How long a region whose backend failed to open is left alone before a retry.
const RETRY_FAILED_BACKEND: Duration = Duration::from_secs(5);

/// A decorated function's time to live.
pub enum Ttl {
    Fixed(i64),
    /// Called with the result; keys use the region of TTL -1 (`-1s`), as in 0.2.x.
    Dynamic(Py<PyAny>),
}

impl Ttl {
    /// The TTL that names the region (and the backend instance).
    pub fn region_ttl(&self) -> i64 {
        match self {
            Ttl::Fixed(t) => *t,
            Ttl::Dynamic(_) => -1,
        }
    }

    fn parse(value: &Bound<'_, PyAny>) -> Result<Ttl, CacheError> {
        if let Some(seconds) = whole_seconds(value) {
            return Ok(Ttl::Fixed(seconds));
        }
        if value.is_callable() {
            return Ok(Ttl::Dynamic(value.clone().unbind()));
        }
        Err(CacheError::config(
            "ttl",
            repr_of(value),
            "expected a whole number of seconds >= 0, or a callable that takes the result and returns one",
        ))
    }
}

/// A whole, non-negative number of seconds (an `int`, or a `float` without a fraction).
pub fn whole_seconds(value: &Bound<'_, PyAny>) -> Option<i64> {
    if value.is_instance_of::<PyBool>() {
        return None;
    }
    if value.is_instance_of::<PyInt>() {
        return value.extract::<i64>().ok().filter(|s| *s >= 0);
    }
    if value.is_instance_of::<PyFloat>() {
        let f: f64 = value.extract().ok()?;
        if f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 9.0e15 {
            return Some(f as i64);
        }
    }
    None
}

/// A TTL that names a region: whole seconds >= 0, or -1 (the region of dynamic TTLs).
pub fn parse_region_ttl(value: &Bound<'_, PyAny>) -> PyResult<i64> {
    whole_seconds(value)
        .or_else(|| {
            (value.is_instance_of::<PyInt>() && !value.is_instance_of::<PyBool>())
                .then(|| value.extract::<i64>().ok())
                .flatten()
                .filter(|t| *t == -1)
        })
        .ok_or_else(|| {
            CacheError::config(
                "ttl",
                repr_of(value),
                "expected a whole number of seconds >= 0",
            )
            .into()
        })
}

/// Hit and miss counters of one decorated function.
pub struct Stats {
    pub package: Option<String>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

static ALL_STATS: LazyLock<Mutex<Vec<Weak<Stats>>>> = LazyLock::new(|| Mutex::new(Vec::new()));

/// Zeroes the counters of every decorated function of `package`.
pub fn reset_stats(package: Option<&str>) {
    let mut all = ALL_STATS.lock();
    all.retain(|w| w.strong_count() > 0);
    for s in all.iter().filter_map(Weak::upgrade) {
        if s.package.as_deref() == package {
            s.hits.store(0, Ordering::Relaxed);
            s.misses.store(0, Ordering::Relaxed);
        }
    }
}

/// Slots of a thread's copies of resolved settings, by function id.
const HERE_SLOTS: usize = 64;

/// A function's settings as this thread last resolved them, shared by a count that only
/// this thread touches.
#[derive(Clone)]
#[allow(clippy::redundant_allocation)] // the Arc is shared with other threads, the Rc is not
pub(crate) struct Here(Rc<Arc<Resolved>>);

impl std::ops::Deref for Here {
    type Target = Resolved;
    fn deref(&self) -> &Resolved {
        &self.0
    }
}

thread_local! {
    static HERE: RefCell<[Option<(u64, Here)>; HERE_SLOTS]> =
        const { RefCell::new([const { None }; HERE_SLOTS]) };
}

/// Ids of decorated functions: unique for the life of the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// What the settings of the moment make of a decorated function.
pub(crate) struct Resolved {
    generation: u64,
    /// `{region}:{key_prefix}{name}|` (or with the tag): every key starts with it.
    head: String,
    pub(crate) backend: Result<Arc<Backend>, (PyErr, Instant)>,
    pub(crate) lock_timeout: Duration,
    /// `on_backend_error='raise'`.
    raise_backend_errors: bool,
    /// `on_lock_timeout='raise'`.
    pub(crate) raise_lock_timeout: bool,
    /// Whether results are kept as copies (`memory_copy=False` on the memory backend:
    /// the results themselves).
    copy: bool,
}

impl Resolved {
    /// Made under the settings of `generation`, and not a failure to open the backend
    /// that is due for a retry.
    fn is_current(&self, generation: u64) -> bool {
        self.generation == generation
            && !matches!(&self.backend, Err((_, at)) if at.elapsed() > RETRY_FAILED_BACKEND)
    }
}

/// The options of `@cache(...)`, validated.
pub struct Options {
    ttl: Ttl,
    backend: Option<BackendKind>,
    tag: String,
    exclude: HashSet<String>,
    cache_if: Option<Py<PyAny>>,
    validate: Option<Py<PyAny>>,
    package: Option<String>,
}

impl Options {
    /// Validates every option of `@cache(...)`, naming the one that is wrong.
    pub fn parse(
        py: Python<'_>,
        ttl: &Bound<'_, PyAny>,
        backend: Option<&Bound<'_, PyAny>>,
        tag: Option<&Bound<'_, PyAny>>,
        exclude: Option<&Bound<'_, PyAny>>,
        cache_if: Option<&Bound<'_, PyAny>>,
        validate: Option<&Bound<'_, PyAny>>,
        package: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Options> {
        let ttl = Ttl::parse(ttl)?;
        let backend = backend
            .filter(|b| !b.is_none())
            .map(|b| BackendKind::parse("backend", b))
            .transpose()?;
        let tag = match tag.filter(|t| !t.is_none()) {
            None => String::new(),
            Some(t) => t
                .cast::<PyString>()
                .ok()
                .and_then(|s| s.to_str().ok().map(str::to_owned))
                .ok_or_else(|| CacheError::config("tag", repr_of(t), "expected a str"))?,
        };
        let exclude = match exclude.filter(|e| !e.is_none()) {
            None => HashSet::new(),
            Some(e) => parse_exclude(e)?,
        };
        let callable = |name: &'static str,
                        v: Option<&Bound<'_, PyAny>>|
         -> PyResult<Option<Py<PyAny>>> {
            match v.filter(|v| !v.is_none()) {
                None => Ok(None),
                Some(v) if v.is_callable() => Ok(Some(v.clone().unbind())),
                Some(v) => Err(CacheError::config(name, repr_of(v), "expected a callable").into()),
            }
        };
        let cache_if = callable("cache_if", cache_if)?;
        let validate = callable("validate", validate)?;
        let package = match package.filter(|p| !p.is_none()) {
            Some(p) => Some(
                p.extract::<String>()
                    .map_err(|_| CacheError::config("package", repr_of(p), "expected a str"))?,
            ),
            None => config::caller_package(py),
        };
        Ok(Options {
            ttl,
            backend,
            tag,
            exclude,
            cache_if,
            validate,
            package,
        })
    }
}

fn parse_exclude(e: &Bound<'_, PyAny>) -> PyResult<HashSet<String>> {
    let bad = || CacheError::config("exclude", repr_of(e), "expected a set of parameter names");
    if e.is_instance_of::<PyString>() {
        return Err(bad().into());
    }
    let iter = e.try_iter().map_err(|_| bad())?;
    let mut out = HashSet::new();
    for item in iter {
        out.insert(item?.extract::<String>().map_err(|_| bad())?);
    }
    Ok(out)
}

/// The decorator that `cache(...)` returns.
#[pyclass(frozen, module = "cachu._cachu")]
pub struct Decorator {
    options: Mutex<Option<Options>>,
}

impl Decorator {
    pub fn new(options: Options) -> Self {
        Decorator {
            options: Mutex::new(Some(options)),
        }
    }
}

#[pymethods]
impl Decorator {
    fn __call__(&self, py: Python<'_>, func: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        if !func.is_callable() {
            return Err(
                CacheError::config("func", repr_of(func), "@cache decorates a function").into(),
            );
        }
        let options = {
            let opts = self.options.lock();
            opts.as_ref().map(|o| o.clone_ref(py))
        }
        .ok_or_else(|| {
            CacheError::config("func", repr_of(func), "this decorator was already used")
        })?;
        let is_async = py
            .import("inspect")?
            .getattr("iscoroutinefunction")?
            .call1((func,))?
            .is_truthy()?;
        let cached = Bound::new(py, CachedFunction::new(py, func, options)?)?;
        vectorcall::install(&cached, &cached.get().entry);
        py.import("functools")?
            .getattr("update_wrapper")?
            .call1((&cached, func))?;
        if is_async {
            // The coroutine front lives in Python: it awaits, and calls back into this
            // object for keys and storage.
            return Ok(py
                .import("cachu._async")?
                .getattr("wrap")?
                .call1((cached,))?
                .unbind());
        }
        Ok(cached.into_any().unbind())
    }
}

impl Options {
    fn clone_ref(&self, py: Python<'_>) -> Options {
        Options {
            ttl: match &self.ttl {
                Ttl::Fixed(t) => Ttl::Fixed(*t),
                Ttl::Dynamic(f) => Ttl::Dynamic(f.clone_ref(py)),
            },
            backend: self.backend,
            tag: self.tag.clone(),
            exclude: self.exclude.clone(),
            cache_if: self.cache_if.as_ref().map(|f| f.clone_ref(py)),
            validate: self.validate.as_ref().map(|f| f.clone_ref(py)),
            package: self.package.clone(),
        }
    }
}

/// A value handed to `validate=` callbacks.
#[pyclass(frozen, module = "cachu._cachu", name = "CacheEntry")]
pub struct CacheEntry {
    #[pyo3(get)]
    value: Py<PyAny>,
    #[pyo3(get)]
    created_at: f64,
    #[pyo3(get)]
    age: f64,
}

#[pymethods]
impl CacheEntry {
    #[new]
    fn py_new(value: Py<PyAny>, created_at: f64, age: f64) -> Self {
        CacheEntry {
            value,
            created_at,
            age,
        }
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "CacheEntry(value={}, created_at={}, age={})",
            repr_of(self.value.bind(py)),
            self.created_at,
            self.age
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.value)
    }
}

/// Statistics of one decorated function.
#[pyclass(frozen, eq, module = "cachu._cachu", name = "CacheInfo")]
#[derive(PartialEq, Eq)]
pub struct CacheInfo {
    #[pyo3(get)]
    hits: u64,
    #[pyo3(get)]
    misses: u64,
    #[pyo3(get)]
    currsize: usize,
}

#[pymethods]
impl CacheInfo {
    #[new]
    fn py_new(hits: u64, misses: u64, currsize: usize) -> Self {
        CacheInfo {
            hits,
            misses,
            currsize,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "CacheInfo(hits={}, misses={}, currsize={})",
            self.hits, self.misses, self.currsize
        )
    }
}

/// The per-call switches, taken out of `**kwargs` before the function sees them.
#[derive(Default, Clone, Copy)]
pub(crate) struct Flags {
    pub(crate) skip: bool,
    pub(crate) overwrite: bool,
}

#[inline]
pub(crate) fn take_flags<'py>(
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<(Option<Bound<'py, PyDict>>, Flags)> {
    let Some(kw) = kwargs.filter(|k| !k.is_empty()) else {
        return Ok((None, Flags::default()));
    };
    let py = kw.py();
    let skip = kw.get_item(intern!(py, "_skip_cache"))?;
    let overwrite = kw.get_item(intern!(py, "_overwrite_cache"))?;
    if skip.is_none() && overwrite.is_none() {
        return Ok((Some(kw.clone()), Flags::default()));
    }
    // The caller's dict is not ours to change.
    let kw = kw.copy()?;
    let mut flags = Flags::default();
    if let Some(v) = skip {
        flags.skip = v.is_truthy()?;
        kw.del_item(intern!(py, "_skip_cache"))?;
    }
    if let Some(v) = overwrite {
        flags.overwrite = v.is_truthy()?;
        kw.del_item(intern!(py, "_overwrite_cache"))?;
    }
    Ok((Some(kw), flags))
}

/// What the computing caller hands to those that waited for it.
type Outcome = Result<Stored, PyErr>;

/// A function decorated with `@cache(...)`.
#[pyclass(frozen, dict, weakref, module = "cachu._cachu")]
pub struct CachedFunction {
    func: Py<PyAny>,
    name: String,
    head: String,
    plan: KeyPlan,
    ttl: Ttl,
    backend: Option<BackendKind>,
    package: Option<String>,
    cache_if: Option<Py<PyAny>>,
    validate: Option<Py<PyAny>>,
    pub(crate) stats: Arc<Stats>,
    flights: Flights<Outcome>,
    resolved: RwLock<Option<Arc<Resolved>>>,
    /// Names this function in the threads' copies of its settings.
    id: u64,
    /// The vectorcall entry (`vectorcall.rs`).
    entry: pyo3::ffi::vectorcallfunc,
}

static METHOD_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

impl CachedFunction {
    fn new(py: Python<'_>, func: &Bound<'_, PyAny>, o: Options) -> PyResult<Self> {
        let target = match func.getattr(intern!(py, "__wrapped__")) {
            Ok(inner) => inner,
            Err(_) => func.clone(),
        };
        let name: String = target.getattr(intern!(py, "__name__"))?.extract()?;
        let plan = KeyPlan::new(&target, o.exclude)?;
        let stats = Arc::new(Stats {
            package: o.package.clone(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        });
        ALL_STATS.lock().push(Arc::downgrade(&stats));
        config::register_function(o.package.as_deref(), &name);
        Ok(CachedFunction {
            func: func.clone().unbind(),
            head: function_head(&name, &o.tag),
            name,
            plan,
            ttl: o.ttl,
            backend: o.backend,
            package: o.package,
            cache_if: o.cache_if,
            validate: o.validate,
            stats,
            flights: Flights::default(),
            resolved: RwLock::new(None),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            entry: vectorcall::entry::<CachedFunction>,
        })
    }

    /// The settings in force, re-read only after a `configure()`.
    #[inline]
    pub(crate) fn resolve(&self) -> Arc<Resolved> {
        let generation = config::generation();
        if let Some(r) = &*self.resolved.read() {
            if r.is_current(generation) {
                return r.clone();
            }
        }
        self.resolve_slow(generation)
    }

    /// The settings in force, from this thread's copy when it is current: the calls of
    /// the hot paths take no lock and touch no shared reference count.
    #[inline]
    pub(crate) fn resolve_here(&self) -> Here {
        let generation = config::generation();
        let slot = (self.id % HERE_SLOTS as u64) as usize;
        let found = HERE
            .try_with(|cell| {
                let slots = cell.try_borrow().ok()?;
                match &slots[slot] {
                    Some((id, r)) if *id == self.id && r.is_current(generation) => Some(r.clone()),
                    _ => None,
                }
            })
            .ok()
            .flatten();
        found.unwrap_or_else(|| self.resolve_here_slow(slot))
    }

    #[cold]
    #[inline(never)]
    fn resolve_here_slow(&self, slot: usize) -> Here {
        let r = Here(Rc::new(self.resolve()));
        let replaced = HERE
            .try_with(|cell| {
                let mut slots = cell.try_borrow_mut().ok()?;
                slots[slot].replace((self.id, r.clone()))
            })
            .ok()
            .flatten();
        // Dropped outside the borrow: it may hold the last reference to Python objects.
        drop(replaced);
        r
    }

    #[cold]
    #[inline(never)]
    fn resolve_slow(&self, generation: u64) -> Arc<Resolved> {
        let cfg = config::config_of(self.package.as_deref());
        let region_ttl = self.ttl.region_ttl();
        let kind = self.backend.unwrap_or(cfg.backend);
        let backend = backend::instance(self.package.as_deref(), kind, region_ttl)
            .map_err(|e| (e, Instant::now()));
        let r = Arc::new(Resolved {
            generation,
            head: format!(
                "{}:{}{}",
                region_name(region_ttl),
                cfg.key_prefix,
                self.head
            ),
            backend,
            lock_timeout: Duration::from_secs_f64(cfg.lock_timeout),
            raise_backend_errors: cfg.raise_backend_errors,
            raise_lock_timeout: cfg.raise_lock_timeout,
            copy: cfg.memory_copy || kind != BackendKind::Memory,
        });
        *self.resolved.write() = Some(r.clone());
        r
    }

    pub(crate) fn backend_or_err(&self, py: Python<'_>, r: &Resolved) -> PyResult<Arc<Backend>> {
        match &r.backend {
            Ok(b) => Ok(b.clone()),
            Err((e, _)) => Err(e.clone_ref(py)),
        }
    }

    pub(crate) fn key(
        &self,
        r: &Resolved,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<String> {
        let mut key = String::with_capacity(r.head.len() + 32);
        key.push_str(&r.head);
        self.plan.write_params(&mut key, args, kwargs)?;
        Ok(key)
    }

    /// The key of a call, built in this thread's reused buffer.
    #[inline]
    pub(crate) fn key_in_buffer(
        &self,
        r: &Resolved,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<KeyBuf> {
        let mut key = KeyBuf::take();
        key.0.push_str(&r.head);
        self.plan.write_params(&mut key.0, args, kwargs)?;
        Ok(key)
    }

    /// Whether a call of `n` positional arguments (and no keywords) can be keyed from
    /// the interpreter's argument array ([`CachedFunction::key_positional`]).
    #[inline]
    fn takes_positional(&self, n: usize) -> bool {
        self.plan.takes_positional(n)
    }

    /// The key of a call of positional arguments only, built in this thread's buffer.
    #[inline]
    fn key_positional<'py>(
        &self,
        py: Python<'py>,
        r: &Resolved,
        args: &[Bound<'py, PyAny>],
    ) -> PyResult<KeyBuf> {
        let mut key = KeyBuf::take();
        key.0.push_str(&r.head);
        self.plan.write_positional(py, &mut key.0, args)?;
        Ok(key)
    }

    /// The key that a call with these arguments uses, with the settings in force.
    pub fn key_for(
        &self,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<String> {
        self.key(&self.resolve(), args, kwargs)
    }

    /// The backend instance this function uses now.
    pub fn backend_now(&self, py: Python<'_>) -> PyResult<Arc<Backend>> {
        self.backend_or_err(py, &self.resolve())
    }

    /// The prefix every key of this function starts with (`{region}:{prefix}{name}|`).
    pub fn entries_prefix(&self) -> String {
        let r = self.resolve();
        let name_end = r.head.len() - self.head.len() + self.name.len() + 1;
        r.head[..name_end].to_owned()
    }

    /// A cached value valid for `validate=` (counted as a hit), or `None`.
    #[inline]
    pub(crate) fn lookup<'py>(
        &self,
        py: Python<'py>,
        r: &Resolved,
        backend: &Backend,
        key: &str,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let found = match backend.get(py, key) {
            Ok(found) => found,
            Err(e) => {
                Self::backend_failed(py, r, e)?;
                None
            }
        };
        let Some((value, created_at)) = found else {
            return Ok(None);
        };
        let valid = self.validated(py, value, created_at)?;
        if valid.is_some() {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(valid)
    }

    /// `value` if `validate=` accepts it (or there is none).
    #[inline]
    pub(crate) fn validated<'py>(
        &self,
        py: Python<'py>,
        value: Bound<'py, PyAny>,
        created_at: f64,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        if let Some(validate) = &self.validate {
            let entry = CacheEntry {
                value: value.clone().unbind(),
                created_at,
                age: (unix_now() - created_at).max(0.0),
            };
            if !validate.bind(py).call1((entry,))?.is_truthy()? {
                return Ok(None);
            }
        }
        Ok(Some(value))
    }

    /// A backend failure: raised with `on_backend_error='raise'`, else said once and
    /// the call goes on without the cache.
    pub(crate) fn backend_failed(py: Python<'_>, r: &Resolved, e: PyErr) -> PyResult<()> {
        if r.raise_backend_errors {
            return Err(e);
        }
        warn::backend_failed(py, &e);
        Ok(())
    }

    fn call_func<'py>(
        &self,
        py: Python<'py>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.func.bind(py).call(args, kwargs)
    }

    /// The seconds to keep `result`, from a fixed or a dynamic TTL.
    fn ttl_for(&self, result: &Bound<'_, PyAny>) -> PyResult<f64> {
        match &self.ttl {
            Ttl::Fixed(t) => Ok(*t as f64),
            Ttl::Dynamic(f) => {
                let v = f.bind(result.py()).call1((result,))?;
                whole_seconds(&v).map(|s| s as f64).ok_or_else(|| {
                    CacheError::config(
                        "ttl",
                        format!("<callable returned {}>", repr_of(&v)),
                        "a dynamic ttl must return a whole number of seconds >= 0",
                    )
                    .into()
                })
            }
        }
    }

    /// The seconds to keep `result`, or `None` if `cache_if` refuses it.
    pub(crate) fn ttl_if_wanted(&self, result: &Bound<'_, PyAny>) -> PyResult<Option<f64>> {
        if let Some(f) = &self.cache_if {
            if !f.bind(result.py()).call1((result,))?.is_truthy()? {
                return Ok(None);
            }
        }
        self.ttl_for(result).map(Some)
    }

    /// What the cache keeps of a result, or `None` (said once) if it can be neither
    /// copied nor pickled: the caller still gets the result.
    fn capture(&self, r: &Resolved, result: &Bound<'_, PyAny>) -> Option<Stored> {
        match Stored::capture_as(result, r.copy) {
            Ok(s) => Some(s),
            Err(e) => {
                warn::not_cached(result.py(), &self.name, &e);
                None
            }
        }
    }

    /// Runs the function and stores its result (if `cache_if` allows): the miss path.
    /// Returns the caller's result and what waiters get.
    fn compute_and_store<'py>(
        &self,
        py: Python<'py>,
        r: &Resolved,
        backend: &Backend,
        key: &str,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<(Bound<'py, PyAny>, Option<Stored>)> {
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let result = self.call_func(py, args, kwargs)?;
        let ttl = self.ttl_if_wanted(&result)?;
        let Some(stored) = self.capture(r, &result) else {
            return Ok((result, None));
        };
        if let Some(ttl) = ttl {
            if let Err(e) = backend.set_stored(py, &stored, key, ttl) {
                Self::backend_failed(py, r, e)?;
            }
        }
        Ok((result, Some(stored)))
    }

    /// What a caller that waited for another's computation gets: its result (a hit)
    /// or its exception.
    fn followed<'py>(&self, py: Python<'py>, outcome: &Outcome) -> PyResult<Bound<'py, PyAny>> {
        match outcome {
            Ok(stored) => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                stored.materialize(py)
            }
            Err(e) => Err(e.clone_ref(py)),
        }
    }

    /// The miss path, with single flight.
    fn miss<'py>(
        &self,
        py: Python<'py>,
        r: &Resolved,
        backend: &Backend,
        key: &str,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
        overwrite: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        match self.flights.join(key) {
            Join::Leader(leader) => {
                // Another caller may have stored the value between our miss and now.
                if !overwrite {
                    if let Some(v) = self.lookup(py, r, backend, key)? {
                        drop(leader);
                        return Ok(v);
                    }
                }
                match self.compute_and_store(py, r, backend, key, args, kwargs) {
                    Ok((result, stored)) => {
                        leader.finish(Ok(
                            stored.unwrap_or_else(|| Stored::Shared(result.clone().unbind()))
                        ));
                        Ok(result)
                    }
                    Err(e) => {
                        // Ordinary exceptions reach every waiter; KeyboardInterrupt and
                        // the like concern this thread only: the waiters retry.
                        if e.is_instance_of::<PyException>(py) {
                            leader.finish(Err(e.clone_ref(py)));
                        } else {
                            drop(leader);
                        }
                        Err(e)
                    }
                }
            }
            Join::Follower(flight) => {
                let timeout = r.lock_timeout;
                match py.detach(|| flight.wait(timeout)) {
                    Waited::Done(outcome) => self.followed(py, &outcome),
                    Waited::TimedOut if r.raise_lock_timeout => Err(Self::lock_timed_out(key, r)),
                    Waited::Abandoned | Waited::TimedOut => {
                        Ok(self.compute_and_store(py, r, backend, key, args, kwargs)?.0)
                    }
                }
            }
            Join::Reentrant => Ok(self.compute_and_store(py, r, backend, key, args, kwargs)?.0),
        }
    }

    pub(crate) fn lock_timed_out(key: &str, r: &Resolved) -> PyErr {
        CacheError::LockTimeout(format!(
            "waited {:?} (lock_timeout) for another caller to compute key {key:?}",
            r.lock_timeout
        ))
        .into()
    }

    /// A call on a backend with cross-process leases (Redis, and files on Linux): one
    /// call answers "here is the value" or "the lease is yours"; a miss costs one more to
    /// store the value and release the lease. Callers that find the lease held wait for
    /// the holder: on its in-process flight if it is a thread of this process, else by
    /// polling the backend, for at most `lock_timeout`.
    fn call_leased<'py>(
        &self,
        py: Python<'py>,
        r: &Resolved,
        backend: &Backend,
        key: &str,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
        overwrite: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let token = backend::Token::lazy();
        let deadline = Instant::now() + r.lock_timeout;
        let mut read = !overwrite;
        let mut pause = Duration::from_millis(2);
        loop {
            let reply = match backend.lease(py, key, &token, r.lock_timeout, read) {
                Ok(reply) => reply,
                Err(e) => {
                    Self::backend_failed(py, r, e)?;
                    self.stats.misses.fetch_add(1, Ordering::Relaxed);
                    return self.call_func(py, args, kwargs);
                }
            };
            match reply {
                Lease::Found(value, created_at) => {
                    if let Some(v) = self.validated(py, value, created_at)? {
                        self.stats.hits.fetch_add(1, Ordering::Relaxed);
                        return Ok(v);
                    }
                    read = false;
                }
                Lease::Acquired => {
                    return self.compute_leased(py, r, backend, key, token.get(), args, kwargs)
                }
                Lease::Held => {
                    let now = Instant::now();
                    if now >= deadline {
                        if r.raise_lock_timeout {
                            return Err(Self::lock_timed_out(key, r));
                        }
                        return Ok(self.compute_and_store(py, r, backend, key, args, kwargs)?.0);
                    }
                    match self.flights.find(key) {
                        Some(Join::Follower(flight)) => {
                            if let Waited::Done(outcome) = py.detach(|| flight.wait(deadline - now))
                            {
                                return self.followed(py, &outcome);
                            }
                        }
                        // This thread holds the lease further up the stack (recursion).
                        Some(Join::Reentrant) => {
                            return Ok(self.compute_and_store(py, r, backend, key, args, kwargs)?.0)
                        }
                        _ => {
                            let nap = pause.min(deadline - now);
                            py.detach(|| std::thread::sleep(nap));
                            pause = (pause * 2).min(MAX_POLL);
                        }
                    }
                    read = true;
                }
            }
        }
    }

    /// Computes under a lease, publishes to the threads of this process that wait,
    /// stores and releases. The lease is released whatever happens.
    fn compute_leased<'py>(
        &self,
        py: Python<'py>,
        r: &Resolved,
        backend: &Backend,
        key: &str,
        token: &str,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let leader = match self.flights.join(key) {
            Join::Leader(l) => Some(l),
            _ => None,
        };
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let outcome = self.call_func(py, args, kwargs).and_then(|result| {
            let ttl = self.ttl_if_wanted(&result)?;
            Ok((result, ttl))
        });
        let (result, ttl) = match outcome {
            Ok(pair) => pair,
            Err(e) => {
                if let Err(release) = backend.store_and_release(py, None, key, token) {
                    Self::backend_failed(py, r, release)?;
                }
                if let Some(l) = leader {
                    if e.is_instance_of::<PyException>(py) {
                        l.finish(Err(e.clone_ref(py)));
                    }
                }
                return Err(e);
            }
        };
        let stored = self.capture(r, &result);
        if let Some(l) = leader {
            l.finish(Ok(stored.as_ref().map_or_else(
                || Stored::Shared(result.clone().unbind()),
                |s| s.clone_ref(py),
            )));
        }
        let value = match (&stored, ttl) {
            (Some(s), Some(ttl)) => Some((s, ttl)),
            _ => None,
        };
        if let Err(e) = backend.store_and_release(py, value, key, token) {
            Self::backend_failed(py, r, e)?;
        }
        Ok(result)
    }

    /// The decorated function's `__name__`.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    fn missing(key: &str) -> PyErr {
        CacheError::Missing(format!("no cached value for key {key:?}")).into()
    }
}

impl FastCall for CachedFunction {
    /// `f(123)`: the key is built from the interpreter's argument array; only a miss
    /// packs the arguments (to call the function).
    #[inline]
    fn call_positional<'py>(
        slf: &Bound<'py, Self>,
        args: &[Bound<'py, PyAny>],
    ) -> PyResult<Bound<'py, PyAny>> {
        let this = slf.get();
        let py = slf.py();
        if !config::is_disabled_now() && this.takes_positional(args.len()) {
            let r = this.resolve_here();
            if let Ok(backend) = &r.backend {
                if !backend.has_leases() {
                    let key = this.key_positional(py, &r, args)?;
                    if let Some(v) = this.lookup(py, &r, backend, &key)? {
                        return Ok(v);
                    }
                    let args = PyTuple::new(py, args)?;
                    return this.miss(py, &r, backend, &key, &args, None, false);
                }
            }
        }
        Self::call_packed(slf, &PyTuple::new(py, args)?, None)
    }
}

impl CachedFunction {
    /// Any call, as `tp_call` receives it.
    fn call_packed<'py>(
        slf: &Bound<'py, Self>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let this = slf.get();
        let py = slf.py();
        let (kwargs, flags) = take_flags(kwargs)?;
        let kwargs = kwargs.as_ref();
        if flags.skip || config::is_disabled_now() {
            return this.call_func(py, args, kwargs);
        }
        let r = this.resolve_here();
        let backend = match &r.backend {
            Ok(b) => b,
            Err((e, _)) => {
                Self::backend_failed(py, &r, e.clone_ref(py))?;
                return this.call_func(py, args, kwargs);
            }
        };
        let key = this.key_in_buffer(&r, args, kwargs)?;
        if backend.has_leases() {
            return this.call_leased(py, &r, backend, &key, args, kwargs, flags.overwrite);
        }
        if !flags.overwrite {
            if let Some(v) = this.lookup(py, &r, backend, &key)? {
                return Ok(v);
            }
        }
        this.miss(py, &r, backend, &key, args, kwargs, flags.overwrite)
    }
}

#[pymethods]
impl CachedFunction {
    /// Calls that do not come through vectorcall (`vectorcall.rs`).
    #[pyo3(signature = (*args, **kwargs))]
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Self::call_packed(slf, args, kwargs)
    }

    fn __get__(
        slf: &Bound<'_, Self>,
        obj: Option<&Bound<'_, PyAny>>,
        _owner: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        bind_method(slf.as_any(), obj)
    }

    /// Pickled by reference, as a function is (for process pools).
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        pickled_by_name(slf.as_any())
    }

    /// The cached value for these arguments, without calling the function; `default`
    /// if there is none, else `KeyError`.
    #[pyo3(signature = (*args, **kwargs))]
    fn get<'py>(
        slf: &Bound<'py, Self>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let (default, kwargs) = split_default(args, kwargs)?;
        let this = slf.get();
        let r = this.resolve();
        let key = this.key(&r, &PyTuple::empty(py), kwargs.as_ref())?;
        let backend = this.backend_or_err(py, &r)?;
        match backend.get(py, &key)? {
            Some((v, _)) => Ok(v),
            None => default.ok_or_else(|| Self::missing(&key)),
        }
    }

    /// Stores `value` for these arguments.
    #[pyo3(signature = (value, **kwargs))]
    pub fn set(
        &self,
        py: Python<'_>,
        value: &Bound<'_, PyAny>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let r = self.resolve();
        let key = self.key(&r, &PyTuple::empty(py), kwargs)?;
        let ttl = match &self.ttl {
            Ttl::Fixed(t) => *t as f64,
            Ttl::Dynamic(_) => self.ttl_for(value)?,
        };
        self.backend_or_err(py, &r)?.set(value, &key, ttl)
    }

    /// Removes the entry of these arguments.
    #[pyo3(signature = (**kwargs))]
    pub fn invalidate(&self, py: Python<'_>, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
        let r = self.resolve();
        let key = self.key(&r, &PyTuple::empty(py), kwargs)?;
        self.backend_or_err(py, &r)?.delete(py, &key)
    }

    /// Removes the entry of these arguments, then calls (and caches) again.
    #[pyo3(signature = (**kwargs))]
    fn refresh<'py>(
        slf: &Bound<'py, Self>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        slf.get().invalidate(py, kwargs)?;
        Self::__call__(slf, &PyTuple::empty(py), kwargs)
    }

    /// Calls the undecorated function: the cache is neither read nor written.
    #[pyo3(signature = (*args, **kwargs))]
    fn original<'py>(
        &self,
        py: Python<'py>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.call_func(py, args, kwargs)
    }

    /// The key a call with these arguments reads and writes.
    #[pyo3(signature = (*args, **kwargs))]
    fn cache_key(
        &self,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<String> {
        let (kwargs, _) = take_flags(kwargs)?;
        self.key_for(args, kwargs.as_ref())
    }

    /// Hits and misses of this function, and how many entries it has in its backend.
    pub fn cache_info(&self, py: Python<'_>) -> PyResult<CacheInfo> {
        let prefix = self.entries_prefix();
        let currsize = match self.backend_now(py) {
            Ok(b) => b.count_prefix(py, &prefix)?,
            Err(_) => 0,
        };
        Ok(CacheInfo {
            hits: self.stats.hits.load(Ordering::Relaxed),
            misses: self.stats.misses.load(Ordering::Relaxed),
            currsize,
        })
    }

    /// For the async front: stores a computed result as the miss path does.
    fn _store(&self, py: Python<'_>, key: &str, result: &Bound<'_, PyAny>) -> PyResult<()> {
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let Some(ttl) = self.ttl_if_wanted(result)? else {
            return Ok(());
        };
        if let Err(e) = self.backend_now(py).and_then(|b| b.set(result, key, ttl)) {
            warn::backend_failed(py, &e);
        }
        Ok(())
    }

    /// For the async front: what a task that waited for another's computation gets,
    /// a copy of `value` as a hit would hand it out (and counted as a hit, as a thread
    /// that waited is).
    fn _copy<'py>(&self, value: &Bound<'py, PyAny>) -> Bound<'py, PyAny> {
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        Stored::capture_as(value, self.resolve().copy)
            .and_then(|s| s.materialize(value.py()))
            .unwrap_or_else(|_| value.clone())
    }

    /// Whether this function's backend keeps values in this process (no I/O).
    #[getter]
    fn _is_memory(&self, py: Python<'_>) -> bool {
        self.backend_now(py).is_ok_and(|b| b.is_memory())
    }

    fn __repr__(&self) -> String {
        format!("<cached function {}>", self.name)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.func)?;
        if let Ttl::Dynamic(f) = &self.ttl {
            visit.call(f)?;
        }
        if let Some(f) = &self.cache_if {
            visit.call(f)?;
        }
        if let Some(f) = &self.validate {
            visit.call(f)?;
        }
        Ok(())
    }
}

/// A decorated function looked up on an instance: a bound method, as for a function.
pub(crate) fn bind_method(
    func: &Bound<'_, PyAny>,
    obj: Option<&Bound<'_, PyAny>>,
) -> PyResult<Py<PyAny>> {
    match obj.filter(|o| !o.is_none()) {
        None => Ok(func.clone().unbind()),
        Some(obj) => {
            let method_type = METHOD_TYPE.import(func.py(), "types", "MethodType")?;
            Ok(method_type.call1((func, obj))?.unbind())
        }
    }
}

/// What `__reduce__` of a decorated function returns: its qualified name, which pickle
/// looks up in its module (and checks to be this very object), as for a function.
pub(crate) fn pickled_by_name<'py>(func: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    func.getattr(intern!(func.py(), "__qualname__"))
}

/// An optional default, and the keyword arguments without it.
type DefaultAndKwargs<'py> = (Option<Bound<'py, PyAny>>, Option<Bound<'py, PyDict>>);

/// Splits `.get(default, **kwargs)` / `.get(default=..., **kwargs)`.
fn split_default<'py>(
    args: &Bound<'py, PyTuple>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<DefaultAndKwargs<'py>> {
    let py = args.py();
    let kwargs = kwargs.map(PyDictMethods::copy).transpose()?;
    let mut default = None;
    if let Some(k) = &kwargs {
        if let Some(d) = k.get_item(intern!(py, "default"))? {
            k.del_item(intern!(py, "default"))?;
            default = Some(d);
        }
    }
    match args.len() {
        0 => {}
        1 if default.is_none() => default = Some(args.get_item(0)?),
        _ => {
            return Err(CacheError::config(
                "args",
                repr_of(args),
                "get() takes the default as its only positional argument; pass parameters by name",
            )
            .into())
        }
    }
    Ok((default, kwargs))
}

/// `cache(...)`: a decorator that caches a function's results.
#[pyfunction]
#[pyo3(signature = (ttl=None, backend=None, tag=None, exclude=None, cache_if=None, validate=None, package=None))]
pub fn cache(
    py: Python<'_>,
    ttl: Option<&Bound<'_, PyAny>>,
    backend: Option<&Bound<'_, PyAny>>,
    tag: Option<&Bound<'_, PyAny>>,
    exclude: Option<&Bound<'_, PyAny>>,
    cache_if: Option<&Bound<'_, PyAny>>,
    validate: Option<&Bound<'_, PyAny>>,
    package: Option<&Bound<'_, PyAny>>,
) -> PyResult<Decorator> {
    let default_ttl = 300_i64.into_pyobject(py)?.into_any();
    let ttl = ttl.unwrap_or(&default_ttl);
    Ok(Decorator::new(Options::parse(
        py, ttl, backend, tag, exclude, cache_if, validate, package,
    )?))
}
