//! A function decorated with `@cache(...)`: what it is made of, and the decisions its
//! calls share whoever drives them.
//!
//! [`CachedFunction`] holds what decoration settled (key plan, TTL, callbacks) and
//! resolves the settings of the moment. Its calls are driven through the call flow
//! (`flow/`): with blocking I/O by `sync.rs`, by awaiting in `aio.rs`. Both use the
//! functions here for every step that is not I/O: the key, looking a value up and
//! validating it, what a result is stored as and for how long, what a backend failure
//! does, and the counters.

pub mod aio;
pub mod aio_call;
pub mod background;
pub mod decorator;
pub mod drive;
pub mod lookup;
pub mod options;
pub mod sync;
pub mod values;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use pyo3::exceptions::PyException;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};

use crate::backend::{self, Backend, Kept};
use crate::codec::Stored;
use crate::config::{self, BackendKind};
use crate::errors::{repr_of, CacheError};
use crate::flight::Flights;
use crate::flow::fresh::Rules;
use crate::flow::{Answer, Flow, Policy, Step};
use crate::key::{function_head, KeyBuf, KeyPlan, KeyWriter};
use crate::region::{region_name, whole_seconds};
use crate::stamp::{Fresh, Stamp};
use crate::vectorcall;
use crate::warn;
use options::{FreshOptions, Options, Ttl, WithArgs};
use values::{Stats, ALL_STATS};

/// How long a region whose backend failed to open is left alone before a retry.
const RETRY_FAILED_BACKEND: Duration = Duration::from_secs(5);

/// Slots of a thread's copies of resolved settings, by function id.
const HERE_SLOTS: usize = 64;

/// A function's settings as this thread last resolved them, shared by a count that only
/// this thread touches.
#[derive(Clone)]
#[allow(clippy::redundant_allocation)] // the Arc is shared with other threads, the Rc is not
pub(crate) struct Here(Rc<Arc<Resolved>>);

impl Here {
    /// The settings, to keep beyond this call.
    pub(crate) fn shared(&self) -> Arc<Resolved> {
        Arc::clone(&self.0)
    }
}

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
    cache_deadline: Option<Duration>,
    /// The TTL jitter in force (0: none).
    ttl_jitter: f64,
    /// The freshness controls in force.
    pub(crate) rules: Rules,
    /// `on_backend_error='raise'`.
    raise_backend_errors: bool,
    /// `on_lock_timeout='raise'`.
    raise_lock_timeout: bool,
    /// Whether results are kept as copies (`memory_copy=False` on the memory backend:
    /// the results themselves).
    pub(crate) copy: bool,
}

impl Resolved {
    /// Made under the settings of `generation`, and not a failure to open the backend
    /// that is due for a retry.
    fn is_current(&self, generation: u64) -> bool {
        self.generation == generation
            && !matches!(&self.backend, Err((_, at)) if at.elapsed() > RETRY_FAILED_BACKEND)
    }

    /// The settings of one call through the flow.
    pub(crate) fn policy(&self, backend: &Backend, overwrite: bool) -> Policy {
        Policy {
            leases: backend.has_leases(),
            overwrite,
            raise_backend_errors: self.raise_backend_errors,
            raise_lock_timeout: self.raise_lock_timeout,
            lock_timeout: self.lock_timeout,
            cache_deadline: self.cache_deadline,
            refresh: false,
            timeout: self.rules.timeout,
        }
    }

    /// Whether a call serves a value of this freshness without computing (fresh, or
    /// stale within `stale_ttl`).
    pub(crate) fn serves(&self, stamp: &Stamp) -> bool {
        use crate::flow::fresh::Judged;
        !self.rules.is_on()
            || matches!(
                self.rules.judge(stamp, crate::process::unix_now(), || 0.0),
                Judged::Fresh | Judged::Early | Judged::Stale
            )
    }

    /// The flow of a call that the hit fast path did not answer (`read`: it read
    /// memory and found nothing to serve): it joins this process's computation, unless
    /// a value kept as a fallback is to be read again by the flow.
    pub(crate) fn flow_after(&self, policy: Policy, read: bool) -> Flow {
        if read && !self.rules.is_on() {
            Flow::missed(policy)
        } else {
            Flow::start(policy)
        }
    }

    /// The settings of a background refresh.
    pub(crate) fn refresh_policy(&self, backend: &Backend) -> Policy {
        Policy {
            refresh: true,
            raise_backend_errors: false,
            raise_lock_timeout: false,
            timeout: None,
            ..self.policy(backend, false)
        }
    }

    /// How long a value stored now for `ttl` seconds is kept, and its freshness (with
    /// freshness controls: kept `ttl + max(stale_ttl, stale_if_error)`).
    pub(crate) fn keep_for(&self, ttl: f64, took: f64) -> (f64, Option<Fresh>) {
        if !self.rules.is_on() || ttl <= 0.0 {
            return (ttl, None);
        }
        let fresh = Fresh {
            fresh_for: ttl,
            took,
        };
        (ttl + self.rules.grace(), Some(fresh))
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

/// The arguments of one call, for the callbacks that take them (as a dict, built only
/// for those).
#[derive(Clone, Copy)]
pub(crate) struct CallArgs<'a, 'py> {
    pub(crate) args: &'a [Bound<'py, PyAny>],
    pub(crate) kwargs: Option<&'a Bound<'py, PyDict>>,
}

impl<'a, 'py> CallArgs<'a, 'py> {
    pub(crate) fn of(
        args: &'a Bound<'py, PyTuple>,
        kwargs: Option<&'a Bound<'py, PyDict>>,
    ) -> Self {
        CallArgs {
            args: args.as_slice(),
            kwargs,
        }
    }
}

/// What the computing caller hands to those that waited for it.
pub(crate) type Outcome = Result<Stored, PyErr>;

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
    /// The tag as declared (`disable(tag=...)` names it so).
    tag: String,
    cache_if: Option<Py<PyAny>>,
    validate: Option<Py<PyAny>>,
    with_args: WithArgs,
    /// `ttl_jitter=` of the decorator, else the package's.
    ttl_jitter: Option<f64>,
    /// The freshness controls of the decorator (else the package's).
    fresh: FreshOptions,
    pub(crate) stats: Arc<Stats>,
    flights: Flights<Outcome>,
    resolved: RwLock<Option<Arc<Resolved>>>,
    /// Names this function in the threads' copies of its settings.
    id: u64,
    /// The vectorcall entry (`vectorcall.rs`).
    pub(crate) entry: pyo3::ffi::vectorcallfunc,
}

static METHOD_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

impl CachedFunction {
    pub(crate) fn new(py: Python<'_>, func: &Bound<'_, PyAny>, o: Options) -> PyResult<Self> {
        let target = match func.getattr(intern!(py, "__wrapped__")) {
            Ok(inner) => inner,
            Err(_) => func.clone(),
        };
        let name: String = target.getattr(intern!(py, "__name__"))?.extract()?;
        let plan = KeyPlan::new(&target, o.exclude)?;
        let stats = Arc::new(Stats::new(
            o.package.clone(),
            target
                .getattr(intern!(py, "__qualname__"))
                .and_then(|q| q.extract())
                .unwrap_or_else(|_| name.clone()),
        ));
        ALL_STATS.lock().push(Arc::downgrade(&stats));
        config::register_function(o.package.as_deref(), &name);
        Ok(CachedFunction {
            func: func.clone().unbind(),
            head: function_head(&name, &o.tag),
            tag: o.tag,
            name,
            plan,
            ttl: o.ttl,
            backend: o.backend,
            package: o.package,
            cache_if: o.cache_if,
            validate: o.validate,
            with_args: o.with_args,
            ttl_jitter: o.ttl_jitter,
            fresh: o.fresh,
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
        let backend = backend::registry::instance(self.package.as_deref(), kind, region_ttl)
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
            cache_deadline: cfg.cache_deadline.map(Duration::from_secs_f64),
            ttl_jitter: self.ttl_jitter.unwrap_or(cfg.ttl_jitter),
            rules: self.fresh.rules(&cfg),
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
        let mut key = KeyWriter::take();
        key.0.push_str(&r.head);
        self.plan.write_params(&mut key.0, args, kwargs)?;
        Ok(key.seal())
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
        let mut key = KeyWriter::take();
        key.0.push_str(&r.head);
        self.plan.write_positional(py, &mut key.0, args)?;
        Ok(key.seal())
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

    #[inline]
    pub(crate) fn count_hit(&self) {
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn count_miss(&self) {
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_error(&self) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_refresh(&self) {
        self.stats.refreshes.fetch_add(1, Ordering::Relaxed);
    }

    /// The call's arguments as the callbacks that take them see them.
    pub(crate) fn args_of<'py>(
        &self,
        py: Python<'py>,
        call: CallArgs<'_, 'py>,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.plan.args_dict(py, call.args, call.kwargs)
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

    pub(crate) fn call_func<'py>(
        &self,
        py: Python<'py>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.func.bind(py).call(args, kwargs)
    }

    /// The seconds to keep `result`, from a fixed or a dynamic TTL. A dynamic TTL's
    /// exception is raised; a value that is no TTL is `Ok(Err(why))`.
    fn ttl_for<'py>(
        &self,
        result: &Bound<'py, PyAny>,
        call: CallArgs<'_, 'py>,
    ) -> PyResult<Result<f64, PyErr>> {
        match &self.ttl {
            Ttl::Fixed(t) => Ok(Ok(*t as f64)),
            Ttl::Dynamic(f) => {
                let py = result.py();
                let v = if self.with_args.ttl {
                    f.bind(py).call1((result, self.args_of(py, call)?))?
                } else {
                    f.bind(py).call1((result,))?
                };
                Ok(whole_seconds(&v).map(|s| s as f64).ok_or_else(|| {
                    CacheError::config(
                        "ttl",
                        format!("<callable returned {}>", repr_of(&v)),
                        "a dynamic ttl must return a whole number of seconds >= 0",
                    )
                    .into()
                }))
            }
        }
    }

    /// The seconds to keep a value stored with `.set()` / `cache_set()`, and its
    /// freshness (fresh for its TTL, then stale as a computed value is).
    pub(crate) fn ttl_to_set<'py>(
        &self,
        r: &Resolved,
        value: &Bound<'py, PyAny>,
        call: CallArgs<'_, 'py>,
    ) -> PyResult<(f64, Option<Fresh>)> {
        let ttl = self.ttl_for(value, call)??;
        Ok(r.keep_for(ttl, f64::NAN))
    }

    /// What the flow's `Store` keeps of a computed `result` (which took `took`
    /// seconds): `None` when `cache_if` refuses it, when the dynamic TTL returns no
    /// TTL, or when it can be neither copied nor pickled (both said once: the caller
    /// still gets the result). What the callbacks raise is raised.
    pub(crate) fn to_store<'py>(
        &self,
        r: &Resolved,
        result: &Bound<'py, PyAny>,
        call: CallArgs<'_, 'py>,
        took: f64,
    ) -> PyResult<Option<Kept>> {
        if let Some(f) = &self.cache_if {
            let py = result.py();
            let wanted = if self.with_args.cache_if {
                f.bind(py).call1((result, self.args_of(py, call)?))?
            } else {
                f.bind(py).call1((result,))?
            };
            if !wanted.is_truthy()? {
                return Ok(None);
            }
        }
        let ttl = match self.ttl_for(result, call)? {
            Ok(ttl) => ttl,
            Err(why) => {
                warn::bad_ttl(result.py(), (&self.name, self.id), &why);
                return Ok(None);
            }
        };
        let (ttl, fresh) = r.keep_for(jittered(ttl, r.ttl_jitter), took);
        Ok(self
            .capture(r, result)
            .map(|stored| Kept { stored, ttl, fresh }))
    }

    /// What the cache keeps of a result, or `None` (said once) if it can be neither
    /// copied nor pickled.
    fn capture(&self, r: &Resolved, result: &Bound<'_, PyAny>) -> Option<Stored> {
        match Stored::capture_as(result, r.copy) {
            Ok(s) => Some(s),
            Err(e) => {
                warn::not_cached(result.py(), (&self.name, self.id), &e);
                None
            }
        }
    }

    /// The function's id (names it in this process's tables).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// What a leader publishes to those that wait for it: what it stores, else the
    /// result itself (shared: it could not be copied).
    pub(crate) fn published(
        py: Python<'_>,
        result: &Bound<'_, PyAny>,
        stored: Option<&Stored>,
    ) -> Stored {
        stored.map_or_else(
            || Stored::Shared(result.clone().unbind()),
            |s| s.clone_ref(py),
        )
    }

    /// Whether a leader's exception reaches the callers that wait for it: ordinary
    /// exceptions do; `KeyboardInterrupt`, `SystemExit` and cancellation concern the
    /// caller alone (the others start again).
    pub(crate) fn reaches_followers(py: Python<'_>, e: &PyErr) -> bool {
        e.is_instance_of::<PyException>(py)
    }

    /// What a caller that waited for another's computation gets: its result (a hit)
    /// or its exception.
    pub(crate) fn followed<'py>(
        &self,
        py: Python<'py>,
        outcome: &Outcome,
    ) -> PyResult<Bound<'py, PyAny>> {
        match outcome {
            Ok(stored) => {
                self.count_hit();
                stored.materialize(py)
            }
            Err(e) => Err(e.clone_ref(py)),
        }
    }

    /// Said on the `cachu` logger when a call gives up waiting for another's
    /// computation of `key` and computes itself.
    pub(crate) fn log_gave_up(py: Python<'_>, key: &str, r: &Resolved) {
        warn::log(
            py,
            warn::Level::Warning,
            &format!(
                "cachu: waited {:?} (lock_timeout) for another caller to compute key {key:?}; computing it here",
                r.lock_timeout
            ),
        );
    }

    pub(crate) fn lock_timed_out(key: &str, r: &Resolved) -> PyErr {
        CacheError::LockTimeout(format!(
            "waited {:?} (lock_timeout) for another caller to compute key {key:?}",
            r.lock_timeout
        ))
        .into()
    }

    /// Whether caching is off for this function (`disable()`, globally or for its
    /// package or tag).
    #[inline]
    pub(crate) fn is_off(&self) -> bool {
        config::is_off(self.package.as_deref(), &self.tag)
    }

    /// What decoration settled, for the `cachu` logger's DEBUG record: the resolved
    /// package, backend (and where it comes from) and TTL region.
    pub(crate) fn describe(&self, py: Python<'_>) -> String {
        let qualname = self
            .func
            .bind(py)
            .getattr(intern!(py, "__qualname__"))
            .and_then(|q| q.extract::<String>())
            .unwrap_or_else(|_| self.name.clone());
        let own = config::has_own_config(self.package.as_deref());
        let (kind, source) = match self.backend {
            Some(k) => (k, "from @cache(backend=...)"),
            None if own => (
                config::config_of(self.package.as_deref()).backend,
                "from the package's configure()",
            ),
            None => (
                config::defaults().backend,
                "the default: the package has no configure() of its own",
            ),
        };
        let ttl = match &self.ttl {
            Ttl::Fixed(t) => format!("ttl={t}"),
            Ttl::Dynamic(_) => "a dynamic ttl".to_owned(),
        };
        format!(
            "cachu: {qualname} is cached for package {}: backend {kind} ({source}), {ttl} (region {})",
            self.package
                .as_deref()
                .map_or_else(|| "None".to_owned(), |p| format!("'{p}'")),
            region_name(self.ttl.region_ttl())
        )
    }

    /// The decorated function's `__name__`.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    fn missing(key: &str) -> PyErr {
        CacheError::Missing(format!("no cached value for key {key:?}")).into()
    }

    fn traverse(&self, visit: &pyo3::gc::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
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

/// Tells the flow that the backend failed with `error` at its current step, and
/// returns the error the call keeps: the one to raise if the flow raises it, else the
/// one it kept before (a computation's exception, while releasing its lease). An error
/// the call goes on without is said once.
pub(crate) fn failure(
    py: Python<'_>,
    flow: &mut Flow,
    error: Option<PyErr>,
    kept: Option<PyErr>,
) -> Option<PyErr> {
    let releasing = flow.step() == Step::Release;
    let next = flow.answer(Answer::Failed);
    if releasing {
        return kept; // the lease expires by itself
    }
    if next == Step::RaiseBackend {
        return error;
    }
    if let Some(e) = &error {
        warn::backend_failed(py, e);
    }
    kept
}

/// `ttl * (1 - jitter * U)`, `U` uniform in [0, 1): entries filled together do not
/// expire together. A jitter of 0 leaves the TTL as it is (no random number is drawn).
pub(crate) fn jittered(ttl: f64, jitter: f64) -> f64 {
    if jitter <= 0.0 || ttl <= 0.0 {
        return ttl;
    }
    ttl * (1.0 - jitter * crate::process::uniform())
}

/// `CachedFunction[P, R]` in annotations evaluated at run time: a generic alias, as
/// for the typing stubs' generic classes.
pub(crate) fn generic_alias<'py>(
    cls: &Bound<'py, pyo3::types::PyType>,
    item: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    cls.py()
        .import("types")?
        .getattr("GenericAlias")?
        .call1((cls, item))
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
