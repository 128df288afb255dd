//! The file backend: one SQLite file per (package, TTL region), in the schema of
//! cachu 0.2.x (FORMATS.md), so that either implementation reads the other's files.
//!
//! Connections are pooled per file (0.2.x opens one per operation) with their prepared
//! statements cached; the journal is WAL with a busy timeout, so several processes
//! read and write one file at once, and a process killed mid-write leaves a file the
//! next one opens. A file that is not a SQLite database, or holds a foreign `cache`
//! table, is reported and left untouched: reads miss, writes are skipped.
//!
//! On Linux, a miss takes a lease on computing its key that other processes see: a
//! lock on one byte of `{file}-lease` (an open file description lock), at an offset
//! picked by a stable hash of the key. The kernel drops it when its holder exits, so a
//! lease never outlives the process that took it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::store::ByteStore;
use crate::errors::{CacheError, CacheResult};
use crate::process::{unix_now, ForkLocal};

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Writes between two deletions of expired rows.
const SWEEP_EVERY: u32 = 256;
/// Connections kept open per file; more may be open while threads overlap.
const POOL_SIZE: usize = 8;

const TABLE: &str = "
CREATE TABLE IF NOT EXISTS cache (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
)";
const INDEX: &str = "CREATE INDEX IF NOT EXISTS idx_cache_expires ON cache(expires_at)";

/// One SQLite cache file.
pub struct SqliteStore {
    path: PathBuf,
    /// Idle connections: never shared across `fork()`.
    pool: ForkLocal<Vec<Connection>>,
    writes: AtomicU32,
    /// The leases this process holds, and its handle on the lease file. A child of
    /// `fork()` shares the parent's file description, and with it the parent's locks:
    /// it opens its own, and holds none of the parent's leases.
    #[cfg(target_os = "linux")]
    leases: ForkLocal<Leases>,
}

fn backend_err(path: &std::path::Path, what: &str, e: impl std::fmt::Display) -> CacheError {
    CacheError::Backend(format!("cache file {}: {what}: {e}", path.display()))
}

impl SqliteStore {
    /// The store of the file at `path`. Nothing is read or written yet: the first
    /// operation opens the file (creating it if needed) and checks its schema, where it
    /// runs (for the async API, on the blocking pool, never on the event loop, where a
    /// busy file could hold the open for the busy timeout); a file that cannot be
    /// opened is then that operation's error, with the file's name.
    pub fn open(path: PathBuf) -> Self {
        SqliteStore {
            path,
            pool: ForkLocal::new(),
            writes: AtomicU32::new(0),
            #[cfg(target_os = "linux")]
            leases: ForkLocal::new(),
        }
    }

    fn connect(&self) -> CacheResult<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(&self.path, flags)
            .map_err(|e| backend_err(&self.path, "cannot be opened", e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| backend_err(&self.path, "cannot be configured", e))?;
        conn.set_prepared_statement_cache_capacity(16);
        // WAL lets readers and one writer of several processes proceed together. If
        // another process holds the file, switching may fail: the file stays usable.
        let _ = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0));
        let _ = conn.execute_batch("PRAGMA synchronous=NORMAL");
        conn.execute_batch(TABLE)
            .map_err(|e| backend_err(&self.path, "is not a usable SQLite cache", e))?;
        check_schema(&conn).map_err(|e| backend_err(&self.path, "has a foreign schema", e))?;
        conn.execute_batch(INDEX)
            .map_err(|e| backend_err(&self.path, "is not a usable SQLite cache", e))?;
        Ok(conn)
    }

    fn acquire(&self) -> CacheResult<Connection> {
        let pooled = self.pool.with(|idle| idle.as_mut().and_then(Vec::pop));
        match pooled {
            Some(conn) => Ok(conn),
            None => self.connect(),
        }
    }

    fn release(&self, conn: Connection) {
        let surplus = self.pool.with(|idle| {
            let idle = idle.get_or_insert_with(Vec::new);
            if idle.len() < POOL_SIZE {
                idle.push(conn);
                None
            } else {
                Some(conn)
            }
        });
        drop(surplus);
    }

    fn with_conn<T>(
        &self,
        what: &str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> CacheResult<T> {
        let conn = self.acquire()?;
        let result = f(&conn);
        self.release(conn);
        result.map_err(|e| backend_err(&self.path, what, e))
    }

    /// Takes the lease of `key` for `token`; `false` if another caller holds it, in
    /// this process or another. A lease file that cannot be opened leaves only the
    /// exclusion within this process: every process then computes for itself, as
    /// without leases.
    #[cfg(target_os = "linux")]
    fn take_lease(&self, key: &str, token: &str) -> bool {
        let offset = lease_offset(key);
        self.leases.with(|leases| {
            let leases = leases.get_or_insert_with(|| Leases::open(&self.path));
            if leases.held.contains_key(&offset) {
                return false;
            }
            if !leases.lock(offset, true) {
                return false;
            }
            leases.held.insert(offset, token.to_owned());
            true
        })
    }

    /// Gives back the lease of `key` if `token` holds it.
    #[cfg(target_os = "linux")]
    fn give_lease(&self, key: &str, token: &str) {
        let offset = lease_offset(key);
        self.leases.with(|leases| {
            let leases = leases.get_or_insert_with(|| Leases::open(&self.path));
            if leases.held.get(&offset).is_some_and(|t| t == token) {
                leases.held.remove(&offset);
                leases.lock(offset, false);
            }
        });
    }
}

/// The leases of one file that this process holds: the offsets and their tokens, and
/// the lease file whose byte locks other processes see.
#[cfg(target_os = "linux")]
struct Leases {
    file: Option<std::fs::File>,
    held: std::collections::HashMap<i64, String>,
}

#[cfg(target_os = "linux")]
impl Leases {
    /// Opens the lease file in this process (the file beside the database).
    fn open(db: &std::path::Path) -> Leases {
        let mut name = db.to_path_buf().into_os_string();
        name.push("-lease");
        Leases {
            file: std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(name)
                .ok(),
            held: std::collections::HashMap::new(),
        }
    }

    /// Locks (or unlocks) the byte at `offset`; `false` if another process holds it.
    fn lock(&self, offset: i64, lock: bool) -> bool {
        use std::os::fd::AsRawFd;
        let Some(file) = &self.file else {
            return true;
        };
        let kind = if lock { libc::F_WRLCK } else { libc::F_UNLCK };
        // SAFETY: `flock` is plain data, zero is a valid value of each of its fields,
        // and `fcntl` only reads it; the descriptor is `file`'s, open for the call. The
        // stampede tests run this.
        let rc = unsafe {
            let mut fl: libc::flock = std::mem::zeroed();
            fl.l_type = kind as libc::c_short;
            fl.l_whence = libc::SEEK_SET as libc::c_short;
            fl.l_start = offset;
            fl.l_len = 1;
            libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &raw const fl)
        };
        rc == 0
            || !matches!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::EAGAIN | libc::EACCES)
            )
    }
}

/// Where the lease of `key` lives in the lease file: the same in every process (a
/// stable hash, FNV-1a), below 2^40.
#[cfg(target_os = "linux")]
fn lease_offset(key: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 24) as i64
}

/// The `cache` table must have the four columns of the format.
fn check_schema(conn: &Connection) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info('cache')")?;
    let cols: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for needed in ["key", "value", "created_at", "expires_at"] {
        if !cols.iter().any(|c| c == needed) {
            return Err(rusqlite::Error::InvalidColumnName(format!(
                "table 'cache' has no column {needed:?}"
            )));
        }
    }
    Ok(())
}

impl ByteStore for SqliteStore {
    fn get(&self, key: &str) -> CacheResult<Option<(Vec<u8>, f64)>> {
        let now = unix_now();
        self.with_conn("read failed", |c| {
            c.prepare_cached(
                "SELECT value, created_at FROM cache WHERE key = ?1 AND expires_at >= ?2",
            )?
            .query_row(params![key, now], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
        })
    }

    fn set(&self, key: &str, value: &[u8], created_at: f64, ttl: f64) -> CacheResult<()> {
        let sweep = self.writes.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1;
        self.with_conn("write failed", |c| {
            c.prepare_cached(
                "INSERT OR REPLACE INTO cache (key, value, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![key, value, created_at, created_at + ttl])?;
            if sweep {
                c.prepare_cached("DELETE FROM cache WHERE expires_at < ?1")?
                    .execute(params![unix_now()])?;
            }
            Ok(())
        })
    }

    fn delete(&self, key: &str) -> CacheResult<()> {
        self.with_conn("delete failed", |c| {
            c.prepare_cached("DELETE FROM cache WHERE key = ?1")?
                .execute(params![key])
                .map(drop)
        })
    }

    fn clear(&self, pattern: Option<&str>) -> CacheResult<usize> {
        self.with_conn("clear failed", |c| match pattern {
            Some(p) => c.execute("DELETE FROM cache WHERE key GLOB ?1", params![p]),
            None => c.execute("DELETE FROM cache", []),
        })
    }

    fn keys(&self, pattern: Option<&str>) -> CacheResult<Vec<String>> {
        let now = unix_now();
        self.with_conn("listing keys failed", |c| {
            let mut stmt =
                c.prepare_cached("SELECT key FROM cache WHERE expires_at >= ?1 AND key GLOB ?2")?;
            let rows = stmt.query_map(params![now, pattern.unwrap_or("*")], |r| r.get(0))?;
            rows.collect()
        })
    }

    fn has_leases(&self) -> bool {
        cfg!(target_os = "linux")
    }

    #[cfg(target_os = "linux")]
    fn lease(
        &self,
        key: &str,
        token: &crate::lease::Token,
        _lease: Duration,
        read: bool,
    ) -> CacheResult<super::store::LeaseReply> {
        use super::store::LeaseReply;
        if read {
            // A hit needs no token: it is made below, for a lease.
            if let Some((value, created)) = self.get(key)? {
                return Ok(LeaseReply::Found(value, created));
            }
        }
        let token = token.get();
        if !self.take_lease(key, token) {
            return Ok(LeaseReply::Held);
        }
        if read {
            // Another process may have stored it between the read and the lock.
            if let Some((value, created)) = self.get(key)? {
                self.give_lease(key, token);
                return Ok(LeaseReply::Found(value, created));
            }
        }
        Ok(LeaseReply::Acquired)
    }

    #[cfg(target_os = "linux")]
    fn store_and_release(
        &self,
        key: &str,
        value: Option<(&[u8], f64, f64)>,
        token: &str,
    ) -> CacheResult<()> {
        let stored = self.store_if_given(key, value);
        self.give_lease(key, token);
        stored
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Token;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cachu-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("app_cache5min.db")
    }

    #[test]
    fn round_trip_and_expiry() {
        let path = temp_path("rt");
        let s = SqliteStore::open(path.clone());
        let now = unix_now();
        s.set("5m:f|x=1", b"data", now, 300.0).unwrap();
        s.set("5m:f|x=2", b"old", now - 1000.0, 300.0).unwrap();
        let (v, created) = s.get("5m:f|x=1").unwrap().unwrap();
        assert_eq!((v.as_slice(), created), (&b"data"[..], now));
        assert_eq!(s.get("5m:f|x=2").unwrap(), None, "expired row must miss");
        assert_eq!(s.keys(None).unwrap(), vec!["5m:f|x=1".to_owned()]);
        s.delete("5m:f|x=1").unwrap();
        assert_eq!(s.get("5m:f|x=1").unwrap(), None);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_lease_is_seen_by_another_process_and_dies_with_it() {
        use crate::backend::store::LeaseReply;
        let path = temp_path("lease");
        let s = SqliteStore::open(path.clone());
        let lease = Duration::from_secs(10);
        assert!(matches!(
            s.lease("5m:f|x=1", &Token::given("a"), lease, true)
                .unwrap(),
            LeaseReply::Acquired
        ));
        // Another caller of this process waits for it.
        assert!(matches!(
            s.lease("5m:f|x=1", &Token::given("b"), lease, true)
                .unwrap(),
            LeaseReply::Held
        ));
        // Another open of the lease file stands for another process.
        let other = SqliteStore::open(path.clone());
        assert!(matches!(
            other
                .lease("5m:f|x=1", &Token::given("c"), lease, true)
                .unwrap(),
            LeaseReply::Held
        ));
        assert!(matches!(
            other
                .lease("5m:f|x=2", &Token::given("c"), lease, true)
                .unwrap(),
            LeaseReply::Acquired
        ));
        // Only its holder releases a lease.
        s.store_and_release("5m:f|x=1", None, "b").unwrap();
        assert!(matches!(
            other
                .lease("5m:f|x=1", &Token::given("c"), lease, true)
                .unwrap(),
            LeaseReply::Held
        ));
        // Stored and released: the other finds the value.
        s.store_and_release("5m:f|x=1", Some((b"v", unix_now(), 300.0)), "a")
            .unwrap();
        match other
            .lease("5m:f|x=1", &Token::given("c"), lease, true)
            .unwrap()
        {
            LeaseReply::Found(v, _) => assert_eq!(v, b"v"),
            _ => panic!("the stored value was not found"),
        }
        // A holder that goes away (its file closed, as at exit) leaves no lease behind.
        assert!(matches!(
            s.lease("5m:f|x=3", &Token::given("a"), lease, false)
                .unwrap(),
            LeaseReply::Acquired
        ));
        drop(s);
        assert!(matches!(
            other
                .lease("5m:f|x=3", &Token::given("c"), lease, false)
                .unwrap(),
            LeaseReply::Acquired
        ));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn glob_clear_is_selective() {
        let path = temp_path("glob");
        let s = SqliteStore::open(path.clone());
        let now = unix_now();
        s.set("5m:f||users||id=1", b"1", now, 300.0).unwrap();
        s.set("5m:f||items||id=1", b"2", now, 300.0).unwrap();
        assert_eq!(s.clear(Some("*|users|*")).unwrap(), 1);
        assert_eq!(s.keys(None).unwrap(), vec!["5m:f||items||id=1".to_owned()]);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_file_that_is_not_sqlite_is_an_error_and_kept() {
        let path = temp_path("junk");
        std::fs::write(
            &path,
            b"this is not a database, it is the user's data".repeat(100),
        )
        .unwrap();
        let err = SqliteStore::open(path.clone())
            .get("5m:f|x=1")
            .expect_err("must fail");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert!(std::fs::read(&path)
            .unwrap()
            .starts_with(b"this is not a database"));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_foreign_cache_table_is_refused() {
        let path = temp_path("foreign");
        let c = Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE cache (id INTEGER PRIMARY KEY, payload TEXT)")
            .unwrap();
        drop(c);
        let err = SqliteStore::open(path.clone())
            .get("5m:f|x=1")
            .expect_err("must fail");
        assert!(err.to_string().contains("foreign schema"), "{err}");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
