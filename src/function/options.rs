//! The options of `@cache(...)`, validated once at decoration.

use std::collections::HashSet;

use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::config::{self, BackendKind};
use crate::errors::{repr_of, CacheError};
use crate::region::whole_seconds;

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

    pub(crate) fn parse(value: &Bound<'_, PyAny>) -> Result<Ttl, CacheError> {
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

/// The options of `@cache(...)`, validated.
pub struct Options {
    pub(crate) ttl: Ttl,
    pub(crate) backend: Option<BackendKind>,
    pub(crate) tag: String,
    pub(crate) exclude: HashSet<String>,
    pub(crate) cache_if: Option<Py<PyAny>>,
    pub(crate) validate: Option<Py<PyAny>>,
    pub(crate) package: Option<String>,
    /// Which callbacks take the call's arguments too (`ttl`, `cache_if`, `validate`).
    pub(crate) with_args: WithArgs,
    /// `ttl_jitter=J`: each stored TTL is `ttl * (1 - J * U)`; `None`: the package's.
    pub(crate) ttl_jitter: Option<f64>,
    /// The freshness controls given to the decorator (the others are the package's).
    pub(crate) fresh: FreshOptions,
}

/// The freshness controls of `@cache(...)`: `None` where the package's default holds.
#[derive(Clone, Copy, Default)]
pub struct FreshOptions {
    pub(crate) stale_ttl: Option<f64>,
    pub(crate) stale_if_error: Option<f64>,
    pub(crate) early_refresh: Option<f64>,
    pub(crate) timeout: Option<f64>,
}

impl FreshOptions {
    /// The controls in force, over the package's defaults `cfg`.
    pub(crate) fn rules(&self, cfg: &crate::config::Config) -> crate::flow::fresh::Rules {
        crate::flow::fresh::Rules {
            stale_ttl: self.stale_ttl.unwrap_or(cfg.stale_ttl),
            stale_if_error: self.stale_if_error.unwrap_or(cfg.stale_if_error),
            early_refresh: self.early_refresh.or(cfg.early_refresh).unwrap_or(0.0),
            timeout: self
                .timeout
                .or(cfg.timeout)
                .map(std::time::Duration::from_secs_f64),
        }
    }
}

/// Which callbacks take a second argument: the call's arguments as a dict (cachu 0.6).
#[derive(Clone, Copy, Default)]
pub struct WithArgs {
    pub ttl: bool,
    pub cache_if: bool,
    pub validate: bool,
}

impl WithArgs {
    pub fn any(self) -> bool {
        self.ttl || self.cache_if || self.validate
    }
}

/// Whether a callback takes the call's arguments after the value, decided once from
/// its signature as cachu 0.6 does: two positional parameters (a default counts, as
/// in `def f(result, args=None)`) or `*args` mean yes; one means no; none, or more
/// than two required, is refused. A callable without a readable signature takes one.
fn takes_args(param: &'static str, f: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = f.py();
    let inspect = py.import("inspect")?;
    let Ok(sig) = inspect.getattr("signature")?.call1((f,)) else {
        return Ok(false);
    };
    let kind_of =
        |name: &str| -> PyResult<Bound<'_, PyAny>> { inspect.getattr("Parameter")?.getattr(name) };
    let (only, either, var) = (
        kind_of("POSITIONAL_ONLY")?,
        kind_of("POSITIONAL_OR_KEYWORD")?,
        kind_of("VAR_POSITIONAL")?,
    );
    let empty = inspect.getattr("Parameter")?.getattr("empty")?;
    let (mut positional, mut required) = (0, 0);
    for p in sig
        .getattr("parameters")?
        .call_method0("values")?
        .try_iter()?
    {
        let p = p?;
        let kind = p.getattr("kind")?;
        if kind.eq(&var)? {
            return Ok(true);
        }
        if kind.eq(&only)? || kind.eq(&either)? {
            positional += 1;
            if p.getattr("default")?.is(&empty) {
                required += 1;
            }
        }
    }
    if positional == 0 || required > 2 {
        return Err(CacheError::config(
            param,
            repr_of(f),
            format!(
                "a {param} callable takes (value) or (value, args): this one takes {} positional arguments",
                if positional == 0 { positional } else { required }
            ),
        )
        .into());
    }
    Ok(positional >= 2)
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
        let with_args = WithArgs {
            ttl: match &ttl {
                Ttl::Dynamic(f) => takes_args("ttl", f.bind(py))?,
                Ttl::Fixed(_) => false,
            },
            cache_if: cache_if
                .as_ref()
                .map(|f| takes_args("cache_if", f.bind(py)))
                .transpose()?
                .unwrap_or(false),
            validate: validate
                .as_ref()
                .map(|f| takes_args("validate", f.bind(py)))
                .transpose()?
                .unwrap_or(false),
        };
        Ok(Options {
            ttl,
            backend,
            tag,
            exclude,
            cache_if,
            validate,
            package,
            with_args,
            ttl_jitter: None,
            fresh: FreshOptions::default(),
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

impl Options {
    pub(crate) fn clone_ref(&self, py: Python<'_>) -> Options {
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
            with_args: self.with_args,
            ttl_jitter: self.ttl_jitter,
            fresh: self.fresh,
        }
    }
}
