//! Quota usage shared across hosts through Redis (`[quota] shared`).
//!
//! One writer per user: the host whose Dovecot commits a user's usage (the
//! one its dict transactions reach) owns that user. Its local redb commit
//! stays the commit point; afterwards the owner **publishes** the user's
//! absolute usage with its version, and every host keeps a **mirror** of
//! all users' usage that its policy service and milter read
//! ([`ramdir_core::mirror`]). The failure semantics are in
//! docs/shared-usage.md.
//!
//! # Redis layout (all keys under `prefix`, default `ramdir:`)
//! - `epoch`: a random id set (`SET NX`) by the first host that finds it
//!   missing. It changes only when Redis lost its data (`FLUSHALL`, a
//!   restart without persistence, a failover to an empty replica): owners
//!   then republish everything they own and mirrors rescan.
//! - `u:<user>`: a hash `{b, m, v, h}`: bytes, messages (empty: no
//!   counter), version, owning host.
//! - `hosts`: the set of owners that published (added by [`PUT`]), and
//!   `owners`: a stream with one entry per owner added to it, so that a
//!   following mirror starts reading a new owner's stream at once.
//! - `feed:<host>`: one stream per owner, one entry per change it applied
//!   (`MAXLEN ~` [`FEED_MAXLEN`]), that the other hosts' mirrors follow
//!   with one `XREAD BLOCK` over all of them. An entry has one field: the
//!   user, whose value is `<v>,<b>,<m>` (the hash's fields; the owner is
//!   the stream's). One stream per owner, so an owner never reads back its
//!   own changes (its mirror has them from the commit), and one field
//!   instead of four: every entry costs Redis and every other host once.
//!
//! Every write goes through one Lua script ([`PUT`]): it refuses a batch
//! made for another epoch, and applies a user's value only if its version
//! is newer than the stored one, so a retry, a replay after `kill -9`, or a
//! republish never counts anything twice and never goes back in time.
//!
//! # Why no persistent outbox
//! What an owner has to publish is exactly its redb content: each user's
//! latest absolute value and version. So the queue of unpublished changes
//! is kept in memory, coalesced per user (only the latest value matters)
//! and bounded ([`MAX_PENDING`]; past it, a full republish from redb
//! replaces it). After a start, every reconnect and every loss of Redis's
//! data, the owner republishes all it owns from redb, which covers whatever
//! a crash or an outage left unsent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ramdir_core::mirror::{Entry, Mirror};
use ramdir_core::usage::{CommitHook, Published, UsageStore};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script, Value};
use tokio::sync::{Notify, watch};

use crate::config::SharedConfig;

/// Users waiting to be published, at most (about 100 bytes each). Past it
/// the queue is dropped and the owner republishes everything from redb,
/// which holds the same values.
pub const MAX_PENDING: usize = 1 << 20;

/// Users per script call: bounds the time one call holds Redis (Lua runs
/// alone) to well under a millisecond per batch.
const BATCH: usize = 256;

/// Approximate length of the change stream. A mirror that falls behind
/// by more is one that lost its connection, and it rescans anyway.
pub const FEED_MAXLEN: u64 = 100_000;

/// How long a mirror's `XREAD` blocks: each return refreshes the mirror's
/// freshness, so this must stay well below `stale_after_secs` (≥ 1 s).
const BLOCK_MS: u64 = 500;

/// How long the publisher waits after a commit woke it, so that the
/// commits of the next moment go to Redis in the same script call. Each
/// round (the wake-up, the script call, and every mirror's feed waking for
/// its entries, the owner's own included) costs about the same whatever
/// the number of users in it, and on the owner that fixed cost was most
/// of what publishing added to a commit (docs/benchmarks.md, "Shared
/// usage on Redis"); 20 ms makes it a few rounds per second under load
/// and stays far inside the 1 s propagation goal.
const GATHER: Duration = Duration::from_millis(20);

/// How often an idle owner checks that Redis still holds its data (the
/// epoch key), so a `FLUSHALL` heals within about this long.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Connect and reply timeouts (a blocking `XREAD` gets `BLOCK_MS` more).
const TIMEOUT: Duration = Duration::from_secs(3);

/// Wait before reconnecting after a failure, doubled up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The publishing script (see the module docs). KEYS: epoch, this
/// owner's feed, the hosts set, the owners stream, then one hash per
/// user; ARGV: epoch, host, feed length, then user, bytes, messages,
/// version per user. Versions are microseconds (< 2^53, exact as Lua
/// numbers). Returns how many users were applied.
const PUT: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('EPOCH the shared store lost its data')
end
local applied = 0
for i = 5, #KEYS do
  local j = 4 + (i - 5) * 4
  local user, b, m, v = ARGV[j], ARGV[j + 1], ARGV[j + 2], ARGV[j + 3]
  local cur = redis.call('HMGET', KEYS[i], 'v', 'h')
  local newer = true
  if cur[1] then
    local cv, nv = tonumber(cur[1]), tonumber(v)
    if cv > nv or (cv == nv and cur[2] >= ARGV[2]) then newer = false end
  end
  if newer then
    redis.call('HSET', KEYS[i], 'b', b, 'm', m, 'v', v, 'h', ARGV[2])
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*',
      user, v .. ',' .. b .. ',' .. m)
    applied = applied + 1
  end
end
if applied > 0 and redis.call('SADD', KEYS[3], ARGV[2]) == 1 then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', 'h', ARGV[2])
end
return applied
"#;

/// Counters of the shared usage (for logs and `[metrics]`).
#[derive(Debug, Default)]
pub struct Stats {
    /// Users applied in Redis by this owner (newer than what it held).
    pub published: AtomicU64,
    /// Script calls that failed (Redis down, timeout, lost data): their
    /// users stay queued.
    pub publish_failures: AtomicU64,
    /// Full republishes (start, reconnect, data loss, queue overflow).
    pub republishes: AtomicU64,
    /// Mirror full rescans.
    pub rescans: AtomicU64,
    /// Users committed here and not yet published.
    pub queued: AtomicU64,
    /// The publisher holds a working connection to Redis.
    pub publisher_connected: AtomicBool,
    /// The mirror's feed holds a working connection to Redis.
    pub feed_connected: AtomicBool,
}

/// The owner's queue: users committed but not yet published.
#[derive(Debug)]
struct Outbox {
    mirror: Arc<Mirror>,
    pending: Mutex<Pending>,
    wake: Notify,
    stats: Arc<Stats>,
}

#[derive(Debug, Default)]
struct Pending {
    users: HashMap<String, Published>,
    /// The queue overflowed: republish everything from redb.
    overflow: bool,
}

impl Pending {
    fn add(&mut self, p: Published) {
        if self.overflow {
            return;
        }
        let full = self.users.len() >= MAX_PENDING;
        match self.users.get_mut(&p.user) {
            Some(cur) if cur.version >= p.version => {}
            Some(cur) => *cur = p,
            None if full => {
                self.users.clear();
                self.overflow = true;
            }
            None => {
                self.users.insert(p.user.clone(), p);
            }
        }
    }
}

impl CommitHook for Outbox {
    fn committed(&self, users: Vec<Published>) {
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for u in users {
                // This host's own commits reach its mirror at once.
                self.mirror.apply(&u.user, entry(&u, self.mirror.host()));
                p.add(u);
            }
            self.stats
                .queued
                .store(p.users.len() as u64, Ordering::Relaxed);
        }
        self.wake.notify_one();
    }

    fn newer_elsewhere(&self, user: &str, mine: u64) -> bool {
        self.mirror
            .get(user)
            .is_some_and(|e| e.host != *self.mirror.host() && e.version > mine)
    }
}

fn entry(p: &Published, host: &Arc<str>) -> Entry {
    Entry {
        storage: p.storage,
        messages: p.messages,
        version: p.version,
        host: host.clone(),
    }
}

/// Shared usage, running: the mirror to read, the tasks to wait for.
#[derive(Debug)]
pub struct Shared {
    /// What the policy service and the milter read.
    pub mirror: Arc<Mirror>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// The publisher and the feed.
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Start shared usage for `store`: turn versions on, seed the mirror with
/// the users this host owns, and start the publisher and the feed.
pub fn start(
    cfg: &SharedConfig,
    store: Arc<UsageStore>,
    stop: watch::Receiver<bool>,
) -> Result<Shared, String> {
    let client =
        Client::open(cfg.url.as_str()).map_err(|e| format!("[quota] shared {:?}: {e}", cfg.url))?;
    let mirror = Arc::new(Mirror::new(&cfg.host_id, cfg.stale_after));
    // While the local store fails, this host's own users are answered
    // "temporary" (their published values may lag behind Dovecot's).
    mirror.set_local_store(store.clone());
    let stats = Arc::new(Stats::default());
    let outbox = Arc::new(Outbox {
        mirror: mirror.clone(),
        pending: Mutex::default(),
        wake: Notify::new(),
        stats: stats.clone(),
    });
    store
        .enable_versions(outbox.clone())
        .map_err(|e| format!("[quota] shared: {e}"))?;
    let owned = store.owned().map_err(|e| format!("[quota] shared: {e}"))?;
    for p in &owned {
        mirror.apply(&p.user, entry(p, mirror.host()));
    }
    tracing::info!(url = %cfg.url, host = %cfg.host_id, owned = owned.len(), "shared quota usage on");
    let keys = Keys::new(&cfg.prefix);
    let publisher = Publisher {
        client: client.clone(),
        keys: keys.clone(),
        host: cfg.host_id.clone(),
        feed: keys.feed(&cfg.host_id),
        store,
        outbox,
        stats: stats.clone(),
        script: Script::new(PUT),
    };
    let feed = Feed {
        client,
        keys,
        mirror: mirror.clone(),
        stats: stats.clone(),
    };
    let tasks = vec![
        tokio::spawn(publisher.run(stop.clone())),
        tokio::spawn(feed.run(stop)),
    ];
    Ok(Shared {
        mirror,
        stats,
        tasks,
    })
}

#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
    epoch: String,
    hosts: String,
    owners: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.into(),
            epoch: format!("{prefix}epoch"),
            hosts: format!("{prefix}hosts"),
            owners: format!("{prefix}owners"),
        }
    }

    fn user(&self, user: &str) -> String {
        format!("{}u:{user}", self.prefix)
    }

    /// The change stream of the owner `host`.
    fn feed(&self, host: &str) -> String {
        format!("{}feed:{host}", self.prefix)
    }
}

/// Why a round with Redis ended.
#[derive(Debug)]
enum Failure {
    /// Redis failed or is unreachable: reconnect.
    Redis(redis::RedisError),
    /// Redis lost its data (epoch changed): republish or rescan.
    Epoch,
    /// The local store failed.
    Store(String),
}

impl From<redis::RedisError> for Failure {
    fn from(e: redis::RedisError) -> Self {
        if e.to_string().contains("EPOCH") {
            Failure::Epoch
        } else {
            Failure::Redis(e)
        }
    }
}

async fn connect(client: &Client, extra: Duration) -> redis::RedisResult<MultiplexedConnection> {
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT + extra));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

/// The current epoch, set first if missing (Redis is new or lost its data).
async fn epoch(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    host: &str,
) -> Result<String, Failure> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mine = format!("{host}-{}-{nanos}", std::process::id());
    let (_, cur): (Value, Option<String>) = redis::pipe()
        .cmd("SET")
        .arg(&keys.epoch)
        .arg(&mine)
        .arg("NX")
        .cmd("GET")
        .arg(&keys.epoch)
        .query_async(conn)
        .await?;
    cur.ok_or_else(|| {
        Failure::Redis(redis::RedisError::from((
            redis::ErrorKind::Client,
            "epoch key vanished",
        )))
    })
}

/// The id of the last entry of stream `key` (`0-0` when empty or missing).
async fn tip(conn: &mut MultiplexedConnection, key: &str) -> Result<String, Failure> {
    let tip: Vec<(String, Vec<String>)> = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(tip
        .into_iter()
        .next()
        .map_or_else(|| "0-0".to_string(), |(id, _)| id))
}

async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.changed() => true,
    }
}

struct Publisher {
    client: Client,
    keys: Keys,
    host: String,
    /// This owner's stream (`Keys::feed`).
    feed: String,
    store: Arc<UsageStore>,
    outbox: Arc<Outbox>,
    stats: Arc<Stats>,
    script: Script,
}

impl Publisher {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            if *stop.borrow() {
                return;
            }
            let r = self.session(&mut stop).await;
            self.stats
                .publisher_connected
                .store(false, Ordering::Relaxed);
            match r {
                Ok(()) => return,
                Err(Failure::Redis(e)) => {
                    tracing::warn!(error = %e, "shared usage: Redis unreachable; commits stay queued");
                }
                Err(Failure::Store(e)) => {
                    tracing::warn!(error = %e, "shared usage: reading the local store failed");
                }
                Err(Failure::Epoch) => {
                    backoff = BACKOFF_MIN;
                    continue;
                }
            }
            if sleep_or_stop(backoff, &mut stop).await {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection: republish everything owned, then publish changes as
    /// they come, checking the epoch when idle. Ends on stop (`Ok`) or a
    /// failure.
    async fn session(&self, stop: &mut watch::Receiver<bool>) -> Result<(), Failure> {
        let mut conn = connect(&self.client, Duration::ZERO).await?;
        let epoch = epoch(&mut conn, &self.keys, &self.host).await?;
        self.republish(&mut conn, &epoch).await?;
        self.stats
            .publisher_connected
            .store(true, Ordering::Relaxed);
        loop {
            let woke = tokio::select! {
                _ = self.outbox.wake.notified() => true,
                _ = tokio::time::sleep(CHECK_EVERY) => false,
                _ = stop.changed() => {
                    // Send what is queued before leaving (best effort).
                    let _ = self.flush(&mut conn, &epoch).await;
                    return Ok(());
                }
            };
            if woke {
                tokio::time::sleep(GATHER).await;
            } else {
                let cur: Option<String> = redis::cmd("GET")
                    .arg(&self.keys.epoch)
                    .query_async(&mut conn)
                    .await?;
                if cur.as_deref() != Some(epoch.as_str()) {
                    tracing::warn!(
                        "shared usage: Redis lost its data; republishing every owned user"
                    );
                    return Err(Failure::Epoch);
                }
            }
            self.flush(&mut conn, &epoch).await?;
        }
    }

    /// Publish the queued users; on failure they are queued again (unless a
    /// newer value was queued meanwhile).
    async fn flush(&self, conn: &mut MultiplexedConnection, epoch: &str) -> Result<(), Failure> {
        let (users, overflow) = {
            let mut p = self
                .outbox
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let overflow = std::mem::take(&mut p.overflow);
            (std::mem::take(&mut p.users), overflow)
        };
        if overflow {
            tracing::warn!(
                max = MAX_PENDING,
                "shared usage: queue overflowed; republishing from the store"
            );
            return self.republish(conn, epoch).await;
        }
        let users: Vec<Published> = users.into_values().collect();
        for (i, chunk) in users.chunks(BATCH).enumerate() {
            if let Err(e) = self.put(conn, epoch, chunk).await {
                let mut p = self
                    .outbox
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                for u in &users[i * BATCH..] {
                    p.add(u.clone());
                }
                self.stats
                    .queued
                    .store(p.users.len() as u64, Ordering::Relaxed);
                return Err(e);
            }
        }
        let p = self
            .outbox
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.stats
            .queued
            .store(p.users.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Republish every user this host owns, from redb.
    async fn republish(
        &self,
        conn: &mut MultiplexedConnection,
        epoch: &str,
    ) -> Result<(), Failure> {
        // Whatever is queued is in redb too (committed before queued).
        {
            let mut p = self
                .outbox
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            p.users.clear();
            p.overflow = false;
            self.stats.queued.store(0, Ordering::Relaxed);
        }
        let store = self.store.clone();
        let owned = tokio::task::spawn_blocking(move || store.owned())
            .await
            .map_err(|e| Failure::Store(e.to_string()))?
            .map_err(|e| Failure::Store(e.to_string()))?;
        let before = self.stats.published.load(Ordering::Relaxed);
        for chunk in owned.chunks(BATCH) {
            self.put(conn, epoch, chunk).await?;
        }
        self.stats.republishes.fetch_add(1, Ordering::Relaxed);
        let applied = self.stats.published.load(Ordering::Relaxed) - before;
        tracing::info!(
            owned = owned.len(),
            applied,
            "shared usage: republished every owned user"
        );
        Ok(())
    }

    async fn put(
        &self,
        conn: &mut MultiplexedConnection,
        epoch: &str,
        users: &[Published],
    ) -> Result<(), Failure> {
        let mut inv = self.script.prepare_invoke();
        inv.key(&self.keys.epoch)
            .key(&self.feed)
            .key(&self.keys.hosts)
            .key(&self.keys.owners);
        inv.arg(epoch).arg(&self.host).arg(FEED_MAXLEN);
        for u in users {
            inv.key(self.keys.user(&u.user));
            inv.arg(&u.user)
                .arg(counter(u.storage))
                .arg(counter(u.messages))
                .arg(u.version);
        }
        let applied: u64 = match inv.invoke_async(conn).await {
            Ok(n) => n,
            Err(e) => {
                self.stats.publish_failures.fetch_add(1, Ordering::Relaxed);
                return Err(e.into());
            }
        };
        self.stats.published.fetch_add(applied, Ordering::Relaxed);
        Ok(())
    }
}

/// A user's hash `{b, m, v, h}` as a mirror entry; `None` when it lacks
/// a version or an owner (not written by [`PUT`]).
fn entry_of_hash(h: &HashMap<String, String>) -> Option<Entry> {
    let (Some(v), Some(host)) = (h.get("v").and_then(|v| v.parse().ok()), h.get("h")) else {
        return None;
    };
    Some(Entry {
        storage: parse_counter(h.get("b")),
        messages: parse_counter(h.get("m")),
        version: v,
        host: host.as_str().into(),
    })
}

/// The value Redis holds for `user`, which every host's mirror converges
/// to (`ramdir query quota`); `Ok(None)` when no host published the user.
/// One short-lived connection, with the daemon's timeouts.
///
/// # Errors
/// Redis unreachable or failing, in words for the operator.
pub fn read_entry(cfg: &SharedConfig, user: &str) -> Result<Option<Entry>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    rt.block_on(async {
        let fail = |e: redis::RedisError| format!("Redis {}: {e}", cfg.url);
        let client = Client::open(cfg.url.as_str()).map_err(fail)?;
        let mut conn = connect(&client, Duration::ZERO).await.map_err(fail)?;
        let h: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(Keys::new(&cfg.prefix).user(user))
            .query_async(&mut conn)
            .await
            .map_err(fail)?;
        Ok(entry_of_hash(&h))
    })
}

/// A counter as stored in Redis: empty when it does not exist.
fn counter(v: Option<i64>) -> String {
    v.map_or_else(String::new, |v| v.to_string())
}

fn parse_counter(s: Option<&String>) -> Option<i64> {
    s.and_then(|s| s.parse().ok())
}

struct Feed {
    client: Client,
    keys: Keys,
    mirror: Arc<Mirror>,
    stats: Arc<Stats>,
}

/// An owner's stream that a mirror follows.
struct Followed {
    /// `Keys::feed` of the owner.
    key: String,
    /// The owner, shared by the entries its stream brings.
    host: Arc<str>,
    /// The last entry read (`0-0`: none yet).
    last: String,
}

/// `XREAD` reply: per stream, its entries (id, field/value list).
type XRead = Option<Vec<(String, Vec<(String, Vec<String>)>)>>;

impl Feed {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            if *stop.borrow() {
                return;
            }
            let r = tokio::select! {
                r = self.session() => r,
                _ = stop.changed() => return,
            };
            self.stats.feed_connected.store(false, Ordering::Relaxed);
            match r {
                Failure::Epoch => {
                    backoff = BACKOFF_MIN;
                    continue;
                }
                Failure::Redis(e) => {
                    tracing::warn!(error = %e, age = ?self.mirror.age(), "shared usage: mirror out of touch with Redis; keeping the last values");
                }
                Failure::Store(e) => tracing::warn!(error = %e, "shared usage mirror"),
            }
            if sleep_or_stop(backoff, &mut stop).await {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection: rescan everything, then follow the feed until
    /// something fails or the epoch changes.
    async fn session(&self) -> Failure {
        match self.follow().await {
            Ok(never) => match never {},
            Err(f) => f,
        }
    }

    async fn follow(&self) -> Result<std::convert::Infallible, Failure> {
        let mut conn = connect(&self.client, Duration::from_millis(BLOCK_MS)).await?;
        let epoch = epoch(&mut conn, &self.keys, self.mirror.host()).await?;
        // The streams' tips before the scan: whatever changes during the
        // scan is read from the feeds afterwards (applying twice is
        // harmless). The owners stream first, so that an owner added
        // during the scan is followed from its stream's start.
        let mut owners_last = tip(&mut conn, &self.keys.owners).await?;
        let hosts: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&self.keys.hosts)
            .query_async(&mut conn)
            .await?;
        let mut streams = Vec::new();
        for host in hosts {
            if let Some(s) = self.stream(&host) {
                let last = tip(&mut conn, &s.key).await?;
                streams.push(Followed { last, ..s });
            }
        }
        let n = self.rescan(&mut conn).await?;
        self.stats.rescans.fetch_add(1, Ordering::Relaxed);
        self.mirror.mark_fresh();
        self.stats.feed_connected.store(true, Ordering::Relaxed);
        tracing::info!(
            users = n,
            mirror = self.mirror.len(),
            owners = streams.len(),
            "shared usage: mirror rescanned"
        );
        loop {
            let mut p = redis::pipe();
            p.cmd("GET").arg(&self.keys.epoch);
            p.cmd("XREAD")
                .arg("COUNT")
                .arg(1000)
                .arg("BLOCK")
                .arg(BLOCK_MS)
                .arg("STREAMS")
                .arg(&self.keys.owners);
            for s in &streams {
                p.arg(&s.key);
            }
            p.arg(&owners_last);
            for s in &streams {
                p.arg(&s.last);
            }
            let (cur, read): (Option<String>, XRead) = p.query_async(&mut conn).await?;
            if cur.as_deref() != Some(epoch.as_str()) {
                tracing::warn!("shared usage: Redis lost its data; rescanning");
                return Err(Failure::Epoch);
            }
            for (key, entries) in read.into_iter().flatten() {
                if key == self.keys.owners {
                    // A new owner: all its stream is new here.
                    for (id, fields) in entries {
                        if let [_, host] = &fields[..]
                            && !streams.iter().any(|s| *s.host == **host)
                            && let Some(s) = self.stream(host)
                        {
                            streams.push(s);
                        }
                        owners_last = id;
                    }
                } else if let Some(s) = streams.iter_mut().find(|s| s.key == key) {
                    for (id, fields) in entries {
                        self.apply_fields(&fields, &s.host);
                        s.last = id;
                    }
                }
            }
            self.mirror.mark_fresh();
        }
    }

    /// The stream to follow for owner `host`, from its start; `None` for
    /// this host (its own changes reach its mirror at commit time).
    fn stream(&self, host: &str) -> Option<Followed> {
        (host != &**self.mirror.host()).then(|| Followed {
            key: self.keys.feed(host),
            host: host.into(),
            last: "0-0".into(),
        })
    }

    /// Read every user's hash into the mirror (newer versions win).
    async fn rescan(&self, conn: &mut MultiplexedConnection) -> Result<usize, Failure> {
        let pattern = format!("{}u:*", self.keys.prefix);
        let mut cursor: u64 = 0;
        let mut n = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await?;
            if !keys.is_empty() {
                let mut p = redis::pipe();
                for k in &keys {
                    p.cmd("HGETALL").arg(k);
                }
                let hashes: Vec<HashMap<String, String>> = p.query_async(conn).await?;
                let user_of = |k: &str| k[self.keys.prefix.len() + 2..].to_string();
                for (k, h) in keys.iter().zip(hashes) {
                    if self.apply_hash(&user_of(k), &h) {
                        n += 1;
                    }
                }
            }
            if next == 0 {
                return Ok(n);
            }
            cursor = next;
        }
    }

    fn apply_hash(&self, user: &str, h: &HashMap<String, String>) -> bool {
        let Some(e) = entry_of_hash(h) else {
            return false;
        };
        self.mirror.apply(user, e);
        true
    }

    /// Apply one entry of `host`'s feed: `[user, "<v>,<b>,<m>"]`.
    fn apply_fields(&self, fields: &[String], host: &Arc<str>) {
        let [user, value] = fields else {
            return;
        };
        let mut parts = value.splitn(3, ',');
        let (Some(v), Some(b), Some(m)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        let Ok(v) = v.parse() else {
            return;
        };
        self.mirror.apply(
            user,
            Entry {
                storage: b.parse().ok(),
                messages: m.parse().ok(),
                version: v,
                host: host.clone(),
            },
        );
    }
}
