//! The directory snapshot and the handle readers load it from.
//!
//! A [`Directory`] is immutable once published. Readers call
//! [`DirectoryHandle::snapshot`] exactly once per request and never wait for
//! a writer (arc-swap's "consistent snapshot" pattern). Writers either build
//! a whole new directory aside and [`DirectoryHandle::replace`] it (file
//! reloads, LDAP full loads) or [`DirectoryHandle::update`] the current one:
//! the update clones the snapshot (cheap, see [`crate::table`]), applies any
//! number of edits and publishes the result in one atomic store, so a moved
//! alias is never briefly missing.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::model::{PackedUser, Settings, User, UserSpec};
#[cfg(test)]
use crate::quota::QuotaLimit;
use crate::table::Table;

/// What a domain is to us.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DomainInfo {
    /// Listed explicitly by a domain source.
    pub explicit: bool,
    /// Users and aliases in this domain (a domain with any is ours).
    pub refs: u32,
}

/// One entry that differs between two snapshots ([`Directory::diff`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    /// A user login that appeared (`true`) or disappeared (`false`). Other
    /// user fields are not lookup-table data and are not reported.
    User(&'a str, bool),
    /// An alias key with its new targets, `None` when removed.
    Alias(&'a str, Option<&'a [Box<str>]>),
    /// A sender-login key with its new logins, `None` when removed.
    Sender(&'a str, Option<&'a [Box<str>]>),
    /// A domain that became ours (`true`) or stopped being ours.
    Domain(&'a str, bool),
    /// An address claimed by several entries, with its new claim count;
    /// `None` when it stopped being ambiguous.
    Ambiguous(&'a str, Option<u32>),
}

/// Where a snapshot came from and when, for `stats` and logs.
#[derive(Debug, Clone)]
pub struct Meta {
    /// Increases with every published snapshot.
    pub generation: u64,
    /// When this snapshot was published.
    pub published: SystemTime,
    /// Human description of the sources (`3 files`, `ldap://…`).
    pub source: Arc<str>,
    /// Whether a miss is a real "not found". False while an LDAP source has
    /// not completed its first load or has lost its sync for too long: then
    /// a miss must be looked up at the source or answered "temporary".
    pub authoritative: bool,
    /// Why the directory is not authoritative (for `stats` and logs).
    pub note: Option<Arc<str>>,
}

/// An immutable view of all users, aliases, sender logins and domains.
#[derive(Debug, Clone)]
pub struct Directory {
    settings: Arc<Settings>,
    users: Table<PackedUser>,
    aliases: Table<Box<[Box<str>]>>,
    senders: Table<Box<[Box<str>]>>,
    domains: Table<DomainInfo>,
    /// Addresses that more than one source entry claims, with the number
    /// of claims. Such an address is neither a mailbox nor an alias here:
    /// every lookup that reaches it is a directory error ("temporary"),
    /// never another entry's data.
    ambiguous: Table<u32>,
    meta: Meta,
}

/// Sizes, for `stats` and load logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Mailboxes.
    pub users: usize,
    /// Alias keys (catch-alls included).
    pub aliases: usize,
    /// Sender-login keys.
    pub senders: usize,
    /// Domains.
    pub domains: usize,
    /// Ambiguous addresses (claimed by more than one entry).
    pub ambiguous: usize,
}

impl Directory {
    /// An empty directory.
    pub fn new(settings: Settings) -> Directory {
        Directory {
            settings: Arc::new(settings),
            users: Table::new(),
            aliases: Table::new(),
            senders: Table::new(),
            domains: Table::new(),
            ambiguous: Table::new(),
            meta: Meta {
                generation: 0,
                published: SystemTime::now(),
                source: "empty".into(),
                authoritative: true,
                note: None,
            },
        }
    }

    /// The lookup settings of this snapshot.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Provenance of this snapshot.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Describe the sources of this snapshot.
    pub fn set_source(&mut self, source: &str) {
        self.meta.source = source.into();
    }

    /// Whether a miss in this snapshot is a real "not found".
    pub fn authoritative(&self) -> bool {
        self.meta.authoritative
    }

    /// Mark the snapshot (not) authoritative, with the reason when not.
    pub fn set_authoritative(&mut self, authoritative: bool, note: Option<&str>) {
        self.meta.authoritative = authoritative;
        self.meta.note = note.map(Into::into);
    }

    /// Sizes.
    pub fn counts(&self) -> Counts {
        Counts {
            users: self.users.len(),
            aliases: self.aliases.len(),
            senders: self.senders.len(),
            domains: self.domains.len(),
            ambiguous: self.ambiguous.len(),
        }
    }

    /// The user whose canonical login is exactly `login` (already folded).
    pub fn user(&self, login: &str) -> Option<User<'_>> {
        let (k, v) = self.users.get_key_value(login)?;
        Some(v.view(k, &self.settings))
    }

    /// The table's own copy of a login, if a user with exactly this login
    /// exists.
    pub fn user_key(&self, login: &str) -> Option<&str> {
        self.users.get_key_value(login).map(|(k, _)| k)
    }

    /// The table's own copy of a login with the user's effective limit
    /// and own grace, without building the [`User`] (the SMTP-time checks'
    /// path).
    pub fn user_key_quota(&self, login: &str) -> Option<(&str, crate::quota::UserQuota)> {
        self.users
            .get_key_value(login)
            .map(|(k, v)| (k, v.quota(&self.settings)))
    }

    /// Whether a user with exactly this login exists.
    pub fn has_user(&self, login: &str) -> bool {
        self.users.contains_key(login)
    }

    /// All users' logins (iteration order is unspecified).
    pub fn logins(&self) -> impl Iterator<Item = &str> {
        self.users.iter().map(|(k, _)| k)
    }

    /// Targets of the alias stored under exactly `key` (`a@x` or `@x`).
    pub fn alias(&self, key: &str) -> Option<&[Box<str>]> {
        self.aliases.get(key).map(|b| &**b)
    }

    /// Explicit sender logins stored under exactly `key`.
    pub fn sender_logins(&self, key: &str) -> Option<&[Box<str>]> {
        self.senders.get(key).map(|b| &**b)
    }

    /// Whether `domain` (folded) is ours.
    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains
            .get(domain)
            .is_some_and(|d| d.explicit || d.refs > 0)
    }

    fn domain_ref(&mut self, key: &str, delta: i32) {
        let Some(domain) = key.rsplit_once('@').map(|(_, d)| d) else {
            return;
        };
        if domain.is_empty() {
            return;
        }
        match self.domains.get_mut(domain) {
            Some(d) => {
                d.refs = d.refs.saturating_add_signed(delta);
                if d.refs == 0 && !d.explicit {
                    self.domains.remove(domain);
                }
            }
            None if delta > 0 => {
                self.domains.insert(
                    domain,
                    DomainInfo {
                        explicit: false,
                        refs: delta as u32,
                    },
                );
            }
            None => {}
        }
    }

    /// Add or replace a user (its login must be folded already).
    pub fn insert_user(&mut self, spec: &UserSpec) {
        self.insert_new_user(spec);
    }

    /// [`Directory::insert_user`], saying whether the login is new (a file
    /// load finds duplicates this way, with one probe of the table).
    pub fn insert_new_user(&mut self, spec: &UserSpec) -> bool {
        let packed = PackedUser::pack(spec, &self.settings);
        self.insert_new_packed(&spec.login, packed)
    }

    /// [`Directory::insert_new_user`] for a user already packed with this
    /// directory's settings (a file load packs on several threads).
    pub fn insert_new_packed(&mut self, login: &str, packed: PackedUser) -> bool {
        let new = self.users.insert(login, packed).is_none();
        if new {
            self.domain_ref(login, 1);
        }
        new
    }

    /// Remove a user; returns whether it existed.
    pub fn remove_user(&mut self, login: &str) -> bool {
        let existed = self.users.remove(login).is_some();
        if existed {
            self.domain_ref(login, -1);
        }
        existed
    }

    /// Set the targets of an alias key (`a@x`, or `@x` for a catch-all).
    /// An empty target list removes the alias.
    pub fn set_alias(&mut self, key: &str, targets: Vec<String>) {
        if targets.is_empty() {
            self.remove_alias(key);
            return;
        }
        let targets: Box<[Box<str>]> = targets.into_iter().map(Into::into).collect();
        if self.aliases.insert(key, targets).is_none() {
            self.domain_ref(key, 1);
        }
    }

    /// Point an alias key at one target: [`Directory::set_alias`] without
    /// building a `Vec<String>` (an LDAP load sets a million of these).
    pub fn set_alias_to(&mut self, key: &str, target: &str) {
        let targets: Box<[Box<str>]> = Box::new([target.into()]);
        if self.aliases.insert(key, targets).is_none() {
            self.domain_ref(key, 1);
        }
    }

    /// Remove an alias key; returns whether it existed.
    pub fn remove_alias(&mut self, key: &str) -> bool {
        let existed = self.aliases.remove(key).is_some();
        if existed {
            self.domain_ref(key, -1);
        }
        existed
    }

    /// Mark `key` as claimed by `claims` (two or more) source entries: its
    /// mailbox and alias, if any, are taken out, and every lookup reaching
    /// it answers [`crate::lookup::LookupError::Ambiguous`]. The address
    /// keeps its domain ours, so the domain's other addresses (and this one,
    /// deferred) are not rejected as foreign.
    pub fn set_ambiguous(&mut self, key: &str, claims: u32) {
        self.remove_user(key);
        self.remove_alias(key);
        if self.ambiguous.insert(key, claims).is_none() {
            self.domain_ref(key, 1);
        }
    }

    /// Unmark an ambiguous address; returns whether it was one.
    pub fn clear_ambiguous(&mut self, key: &str) -> bool {
        let existed = self.ambiguous.remove(key).is_some();
        if existed {
            self.domain_ref(key, -1);
        }
        existed
    }

    /// How many entries claim `key`, when more than one does. Free while
    /// no address is ambiguous (the normal case): lookups ask it on misses.
    pub fn ambiguous_claims(&self, key: &str) -> Option<u32> {
        if self.ambiguous.is_empty() {
            return None;
        }
        self.ambiguous.get(key).copied()
    }

    /// `Err` when `key` is ambiguous: the one check every lookup path
    /// makes before calling a key unknown.
    pub fn check_ambiguous(&self, key: &str) -> Result<(), crate::lookup::LookupError> {
        match self.ambiguous_claims(key) {
            Some(claims) => Err(crate::lookup::LookupError::Ambiguous {
                address: key.to_string(),
                claims,
            }),
            None => Ok(()),
        }
    }

    /// Every ambiguous address (iteration order is unspecified).
    pub fn ambiguous_keys(&self) -> impl Iterator<Item = &str> {
        self.ambiguous.iter().map(|(k, _)| k)
    }

    /// Set the SASL logins allowed to use `key` as sender (`a@x` or `@x`).
    pub fn set_sender_logins(&mut self, key: &str, logins: Vec<String>) {
        if logins.is_empty() {
            self.senders.remove(key);
        } else {
            self.senders
                .insert(key, logins.into_iter().map(Into::into).collect());
        }
    }

    /// Remove explicit sender logins for `key`.
    pub fn remove_sender_logins(&mut self, key: &str) -> bool {
        self.senders.remove(key).is_some()
    }

    /// List a domain explicitly (it is ours even with no users).
    pub fn add_domain(&mut self, domain: &str) {
        match self.domains.get_mut(domain) {
            Some(d) => d.explicit = true,
            None => {
                self.domains.insert(
                    domain,
                    DomainInfo {
                        explicit: true,
                        refs: 0,
                    },
                );
            }
        }
    }

    /// Unlist a domain; it stays ours while users or aliases are in it.
    pub fn remove_domain(&mut self, domain: &str) {
        if let Some(d) = self.domains.get_mut(domain) {
            d.explicit = false;
            if d.refs == 0 {
                self.domains.remove(domain);
            }
        }
    }

    /// Make room for `users` more users and `aliases` more alias keys (a
    /// bulk load of a known size), so they go in without rehashing.
    pub fn reserve(&mut self, users: usize, aliases: usize) {
        self.users.reserve(users);
        self.aliases.reserve(aliases);
    }

    /// Release spare capacity after a bulk load.
    pub fn shrink_to_fit(&mut self) {
        self.users.shrink_to_fit();
        self.aliases.shrink_to_fit();
        self.senders.shrink_to_fit();
        self.domains.shrink_to_fit();
        self.ambiguous.shrink_to_fit();
    }

    /// All alias keys with their targets (iteration order is unspecified).
    pub fn alias_entries(&self) -> impl Iterator<Item = (&str, &[Box<str>])> {
        self.aliases.iter().map(|(k, v)| (k, &**v))
    }

    /// All explicit sender-login keys with their logins.
    pub fn sender_entries(&self) -> impl Iterator<Item = (&str, &[Box<str>])> {
        self.senders.iter().map(|(k, v)| (k, &**v))
    }

    /// All domains that are ours (see [`Directory::has_domain`]).
    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.domains
            .iter()
            .filter(|(_, d)| d.explicit || d.refs > 0)
            .map(|(k, _)| k)
    }

    /// Every entry that differs between `self` (older) and `newer`, as the
    /// lookup rules see them ([`crate::lookup::Entries`]). Only the shards
    /// edited since one snapshot was derived from the other are read (see
    /// [`Table::diff`]), so this is cheap after an incremental update and
    /// costs a full pass after a reload built aside.
    pub fn diff<'a>(&'a self, newer: &'a Directory, mut f: impl FnMut(Change<'a>)) {
        self.users.diff(&newer.users, |k, _, n| {
            f(Change::User(k, n.is_some()));
        });
        self.aliases.diff(&newer.aliases, |k, _, n| {
            f(Change::Alias(k, n.map(|v| &**v)))
        });
        self.senders.diff(&newer.senders, |k, _, n| {
            f(Change::Sender(k, n.map(|v| &**v)))
        });
        self.domains.diff(&newer.domains, |k, o, n| {
            let ours = |d: Option<&DomainInfo>| d.is_some_and(|d| d.explicit || d.refs > 0);
            if ours(o) != ours(n) {
                f(Change::Domain(k, ours(n)));
            }
        });
        self.ambiguous.diff(&newer.ambiguous, |k, _, n| {
            f(Change::Ambiguous(k, n.copied()))
        });
    }

    /// How many shards of the four lookup tables two snapshots share, out
    /// of how many: tells a writer whether [`Directory::diff`] is cheap.
    pub fn shared_shards(&self, other: &Directory) -> (usize, usize) {
        let shared = self.users.shared_shards(&other.users)
            + self.aliases.shared_shards(&other.aliases)
            + self.senders.shared_shards(&other.senders)
            + self.domains.shared_shards(&other.domains);
        (shared, 4 * crate::table::SHARDS)
    }

    /// How many user shards two snapshots share (tests, stats).
    pub fn shared_user_shards(&self, other: &Directory) -> usize {
        self.users.shared_shards(&other.users)
    }
}

/// The shared, lock-free holder of the current snapshot.
#[derive(Debug)]
pub struct DirectoryHandle {
    current: ArcSwap<Directory>,
    /// Serialises writers only; readers never touch it.
    writer: Mutex<()>,
}

impl DirectoryHandle {
    /// Publish `dir` as the first snapshot.
    pub fn new(dir: Directory) -> DirectoryHandle {
        DirectoryHandle {
            current: ArcSwap::from_pointee(dir),
            writer: Mutex::new(()),
        }
    }

    /// The current snapshot. Take it once per request.
    pub fn snapshot(&self) -> Arc<Directory> {
        self.current.load_full()
    }

    /// The current snapshot as a short-lived guard: the cheapest way to read
    /// it for one request (no shared reference count is touched; arc-swap's
    /// "debt" slots). Do not keep it across long waits; use
    /// [`DirectoryHandle::snapshot`] for that.
    pub fn current(&self) -> arc_swap::Guard<Arc<Directory>> {
        self.current.load()
    }

    /// Publish a directory built aside (a reload).
    pub fn replace(&self, mut dir: Directory) {
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        dir.meta.generation = self.current.load().meta.generation + 1;
        dir.meta.published = SystemTime::now();
        self.current.store(Arc::new(dir));
    }

    /// Apply edits to a copy of the current snapshot and publish it
    /// atomically. Readers see all of the edits or none.
    pub fn update<R>(&self, edit: impl FnOnce(&mut Directory) -> R) -> R {
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = Directory::clone(&self.current.load());
        let r = edit(&mut next);
        next.meta.generation += 1;
        next.meta.published = SystemTime::now();
        self.current.store(Arc::new(next));
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(login: &str) -> UserSpec {
        UserSpec {
            login: login.into(),
            enabled: true,
            ..UserSpec::default()
        }
    }

    #[test]
    fn the_quick_limit_is_the_users_effective_limit() {
        let settings = Settings {
            default_quota: QuotaLimit {
                storage: Some(1 << 30),
                messages: None,
            },
            ..Settings::default()
        };
        let mut d = Directory::new(settings);
        let limits = [
            None,
            Some(QuotaLimit {
                storage: Some(5),
                messages: Some(7),
            }),
            Some(QuotaLimit {
                storage: None,
                messages: Some(0),
            }),
            Some(QuotaLimit {
                storage: Some(u64::MAX - 1),
                messages: None,
            }),
            Some(QuotaLimit {
                storage: Some(u64::MAX - 2),
                messages: None,
            }),
            Some(QuotaLimit {
                storage: Some(u64::MAX),
                messages: Some(3),
            }),
        ];
        for (i, quota) in limits.iter().enumerate() {
            d.insert_user(&UserSpec {
                quota: *quota,
                ..user(&format!("u{i}@x.org"))
            });
        }
        for i in 0..limits.len() {
            let login = format!("u{i}@x.org");
            let (key, q) = d.user_key_quota(&login).unwrap();
            assert_eq!(key, login);
            assert_eq!(q.limit, d.user(&login).unwrap().quota, "{login}");
            assert_eq!(q.grace, None);
        }
        assert!(d.user_key_quota("nobody@x.org").is_none());
    }

    #[test]
    fn domains_follow_users_and_aliases() {
        let mut d = Directory::new(Settings::default());
        d.insert_user(&user("a@x.org"));
        d.set_alias("b@y.org", vec!["a@x.org".into()]);
        assert!(d.has_domain("x.org") && d.has_domain("y.org"));
        d.remove_user("a@x.org");
        assert!(!d.has_domain("x.org"));
        d.add_domain("x.org");
        assert!(d.has_domain("x.org"));
        d.set_alias("b@y.org", vec![]);
        assert!(!d.has_domain("y.org"));
        d.remove_domain("x.org");
        assert!(!d.has_domain("x.org"));
        assert_eq!(d.counts().domains, 0);
    }

    #[test]
    fn update_is_atomic_and_old_snapshots_stay_intact() {
        let mut d = Directory::new(Settings::default());
        for i in 0..5000 {
            d.insert_user(&user(&format!("u{i}@x.org")));
        }
        d.set_alias("old@x.org", vec!["u1@x.org".into()]);
        let h = DirectoryHandle::new(d);
        let before = h.snapshot();
        h.update(|d| {
            d.remove_alias("old@x.org");
            d.set_alias("new@x.org", vec!["u1@x.org".into()]);
            d.remove_user("u2@x.org");
        });
        let after = h.snapshot();
        assert!(before.alias("old@x.org").is_some() && before.alias("new@x.org").is_none());
        assert!(after.alias("old@x.org").is_none() && after.alias("new@x.org").is_some());
        assert!(before.has_user("u2@x.org") && !after.has_user("u2@x.org"));
        assert_eq!(after.meta().generation, before.meta().generation + 1);
        // A single-user edit copied one user shard, not the table.
        assert!(after.shared_user_shards(&before) >= crate::table::SHARDS - 1);
    }

    #[test]
    fn readers_never_see_a_half_applied_update() {
        // A writer moves an alias between two keys in one update; readers
        // must always find exactly one of them.
        let mut d = Directory::new(Settings::default());
        d.insert_user(&user("t@x.org"));
        d.set_alias("a@x.org", vec!["t@x.org".into()]);
        let h = Arc::new(DirectoryHandle::new(d));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (h, stop) = (h.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let s = h.snapshot();
                        let found =
                            s.alias("a@x.org").is_some() as u8 + s.alias("b@x.org").is_some() as u8;
                        assert_eq!(found, 1);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        for i in 0..2000 {
            let (from, to) = if i % 2 == 0 {
                ("a@x.org", "b@x.org")
            } else {
                ("b@x.org", "a@x.org")
            };
            h.update(|d| {
                d.remove_alias(from);
                d.set_alias(to, vec!["t@x.org".into()]);
            });
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
    }
}
