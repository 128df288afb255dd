//! What a stored value carries about its freshness, and where a byte store keeps it.
//!
//! Every store keeps a value's creation time (the 0.2.x Redis header, SQLite's
//! `created_at`, a memory entry's slot). A function with freshness controls
//! (`stale_ttl`, `stale_if_error`, `early_refresh`, `timeout`) stores its values for
//! longer than they are fresh, so it also keeps how long each one is fresh (its TTL
//! after jitter, or what a dynamic TTL returned) and how long its computation took
//! (for early refresh). A memory entry keeps them in its slot; a byte store keeps them
//! in a trailer after the pickle (inside the signature, when values are signed):
//!
//! ```text
//! pickle | fresh_for: f64 LE | took: f64 LE | b"CXF\x01"
//! ```
//!
//! `pickle.loads` stops at the pickle's STOP opcode and ignores what follows, so a
//! cachu 0.2.x process reads such a value as the plain pickle. A pickle always ends
//! with its STOP opcode (`.`), never with the trailer's last byte, so a value with a
//! trailer is never mistaken for one without. Values of functions without freshness
//! controls have no trailer: their bytes are exactly 0.2.x's.

/// The freshness of one stored value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stamp {
    /// Unix seconds.
    pub created_at: f64,
    /// Seconds the value is fresh after `created_at`; NaN when the store does not say
    /// (a value written without freshness controls, or by cachu 0.2.x).
    pub fresh_for: f64,
    /// Seconds its computation took; NaN when unknown.
    pub took: f64,
}

impl Stamp {
    /// A value with no freshness of its own: fresh for as long as it is stored.
    pub fn plain(created_at: f64) -> Stamp {
        Stamp {
            created_at,
            fresh_for: f64::NAN,
            took: f64::NAN,
        }
    }

    /// Whether the value says how long it is fresh.
    pub fn is_stamped(&self) -> bool {
        !self.fresh_for.is_nan()
    }
}

/// How long a value about to be stored is fresh, and how long it took to compute.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fresh {
    pub fresh_for: f64,
    pub took: f64,
}

const MAGIC: &[u8; 4] = b"CXF\x01";
/// The trailer's length.
pub const TRAILER: usize = 8 + 8 + MAGIC.len();

/// `pickle` with the trailer of `fresh`.
pub fn append(pickle: &mut Vec<u8>, fresh: Fresh) {
    pickle.reserve(TRAILER);
    pickle.extend_from_slice(&fresh.fresh_for.to_le_bytes());
    pickle.extend_from_slice(&fresh.took.to_le_bytes());
    pickle.extend_from_slice(MAGIC);
}

/// The pickle of a stored value, and the freshness its trailer carries (if it has one).
pub fn split(data: &[u8]) -> (&[u8], Option<Fresh>) {
    if data.len() <= TRAILER || !data.ends_with(MAGIC) {
        return (data, None);
    }
    let (pickle, trailer) = data.split_at(data.len() - TRAILER);
    let number = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&trailer[at..at + 8]);
        f64::from_le_bytes(b)
    };
    let fresh = Fresh {
        fresh_for: number(0),
        took: number(8),
    };
    (pickle, Some(fresh))
}

impl Stamp {
    /// The stamp of a value created at `created_at` with the trailer `fresh`.
    pub fn of(created_at: f64, fresh: Option<Fresh>) -> Stamp {
        match fresh {
            Some(f) => Stamp {
                created_at,
                fresh_for: f.fresh_for,
                took: f.took,
            },
            None => Stamp::plain(created_at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trailer_comes_back_and_leaves_the_pickle_as_it_was() {
        let pickle = b"\x80\x04K\x01.".to_vec();
        let mut data = pickle.clone();
        let fresh = Fresh {
            fresh_for: 60.5,
            took: 0.2,
        };
        append(&mut data, fresh);
        assert_eq!(split(&data), (&pickle[..], Some(fresh)));
    }

    #[test]
    fn a_plain_pickle_has_no_trailer() {
        let pickle = b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00CXF\x01.";
        assert_eq!(split(pickle), (&pickle[..], None));
        assert_eq!(split(b"CXF\x01"), (&b"CXF\x01"[..], None));
    }
}
