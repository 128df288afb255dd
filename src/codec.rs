//! How values are kept, and how they are handed out without letting a caller that
//! mutates its result change what is cached.
//!
//! - Immutable values (numbers, strings, bytes, `None`, and tuples / frozensets of
//!   those) are shared: every hit returns the same object.
//! - Dicts, lists, sets and tuples whose leaves are immutable are copied structurally
//!   here, on store and on every hit.
//! - Small records (a dict of at most five string keys, each value immutable or a flat
//!   container) are kept as a tuple of their values beside their keys, which records of
//!   the same shape share; a hit builds the dict anew. A kept record takes a third of
//!   the memory of a kept dict, and building one costs about what copying it does.
//! - Anything else is pickled once on store and unpickled on every hit.
//!
//! The byte backends (file, Redis) keep `pickle.dumps(value)`, as cachu 0.2.x does.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyBool, PyBytes, PyComplex, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PySet, PyString,
    PyTuple,
};

/// Nesting deeper than this is left to pickle rather than copied here.
const MAX_DEPTH: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Shape {
    Immutable,
    Structural,
    Opaque,
}

fn is_immutable_leaf(v: &Bound<'_, PyAny>) -> bool {
    v.is_exact_instance_of::<PyString>()
        || v.is_exact_instance_of::<PyInt>()
        || v.is_none()
        || v.is_exact_instance_of::<PyFloat>()
        || v.is_exact_instance_of::<PyBool>()
        || v.is_exact_instance_of::<PyBytes>()
        || v.is_exact_instance_of::<PyComplex>()
}

fn shape_of_items<'py>(items: impl Iterator<Item = Bound<'py, PyAny>>, depth: usize) -> Shape {
    let mut worst = Shape::Immutable;
    for item in items {
        worst = worst.max(shape(&item, depth + 1));
        if worst == Shape::Opaque {
            break;
        }
    }
    worst
}

fn shape(v: &Bound<'_, PyAny>, depth: usize) -> Shape {
    if is_immutable_leaf(v) {
        return Shape::Immutable;
    }
    if depth > MAX_DEPTH {
        return Shape::Opaque;
    }
    if let Ok(t) = v.cast_exact::<PyTuple>() {
        return shape_of_items(t.iter(), depth);
    }
    if let Ok(s) = v.cast_exact::<PyFrozenSet>() {
        return match shape_of_items(s.iter(), depth) {
            Shape::Immutable => Shape::Immutable,
            _ => Shape::Opaque,
        };
    }
    if let Ok(l) = v.cast_exact::<PyList>() {
        return shape_of_items(l.iter(), depth).max(Shape::Structural);
    }
    if let Ok(d) = v.cast_exact::<PyDict>() {
        // One walk of the items (`keys()` and `values()` would each make a list).
        let mut values = Shape::Immutable;
        for (k, item) in d.iter() {
            if shape(&k, depth + 1) != Shape::Immutable {
                return Shape::Opaque;
            }
            values = values.max(shape(&item, depth + 1));
            if values == Shape::Opaque {
                return Shape::Opaque;
            }
        }
        return values.max(Shape::Structural);
    }
    if let Ok(s) = v.cast_exact::<PySet>() {
        return match shape_of_items(s.iter(), depth) {
            Shape::Immutable => Shape::Structural,
            _ => Shape::Opaque,
        };
    }
    Shape::Opaque
}

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
    /// A small dict with string keys: `(shape, value, value, ...)`, `shape` a tuple of
    /// the keys and their [`Kind`]s that records of one shape share. Values are
    /// immutable, or flat containers kept frozen (a list or a set as a tuple, a dict as a
    /// tuple of its keys and values in turn): a record holds nothing mutable, and the
    /// collector stops visiting it.
    Record(Py<PyTuple>),
    Pickled(Py<PyBytes>),
}

/// The most keys of a dict kept as a record: CPython's smallest dict table holds five,
/// so that rebuilding one never grows its table.
const RECORD_MAX_KEYS: usize = 5;

/// Shapes (tuples of keys) this thread made lately: records of one shape share theirs.
const SHAPES_KEPT: usize = 8;

/// How a record keeps one value (two bits of its shape's last item, per key).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// Immutable: the value itself.
    Itself = 0,
    /// A flat list, kept as a tuple.
    List = 1,
    /// A flat set, kept as a tuple.
    Set = 2,
    /// A flat dict, kept as a tuple of its keys and values in turn.
    Dict = 3,
}

impl Kind {
    fn of(kinds: u64, i: usize) -> Kind {
        match (kinds >> (2 * i)) & 3 {
            0 => Kind::Itself,
            1 => Kind::List,
            2 => Kind::Set,
            _ => Kind::Dict,
        }
    }
}

thread_local! {
    static SHAPES: std::cell::RefCell<std::collections::VecDeque<Py<PyTuple>>> =
        const { std::cell::RefCell::new(std::collections::VecDeque::new()) };
}

/// The shared shape of `keys` and their `kinds` (`(key, ..., kinds)`), made if this
/// thread has none lately.
fn shape_of_keys<'py>(
    py: Python<'py>,
    keys: &[Bound<'py, PyAny>],
    kinds: u64,
) -> PyResult<Bound<'py, PyTuple>> {
    let same = |shape: &Bound<'py, PyTuple>| {
        shape.len() == keys.len() + 1
            && shape.iter().zip(keys).all(|(a, b)| {
                // Exact strings: comparing them runs no Python code.
                a.is(b) || a.eq(b).unwrap_or(false)
            })
            && shape
                .get_item(keys.len())
                .and_then(|k| k.extract::<u64>())
                .is_ok_and(|k| k == kinds)
    };
    let known = SHAPES
        .try_with(|cell| {
            let shapes = cell.try_borrow().ok()?;
            shapes.iter().map(|s| s.bind(py)).find(|s| same(s)).cloned()
        })
        .ok()
        .flatten();
    if let Some(shape) = known {
        return Ok(shape);
    }
    let mut items = keys.to_vec();
    items.push(kinds.into_pyobject(py)?.into_any());
    let shape = PyTuple::new(py, items)?;
    let evicted = SHAPES
        .try_with(|cell| {
            let mut shapes = cell.try_borrow_mut().ok()?;
            shapes.push_front(shape.clone().unbind());
            (shapes.len() > SHAPES_KEPT)
                .then(|| shapes.pop_back())
                .flatten()
        })
        .ok()
        .flatten();
    drop(evicted); // outside the borrow
    Ok(shape)
}

/// A copy of `d` kept as a record, if it is one.
fn record_of(d: &Bound<'_, PyDict>) -> PyResult<Option<Py<PyTuple>>> {
    let py = d.py();
    let n = d.len();
    if n == 0 || n > RECORD_MAX_KEYS {
        return Ok(None);
    }
    // SAFETY: a new tuple of `n + 1` empty slots, owned here; an error below drops it
    // with slots still empty, which a tuple's deallocation allows. Out of the
    // collector's sight at once, it is never visited half filled.
    let record = private(unsafe {
        Bound::from_owned_ptr_or_err(py, ffi::PyTuple_New((n + 1) as ffi::Py_ssize_t))?
            .cast_into_unchecked::<PyTuple>()
    });
    let mut keys: [Bound<'_, PyAny>; RECORD_MAX_KEYS] =
        std::array::from_fn(|_| py.None().into_bound(py));
    let mut kinds = 0u64;
    let mut filled = 0;
    for (i, (k, v)) in d.iter().take(n).enumerate() {
        if !k.is_exact_instance_of::<PyString>() {
            return Ok(None);
        }
        let (kind, kept) = if shape(&v, 1) == Shape::Immutable {
            (Kind::Itself, v)
        } else if let Some(l) = v.cast_exact::<PyList>().ok().filter(|_| is_flat(&v)) {
            (Kind::List, private(l.to_tuple()).into_any())
        } else if let Some(m) = v.cast_exact::<PyDict>().ok().filter(|_| is_flat(&v)) {
            let pairs: Vec<_> = m.iter().flat_map(|(k, v)| [k, v]).collect();
            (Kind::Dict, private(PyTuple::new(py, pairs)?).into_any())
        } else if is_flat_set(&v) {
            let items: Vec<_> = v.try_iter()?.flatten().collect();
            (Kind::Set, private(PyTuple::new(py, items)?).into_any())
        } else {
            return Ok(None);
        };
        kinds |= (kind as u64) << (2 * i);
        keys[i] = k;
        // SAFETY: slot `i + 1` of the new tuple, empty; it takes `kept`'s reference.
        unsafe {
            ffi::PyTuple_SET_ITEM(record.as_ptr(), (i + 1) as ffi::Py_ssize_t, kept.into_ptr());
        };
        filled += 1;
    }
    if filled != n {
        // The dict shrank during the walk (a finalizer run by a collection): not kept
        // as a record, whose every slot must be filled.
        return Ok(None);
    }
    let shape = shape_of_keys(py, &keys[..n], kinds)?;
    // SAFETY: slot 0, empty; it takes `shape`'s reference.
    unsafe { ffi::PyTuple_SET_ITEM(record.as_ptr(), 0, shape.into_ptr()) };
    Ok(Some(record.unbind()))
}

/// `tuple`, which only the store will hold, out of the cyclic collector's sight: no
/// object it refers to can refer back to it, so it can never be part of a cycle.
/// (CPython untracks a tuple of immutable values at the first collection that visits
/// it; untracked at once, it is not visited at all.)
fn private(tuple: Bound<'_, PyTuple>) -> Bound<'_, PyTuple> {
    // SAFETY: `tuple` is a live tuple and the GIL is held; untracking an object the
    // collector does not track is a no-op.
    unsafe { ffi::PyObject_GC_UnTrack(tuple.as_ptr().cast()) };
    tuple
}

/// The dict a record stands for, new, its containers thawed (new lists, dicts, sets).
fn dict_of_record<'py>(record: &Bound<'py, PyTuple>) -> PyResult<Bound<'py, PyAny>> {
    let py = record.py();
    let out = PyDict::new(py);
    let n = record.len() - 1;
    // SAFETY: `record` was made by `record_of`: item 0 is a tuple of `n` keys and their
    // kinds (an int), items 1..=n the values, as their kinds say, and tuples never
    // change. The items are borrowed from tuples that `record` keeps alive for the whole
    // loop. Every test of a memory hit on a small dict runs this.
    unsafe {
        let shape = record.get_borrowed_item_unchecked(0);
        let kinds = ffi::PyTuple_GET_ITEM(shape.as_ptr(), n as ffi::Py_ssize_t);
        // An int below 4 ** RECORD_MAX_KEYS, made by `shape_of_keys`: it converts.
        let kinds = ffi::PyLong_AsUnsignedLongLong(kinds);
        for i in 0..n {
            let k = ffi::PyTuple_GET_ITEM(shape.as_ptr(), i as ffi::Py_ssize_t);
            let v = record.get_borrowed_item_unchecked(i + 1);
            let thawed;
            let value = match Kind::of(kinds, i) {
                Kind::Itself => v.as_ptr(),
                kind => {
                    thawed = thaw(&v, kind)?;
                    thawed.as_ptr()
                }
            };
            if ffi::PyDict_SetItem(out.as_ptr(), k, value) < 0 {
                return Err(PyErr::fetch(py));
            }
        }
    }
    Ok(out.into_any())
}

/// A new container of `kind` from its frozen form in a record.
fn thaw<'py>(frozen: &Bound<'py, PyAny>, kind: Kind) -> PyResult<Bound<'py, PyAny>> {
    let py = frozen.py();
    let items = frozen.cast::<PyTuple>();
    Ok(match kind {
        Kind::Itself => frozen.clone(),
        Kind::List => PyList::new(py, items?.iter_borrowed())?.into_any(),
        Kind::Set => PySet::new(py, items?.iter_borrowed())?.into_any(),
        Kind::Dict => {
            let items = items?;
            let d = PyDict::new(py);
            for pair in items.as_slice().chunks_exact(2) {
                d.set_item(&pair[0], &pair[1])?;
            }
            d.into_any()
        }
    })
}

/// Whether `v` is a set of immutable leaves.
fn is_flat_set(v: &Bound<'_, PyAny>) -> bool {
    v.cast_exact::<PySet>()
        .is_ok_and(|s| s.iter().all(|item| is_immutable_leaf(&item)))
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

/// Whether `v` is a dict or list whose items (and keys) are all immutable leaves.
fn is_flat(v: &Bound<'_, PyAny>) -> bool {
    if let Ok(d) = v.cast_exact::<PyDict>() {
        return d
            .iter()
            .all(|(k, item)| is_immutable_leaf(&item) && shape(&k, 1) == Shape::Immutable);
    }
    if let Ok(l) = v.cast_exact::<PyList>() {
        return l.iter().all(|item| is_immutable_leaf(&item));
    }
    false
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
            if let Some(record) = record_of(d)? {
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
            Stored::Record(r) => dict_of_record(r.bind(py)),
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

    /// The object the store keeps (for sizing it).
    pub fn held<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        match self {
            Stored::Shared(o) | Stored::Flat(o) | Stored::Copied(o) => o.bind(py).clone(),
            Stored::Nested(n) => n.get().dict.bind(py).clone().into_any(),
            Stored::Record(r) => r.bind(py).clone().into_any(),
            Stored::Pickled(b) => b.bind(py).clone().into_any(),
        }
    }

    /// The bytes this value holds: its pickle's length if kept pickled, else what
    /// `sys.getsizeof` says of it and of its direct members (a dict's keys and values, a
    /// sequence's or set's items; a record's values and shared keys).
    pub fn weight(&self, py: Python<'_>) -> usize {
        if let Stored::Pickled(b) = self {
            return b.bind(py).as_bytes().len();
        }
        let held = self.held(py);
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
