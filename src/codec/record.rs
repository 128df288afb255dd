//! A small dict as the memory store keeps it: a record, one object of an object's
//! header, a pointer to its shape (its keys, which records of one shape share) and one
//! pointer per value. Not a tuple: a tuple is a collected object, which carries the
//! collector's header and its own length, 40 bytes a record has no use for (a record of
//! three keys takes 48 bytes where a tuple of its shape and values took 80). Nothing in
//! a record can refer back to it (its values are immutable, or flat containers kept
//! frozen in tuples of its own), so it never takes part in a cycle and the collector
//! need not know it.

use std::ffi::{c_int, c_uint, c_void};

use pyo3::exceptions::PyMemoryError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PySet, PyString, PyTuple, PyType};

use super::shape::{is_flat, is_immutable_leaf, shape, Shape};

/// The most keys of a dict kept as a record: CPython's smallest dict table holds five,
/// so that rebuilding one never grows its table.
const MAX_KEYS: usize = 5;

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

/// A record's memory: the header, the shape `(key, ..., kinds)`, then one value per
/// key (as many as the shape has keys).
#[repr(C)]
struct Raw {
    ob_base: ffi::PyObject,
    shape: *mut ffi::PyObject,
    values: [*mut ffi::PyObject; 0],
}

/// The record type: made once, never instantiable from Python, not collected.
fn record_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    static TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    TYPE.get_or_try_init(py, || {
        let mut slots = [
            ffi::PyType_Slot {
                slot: ffi::Py_tp_dealloc,
                pfunc: dealloc as *mut c_void,
            },
            ffi::PyType_Slot {
                slot: 0,
                pfunc: std::ptr::null_mut(),
            },
        ];
        let mut spec = ffi::PyType_Spec {
            // Static: a type made from a spec may keep pointing at its name.
            name: c"cachu._cachu.Record".as_ptr(),
            basicsize: std::mem::size_of::<Raw>() as c_int,
            itemsize: 0,
            flags: (ffi::Py_TPFLAGS_DEFAULT | ffi::Py_TPFLAGS_DISALLOW_INSTANTIATION) as c_uint,
            slots: slots.as_mut_ptr(),
        };
        // SAFETY: a complete spec, whose slots the call copies; the name is static.
        let made =
            unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyType_FromSpec(&raw mut spec))? };
        Ok::<_, PyErr>(made.cast_into::<PyType>()?.unbind())
    })
    .map(|t| t.bind(py))
}

/// A record's values, as many as its shape has keys.
///
/// # Safety
/// `raw` is a live record made by [`Record::new`].
unsafe fn parts<'a>(raw: *mut Raw) -> (*mut ffi::PyObject, &'a [*mut ffi::PyObject]) {
    let shape = (*raw).shape;
    let n = ffi::PyTuple_GET_SIZE(shape) as usize - 1;
    let values = (&raw const (*raw).values).cast::<*mut ffi::PyObject>();
    (shape, std::slice::from_raw_parts(values, n))
}

/// Releases a record's shape and values, then its memory and its hold on its type.
unsafe extern "C" fn dealloc(obj: *mut ffi::PyObject) {
    // SAFETY: called by the interpreter on a record, whose last reference has gone:
    // every record is made whole by `Record::new` (it cannot be made from Python).
    unsafe {
        let (shape, values) = parts(obj.cast::<Raw>());
        for &v in values {
            ffi::Py_DECREF(v);
        }
        ffi::Py_DECREF(shape);
        let tp = ffi::Py_TYPE(obj);
        ffi::PyObject_Free(obj.cast());
        // An instance of a type made from a spec holds a reference to it.
        ffi::Py_DECREF(tp.cast());
    }
}

/// A small dict with string keys, kept: its values (immutable, or flat containers kept
/// frozen: a list or a set as a tuple, a dict as a tuple of its keys and values in turn)
/// beside a shape that records of the same keys share. It holds nothing mutable.
pub struct Record(Py<PyAny>);

impl Record {
    /// A record of `shape` (`(key, ..., kinds)`) and its `values`, one per key.
    fn new(shape: Bound<'_, PyTuple>, values: &[Bound<'_, PyAny>]) -> PyResult<Record> {
        let py = shape.py();
        debug_assert_eq!(shape.len(), values.len() + 1);
        let tp = record_type(py)?;
        let size = std::mem::size_of::<Raw>() + std::mem::size_of_val(values);
        // SAFETY: the GIL is held. The new object is written whole (its header by
        // `PyObject_Init`, then the shape and every value, each a reference of its own)
        // before anything can see it.
        unsafe {
            let obj = ffi::PyObject_Malloc(size).cast::<ffi::PyObject>();
            if obj.is_null() {
                return Err(PyMemoryError::new_err("no memory for a cached record"));
            }
            ffi::PyObject_Init(obj, tp.as_type_ptr());
            let raw = obj.cast::<Raw>();
            (*raw).shape = shape.into_ptr();
            let slots = (&raw mut (*raw).values).cast::<*mut ffi::PyObject>();
            for (i, v) in values.iter().enumerate() {
                slots.add(i).write(v.clone().into_ptr());
            }
            Ok(Record(Bound::from_owned_ptr(py, obj).unbind()))
        }
    }

    /// A record of `d`, if it has the shape of one.
    pub fn of(d: &Bound<'_, PyDict>) -> PyResult<Option<Record>> {
        let py = d.py();
        let n = d.len();
        if n == 0 || n > MAX_KEYS {
            return Ok(None);
        }
        let none = || py.None().into_bound(py);
        let mut keys: [Bound<'_, PyAny>; MAX_KEYS] = std::array::from_fn(|_| none());
        let mut values: [Bound<'_, PyAny>; MAX_KEYS] = std::array::from_fn(|_| none());
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
            values[i] = kept;
            filled += 1;
        }
        if filled != n {
            // The dict shrank during the walk (a finalizer run by a collection): not
            // kept as a record, which has a value for every key of its shape.
            return Ok(None);
        }
        Record::new(shape_of_keys(py, &keys[..n], kinds)?, &values[..n]).map(Some)
    }

    /// The dict this record stands for, new, its containers thawed (new lists, dicts,
    /// sets).
    pub fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let out = PyDict::new(py);
        // SAFETY: a record made by `Record::new`: its shape is a tuple of its keys and
        // their kinds (an int), one value per key, as the kinds say; the record never
        // changes, and `self` keeps it (and so the items borrowed here) alive.
        unsafe {
            let (shape, values) = parts(self.0.as_ptr().cast::<Raw>());
            let n = values.len();
            let kinds = ffi::PyTuple_GET_ITEM(shape, n as ffi::Py_ssize_t);
            // An int below 4 ** MAX_KEYS, made by `shape_of_keys`: it converts.
            let kinds = ffi::PyLong_AsUnsignedLongLong(kinds);
            for (i, &v) in values.iter().enumerate() {
                let k = ffi::PyTuple_GET_ITEM(shape, i as ffi::Py_ssize_t);
                let thawed;
                // Two bits of zero: the value itself (no kind to tell apart).
                let value = if (kinds >> (2 * i)) & 3 == Kind::Itself as u64 {
                    v
                } else {
                    thawed = thaw(&Bound::from_borrowed_ptr(py, v), Kind::of(kinds, i))?;
                    thawed.as_ptr()
                };
                if ffi::PyDict_SetItem(out.as_ptr(), k, value) < 0 {
                    return Err(PyErr::fetch(py));
                }
            }
        }
        Ok(out.into_any())
    }

    /// Another handle on the same record (no Python code runs).
    #[must_use]
    pub fn clone_ref(&self, py: Python<'_>) -> Record {
        Record(self.0.clone_ref(py))
    }

    /// The bytes of the record itself, as `sys.getsizeof` would measure an object of
    /// its layout.
    pub fn own_size(&self) -> usize {
        // SAFETY: a record made by `Record::new`.
        let (_, values) = unsafe { parts(self.0.as_ptr().cast::<Raw>()) };
        std::mem::size_of::<Raw>() + std::mem::size_of_val(values)
    }

    /// The record's shape, then its values (as kept), for sizing them.
    pub fn members<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyAny>> {
        // SAFETY: a record made by `Record::new`; each member is taken as a new
        // reference.
        unsafe {
            let (shape, values) = parts(self.0.as_ptr().cast::<Raw>());
            std::iter::once(shape)
                .chain(values.iter().copied())
                .map(|p| Bound::from_borrowed_ptr(py, p))
                .collect()
        }
    }
}

thread_local! {
    /// Each shape with its kinds (the shape's last item, as a number here).
    static SHAPES: std::cell::RefCell<std::collections::VecDeque<(u64, Py<PyTuple>)>> =
        const { std::cell::RefCell::new(std::collections::VecDeque::new()) };
}

/// The shared shape of `keys` and their `kinds` (`(key, ..., kinds)`), made if this
/// thread has none lately.
fn shape_of_keys<'py>(
    py: Python<'py>,
    keys: &[Bound<'py, PyAny>],
    kinds: u64,
) -> PyResult<Bound<'py, PyTuple>> {
    let same = |kept: u64, shape: &Bound<'py, PyTuple>| {
        let items = shape.as_slice();
        kept == kinds
            && items.len() == keys.len() + 1
            // Exact strings: comparing them runs no Python code (and dict literals'
            // keys are interned: the same objects).
            && items.iter().zip(keys).all(|(a, b)| a.is(b) || a.eq(b).unwrap_or(false))
    };
    let known = SHAPES
        .try_with(|cell| {
            let shapes = cell.try_borrow().ok()?;
            let (_, shape) = shapes.iter().find(|(k, s)| same(*k, s.bind(py)))?;
            Some(shape.bind(py).clone())
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
            shapes.push_front((kinds, shape.clone().unbind()));
            (shapes.len() > SHAPES_KEPT)
                .then(|| shapes.pop_back())
                .flatten()
        })
        .ok()
        .flatten();
    drop(evicted); // outside the borrow
    Ok(shape)
}

/// `tuple`, which only a record will hold, out of the cyclic collector's sight: no
/// object it refers to can refer back to it, so it can never be part of a cycle.
/// (CPython untracks a tuple of immutable values at the first collection that visits
/// it; untracked at once, it is not visited at all.)
fn private(tuple: Bound<'_, PyTuple>) -> Bound<'_, PyTuple> {
    // SAFETY: `tuple` is a live tuple and the GIL is held; untracking an object the
    // collector does not track is a no-op.
    unsafe { ffi::PyObject_GC_UnTrack(tuple.as_ptr().cast()) };
    tuple
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
