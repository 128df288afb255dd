//! The call flow of a cached function: the one decision sequence of every call that is
//! not answered by the hit fast path, for sync and async callers alike.
//!
//! It does no I/O and calls no Python (sans-IO): it says what to do next ([`Step`]), the
//! driver does it and tells it what happened ([`Answer`]). The sync driver
//! (`function/sync.rs`) does each step with blocking I/O; the async driver
//! (`function/aio.rs` and `python/cachu/_async.py`) awaits each one. Both thus take the
//! same decisions: when to read, when to take the cross-process lease and when to wait
//! for it, when to join the in-process computation of the key, when a backend failure
//! or a lock timeout is raised, when a result is stored.
//!
//! The sequence, for a backend with cross-process leases (Redis, file):
//! `Lease(read)` → found: hit | the lease is ours: `Join` (to publish to this process's
//! waiters) → `Compute` → `Store(release)` | another caller holds it: `Find` the holder
//! in this process and `Follow` it, else `Pause` and ask again until `lock_timeout`.
//! For the others (memory, null): `Read` → `Join` → leader: `Read` again (another
//! caller may have stored it meanwhile) → `Compute` → `Store`; follower: `Follow`.
//! A backend that fails is a miss (or raises, with `on_backend_error='raise'`); the
//! callers of one key in this process still compute it once, whatever its state.
//! `_overwrite_cache=True` computes and stores, taking the lease if it is free, and
//! returns its own result: it never waits for another caller nor reads their value.
//!
//! Freshness (`fresh.rs`): a stale value (or one due for an early refresh) is a hit
//! that starts a background refresh ([`Step::HitRefresh`]). A refresh is a flow of its
//! own ([`Policy::refresh`]): it never waits, and gives up ([`Step::Skipped`]) when
//! another caller computes the key or has stored a newer value. An expired value still
//! within `stale_if_error` is a fallback: the caller computes, and gets the fallback
//! ([`Step::FailSafe`]) if the computation (or the one it follows) raises, or if it
//! runs longer than `timeout` (the computation goes on, and is stored, elsewhere).

pub mod fresh;

use std::time::{Duration, Instant};

/// The longest pause between two looks at a lease held by another process.
pub const MAX_POLL: Duration = Duration::from_millis(50);
/// The first such pause; each next one doubles, up to [`MAX_POLL`].
pub const FIRST_POLL: Duration = Duration::from_millis(2);

/// The settings of one call.
#[derive(Clone, Copy, Debug)]
#[allow(clippy::struct_excessive_bools)] // independent switches of one call
pub struct Policy {
    /// The backend takes leases that other processes honour.
    pub leases: bool,
    /// `_overwrite_cache=True`: compute and store whatever is cached.
    pub overwrite: bool,
    /// `on_backend_error='raise'`.
    pub raise_backend_errors: bool,
    /// `on_lock_timeout='raise'`.
    pub raise_lock_timeout: bool,
    pub lock_timeout: Duration,
    /// `cache_deadline`: the backend time one call may spend; past it, the call goes
    /// on without the cache (waits for other callers do not count: `lock_timeout`
    /// bounds them).
    pub cache_deadline: Option<Duration>,
    /// A background refresh: it never waits for another caller, and stops when
    /// another computes the key or has stored a newer value.
    pub refresh: bool,
    /// `timeout`: how long a caller with a fallback waits for a computation.
    pub timeout: Option<Duration>,
}

/// What the driver does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Look the key up: [`Answer::Found`], [`Answer::Missing`] or [`Answer::Failed`].
    Read,
    /// One round trip: the value (when `read`), else the lease on computing it.
    /// [`Answer::Found`], [`Answer::Missing`] (found, but refused by `validate=` or
    /// undecodable), [`Answer::Acquired`], [`Answer::Held`] or [`Answer::Failed`].
    Lease { read: bool },
    /// Join this process's computation of the key: [`Answer::Leader`],
    /// [`Answer::Follower`] or [`Answer::Reentrant`].
    Join,
    /// Look for this process's computation of the key without joining it:
    /// [`Answer::Follower`], [`Answer::Reentrant`] or [`Answer::NoFlight`].
    Find,
    /// Wait at most this long for the computation followed: [`Answer::Followed`],
    /// [`Answer::Abandoned`] or [`Answer::TimedOut`].
    Follow(Duration),
    /// Sleep this long (the lease is held by another process): [`Answer::Slept`].
    Pause(Duration),
    /// Run the function: [`Answer::Computed`] or [`Answer::Raised`]. A leader
    /// publishes the outcome to its followers as soon as it has it.
    Compute,
    /// Store the result (as `cache_if` and the TTL say), releasing the lease if
    /// `release`: [`Answer::Stored`] or [`Answer::Failed`].
    Store { release: bool },
    /// Release the lease, storing nothing (the computation raised):
    /// [`Answer::Stored`] or [`Answer::Failed`].
    Release,
    /// Return the value found (a hit).
    Hit,
    /// Return the value found (stale, or due for an early refresh) and start one
    /// background refresh of the key.
    HitRefresh,
    /// Return the fallback (the expired value found) instead of the failure or the
    /// wait.
    FailSafe,
    /// A background refresh ends: another caller computes the key, or has stored it.
    Skipped,
    /// Return the outcome of the computation followed (a hit, or its exception).
    Followed,
    /// Return the result computed here.
    Computed,
    /// Raise what the function raised.
    Reraise,
    /// Raise the backend's error.
    RaiseBackend,
    /// Raise `CacheLockTimeout`.
    RaiseLockTimeout,
}

impl Step {
    /// Whether the step is backend I/O (what `cache_deadline` counts).
    pub fn is_io(self) -> bool {
        matches!(
            self,
            Step::Read | Step::Lease { .. } | Step::Store { .. } | Step::Release
        )
    }

    /// Whether the call ends with this step.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Step::Hit
                | Step::HitRefresh
                | Step::FailSafe
                | Step::Skipped
                | Step::Followed
                | Step::Computed
                | Step::Reraise
                | Step::RaiseBackend
                | Step::RaiseLockTimeout
        )
    }
}

/// What a step found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A value that `validate=` accepts (in a refresh: one newer than the value
    /// that started it).
    Found,
    /// A value to serve now and refresh in the background.
    Stale,
    /// An expired value, the fallback of a computation that fails or is slow.
    Fallback,
    /// No usable value.
    Missing,
    /// The lease is ours.
    Acquired,
    /// Another caller holds the lease.
    Held,
    /// The backend failed (the driver keeps the error, for [`Step::RaiseBackend`] or a
    /// warning).
    Failed,
    Leader,
    Follower,
    /// This thread (or task) is the one computing the key, further up its stack.
    Reentrant,
    NoFlight,
    /// The computation followed ended with a value.
    Followed,
    /// The computation followed raised.
    FollowedError,
    /// The computation followed went away without an outcome (interrupted, cancelled).
    Abandoned,
    TimedOut,
    Slept,
    Computed,
    /// The function (or `cache_if`, or the dynamic TTL) raised an exception.
    Raised,
    /// The computation was interrupted (`KeyboardInterrupt`, `SystemExit`, a
    /// cancellation): never answered with a fallback.
    Interrupted,
    Stored,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Reading,
    /// The second read of a leader: another caller may have stored the value between
    /// the first read and the join.
    Rechecking,
    Leasing,
    Joining,
    Finding,
    Following,
    Pausing,
    Computing,
    Storing,
    Releasing,
    Done,
}

/// The decisions of one call.
#[derive(Debug)]
#[allow(clippy::struct_excessive_bools)] // independent facts of one call
pub struct Flow {
    policy: Policy,
    state: State,
    /// `lock_timeout` after the first wait's start: a call that never waits never
    /// reads the clock.
    deadline: Option<Instant>,
    pause: Duration,
    /// The lease is ours: released whatever happens.
    holds_lease: bool,
    /// The backend failed: the result is not stored.
    broken: bool,
    /// The step that the driver is doing (for [`Flow::step`]).
    step: Step,
    /// Backend time spent so far (counted only with a `cache_deadline`).
    spent: Duration,
    /// What follows a `Release`: the function's exception, or (the deadline passed
    /// before the store) the result.
    after_release: Step,
    /// `lock_timeout` passed while another caller computed: this one computes.
    gave_up: bool,
    /// An expired value within `stale_if_error` was found: the call falls back to it.
    fallback: bool,
    /// When a caller with a fallback stops waiting for a computation (`timeout`).
    soft_deadline: Option<Instant>,
}

impl Flow {
    /// A call that starts at the backend.
    pub fn start(policy: Policy) -> Flow {
        let mut flow = Flow::new(policy);
        flow.step = if policy.leases {
            flow.go(
                State::Leasing,
                Step::Lease {
                    read: !policy.overwrite,
                },
            )
        } else if policy.overwrite || policy.refresh {
            flow.go(State::Joining, Step::Join)
        } else {
            flow.go(State::Reading, Step::Read)
        };
        flow
    }

    /// A call whose first read (the hit fast path) found nothing: it joins.
    pub fn missed(policy: Policy) -> Flow {
        let mut flow = Flow::new(policy);
        flow.step = flow.go(State::Joining, Step::Join);
        flow
    }

    fn new(policy: Policy) -> Flow {
        Flow {
            policy,
            state: State::Done,
            deadline: None,
            pause: FIRST_POLL,
            holds_lease: false,
            broken: false,
            step: Step::Read,
            spent: Duration::ZERO,
            after_release: Step::Reraise,
            gave_up: false,
            fallback: false,
            soft_deadline: None,
        }
    }

    /// How long the computation may still run before the caller gets the fallback
    /// (`timeout`, with a fallback found); `None`: the caller waits for it.
    pub fn soft_timeout(&self) -> Option<Duration> {
        self.soft_deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    fn soft_timed_out(&self) -> bool {
        self.soft_timeout().is_some_and(|left| left.is_zero())
    }

    /// `wait`, cut to the soft timeout's.
    fn capped(&self, wait: Duration) -> Duration {
        self.soft_timeout().map_or(wait, |left| left.min(wait))
    }

    /// Whether the call computes because it waited `lock_timeout` for another caller.
    pub fn gave_up_waiting(&self) -> bool {
        self.gave_up
    }

    /// Whether the driver counts the time of backend steps ([`Flow::charge`]).
    pub fn timed(&self) -> bool {
        self.policy.cache_deadline.is_some()
    }

    /// Adds the time a backend step took.
    pub fn charge(&mut self, took: Duration) {
        self.spent += took;
    }

    fn deadline_passed(&self) -> bool {
        self.policy.cache_deadline.is_some_and(|d| self.spent >= d)
    }

    /// Past `cache_deadline`, the backend steps left are skipped: no more reads (the
    /// call computes, once per key in this process), no store; a lease held is still
    /// released.
    fn without_cache(&mut self, step: Step) -> Step {
        match step {
            Step::Read | Step::Lease { .. } => {
                self.broken = true;
                if self.state == State::Rechecking {
                    self.compute()
                } else {
                    self.go(State::Joining, Step::Join)
                }
            }
            Step::Store { release: true } => {
                self.after_release = Step::Computed;
                self.go(State::Releasing, Step::Release)
            }
            Step::Store { release: false } => self.end(Step::Computed),
            other => other,
        }
    }

    /// The step to do now.
    pub fn step(&self) -> Step {
        self.step
    }

    /// Whether the lease is ours (a driver that gives up releases it).
    pub fn holds_lease(&self) -> bool {
        self.holds_lease
    }

    fn go(&mut self, state: State, step: Step) -> Step {
        self.state = state;
        step
    }

    fn end(&mut self, step: Step) -> Step {
        self.state = State::Done;
        step
    }

    fn remaining(&mut self) -> Duration {
        let now = Instant::now();
        let lock_timeout = self.policy.lock_timeout;
        self.deadline
            .get_or_insert_with(|| now + lock_timeout)
            .saturating_duration_since(now)
    }

    /// Told what the current step found, the step to do next.
    pub fn answer(&mut self, answer: Answer) -> Step {
        let mut step = self.decide(answer);
        if step.is_io() && self.deadline_passed() {
            step = self.without_cache(step);
        }
        self.step = step;
        step
    }

    // One arm per transition: the table reads as the flow's specification.
    #[allow(clippy::match_same_arms, clippy::too_many_lines)]
    fn decide(&mut self, answer: Answer) -> Step {
        use Answer as A;
        if self.policy.refresh {
            if let Some(step) = self.refreshing(answer) {
                return step;
            }
        }
        match (self.state, answer) {
            (State::Reading | State::Rechecking | State::Leasing, A::Found) => self.end(Step::Hit),
            (State::Reading | State::Rechecking | State::Leasing, A::Stale) => {
                self.end(Step::HitRefresh)
            }
            (State::Reading | State::Rechecking | State::Leasing, A::Fallback) => {
                self.fallback = true;
                self.soft_deadline = self.policy.timeout.map(|t| Instant::now() + t);
                match self.state {
                    State::Reading => self.go(State::Joining, Step::Join),
                    State::Leasing => self.lease(false),
                    _ => self.compute(),
                }
            }
            (State::Reading, A::Missing) => self.go(State::Joining, Step::Join),
            (State::Rechecking, A::Missing) => self.compute(),
            (State::Reading | State::Rechecking | State::Leasing, A::Failed) => {
                if self.policy.raise_backend_errors {
                    return self.end(Step::RaiseBackend);
                }
                self.broken = true;
                if self.state == State::Rechecking {
                    self.compute()
                } else {
                    self.go(State::Joining, Step::Join)
                }
            }
            // Found, but refused by `validate=` or undecodable: ask for the lease alone.
            (State::Leasing, A::Missing) => self.lease(false),
            (State::Leasing, A::Acquired) => {
                self.holds_lease = true;
                self.go(State::Joining, Step::Join)
            }
            // An overwrite returns what it computes itself: it neither waits for
            // another caller's computation nor reads what another stored meanwhile.
            (State::Leasing, A::Held) if self.policy.overwrite => self.compute(),
            (State::Joining | State::Finding, A::Follower) if self.policy.overwrite => {
                self.compute()
            }
            (State::Leasing, A::Held) => {
                if self.remaining().is_zero() {
                    return self.timed_out();
                }
                if self.soft_timed_out() {
                    return self.end(Step::FailSafe);
                }
                self.go(State::Finding, Step::Find)
            }
            (State::Joining, A::Leader) => {
                let reread = !self.policy.leases && !self.policy.overwrite && !self.broken;
                if reread {
                    self.go(State::Rechecking, Step::Read)
                } else {
                    self.compute()
                }
            }
            // Holding the lease, this caller computes whoever else runs here (the
            // lease of a previous holder in this process expired).
            (State::Joining, A::Follower) if self.holds_lease => self.compute(),
            (State::Joining | State::Finding, A::Follower) => {
                let remaining = self.remaining();
                let wait = self.capped(remaining);
                self.go(State::Following, Step::Follow(wait))
            }
            (State::Joining | State::Finding, A::Reentrant) => self.compute(),
            (State::Finding, A::NoFlight) => {
                let remaining = self.remaining();
                let nap = self.capped(self.pause.min(remaining));
                self.pause = (self.pause * 2).min(MAX_POLL);
                self.go(State::Pausing, Step::Pause(nap))
            }
            (State::Following, A::Followed) => self.end(Step::Followed),
            (State::Following, A::FollowedError) if self.fallback => self.end(Step::FailSafe),
            (State::Following, A::FollowedError) => self.end(Step::Followed),
            // The computation followed was interrupted: start again.
            (State::Following, A::Abandoned) => self.restart(),
            (State::Following, A::TimedOut) if self.soft_timed_out() => self.end(Step::FailSafe),
            (State::Following, A::TimedOut) => {
                if self.policy.leases && !self.broken && !self.remaining().is_zero() {
                    // A spurious early wake: ask the backend again.
                    return self.lease(true);
                }
                self.timed_out()
            }
            (State::Pausing, A::Slept) => self.lease(true),
            (State::Computing, A::Computed) => {
                if self.broken {
                    self.end(Step::Computed)
                } else {
                    self.go(
                        State::Storing,
                        Step::Store {
                            release: self.holds_lease,
                        },
                    )
                }
            }
            // The function, or `cache_if` / the dynamic TTL after it, raised.
            (State::Computing | State::Storing, A::Raised | A::Interrupted) => {
                if answer == A::Raised && self.fallback {
                    self.after_release = Step::FailSafe;
                }
                if self.holds_lease && !self.broken {
                    self.go(State::Releasing, Step::Release)
                } else {
                    self.end(self.after_release)
                }
            }
            (State::Storing, A::Stored) => {
                self.holds_lease = false;
                self.end(Step::Computed)
            }
            (State::Storing, A::Failed) => {
                self.holds_lease = false;
                if self.policy.raise_backend_errors {
                    self.end(Step::RaiseBackend)
                } else {
                    self.end(Step::Computed)
                }
            }
            // A lease that cannot be released expires by itself: the caller gets the
            // function's own exception.
            (State::Releasing, A::Stored | A::Failed) => {
                self.holds_lease = false;
                self.end(self.after_release)
            }
            (state, answer) => unreachable!("the call flow has no answer {answer:?} in {state:?}"),
        }
    }

    /// The transitions of a background refresh that differ from a call's: it never
    /// waits, and has nothing to do once another caller computes or has stored the key.
    fn refreshing(&mut self, answer: Answer) -> Option<Step> {
        use Answer as A;
        Some(match (self.state, answer) {
            (State::Leasing | State::Rechecking, A::Found)
            | (State::Leasing, A::Held)
            | (State::Joining, A::Follower | A::Reentrant)
            | (State::Reading | State::Rechecking | State::Leasing, A::Failed) => self.skip(),
            _ => return None,
        })
    }

    /// A refresh ends with nothing done, releasing the lease if it holds it.
    fn skip(&mut self) -> Step {
        if self.holds_lease {
            self.after_release = Step::Skipped;
            self.go(State::Releasing, Step::Release)
        } else {
            self.end(Step::Skipped)
        }
    }

    fn lease(&mut self, read: bool) -> Step {
        self.go(State::Leasing, Step::Lease { read })
    }

    fn compute(&mut self) -> Step {
        self.go(State::Computing, Step::Compute)
    }

    fn restart(&mut self) -> Step {
        if self.policy.leases && !self.broken {
            self.lease(!self.policy.overwrite)
        } else if self.policy.overwrite || self.broken {
            self.go(State::Joining, Step::Join)
        } else {
            self.go(State::Reading, Step::Read)
        }
    }

    /// `lock_timeout` has passed while another caller computes: the fallback if there
    /// is one; else raise, or compute here (and store: the value is as good as the
    /// other's).
    fn timed_out(&mut self) -> Step {
        self.gave_up = true;
        if self.fallback {
            self.end(Step::FailSafe)
        } else if self.policy.raise_lock_timeout {
            self.end(Step::RaiseLockTimeout)
        } else {
            self.compute()
        }
    }
}

#[cfg(test)]
mod tests;
