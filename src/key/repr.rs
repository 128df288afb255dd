//! `repr()` of plain values, written here byte for byte as Python writes it: `int`,
//! `bool`, `None`, `float`, plain ASCII `str`, and tuples and frozensets of those.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyFrozenSet, PyInt, PyString, PyTuple};

/// How [`write_repr`] wrote a value.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Repr {
    /// An `int`, `bool` or `None`: digits, a sign or a word, never ambiguous in a key.
    Plain,
    /// A plain ASCII `str`, quoted here: any text.
    Text,
    /// By calling `repr()`: any text, an object's address among others.
    Called,
}

/// Appends `repr(value)`; `int`, `bool`, `None`, `float`, plain ASCII `str` and tuples and
/// frozensets of those are formatted here, byte for byte as Python would, without calling `repr`.
pub fn write_repr(out: &mut String, value: &Bound<'_, PyAny>) -> PyResult<Repr> {
    write_repr_nested(out, value, 0)
}

/// How deep tuples in tuples are written here (deeper ones go to `repr`).
const TUPLE_DEPTH: usize = 4;

fn write_repr_nested(out: &mut String, value: &Bound<'_, PyAny>, depth: usize) -> PyResult<Repr> {
    if let Ok(f) = value.cast_exact::<PyFloat>() {
        if write_float(out, f.value()) {
            return Ok(Repr::Plain);
        }
    }
    if depth < TUPLE_DEPTH {
        if let Ok(t) = value.cast_exact::<PyTuple>() {
            return write_tuple(out, t, depth);
        }
        if let Ok(f) = value.cast_exact::<PyFrozenSet>() {
            return write_frozenset(out, f, depth);
        }
    }
    if let Ok(s) = value.cast_exact::<PyString>() {
        if let Ok(s) = s.to_str() {
            if write_ascii_str_repr(out, s) {
                return Ok(Repr::Text);
            }
        }
    } else if value.is_exact_instance_of::<PyInt>() {
        if let Ok(n) = value.extract::<i64>() {
            write_int(out, n);
            return Ok(Repr::Plain);
        }
    } else if value.is_none() {
        out.push_str("None");
        return Ok(Repr::Plain);
    } else if let Ok(b) = value.cast_exact::<PyBool>() {
        out.push_str(if b.is_true() { "True" } else { "False" });
        return Ok(Repr::Plain);
    }
    out.push_str(value.repr()?.to_str()?);
    Ok(Repr::Called)
}

/// `repr(tuple)`: its items' reprs, joined by `", "`, a 1-tuple with a trailing comma.
fn write_tuple(out: &mut String, t: &Bound<'_, PyTuple>, depth: usize) -> PyResult<Repr> {
    out.push('(');
    let kind = write_items(out, t.iter(), depth)?;
    if t.len() == 1 {
        out.push(',');
    }
    out.push(')');
    Ok(kind)
}

/// `repr(frozenset)`: `frozenset({a, b})` in the set's own order (as `repr` iterates
/// it), `frozenset()` when empty.
fn write_frozenset(out: &mut String, f: &Bound<'_, PyFrozenSet>, depth: usize) -> PyResult<Repr> {
    if f.is_empty() {
        out.push_str("frozenset()");
        return Ok(Repr::Plain);
    }
    out.push_str("frozenset({");
    let kind = write_items(out, f.iter(), depth)?;
    out.push_str("})");
    Ok(kind)
}

/// The reprs of a container's items, joined by `", "`: [`Repr::Called`] if any item's
/// was, else [`Repr::Text`].
fn write_items<'py>(
    out: &mut String,
    items: impl Iterator<Item = Bound<'py, PyAny>>,
    depth: usize,
) -> PyResult<Repr> {
    let mut kind = Repr::Text;
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        if write_repr_nested(out, &item, depth + 1)? == Repr::Called {
            kind = Repr::Called;
        }
    }
    Ok(kind)
}

/// `repr(float)`: the shortest digits that read back as `x`, in fixed notation when the
/// decimal point falls within 4 places before the first digit to 16 after it (`0.0001`
/// is written so, `1e-05` and `1e+16` with an exponent), with `.0` for a whole number;
/// `inf`, `-inf`, `nan`. `false` (nothing written) for 16 digits or more: only there can
/// two shortest strings read back as `x`, where Python picks the even one and Rust's
/// formatting may not, so those are left to `repr`.
pub fn write_float(out: &mut String, x: f64) -> bool {
    use std::fmt::Write;
    if x.is_nan() {
        out.push_str("nan");
        return true;
    }
    if x.is_infinite() {
        out.push_str(if x > 0.0 { "inf" } else { "-inf" });
        return true;
    }
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if digits.len() >= 16 {
        return false;
    }
    let decpt = exp + 1;
    if x.is_sign_negative() {
        out.push('-');
    }
    let n = digits.len() as i32;
    if -4 < decpt && decpt <= 16 {
        if decpt <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-decpt) as usize));
            out.push_str(&digits);
        } else if decpt < n {
            out.push_str(&digits[..decpt as usize]);
            out.push('.');
            out.push_str(&digits[decpt as usize..]);
        } else {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', (decpt - n) as usize));
            out.push_str(".0");
        }
    } else {
        out.push_str(&digits[..1]);
        if n > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = decpt - 1;
        let _ = write!(out, "e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    }
    true
}

/// Appends the decimal digits of `n`, as `repr(int)` writes them.
fn write_int(out: &mut String, n: i64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut m = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    if n < 0 {
        out.push('-');
    }
    // SAFETY: `buf[i..]` holds the ASCII digits written above, which are UTF-8 (the
    // checked conversion cost more than the rest of the key's rendering of an int;
    // `test_floats_ints_and_tuples_are_written_as_repr_writes_them` checks ints of
    // every length and sign against `repr`).
    out.push_str(unsafe { std::str::from_utf8_unchecked(&buf[i..]) });
}

/// Python's `repr` of a printable-ASCII string; `false` (nothing written) for any other
/// string, which is left to Python.
fn write_ascii_str_repr(out: &mut String, s: &str) -> bool {
    if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return false;
    }
    let has_single = s.contains('\'');
    let quote = if !has_single {
        '\''
    } else if !s.contains('"') {
        '"'
    } else {
        return false;
    };
    out.push(quote);
    for c in s.chars() {
        if c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push(quote);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_are_written_like_python() {
        for n in [0, 7, -7, 10, 123_456, i64::MAX, i64::MIN] {
            let mut out = String::new();
            write_int(&mut out, n);
            assert_eq!(out, n.to_string());
        }
    }

    #[test]
    fn ascii_strings_are_quoted_like_python() {
        let repr = |s: &str| {
            let mut out = String::new();
            write_ascii_str_repr(&mut out, s).then_some(out)
        };
        assert_eq!(repr("abc").as_deref(), Some("'abc'"));
        assert_eq!(repr("it's").as_deref(), Some("\"it's\""));
        assert_eq!(repr("a\\b").as_deref(), Some("'a\\\\b'"));
        assert_eq!(repr("").as_deref(), Some("''"));
        assert_eq!(repr("both ' and \""), None);
        assert_eq!(repr("tab\t"), None);
        assert_eq!(repr("café"), None);
    }
}
