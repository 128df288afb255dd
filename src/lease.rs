//! Lease tokens: the names of the holders of cross-process leases.

use std::fmt::Write;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, OnceLock};

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
            Ok::<_, std::convert::Infallible>(format!("{:016x}-{:x}-", *SEED, std::process::id()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_name_the_process() {
        let a = lease_token();
        let b = lease_token();
        assert_ne!(a, b);
        assert!(a.contains(&format!("-{:x}-", std::process::id())));
        let lazy = Token::lazy();
        assert_eq!(lazy.get(), lazy.get());
        assert_eq!(Token::given("t").get(), "t");
    }
}
