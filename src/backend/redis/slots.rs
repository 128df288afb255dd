//! Redis Cluster's key slots: `CRC16(key) mod 16384`, of the key's hash tag if it has
//! one (the text between its first `{` and the next `}`, when not empty), and the lease
//! key that lands in the slot of the value it guards.

use std::sync::LazyLock;

pub const SLOTS: usize = 16384;

/// CRC16/XMODEM, as Redis Cluster hashes keys.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 == 0 {
                crc << 1
            } else {
                (crc << 1) ^ 0x1021
            };
        }
    }
    crc
}

/// The slot of `key`.
pub fn slot_of(key: &[u8]) -> u16 {
    let tag = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        rest.iter()
            .position(|&b| b == b'}')
            .filter(|&n| n > 0)
            .map(|n| &rest[..n])
    });
    crc16(tag.unwrap_or(key)) % SLOTS as u16
}

/// Per slot, the smallest non-negative integer whose decimal form hashes to it.
static TAGS: LazyLock<Vec<u32>> = LazyLock::new(|| {
    let mut tags = vec![u32::MAX; SLOTS];
    let mut missing = SLOTS;
    let mut n: u32 = 0;
    while missing > 0 {
        let slot = usize::from(slot_of(n.to_string().as_bytes()));
        if tags[slot] == u32::MAX {
            tags[slot] = n;
            missing -= 1;
        }
        n += 1;
    }
    tags
});

/// The lease on computing `key` on a cluster: `lock:{N}:{key}`, `N` the smallest
/// integer of the key's slot, so that the scripts that read the value and take or
/// release the lease touch one slot (Redis refuses scripts across slots).
pub fn cluster_lock_key(key: &str) -> String {
    format!(
        "lock:{{{}}}:{key}",
        TAGS[usize::from(slot_of(key.as_bytes()))]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_those_of_redis_cluster() {
        assert_eq!(crc16(b"123456789"), 0x31C3);
        // Values from CLUSTER KEYSLOT of a Redis 7 server.
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
    }

    #[test]
    fn a_lease_lives_in_its_values_slot() {
        for key in [
            "5m:f|x=1",
            "5m:f|x={'a': 1}",
            "5m:f|x=}{",
            "5m:f|x={}}",
            "",
            "{",
        ] {
            let lock = cluster_lock_key(key);
            assert!(lock.ends_with(key), "{lock}");
            assert_eq!(slot_of(lock.as_bytes()), slot_of(key.as_bytes()), "{key}");
        }
        assert!(TAGS.iter().all(|&t| t < 1_000_000));
    }
}
