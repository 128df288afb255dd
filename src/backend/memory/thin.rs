//! A string owned through one pointer: its length is kept in front of its bytes, so
//! that an entry of the store holds 8 bytes for its key where a `Box<str>` takes 16.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;

/// The length in front of the bytes.
type Len = u32;
const HEADER: usize = std::mem::size_of::<Len>();

pub(super) struct ThinStr(NonNull<u8>);

// SAFETY: a `ThinStr` owns its allocation alone and never changes it: it is a `Box<str>`.
unsafe impl Send for ThinStr {}
// SAFETY: as above; shared, it is only read.
unsafe impl Sync for ThinStr {}

impl ThinStr {
    /// A copy of `s`, or `None` if it is longer than 4 GiB less one byte.
    pub(super) fn new(s: &str) -> Option<ThinStr> {
        let len = Len::try_from(s.len()).ok()?;
        let layout = layout(s.len());
        // SAFETY: the layout is never zero-sized (it holds the length). The new
        // allocation is written in full, the length then the bytes, before it is read.
        unsafe {
            let p = alloc(layout);
            let Some(p) = NonNull::new(p) else {
                handle_alloc_error(layout)
            };
            p.cast::<Len>().as_ptr().write_unaligned(len);
            std::ptr::copy_nonoverlapping(s.as_ptr(), p.as_ptr().add(HEADER), s.len());
            Some(ThinStr(p))
        }
    }

    fn len(&self) -> usize {
        // SAFETY: the allocation starts with its length, written by `new`.
        unsafe { self.0.cast::<Len>().as_ptr().read_unaligned() as usize }
    }

    pub(super) fn as_str(&self) -> &str {
        // SAFETY: `new` copied a `str` of `len()` bytes after the length, and nothing
        // changes them while `self` lives.
        unsafe {
            let bytes = std::slice::from_raw_parts(self.0.as_ptr().add(HEADER), self.len());
            std::str::from_utf8_unchecked(bytes)
        }
    }
}

fn layout(len: usize) -> Layout {
    // The length is read unaligned: an alignment of 1 lets the allocator pack it.
    Layout::from_size_align(HEADER + len, 1).expect("a key's length fits a layout")
}

impl Drop for ThinStr {
    fn drop(&mut self) {
        // SAFETY: allocated by `new` with this layout, and dropped once.
        unsafe { dealloc(self.0.as_ptr(), layout(self.len())) }
    }
}

impl std::ops::Deref for ThinStr {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::ThinStr;

    #[test]
    fn a_thin_str_gives_back_what_it_was_made_of() {
        for s in [
            "",
            "a",
            "300:app.get_user|user_id=123",
            "ünïcødé ✓",
            &"x".repeat(5000),
        ] {
            let t = ThinStr::new(s).unwrap();
            assert_eq!(&*t, s);
            assert_eq!(t.len(), s.len());
        }
        assert_eq!(std::mem::size_of::<ThinStr>(), 8);
        assert_eq!(std::mem::size_of::<Option<ThinStr>>(), 8);
    }
}
