//! What a call finds: a cached value read, checked by `validate=` and judged by the
//! freshness controls (`flow/fresh.rs`): the flow's `Read` and the hit fast path, for
//! both drivers; and what is said when a stale value stands in for a failure.

use std::sync::atomic::Ordering;

use pyo3::prelude::*;

use super::background;
use super::values::CacheEntry;
use super::{CachedFunction, CallArgs, Resolved};
use crate::backend::Backend;
use crate::flow::fresh::Judged;
use crate::flow::Answer;
use crate::key::Keyed;
use crate::process::unix_now;
use crate::stamp::Stamp;
use crate::warn;

/// What a value found is good for (`flow/fresh.rs`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Kind {
    /// A hit.
    Fresh,
    /// A hit that starts a background refresh of the value created at `created_at`:
    /// stale, or due for an early refresh.
    Refresh { created_at: f64, stale: bool },
    /// Expired: the fallback of the computation.
    Fallback,
    /// Expired, and the computation failed a moment ago: served (fail-safe throttle).
    Throttled,
}

impl Kind {
    /// The flow's answer to a value of this kind.
    pub(crate) fn answer(self) -> Answer {
        match self {
            Kind::Fresh | Kind::Throttled => Answer::Found,
            Kind::Refresh { .. } => Answer::Stale,
            Kind::Fallback => Answer::Fallback,
        }
    }
}

/// A value found, and what it is good for.
pub(crate) struct Seen<'py> {
    pub(crate) value: Bound<'py, PyAny>,
    pub(crate) kind: Kind,
}

/// How a value found is judged: as a call judges it, or (a background refresh) as
/// news only if it is newer than the value that started the refresh.
#[derive(Clone, Copy)]
pub(crate) enum Judge {
    Call,
    NewerThan(f64),
}

impl CachedFunction {
    /// The flow's `Read`, and the hit fast path: a cached value that `validate=`
    /// accepts and the freshness controls find usable, or `None`. A backend failure is
    /// the caller's to judge (`Err`).
    #[inline]
    pub(crate) fn read<'py, K: Keyed + ?Sized>(
        &self,
        py: Python<'py>,
        r: &Resolved,
        backend: &Backend,
        key: &K,
        call: CallArgs<'_, 'py>,
        judge: Judge,
    ) -> PyResult<Result<Option<Seen<'py>>, PyErr>> {
        self.judge_read(py, r, key.text(), backend.get(py, key), call, judge)
    }

    /// A read's outcome, checked and judged as [`CachedFunction::read`] does.
    #[inline]
    fn judge_read<'py>(
        &self,
        py: Python<'py>,
        r: &Resolved,
        key: &str,
        got: PyResult<Option<(Bound<'py, PyAny>, Stamp)>>,
        call: CallArgs<'_, 'py>,
        judge: Judge,
    ) -> PyResult<Result<Option<Seen<'py>>, PyErr>> {
        match got {
            Ok(Some((value, stamp))) => self
                .validated(py, r, key, value, stamp, call, judge)
                .map(Ok),
            Ok(None) => Ok(Ok(None)),
            Err(e) => Ok(Err(e)),
        }
    }

    /// The hit fast path, on what this process keeps (a memory region, a near tier:
    /// [`Backend::peek`]): a value found and accepted is a hit (and a stale one starts a
    /// refresh: [`Seen::Refresh`]). A backend that fails is a miss (or raises, with
    /// `on_backend_error='raise'`); an expired value kept as a fallback is a miss here
    /// (the flow reads it again).
    #[inline]
    pub(crate) fn lookup<'py, K: Keyed + ?Sized>(
        &self,
        py: Python<'py>,
        r: &Resolved,
        backend: &Backend,
        key: &K,
        call: CallArgs<'_, 'py>,
    ) -> PyResult<Option<Seen<'py>>> {
        let got = backend.peek(py, key);
        let key = key.text();
        match self.judge_read(py, r, key, got, call, Judge::Call)? {
            Ok(
                Some(Seen {
                    kind: Kind::Fallback,
                    ..
                })
                | None,
            ) => Ok(None),
            Ok(Some(seen)) => {
                self.count_seen(seen.kind);
                self.count_near(backend);
                Ok(Some(seen))
            }
            Err(e) => self.read_failed(py, r, e).map(|()| None),
        }
    }

    /// The hit fast path of a function without freshness controls, on what this
    /// process keeps: a value found and accepted is a hit (with no judging of its
    /// freshness at all).
    #[inline]
    pub(crate) fn hit<'py, K: Keyed + ?Sized>(
        &self,
        py: Python<'py>,
        r: &Resolved,
        backend: &Backend,
        key: &K,
        call: CallArgs<'_, 'py>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        match backend.peek(py, key) {
            Ok(Some((value, stamp))) => {
                if self.validate.is_some() && !self.accepts(py, &value, stamp.created_at, call)? {
                    return Ok(None);
                }
                self.count_hit();
                self.count_near(backend);
                Ok(Some(value))
            }
            Ok(None) => Ok(None),
            Err(e) => self.read_failed(py, r, e).map(|()| None),
        }
    }

    /// A hit of the fast path on a near tier is counted as one too.
    #[inline]
    fn count_near(&self, backend: &Backend) {
        if backend.has_near() {
            self.stats.near_hits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A read of the hit fast path failed: counted, and raised or said.
    #[cold]
    fn read_failed(&self, py: Python<'_>, r: &Resolved, e: PyErr) -> PyResult<()> {
        self.count_error();
        Self::backend_failed(py, r, e)
    }

    /// Counts a value served: a hit (a stale one, or one served for a failure, too).
    #[inline]
    pub(crate) fn count_seen(&self, kind: Kind) {
        self.count_hit();
        match kind {
            Kind::Refresh { stale: true, .. } => {
                self.stats.stale_hits.fetch_add(1, Ordering::Relaxed);
            }
            Kind::Throttled => {
                self.stats.fail_safe.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// `value` if `validate=` accepts it (or there is none), judged by the freshness
    /// controls.
    #[inline]
    #[allow(clippy::too_many_arguments)] // what a value found is judged by
    pub(crate) fn validated<'py>(
        &self,
        py: Python<'py>,
        r: &Resolved,
        key: &str,
        value: Bound<'py, PyAny>,
        stamp: Stamp,
        call: CallArgs<'_, 'py>,
        judge: Judge,
    ) -> PyResult<Option<Seen<'py>>> {
        if self.validate.is_some() && !self.accepts(py, &value, stamp.created_at, call)? {
            return Ok(None);
        }
        if matches!(judge, Judge::Call) && !r.rules.is_on() {
            return Ok(Some(Seen {
                value,
                kind: Kind::Fresh,
            }));
        }
        Ok(self
            .judged(r, key, &stamp, judge)
            .map(|kind| Seen { value, kind }))
    }

    /// What `validate=` says of a value found.
    #[inline(never)]
    fn accepts<'py>(
        &self,
        py: Python<'py>,
        value: &Bound<'py, PyAny>,
        created_at: f64,
        call: CallArgs<'_, 'py>,
    ) -> PyResult<bool> {
        let Some(validate) = &self.validate else {
            return Ok(true);
        };
        let entry = CacheEntry {
            value: value.clone().unbind(),
            created_at,
            age: (unix_now() - created_at).max(0.0),
        };
        let validate = validate.bind(py);
        let valid = if self.with_args.validate {
            validate.call1((entry, self.args_of(py, call)?))?
        } else {
            validate.call1((entry,))?
        };
        valid.is_truthy()
    }

    /// What a value found is good for, by the freshness controls (or, for a refresh,
    /// whether it is newer than the value that started it); `None`: nothing.
    #[inline(never)]
    fn judged(&self, r: &Resolved, key: &str, stamp: &Stamp, judge: Judge) -> Option<Kind> {
        match judge {
            Judge::NewerThan(seen) => (stamp.created_at > seen).then_some(Kind::Fresh),
            Judge::Call => match r.rules.judge(stamp, unix_now(), crate::process::uniform) {
                Judged::Fresh => Some(Kind::Fresh),
                judged @ (Judged::Early | Judged::Stale) => Some(Kind::Refresh {
                    created_at: stamp.created_at,
                    stale: judged == Judged::Stale,
                }),
                Judged::Fallback if background::throttled(self.id, key) => Some(Kind::Throttled),
                Judged::Fallback => Some(Kind::Fallback),
                Judged::Expired => None,
            },
        }
    }

    /// A fallback served instead of `error` (`stale_if_error`; `None`: a computation
    /// slower than `timeout`): counted, said, and (an error) the key's computation is
    /// not tried again for a second.
    pub(crate) fn served_fallback(&self, py: Python<'_>, key: &str, error: Option<&PyErr>) {
        self.stats.fail_safe.fetch_add(1, Ordering::Relaxed);
        let why = match error {
            Some(e) => {
                background::failed(self.id, key);
                let kind = e
                    .get_type(py)
                    .name()
                    .map_or_else(|_| "?".to_owned(), |n| n.to_string());
                warn::once(
                    py,
                    &format!("fail-safe:{}:{kind}", self.id),
                    &format!(
                        "cachu: {}() raised {kind}; its stale cached value was returned instead (stale_if_error)",
                        self.name
                    ),
                );
                format!("raised {e}")
            }
            None => "ran longer than its timeout".to_owned(),
        };
        warn::log(
            py,
            warn::Level::Debug,
            &format!(
                "cachu: {}() {why}; the stale value of key {key:?} was returned",
                self.name
            ),
        );
    }

    /// Said on the `cachu` logger when a background refresh of `key` raised (the stale
    /// value stays; the function is not tried again for a second). A refresh that was
    /// interrupted (cancelled at the loop's end, `KeyboardInterrupt`) is not a failure.
    pub(crate) fn refresh_failed(&self, py: Python<'_>, key: &str, e: &PyErr) {
        if !Self::reaches_followers(py, e) {
            return;
        }
        background::failed(self.id, key);
        warn::log(
            py,
            warn::Level::Warning,
            &format!(
                "cachu: a background refresh of {}() raised {e}; key {key:?} keeps its stale value",
                self.name
            ),
        );
    }
}
