//! The quota usage store: per-user counters (`priv/quota/storage` in bytes,
//! `priv/quota/messages`) that Dovecot keeps current through the quota dict
//! and that the SMTP-time quota checks read.
//!
//! # Why redb
//! A commit that Dovecot was told succeeded (`O`) must survive `kill -9` and
//! power loss, or usage drifts until the next recalculation and SMTP-time
//! checks accept mail LMTP will refuse. redb is an embedded, pure-Rust,
//! crash-safe B-tree store with ACID transactions (copy-on-write pages and a
//! checksummed commit slot; no recovery log to replay by hand), so ramdir
//! needs no external service and no journal format of its own. Its cost is
//! one fsync per write transaction; [`Writer`] amortises that with group
//! commit: every commit that arrives while one is being written goes into the
//! next transaction, and each caller is answered only after its data is on
//! disk.
//!
//! # Semantics (mirroring Dovecot's own dict backends)
//! - `Set` stores an absolute value, `Unset` removes the key.
//! - `Inc` adds to an existing counter. On a **missing** counter it changes
//!   nothing and the commit reports [`CommitOutcome::NotFound`], so Dovecot
//!   recalculates the real usage (creating the key from a delta would make
//!   usage wrong forever; protocols.md G14).
//!
//! # Read cache
//! Every SMTP-time check reads a user's counters, and a redb read
//! transaction per check was the largest cost of the policy service in its
//! benchmark. Counters read once are kept in memory (`ReadCache`); a
//! commit drops the cached values of the users it touched once it is
//! durable, and the next read takes them from redb again. A read that raced
//! with a commit does not cache what it read (a per-shard version tells),
//! so the cache never holds a value older than a commit that was answered.
//!
//! In front of it, each thread keeps its own copy of the counters it read
//! (`Local`): a shared cache's read lock is still a write to a shared lock
//! word, and in the policy benchmark that word bounced between the CPUs on
//! nearly every check. A commit, once the shared cache forgot its users,
//! appends them to a short log and bumps a sequence number
//! (`Invalidations`); a thread that sees a new number replays the log into
//! its copy before it answers from it (or empties its copy when it fell
//! further behind than the log reaches). So a thread's read touches no
//! shared memory that is written between commits, and still never returns a
//! value older than an answered commit.
//!
//! # Damage and a full disk
//! An existing file is opened with redb's integrity check: a damaged or
//! truncated store (or a file that is no store at all, an empty one
//! included) is an error at start, never a silently empty store whose
//! zeroes would let every mailbox overfill. When a write fails (a full
//! disk), the commit's callers get an error (the dict `F`) and the store
//! counts as failing: its counters may lag behind what Dovecot counted, so
//! every read is an error too (the quota checks answer "temporary") until a
//! write succeeds again. A failing store probes at most once per
//! [`REOPEN_PAUSE`]: it writes [`PROBE_BYTES`] next to the store (an empty
//! commit alone often fits in a full disk, as it reuses freed pages, while
//! the next real one does not), then commits an empty transaction
//! (reopening the file if redb refuses the handle after an I/O error). So
//! it recovers by itself when the disk has room again, even with no commit
//! arriving. What was committed before stays:
//! redb's commit slots keep the last durable transaction.
//!
//! # Versions (shared usage across hosts)
//! With shared usage on ([`UsageStore::enable_versions`]), every
//! transaction that changes something also stamps its user with a version
//! in the same redb write transaction: a clock in microseconds since the
//! Unix epoch that never goes backwards on this store (`max(now, last +
//! 1)`, `last` starting from the highest version stored). The version is
//! kept in the counters table under the key `ramdir/version`, next to the
//! user's counters (so it dirties no extra page). The users with a version
//! here are the users this host owns: its Dovecot commits their usage. A
//! [`CommitHook`] then gets each user's absolute counters and version once
//! they are durable, to publish them (`ramdir/src/shared.rs`); publishing
//! absolute values with a version makes a retry or a replay harmless.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// (user, key) → value. Keys are the dict key after `priv/`
/// (`quota/storage`, `quota/messages`).
const COUNTERS: TableDefinition<(&str, &str), i64> = TableDefinition::new("counters");

/// The counter key that holds a user's version (shared usage only): in the
/// counters table, beside the user's counters, so stamping it dirties no
/// page the commit did not already write. Not a dict key (`priv/` keys
/// are `quota/…`), never shown or served as one.
const VERSION_KEY: &str = "ramdir/version";

/// A user's absolute usage after a commit, as shared with other hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The user.
    pub user: String,
    /// `quota/storage` (bytes), if the counter exists.
    pub storage: Option<i64>,
    /// `quota/messages`, if the counter exists.
    pub messages: Option<i64>,
    /// The version of this value (see the module docs).
    pub version: u64,
}

/// Told about every durable commit when versions are on.
pub trait CommitHook: Send + Sync + std::fmt::Debug {
    /// `users` are durable with these values (a user may appear more than
    /// once in a batch; the highest version is the latest).
    fn committed(&self, users: Vec<Published>);

    /// Whether another host holds a value for `user` newer than `mine`
    /// (this store's version of it, 0 if none): then this store's
    /// counters are out of date and increments must not apply to them.
    fn newer_elsewhere(&self, user: &str, mine: u64) -> bool {
        let _ = (user, mine);
        false
    }
}

/// Most commits written in one transaction: bounds the latency a single
/// fsync adds to the commits queued behind it.
pub const MAX_BATCH: usize = 1024;

/// Why the store failed (the dict answers `F`, the quota checks tempfail).
#[derive(Debug)]
pub enum StoreError {
    /// The database failed.
    Db(String),
    /// The writer thread is gone (shutdown).
    Closed,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Db(e) => write!(f, "quota store: {e}"),
            StoreError::Closed => f.write_str("quota store is shut down"),
        }
    }
}

impl std::error::Error for StoreError {}

/// How redb words the refusal after an earlier I/O failure
/// (`StorageError::PreviousIo`): the handle must be reopened.
const PREVIOUS_IO: &str = "Previous I/O error";

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// One change in a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Store an absolute value.
    Set(String, i64),
    /// Remove the counter.
    Unset(String),
    /// Add to an existing counter.
    Inc(String, i64),
}

/// A committed transaction's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Every change applied and durable.
    Ok,
    /// Durable, but at least one `Inc` found no counter (and did nothing).
    NotFound,
}

/// One user's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Txn {
    /// The user the `priv/` keys belong to.
    pub user: String,
    /// The changes, in order.
    pub ops: Vec<Op>,
}

/// The counters the dict and the quota checks know, in [`Cached`] order.
const CACHED_KEYS: [&str; 2] = ["quota/storage", "quota/messages"];

/// Shards of the read cache: a commit locks one shard per touched user, so
/// readers of other users never wait for it.
const CACHE_SHARDS: usize = 64;

/// Most users cached per shard (4M in all, above the largest directories
/// ramdir is sized for); a full shard is emptied and refills from redb.
const MAX_CACHED_PER_SHARD: usize = 1 << 16;

/// One user's cached counters, as in [`CACHED_KEYS`] (`None`: no counter).
type Cached = [Option<i64>; 2];

#[derive(Debug, Default)]
struct Shard {
    /// Bumped by every invalidation, so a read that raced with a commit
    /// does not cache a value from before it.
    version: u64,
    users: HashMap<Box<str>, Cached, foldhash::fast::FixedState>,
}

/// The in-memory copy of counters read from redb (see the module docs).
#[derive(Debug)]
struct ReadCache {
    hasher: foldhash::fast::FixedState,
    shards: Vec<RwLock<Shard>>,
}

impl ReadCache {
    fn new() -> ReadCache {
        ReadCache {
            hasher: foldhash::fast::FixedState::default(),
            shards: (0..CACHE_SHARDS).map(|_| RwLock::default()).collect(),
        }
    }

    fn shard(&self, user: &str) -> &RwLock<Shard> {
        &self.shards[self.hasher.hash_one(user) as usize % CACHE_SHARDS]
    }

    /// The cached counters, or the shard's version to insert with.
    fn get(&self, user: &str) -> Result<Cached, u64> {
        // A poisoned lock only means a panic elsewhere; the map is intact.
        let s = self.shard(user).read().unwrap_or_else(|e| e.into_inner());
        s.users.get(user).copied().ok_or(s.version)
    }

    fn insert(&self, user: &str, version: u64, value: Cached) {
        let mut s = self.shard(user).write().unwrap_or_else(|e| e.into_inner());
        if s.version != version {
            return;
        }
        if s.users.len() >= MAX_CACHED_PER_SHARD {
            s.users.clear();
        }
        s.users.insert(user.into(), value);
    }

    fn invalidate(&self, user: &str) {
        let mut s = self.shard(user).write().unwrap_or_else(|e| e.into_inner());
        s.version += 1;
        s.users.remove(user);
    }
}

/// Most users one thread keeps in its own copy (about 7 MB of it at most;
/// a full copy is emptied and refills from the shared cache). A 100k-user
/// benchmark fits whole; on larger directories it holds the recipients seen
/// lately, which is where mail goes.
const LOCAL_MAX: usize = 1 << 17;

/// Invalidations kept for threads that have not replayed them yet. A
/// thread more than this many behind (idle while commits went on) empties
/// its copy instead, which is always correct.
const LOG_LEN: usize = 4096;

/// Seed of the hash that names a user in the invalidation log and keys the
/// per-thread copies (a collision only drops an extra entry).
const LOCAL_SEED: u64 = 0x7573_6167_655f_6c31;

fn user_hash(user: &str) -> u64 {
    foldhash::fast::FixedState::with_seed(LOCAL_SEED).hash_one(user)
}

/// Identity of each store, so a thread's copy never answers for another
/// store (tests open several in one thread).
static NEXT_STORE: AtomicU64 = AtomicU64::new(1);

/// Users whose counters changed, for the per-thread copies to replay.
#[derive(Debug, Default)]
struct Invalidations {
    /// Invalidations published so far; written only by commits.
    seq: AtomicU64,
    /// The last [`LOG_LEN`] of them (user hashes), the newest last; changed
    /// only with `seq`, under this lock.
    log: Mutex<VecDeque<u64>>,
}

impl Invalidations {
    fn publish(&self, users: impl Iterator<Item = u64>) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        for h in users {
            if log.len() == LOG_LEN {
                log.pop_front();
            }
            log.push_back(h);
            n += 1;
        }
        // Release: a thread that reads the new number also sees the shared
        // cache without these users.
        self.seq.fetch_add(n, Ordering::Release);
    }

    /// Bring `local` up to date: drop every user invalidated since it last
    /// looked, or everything when the log no longer reaches that far back.
    fn replay(&self, local: &mut Local) {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let end = self.seq.load(Ordering::Acquire);
        let start = end - log.len() as u64;
        if local.seen < start {
            local.users.clear();
        } else {
            let from = usize::try_from(local.seen - start).unwrap_or(usize::MAX);
            for &h in log.iter().skip(from) {
                while let Ok(e) = local
                    .users
                    .find_entry(h, |(key, _)| user_hash(key.as_str()) == h)
                {
                    e.remove();
                }
            }
        }
        local.seen = end;
    }
}

/// One thread's copy of the counters it read (see the module docs).
struct Local {
    /// The store these counters are from (0: none yet).
    store: u64,
    /// The invalidation sequence number this copy has replayed up to.
    seen: u64,
    users: HashTable<(crate::table::Key, [i64; 2])>,
}

/// How a thread's copy stores "no counter": slots stay at 48 bytes (an
/// `Option` pair takes 32), so more of a large copy stays in the caches. A
/// counter that really holds this value is not copied (read from the
/// shared cache each time), so the copy is exact.
const NO_COUNTER: i64 = i64::MIN;

fn to_local(c: Cached) -> Option<[i64; 2]> {
    let [a, b] = c;
    if a == Some(NO_COUNTER) || b == Some(NO_COUNTER) {
        return None;
    }
    Some([a.unwrap_or(NO_COUNTER), b.unwrap_or(NO_COUNTER)])
}

fn from_local(v: [i64; 2]) -> Cached {
    v.map(|x| (x != NO_COUNTER).then_some(x))
}

thread_local! {
    static LOCAL: RefCell<Local> = const {
        RefCell::new(Local { store: 0, seen: 0, users: HashTable::new() })
    };
}

/// Least time between two attempts to reopen a store whose file failed
/// (a full disk): each attempt reads the whole file.
pub const REOPEN_PAUSE: Duration = Duration::from_secs(1);

/// Room a failing store must find on its file system before it trusts
/// writes again: several group commits' worth of new pages.
pub const PROBE_BYTES: usize = 1 << 20;

/// Is there room for [`PROBE_BYTES`] next to `store`? Written, synced and
/// removed again. Where the directory cannot take the probe file at all
/// (not writable by ramdir, read-only), the empty commit decides alone.
fn room_for_probe(store: &Path) -> bool {
    let mut name = store.as_os_str().to_owned();
    name.push(".space-probe");
    let probe = PathBuf::from(name);
    let written = (|| {
        let mut f = std::fs::File::create(&probe)?;
        std::io::Write::write_all(&mut f, &vec![0u8; PROBE_BYTES])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&probe);
    match written {
        Ok(()) => true,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
        ),
    }
}

/// Open the file at `path`: an existing one strictly (integrity checked,
/// so damage is an error and an empty file is not taken for a new store),
/// a missing one created.
fn open_db(path: &Path) -> Result<Database, StoreError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => redb::Builder::new()
            .set_check_integrity_on_open(true)
            .open(path)
            .map_err(|e| {
                let e = e.to_string();
                if e.contains("already open") {
                    StoreError::Db(e)
                } else {
                    StoreError::Db(format!(
                        "cannot open the quota usage store: {e}: the file is damaged, \
                         truncated or not a ramdir quota store; ramdir will not start \
                         from empty usage on its own: move the file aside (the next start \
                         creates an empty store; `doveadm quota recalc -A` refills it)"
                    ))
                }
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Database::create(path).map_err(db_err)
        }
        Err(e) => Err(db_err(e)),
    }
}

/// The durable store.
#[derive(Debug)]
pub struct UsageStore {
    /// `None` after a failed reopen (see the module docs).
    db: RwLock<Option<Database>>,
    path: PathBuf,
    /// When the last reopen was tried.
    reopened: Mutex<Option<Instant>>,
    /// Bumped by every successful reopen.
    handle_generation: AtomicU64,
    /// The last write failed (see the module docs).
    failing: std::sync::atomic::AtomicBool,
    /// When a failing store last tried an empty commit.
    probed: Mutex<Option<Instant>>,
    cache: ReadCache,
    id: u64,
    invalidations: Invalidations,
    /// Durable redb commits and the transactions they carried, failed
    /// commits (for metrics).
    stats: CommitStats,
    /// Set when shared usage is on: versions are written and the hook is
    /// told about each durable commit.
    hook: OnceLock<Arc<dyn CommitHook>>,
    /// The version clock's last value (written only by commits).
    clock: Mutex<u64>,
}

/// Commit counters of a [`UsageStore`].
#[derive(Debug, Default)]
pub struct CommitStats {
    /// redb write transactions committed (one per group commit).
    pub commits: AtomicU64,
    /// Usage transactions in them.
    pub transactions: AtomicU64,
    /// Group commits that failed.
    pub failures: AtomicU64,
}

impl UsageStore {
    /// Open (or create) the store at `path`.
    pub fn open(path: &Path) -> Result<UsageStore, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(db_err)?;
        }
        let db = open_db(path)?;
        // Make sure the table exists so reads never fail on a new store.
        let w = db.begin_write().map_err(db_err)?;
        w.open_table(COUNTERS).map_err(db_err)?;
        w.commit().map_err(db_err)?;
        Ok(UsageStore {
            db: RwLock::new(Some(db)),
            path: path.to_path_buf(),
            reopened: Mutex::new(None),
            handle_generation: AtomicU64::new(0),
            failing: std::sync::atomic::AtomicBool::new(false),
            probed: Mutex::new(None),
            cache: ReadCache::new(),
            id: NEXT_STORE.fetch_add(1, Ordering::Relaxed),
            invalidations: Invalidations::default(),
            stats: CommitStats::default(),
            hook: OnceLock::new(),
            clock: Mutex::new(0),
        })
    }

    /// Run `f` on the database. After an I/O failure (redb then refuses
    /// every operation on the handle) the file is closed and reopened, at
    /// most once per [`REOPEN_PAUSE`]; until that succeeds, an error.
    fn with_db<T>(&self, f: impl Fn(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let seen = {
            let db = self.db.read().unwrap_or_else(|e| e.into_inner());
            let seen = self.handle_generation.load(Ordering::Acquire);
            if let Some(db) = db.as_ref() {
                match f(db) {
                    Err(StoreError::Db(e)) if e.contains(PREVIOUS_IO) => {}
                    r => return r,
                }
            }
            seen
        };
        self.reopen(seen)?;
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        match db.as_ref() {
            Some(db) => f(db),
            None => Err(StoreError::Db("quota store unavailable".into())),
        }
    }

    /// Close the failed handle of generation `seen` and open the file
    /// again (rate-limited).
    fn reopen(&self, seen: u64) -> Result<(), StoreError> {
        let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
        if db.is_some() && self.handle_generation.load(Ordering::Acquire) != seen {
            // Another caller has reopened it meanwhile.
            return Ok(());
        }
        let mut last = self.reopened.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < REOPEN_PAUSE) {
            return Err(StoreError::Db(format!(
                "{}: the store failed (disk full?); retrying",
                self.path.display()
            )));
        }
        *last = Some(Instant::now());
        // The file lock is released only when the old handle is gone.
        if let Some(old) = db.take() {
            drop(old);
        }
        let fresh = open_db(&self.path).and_then(|d| {
            let w = d.begin_write().map_err(db_err)?;
            w.open_table(COUNTERS).map_err(db_err)?;
            w.commit().map_err(db_err)?;
            Ok(d)
        });
        match fresh {
            Ok(d) => {
                tracing::warn!(store = %self.path.display(), "quota store reopened after a failure");
                *db = Some(d);
                self.handle_generation.fetch_add(1, Ordering::AcqRel);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(store = %self.path.display(), error = %e, "quota store reopen failed");
                Err(e)
            }
        }
    }

    /// Fail while the last write failed, unless an empty commit (tried at
    /// most once per [`REOPEN_PAUSE`]) now succeeds.
    fn check_healthy(&self) -> Result<(), StoreError> {
        if !self.failing.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut last = self.probed.lock().unwrap_or_else(|e| e.into_inner());
        if !self.failing.load(Ordering::Acquire) {
            return Ok(());
        }
        if last.is_none_or(|t| t.elapsed() >= REOPEN_PAUSE) {
            *last = Some(Instant::now());
            let probe = if room_for_probe(&self.path) {
                Ok(())
            } else {
                Err(StoreError::Db("no room".into()))
            };
            let probe = probe.and_then(|()| {
                self.with_db(|db| {
                    let w = db.begin_write().map_err(db_err)?;
                    w.open_table(COUNTERS).map_err(db_err)?;
                    w.commit().map_err(db_err)
                })
            });
            if probe.is_ok() {
                tracing::warn!(store = %self.path.display(), "quota store writable again");
                self.failing.store(false, Ordering::Release);
                return Ok(());
            }
        }
        Err(StoreError::Db(format!(
            "{}: the last write failed (disk full?); usage unknown until a write succeeds",
            self.path.display()
        )))
    }

    /// Whether the store can be trusted for reads: an error while the last
    /// write failed (a full disk), unless a probe (at most once per
    /// [`REOPEN_PAUSE`]) finds it writable again. Readers that keep their
    /// own copy of this store's values (the shared usage mirror) ask this
    /// before they answer for a user this store owns.
    pub fn healthy(&self) -> Result<(), StoreError> {
        self.check_healthy()
    }

    /// Whether the last write failed (no probe; see [`UsageStore::healthy`]).
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// Turn versions on (shared usage): from now on every commit stamps its
    /// users with a version and `hook` is told about it once durable. Call
    /// before the first commit; a second call is refused.
    pub fn enable_versions(&self, hook: Arc<dyn CommitHook>) -> Result<(), StoreError> {
        let last = self.owned()?.iter().map(|p| p.version).max().unwrap_or(0);
        *self.clock.lock().unwrap_or_else(|e| e.into_inner()) = last;
        self.hook
            .set(hook)
            .map_err(|_| StoreError::Db("versions are already on".into()))
    }

    /// Every user this store owns (has a version for), with its current
    /// absolute usage: what an owner republishes after a reconnect, a
    /// restart or a loss of the shared store.
    pub fn owned(&self) -> Result<Vec<Published>, StoreError> {
        self.with_db(|db| {
            let r = db.begin_read().map_err(db_err)?;
            let c = r.open_table(COUNTERS).map_err(db_err)?;
            let mut out = Vec::new();
            for item in c.iter().map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                let (user, key) = k.value();
                if key != VERSION_KEY {
                    continue;
                }
                let get = |k: &str| -> Result<Option<i64>, StoreError> {
                    Ok(c.get((user, k)).map_err(db_err)?.map(|v| v.value()))
                };
                out.push(Published {
                    user: user.to_string(),
                    storage: get(CACHED_KEYS[0])?,
                    messages: get(CACHED_KEYS[1])?,
                    version: u64::try_from(v.value()).unwrap_or(0),
                });
            }
            Ok(out)
        })
    }

    /// Read a counter.
    pub fn get(&self, user: &str, key: &str) -> Result<Option<i64>, StoreError> {
        self.check_healthy()?;
        if key == VERSION_KEY {
            return Ok(None);
        }
        match CACHED_KEYS.iter().position(|k| *k == key) {
            Some(i) => Ok(self.counters(user)?[i]),
            None => self.read_db(user, &[key]).map(|v| v[0]),
        }
    }

    /// Both counters of `user` (`quota/storage`, `quota/messages`), from
    /// this thread's copy, else the shared read cache, else redb.
    pub fn counters(&self, user: &str) -> Result<[Option<i64>; 2], StoreError> {
        self.check_healthy()?;
        // Before any cache is read: an invalidation published after this
        // load is replayed at this thread's next read.
        let seq = self.invalidations.seq.load(Ordering::Acquire);
        LOCAL.with_borrow_mut(|local| {
            let h = user_hash(user);
            if let Some(c) = self.local_get(local, seq, h, user) {
                return Ok(c);
            }
            let c = self.shared_counters(user)?;
            if let Some(v) = to_local(c) {
                if local.users.len() >= LOCAL_MAX {
                    local.users.clear();
                }
                local
                    .users
                    .insert_unique(h, (crate::table::Key::new(user), v), |(key, _)| {
                        user_hash(key.as_str())
                    });
            }
            Ok(c)
        })
    }

    /// Both counters of `user` if this thread's copy has them.
    pub fn local_counters(&self, user: &str) -> Option<[Option<i64>; 2]> {
        if self.failing.load(Ordering::Acquire) {
            return None;
        }
        let seq = self.invalidations.seq.load(Ordering::Acquire);
        LOCAL.with_borrow_mut(|local| self.local_get(local, seq, user_hash(user), user))
    }

    /// Look `user` (hashed `h`) up in this thread's copy, after bringing it
    /// up to `seq`.
    fn local_get(&self, local: &mut Local, seq: u64, h: u64, user: &str) -> Option<Cached> {
        if local.store != self.id {
            local.users.clear();
            local.store = self.id;
            local.seen = seq;
        } else if local.seen != seq {
            self.invalidations.replay(local);
        }
        local
            .users
            .find(h, |(key, _)| key.as_bytes() == user.as_bytes())
            .map(|(_, v)| from_local(*v))
    }

    fn shared_counters(&self, user: &str) -> Result<[Option<i64>; 2], StoreError> {
        match self.cache.get(user) {
            Ok(c) => Ok(c),
            Err(version) => {
                let c = self.read_db(user, &CACHED_KEYS)?;
                let c = [c[0], c[1]];
                self.cache.insert(user, version, c);
                Ok(c)
            }
        }
    }

    fn read_db(&self, user: &str, keys: &[&str]) -> Result<Vec<Option<i64>>, StoreError> {
        self.with_db(|db| {
            let r = db.begin_read().map_err(db_err)?;
            let t = r.open_table(COUNTERS).map_err(db_err)?;
            keys.iter()
                .map(|k| Ok(t.get((user, *k)).map_err(db_err)?.map(|v| v.value())))
                .collect()
        })
    }

    /// Apply transactions in one durable write; one outcome per transaction.
    pub fn commit_batch(&self, txns: &[Txn]) -> Result<Vec<CommitOutcome>, StoreError> {
        let mut published = Vec::new();
        let r = self.write_batch(txns, &mut published);
        // Written only when it changes: readers load it on every check.
        if self.failing.load(Ordering::Relaxed) != r.is_err() {
            self.failing.store(r.is_err(), Ordering::Release);
        }
        match &r {
            Ok(_) => {
                if let Some(hook) = self.hook.get() {
                    hook.committed(published);
                }
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .transactions
                    .fetch_add(txns.len() as u64, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        // After the commit (or its failure, when what is on disk is not
        // known): the next read of these users goes to redb.
        for txn in txns {
            self.cache.invalidate(&txn.user);
        }
        self.invalidations
            .publish(txns.iter().map(|t| user_hash(&t.user)));
        r
    }

    fn write_batch(
        &self,
        txns: &[Txn],
        published: &mut Vec<Published>,
    ) -> Result<Vec<CommitOutcome>, StoreError> {
        // Held through the commit, so versions are handed out in commit
        // order (one writer thread in the daemon; tests may call directly).
        let mut clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        let (out, stamped, last) = self.with_db(|db| self.write_batch_to(db, txns, *clock))?;
        *clock = last;
        published.extend(stamped);
        Ok(out)
    }

    /// One write transaction for `txns`; with versions on, each changed
    /// user is stamped after `last` and returned for publishing.
    fn write_batch_to(
        &self,
        db: &Database,
        txns: &[Txn],
        mut last: u64,
    ) -> Result<(Vec<CommitOutcome>, Vec<Published>, u64), StoreError> {
        let mut published = Vec::new();
        let w = db.begin_write().map_err(db_err)?;
        let mut out = Vec::with_capacity(txns.len());
        {
            let mut t = w.open_table(COUNTERS).map_err(db_err)?;
            let hook = self.hook.get();
            for txn in txns {
                let mut outcome = CommitOutcome::Ok;
                let mut changed = false;
                // Shared usage: increments apply only to a value this host
                // owns. When another host published a newer value (the
                // user moved), this host's counters are old: `Inc` answers
                // NotFound so Dovecot recalculates and `Set`s the truth.
                let foreign = match hook {
                    Some(h) if txn.ops.iter().any(|o| matches!(o, Op::Inc(..))) => {
                        let mine = t
                            .get((txn.user.as_str(), VERSION_KEY))
                            .map_err(db_err)?
                            .map_or(0, |v| u64::try_from(v.value()).unwrap_or(0));
                        h.newer_elsewhere(&txn.user, mine)
                    }
                    _ => false,
                };
                // What this transaction left in the published counters
                // ([`CACHED_KEYS`] order; `None`: not touched), so that
                // publishing reads back only the ones it did not write.
                let mut known: [Option<Option<i64>>; 2] = [None, None];
                let slot = |k: &str| CACHED_KEYS.iter().position(|c| *c == k);
                for op in &txn.ops {
                    // The version is ramdir's own, never a client's to set.
                    if matches!(op, Op::Set(k, _) | Op::Unset(k) | Op::Inc(k, _) if k == VERSION_KEY)
                    {
                        continue;
                    }
                    match op {
                        Op::Set(k, v) => {
                            t.insert((txn.user.as_str(), k.as_str()), *v)
                                .map_err(db_err)?;
                            if let Some(i) = slot(k) {
                                known[i] = Some(Some(*v));
                            }
                            changed = true;
                        }
                        Op::Unset(k) => {
                            t.remove((txn.user.as_str(), k.as_str())).map_err(db_err)?;
                            if let Some(i) = slot(k) {
                                known[i] = Some(None);
                            }
                            changed = true;
                        }
                        Op::Inc(_, _) if foreign => outcome = CommitOutcome::NotFound,
                        Op::Inc(k, d) => {
                            let cur = t
                                .get((txn.user.as_str(), k.as_str()))
                                .map_err(db_err)?
                                .map(|v| v.value());
                            match cur {
                                Some(v) => {
                                    let v = v.saturating_add(*d);
                                    t.insert((txn.user.as_str(), k.as_str()), v)
                                        .map_err(db_err)?;
                                    if let Some(i) = slot(k) {
                                        known[i] = Some(Some(v));
                                    }
                                    changed = true;
                                }
                                None => {
                                    if let Some(i) = slot(k) {
                                        known[i] = Some(None);
                                    }
                                    outcome = CommitOutcome::NotFound;
                                }
                            }
                        }
                    }
                }
                out.push(outcome);
                // Only a change gets a version (and is published): an
                // increment refused above must not make this host's old
                // value the newest.
                if hook.is_some() && changed {
                    last = now_micros().max(last + 1);
                    let v = i64::try_from(last).map_err(db_err)?;
                    t.insert((txn.user.as_str(), VERSION_KEY), v)
                        .map_err(db_err)?;
                    let get = |i: usize| -> Result<Option<i64>, StoreError> {
                        match known[i] {
                            Some(v) => Ok(v),
                            None => Ok(t
                                .get((txn.user.as_str(), CACHED_KEYS[i]))
                                .map_err(db_err)?
                                .map(|v| v.value())),
                        }
                    };
                    published.push(Published {
                        user: txn.user.clone(),
                        storage: get(0)?,
                        messages: get(1)?,
                        version: last,
                    });
                }
            }
        }
        w.commit().map_err(db_err)?;
        Ok((out, published, last))
    }

    /// The commit counters.
    pub fn commit_stats(&self) -> &CommitStats {
        &self.stats
    }

    /// Every counter of `user` (for `explain` and tests).
    pub fn user_counters(&self, user: &str) -> Result<Vec<(String, i64)>, StoreError> {
        self.with_db(|db| {
            let r = db.begin_read().map_err(db_err)?;
            let t = r.open_table(COUNTERS).map_err(db_err)?;
            let mut out = Vec::new();
            for item in t.range((user, "")..).map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                let (u, key) = k.value();
                if u != user {
                    break;
                }
                if key == VERSION_KEY {
                    continue;
                }
                out.push((key.to_string(), v.value()));
            }
            Ok(out)
        })
    }
}

/// Microseconds since the Unix epoch (0 if the clock is before it).
fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// What the writer calls back with, once a commit is durable (or failed).
pub type Reply = Box<dyn FnOnce(Result<CommitOutcome, StoreError>) + Send>;

/// A group-commit writer thread in front of a [`UsageStore`].
#[derive(Debug, Clone)]
pub struct Writer {
    tx: mpsc::Sender<(Txn, Reply)>,
}

impl Writer {
    /// Start the writer thread for `store`.
    pub fn start(store: Arc<UsageStore>) -> Writer {
        let (tx, rx) = mpsc::channel::<(Txn, Reply)>();
        thread::Builder::new()
            .name("ramdir-usage".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(x) => batch.push(x),
                            Err(_) => break,
                        }
                    }
                    let (txns, replies): (Vec<Txn>, Vec<Reply>) = batch.into_iter().unzip();
                    match store.commit_batch(&txns) {
                        Ok(outcomes) => {
                            for (reply, o) in replies.into_iter().zip(outcomes) {
                                reply(Ok(o));
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "quota usage commit failed");
                            for reply in replies {
                                reply(Err(match &e {
                                    StoreError::Db(m) => StoreError::Db(m.clone()),
                                    StoreError::Closed => StoreError::Closed,
                                }));
                            }
                        }
                    }
                }
            })
            .expect("spawn quota usage writer");
        Writer { tx }
    }

    /// Queue a commit; `reply` runs once it is durable or has failed.
    pub fn commit(&self, txn: Txn, reply: Reply) {
        if let Err(mpsc::SendError((_, reply))) = self.tx.send((txn, reply)) {
            reply(Err(StoreError::Closed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{Usage, UsageSource};

    fn txn(user: &str, ops: Vec<Op>) -> Txn {
        Txn {
            user: user.into(),
            ops,
        }
    }

    #[test]
    fn inc_on_missing_counter_is_not_found_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = UsageStore::open(&dir.path().join("q.redb")).unwrap();
        let r = s
            .commit_batch(&[txn("a", vec![Op::Inc("quota/storage".into(), 100)])])
            .unwrap();
        assert_eq!(r, [CommitOutcome::NotFound]);
        assert_eq!(s.get("a", "quota/storage").unwrap(), None);
        let r = s
            .commit_batch(&[
                txn(
                    "a",
                    vec![
                        Op::Set("quota/storage".into(), 1000),
                        Op::Set("quota/messages".into(), 3),
                    ],
                ),
                txn(
                    "a",
                    vec![
                        Op::Inc("quota/storage".into(), -200),
                        Op::Inc("quota/messages".into(), 1),
                    ],
                ),
                txn("b", vec![Op::Set("quota/storage".into(), 7)]),
            ])
            .unwrap();
        assert_eq!(r, [CommitOutcome::Ok; 3]);
        assert_eq!(s.get("a", "quota/storage").unwrap(), Some(800));
        assert_eq!(
            s.user_counters("a").unwrap(),
            [("quota/messages".into(), 4), ("quota/storage".into(), 800)]
        );
        s.commit_batch(&[txn("a", vec![Op::Unset("quota/storage".into())])])
            .unwrap();
        assert_eq!(s.get("a", "quota/storage").unwrap(), None);
        assert_eq!(s.get("b", "quota/storage").unwrap(), Some(7));
        // Three group commits carrying five transactions.
        let st = s.commit_stats();
        assert_eq!(st.commits.load(Ordering::Relaxed), 3);
        assert_eq!(st.transactions.load(Ordering::Relaxed), 5);
        assert_eq!(st.failures.load(Ordering::Relaxed), 0);
    }

    fn set(s: &UsageStore, user: &str, v: i64) {
        s.commit_batch(&[txn(user, vec![Op::Set("quota/storage".into(), v)])])
            .unwrap();
    }

    #[test]
    fn each_threads_copy_follows_commits_made_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let s = UsageStore::open(&dir.path().join("q.redb")).unwrap();
        set(&s, "a", 1);
        set(&s, "b", 10);
        // This thread now holds both in its own copy.
        assert_eq!(s.counters("a").unwrap(), [Some(1), None]);
        assert_eq!(s.counters("b").unwrap(), [Some(10), None]);
        assert_eq!(
            s.peek("b"),
            Some(Usage {
                storage: Some(10),
                messages: None
            })
        );
        assert_eq!(s.peek("never-read"), None, "peek does not read redb");
        std::thread::scope(|t| {
            t.spawn(|| {
                assert_eq!(s.counters("a").unwrap(), [Some(1), None]);
                set(&s, "a", 2);
                assert_eq!(s.counters("a").unwrap(), [Some(2), None]);
            });
        });
        assert_eq!(s.counters("a").unwrap(), [Some(2), None], "replayed");
        assert_eq!(
            s.peek("a"),
            Some(Usage {
                storage: Some(2),
                messages: None
            })
        );
        assert_eq!(s.counters("b").unwrap(), [Some(10), None], "kept");
        // Fallen further behind than the log reaches: the copy is emptied.
        std::thread::scope(|t| {
            t.spawn(|| {
                set(&s, "b", 11);
                let others: Vec<Txn> = (0..LOG_LEN)
                    .map(|i| {
                        txn(
                            &format!("other{i}"),
                            vec![Op::Set("quota/storage".into(), 0)],
                        )
                    })
                    .collect();
                s.commit_batch(&others).unwrap();
            });
        });
        assert_eq!(s.peek("a"), None, "emptied");
        assert_eq!(s.counters("b").unwrap(), [Some(11), None]);
        assert_eq!(s.counters("a").unwrap(), [Some(2), None]);
        // A counter holding the copy's "no counter" mark stays exact.
        set(&s, "min", i64::MIN);
        for _ in 0..2 {
            assert_eq!(s.counters("min").unwrap(), [Some(i64::MIN), None]);
        }
        // Another store in the same thread never answers from this copy.
        let dir2 = tempfile::tempdir().unwrap();
        let s2 = UsageStore::open(&dir2.path().join("q.redb")).unwrap();
        assert_eq!(s2.counters("a").unwrap(), [None, None]);
        assert_eq!(s.counters("a").unwrap(), [Some(2), None]);
    }

    #[test]
    fn cached_reads_follow_commits() {
        let dir = tempfile::tempdir().unwrap();
        let s = UsageStore::open(&dir.path().join("q.redb")).unwrap();
        assert_eq!(s.counters("a").unwrap(), [None, None]);
        s.commit_batch(&[txn("a", vec![Op::Set("quota/storage".into(), 5)])])
            .unwrap();
        assert_eq!(s.counters("a").unwrap(), [Some(5), None]);
        s.commit_batch(&[txn("a", vec![Op::Inc("quota/storage".into(), 2)])])
            .unwrap();
        assert_eq!(s.get("a", "quota/storage").unwrap(), Some(7));
        s.commit_batch(&[txn("a", vec![Op::Unset("quota/storage".into())])])
            .unwrap();
        assert_eq!(s.get("a", "quota/storage").unwrap(), None);
        // A read that started before a commit does not cache its value.
        let version = s.cache.get("b").unwrap_err();
        s.commit_batch(&[txn("b", vec![Op::Set("quota/messages".into(), 1)])])
            .unwrap();
        s.cache.insert("b", version, [None, Some(0)]);
        assert_eq!(s.counters("b").unwrap(), [None, Some(1)]);
        // Keys outside the cache are read from redb.
        s.commit_batch(&[txn("a", vec![Op::Set("other".into(), 3)])])
            .unwrap();
        assert_eq!(s.get("a", "other").unwrap(), Some(3));
    }

    #[derive(Debug, Default)]
    struct Seen(Mutex<Vec<Published>>);
    impl CommitHook for Seen {
        fn committed(&self, users: Vec<Published>) {
            self.0.lock().unwrap().extend(users);
        }
        fn newer_elsewhere(&self, user: &str, _: u64) -> bool {
            user == "moved"
        }
    }

    #[test]
    fn increments_on_a_user_owned_elsewhere_are_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let s = UsageStore::open(&dir.path().join("q.redb")).unwrap();
        let seen = Arc::new(Seen::default());
        s.enable_versions(seen.clone()).unwrap();
        set(&s, "moved", 100);
        seen.0.lock().unwrap().clear();
        let r = s
            .commit_batch(&[txn("moved", vec![Op::Inc("quota/storage".into(), 5)])])
            .unwrap();
        assert_eq!(r, [CommitOutcome::NotFound]);
        assert_eq!(s.get("moved", "quota/storage").unwrap(), Some(100));
        assert!(seen.0.lock().unwrap().is_empty(), "nothing published");
        // Dovecot's recalculation sets the truth, which is published.
        set(&s, "moved", 70);
        assert_eq!(seen.0.lock().unwrap()[0].storage, Some(70));
    }

    #[test]
    fn versions_grow_and_survive_reopen_and_owned_lists_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("q.redb");
        let last;
        {
            let s = UsageStore::open(&p).unwrap();
            set(&s, "before", 1);
            let seen = Arc::new(Seen::default());
            s.enable_versions(seen.clone()).unwrap();
            assert!(s.enable_versions(seen.clone()).is_err());
            // A client cannot write the version.
            s.commit_batch(&[txn("x", vec![Op::Set(VERSION_KEY.into(), i64::MAX)])])
                .unwrap();
            assert_eq!(s.get("x", VERSION_KEY).unwrap(), None);
            seen.0.lock().unwrap().clear();
            s.commit_batch(&[
                txn(
                    "a",
                    vec![
                        Op::Set("quota/storage".into(), 10),
                        Op::Set("quota/messages".into(), 1),
                    ],
                ),
                txn("a", vec![Op::Inc("quota/storage".into(), 5)]),
                txn("b", vec![Op::Set("quota/storage".into(), 7)]),
            ])
            .unwrap();
            let seen = seen.0.lock().unwrap().clone();
            assert_eq!(seen.len(), 3);
            assert_eq!((seen[1].storage, seen[1].messages), (Some(15), Some(1)));
            assert!(seen[0].version < seen[1].version && seen[1].version < seen[2].version);
            last = seen[2].version;
            let owned = s.owned().unwrap();
            assert_eq!(owned.len(), 2, "only users changed with versions on");
            assert_eq!(owned[0].user, "a");
            assert_eq!(owned[0].version, seen[1].version);
            assert_eq!(owned[0].storage, Some(15));
            assert_eq!(
                s.user_counters("a").unwrap().len(),
                2,
                "the version is not shown"
            );
        }
        let s = UsageStore::open(&p).unwrap();
        let seen = Arc::new(Seen::default());
        s.enable_versions(seen.clone()).unwrap();
        set(&s, "a", 1);
        assert!(
            seen.0.lock().unwrap()[0].version > last,
            "the clock never goes back"
        );
    }

    #[test]
    fn committed_values_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/q.redb");
        {
            let s = UsageStore::open(&p).unwrap();
            s.commit_batch(&[txn("a", vec![Op::Set("quota/storage".into(), 42)])])
                .unwrap();
        }
        let s = UsageStore::open(&p).unwrap();
        assert_eq!(s.get("a", "quota/storage").unwrap(), Some(42));
    }

    #[test]
    fn a_damaged_or_truncated_store_is_an_error_never_empty_usage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("q.redb");
        {
            let s = UsageStore::open(&p).unwrap();
            for i in 0..200 {
                let u = format!("user{i}");
                s.commit_batch(&[txn(&u, vec![Op::Set("quota/storage".into(), 1000 + i)])])
                    .unwrap();
            }
        }
        let good = std::fs::read(&p).unwrap();
        let refused = |bytes: &[u8], what: &str| {
            std::fs::write(&p, bytes).unwrap();
            let e = UsageStore::open(&p).expect_err(what).to_string();
            assert!(e.contains("damaged"), "{what}: {e}");
        };
        refused(&[], "empty file");
        refused(&good[..good.len() / 2], "truncated to half");
        refused(
            &good[..4096.min(good.len())],
            "truncated to its header page",
        );
        refused(b"not a database at all\n", "foreign file");
        // Every page of the committed tree is checksummed: flip bytes in the
        // middle of the file (where the counters' pages are).
        let mut bad = good.clone();
        for b in &mut bad[good.len() / 2..good.len() / 2 + 64] {
            *b ^= 0x5a;
        }
        std::fs::write(&p, &bad).unwrap();
        match UsageStore::open(&p) {
            Err(e) => assert!(e.to_string().contains("damaged"), "{e}"),
            // The flipped bytes may lie in free space; then every counter
            // must still read back exactly.
            Ok(s) => {
                for i in 0..200 {
                    let u = format!("user{i}");
                    assert_eq!(s.get(&u, "quota/storage").unwrap(), Some(1000 + i));
                }
            }
        }
        // The intact file still opens with every value.
        std::fs::write(&p, &good).unwrap();
        let s = UsageStore::open(&p).unwrap();
        assert_eq!(s.get("user7", "quota/storage").unwrap(), Some(1007));
    }

    #[test]
    fn writer_answers_every_commit_after_it_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(UsageStore::open(&dir.path().join("q.redb")).unwrap());
        s.commit_batch(&[txn("u", vec![Op::Set("quota/storage".into(), 0)])])
            .unwrap();
        let w = Writer::start(s.clone());
        let (tx, rx) = mpsc::channel();
        for _ in 0..500 {
            let tx = tx.clone();
            w.commit(
                txn("u", vec![Op::Inc("quota/storage".into(), 2)]),
                Box::new(move |r| tx.send(r.unwrap()).unwrap()),
            );
        }
        for _ in 0..500 {
            assert_eq!(rx.recv().unwrap(), CommitOutcome::Ok);
        }
        assert_eq!(s.get("u", "quota/storage").unwrap(), Some(1000));
    }
}
