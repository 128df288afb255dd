//! This process: its clocks, and what must not cross `fork()`.
//!
//! A child of `fork()` inherits the parent's memory but none of its other threads: a
//! runtime whose workers are gone, a connection whose I/O thread is gone, a computation
//! that no thread of the child will finish. [`ForkLocal`] is the one place that tells a
//! value of this process from one inherited: the child makes its own, and leaks the
//! inherited one on purpose (dropping it could wait for threads that do not exist, or
//! close sockets the parent still uses).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// Nanoseconds on a coarse monotonic clock (a few milliseconds of resolution): the
/// deadline check of every hit reads it, and the coarse clock costs a fraction of the
/// precise one.
#[cfg(target_os = "linux")]
pub fn now_ns() -> u64 {
    read_clock(libc::CLOCK_MONOTONIC_COARSE)
        .or_else(|| read_clock(libc::CLOCK_MONOTONIC))
        .unwrap_or(0)
}

#[cfg(target_os = "linux")]
fn read_clock(id: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given, which lives on this
    // stack frame. Every test of the memory store reads the clock through here.
    let rc = unsafe { libc::clock_gettime(id, &raw mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

#[cfg(not(target_os = "linux"))]
pub fn now_ns() -> u64 {
    static BASE: std::sync::LazyLock<std::time::Instant> =
        std::sync::LazyLock::new(std::time::Instant::now);
    BASE.elapsed().as_nanos() as u64
}

/// Unix time in seconds, as `time.time()` gives it.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// This process's id, kept up to date across `fork()` by a handler the child runs:
/// a load, where `getpid()` is a system call (glibc caches it no more).
static PID: AtomicU32 = AtomicU32::new(0);

#[cfg(unix)]
extern "C" fn forked_child() {
    PID.store(std::process::id(), Ordering::Relaxed);
}

/// The id of this process.
#[inline]
pub fn pid() -> u32 {
    match PID.load(Ordering::Relaxed) {
        0 => first_pid(),
        pid => pid,
    }
}

#[cold]
fn first_pid() -> u32 {
    static WATCH: std::sync::Once = std::sync::Once::new();
    WATCH.call_once(|| {
        #[cfg(unix)]
        // SAFETY: registers a handler that runs in the child after fork(); it only
        // stores the child's id in an atomic (async-signal-safe work).
        unsafe {
            libc::pthread_atfork(None, None, Some(forked_child));
        }
        PID.store(std::process::id(), Ordering::Relaxed);
    });
    PID.load(Ordering::Relaxed)
}

/// A number drawn uniformly from [0, 1): a xorshift64* generator per thread, seeded
/// from the hasher's per-process randomness (not for secrets).
pub fn uniform() -> f64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(now_ns());
            h.finish() | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        // The top 53 bits, as a fraction of 2^53.
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// A value that belongs to the process that made it.
pub struct ForkLocal<T> {
    slot: Mutex<Option<(u32, T)>>,
}

impl<T> Default for ForkLocal<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> ForkLocal<T> {
    pub const fn new() -> Self {
        ForkLocal {
            slot: Mutex::new(None),
        }
    }

    /// Runs `f` on this process's value (`None` if it has none yet). A value inherited
    /// from a parent is leaked first, never dropped.
    pub fn with<R>(&self, f: impl FnOnce(&mut Option<T>) -> R) -> R {
        let pid = pid();
        let mut slot = self.slot.lock();
        if let Some(inherited) = slot.take_if(|(owner, _)| *owner != pid) {
            std::mem::forget(inherited);
        }
        let mut value = slot.take().map(|(_, v)| v);
        let out = f(&mut value);
        *slot = value.map(|v| (pid, v));
        out
    }

    /// This process's value, made by `make` if there is none.
    pub fn get_or_try_init<E>(&self, make: impl FnOnce() -> Result<T, E>) -> Result<T, E>
    where
        T: Clone,
    {
        self.with(|value| {
            if let Some(v) = value {
                return Ok(v.clone());
            }
            let v = make()?;
            *value = Some(v.clone());
            Ok(v)
        })
    }

    /// Takes this process's value out (an inherited one stays leaked).
    pub fn take(&self) -> Option<T> {
        self.with(Option::take)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_made_once_per_process() {
        let local: ForkLocal<u32> = ForkLocal::new();
        let mut made = 0;
        for _ in 0..3 {
            let v = local.get_or_try_init(|| {
                made += 1;
                Ok::<_, ()>(7)
            });
            assert_eq!(v, Ok(7));
        }
        assert_eq!(made, 1);
        assert_eq!(local.take(), Some(7));
        assert_eq!(local.take(), None);
    }

    #[test]
    fn a_value_of_another_process_is_not_handed_out() {
        let local: ForkLocal<String> = ForkLocal::new();
        *local.slot.lock() = Some((pid().wrapping_add(1), "parent's".into()));
        assert_eq!(local.take(), None);
    }

    #[test]
    fn the_pid_is_this_process_s_and_a_forked_child_s_own() {
        assert_eq!(pid(), std::process::id());
        // SAFETY: the child only calls async-signal-safe functions (getpid through
        // pid()'s load, write, _exit) before it exits.
        unsafe {
            let mut fds = [0; 2];
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            let child = libc::fork();
            if child == 0 {
                let ok = u8::from(pid() == libc::getpid() as u32);
                libc::write(fds[1], (&raw const ok).cast(), 1);
                libc::_exit(0);
            }
            let mut ok = 0u8;
            assert_eq!(libc::read(fds[0], (&raw mut ok).cast(), 1), 1);
            libc::waitpid(child, std::ptr::null_mut(), 0);
            assert_eq!(ok, 1, "the child saw its parent's id");
        }
    }

    #[test]
    fn uniform_numbers_fill_the_unit_interval() {
        let draws: Vec<f64> = (0..10_000).map(|_| uniform()).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        assert!(draws.iter().filter(|u| **u < 0.1).count() > 800);
    }

    #[test]
    fn the_clocks_move_forward() {
        let a = now_ns();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(now_ns() > a);
        assert!(unix_now() > 1.6e9);
    }
}
