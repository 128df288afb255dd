//! Freshness: what a value found is good for, from its [`Stamp`] and a function's
//! freshness controls.
//!
//! A value of a function with `ttl`, `stale_ttl=S` and `stale_if_error=E` is stored for
//! `ttl + max(S, E)` and judged by its age `a` (from its creation time) against the TTL
//! it was stored with (`fresh_for`, after jitter):
//!
//! - `a < fresh_for`: fresh, a hit; with `early_refresh=BETA` a hit whose remaining
//!   lifetime `r` is short against its computation's duration `delta` also starts a
//!   background refresh (`delta * BETA * -ln(U) >= r`, `U` uniform in `(0, 1]`: `XFetch`,
//!   Vattani et al., VLDB 2015);
//! - `a < fresh_for + S`: stale, served at once while one background refresh runs;
//! - `a < fresh_for + E`: expired, but the fallback of a computation that fails or,
//!   with `timeout=T`, takes longer than `T`;
//! - else: a miss.
//!
//! A value that does not say how long it is fresh (written by cachu 0.2.x or without
//! freshness controls) is fresh for as long as it is stored.

use std::time::Duration;

use crate::stamp::Stamp;

/// A function's freshness controls (all off by default).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rules {
    /// `stale_ttl`: seconds a value is served stale after its TTL, while refreshed.
    pub stale_ttl: f64,
    /// `stale_if_error`: seconds after its TTL a value stands in for a failure.
    pub stale_if_error: f64,
    /// `early_refresh`: `XFetch`'s `BETA` (0: off).
    pub early_refresh: f64,
    /// `timeout`: how long a computation runs before its caller gets the fallback.
    pub timeout: Option<Duration>,
}

/// What a value found is good for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judged {
    /// A hit.
    Fresh,
    /// A hit that starts a background refresh (early refresh).
    Early,
    /// Served stale while a background refresh runs.
    Stale,
    /// Expired: the caller computes, and falls back to it on a failure.
    Fallback,
    /// A miss.
    Expired,
}

impl Rules {
    /// Whether any control is on: off, values are stored and judged as without them.
    pub fn is_on(&self) -> bool {
        self.stale_ttl > 0.0 || self.stale_if_error > 0.0 || self.early_refresh > 0.0
    }

    /// The seconds a value is kept after its TTL.
    pub fn grace(&self) -> f64 {
        self.stale_ttl.max(self.stale_if_error)
    }

    /// Judges a value created at `stamp.created_at`, now (Unix seconds); `uniform`
    /// draws `U` in [0, 1) for early refresh (only when asked).
    pub fn judge(&self, stamp: &Stamp, now: f64, uniform: impl FnOnce() -> f64) -> Judged {
        if !stamp.is_stamped() {
            return Judged::Fresh;
        }
        let age = now - stamp.created_at;
        let left = stamp.fresh_for - age;
        if left > 0.0 {
            let early = self.early_refresh > 0.0
                && stamp.took > 0.0
                && stamp.took * self.early_refresh * -(1.0 - uniform()).ln() >= left;
            return if early { Judged::Early } else { Judged::Fresh };
        }
        if -left < self.stale_ttl {
            Judged::Stale
        } else if -left < self.stale_if_error {
            Judged::Fallback
        } else {
            Judged::Expired
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(age: f64, fresh_for: f64, took: f64) -> Stamp {
        Stamp {
            created_at: 1000.0 - age,
            fresh_for,
            took,
        }
    }

    #[test]
    fn ages_fall_into_fresh_stale_fallback_expired() {
        let rules = Rules {
            stale_ttl: 10.0,
            stale_if_error: 30.0,
            ..Rules::default()
        };
        let judge = |age| rules.judge(&stamp(age, 60.0, 0.1), 1000.0, || 0.5);
        assert_eq!(judge(59.0), Judged::Fresh);
        assert_eq!(judge(61.0), Judged::Stale);
        assert_eq!(judge(75.0), Judged::Fallback);
        assert_eq!(judge(95.0), Judged::Expired);
        assert!((rules.grace() - 30.0).abs() < 1e-9);
    }

    #[test]
    fn a_value_without_a_stamp_is_fresh_while_stored() {
        let rules = Rules {
            stale_ttl: 10.0,
            ..Rules::default()
        };
        assert_eq!(rules.judge(&Stamp::plain(0.0), 1e9, || 0.5), Judged::Fresh);
    }

    #[test]
    fn early_refresh_grows_likelier_as_expiry_nears() {
        let rules = Rules {
            early_refresh: 1.0,
            ..Rules::default()
        };
        // delta 1 s, U = 1 - e^-1: -ln(1 - U) = 1, so it fires with 1 s left or less.
        let u = 1.0 - (-1.0f64).exp();
        assert_eq!(
            rules.judge(&stamp(59.1, 60.0, 1.0), 1000.0, || u),
            Judged::Early
        );
        assert_eq!(
            rules.judge(&stamp(58.0, 60.0, 1.0), 1000.0, || u),
            Judged::Fresh
        );
        // Unknown duration: never early.
        assert_eq!(
            rules.judge(&stamp(59.9, 60.0, f64::NAN), 1000.0, || 0.999),
            Judged::Fresh
        );
    }
}
