//! A call of a decorated function, and its helpers (`.get`, `.set`, `.invalidate`...).
//!
//! A memory hit keeps a straight line (switches, key, [`CachedFunction::lookup`],
//! copy) in front of the flow; everything else is the sync driver's (`drive.rs`).

use std::sync::Arc;

use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::PyTraverseError;

use super::drive::{self, refresh_later, Call};
use super::lookup::Kind;
use super::values::CacheInfo;
use super::{bind_method, pickled_by_name, take_flags, CachedFunction, CallArgs, Here, Resolved};
use crate::backend::Backend;
use crate::key::{KeyBuf, KeyWriter};
use crate::pattern::escape_glob;
use crate::vectorcall::FastCall;

impl CachedFunction {
    /// The settings and key a write helper (`.set`, `.invalidate`) uses, or `None`
    /// while caching is off (nothing is written).
    fn key_to_write(
        &self,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Option<(Arc<Resolved>, String)>> {
        if self.is_off() {
            return Ok(None);
        }
        let r = self.resolve();
        let key = self.key(&r, args, kwargs)?;
        Ok(Some((r, key)))
    }

    /// The hit fast path of a memory (or null) backend, or of a near tier: the value to
    /// serve, if any. A
    /// function without freshness controls is answered without judging freshness; with
    /// them, a refresh starts if one is due (`args` packs the arguments for it).
    #[inline]
    fn memory_hit<'py>(
        slf: &Bound<'py, Self>,
        r: &Here,
        backend: &Arc<Backend>,
        key: &KeyBuf,
        call: CallArgs<'_, 'py>,
        args: impl FnOnce() -> PyResult<Bound<'py, PyTuple>>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let (this, py) = (slf.get(), slf.py());
        if !r.rules.is_on() {
            return this.hit(py, r, backend, key, call);
        }
        let Some(seen) = this.lookup(py, r, backend, key, call)? else {
            return Ok(None);
        };
        if let Kind::Refresh { created_at, .. } = seen.kind {
            let key = key.clone();
            let call = Call::new(slf, r.shared(), backend.clone(), key, &args()?, kwargs);
            refresh_later(py, call, created_at)?;
        }
        Ok(Some(seen.value))
    }

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
        if flags.skip || this.is_off() {
            return this.call_func(py, args, kwargs);
        }
        let r = this.resolve_here();
        let backend = match &r.backend {
            Ok(b) => b,
            Err((e, _)) => {
                this.count_error();
                Self::backend_failed(py, &r, e.clone_ref(py))?;
                return this.call_func(py, args, kwargs);
            }
        };
        let key = this.key_in_buffer(&r, args, kwargs)?;
        // A memory hit (or a near one, in front of Redis) keeps its straight line: the
        // flow's own read, then the flow.
        let local = !backend.has_leases() && !flags.overwrite;
        if local || (backend.has_near() && !flags.overwrite) {
            let call = CallArgs::of(args, kwargs);
            let args = || Ok(args.clone());
            if let Some(v) = Self::memory_hit(slf, &r, backend, &key, call, args, kwargs)? {
                return Ok(v);
            }
        }
        let flow = r.flow_after(r.policy(backend, flags.overwrite), local);
        let call = Call::new(slf, r.shared(), backend.clone(), key, args, kwargs);
        drive::run(py, call, flow)
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
        if !this.is_off() && this.takes_positional(args.len()) {
            let r = this.resolve_here();
            if let Ok(backend) = &r.backend {
                let local = !backend.has_leases();
                if local || backend.has_near() {
                    let key = this.key_positional(py, &r, args)?;
                    let call = CallArgs { args, kwargs: None };
                    let packed = || PyTuple::new(py, args);
                    if let Some(v) = Self::memory_hit(slf, &r, backend, &key, call, packed, None)? {
                        return Ok(v);
                    }
                    let args = PyTuple::new(py, args)?;
                    let flow = r.flow_after(r.policy(backend, false), local);
                    let call = Call::new(slf, r.shared(), backend.clone(), key, &args, None);
                    return drive::run(py, call, flow);
                }
            }
        }
        Self::call_packed(slf, &PyTuple::new(py, args)?, None)
    }

    /// `f(k, 'eu-west-1', flags=('beta', 2))`: a hit keyed from the interpreter's array
    /// and the keywords' names, when every keyword names a positional parameter (no
    /// flag, no `validate=`, no freshness controls to judge); any other call, and a
    /// miss, is packed and taken by [`CachedFunction::call_packed`].
    #[inline]
    fn call_keywords<'py>(
        slf: &Bound<'py, Self>,
        args: &[Bound<'py, PyAny>],
        names: &Bound<'py, PyTuple>,
        values: &[Bound<'py, PyAny>],
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let this = slf.get();
        let py = slf.py();
        if this.is_off() || this.validate.is_some() {
            return Ok(None);
        }
        let r = this.resolve_here();
        let Ok(backend) = &r.backend else {
            return Ok(None);
        };
        if r.rules.is_on() || (backend.has_leases() && !backend.has_near()) {
            return Ok(None);
        }
        let mut key = KeyWriter::take();
        key.0.push_str(&r.head);
        if !this
            .plan
            .write_keywords(py, &mut key.0, args, names, values)?
        {
            return Ok(None);
        }
        // A miss here is taken again by `call_packed`: no hash to carry on.
        this.hit(
            py,
            &r,
            backend,
            key.0.as_str(),
            CallArgs { args, kwargs: None },
        )
    }
}

/// An optional default, the positional arguments and the keyword arguments without it.
type DefaultAndArgs<'py> = (
    Option<Bound<'py, PyAny>>,
    Bound<'py, PyTuple>,
    Option<Bound<'py, PyDict>>,
);

/// Splits the arguments of `.get()`: `default=` is the default; else a lone positional
/// argument that cannot bind (the function has no positional parameter, or its first
/// one is given by keyword too) is, as in cachu 0.2.7's `f.get(None, user_id=1)`;
/// other positional arguments bind as in a call (`f.get(123)` is `user_id=123`).
fn split_default<'py>(
    args: &Bound<'py, PyTuple>,
    kwargs: Option<&Bound<'py, PyDict>>,
    first_parameter: Option<&str>,
) -> PyResult<DefaultAndArgs<'py>> {
    let py = args.py();
    let kwargs = kwargs.map(PyDictMethods::copy).transpose()?;
    let mut default = None;
    if let Some(k) = &kwargs {
        if let Some(d) = k.get_item(pyo3::intern!(py, "default"))? {
            k.del_item(pyo3::intern!(py, "default"))?;
            default = Some(d);
        }
    }
    let taken = match (first_parameter, &kwargs) {
        (None, _) => true,
        (Some(name), Some(k)) => k.contains(name)?,
        (Some(_), None) => false,
    };
    if default.is_none() && args.len() == 1 && taken {
        return Ok((Some(args.get_item(0)?), PyTuple::empty(py), kwargs));
    }
    Ok((default, args.clone(), kwargs))
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

    #[classmethod]
    fn __class_getitem__<'py>(
        cls: &Bound<'py, pyo3::types::PyType>,
        item: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        super::generic_alias(cls, item)
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
    /// if there is none, else `KeyError`. Arguments bind to the function's parameters
    /// as in a call; a lone positional argument beside keyword ones is the default, as
    /// in cachu 0.2.7 (`f.get(None, user_id=1)`). While caching is off nothing is
    /// cached; with a failing backend, a miss (or `BackendError`, with
    /// `on_backend_error='raise'`).
    #[pyo3(signature = (*args, **kwargs))]
    fn get<'py>(
        slf: &Bound<'py, Self>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let (default, args, kwargs) = split_default(args, kwargs, this.plan.first_positional())?;
        let r = this.resolve();
        let key = this.key(&r, &args, kwargs.as_ref())?;
        let found = if this.is_off() {
            None
        } else {
            match this
                .backend_or_err(py, &r)
                .and_then(|b| b.get(py, key.as_str()))
            {
                Ok(found) => found,
                Err(e) => {
                    Self::backend_failed(py, &r, e)?;
                    None
                }
            }
        };
        // A value a call would not serve without computing (expired, kept only as the
        // fallback of `stale_if_error`) is not the cached value.
        let found = found.filter(|(_, stamp)| r.serves(stamp));
        match found {
            Some((v, _)) => Ok(v),
            None => default.ok_or_else(|| Self::missing(&key)),
        }
    }

    /// Stores `value` for these arguments (bound as in a call). A failing backend
    /// raises `BackendError`: nobody is told a value is cached that is not. While
    /// caching is off, nothing is stored.
    #[pyo3(signature = (value, *args, **kwargs))]
    pub fn set(
        &self,
        py: Python<'_>,
        value: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let Some((r, key)) = self.key_to_write(args, kwargs)? else {
            return Ok(());
        };
        let (ttl, fresh) = self.ttl_to_set(&r, value, CallArgs::of(args, kwargs))?;
        self.backend_or_err(py, &r)?.set(value, &key, ttl, fresh)
    }

    /// Removes the entry of these arguments (bound as in a call). A failing backend
    /// raises `BackendError`: nobody is told a stale entry is gone that is not. While
    /// caching is off, there is nothing to remove.
    #[pyo3(signature = (*args, **kwargs))]
    pub fn invalidate(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let Some((r, key)) = self.key_to_write(args, kwargs)? else {
            return Ok(());
        };
        self.backend_or_err(py, &r)?.delete(py, &key)
    }

    /// Removes the entry of these arguments, then calls (and caches) again.
    #[pyo3(signature = (*args, **kwargs))]
    fn refresh<'py>(
        slf: &Bound<'py, Self>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        slf.get().invalidate(slf.py(), args, kwargs)?;
        Self::__call__(slf, args, kwargs)
    }

    /// Removes the entries whose arguments include these (all of this function's with
    /// none); `_global=True` matches them under any key prefix. Returns how many were
    /// removed (cachu 0.6's partial-match clear).
    #[pyo3(signature = (_global=false, **kwargs))]
    #[allow(clippy::used_underscore_binding)] // cachu 0.6's name of the parameter
    fn clear(
        &self,
        py: Python<'_>,
        _global: bool,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<usize> {
        let r = self.resolve();
        let mut fragments = Vec::new();
        let mut given = 0;
        if let Some(kwargs) = kwargs {
            for (k, v) in kwargs.iter() {
                given += 1;
                let name: String = k.extract()?;
                if let Some(f) = self.plan.fragment(&name, &v)? {
                    fragments.push((name, f));
                }
            }
        }
        if given > 0 && fragments.is_empty() {
            crate::warn::once(
                py,
                &format!("clear-all:{}", self.id),
                &format!(
                    "cachu: {}.clear(): every argument given is left out of keys; all of its entries are cleared",
                    self.name
                ),
            );
        }
        fragments.sort();
        let head = if _global {
            let region = &r.head[..=r.head.find(':').unwrap_or(0)];
            format!("{}*{}", escape_glob(region), escape_glob(&self.head))
        } else {
            escape_glob(&r.head)
        };
        let mut pattern = head;
        for (_, f) in &fragments {
            pattern.push('*');
            pattern.push_str(&escape_glob(f));
        }
        pattern.push('*');
        self.backend_or_err(py, &r)?.clear(py, Some(&pattern))
    }

    /// How this function is cached, as cachu 0.6's `CacheMeta`.
    #[getter]
    fn _cache_meta<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let kwargs = PyDict::new(py);
        kwargs.set_item("ttl", this.ttl.region_ttl())?;
        let kind = this
            .backend
            .unwrap_or_else(|| crate::config::config_of(this.package.as_deref()).backend);
        kwargs.set_item("backend", kind.name())?;
        kwargs.set_item("tag", &this.tag)?;
        kwargs.set_item(
            "exclude",
            pyo3::types::PySet::new(py, this.plan.excluded())?,
        )?;
        kwargs.set_item("cache_if", this.cache_if.as_ref().map(|f| f.clone_ref(py)))?;
        kwargs.set_item("validate", this.validate.as_ref().map(|f| f.clone_ref(py)))?;
        kwargs.set_item("package", this.package.as_deref())?;
        kwargs.set_item("key_generator", slf.getattr("cache_key")?)?;
        py.import("cachu._since_0_6")?
            .getattr("CacheMeta")?
            .call((), Some(&kwargs))
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

    /// Hits and misses of this function, and how many entries it has in its backend
    /// (0 while caching is off, when no backend is asked; 0 with a warning when the
    /// backend fails, or `BackendError` with `on_backend_error='raise'`): a status
    /// endpoint keeps working in an outage.
    pub fn cache_info(&self, py: Python<'_>) -> PyResult<CacheInfo> {
        let currsize = if self.is_off() {
            0
        } else {
            let r = self.resolve();
            let prefix = self.entries_prefix();
            match self
                .backend_or_err(py, &r)
                .and_then(|b| b.count_prefix(py, &prefix))
            {
                Ok(n) => n,
                Err(e) => {
                    Self::backend_failed(py, &r, e)?;
                    0
                }
            }
        };
        Ok(self.stats.info(currsize))
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
        self.traverse(&visit)
    }
}
