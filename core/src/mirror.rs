//! The in-memory mirror of shared quota usage: every user's absolute usage
//! as its owning host last published it, read by the policy service and the
//! milter when `[quota] shared` is on.
//!
//! The mirror is fed from two sides (the I/O is in `ramdir/src/shared.rs`):
//! this host's own durable commits (the users it owns, at once) and the
//! shared store (Redis: a full scan after every (re)connect, then its change
//! stream). Values are versioned (see [`crate::usage`]): an entry is
//! replaced only by a higher version, so the order in which the two sides
//! deliver, replays and rescans never matter.
//!
//! # Staleness
//! The feed marks the mirror fresh after every successful round trip to
//! the shared store. A user whose value came from another host is **stale**
//! once the mirror has not been refreshed for `stale_after`: its owner may
//! have written since. An over-quota decision on a stale user only defers
//! ([`crate::check::Verdict::OverQuotaStale`]). Users this host owns are
//! never stale: their value here is the durable local commit itself.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use crate::check::{Usage, UsageSource};
use crate::usage::{StoreError, UsageStore};

/// Shards of the map: an update locks one shard, so readers of other users
/// never wait for it.
const SHARDS: usize = 64;

/// One user's shared usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Bytes, if the counter exists.
    pub storage: Option<i64>,
    /// Messages, if the counter exists.
    pub messages: Option<i64>,
    /// The owner's version of this value.
    pub version: u64,
    /// The owning host's id.
    pub host: Arc<str>,
}

/// The mirror (see the module docs).
#[derive(Debug)]
pub struct Mirror {
    host: Arc<str>,
    hasher: foldhash::fast::FixedState,
    shards: Vec<RwLock<HashMap<Box<str>, Entry, foldhash::fast::FixedState>>>,
    start: Instant,
    /// Milliseconds after `start` of the last refresh, plus one (0: never).
    fresh_at: AtomicU64,
    stale_after: Duration,
    /// See [`Mirror::set_local_store`].
    local: OnceLock<Arc<UsageStore>>,
}

impl Mirror {
    /// A mirror for host `host` (this host's id), stale after `stale_after`
    /// without a refresh. It starts stale.
    pub fn new(host: &str, stale_after: Duration) -> Mirror {
        Mirror {
            host: host.into(),
            hasher: foldhash::fast::FixedState::default(),
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            start: Instant::now(),
            fresh_at: AtomicU64::new(0),
            stale_after,
            local: OnceLock::new(),
        }
    }

    /// This host's id.
    pub fn host(&self) -> &Arc<str> {
        &self.host
    }

    fn shard(&self, user: &str) -> &RwLock<HashMap<Box<str>, Entry, foldhash::fast::FixedState>> {
        &self.shards[self.hasher.hash_one(user) as usize % SHARDS]
    }

    /// Apply `entry` for `user` if it is newer than what the mirror holds
    /// (higher version; at an equal version the higher host id, so every
    /// mirror picks the same one). Returns whether it was applied.
    pub fn apply(&self, user: &str, entry: Entry) -> bool {
        let mut s = self.shard(user).write().unwrap_or_else(|e| e.into_inner());
        match s.get_mut(user) {
            Some(cur) => {
                if (entry.version, &*entry.host) > (cur.version, &*cur.host) {
                    *cur = entry;
                    true
                } else {
                    false
                }
            }
            None => {
                s.insert(user.into(), entry);
                true
            }
        }
    }

    /// The entry of `user`.
    pub fn get(&self, user: &str) -> Option<Entry> {
        let s = self.shard(user).read().unwrap_or_else(|e| e.into_inner());
        s.get(user).cloned()
    }

    /// Users in the mirror.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Whether the mirror holds no user.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The feed has just heard from the shared store.
    pub fn mark_fresh(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.fresh_at.store(ms.saturating_add(1), Ordering::Release);
    }

    /// Whether the feed has heard from the shared store within
    /// `stale_after`.
    pub fn is_fresh(&self) -> bool {
        let at = self.fresh_at.load(Ordering::Acquire);
        if at == 0 {
            return false;
        }
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        now.saturating_sub(at - 1)
            <= u64::try_from(self.stale_after.as_millis()).unwrap_or(u64::MAX)
    }

    /// When the feed last heard from the shared store (`None`: never).
    pub fn refreshed(&self) -> Option<std::time::SystemTime> {
        self.age()
            .and_then(|a| std::time::SystemTime::now().checked_sub(a))
    }

    /// The store whose users this host owns: while it fails (a full disk),
    /// the values this host published for its own users may lag behind
    /// what Dovecot counted, so they are answered "temporary" like the
    /// single-host path does, not from the mirror. Set once at start.
    pub fn set_local_store(&self, store: Arc<UsageStore>) {
        let _ = self.local.set(store);
    }

    /// Whether `entry` (the mirror's value for a user, if any) must come
    /// from the local store's health: the user is owned here, or unknown
    /// (its first commit here may be the one that failed).
    fn local_user(&self, entry: Option<&Entry>) -> bool {
        entry.is_none_or(|e| e.host == self.host)
    }

    /// How long since the last refresh (`None`: never refreshed).
    pub fn age(&self) -> Option<Duration> {
        let at = self.fresh_at.load(Ordering::Acquire);
        (at != 0).then(|| {
            self.start
                .elapsed()
                .saturating_sub(Duration::from_millis(at - 1))
        })
    }
}

impl UsageSource for Mirror {
    fn usage(&self, login: &str) -> Result<Usage, StoreError> {
        let (usage, local) = {
            let s = self.shard(login).read().unwrap_or_else(|e| e.into_inner());
            let e = s.get(login);
            (usage_of(e), self.local_user(e))
        };
        // Outside the shard lock: a failing store's probe writes.
        if let (true, Some(store)) = (local, self.local.get()) {
            store.healthy()?;
        }
        Ok(usage)
    }

    fn peek(&self, login: &str) -> Option<Usage> {
        let s = self.shard(login).read().unwrap_or_else(|e| e.into_inner());
        let e = s.get(login);
        if self.local_user(e) && self.local.get().is_some_and(|st| st.is_failing()) {
            return None;
        }
        Some(usage_of(e))
    }

    fn stale(&self, login: &str) -> bool {
        if self.is_fresh() {
            return false;
        }
        let s = self.shard(login).read().unwrap_or_else(|e| e.into_inner());
        s.get(login).is_none_or(|e| e.host != self.host)
    }
}

fn usage_of(e: Option<&Entry>) -> Usage {
    e.map_or_else(Usage::default, |e| Usage {
        storage: e.storage,
        messages: e.messages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{Verdict, check_recipient};
    use crate::model::{Settings, UserSpec};
    use crate::quota::QuotaLimit;
    use crate::{Directory, check::Grace};

    fn entry(b: i64, v: u64, host: &str) -> Entry {
        Entry {
            storage: Some(b),
            messages: Some(1),
            version: v,
            host: host.into(),
        }
    }

    #[test]
    fn newer_versions_win_whatever_the_order() {
        let m = Mirror::new("a", Duration::from_secs(30));
        assert!(m.apply("u", entry(10, 5, "b")));
        assert!(!m.apply("u", entry(99, 4, "b")), "older");
        assert!(!m.apply("u", entry(99, 5, "b")), "replay");
        assert!(m.apply("u", entry(20, 5, "c")), "tie: higher host");
        assert!(m.apply("u", entry(30, 6, "a")));
        assert_eq!(m.get("u").unwrap().storage, Some(30));
        assert_eq!(m.len(), 1);
        assert_eq!(m.usage("nobody").unwrap(), Usage::default(), "untracked");
    }

    fn dir() -> Directory {
        let mut d = Directory::new(Settings::default());
        for login in ["mine@x.org", "theirs@x.org"] {
            d.insert_user(&UserSpec {
                login: login.into(),
                quota: Some(QuotaLimit {
                    storage: Some(1000),
                    messages: None,
                }),
                ..Default::default()
            });
        }
        d
    }

    #[test]
    fn over_quota_on_stale_usage_only_defers() {
        let d = dir();
        let m = Mirror::new("a", Duration::from_secs(3600));
        m.apply("mine@x.org", entry(5000, 1, "a"));
        m.apply("theirs@x.org", entry(5000, 1, "b"));
        // Never refreshed: another host's value is stale, our own is not.
        assert!(m.stale("theirs@x.org") && !m.stale("mine@x.org"));
        let g = Grace::Percent(0);
        assert!(matches!(
            check_recipient(&d, &m, g, "theirs@x.org", 1),
            Verdict::OverQuotaStale { .. }
        ));
        assert!(matches!(
            check_recipient(&d, &m, g, "mine@x.org", 1),
            Verdict::OverQuota { .. }
        ));
        m.mark_fresh();
        assert!(m.is_fresh() && !m.stale("theirs@x.org"));
        assert!(matches!(
            check_recipient(&d, &m, g, "theirs@x.org", 1),
            Verdict::OverQuota { .. }
        ));
        // Fresh only for a moment.
        let m = Mirror::new("a", Duration::ZERO);
        m.apply("theirs@x.org", entry(5000, 1, "b"));
        m.mark_fresh();
        std::thread::sleep(Duration::from_millis(5));
        assert!(m.stale("theirs@x.org"));
        assert!(m.age().unwrap() >= Duration::from_millis(5));
    }
}
