//! What a value is made of, which decides how it is kept: immutable throughout (shared),
//! containers of immutable leaves (copied structurally), or anything else (pickled).

use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyBytes, PyComplex, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PySet, PyString,
    PyTuple,
};

/// Nesting deeper than this is left to pickle rather than copied here.
const MAX_DEPTH: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(super) enum Shape {
    Immutable,
    Structural,
    Opaque,
}

pub(super) fn is_immutable_leaf(v: &Bound<'_, PyAny>) -> bool {
    v.is_exact_instance_of::<PyString>()
        || v.is_exact_instance_of::<PyInt>()
        || v.is_none()
        || v.is_exact_instance_of::<PyFloat>()
        || v.is_exact_instance_of::<PyBool>()
        || v.is_exact_instance_of::<PyBytes>()
        || v.is_exact_instance_of::<PyComplex>()
}

pub(super) fn shape_of_items<'py>(
    items: impl Iterator<Item = Bound<'py, PyAny>>,
    depth: usize,
) -> Shape {
    let mut worst = Shape::Immutable;
    for item in items {
        worst = worst.max(shape(&item, depth + 1));
        if worst == Shape::Opaque {
            break;
        }
    }
    worst
}

pub(super) fn shape(v: &Bound<'_, PyAny>, depth: usize) -> Shape {
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

/// Whether `v` is a dict or list whose items (and keys) are all immutable leaves.
pub(super) fn is_flat(v: &Bound<'_, PyAny>) -> bool {
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
