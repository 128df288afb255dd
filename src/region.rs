//! TTL regions: a TTL's region name in keys (`5m`), its SQLite file name, and the
//! parsing of TTLs that name regions.
//!
//! File names are made from package names, which are any string a user passes as
//! `package=`: a name never leaves `file_dir`. Ordinary names (letters, digits, `.`,
//! `_`, `-`, and anything else printable but `/`, `\` and `%`) are kept as cachu 0.2.x
//! writes them; `/`, `\`, `%` and control characters are written as `%XX`, so that a
//! name is always one file name in the directory and two names never share a file.

use std::fmt::Write;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt};

use crate::errors::{repr_of, CacheError};

/// The TTL region of a key: `{s}s`, `{m}m`, `{h}h` or `{d}d` (integer division).
pub fn region_name(ttl: i64) -> String {
    if ttl < 60 {
        format!("{ttl}s")
    } else if ttl < 3600 {
        format!("{}m", ttl / 60)
    } else if ttl < 86_400 {
        format!("{}h", ttl / 3600)
    } else {
        format!("{}d", ttl / 86_400)
    }
}

/// A package name as it stands in a file name: see the module's documentation.
fn file_safe(package: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c == '/' || c == '\\' || c == '%' || c.is_control();
    if !package.contains(unsafe_char) {
        return std::borrow::Cow::Borrowed(package);
    }
    let mut out = String::with_capacity(package.len() + 8);
    for c in package.chars() {
        if unsafe_char(c) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The SQLite file of a (package, TTL) region: `{package}_cache{n}{sec|min|hour}.db`.
pub fn sqlite_file_name(package: Option<&str>, ttl: i64) -> String {
    let base = if ttl < 60 {
        format!("cache{ttl}sec.db")
    } else if ttl < 3600 {
        format!("cache{}min.db", ttl / 60)
    } else {
        format!("cache{}hour.db", ttl / 3600)
    };
    match package {
        Some(p) if !p.is_empty() => format!("{}_{base}", file_safe(p)),
        _ => base,
    }
}

/// The TTL of a region name (`30s`, `5m`, `1h`, `2d`, `-1s`), as [`region_name`] writes it.
pub fn ttl_of_region(region: &str) -> Option<i64> {
    let (number, unit) = region.split_at(region.len().checked_sub(1)?);
    let n: i64 = number.parse().ok()?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    (region_name(n * scale) == region).then_some(n * scale)
}

/// The TTL of a SQLite file of `package`, from its name (the inverse of
/// [`sqlite_file_name`]); `None` for a file that is not one of the package's.
pub fn ttl_of_sqlite_file(package: Option<&str>, file_name: &str) -> Option<i64> {
    let safe = package.map(file_safe);
    let rest = match safe.as_deref() {
        Some(p) if !p.is_empty() => file_name.strip_prefix(p)?.strip_prefix('_')?,
        _ => file_name,
    };
    let rest = rest.strip_prefix("cache")?.strip_suffix(".db")?;
    let (number, scale) = [("sec", 1), ("min", 60), ("hour", 3600)]
        .iter()
        .find_map(|(unit, scale)| rest.strip_suffix(unit).map(|n| (n, *scale)))?;
    let ttl = number.parse::<i64>().ok()? * scale;
    (sqlite_file_name(package, ttl) == file_name).then_some(ttl)
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

/// A TTL jitter: a number `0 <= J < 1` (`bool` is not a number here).
pub fn parse_jitter(value: &Bound<'_, PyAny>) -> PyResult<f64> {
    let is_number = (value.is_instance_of::<PyInt>() || value.is_instance_of::<PyFloat>())
        && !value.is_instance_of::<PyBool>();
    is_number
        .then(|| value.extract::<f64>().ok())
        .flatten()
        .filter(|j| (0.0..1.0).contains(j))
        .ok_or_else(|| {
            CacheError::config(
                "ttl_jitter",
                repr_of(value),
                "expected a number J with 0 <= J < 1 (each TTL is ttl * (1 - J * U), U in [0, 1))",
            )
            .into()
        })
}

/// A freshness control of `@cache(...)` / `configure()`: a finite number (`bool` is
/// not a number here), `>= 0` for `stale_ttl` and `stale_if_error` (0: off), `> 0`
/// for `early_refresh` and `timeout`.
pub fn parse_freshness(param: &'static str, value: &Bound<'_, PyAny>) -> PyResult<f64> {
    let zero_ok = matches!(param, "stale_ttl" | "stale_if_error");
    let is_number = (value.is_instance_of::<PyInt>() || value.is_instance_of::<PyFloat>())
        && !value.is_instance_of::<PyBool>();
    let expected = match param {
        "early_refresh" => "expected a number BETA > 0 (1.0 is XFetch's default)",
        "timeout" => "expected a positive number of seconds",
        _ => "expected a number of seconds >= 0 (0: off)",
    };
    is_number
        .then(|| value.extract::<f64>().ok())
        .flatten()
        .filter(|v| v.is_finite() && (*v > 0.0 || (zero_ok && *v == 0.0)))
        .ok_or_else(|| CacheError::config(param, repr_of(value), expected).into())
}

/// [`region_name`], for the command line.
#[pyfunction]
pub fn _region_name(ttl: i64) -> String {
    region_name(ttl)
}

/// [`ttl_of_region`], for the command line.
#[pyfunction]
pub fn _ttl_of_region(region: &str) -> Option<i64> {
    ttl_of_region(region)
}

/// [`ttl_of_sqlite_file`], for the command line.
#[pyfunction]
#[pyo3(signature = (package, file_name))]
pub fn _ttl_of_sqlite_file(package: Option<&str>, file_name: &str) -> Option<i64> {
    ttl_of_sqlite_file(package, file_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_package_names_keep_their_file_names() {
        assert_eq!(sqlite_file_name(Some("myapp"), 300), "myapp_cache5min.db");
        assert_eq!(
            sqlite_file_name(Some("__main__.script-1"), 30),
            "__main__.script-1_cache30sec.db"
        );
        assert_eq!(sqlite_file_name(None, 7200), "cache2hour.db");
    }

    #[test]
    fn no_package_name_leaves_the_directory() {
        for hostile in [
            "../evil",
            "../../x",
            "/abs/path",
            "a\\b",
            "..",
            "x\0y",
            "%2F",
        ] {
            let name = sqlite_file_name(Some(hostile), 300);
            assert!(!name.contains('/') && !name.contains('\\') && !name.contains('\0'));
            let path = std::path::Path::new("/dir").join(&name);
            assert_eq!(
                path.parent(),
                Some(std::path::Path::new("/dir")),
                "{hostile}"
            );
            assert_eq!(ttl_of_sqlite_file(Some(hostile), &name), Some(300));
        }
        // Two names never share a file.
        assert_ne!(
            sqlite_file_name(Some("a/b"), 60),
            sqlite_file_name(Some("a%2Fb"), 60)
        );
    }

    #[test]
    fn region_names_round_trip() {
        for ttl in [0, 1, 59, 60, 300, 3600, 86_400, -1] {
            assert_eq!(ttl_of_region(&region_name(ttl)), Some(ttl));
        }
        assert_eq!(ttl_of_sqlite_file(Some("p"), "p_cache5min.db"), Some(300));
        assert_eq!(ttl_of_sqlite_file(Some("p"), "q_cache5min.db"), None);
    }
}
