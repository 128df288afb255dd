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

use std::time::{Duration, Instant};

/// The longest pause between two looks at a lease held by another process.
pub const MAX_POLL: Duration = Duration::from_millis(50);
/// The first such pause; each next one doubles, up to [`MAX_POLL`].
pub const FIRST_POLL: Duration = Duration::from_millis(2);

/// The settings of one call.
#[derive(Clone, Copy, Debug)]
#[allow(clippy::struct_excessive_bools)] // four independent switches of one call
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
    /// A value that `validate=` accepts.
    Found,
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
    /// The computation followed ended, with a value or an exception.
    Followed,
    /// The computation followed went away without an outcome (interrupted, cancelled).
    Abandoned,
    TimedOut,
    Slept,
    Computed,
    Raised,
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
        } else if policy.overwrite {
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
        }
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
    #[allow(clippy::match_same_arms)]
    fn decide(&mut self, answer: Answer) -> Step {
        use Answer as A;
        match (self.state, answer) {
            (State::Reading | State::Rechecking | State::Leasing, A::Found) => self.end(Step::Hit),
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
                let wait = self.remaining();
                self.go(State::Following, Step::Follow(wait))
            }
            (State::Joining | State::Finding, A::Reentrant) => self.compute(),
            (State::Finding, A::NoFlight) => {
                let nap = self.pause.min(self.remaining());
                self.pause = (self.pause * 2).min(MAX_POLL);
                self.go(State::Pausing, Step::Pause(nap))
            }
            (State::Following, A::Followed) => self.end(Step::Followed),
            // The computation followed was interrupted: start again.
            (State::Following, A::Abandoned) => self.restart(),
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
            (State::Computing | State::Storing, A::Raised) => {
                if self.holds_lease && !self.broken {
                    self.go(State::Releasing, Step::Release)
                } else {
                    self.end(Step::Reraise)
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

    /// `lock_timeout` has passed while another caller computes: raise, or compute here
    /// (and store: the value is as good as the other's).
    fn timed_out(&mut self) -> Step {
        self.gave_up = true;
        if self.policy.raise_lock_timeout {
            self.end(Step::RaiseLockTimeout)
        } else {
            self.compute()
        }
    }
}

#[cfg(test)]
mod tests;
