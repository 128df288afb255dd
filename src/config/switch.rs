//! `disable()`, `enable()`, `is_disabled()` and `get_disabled_scopes()`: caching off for
//! every cache, or for the caches of some packages and tags (cachu 0.6's scopes).

use pyo3::prelude::*;
use pyo3::types::PyFrozenSet;

use crate::errors::CacheError;

/// A scope name: `None`, or a non-empty string (the empty tag is every untagged cache's,
/// which no scope names).
fn scope<'a>(param: &'static str, name: Option<&'a str>) -> PyResult<Option<&'a str>> {
    match name {
        Some("") => Err(CacheError::config(
            param,
            "''",
            format!("{param} must be a non-empty name or None"),
        )
        .into()),
        other => Ok(other),
    }
}

/// Turns caching off: every cache with no argument; with `package` and/or `tag`, the
/// caches of that package (as resolved for each function) or declared with that tag.
/// Scoped calls accumulate and are OR-ed.
#[pyfunction]
#[pyo3(signature = (package=None, tag=None))]
pub fn disable(package: Option<&str>, tag: Option<&str>) -> PyResult<()> {
    super::switch(false, scope("package", package)?, scope("tag", tag)?);
    Ok(())
}

/// Turns caching back on: everything with no argument; with a scope, that scope only
/// (a global `disable()` stays in force).
#[pyfunction]
#[pyo3(signature = (package=None, tag=None))]
pub fn enable(package: Option<&str>, tag: Option<&str>) -> PyResult<()> {
    super::switch(true, scope("package", package)?, scope("tag", tag)?);
    Ok(())
}

/// Whether caching is off globally, or for the package or the tag given.
#[pyfunction]
#[pyo3(signature = (package=None, tag=None))]
pub fn is_disabled(package: Option<&str>, tag: Option<&str>) -> bool {
    super::is_disabled_now() || super::is_off(package, tag.unwrap_or(""))
}

/// What is switched off: a snapshot.
#[pyclass(frozen, module = "cachu._cachu")]
pub struct DisabledScopes {
    #[pyo3(get)]
    globally: bool,
    #[pyo3(get)]
    packages: Py<PyFrozenSet>,
    #[pyo3(get)]
    tags: Py<PyFrozenSet>,
}

#[pymethods]
impl DisabledScopes {
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "DisabledScopes(globally={}, packages={}, tags={})",
            if self.globally { "True" } else { "False" },
            self.packages.bind(py).repr()?,
            self.tags.bind(py).repr()?
        ))
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Ok(other) = other.cast::<DisabledScopes>() else {
            return Ok(false);
        };
        let o = other.get();
        let py = other.py();
        Ok(self.globally == o.globally
            && self.packages.bind(py).eq(o.packages.bind(py))?
            && self.tags.bind(py).eq(o.tags.bind(py))?)
    }
}

/// A snapshot of what `disable()` switched off.
#[pyfunction]
pub fn get_disabled_scopes(py: Python<'_>) -> PyResult<DisabledScopes> {
    let (globally, scopes) = super::switches();
    let mut packages: Vec<String> = scopes.packages.into_iter().collect();
    let mut tags: Vec<String> = scopes.tags.into_iter().collect();
    packages.sort();
    tags.sort();
    Ok(DisabledScopes {
        globally,
        packages: PyFrozenSet::new(py, &packages)?.unbind(),
        tags: PyFrozenSet::new(py, &tags)?.unbind(),
    })
}
