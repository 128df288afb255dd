//! Cache keys, exactly as cachu 0.2.x writes them (see FORMATS.md):
//! `{region}:{key_prefix}{name}|{params}` or `{region}:{key_prefix}{name}||{tag}||{params}`.
//!
//! The expensive part (reading the signature) is done once, at decoration, into a
//! [`KeyPlan`]; a call then only walks its arguments and formats them into one buffer.

use std::borrow::Cow;
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::LazyLock;

use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyBytes, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PySet, PyString, PyTuple,
};

mod repr;
pub use repr::{write_float, write_repr, Repr};

/// The keys' hash: it picks the memory store's shard and bucket, and the
/// single-flight table's. Seeded per process, so keys chosen by an attacker cannot be
/// made to collide.
pub fn hash_of(key: &str) -> u64 {
    static HASHER: LazyLock<foldhash::fast::RandomState> =
        LazyLock::new(foldhash::fast::RandomState::default);
    HASHER.hash_one(key)
}

/// A key and its [`hash_of`]: a call's key ([`KeyBuf`]) computes it once, for the
/// lookup, the single flight and the store; any other `str` each time it is asked.
pub trait Keyed {
    fn text(&self) -> &str;
    fn hash(&self) -> u64;
}

impl Keyed for str {
    #[inline]
    fn text(&self) -> &str {
        self
    }

    #[inline]
    fn hash(&self) -> u64 {
        hash_of(self)
    }
}

/// A tag as it stands in keys: `|` stripped from both ends, inner `|` made `.`, wrapped
/// in `|`. The empty tag stays empty.
pub fn normalize_tag(tag: &str) -> String {
    if tag.is_empty() {
        return String::new();
    }
    format!("|{}|", tag.trim_matches('|').replace('|', "."))
}

/// The part of a function's keys that precedes the parameters: `name|` or `name||tag||`.
pub fn function_head(name: &str, tag: &str) -> String {
    let tag = normalize_tag(tag);
    if tag.is_empty() {
        format!("{name}|")
    } else {
        format!("{name}|{tag}|")
    }
}

thread_local! {
    static KEY_BUF: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
}

/// A key being written in a buffer that this thread reuses from call to call. A
/// nested call (a `repr` or the function calling another cached one) finds the buffer
/// taken and uses a fresh one: reentrancy costs an allocation, never a wrong key.
/// Sealed into a [`KeyBuf`] once complete.
pub struct KeyWriter(pub(crate) String);

impl KeyWriter {
    pub fn take() -> Self {
        KeyWriter(KEY_BUF.try_with(std::cell::Cell::take).unwrap_or_default())
    }

    /// The complete key, with its hash.
    #[inline]
    pub fn seal(mut self) -> KeyBuf {
        // The writer is left empty: its drop gives nothing back.
        KeyBuf::of(std::mem::take(&mut self.0))
    }
}

impl Drop for KeyWriter {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.0));
    }
}

/// A call's key, in the buffer it was written in, and its hash: computed once, for
/// the lookup, the single flight and the store.
#[derive(Clone)]
pub struct KeyBuf {
    text: String,
    hash: u64,
}

impl KeyBuf {
    #[inline]
    pub fn of(text: String) -> Self {
        KeyBuf {
            hash: hash_of(&text),
            text,
        }
    }
}

impl Keyed for KeyBuf {
    #[inline]
    fn text(&self) -> &str {
        &self.text
    }

    #[inline]
    fn hash(&self) -> u64 {
        self.hash
    }
}

impl std::ops::Deref for KeyBuf {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl Drop for KeyBuf {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.text));
    }
}

/// Returns a key's buffer to this thread for the next key (unless it grew large).
fn give_back(mut buf: String) {
    if buf.capacity() != 0 && buf.capacity() <= 4096 {
        buf.clear();
        let _ = KEY_BUF.try_with(|c| c.set(buf));
    }
}

/// Whether a parameter of this name never enters a key.
fn is_filtered_name(name: &str, exclude: &HashSet<String>) -> bool {
    name == "self" || name == "cls" || name.starts_with('_') || exclude.contains(name)
}

struct Param {
    name: String,
    included: bool,
    default: Option<Py<PyAny>>,
}

/// How to turn a call's arguments into the parameter part of a key. Built once per
/// decorated function from `inspect.getfullargspec`, whose binding rules 0.2.x keys follow.
pub struct KeyPlan {
    positional: Vec<Param>,
    /// Indices of the positional parameters that enter keys, sorted by name.
    sorted: Vec<usize>,
    exclude: HashSet<String>,
    guard: Guard,
}

/// The character that starts an escaped value in a key (see [`Guard`]).
pub const ESC: char = '\u{241e}';

/// Keeps keys unambiguous. A key joins `name=repr(value)` pairs with spaces, as 0.2.x
/// does; a value whose repr contains ` other=` for a parameter of the function (or any
/// ` identifier=` when the function takes `*args` / `**kwargs`, whose names are open),
/// or `|`, could make two different calls share a key. Such a value (and only such a
/// value: every other key stays byte for byte the one of 0.2.x) is written escaped:
/// [`ESC`], then the repr with `ESC`, space and `|` replaced by `ESC ESC`, `ESC s` and
/// `ESC p`. Escaped values contain no space and no `|`, and others no `ESC`, so a key
/// splits back into its pairs in one way only.
struct Guard {
    names: Vec<String>,
    open: bool,
    function: String,
}

impl Guard {
    fn is_ambiguous(&self, segment: &str) -> bool {
        if !segment.bytes().any(|b| b == b'=' || b == b'|' || b == 0xE2) {
            return false; // the common case, decided in one pass
        }
        if segment.contains('|') || segment.contains(ESC) {
            return true;
        }
        if self.open {
            return has_space_identifier_eq(segment);
        }
        self.names.iter().any(|n| {
            segment.match_indices(n.as_str()).any(|(i, _)| {
                segment[..i].ends_with(' ') && segment[i + n.len()..].starts_with('=')
            })
        })
    }
}

/// Whether `s` contains a space, an identifier, then `=`.
fn has_space_identifier_eq(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter()
        .enumerate()
        .filter(|(_, c)| **c == b'=')
        .any(|(eq, _)| {
            let mut i = eq;
            while i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_') {
                i -= 1;
            }
            i < eq && i > 0 && b[i - 1] == b' ' && !b[i].is_ascii_digit()
        })
}

fn escape_into(out: &mut String, segment: &str) {
    out.push(ESC);
    for c in segment.chars() {
        match c {
            ESC => {
                out.push(ESC);
                out.push(ESC);
            }
            ' ' => {
                out.push(ESC);
                out.push('s');
            }
            '|' => {
                out.push(ESC);
                out.push('p');
            }
            _ => out.push(c),
        }
    }
}

impl KeyPlan {
    /// Reads the signature of `func` (its `__wrapped__` if it has one).
    pub fn new(func: &Bound<'_, PyAny>, exclude: HashSet<String>) -> PyResult<Self> {
        let py = func.py();
        let spec = py
            .import("inspect")?
            .getattr("getfullargspec")?
            .call1((func,))?;
        let names: Vec<String> = spec.getattr("args")?.extract()?;
        let kwonly: Vec<String> = spec.getattr("kwonlyargs")?.extract()?;
        let open = !spec.getattr("varargs")?.is_none() || !spec.getattr("varkw")?.is_none();
        let function: String = func
            .getattr("__qualname__")
            .or_else(|_| func.getattr("__name__"))
            .and_then(|n| n.extract())
            .unwrap_or_default();
        if spec.getattr("varkw")?.is_none() {
            let mut unknown: Vec<&String> = exclude
                .iter()
                .filter(|e| !names.contains(e) && !kwonly.contains(e))
                .collect();
            unknown.sort();
            if let Some(first) = unknown.first() {
                let params: Vec<&str> = names.iter().chain(&kwonly).map(String::as_str).collect();
                return Err(crate::errors::CacheError::config(
                    "exclude",
                    format!("'{first}'"),
                    format!(
                        "{function}() has no parameter of that name (its parameters: {})",
                        if params.is_empty() {
                            "none".to_owned()
                        } else {
                            params.join(", ")
                        }
                    ),
                )
                .into());
            }
        }
        let guard = Guard {
            names: names.iter().chain(&kwonly).cloned().collect(),
            open,
            function,
        };
        let defaults = spec.getattr("defaults")?;
        let defaults: Vec<Py<PyAny>> = if defaults.is_none() {
            Vec::new()
        } else {
            defaults
                .try_iter()?
                .map(|d| d.map(Bound::unbind))
                .collect::<PyResult<_>>()?
        };
        let first_default = names.len().saturating_sub(defaults.len());
        let mut defaults = defaults.into_iter();
        let positional: Vec<Param> = names
            .into_iter()
            .enumerate()
            .map(|(i, name)| Param {
                included: !is_filtered_name(&name, &exclude),
                default: if i >= first_default {
                    defaults.next()
                } else {
                    None
                },
                name,
            })
            .collect();
        let mut sorted: Vec<usize> = (0..positional.len())
            .filter(|&i| positional[i].included)
            .collect();
        sorted.sort_by(|&a, &b| positional[a].name.cmp(&positional[b].name));
        Ok(KeyPlan {
            positional,
            sorted,
            exclude,
            guard,
        })
    }

    /// Appends `name=repr(value)` pairs, sorted by name and joined by one space.
    pub fn write_params(
        &self,
        out: &mut String,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let kwargs = kwargs.filter(|k| !k.is_empty());
        if kwargs.is_none() && self.takes_positional(args.len()) {
            return self.write_positional(args.py(), out, args.as_slice());
        }
        self.write_general(out, args, kwargs)
    }

    /// Whether a call of `n` positional arguments and no keywords can be written by
    /// [`KeyPlan::write_positional`]: none beyond the named parameters.
    #[inline]
    pub fn takes_positional(&self, n: usize) -> bool {
        n <= self.positional.len()
    }

    /// The common case: positional arguments only, none beyond the named parameters
    /// (see [`KeyPlan::takes_positional`]).
    #[inline]
    pub fn write_positional<'py>(
        &self,
        py: Python<'py>,
        out: &mut String,
        args: &[Bound<'py, PyAny>],
    ) -> PyResult<()> {
        self.write_given(py, out, |i| args.get(i))
    }

    /// The pairs of the positional parameters in key order: the value `given` for a
    /// parameter, else its default; one without either is left out.
    #[inline]
    fn write_given<'a, 'py: 'a>(
        &self,
        py: Python<'py>,
        out: &mut String,
        given: impl Fn(usize) -> Option<&'a Bound<'py, PyAny>>,
    ) -> PyResult<()> {
        let mut first = true;
        for &i in &self.sorted {
            let param = &self.positional[i];
            let value = if let Some(v) = given(i) {
                v
            } else if let Some(d) = &param.default {
                d.bind(py)
            } else {
                continue;
            };
            self.write_pair(out, &param.name, value, &mut first)?;
        }
        Ok(())
    }

    /// A call of positional arguments and keywords as the interpreter passes them
    /// (`names`, and their `values`), when every keyword names a positional parameter
    /// that no positional argument gave: written as [`KeyPlan::write_positional`]
    /// writes, without a dict. `false` (nothing written) for any other call.
    pub fn write_keywords<'py>(
        &self,
        py: Python<'py>,
        out: &mut String,
        args: &[Bound<'py, PyAny>],
        names: &Bound<'py, PyTuple>,
        values: &[Bound<'py, PyAny>],
    ) -> PyResult<bool> {
        const MOST: usize = 16;
        if self.positional.len() > MOST || args.len() > self.positional.len() {
            return Ok(false);
        }
        let mut given: [Option<&Bound<'py, PyAny>>; MOST] = [None; MOST];
        for (name, value) in names.iter().zip(values) {
            let Ok(name) = name.cast::<PyString>() else {
                return Ok(false);
            };
            let name = name.to_str()?;
            let Some(i) = self.positional.iter().position(|p| p.name == name) else {
                return Ok(false); // a keyword-only or unknown name, or a flag
            };
            if i < args.len() || given[i].is_some() {
                return Ok(false); // given twice: the call raises as Python's would
            }
            given[i] = Some(value);
        }
        self.write_given(py, out, |i| args.get(i).or(given[i]))?;
        Ok(true)
    }

    /// Every other call: bind as `inspect` would, later bindings replacing earlier ones.
    #[cold]
    fn write_general(
        &self,
        out: &mut String,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let mut first = true;
        for (name, value) in &self.bind_all(args.py(), args.as_slice(), kwargs)? {
            self.write_pair(out, name, value, &mut first)?;
        }
        Ok(())
    }

    /// The arguments of a call by parameter name, defaults filled in, as the key sees
    /// them: filtered names (`self`, `cls`, `_`-names, `exclude`) left out, sorted.
    fn bind_all<'s, 'py>(
        &'s self,
        py: Python<'py>,
        args: &[Bound<'py, PyAny>],
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Vec<(Cow<'s, str>, Bound<'py, PyAny>)>> {
        let mut bound: Vec<(Cow<'_, str>, Bound<'_, PyAny>)> = Vec::new();
        for p in &self.positional {
            if let Some(d) = &p.default {
                bind(
                    &mut bound,
                    Cow::Borrowed(p.name.as_str()),
                    d.bind(py).clone(),
                );
            }
        }
        for (i, value) in args.iter().enumerate() {
            match self.positional.get(i) {
                Some(p) => bind(&mut bound, Cow::Borrowed(p.name.as_str()), value.clone()),
                None => bind(
                    &mut bound,
                    Cow::Owned(format!("vararg{}", i - self.positional.len() + 1)),
                    value.clone(),
                ),
            }
        }
        if let Some(kwargs) = kwargs {
            for (k, v) in kwargs.iter() {
                let name = k.cast::<PyString>()?.to_str()?.to_owned();
                bind(&mut bound, Cow::Owned(name), v);
            }
        }
        bound.retain(|(n, _)| !is_filtered_name(n, &self.exclude));
        bound.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(bound)
    }

    /// The parameter a first positional argument binds to, if any.
    pub fn first_positional(&self) -> Option<&str> {
        self.positional.first().map(|p| p.name.as_str())
    }

    /// The parameters named by `exclude=`.
    pub fn excluded(&self) -> &HashSet<String> {
        &self.exclude
    }

    /// `name=repr(value)` as a key holds it, or `None` for a parameter that never
    /// enters keys (filtered names, connections): the pieces of a partial-match glob.
    pub fn fragment(&self, name: &str, value: &Bound<'_, PyAny>) -> PyResult<Option<String>> {
        if is_filtered_name(name, &self.exclude) || is_connection_like(value) {
            return Ok(None);
        }
        let mut out = String::new();
        self.write_pair(&mut out, name, value, &mut true)?;
        Ok(Some(out))
    }

    /// The arguments of a call as a dict, the view the key is made from (connections
    /// left out too): what two-argument `ttl`, `cache_if` and `validate` callables get
    /// (cachu 0.6).
    pub fn args_dict<'py>(
        &self,
        py: Python<'py>,
        args: &[Bound<'py, PyAny>],
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, value) in self.bind_all(py, args, kwargs)? {
            if !is_connection_like(&value) {
                d.set_item(&*name, value)?;
            }
        }
        Ok(d)
    }
}

/// Binds `name` to `value`, replacing an earlier binding of the same name.
fn bind<'a, 'py>(
    bound: &mut Vec<(Cow<'a, str>, Bound<'py, PyAny>)>,
    name: Cow<'a, str>,
    value: Bound<'py, PyAny>,
) {
    if let Some(slot) = bound.iter_mut().find(|(n, _)| *n == name) {
        slot.1 = value;
    } else {
        bound.push((name, value));
    }
}

impl KeyPlan {
    fn write_pair(
        &self,
        out: &mut String,
        name: &str,
        value: &Bound<'_, PyAny>,
        first: &mut bool,
    ) -> PyResult<()> {
        if is_connection_like(value) {
            return Ok(());
        }
        if !*first {
            out.push(' ');
        }
        *first = false;
        out.push_str(name);
        out.push('=');
        let start = out.len();
        let written = write_repr(out, value)?;
        if written == Repr::Plain {
            return Ok(());
        }
        if self.guard.is_ambiguous(&out[start..]) {
            let segment = out.split_off(start);
            escape_into(out, &segment);
        } else if written == Repr::Called && out[start..].contains(" at 0x") {
            crate::warn::once(
                value.py(),
                &format!("address:{}", self.guard.function),
                &format!(
                    "cachu: an argument of {}() is written into keys as {:?}, which holds a memory address: calls with such arguments never hit; give its type a __repr__ of its contents, or exclude= the parameter",
                    self.guard.function,
                    &out[start..]
                ),
            );
        }
        Ok(())
    }
}

/// Values that look like a database connection are left out of keys, as in 0.2.x: an
/// object with a `driver_connection`, `dialect` or `engine` attribute, or whose type's
/// `str` names `Connection`, `Engine`, `psycopg`, `pyodbc` or `sqlite3`.
fn is_connection_like(value: &Bound<'_, PyAny>) -> bool {
    // Builtin value types have none of those attributes: skip the look-ups for them.
    if value.is_exact_instance_of::<PyString>()
        || value.is_exact_instance_of::<PyInt>()
        || value.is_none()
        || value.is_exact_instance_of::<PyBool>()
        || value.is_exact_instance_of::<PyFloat>()
        || value.is_exact_instance_of::<PyTuple>()
        || value.is_exact_instance_of::<PyBytes>()
        || value.is_exact_instance_of::<PyList>()
        || value.is_exact_instance_of::<PyDict>()
        || value.is_exact_instance_of::<PySet>()
        || value.is_exact_instance_of::<PyFrozenSet>()
    {
        return false;
    }
    connection_like_slow(value)
}

#[cold]
fn connection_like_slow(value: &Bound<'_, PyAny>) -> bool {
    for attr in ["driver_connection", "dialect", "engine"] {
        if value.hasattr(attr).unwrap_or(false) {
            return true;
        }
    }
    value.get_type().str().is_ok_and(|s| {
        let s = s.to_string();
        ["Connection", "Engine", "psycopg", "pyodbc", "sqlite3"]
            .iter()
            .any(|needle| s.contains(needle))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::{region_name, sqlite_file_name, ttl_of_region, ttl_of_sqlite_file};

    #[test]
    fn region_and_file_names_read_back_as_ttls() {
        for ttl in [-1, 1, 30, 59, 60, 300, 3540, 3600, 7200, 86_400, 172_800] {
            assert_eq!(
                ttl_of_region(&region_name(ttl)).map(region_name),
                Some(region_name(ttl))
            );
            let file = sqlite_file_name(Some("app"), ttl);
            assert_eq!(
                ttl_of_sqlite_file(Some("app"), &file).map(|t| sqlite_file_name(Some("app"), t)),
                Some(file)
            );
        }
        assert_eq!(ttl_of_region("5m"), Some(300));
        assert_eq!(ttl_of_region("sessions"), None);
        assert_eq!(ttl_of_region("05m"), None);
        assert_eq!(ttl_of_sqlite_file(Some("app"), "myapp_cache5min.db"), None);
        assert_eq!(
            ttl_of_sqlite_file(Some("app"), "app_cache5min.db"),
            Some(300)
        );
        assert_eq!(ttl_of_sqlite_file(None, "app_cache5min.db"), None);
        assert_eq!(ttl_of_sqlite_file(None, "cache1hour.db"), Some(3600));
    }

    fn guard(names: &[&str], open: bool) -> Guard {
        Guard {
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            open,
            function: "f".into(),
        }
    }

    #[test]
    fn ambiguous_values_are_those_that_could_fake_a_pair() {
        let g = guard(&["a", "b"], false);
        assert!(g.is_ambiguous("1 b=2"));
        assert!(g.is_ambiguous("x|y"));
        assert!(g.is_ambiguous("\u{241e}"));
        assert!(
            !g.is_ambiguous("User(id=1, name='x')"),
            "not a parameter name"
        );
        assert!(!g.is_ambiguous("'plain'"));
        assert!(!g.is_ambiguous("1 ab=2"));
        let open = guard(&[], true);
        assert!(open.is_ambiguous("User(id=1, name='x')"));
        assert!(!open.is_ambiguous("x=1"), "no space before the name");
        assert!(!open.is_ambiguous("a 1=2"), "not an identifier");
    }

    #[test]
    fn escaped_values_hold_no_separator() {
        let mut out = String::new();
        escape_into(&mut out, "1 b=2|\u{241e}");
        assert_eq!(out, "\u{241e}1\u{241e}sb=2\u{241e}p\u{241e}\u{241e}");
        assert!(!out.contains(' ') && !out.contains('|'));
    }

    #[test]
    fn regions_follow_integer_division() {
        let cases = [
            (0, "0s"),
            (5, "5s"),
            (59, "59s"),
            (60, "1m"),
            (300, "5m"),
            (3599, "59m"),
            (3600, "1h"),
            (86_399, "23h"),
            (86_400, "1d"),
            (604_800, "7d"),
            (-1, "-1s"),
        ];
        for (ttl, name) in cases {
            assert_eq!(region_name(ttl), name, "ttl={ttl}");
        }
    }

    #[test]
    fn tags_are_normalized() {
        assert_eq!(normalize_tag(""), "");
        assert_eq!(normalize_tag("users"), "|users|");
        assert_eq!(normalize_tag("|users|"), "|users|");
        assert_eq!(normalize_tag("a|b"), "|a.b|");
        assert_eq!(function_head("get_user", ""), "get_user|");
        assert_eq!(function_head("get_user", "users"), "get_user||users||");
    }

    #[test]
    fn sqlite_files_are_named_by_region() {
        assert_eq!(sqlite_file_name(Some("app"), 30), "app_cache30sec.db");
        assert_eq!(sqlite_file_name(Some("app"), 300), "app_cache5min.db");
        assert_eq!(sqlite_file_name(Some("app"), 7200), "app_cache2hour.db");
        assert_eq!(sqlite_file_name(Some("app"), 172_800), "app_cache48hour.db");
        assert_eq!(sqlite_file_name(None, 300), "cache5min.db");
        assert_eq!(sqlite_file_name(Some("app"), -1), "app_cache-1sec.db");
    }
}
