//! Lease tokens (the names of the holders of cross-process leases), and the leases
//! this process holds, so that a child of `fork()` never waits for a lease that only
//! its parent's threads held (the computation it stands for is not the child's).

use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, OnceLock};

use parking_lot::Mutex;

use crate::process::ForkLocal;

/// A token that names one lease holder, unique across processes and calls: a random
/// seed drawn once per process (a child of `fork()` shares it, so the process id is
/// part of the token too) and a counter.
pub fn lease_token() -> String {
    static SEED: LazyLock<u64> = LazyLock::new(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    });
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // `{seed}-{pid}-`, written once per process.
    static PREFIX: ForkLocal<String> = ForkLocal::new();
    let prefix = PREFIX
        .get_or_try_init(|| {
            Ok::<_, std::convert::Infallible>(format!(
                "{:016x}-{:x}-",
                *SEED,
                crate::process::pid()
            ))
        })
        .unwrap_or_default();
    let mut token = String::with_capacity(prefix.len() + 16);
    token.push_str(&prefix);
    let _ = write!(token, "{:x}", COUNTER.fetch_add(1, Ordering::Relaxed));
    token
}

/// The token that names a lease holder, made when it is first needed: a read that
/// finds the value needs none (the file backend reads before it locks), where a Redis
/// script takes it with every call.
#[derive(Default)]
pub struct Token(OnceLock<String>);

impl Token {
    /// A token made on first use (by [`lease_token`]).
    pub fn lazy() -> Self {
        Token(OnceLock::new())
    }

    /// The token `token`.
    pub fn given(token: impl Into<String>) -> Self {
        Token(OnceLock::from(token.into()))
    }

    pub fn get(&self) -> &str {
        self.0.get_or_init(lease_token)
    }
}

/// The keys whose leases this process holds, and those its parent held when it forked.
#[derive(Default)]
struct Holdings {
    pid: u32,
    mine: HashMap<String, usize>,
    inherited: HashSet<String>,
}

static HOLDINGS: LazyLock<Mutex<Holdings>> = LazyLock::new(Mutex::default);

fn holdings() -> parking_lot::MutexGuard<'static, Holdings> {
    let mut h = HOLDINGS.lock();
    let pid = crate::process::pid();
    if h.pid != pid {
        // First look in a child of fork(): what the parent held is the parent's.
        let parents = std::mem::take(&mut h.mine);
        h.inherited = parents.into_keys().collect();
        h.pid = pid;
    }
    h
}

/// A lease this process holds on `key`, until dropped.
pub struct Held(String);

/// Records that this process holds the lease on `key`.
pub fn hold(key: &str) -> Held {
    *holdings().mine.entry(key.to_owned()).or_default() += 1;
    Held(key.to_owned())
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut h = holdings();
        if let Some(n) = h.mine.get_mut(&self.0) {
            *n -= 1;
            if *n == 0 {
                h.mine.remove(&self.0);
            }
        }
    }
}

/// Whether the lease on `key` was held by this process's parent when it forked: the
/// computation behind it has no thread here.
pub fn held_by_parent(key: &str) -> bool {
    holdings().inherited.contains(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_name_the_process() {
        let a = lease_token();
        let b = lease_token();
        assert_ne!(a, b);
        assert!(a.contains(&format!("-{:x}-", crate::process::pid())));
        let lazy = Token::lazy();
        assert_eq!(lazy.get(), lazy.get());
        assert_eq!(Token::given("t").get(), "t");
    }

    #[test]
    fn holdings_are_counted_and_forgotten() {
        let a = hold("k1");
        let b = hold("k1");
        drop(a);
        assert!(holdings().mine.contains_key("k1"));
        drop(b);
        assert!(!holdings().mine.contains_key("k1"));
        // As a child finds them: the parent's holdings become inherited.
        let _c = hold("k2");
        HOLDINGS.lock().pid = crate::process::pid().wrapping_add(1);
        assert!(held_by_parent("k2"));
        assert!(!held_by_parent("k1"));
        assert!(holdings().mine.is_empty());
    }
}
