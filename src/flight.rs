//! Single flight: concurrent misses of one key run the computation once; the other
//! callers wait for its outcome instead of computing it again.
//!
//! Generic over the outcome so that it is tested without Python. Waiting happens with
//! the GIL released by the caller, in slices short enough for it to look for signals
//! in between; no lock here is held while the leader computes. A computation belongs
//! to its process: a child of `fork()` never waits for one of its parent's (whose
//! thread it does not have), it computes.

use std::sync::Arc;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use hashbrown::hash_table::Entry;
use parking_lot::{Condvar, Mutex};

use crate::key::{hash_of, Keyed};

enum State<T> {
    Running,
    Done(Arc<T>),
    Abandoned,
}

/// One computation in progress.
pub struct Flight<T> {
    state: Mutex<State<T>>,
    done: Condvar,
    leader: ThreadId,
    /// The process of the leader.
    pid: u32,
}

/// What a waiter learns.
pub enum Waited<T> {
    /// The leader's outcome.
    Done(Arc<T>),
    /// The leader went away without an outcome (it panicked or was interrupted).
    Abandoned,
    /// The leader did not finish in time.
    TimedOut,
}

impl<T> Flight<T> {
    /// Waits up to `timeout` for the leader.
    pub fn wait(&self, timeout: Duration) -> Waited<T> {
        self.wait_until(Instant::now() + timeout)
    }

    /// Waits until `deadline` at most for the leader.
    pub fn wait_until(&self, deadline: Instant) -> Waited<T> {
        let mut state = self.state.lock();
        loop {
            match &*state {
                State::Done(v) => return Waited::Done(v.clone()),
                State::Abandoned => return Waited::Abandoned,
                State::Running => {
                    if self.done.wait_until(&mut state, deadline).timed_out() {
                        return match &*state {
                            State::Done(v) => Waited::Done(v.clone()),
                            State::Abandoned => Waited::Abandoned,
                            State::Running => Waited::TimedOut,
                        };
                    }
                }
            }
        }
    }
}

/// The flights by key: hashed once per miss (seeded per process), and found again by
/// the leader through its hash and the flight itself.
type Map<T> = Arc<Mutex<hashbrown::HashTable<(Box<str>, Arc<Flight<T>>)>>>;

/// The computations in progress, by key.
pub struct Flights<T> {
    map: Map<T>,
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Flights {
            map: Arc::new(Mutex::new(hashbrown::HashTable::new())),
        }
    }
}

/// The role of a caller that missed.
pub enum Join<T> {
    /// Compute, then [`Leader::finish`].
    Leader(Leader<T>),
    /// Another thread computes: wait for it.
    Follower(Arc<Flight<T>>),
    /// This very thread is already computing this key (recursion): compute again
    /// rather than wait for ourselves.
    Reentrant,
}

/// The caller that computes (it may hand its computation to another thread, whose
/// outcome it then publishes). Dropping it without finishing wakes the waiters with
/// [`Waited::Abandoned`], so that a panic or an interruption never strands them.
pub struct Leader<T> {
    map: Map<T>,
    hash: u64,
    flight: Arc<Flight<T>>,
    finished: bool,
}

impl<T> Flights<T> {
    /// Joins the computation of `key`, becoming its leader if there is none.
    pub fn join<K: Keyed + ?Sized>(&self, key: &K) -> Join<T> {
        let me = std::thread::current().id();
        let pid = crate::process::pid();
        let (hash, key) = (key.hash(), key.text());
        let mut map = self.map.lock();
        let entry = map.entry(hash, |(k, _)| **k == *key, |(k, _)| hash_of(k));
        if let Entry::Occupied(found) = &entry {
            let f = &found.get().1;
            if f.pid == pid {
                return if f.leader == me {
                    Join::Reentrant
                } else {
                    Join::Follower(f.clone())
                };
            }
        }
        let flight = Arc::new(Flight {
            state: Mutex::new(State::Running),
            done: Condvar::new(),
            leader: me,
            pid,
        });
        match entry {
            // A flight of the parent of this process (after fork): ours replaces it.
            Entry::Occupied(mut found) => found.get_mut().1 = flight.clone(),
            Entry::Vacant(vacant) => {
                vacant.insert((key.into(), flight.clone()));
            }
        }
        Join::Leader(Leader {
            map: self.map.clone(),
            hash,
            flight,
            finished: false,
        })
    }

    /// The computation of `key` in progress, if any, without joining it.
    pub fn find<K: Keyed + ?Sized>(&self, key: &K) -> Option<Join<T>> {
        let me = std::thread::current().id();
        let pid = crate::process::pid();
        let map = self.map.lock();
        flight_of(&map, key.hash(), key.text())
            .filter(|f| f.pid == pid)
            .map(|f| {
                if f.leader == me {
                    Join::Reentrant
                } else {
                    Join::Follower(f.clone())
                }
            })
    }

    /// How many computations are in progress.
    pub fn in_progress(&self) -> usize {
        self.map.lock().len()
    }
}

fn flight_of<'m, T>(
    map: &'m hashbrown::HashTable<(Box<str>, Arc<Flight<T>>)>,
    hash: u64,
    key: &str,
) -> Option<&'m Arc<Flight<T>>> {
    map.find(hash, |(k, _)| **k == *key).map(|(_, f)| f)
}

impl<T> Leader<T> {
    /// Publishes the outcome `make` makes to every waiter (made only if one waits).
    pub fn finish(mut self, make: impl FnOnce() -> T) {
        self.settle(|| State::Done(Arc::new(make())));
    }

    /// Takes the flight out of the map and, if anyone follows it, tells them `state`.
    /// Followers hold the flight (cloned from the map, under its lock): once the map's
    /// reference is gone, nobody else can find it, so if ours is the last one no one
    /// waits and nothing is made for them.
    fn settle(&mut self, state: impl FnOnce() -> State<T>) {
        self.finished = true;
        let mut map = self.map.lock();
        if let Ok(entry) = map.find_entry(self.hash, |(_, f)| Arc::ptr_eq(f, &self.flight)) {
            entry.remove();
        }
        let followed = Arc::strong_count(&self.flight) > 1;
        drop(map);
        if followed {
            // Made before the lock is taken: making it may run Python.
            let state = state();
            *self.flight.state.lock() = state;
            self.flight.done.notify_all();
        }
    }
}

impl<T> Drop for Leader<T> {
    fn drop(&mut self) {
        if !self.finished {
            self.settle(|| State::Abandoned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn one_leader_many_followers() {
        let flights = Arc::new(Flights::<usize>::default());
        let computed = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (flights, computed, barrier) =
                    (flights.clone(), computed.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    match flights.join("k") {
                        Join::Leader(l) => {
                            std::thread::sleep(Duration::from_millis(50));
                            computed.fetch_add(1, Ordering::SeqCst);
                            l.finish(|| 42);
                            42
                        }
                        Join::Follower(f) => match f.wait(Duration::from_secs(5)) {
                            Waited::Done(v) => *v,
                            _ => panic!("follower did not get the outcome"),
                        },
                        Join::Reentrant => panic!("not reentrant"),
                    }
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), 42);
        }
        // Threads that arrived after the first finished lead a flight of their own.
        assert!(computed.load(Ordering::SeqCst) >= 1);
        assert_eq!(flights.in_progress(), 0);
    }

    #[test]
    fn same_thread_is_reentrant() {
        let flights = Flights::<()>::default();
        let Join::Leader(leader) = flights.join("k") else {
            panic!()
        };
        assert!(matches!(flights.join("k"), Join::Reentrant));
        leader.finish(|| ());
        assert!(matches!(flights.join("k"), Join::Leader(_)));
    }

    #[test]
    fn dropped_leader_releases_waiters() {
        let flights = Arc::new(Flights::<()>::default());
        let Join::Leader(leader) = flights.join("k") else {
            panic!()
        };
        let f2 = flights.clone();
        let waiter = std::thread::spawn(move || match f2.join("k") {
            Join::Follower(f) => matches!(f.wait(Duration::from_secs(5)), Waited::Abandoned),
            _ => false,
        });
        std::thread::sleep(Duration::from_millis(100));
        drop(leader);
        assert!(waiter.join().unwrap());
        assert_eq!(flights.in_progress(), 0);
    }

    #[test]
    fn waiting_is_bounded() {
        let flights = Arc::new(Flights::<()>::default());
        let Join::Leader(_leader) = flights.join("k") else {
            panic!()
        };
        let f2 = flights.clone();
        let t = std::thread::spawn(move || match f2.join("k") {
            Join::Follower(f) => matches!(f.wait(Duration::from_millis(30)), Waited::TimedOut),
            _ => false,
        });
        assert!(t.join().unwrap());
    }

    #[test]
    fn a_computation_of_another_process_is_not_waited_for() {
        let flights = Flights::<()>::default();
        let Join::Leader(parent) = flights.join("k") else {
            panic!()
        };
        // As a child of fork() finds it: the leader's process is not this one.
        let inherited = flight_of(&flights.map.lock(), hash_of("k"), "k")
            .cloned()
            .unwrap();
        let forked = Arc::new(Flight {
            state: Mutex::new(State::Running),
            done: Condvar::new(),
            leader: inherited.leader,
            pid: crate::process::pid().wrapping_add(1),
        });
        let mut map = flights.map.lock();
        let Ok(entry) = map.find_entry(hash_of("k"), |(k, _)| &**k == "k") else {
            panic!("the parent's flight is listed")
        };
        entry.into_mut().1 = forked;
        drop(map);
        assert!(flights.find("k").is_none());
        let Join::Leader(child) = flights.join("k") else {
            panic!("the child waited for its parent's computation")
        };
        drop(parent); // does not remove the child's flight
        assert_eq!(flights.in_progress(), 1);
        child.finish(|| ());
        assert_eq!(flights.in_progress(), 0);
    }
}
