//! How values are kept, and how they are handed out without letting a caller that
//! mutates its result change what is cached.
//!
//! - Immutable values (numbers, strings, bytes, `None`, and tuples / frozensets of
//!   those) are shared: every hit returns the same object.
//! - Dicts, lists, sets and tuples whose leaves are immutable are copied structurally
//!   here, on store and on every hit.
//! - Small records (a dict of at most five string keys, each value immutable or a flat
//!   container) are kept as their values beside their keys, which records of the same
//!   shape share ([`Record`]); a hit builds the dict anew. A kept record takes a fifth
//!   of the memory of a kept dict, and building one costs about what copying it does.
//! - Anything else is pickled once on store and unpickled on every hit.
//!
//! The byte backends (file, Redis) keep `pickle.dumps(value)`, as cachu 0.2.x does.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PySet, PyTuple};

mod record;
mod shape;
pub use record::Record;
use shape::{is_flat, is_immutable_leaf, shape, shape_of_items, Shape};

/// A copy of a value of structural shape: containers new, immutable leaves shared.
/// Dicts and lists are first cloned whole at C speed (`dict.copy()`, a slice), then only
/// their mutable members are replaced by copies.
fn deep_copy<'py>(v: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = v.py();
    if let Ok(d) = v.cast_exact::<PyDict>() {
        let out = d.copy()?;
        for (k, val) in d.iter() {
            if !is_immutable_leaf(&val) {
                let copy = deep_copy(&val)?;
                if !copy.is(&val) {
                    out.set_item(k, copy)?;
                }
            }
        }
        return Ok(out.into_any());
    }
    if let Ok(l) = v.cast_exact::<PyList>() {
        let out = l.get_slice(0, l.len());
        for (i, item) in l.iter().enumerate() {
            if !is_immutable_leaf(&item) {
                let copy = deep_copy(&item)?;
                if !copy.is(&item) {
                    out.set_item(i, copy)?;
                }
            }
        }
        return Ok(out.into_any());
    }
    if let Ok(t) = v.cast_exact::<PyTuple>() {
        if shape_of_items(t.iter(), 0) == Shape::Immutable {
            return Ok(v.clone());
        }
        let items = t
            .iter()
            .map(|item| deep_copy(&item))
            .collect::<PyResult<Vec<_>>>()?;
        return Ok(PyTuple::new(py, items)?.into_any());
    }
    if let Ok(s) = v.cast_exact::<PySet>() {
        return Ok(PySet::new(py, s.iter())?.into_any());
    }
    Ok(v.clone())
}

struct Pickle {
    dumps: Py<PyAny>,
    loads: Py<PyAny>,
}

static PICKLE: PyOnceLock<Pickle> = PyOnceLock::new();

fn pickle(py: Python<'_>) -> PyResult<&Pickle> {
    PICKLE.get_or_try_init(py, || {
        let m = py.import("pickle")?;
        Ok::<_, PyErr>(Pickle {
            dumps: m.getattr("dumps")?.unbind(),
            loads: m.getattr("loads")?.unbind(),
        })
    })
}

/// `pickle.dumps(value)`: the value format of the file and Redis backends.
pub fn dumps<'py>(value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    let py = value.py();
    Ok(pickle(py)?.dumps.bind(py).call1((value,))?.cast_into()?)
}

/// `pickle.loads(data)`.
pub fn loads<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    pickle(py)?.loads.bind(py).call1((PyBytes::new(py, data),))
}

/// A value as the memory backend keeps it.
pub enum Stored {
    Shared(Py<PyAny>),
    /// A dict or list whose items are all immutable: one shallow copy isolates it.
    Flat(Py<PyAny>),
    Copied(Py<PyAny>),
    /// A dict too large for a record (or with other keys than strings) whose mutable
    /// members are all flat containers: a hit copies the dict, then those members only,
    /// with no type checks.
    Nested(Py<NestedDict>),
    /// A small dict with string keys, kept as a [`Record`].
    Record(Record),
    Pickled(Py<PyBytes>),
}

/// A stored dict and, for each member that a caller could mutate, its key and value.
/// A Python object, so that handing it from the store to a caller costs a reference
/// count, not an atomic one.
#[pyclass(frozen, module = "cachu._cachu")]
pub struct NestedDict {
    dict: Py<PyDict>,
    members: Box<[(Py<PyAny>, Py<PyAny>)]>,
}

impl NestedDict {
    /// The plan for `stored` (a copy owned by the cache), if it has the shape.
    fn plan(stored: &Bound<'_, PyAny>) -> Option<NestedDict> {
        let d = stored.cast_exact::<PyDict>().ok()?;
        let mut members = Vec::new();
        for (k, v) in d.iter() {
            if is_immutable_leaf(&v) {
                continue;
            }
            if !(is_flat(&v) || v.is_exact_instance_of::<PySet>()) {
                return None;
            }
            members.push((k.unbind(), v.unbind()));
        }
        Some(NestedDict {
            dict: d.clone().unbind(),
            members: members.into_boxed_slice(),
        })
    }

    fn materialize<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let out = self.dict.bind(py).copy()?;
        for (k, v) in &*self.members {
            out.set_item(k.bind(py), shallow_copy(v.bind(py))?)?;
        }
        Ok(out.into_any())
    }
}

/// A shallow copy of a flat dict, list or set.
fn shallow_copy<'py>(v: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    if let Ok(d) = v.cast_exact::<PyDict>() {
        return Ok(d.copy()?.into_any());
    }
    if let Ok(l) = v.cast_exact::<PyList>() {
        return Ok(l.get_slice(0, l.len()).into_any());
    }
    deep_copy(v)
}

impl Stored {
    /// Takes a value in, copying or pickling it so that later changes to `value` do not
    /// reach the cache; without `copy`, the value itself is kept and handed to every
    /// caller (`memory_copy=False`). Fails only if the value must be pickled and cannot
    /// be.
    pub fn capture_as(value: &Bound<'_, PyAny>, copy: bool) -> PyResult<Stored> {
        if !copy {
            return Ok(Stored::Shared(value.clone().unbind()));
        }
        // A small record is found by its own walk (str keys; values immutable, or flat
        // containers, which it copies): a dict it takes needs no other.
        if let Ok(d) = value.cast_exact::<PyDict>() {
            if let Some(record) = Record::of(d)? {
                return Ok(Stored::Record(record));
            }
        }
        Ok(match shape(value, 0) {
            Shape::Immutable => Stored::Shared(value.clone().unbind()),
            Shape::Structural if is_flat(value) => Stored::Flat(shallow_copy(value)?.unbind()),
            Shape::Structural => {
                let copy = deep_copy(value)?;
                match NestedDict::plan(&copy) {
                    Some(plan) => Stored::Nested(Py::new(value.py(), plan)?),
                    None => Stored::Copied(copy.unbind()),
                }
            }
            Shape::Opaque => Stored::Pickled(dumps(value)?.unbind()),
        })
    }

    /// A value for one caller: the shared object, or a fresh copy.
    pub fn materialize<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self {
            Stored::Shared(v) => Ok(v.bind(py).clone()),
            Stored::Flat(v) => shallow_copy(v.bind(py)),
            Stored::Copied(v) => deep_copy(v.bind(py)),
            Stored::Nested(n) => n.get().materialize(py),
            Stored::Record(r) => r.to_dict(py),
            Stored::Pickled(b) => pickle(py)?.loads.bind(py).call1((b.bind(py),)),
        }
    }

    /// Another handle on the same stored value (no Python code runs).
    #[must_use]
    pub fn clone_ref(&self, py: Python<'_>) -> Stored {
        match self {
            Stored::Shared(v) => Stored::Shared(v.clone_ref(py)),
            Stored::Flat(v) => Stored::Flat(v.clone_ref(py)),
            Stored::Copied(v) => Stored::Copied(v.clone_ref(py)),
            Stored::Nested(n) => Stored::Nested(n.clone_ref(py)),
            Stored::Record(r) => Stored::Record(r.clone_ref(py)),
            Stored::Pickled(b) => Stored::Pickled(b.clone_ref(py)),
        }
    }

    /// The object the store keeps (for sizing it), unless it is a record.
    fn held<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyAny>, &Record> {
        Ok(match self {
            Stored::Shared(o) | Stored::Flat(o) | Stored::Copied(o) => o.bind(py).clone(),
            Stored::Nested(n) => n.get().dict.bind(py).clone().into_any(),
            Stored::Record(r) => return Err(r),
            Stored::Pickled(b) => b.bind(py).clone().into_any(),
        })
    }

    /// The bytes of the object the store keeps, as `sys.getsizeof` measures it (a
    /// record: as it would measure an object of the record's layout).
    pub fn own_size(&self, py: Python<'_>) -> usize {
        match self.held(py) {
            Ok(held) => size_of(&held),
            Err(record) => record.own_size(),
        }
    }

    /// The bytes this value holds: its pickle's length if kept pickled, else what
    /// `sys.getsizeof` says of it and of its direct members (a dict's keys and values, a
    /// sequence's or set's items; a record's values and shared keys).
    pub fn weight(&self, py: Python<'_>) -> usize {
        if let Stored::Pickled(b) = self {
            return b.bind(py).as_bytes().len();
        }
        let held = match self.held(py) {
            Ok(held) => held,
            Err(record) => {
                let members = record.members(py);
                return record.own_size() + members.iter().map(size_of).sum::<usize>();
            }
        };
        let mut total = size_of(&held);
        if let Ok(d) = held.cast::<pyo3::types::PyDict>() {
            for (k, v) in d.iter().take(10_000) {
                total += size_of(&k) + size_of(&v);
            }
        } else if !held.is_instance_of::<pyo3::types::PyString>()
            && !held.is_instance_of::<PyBytes>()
        {
            if let Ok(items) = held.try_iter() {
                total += items
                    .flatten()
                    .take(10_000)
                    .map(|x| size_of(&x))
                    .sum::<usize>();
            }
        }
        total
    }
}

/// `sys.getsizeof(value)` (0 if it fails).
fn size_of(value: &Bound<'_, PyAny>) -> usize {
    static GETSIZEOF: pyo3::sync::PyOnceLock<Py<PyAny>> = pyo3::sync::PyOnceLock::new();
    let py = value.py();
    GETSIZEOF
        .import(py, "sys", "getsizeof")
        .and_then(|f| f.call1((value,)))
        .and_then(|n| n.extract::<usize>())
        .unwrap_or(0)
}
