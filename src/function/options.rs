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
        }
    }
}
