use super::*;

fn policy(leases: bool) -> Policy {
    Policy {
        leases,
        overwrite: false,
        raise_backend_errors: false,
        raise_lock_timeout: false,
        lock_timeout: Duration::from_secs(10),
        cache_deadline: None,
        refresh: false,
        timeout: None,
    }
}

fn refresh(leases: bool) -> Policy {
    Policy {
        refresh: true,
        ..policy(leases)
    }
}

/// Feeds `answers` in turn; returns every step the flow asked for, the first included.
fn run(mut flow: Flow, answers: &[Answer]) -> Vec<Step> {
    let mut steps = vec![flow.step()];
    for a in answers {
        assert!(
            !flow.step().is_final(),
            "asked {a:?} after {:?}",
            flow.step()
        );
        steps.push(flow.answer(*a));
    }
    steps
}

#[test]
fn a_leased_hit_is_one_round_trip() {
    let steps = run(Flow::start(policy(true)), &[Answer::Found]);
    assert_eq!(steps, [Step::Lease { read: true }, Step::Hit]);
}

#[test]
fn a_leased_miss_computes_stores_and_releases() {
    let steps = run(
        Flow::start(policy(true)),
        &[
            Answer::Acquired,
            Answer::Leader,
            Answer::Computed,
            Answer::Stored,
        ],
    );
    assert_eq!(
        steps,
        [
            Step::Lease { read: true },
            Step::Join,
            Step::Compute,
            Step::Store { release: true },
            Step::Computed
        ]
    );
}

#[test]
fn a_value_refused_by_validate_asks_for_the_lease_alone() {
    let steps = run(Flow::start(policy(true)), &[Answer::Missing]);
    assert_eq!(steps[1], Step::Lease { read: false });
}

#[test]
fn a_lease_held_elsewhere_is_polled_with_growing_pauses() {
    let mut flow = Flow::start(policy(true));
    let mut pauses = Vec::new();
    for _ in 0..6 {
        assert_eq!(flow.answer(Answer::Held), Step::Find);
        match flow.answer(Answer::NoFlight) {
            Step::Pause(d) => pauses.push(d),
            other => panic!("expected a pause, got {other:?}"),
        }
        assert_eq!(flow.answer(Answer::Slept), Step::Lease { read: true });
    }
    assert_eq!(pauses[0], FIRST_POLL);
    assert!(pauses.windows(2).all(|w| w[1] >= w[0]));
    assert_eq!(*pauses.last().unwrap(), MAX_POLL);
    assert_eq!(flow.answer(Answer::Found), Step::Hit);
}

#[test]
fn a_lease_held_by_a_thread_of_this_process_is_followed() {
    let steps = run(Flow::start(policy(true)), &[Answer::Held, Answer::Follower]);
    assert!(matches!(steps[2], Step::Follow(d) if d <= Duration::from_secs(10)));
    let mut flow = Flow::start(policy(true));
    flow.answer(Answer::Held);
    flow.answer(Answer::Follower);
    assert_eq!(flow.answer(Answer::Followed), Step::Followed);
}

#[test]
fn a_held_lease_past_the_lock_timeout_computes_or_raises() {
    let mut p = policy(true);
    p.lock_timeout = Duration::ZERO;
    let steps = run(
        Flow::start(p),
        &[Answer::Held, Answer::Computed, Answer::Stored],
    );
    assert_eq!(
        steps[1..],
        [
            Step::Compute,
            Step::Store { release: false },
            Step::Computed
        ]
    );
    p.raise_lock_timeout = true;
    let steps = run(Flow::start(p), &[Answer::Held]);
    assert_eq!(steps[1], Step::RaiseLockTimeout);
}

#[test]
fn a_failed_backend_is_a_miss_computed_once_per_key_and_not_stored() {
    let steps = run(
        Flow::start(policy(true)),
        &[Answer::Failed, Answer::Leader, Answer::Computed],
    );
    assert_eq!(steps[1..], [Step::Join, Step::Compute, Step::Computed]);
    // The other callers of this process wait for the one computing.
    let steps = run(
        Flow::start(policy(true)),
        &[Answer::Failed, Answer::Follower, Answer::Followed],
    );
    assert!(matches!(steps[2], Step::Follow(_)));
    assert_eq!(steps[3], Step::Followed);
}

#[test]
fn a_failed_backend_raises_when_configured_to() {
    let mut p = policy(true);
    p.raise_backend_errors = true;
    assert_eq!(
        run(Flow::start(p), &[Answer::Failed])[1],
        Step::RaiseBackend
    );
    let steps = run(
        Flow::start(p),
        &[
            Answer::Acquired,
            Answer::Leader,
            Answer::Computed,
            Answer::Failed,
        ],
    );
    assert_eq!(*steps.last().unwrap(), Step::RaiseBackend);
    p.raise_backend_errors = false;
    let steps = run(
        Flow::start(p),
        &[
            Answer::Acquired,
            Answer::Leader,
            Answer::Computed,
            Answer::Failed,
        ],
    );
    assert_eq!(*steps.last().unwrap(), Step::Computed);
}

#[test]
fn a_raising_function_releases_the_lease_then_reraises() {
    let steps = run(
        Flow::start(policy(true)),
        &[
            Answer::Acquired,
            Answer::Leader,
            Answer::Raised,
            Answer::Failed,
        ],
    );
    assert_eq!(steps[3..], [Step::Release, Step::Reraise]);
    let steps = run(
        Flow::start(policy(false)),
        &[
            Answer::Missing,
            Answer::Leader,
            Answer::Missing,
            Answer::Raised,
        ],
    );
    assert_eq!(*steps.last().unwrap(), Step::Reraise);
}

#[test]
fn a_local_miss_reads_again_as_leader_before_computing() {
    let steps = run(
        Flow::start(policy(false)),
        &[
            Answer::Missing,
            Answer::Leader,
            Answer::Missing,
            Answer::Computed,
            Answer::Stored,
        ],
    );
    assert_eq!(
        steps,
        [
            Step::Read,
            Step::Join,
            Step::Read,
            Step::Compute,
            Step::Store { release: false },
            Step::Computed
        ]
    );
    let steps = run(
        Flow::missed(policy(false)),
        &[Answer::Leader, Answer::Found],
    );
    assert_eq!(steps, [Step::Join, Step::Read, Step::Hit]);
}

#[test]
fn an_overwrite_never_reads() {
    let mut p = policy(false);
    p.overwrite = true;
    let steps = run(Flow::start(p), &[Answer::Leader, Answer::Computed]);
    assert_eq!(
        steps,
        [Step::Join, Step::Compute, Step::Store { release: false }]
    );
    p.leases = true;
    assert_eq!(Flow::start(p).step(), Step::Lease { read: false });
}

#[test]
fn an_overwrite_computes_itself_whoever_else_computes() {
    let mut p = policy(true);
    p.overwrite = true;
    let steps = run(
        Flow::start(p),
        &[Answer::Held, Answer::Computed, Answer::Stored],
    );
    assert_eq!(
        steps[1..],
        [
            Step::Compute,
            Step::Store { release: false },
            Step::Computed
        ]
    );
    p.leases = false;
    let steps = run(Flow::start(p), &[Answer::Follower, Answer::Computed]);
    assert_eq!(steps[1..], [Step::Compute, Step::Store { release: false }]);
    let steps = run(Flow::start(p), &[Answer::Leader, Answer::Computed]);
    assert_eq!(steps[1..], [Step::Compute, Step::Store { release: false }]);
}

#[test]
fn an_abandoned_computation_is_started_again() {
    let steps = run(
        Flow::start(policy(false)),
        &[Answer::Missing, Answer::Follower, Answer::Abandoned],
    );
    assert_eq!(steps[3], Step::Read);
    let steps = run(
        Flow::start(policy(true)),
        &[Answer::Held, Answer::Follower, Answer::Abandoned],
    );
    assert_eq!(steps[3], Step::Lease { read: true });
}

#[test]
fn a_follower_past_the_lock_timeout_computes_or_raises() {
    let mut p = policy(false);
    let steps = run(
        Flow::start(p),
        &[Answer::Missing, Answer::Follower, Answer::TimedOut],
    );
    assert_eq!(steps[3], Step::Compute);
    p.raise_lock_timeout = true;
    let steps = run(
        Flow::start(p),
        &[Answer::Missing, Answer::Follower, Answer::TimedOut],
    );
    assert_eq!(steps[3], Step::RaiseLockTimeout);
}

#[test]
fn a_reentrant_call_computes_instead_of_waiting_for_itself() {
    let steps = run(
        Flow::start(policy(false)),
        &[Answer::Missing, Answer::Reentrant],
    );
    assert_eq!(steps[2], Step::Compute);
    let steps = run(
        Flow::start(policy(true)),
        &[Answer::Held, Answer::Reentrant],
    );
    assert_eq!(steps[2], Step::Compute);
}

#[test]
fn a_raising_cache_if_releases_the_lease_then_reraises() {
    let steps = run(
        Flow::start(policy(true)),
        &[
            Answer::Acquired,
            Answer::Leader,
            Answer::Computed,
            Answer::Raised,
            Answer::Stored,
        ],
    );
    assert_eq!(steps[4..], [Step::Release, Step::Reraise]);
}

#[test]
fn past_the_cache_deadline_the_call_goes_on_without_the_cache() {
    let mut p = policy(true);
    p.cache_deadline = Some(Duration::from_millis(100));
    let mut flow = Flow::start(p);
    assert!(flow.timed());
    flow.charge(Duration::from_millis(150)); // the first round trip was slow
    assert_eq!(flow.answer(Answer::Held), Step::Find);
    assert_eq!(flow.answer(Answer::NoFlight), Step::Pause(FIRST_POLL));
    // The next look at the backend is skipped: compute, not stored.
    assert_eq!(flow.answer(Answer::Slept), Step::Join);
    assert_eq!(flow.answer(Answer::Leader), Step::Compute);
    assert_eq!(flow.answer(Answer::Computed), Step::Computed);
    // A lease held is still released, and the result returned.
    let mut flow = Flow::start(p);
    flow.answer(Answer::Acquired);
    flow.answer(Answer::Leader);
    flow.charge(Duration::from_secs(1));
    assert_eq!(flow.answer(Answer::Computed), Step::Release);
    assert_eq!(flow.answer(Answer::Stored), Step::Computed);
}

#[test]
fn a_stale_value_is_a_hit_that_starts_a_refresh() {
    for leases in [true, false] {
        let steps = run(Flow::start(policy(leases)), &[Answer::Stale]);
        assert_eq!(steps[1], Step::HitRefresh);
    }
}

#[test]
fn a_leased_refresh_computes_once_and_skips_when_another_has_it() {
    let steps = run(
        Flow::start(refresh(true)),
        &[
            Answer::Missing, // the value seen is still there
            Answer::Acquired,
            Answer::Leader,
            Answer::Computed,
            Answer::Stored,
        ],
    );
    assert_eq!(
        steps,
        [
            Step::Lease { read: true },
            Step::Lease { read: false },
            Step::Join,
            Step::Compute,
            Step::Store { release: true },
            Step::Computed
        ]
    );
    // Another process refreshes (holds the lease), or already has (a newer value).
    let held = run(Flow::start(refresh(true)), &[Answer::Missing, Answer::Held]);
    assert_eq!(held.last(), Some(&Step::Skipped));
    let newer = run(Flow::start(refresh(true)), &[Answer::Found]);
    assert_eq!(newer.last(), Some(&Step::Skipped));
    // Another caller here computes it: the lease is given back.
    let here = run(
        Flow::start(refresh(true)),
        &[
            Answer::Missing,
            Answer::Acquired,
            Answer::Follower,
            Answer::Stored,
        ],
    );
    assert_eq!(&here[3..], [Step::Release, Step::Skipped]);
}

#[test]
fn a_local_refresh_rechecks_after_joining() {
    let steps = run(
        Flow::start(refresh(false)),
        &[
            Answer::Leader,
            Answer::Missing,
            Answer::Computed,
            Answer::Stored,
        ],
    );
    assert_eq!(
        steps,
        [
            Step::Join,
            Step::Read,
            Step::Compute,
            Step::Store { release: false },
            Step::Computed
        ]
    );
    let newer = run(
        Flow::start(refresh(false)),
        &[Answer::Leader, Answer::Found],
    );
    assert_eq!(newer.last(), Some(&Step::Skipped));
    let follower = run(Flow::start(refresh(false)), &[Answer::Follower]);
    assert_eq!(follower.last(), Some(&Step::Skipped));
}

#[test]
fn a_refresh_that_raises_releases_the_lease_and_ends_raising() {
    let steps = run(
        Flow::start(refresh(true)),
        &[
            Answer::Missing,
            Answer::Acquired,
            Answer::Leader,
            Answer::Raised,
            Answer::Stored,
        ],
    );
    assert_eq!(&steps[4..], [Step::Release, Step::Reraise]);
}

#[test]
fn a_failure_with_a_fallback_is_fail_safe() {
    // Leased: the lease is released first.
    let steps = run(
        Flow::start(policy(true)),
        &[
            Answer::Fallback,
            Answer::Acquired,
            Answer::Leader,
            Answer::Raised,
            Answer::Stored,
        ],
    );
    assert_eq!(
        steps,
        [
            Step::Lease { read: true },
            Step::Lease { read: false },
            Step::Join,
            Step::Compute,
            Step::Release,
            Step::FailSafe
        ]
    );
    // Memory: the leader, and a follower of a leader that raised.
    let leader = run(
        Flow::start(policy(false)),
        &[
            Answer::Fallback,
            Answer::Leader,
            Answer::Fallback,
            Answer::Raised,
        ],
    );
    assert_eq!(leader.last(), Some(&Step::FailSafe));
    let follower = run(
        Flow::start(policy(false)),
        &[Answer::Fallback, Answer::Follower, Answer::FollowedError],
    );
    assert_eq!(follower.last(), Some(&Step::FailSafe));
    // No fallback: the exception; an interruption is never answered with a fallback.
    let none = run(
        Flow::start(policy(false)),
        &[
            Answer::Missing,
            Answer::Leader,
            Answer::Missing,
            Answer::Raised,
        ],
    );
    assert_eq!(none.last(), Some(&Step::Reraise));
    let interrupted = run(
        Flow::start(policy(false)),
        &[
            Answer::Fallback,
            Answer::Leader,
            Answer::Fallback,
            Answer::Interrupted,
        ],
    );
    assert_eq!(interrupted.last(), Some(&Step::Reraise));
}

#[test]
fn a_soft_timeout_caps_waits_and_ends_them_with_the_fallback() {
    let p = Policy {
        timeout: Some(Duration::from_millis(30)),
        ..policy(false)
    };
    let mut flow = Flow::start(p);
    assert_eq!(flow.answer(Answer::Fallback), Step::Join);
    let Step::Follow(wait) = flow.answer(Answer::Follower) else {
        panic!("expected a wait")
    };
    assert!(wait <= Duration::from_millis(30));
    std::thread::sleep(Duration::from_millis(35));
    assert_eq!(flow.answer(Answer::TimedOut), Step::FailSafe);
    // Without a fallback, `timeout` does not apply.
    let mut plain = Flow::start(p);
    assert_eq!(plain.answer(Answer::Missing), Step::Join);
    assert!(plain.soft_timeout().is_none());
    assert_eq!(
        plain.answer(Answer::Follower),
        Step::Follow(Duration::from_secs(10))
    );
    // The leader computes with the time left.
    let mut leader = Flow::start(p);
    leader.answer(Answer::Fallback);
    assert_eq!(leader.answer(Answer::Leader), Step::Read);
    assert_eq!(leader.answer(Answer::Fallback), Step::Compute);
    assert!(leader.soft_timeout().is_some());
}
