//! Signed values: with `configure(signing_key=...)`, the file and Redis backends store
//! `b"cachu-hmac1:" + HMAC-SHA256(key, pickle) + pickle` and unpickle only what carries
//! a valid tag. Whoever can write to the Redis server or the cache file then cannot make
//! this process unpickle data of their choosing (pickle runs code). A value without a
//! valid tag is a miss and a warning; it is never unpickled and never deleted.
//!
//! Signed values are not readable by cachu 0.2.x (which would discard them as
//! undecodable): signing is for deployments that no longer share with it.

use ring::hmac;

/// What starts every signed value.
pub const MAGIC: &[u8] = b"cachu-hmac1:";
const TAG: usize = 32;

/// Why a stored value was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Signed, and the tag does not match: altered, or signed with another key.
    BadTag,
    /// Not signed, while a signing key is configured.
    Unsigned,
    /// Signed, but this process has no signing key to check it with.
    NoKey,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refused::BadTag => {
                "its signature does not match (altered, or signed with another signing_key)"
            }
            Refused::Unsigned => "it is not signed, and signing_key is configured",
            Refused::NoKey => "it is signed, and no signing_key is configured to check it",
        })
    }
}

/// `pickle`, signed with `key`.
pub fn seal(key: &[u8], pickle: &[u8]) -> Vec<u8> {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), pickle);
    let mut out = Vec::with_capacity(MAGIC.len() + TAG + pickle.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(tag.as_ref());
    out.extend_from_slice(pickle);
    out
}

/// The pickle inside a stored value, if it may be unpickled.
pub fn open<'a>(key: Option<&[u8]>, data: &'a [u8]) -> Result<&'a [u8], Refused> {
    let signed = data.starts_with(MAGIC) && data.len() >= MAGIC.len() + TAG;
    match (key, signed) {
        (None, false) => Ok(data),
        (None, true) => Err(Refused::NoKey),
        (Some(_), false) => Err(Refused::Unsigned),
        (Some(key), true) => {
            let (tag, pickle) = data[MAGIC.len()..].split_at(TAG);
            hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, key), pickle, tag)
                .map(|()| pickle)
                .map_err(|_| Refused::BadTag)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_with_their_key_only() {
        let sealed = seal(b"0123456789abcdef", b"\x80\x04K\x01.");
        assert_eq!(
            open(Some(b"0123456789abcdef"), &sealed),
            Ok(&b"\x80\x04K\x01."[..])
        );
        assert_eq!(
            open(Some(b"another key 1234"), &sealed),
            Err(Refused::BadTag)
        );
        assert_eq!(open(None, &sealed), Err(Refused::NoKey));
        assert_eq!(
            open(Some(b"0123456789abcdef"), b"\x80\x04K\x01."),
            Err(Refused::Unsigned)
        );
        assert_eq!(open(None, b"\x80\x04K\x01."), Ok(&b"\x80\x04K\x01."[..]));
    }

    #[test]
    fn one_flipped_bit_is_refused() {
        let mut sealed = seal(b"0123456789abcdef", b"\x80\x04K\x01.");
        let last = sealed.len() - 2;
        sealed[last] ^= 1;
        assert_eq!(
            open(Some(b"0123456789abcdef"), &sealed),
            Err(Refused::BadTag)
        );
    }
}
