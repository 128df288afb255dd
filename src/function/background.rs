//! Work a call leaves behind: background refreshes and computations that outlive a
//! soft timeout.
//!
//! - [`Pool`]: a few threads, made as work arrives (never one per call), that run sync
//!   functions' refreshes and slow computations. A job waits in a bounded queue; a
//!   refresh that finds the queue full is dropped (the stale value stays, and a later
//!   call asks again). The threads never keep the process alive: at exit, work pending
//!   is dropped. A child of `fork()` starts with no pool and no pending work.
//! - [`Refreshing`]: the keys being refreshed, so that one key has one refresh at a
//!   time in this process whatever its callers (threads and tasks alike).
//! - [`throttled`] / [`failed`]: a key whose computation just failed is not computed
//!   again for [`RETRY_AFTER`] while its stale value is served (a fail-safe throttle).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::process::ForkLocal;

/// The most threads the pool makes.
const THREADS: usize = 8;
/// The most jobs waiting.
const QUEUE: usize = 4096;
/// How long a key whose computation failed is served its stale value before the
/// function is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    threads: usize,
    idle: usize,
}

/// The threads of background work.
#[derive(Default)]
pub struct Pool {
    queue: Mutex<Queue>,
    ready: Condvar,
}

static POOL: ForkLocal<Arc<Pool>> = ForkLocal::new();

/// Runs `job` on a pool thread; `false` (and `job` dropped) when the queue is full.
pub fn submit(job: impl FnOnce() + Send + 'static) -> bool {
    let pool = POOL
        .get_or_try_init(|| Ok::<_, ()>(Arc::default()))
        .unwrap_or_default();
    pool.push(Box::new(job))
}

impl Pool {
    fn push(self: &Arc<Self>, job: Job) -> bool {
        let mut q = self.queue.lock();
        if q.jobs.len() >= QUEUE {
            return false;
        }
        q.jobs.push_back(job);
        let grow = q.idle < q.jobs.len() && q.threads < THREADS;
        if grow {
            let pool = self.clone();
            let spawned = std::thread::Builder::new()
                .name("cachu-background".to_owned())
                .spawn(move || pool.work());
            if spawned.is_ok() {
                q.threads += 1;
            }
        }
        drop(q);
        self.ready.notify_one();
        true
    }

    fn work(&self) {
        loop {
            let job = {
                let mut q = self.queue.lock();
                loop {
                    if let Some(job) = q.jobs.pop_front() {
                        break job;
                    }
                    q.idle += 1;
                    self.ready.wait(&mut q);
                    q.idle -= 1;
                }
            };
            job();
        }
    }
}

/// A key of a decorated function: its id and the key.
type FunctionKey = (u64, String);

static REFRESHING: ForkLocal<Arc<Mutex<HashSet<FunctionKey>>>> = ForkLocal::new();

fn refreshing() -> Arc<Mutex<HashSet<FunctionKey>>> {
    REFRESHING
        .get_or_try_init(|| Ok::<_, ()>(Arc::default()))
        .unwrap_or_default()
}

/// A refresh of one key in progress in this process; dropping it ends it.
pub struct Refreshing {
    set: Arc<Mutex<HashSet<FunctionKey>>>,
    key: FunctionKey,
}

impl Refreshing {
    /// The refresh of `key` of function `id`, unless one is in progress (or the key's
    /// computation failed a moment ago).
    pub fn start(id: u64, key: &str) -> Option<Refreshing> {
        if throttled(id, key) {
            return None;
        }
        let set = refreshing();
        let key = (id, key.to_owned());
        if !set.lock().insert(key.clone()) {
            return None;
        }
        Some(Refreshing { set, key })
    }
}

impl Drop for Refreshing {
    fn drop(&mut self) {
        self.set.lock().remove(&self.key);
    }
}

static FAILED: ForkLocal<Arc<Mutex<HashMap<FunctionKey, Instant>>>> = ForkLocal::new();

fn failures() -> Arc<Mutex<HashMap<FunctionKey, Instant>>> {
    FAILED
        .get_or_try_init(|| Ok::<_, ()>(Arc::default()))
        .unwrap_or_default()
}

/// Records that the computation of `key` failed while a stale value stands in for it.
pub fn failed(id: u64, key: &str) {
    let now = Instant::now();
    let map = failures();
    let mut map = map.lock();
    if map.len() >= 1024 {
        map.retain(|_, until| *until > now);
    }
    map.insert((id, key.to_owned()), now + RETRY_AFTER);
}

/// Whether the computation of `key` failed less than [`RETRY_AFTER`] ago.
pub fn throttled(id: u64, key: &str) -> bool {
    let map = failures();
    let mut map = map.lock();
    if map.is_empty() {
        return false;
    }
    let k = (id, key.to_owned());
    match map.get(&k) {
        Some(until) if *until > Instant::now() => true,
        Some(_) => {
            map.remove(&k);
            false
        }
        None => false,
    }
}

/// A computation handed to a pool thread, that its caller waits for at most until a
/// deadline: then the rest of the call's work (storing the result) goes with it.
pub struct Handoff<T> {
    state: Mutex<Handed<T>>,
    done: Condvar,
}

enum Handed<T> {
    Running,
    Done(T),
    /// The caller left: what to do with the outcome.
    Left(Box<dyn FnOnce(T) + Send>),
    Taken,
}

/// What [`Handoff::wait_until`] found.
pub enum Waited<T> {
    Done(T),
    Running,
}

impl<T: Send + 'static> Handoff<T> {
    pub fn new() -> Arc<Self> {
        Arc::new(Handoff {
            state: Mutex::new(Handed::Running),
            done: Condvar::new(),
        })
    }

    /// The pool thread's outcome: to the caller that waits, or to what it left behind.
    pub fn finish(&self, outcome: T) {
        let mut state = self.state.lock();
        if let Handed::Left(then) = std::mem::replace(&mut *state, Handed::Taken) {
            drop(state);
            then(outcome);
        } else {
            *state = Handed::Done(outcome);
            drop(state);
            self.done.notify_all();
        }
    }

    /// Waits until `deadline` at most for the outcome.
    pub fn wait_until(&self, deadline: Instant) -> Waited<T> {
        let mut state = self.state.lock();
        loop {
            if matches!(&*state, Handed::Done(_)) {
                let Handed::Done(v) = std::mem::replace(&mut *state, Handed::Taken) else {
                    unreachable!()
                };
                return Waited::Done(v);
            }
            if self.done.wait_until(&mut state, deadline).timed_out() {
                if let Handed::Done(_) = &*state {
                    continue;
                }
                return Waited::Running;
            }
        }
    }

    /// The caller leaves: `then` gets the outcome when it comes, or now if it has come.
    pub fn leave(&self, then: impl FnOnce(T) + Send + 'static) {
        let mut state = self.state.lock();
        match std::mem::replace(&mut *state, Handed::Taken) {
            Handed::Done(v) => {
                drop(state);
                then(v);
            }
            _ => *state = Handed::Left(Box::new(then)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn the_pool_runs_every_job_on_a_few_threads() {
        let ran = Arc::new(AtomicUsize::new(0));
        let threads = Arc::new(Mutex::new(HashSet::new()));
        for _ in 0..200 {
            let (ran, threads) = (ran.clone(), threads.clone());
            assert!(submit(move || {
                threads.lock().insert(std::thread::current().id());
                ran.fetch_add(1, Ordering::SeqCst);
            }));
        }
        let until = Instant::now() + Duration::from_secs(5);
        while ran.load(Ordering::SeqCst) < 200 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(ran.load(Ordering::SeqCst), 200);
        assert!(threads.lock().len() <= THREADS);
    }

    #[test]
    fn one_refresh_per_key_and_none_right_after_a_failure() {
        let first = Refreshing::start(u64::MAX, "k").expect("the first refresh starts");
        assert!(Refreshing::start(u64::MAX, "k").is_none());
        assert!(Refreshing::start(u64::MAX, "other").is_some());
        drop(first);
        assert!(Refreshing::start(u64::MAX, "k").is_some());
        failed(u64::MAX, "k");
        assert!(throttled(u64::MAX, "k"));
        assert!(Refreshing::start(u64::MAX, "k").is_none());
    }

    #[test]
    fn a_handoff_gives_the_outcome_to_whoever_is_there() {
        let h = Handoff::<u32>::new();
        let h2 = h.clone();
        std::thread::spawn(move || h2.finish(7));
        match h.wait_until(Instant::now() + Duration::from_secs(5)) {
            Waited::Done(v) => assert_eq!(v, 7),
            Waited::Running => panic!("the outcome did not come"),
        }
        let late = Handoff::<u32>::new();
        assert!(matches!(
            late.wait_until(Instant::now() + Duration::from_millis(10)),
            Waited::Running
        ));
        let got = Arc::new(AtomicUsize::new(0));
        let g = got.clone();
        late.leave(move |v| g.store(v as usize, Ordering::SeqCst));
        late.finish(9);
        assert_eq!(got.load(Ordering::SeqCst), 9);
    }
}
