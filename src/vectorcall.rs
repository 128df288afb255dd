//! The vectorcall protocol for decorated functions.
//!
//! pyo3 gives a `#[pyclass]` with `__call__` only the `tp_call` slot: every call of a
//! decorated function then packs its arguments into a tuple (and a dict for keywords)
//! that the call unpacks again. A Python function is called through vectorcall
//! instead: the interpreter passes its argument array as it is. Here the decorated
//! types get that entry too: each instance holds the entry's address in a field, the
//! type is told the field's offset (`tp_vectorcall_offset`) and that it has one
//! (`Py_TPFLAGS_HAVE_VECTORCALL`). Measured on a call that does nothing: 29 ns through
//! `tp_call`, 14 ns through vectorcall.
//!
//! Positional calls (`f(123)`, the common case) reach [`FastCall::call_positional`]
//! with the interpreter's array as a slice; calls with keywords reach
//! [`FastCall::call_keywords`] with the array and the names, and unless answered there
//! (a hit), are packed as the interpreter packs them and handed to the type's
//! `tp_call`.

use pyo3::ffi;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::PyClass;

/// A decorated callable with a vectorcall entry.
pub trait FastCall: PyClass + Sync {
    /// A call with positional arguments only.
    fn call_positional<'py>(
        slf: &Bound<'py, Self>,
        args: &[Bound<'py, PyAny>],
    ) -> PyResult<Bound<'py, PyAny>>;

    /// A call with keywords (`names`, and their `values` after the positional `args`),
    /// answered without packing them if it can be (a hit); `None`: pack them for
    /// `tp_call`.
    fn call_keywords<'py>(
        _slf: &Bound<'py, Self>,
        _args: &[Bound<'py, PyAny>],
        _names: &Bound<'py, pyo3::types::PyTuple>,
        _values: &[Bound<'py, PyAny>],
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        Ok(None)
    }
}

/// The vectorcall entry of `T`, for its instances' entry field.
///
/// # Safety
///
/// Only CPython calls it, through the vectorcall protocol, on instances of `T` (see
/// [`install`]).
pub unsafe extern "C" fn entry<T: FastCall>(
    callable: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: usize,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls a vectorcall entry with the GIL held, on an instance of the
    // type it was installed on (`T`), with `nargs` positional arguments followed by one
    // value per name of `kwnames` (a tuple, or NULL), all borrowed for the call.
    unsafe {
        let nargs = ffi::PyVectorcall_NARGS(nargsf) as usize;
        let nkw = if kwnames.is_null() {
            0
        } else {
            ffi::PyTuple_GET_SIZE(kwnames) as usize
        };
        // The GIL is held; attaching tells pyo3 so, so that what the call drops is
        // released at once (`assume_attached` would queue it for later: one reference
        // per hit). Unchecked: the checked `attach` panics while the interpreter is
        // finalizing (3.13+), and a `__del__` may call a cached function then; the GIL
        // this thread holds is all the attach needs.
        Python::attach_unchecked(|py| {
            // `Bound<PyAny>` has the layout of an object pointer: the array is a slice
            // of them, borrowed for as long as the call.
            let all: &[Bound<'_, PyAny>] = if nargs + nkw == 0 {
                &[]
            } else {
                std::slice::from_raw_parts(args.cast::<Bound<'_, PyAny>>(), nargs + nkw)
            };
            // After a panic nothing of this call is used again: it becomes the
            // caller's `PanicException`.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let slf = Borrowed::from_ptr(py, callable).cast_unchecked::<T>();
                if nkw == 0 {
                    return T::call_positional(&slf, all).map(Bound::into_ptr);
                }
                let names =
                    Borrowed::from_ptr(py, kwnames).cast_unchecked::<pyo3::types::PyTuple>();
                if let Some(v) = T::call_keywords(&slf, &all[..nargs], &names, &all[nargs..])? {
                    return Ok(v.into_ptr());
                }
                let packed = call_with_keywords(callable, args, nargs, kwnames);
                if packed.is_null() {
                    Err(PyErr::fetch(py))
                } else {
                    Ok(packed)
                }
            }));
            match outcome {
                Ok(Ok(ptr)) => ptr,
                Ok(Err(e)) => {
                    e.restore(py);
                    std::ptr::null_mut()
                }
                Err(payload) => {
                    let message = payload
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic in cachu's call".to_owned());
                    PanicException::new_err(message).restore(py);
                    std::ptr::null_mut()
                }
            }
        })
    }
}

/// A call with keywords: packed into a tuple and a dict, as the interpreter packs them
/// for `tp_call`, and handed to the type's `tp_call` (pyo3's `__call__`), which keys
/// from them. C API only: nothing here is left for pyo3 to release.
///
/// # Safety
///
/// As for [`entry`], with `kwnames` a non-empty tuple.
unsafe fn call_with_keywords(
    callable: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: usize,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: the caller's; every object made here is released before returning, and
    // a failed C API call has set the error that the NULL returned reports.
    unsafe {
        let Some(tp_call) = (*ffi::Py_TYPE(callable)).tp_call else {
            ffi::PyErr_SetString(ffi::PyExc_TypeError, c"not callable".as_ptr());
            return std::ptr::null_mut();
        };
        let tuple = ffi::PyTuple_New(nargs as ffi::Py_ssize_t);
        if tuple.is_null() {
            return std::ptr::null_mut();
        }
        for i in 0..nargs {
            let arg = *args.add(i);
            ffi::Py_INCREF(arg);
            ffi::PyTuple_SET_ITEM(tuple, i as ffi::Py_ssize_t, arg);
        }
        let dict = ffi::PyDict_New();
        if dict.is_null() {
            ffi::Py_DECREF(tuple);
            return std::ptr::null_mut();
        }
        let nkw = ffi::PyTuple_GET_SIZE(kwnames) as usize;
        for i in 0..nkw {
            let name = ffi::PyTuple_GET_ITEM(kwnames, i as ffi::Py_ssize_t);
            if ffi::PyDict_SetItem(dict, name, *args.add(nargs + i)) < 0 {
                ffi::Py_DECREF(dict);
                ffi::Py_DECREF(tuple);
                return std::ptr::null_mut();
            }
        }
        let result = tp_call(callable, tuple, dict);
        ffi::Py_DECREF(dict);
        ffi::Py_DECREF(tuple);
        result
    }
}

/// Turns vectorcall on for `T`, whose instance `obj` holds the entry in `field`.
/// Idempotent; every instance must hold the entry at the same place (a field of `T`).
pub fn install<T: FastCall>(obj: &Bound<'_, T>, field: &ffi::vectorcallfunc) {
    let offset = std::ptr::from_ref(field) as usize - obj.as_ptr() as usize;
    let tp = T::type_object(obj.py()).as_type_ptr();
    // SAFETY: `tp` is `T`'s heap type, made by pyo3; every instance of it holds `T`
    // at one offset, so `offset` is where each keeps its entry. CPython reads the
    // entry at `tp_vectorcall_offset` when the flag is set; `PyType_Modified` drops
    // any cached lookups.
    unsafe {
        if (*tp).tp_vectorcall_offset != offset as ffi::Py_ssize_t {
            (*tp).tp_vectorcall_offset = offset as ffi::Py_ssize_t;
            (*tp).tp_flags |= ffi::Py_TPFLAGS_HAVE_VECTORCALL;
            ffi::PyType_Modified(tp);
        }
    }
}
