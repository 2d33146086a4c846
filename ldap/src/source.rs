//! The LDAP source: full load, live RFC 4533 sync, warm start.
//!
//! Lifecycle:
//! 1. **Warm start**: if a snapshot from an earlier run exists (directory +
//!    sync cookie, written atomically), serve it at once, marked
//!    non-authoritative until the sync catches up.
//! 2. **Full load** (no cookie): read the suffix's `contextCSN`, then every
//!    entry with paged results, with progress in the log; the result is
//!    built aside (on a thread of its own, while the next pages arrive)
//!    and swapped in at once. The sync then starts from a cookie
//!    made of that `contextCSN`, so it only sends what changed during the
//!    load (and a present list or delete list to catch deletions).
//! 3. **Sync**: refreshAndPersist (the control is **critical**: a server
//!    without syncprov must fail, not answer a plain search). Adds and
//!    modifies replace the entry, deletes remove it, by `entryUUID`; each is
//!    one atomic directory update. The cookie is kept and persisted with the
//!    snapshot. `e-syncRefreshRequired` (4096) means a new full load.
//! 4. **Loss**: on any error, reconnect with exponential backoff and jitter;
//!    keep serving. After `sync_lost_after` without sync the directory stops
//!    being authoritative, so misses go to the fallback (or get "temporary")
//!    instead of a wrong "not found".
//! 5. **Failover** (several providers in `url`): a connection error, or a
//!    provider refusing the cookie with result 53 ("consumer state is newer
//!    than provider", i.e. it is behind, e.g. restored from a backup),
//!    moves the sync to the next provider at once, **with the same cookie**:
//!    an RFC 4533 cookie of one multi-provider is valid at the others
//!    (measured, `docs/notes/scale-out.md` §4). Only when every provider
//!    failed in a row does the backoff wait. If every provider answers 53,
//!    the cookie is dropped and a full load follows, logged loudly. The
//!    sync stays on the provider that works (no fail-back): moving costs a
//!    refresh, staying costs nothing.
//!
//! Whatever a refresh phase sends (a few changes after a reconnect, or a
//! whole directory when the provider cannot use the cookie: a new serverID
//! in a multi-provider cluster, an expired session log) is held aside and
//! applied with its deletions, its sweep of the entries not present and its
//! cookie in **one** atomic update at refreshDone: readers never see a
//! half-refreshed directory, nothing is briefly missing, and a refresh cut
//! off half-way leaves the directory and the saved cookie as they were.
//!
//! An address two entries claim is ambiguous until one claim is left (see
//! [`crate::index`]); each new conflict is logged once, with every
//! claimant's DN (looked up by entryUUID where not known), and counted in
//! [`LdapSource::status`].
//!
//! ldap3's sync control parsers `panic!` on malformed input (protocols.md
//! G20): every parse runs under `catch_unwind`, and a malformed control
//! ends the session like a network error.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::controls::{
    EntryState, MakeCritical, RefreshMode, SyncInfo, SyncRequest, SyncState, parse_syncinfo,
};
use ldap3::{Ldap, ResultEntry, SearchEntry};
use ramdir_core::{Directory, DirectoryHandle, UserSpec};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::bulk;
use crate::conn::{LdapError, connect, connect_to, scope};
use crate::index::{Index, Uuid, format_uuid, parse_uuid};
use crate::mapping::{EntryData, EntryView, MapError, Resolved};
use crate::settings::Settings;

/// Read a Sync Info intermediate message (RFC 4533 2.5). ldap3's parser
/// panics on malformed BER (G20), so it runs under `catch_unwind`: a
/// malformed message is a protocol error that ends the session.
pub fn sync_info(re: ResultEntry) -> Result<SyncInfo, LdapError> {
    catch_unwind(AssertUnwindSafe(move || parse_syncinfo(re)))
        .map_err(|_| LdapError::Protocol("malformed Sync Info message".into()))
}

/// Read an entry's Sync State control (RFC 4533 2.3), under `catch_unwind`
/// as [`sync_info`].
pub fn sync_state(ctrl: &ldap3::controls::RawControl) -> Result<SyncState, LdapError> {
    catch_unwind(AssertUnwindSafe(|| ctrl.parse::<SyncState>()))
        .map_err(|_| LdapError::Protocol("malformed Sync State control".into()))
}

/// OID of the Sync State control (RFC 4533).
const SYNC_STATE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.2";
/// `e-syncRefreshRequired` (RFC 4533): the cookie is too old.
const SYNC_REFRESH_REQUIRED: u32 = 4096;
/// `unwillingToPerform`: syncprov's answer to a cookie whose CSN for the
/// provider's own serverID is newer than its own ("consumer state is newer
/// than provider!"): that provider is behind the others.
const UNWILLING_TO_PERFORM: u32 = 53;
/// First reconnect delay.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest reconnect delay: LDAP back after an outage is noticed within a
/// minute.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Snapshot at most this often (and never more often than ten times the
/// last write took, so a huge directory does not spend its time writing).
const SNAPSHOT_EVERY: Duration = Duration::from_secs(5);
/// Entries the full load hands to its builder thread at once: one page's
/// worth, so the channel costs little per entry.
const BATCH: usize = 1000;
/// Batches on their way to the builder at most: enough that neither side
/// waits for the other at a page turn, and a bounded amount of memory
/// (a batch of received entries is about 1 MB).
const BATCHES_IN_FLIGHT: usize = 4;
/// Log full-load progress every this many entries.
const PROGRESS_EVERY: u64 = 100_000;
/// Most ambiguous addresses `stats` lists by name (all are counted): the
/// document stays small when a whole subtree is duplicated.
pub const MAX_AMBIGUOUS_LISTED: usize = 100;
/// Most conflicting entries whose DN one search looks up (one search per
/// batch of new conflicts, so a duplicated subtree costs LDAP little; the
/// rest are logged by entryUUID).
const MAX_NAMED: usize = 100;
/// File name of the warm-start snapshot in `state_dir`.
const SNAPSHOT_FILE: &str = "ldap.snapshot";
/// First line of a snapshot file.
const SNAPSHOT_FORMAT: &str = "ramdir-ldap-snapshot-1";

/// Counters, for `stats` and tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// Entries read by full loads.
    pub entries_loaded: AtomicU64,
    /// Full loads done.
    pub full_loads: AtomicU64,
    /// Adds, modifies and deletes applied from the sync (after the load).
    pub changes_applied: AtomicU64,
    /// Connections made by the sync.
    pub connects: AtomicU64,
    /// Fallback searches sent to LDAP.
    pub fallback_searches: AtomicU64,
    /// Fallback lookups answered from the negative cache.
    pub fallback_cached: AtomicU64,
    /// Moves of the sync to another provider.
    pub failovers: AtomicU64,
    /// Entries (adds, modifies and present notices) received in sync
    /// refresh phases: a few after a reconnect with a good cookie, the
    /// whole directory when the provider had to refresh it all.
    pub refresh_entries: AtomicU64,
    /// Refresh phases applied.
    pub refreshes: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    index: Index,
    cookie: Option<Vec<u8>>,
    dirty: bool,
    /// When the sync was lost (None while in sync or not yet started).
    lost_since: Option<Instant>,
    /// What the source is doing, for stats.
    phase: String,
    /// Which provider of [`Settings::urls`] the sync uses (it wraps).
    provider: usize,
    /// Whether the current session's refresh has completed.
    synced: bool,
}

/// The LDAP source, shared by the sync task, the fallback and reloads.
#[derive(Debug)]
pub struct LdapSource {
    /// Itself, for the tasks it spawns.
    me: Weak<LdapSource>,
    settings: Settings,
    handle: Arc<DirectoryHandle>,
    state: Mutex<State>,
    /// Counters.
    pub stats: Stats,
}

enum SessionEnd {
    Stopped,
    RefreshRequired,
    /// Result 53: this provider is behind the cookie.
    Behind(String),
    Failed(LdapError),
}

impl From<LdapError> for SessionEnd {
    fn from(e: LdapError) -> Self {
        SessionEnd::Failed(e)
    }
}

impl From<ldap3::LdapError> for SessionEnd {
    fn from(e: ldap3::LdapError) -> Self {
        SessionEnd::Failed(e.into())
    }
}

impl LdapSource {
    /// A source feeding `handle`.
    pub fn new(settings: Settings, handle: Arc<DirectoryHandle>) -> Arc<LdapSource> {
        let state = State {
            phase: "starting".into(),
            ..State::default()
        };
        Arc::new_cyclic(|me| LdapSource {
            me: me.clone(),
            settings,
            handle,
            state: Mutex::new(state),
            stats: Stats::default(),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The directory handle it feeds.
    pub fn handle(&self) -> &Arc<DirectoryHandle> {
        &self.handle
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One line for `stats`: phase, entries, cookie, counters, and the
    /// addresses several entries claim (the first [`MAX_AMBIGUOUS_LISTED`],
    /// each with its claimants' entryUUIDs and DNs where known).
    pub fn status(&self) -> serde_json::Value {
        let st = self.lock();
        let ambiguous: Vec<serde_json::Value> = st
            .index
            .contested()
            .take(MAX_AMBIGUOUS_LISTED)
            .map(|(address, claims)| {
                serde_json::json!({
                    "address": address,
                    "entries": claims.iter().map(crate::index::describe).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({
            "phase": st.phase,
            "entries": st.index.len(),
            "ambiguous": st.index.contested_len(),
            "ambiguous_addresses": ambiguous,
            "have_cookie": st.cookie.is_some(),
            "cookie": st.cookie.as_deref().map(String::from_utf8_lossy),
            "provider": self.settings.url_at(st.provider),
            "failovers": self.stats.failovers.load(Ordering::Relaxed),
            "refreshes": self.stats.refreshes.load(Ordering::Relaxed),
            "refresh_entries": self.stats.refresh_entries.load(Ordering::Relaxed),
            "sync_lost_secs": st.lost_since.map(|t| t.elapsed().as_secs()),
            "entries_loaded": self.stats.entries_loaded.load(Ordering::Relaxed),
            "full_loads": self.stats.full_loads.load(Ordering::Relaxed),
            "changes_applied": self.stats.changes_applied.load(Ordering::Relaxed),
            "connects": self.stats.connects.load(Ordering::Relaxed),
            "fallback_searches": self.stats.fallback_searches.load(Ordering::Relaxed),
            "fallback_cached": self.stats.fallback_cached.load(Ordering::Relaxed),
        })
    }

    fn set_phase(&self, phase: &str) {
        self.lock().phase = phase.to_string();
    }

    /// Apply changes to the index and the directory in one atomic update.
    pub fn apply<R>(&self, f: impl FnOnce(&mut Index, &mut Directory) -> R) -> R {
        let (r, conflicts) = {
            let mut st = self.lock();
            let st = &mut *st;
            let r = self.handle.update(|d| f(&mut st.index, d));
            st.dirty = true;
            (r, st.index.has_unreported())
        };
        if conflicts {
            self.report_conflicts();
        }
        r
    }

    /// Log the addresses that got a new claimant, naming every claimant.
    /// The entry that held an address before has no known DN (none is kept
    /// per entry): it is looked up by entryUUID first, on a connection of
    /// its own and off the sync's path, when a runtime is at hand.
    fn report_conflicts(&self) {
        let (keys, unnamed) = self.lock().index.take_unreported();
        if keys.is_empty() {
            return;
        }
        match (self.me.upgrade(), tokio::runtime::Handle::try_current()) {
            (Some(me), Ok(rt)) if !unnamed.is_empty() => {
                rt.spawn(async move {
                    me.name_claimants(&unnamed).await;
                    me.log_conflicts(&keys);
                });
            }
            _ => self.log_conflicts(&keys),
        }
    }

    /// Look up the DNs of `uuids` (the first [`MAX_NAMED`]) and record them.
    async fn name_claimants(&self, uuids: &[Uuid]) {
        let s = &self.settings;
        let filter: String = uuids
            .iter()
            .take(MAX_NAMED)
            .map(|u| format!("(entryUUID={})", format_uuid(u)))
            .collect();
        let filter = format!("(|{filter})");
        let search = async {
            let mut ldap = connect(s).await?;
            let r = ldap
                .search(&s.base, scope(s.scope), &filter, vec!["entryUUID"])
                .await;
            let _ = ldap.unbind().await;
            let (entries, _) = r?.success()?;
            Ok::<_, LdapError>(entries)
        };
        match tokio::time::timeout(s.timeout, search).await {
            Ok(Ok(entries)) => {
                let mut st = self.lock();
                for e in entries.into_iter().map(SearchEntry::construct) {
                    let uuid = e
                        .attrs
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("entryUUID"))
                        .and_then(|(_, v)| v.first())
                        .and_then(|v| parse_uuid(v));
                    if let Some(uuid) = uuid {
                        st.index.set_dn(&uuid, &e.dn);
                    }
                }
                st.dirty = true;
            }
            Ok(Err(e)) => {
                tracing::info!(error = %e, "cannot look up the DNs of conflicting entries")
            }
            Err(_) => tracing::info!("timed out looking up the DNs of conflicting entries"),
        }
    }

    fn log_conflicts(&self, keys: &[String]) {
        let st = self.lock();
        for key in keys {
            if let Some(claims) = st.index.claims(key) {
                crate::index::log_conflict(key, claims);
            }
        }
    }

    /// Publish a directory rebuilt from files, with every LDAP entry (and
    /// the authoritative state) carried over from the current one. Holds the
    /// state lock, like every sync update, so no LDAP change is lost.
    pub fn rebuild(&self, mut files: Directory) {
        let st = self.lock();
        let current = self.handle.snapshot();
        st.index.carry_over(&current, &mut files);
        files.set_authoritative(current.authoritative(), current.meta().note.as_deref());
        self.handle.replace(files);
    }

    /// Mark the directory as not authoritative, with why.
    fn not_authoritative(&self, why: &str) {
        self.handle
            .update(|d| d.set_authoritative(false, Some(why)));
    }

    /// Serve the snapshot of an earlier run, if there is one. Returns whether
    /// one was loaded. The directory stays non-authoritative until the sync
    /// has caught up.
    pub fn warm_start(&self) -> bool {
        let Some(dir) = &self.settings.state_dir else {
            self.not_authoritative("LDAP initial load in progress");
            return false;
        };
        let path = dir.join(SNAPSHOT_FILE);
        match read_snapshot(&path) {
            Ok(None) => {
                self.not_authoritative("LDAP initial load in progress");
                false
            }
            Ok(Some((cookie, written, entries))) => {
                let n = entries.len();
                let age = SystemTime::now()
                    .duration_since(written)
                    .unwrap_or_default();
                let note = format!(
                    "serving the warm LDAP snapshot written {}s ago; LDAP not yet in sync",
                    age.as_secs()
                );
                {
                    let mut st = self.lock();
                    let st = &mut *st;
                    // DNs saved with contested claims: the entry that held
                    // an address first is put without its claim contested.
                    let named: Vec<(Uuid, String)> = entries
                        .iter()
                        .filter_map(|(u, _, dn)| Some((*u, dn.clone()?)))
                        .collect();
                    self.handle.update(|d| {
                        for (uuid, data, dn) in entries {
                            st.index.put(d, uuid, data, dn.as_deref());
                        }
                        d.set_authoritative(false, Some(&note));
                    });
                    for (uuid, dn) in &named {
                        st.index.set_dn(uuid, dn);
                    }
                    st.cookie = cookie;
                    st.phase = "warm snapshot".into();
                }
                tracing::info!(entries = n, age_secs = age.as_secs(), snapshot = %path.display(), "{note}");
                self.report_conflicts();
                true
            }
            Err(e) => {
                tracing::warn!(snapshot = %path.display(), error = %e, "warm snapshot unusable; ignoring it");
                self.not_authoritative("LDAP initial load in progress");
                false
            }
        }
    }

    /// Run until `stop` turns true: load, sync, reconnect.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let writer = tokio::spawn(self.clone().snapshot_loop(stop.clone()));
        let watchdog = tokio::spawn(self.clone().watchdog(stop.clone()));
        let mut backoff = BACKOFF_MIN;
        let providers = self.settings.urls().count().max(1);
        // Providers that failed since the last good session, and of those
        // the ones that answered 53.
        let (mut failed, mut behind) = (0usize, 0usize);
        loop {
            let started = Instant::now();
            let end = self.session(&mut stop).await;
            if std::mem::take(&mut self.lock().synced) {
                (failed, behind) = (0, 0);
                backoff = BACKOFF_MIN;
            }
            match end {
                SessionEnd::Stopped => break,
                SessionEnd::RefreshRequired => {
                    tracing::warn!(
                        "LDAP says the sync cookie is too old (e-syncRefreshRequired): full reload"
                    );
                    self.lock().cookie = None;
                    continue;
                }
                SessionEnd::Behind(text) => {
                    behind += 1;
                    failed += 1;
                    let url = self.settings.url_at(self.lock().provider).to_string();
                    if behind >= providers {
                        tracing::error!(%url, %text,
                            "LDAP's state is older than ramdir's sync cookie at every provider \
                             (result 53: slapd killed before it saved its contextCSN, or restored \
                             from a backup): full reload");
                        self.lock().cookie = None;
                        (failed, behind) = (0, 0);
                        continue;
                    }
                    tracing::warn!(%url, %text, "LDAP provider is behind ramdir's sync state (result 53)");
                    self.next_provider();
                    continue;
                }
                SessionEnd::Failed(e) => {
                    failed += 1;
                    {
                        let mut st = self.lock();
                        st.lost_since.get_or_insert_with(Instant::now);
                        st.phase = format!("disconnected: {e}");
                    }
                    if providers > 1 {
                        let url = self.settings.url_at(self.lock().provider).to_string();
                        tracing::warn!(%url, error = %e, "LDAP provider lost; still serving");
                        self.next_provider();
                        // Another provider not yet tried in this round:
                        // at once, the sync resumes there from its cookie.
                        if !failed.is_multiple_of(providers) {
                            continue;
                        }
                    }
                    // A session that got in sync (reset above) or ran a while
                    // was healthy: start over. Otherwise an LDAP server that
                    // restarts every few seconds would push the delay to its
                    // maximum, and each return would go unnoticed for up to
                    // a minute (the flapping test in ldap_sync.rs).
                    if started.elapsed() > BACKOFF_MAX {
                        backoff = BACKOFF_MIN;
                    }
                    let delay = jitter(backoff);
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "LDAP sync lost; still serving");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = stop.wait_for(|s| *s) => break,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        let _ = writer.await;
        watchdog.abort();
    }

    /// Move the sync to the next provider.
    fn next_provider(&self) {
        let mut st = self.lock();
        st.provider = (st.provider + 1) % self.settings.urls().count().max(1);
        self.stats.failovers.fetch_add(1, Ordering::Relaxed);
        tracing::info!(url = %self.settings.url_at(st.provider), "LDAP sync moves to the next provider");
    }

    async fn session(&self, stop: &mut watch::Receiver<bool>) -> SessionEnd {
        self.set_phase("connecting");
        let url = self.settings.url_at(self.lock().provider).to_string();
        let mut ldap = tokio::select! {
            r = connect_to(&self.settings, &url) => match r {
                Ok(l) => l,
                Err(e) => return SessionEnd::Failed(e),
            },
            _ = stop.wait_for(|s| *s) => return SessionEnd::Stopped,
        };
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        let mut cookie = self.lock().cookie.clone();
        if cookie.is_none() {
            let csn = match self.context_csn(&mut ldap).await {
                Ok(c) => c,
                Err(e) => return SessionEnd::Failed(e),
            };
            self.set_phase("full load");
            let load = self.full_load(&mut ldap, &url);
            tokio::pin!(load);
            tokio::select! {
                r = &mut load => if let Err(e) = r { return SessionEnd::Failed(e) },
                _ = stop.wait_for(|s| *s) => return SessionEnd::Stopped,
            }
            cookie = csn.map(|c| format!("rid=000,csn={c}").into_bytes());
            self.lock().cookie = cookie.clone();
        }
        if !self.settings.sync {
            // Loaded once; misses keep going to the fallback.
            self.set_phase("loaded (sync disabled)");
            self.not_authoritative("LDAP sync disabled: misses are looked up in LDAP");
            let _ = stop.wait_for(|s| *s).await;
            let _ = ldap.unbind().await;
            return SessionEnd::Stopped;
        }
        let end = self.sync(&mut ldap, cookie, stop).await;
        let _ = ldap.unbind().await;
        end
    }

    /// The `contextCSN` of the naming context holding the base, joined
    /// with `;` when there are several (multi-provider).
    async fn context_csn(&self, ldap: &mut Ldap) -> Result<Option<String>, LdapError> {
        let (root, _) = ldap
            .search(
                "",
                ldap3::Scope::Base,
                "(objectClass=*)",
                vec!["namingContexts"],
            )
            .await?
            .success()?;
        let base = self.settings.base.to_ascii_lowercase();
        let nc = root
            .into_iter()
            .map(SearchEntry::construct)
            .flat_map(|e| e.attrs.get("namingContexts").cloned().unwrap_or_default())
            .filter(|nc| base.ends_with(&nc.to_ascii_lowercase()))
            .max_by_key(String::len);
        let Some(nc) = nc else { return Ok(None) };
        let (entries, _) = ldap
            .search(
                &nc,
                ldap3::Scope::Base,
                "(objectClass=*)",
                vec!["contextCSN"],
            )
            .await?
            .success()?;
        let csns: Vec<String> = entries
            .into_iter()
            .map(SearchEntry::construct)
            .flat_map(|e| e.attrs.get("contextCSN").cloned().unwrap_or_default())
            .collect();
        Ok((!csns.is_empty()).then(|| csns.join(";")))
    }

    /// Read every entry with paged results, build the directory aside and
    /// swap it in.
    ///
    /// Two threads: one receives the entries and hands them over in
    /// batches to a builder thread, which maps them and builds the
    /// directory, so the next page is asked for as soon as one is received,
    /// not once it has been built. Over a plain transport the receiver is
    /// [`bulk`]'s (entries stay the bytes they came in); with TLS it is
    /// ldap3's search. Entries are built in the order they came; a failed
    /// search swaps nothing in.
    async fn full_load(&self, ldap: &mut Ldap, url: &str) -> Result<(), LdapError> {
        let started = Instant::now();
        let s = &self.settings;
        let mut dir = Directory::clone(&self.handle.snapshot());
        // Withdraw what the previous load contributed (a reload).
        let mut old = self.lock().index.clone();
        let expected = old.len();
        let expected_aliases = old.iter().map(|(_, c)| c.aliases().count()).sum();
        let uuids: Vec<Uuid> = old.uuids().copied().collect();
        for u in &uuids {
            old.delete(&mut dir, u);
        }
        drop(old);
        // The previous load's size (or the warm snapshot's) is the best
        // guess of this one's.
        let mut index = Index::new();
        index.reserve(expected);
        dir.reserve(expected, expected_aliases);
        let (tx, rx) = tokio::sync::mpsc::channel(BATCHES_IN_FLIGHT);
        let mapping = s.mapping.resolve();
        let builder = tokio::task::spawn_blocking(move || build(rx, dir, index, &mapping));
        // A plain transport is read in place (see `bulk`); TLS goes through
        // ldap3.
        let received = match bulk::connect(s, url).await {
            Ok(Some(conn)) => {
                // Reads block: on a thread of its own, told to stop if this
                // load is dropped (the source is stopping).
                let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
                let (stopped, settings, tx) = (stop.0.clone(), s.clone(), tx.clone());
                let reader = tokio::task::spawn_blocking(move || {
                    conn.paged_search(&settings, &tx, &stopped, |n| progress(n, started))
                });
                match reader.await {
                    Ok(r) => r,
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                }
            }
            Ok(None) => self.receive(ldap, &tx, started).await,
            Err(e) => Err(e),
        };
        // The sender is gone: the builder finishes what it was given.
        drop(tx);
        let (dir, index) = match builder.await {
            Ok(built) => built,
            // A blocking task is only cancelled if it had not started when
            // the runtime shut down, and then this task is gone too.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let n = received?;
        {
            let mut st = self.lock();
            st.index = index;
            st.dirty = true;
            self.handle.replace(dir);
        }
        self.report_conflicts();
        self.stats.entries_loaded.fetch_add(n, Ordering::Relaxed);
        self.stats.full_loads.fetch_add(1, Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            entries = n,
            mailboxes = self.lock().index.len(),
            elapsed_ms = (secs * 1000.0) as u64,
            per_sec = (n as f64 / secs.max(1e-9)) as u64,
            "LDAP full load done"
        );
        Ok(())
    }

    /// The full load's paged search: every entry, in batches, to `tx`.
    /// Returns how many entries there were.
    async fn receive(
        &self,
        ldap: &mut Ldap,
        tx: &tokio::sync::mpsc::Sender<Batch>,
        started: Instant,
    ) -> Result<u64, LdapError> {
        let s = &self.settings;
        let adapters: Vec<Box<dyn Adapter<_, _>>> = vec![
            Box::new(EntriesOnly::new()),
            Box::new(PagedResults::new(s.page_size)),
        ];
        let attrs = s.mapping.attributes();
        let mut search = ldap
            .streaming_search_with(adapters, &s.base, scope(s.scope), &s.filter, attrs)
            .await?;
        let mut n = 0u64;
        let mut batch = Vec::with_capacity(BATCH);
        while let Some(re) = search.next().await? {
            n += 1;
            batch.push(re);
            if batch.len() == BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                // Only fails if the builder panicked: its join says so.
                if tx.send(Batch::Decoded(full)).await.is_err() {
                    break;
                }
            }
            progress(n, started);
        }
        if !batch.is_empty() {
            let _ = tx.send(Batch::Decoded(batch)).await;
        }
        let res = search.finish().await;
        LdapError::ensure_success("full load search", res.rc, res.text)?;
        Ok(n)
    }

    async fn sync(
        &self,
        ldap: &mut Ldap,
        cookie: Option<Vec<u8>>,
        stop: &mut watch::Receiver<bool>,
    ) -> SessionEnd {
        let s = &self.settings;
        let req = SyncRequest {
            mode: RefreshMode::RefreshAndPersist,
            cookie,
            reload_hint: false,
        };
        let attrs = s.mapping.attributes();
        let search = ldap
            .with_controls(req.critical())
            .streaming_search(&s.base, scope(s.scope), &s.filter, attrs)
            .await;
        let mut search = match search {
            Ok(x) => x,
            Err(e) => return SessionEnd::Failed(e.into()),
        };
        self.set_phase("sync refresh");
        let normalizer = self.handle.snapshot().settings().normalizer.clone();
        let mapping = s.mapping.resolve();
        // The refresh phase, held aside until refreshDone (see the module
        // docs): its changes in order, the entries it named present, and
        // its newest cookie.
        let mut refresh = Refresh::default();
        let mut refreshing = true;
        loop {
            let next = tokio::select! {
                r = search.next() => r,
                // Dropping the stream and unbinding ends the search.
                _ = stop.wait_for(|s| *s) => return SessionEnd::Stopped,
            };
            let re = match next {
                Ok(Some(re)) => re,
                Ok(None) => break,
                Err(e) => return SessionEnd::Failed(e.into()),
            };
            if re.is_intermediate() {
                let info = match sync_info(re) {
                    Ok(i) => i,
                    Err(e) => return SessionEnd::Failed(e),
                };
                let (cookie, done) = match info {
                    SyncInfo::NewCookie(c) => (Some(c), false),
                    SyncInfo::RefreshDelete {
                        cookie,
                        refresh_done,
                    } => (cookie, refresh_done),
                    SyncInfo::RefreshPresent {
                        cookie,
                        refresh_done,
                    } => {
                        refresh.present_phase = true;
                        (cookie, refresh_done)
                    }
                    SyncInfo::SyncIdSet {
                        cookie,
                        refresh_deletes,
                        sync_uuids,
                    } => {
                        let ids = sync_uuids
                            .into_iter()
                            .filter_map(|u| Uuid::try_from(u.as_slice()).ok());
                        if refresh_deletes {
                            let ids: Vec<Uuid> = ids.collect();
                            if refreshing {
                                refresh.changes.extend(ids.into_iter().map(Held::Delete));
                            } else {
                                self.apply_changes(ids.into_iter().map(Held::Delete), cookie);
                                continue;
                            }
                        } else {
                            refresh.present_phase = true;
                            refresh.present.extend(ids);
                        }
                        (cookie, false)
                    }
                };
                if refreshing {
                    refresh.cookie = cookie.or(refresh.cookie.take());
                    if done {
                        refreshing = false;
                        self.refresh_done(std::mem::take(&mut refresh));
                    }
                } else {
                    self.set_cookie(cookie);
                }
                continue;
            }
            if re.is_ref() {
                continue;
            }
            let Some(ctrl) =
                re.1.iter()
                    .find(|c| c.1.ctype == SYNC_STATE_OID)
                    .map(|c| c.1.clone())
            else {
                tracing::warn!("sync entry without a Sync State control; ignored");
                continue;
            };
            let ss = match sync_state(&ctrl) {
                Ok(ss) => ss,
                Err(e) => return SessionEnd::Failed(e),
            };
            let Ok(uuid) = Uuid::try_from(ss.entry_uuid.as_slice()) else {
                tracing::warn!("sync entry with a malformed entryUUID; ignored");
                continue;
            };
            let change = match ss.state {
                EntryState::Present => None,
                EntryState::Add | EntryState::Modify => {
                    let view = mapping.view(&re.0);
                    let dn = view.as_ref().map(EntryView::dn).unwrap_or_default();
                    match view.and_then(|e| mapping.map(&e, &normalizer)) {
                        Ok(data) => {
                            tracing::debug!(%dn, uuid = %format_uuid(&uuid), "LDAP change");
                            Some(Held::Put(uuid, data, dn.into_owned()))
                        }
                        Err(err) => {
                            tracing::warn!(%dn, error = %err, "changed entry cannot be mapped; removed");
                            Some(Held::Delete(uuid))
                        }
                    }
                }
                EntryState::Delete => Some(Held::Delete(uuid)),
            };
            if refreshing {
                if !matches!(ss.state, EntryState::Delete) {
                    refresh.present.insert(uuid);
                    self.stats.refresh_entries.fetch_add(1, Ordering::Relaxed);
                }
                refresh.changes.extend(change);
                refresh.cookie = ss.cookie.or(refresh.cookie.take());
            } else {
                self.apply_changes(change, ss.cookie);
            }
        }
        let res = search.finish().await;
        match res.rc {
            SYNC_REFRESH_REQUIRED => SessionEnd::RefreshRequired,
            UNWILLING_TO_PERFORM => SessionEnd::Behind(res.text),
            rc => SessionEnd::Failed(LdapError::Result {
                op: "sync",
                rc,
                text: res.text,
            }),
        }
    }

    /// Apply sync changes and the cookie that covers them in one update.
    fn apply_changes(&self, changes: impl IntoIterator<Item = Held>, cookie: Option<Vec<u8>>) {
        let n = self.apply(|idx, d| {
            changes
                .into_iter()
                .map(|c| c.apply(idx, d))
                .filter(|&x| x)
                .count()
        });
        self.stats
            .changes_applied
            .fetch_add(n as u64, Ordering::Relaxed);
        self.set_cookie(cookie);
    }

    fn set_cookie(&self, cookie: Option<Vec<u8>>) {
        if let Some(c) = cookie {
            let mut st = self.lock();
            st.cookie = Some(merge_cookie(st.cookie.as_deref(), c));
            st.dirty = true;
        }
    }

    /// The refresh phase is over: apply what it sent, sweep what was not
    /// present (in a present phase) and serve as authoritative, all in one
    /// update, with the refresh's cookie.
    fn refresh_done(&self, refresh: Refresh) {
        let Refresh {
            changes,
            present,
            present_phase,
            cookie,
        } = refresh;
        let received = changes.len();
        let (applied, swept) = {
            let mut st = self.lock();
            let st = &mut *st;
            let r = self.handle.update(|d| {
                let applied = changes
                    .into_iter()
                    .map(|c| c.apply(&mut st.index, d))
                    .filter(|&x| x)
                    .count();
                let mut swept = 0;
                if present_phase {
                    let gone: Vec<Uuid> = st
                        .index
                        .uuids()
                        .filter(|u| !present.contains(*u))
                        .copied()
                        .collect();
                    for u in &gone {
                        st.index.delete(d, u);
                    }
                    swept = gone.len();
                }
                d.set_authoritative(true, None);
                (applied, swept)
            });
            if let Some(c) = cookie {
                st.cookie = Some(merge_cookie(st.cookie.as_deref(), c));
            }
            st.dirty = true;
            st.lost_since = None;
            st.synced = true;
            st.phase = "in sync".into();
            r
        };
        if self.lock().index.has_unreported() {
            self.report_conflicts();
        }
        self.stats
            .changes_applied
            .fetch_add(applied as u64, Ordering::Relaxed);
        self.stats.refreshes.fetch_add(1, Ordering::Relaxed);
        let (entries, provider) = {
            let st = self.lock();
            (st.index.len(), st.provider)
        };
        tracing::info!(
            received,
            swept,
            entries,
            url = %self.settings.url_at(provider),
            "LDAP in sync; directory is authoritative"
        );
    }

    async fn watchdog(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let lost = self.lock().lost_since;
            if let Some(t) = lost
                && t.elapsed() >= self.settings.sync_lost_after
                && self.handle.snapshot().authoritative()
            {
                let why = format!("LDAP sync lost for {}s", t.elapsed().as_secs());
                tracing::warn!("{why}: misses are now asked to LDAP or answered temporarily");
                self.not_authoritative(&why);
            }
        }
    }

    async fn snapshot_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(dir) = self.settings.state_dir.clone() else {
            return;
        };
        let mut every = SNAPSHOT_EVERY;
        loop {
            let stopping = tokio::select! {
                () = tokio::time::sleep(every) => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            let this = self.clone();
            let dir2 = dir.clone();
            let started = Instant::now();
            match tokio::task::spawn_blocking(move || this.write_snapshot(&dir2)).await {
                Ok(Ok(true)) => {
                    every = SNAPSHOT_EVERY.max(started.elapsed() * 10);
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot write the LDAP warm snapshot"),
                Err(e) => tracing::warn!(error = %e, "LDAP snapshot task failed"),
            }
            if stopping {
                return;
            }
        }
    }

    /// Write the snapshot if something changed. The index, cookie and
    /// directory are taken together under the state lock (every LDAP update
    /// holds it), so they match.
    pub fn write_snapshot(&self, dir: &Path) -> std::io::Result<bool> {
        let (index, cookie, snap) = {
            let mut st = self.lock();
            if !st.dirty || st.index.is_empty() && st.cookie.is_none() {
                return Ok(false);
            }
            st.dirty = false;
            (st.index.clone(), st.cookie.clone(), self.handle.snapshot())
        };
        std::fs::create_dir_all(dir)?;
        let path = dir.join(SNAPSHOT_FILE);
        let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        let result = (|| {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode_0600()
                .open(&tmp)?;
            let mut w = std::io::BufWriter::new(file);
            let header = Header {
                format: SNAPSHOT_FORMAT.into(),
                cookie: cookie.as_deref().map(hex),
                written: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs(),
            };
            serde_json::to_writer(&mut w, &header)?;
            w.write_all(b"\n")?;
            let dns = index.known_dns();
            for (uuid, c) in index.iter() {
                // Every entry, contested ones included (with their own
                // data), so a restart is ambiguous and heals the same way.
                let Some(spec) = index.mailbox(&snap, uuid) else {
                    continue;
                };
                let mut saved = Saved::from_spec(
                    format_uuid(uuid),
                    &spec,
                    c.aliases().map(str::to_string).collect(),
                );
                saved.dn = dns.get(uuid).map(|d| d.to_string());
                serde_json::to_writer(&mut w, &saved)?;
                w.write_all(b"\n")?;
            }
            let file = w.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
            self.lock().dirty = true;
        }
        result.map(|()| true)
    }
}

/// The cookie to keep after receiving `new`, given the one kept so far.
///
/// OpenLDAP's cookies are `rid=NNN[,sid=XXX],csn=CSN[;CSN…][,delcsn=…]`
/// (`servers/slapd/ldapsync.c`), one CSN per serverID. A provider sends, with
/// each persist-phase change, a cookie holding only **that change's** CSN:
/// kept as it is, the cookie would lose the other serverIDs' CSNs, and the
/// next provider (which tracks them all) would answer it with a full
/// refresh ("consumer cookie is missing a csn we track", syncprov.c). So,
/// as slapd's own consumer does (`syncrepl.c`, the cookie state per sid),
/// the newest CSN of each serverID is kept. The provider's `sid=` is not
/// sent back (a consumer's `sid` tells syncprov not to echo that server's
/// own changes), nor is `delcsn`. A cookie that is not in this form is kept
/// as it is.
pub fn merge_cookie(old: Option<&[u8]>, new: Vec<u8>) -> Vec<u8> {
    fn parse(c: &[u8]) -> Option<(&str, Vec<(&str, &str)>)> {
        let text = std::str::from_utf8(c).ok()?;
        let mut rid = None;
        let mut csns = Vec::new();
        for field in text.split(',') {
            let (k, v) = field.split_once('=')?;
            match k {
                "rid" => rid = Some(v),
                "csn" => {
                    for csn in v.split(';').filter(|c| !c.is_empty()) {
                        // 20261206153000.123456Z#000000#001#000000
                        let sid = csn.split('#').nth(2)?;
                        csns.push((sid, csn));
                    }
                }
                "sid" | "delcsn" => {}
                _ => return None,
            }
        }
        Some((rid?, csns))
    }
    let Some((rid, fresh)) = parse(&new) else {
        return new;
    };
    let mut by_sid: std::collections::BTreeMap<&str, &str> = std::collections::BTreeMap::new();
    if let Some((_, kept)) = old.and_then(parse) {
        by_sid.extend(kept);
    }
    for (sid, csn) in fresh {
        let e = by_sid.entry(sid).or_insert(csn);
        // CSNs of one serverID order as strings (fixed-width fields).
        if csn > *e {
            *e = csn;
        }
    }
    if by_sid.is_empty() {
        return format!("rid={rid}").into_bytes();
    }
    let csns: Vec<&str> = by_sid.into_values().collect();
    format!("rid={rid},csn={}", csns.join(";")).into_bytes()
}

/// A change received in a refresh phase, held until refreshDone.
// Nearly every held change is a put: boxing its data would cost an
// allocation per entry to save room in the rare deletes.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Held {
    /// An added or modified entry, with its DN.
    Put(Uuid, EntryData, String),
    /// A deleted entry (or one that no longer maps).
    Delete(Uuid),
}

impl Held {
    /// Apply to the index and directory; whether anything changed.
    fn apply(self, idx: &mut Index, d: &mut Directory) -> bool {
        match self {
            Held::Put(uuid, data, dn) => {
                idx.put(d, uuid, data, Some(&dn));
                true
            }
            Held::Delete(uuid) => idx.delete(d, &uuid),
        }
    }
}

/// What a refresh phase sent, held aside until refreshDone.
#[derive(Debug, Default)]
struct Refresh {
    /// Changes, in the order they came.
    changes: Vec<Held>,
    /// Entries named present or changed (the sweep keeps these).
    present: HashSet<Uuid>,
    /// Whether the provider ran a present phase (then entries it did not
    /// name are gone).
    present_phase: bool,
    /// The newest cookie of the phase.
    cookie: Option<Vec<u8>>,
}

/// Log the full load's progress now and then.
fn progress(n: u64, started: Instant) {
    if n.is_multiple_of(PROGRESS_EVERY) {
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            entries = n,
            per_sec = (n as f64 / secs) as u64,
            "LDAP full load progress"
        );
    }
}

/// Sets its flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Entries on their way to the full load's builder.
#[derive(Debug)]
enum Batch {
    /// Decoded by ldap3.
    Decoded(Vec<ResultEntry>),
    /// Read in place.
    Raw(bulk::Page),
}

impl From<bulk::Page> for Batch {
    fn from(p: bulk::Page) -> Batch {
        Batch::Raw(p)
    }
}

/// The full load's builder: map each batch's entries, in order, into the
/// directory and the index; done when the receiving side drops its sender.
fn build(
    mut rx: tokio::sync::mpsc::Receiver<Batch>,
    mut dir: Directory,
    mut index: Index,
    mapping: &Resolved,
) -> (Directory, Index) {
    let normalizer = dir.settings().normalizer.clone();
    let mut add = |view: Result<EntryView<'_>, MapError>| {
        if let Some((uuid, data, dn)) = entry_data(mapping, view, &normalizer) {
            index.put(&mut dir, uuid, data, Some(&dn));
        }
    };
    while let Some(batch) = rx.blocking_recv() {
        match batch {
            Batch::Decoded(entries) => entries.iter().for_each(|re| add(mapping.view(&re.0))),
            Batch::Raw(page) => page.entries().for_each(|e| add(mapping.view_ber(e))),
        }
    }
    dir.shrink_to_fit();
    (dir, index)
}

/// Map an entry (with its DN); a bad one is skipped with a warning.
fn entry_data<'a>(
    mapping: &Resolved,
    view: Result<EntryView<'a>, MapError>,
    normalizer: &ramdir_core::address::Normalizer,
) -> Option<(Uuid, EntryData, std::borrow::Cow<'a, str>)> {
    let e = match view {
        Ok(e) => e,
        Err(err) => {
            tracing::warn!(error = %err, "entry cannot be read; skipped");
            return None;
        }
    };
    let Some(uuid) = mapping.entry_uuid(&e).and_then(parse_uuid) else {
        tracing::warn!(dn = %e.dn(), "entry without entryUUID; skipped");
        return None;
    };
    match mapping.map(&e, normalizer) {
        Ok(d) => Some((uuid, d, e.dn())),
        Err(err) => {
            tracing::warn!(dn = %e.dn(), error = %err, "entry cannot be mapped; skipped");
            None
        }
    }
}

trait OpenOptionsExt0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl OpenOptionsExt0600 for std::fs::OpenOptions {
    // The snapshot holds password hashes: owner only.
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

fn jitter(d: Duration) -> Duration {
    // Spread reconnects of many ramdir hosts: ±25% from the clock's nanos
    // (no random crate needed for this).
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let f = 0.75 + f64::from(nanos % 1000) / 2000.0;
    d.mul_f64(f)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    cookie: Option<String>,
    written: u64,
}

/// One mailbox in the snapshot file.
#[derive(Serialize, Deserialize)]
struct Saved {
    uuid: String,
    login: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    home: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    storage: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<u64>,
    own_quota: bool,
    enabled: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    aliases: Vec<String>,
    /// The entry's DN, when known (entries with a contested address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dn: Option<String>,
}

impl Saved {
    fn from_spec(uuid: String, s: &UserSpec, aliases: Vec<String>) -> Saved {
        Saved {
            uuid,
            login: s.login.clone(),
            password: s.password.clone(),
            uid: s.uid,
            gid: s.gid,
            home: s.home.clone(),
            mail: s.mail.clone(),
            storage: s.quota.and_then(|q| q.storage),
            messages: s.quota.and_then(|q| q.messages),
            own_quota: s.quota.is_some(),
            enabled: s.enabled,
            aliases,
            dn: None,
        }
    }

    fn into_data(self) -> Option<(Uuid, EntryData, Option<String>)> {
        let uuid = parse_uuid(&self.uuid)?;
        let quota = self.own_quota.then_some(ramdir_core::quota::QuotaLimit {
            storage: self.storage,
            messages: self.messages,
        });
        let user = UserSpec {
            login: self.login,
            password: self.password,
            uid: self.uid,
            gid: self.gid,
            home: self.home,
            mail: self.mail,
            quota,
            quota_grace: None,
            quota_rules: Vec::new(),
            enabled: self.enabled,
            extra: Vec::new(),
            origin: Some(uuid),
        };
        Some((
            uuid,
            EntryData {
                user: Some(user),
                aliases: self.aliases,
            },
            self.dn,
        ))
    }
}

type SnapshotData = (
    Option<Vec<u8>>,
    SystemTime,
    Vec<(Uuid, EntryData, Option<String>)>,
);

fn read_snapshot(path: &Path) -> Result<Option<SnapshotData>, String> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut lines = std::io::BufReader::new(file).lines();
    let header: Header = match lines.next() {
        Some(Ok(l)) => serde_json::from_str(&l).map_err(|e| format!("header: {e}"))?,
        _ => return Err("empty snapshot".into()),
    };
    if header.format != SNAPSHOT_FORMAT {
        return Err(format!("unknown snapshot format {:?}", header.format));
    }
    let cookie = match header.cookie {
        Some(c) => Some(unhex(&c).ok_or("bad cookie")?),
        None => None,
    };
    let mut entries = Vec::new();
    for (i, line) in lines.enumerate() {
        let line = line.map_err(|e| e.to_string())?;
        let saved: Saved =
            serde_json::from_str(&line).map_err(|e| format!("line {}: {e}", i + 2))?;
        entries.push(
            saved
                .into_data()
                .ok_or_else(|| format!("line {}: bad uuid", i + 2))?,
        );
    }
    let written = SystemTime::UNIX_EPOCH + Duration::from_secs(header.written);
    Ok(Some((cookie, written, entries)))
}

/// Path of the snapshot file in `state_dir` (for docs and tests).
pub fn snapshot_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SNAPSHOT_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramdir_core::Settings as DirSettings;

    #[test]
    fn snapshot_round_trips_with_cookie() {
        let tmp = tempfile::tempdir().unwrap();
        let handle = Arc::new(DirectoryHandle::new(Directory::new(DirSettings::default())));
        let mut s = Settings::new("ldap://127.0.0.1:1", "dc=x");
        s.state_dir = Some(tmp.path().to_path_buf());
        let src = LdapSource::new(s.clone(), handle.clone());
        src.apply(|idx, d| {
            idx.put(
                d,
                [7u8; 16],
                EntryData {
                    user: Some(UserSpec {
                        login: "a@x.org".into(),
                        password: Some("{SSHA}h".into()),
                        quota: Some(ramdir_core::quota::QuotaLimit {
                            storage: Some(9),
                            messages: None,
                        }),
                        enabled: true,
                        ..Default::default()
                    }),
                    aliases: vec!["b@x.org".into()],
                },
                None,
            )
        });
        src.set_cookie(Some(b"rid=000,csn=20261124".to_vec()));
        assert!(src.write_snapshot(tmp.path()).unwrap());
        assert!(!src.write_snapshot(tmp.path()).unwrap(), "nothing changed");
        let mode = std::fs::metadata(snapshot_path(tmp.path()))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );

        let handle2 = Arc::new(DirectoryHandle::new(Directory::new(DirSettings::default())));
        let src2 = LdapSource::new(s, handle2.clone());
        assert!(src2.warm_start());
        let d = handle2.snapshot();
        assert!(!d.authoritative());
        assert!(
            d.meta()
                .note
                .as_deref()
                .unwrap()
                .contains("warm LDAP snapshot")
        );
        let u = d.user("a@x.org").unwrap();
        assert_eq!(u.password, Some("{SSHA}h"));
        assert_eq!(u.quota.storage, Some(9));
        assert_eq!(d.alias("b@x.org").unwrap()[0].as_ref(), "a@x.org");
        assert_eq!(
            src2.lock().cookie.as_deref(),
            Some(&b"rid=000,csn=20261124"[..])
        );
    }

    #[test]
    fn a_warm_snapshot_keeps_every_claim_and_heals_the_same_way() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = Settings::new("ldap://127.0.0.1:1", "dc=x");
        s.state_dir = Some(tmp.path().to_path_buf());
        let entry = |pw: &str, aliases: &[&str]| EntryData {
            user: Some(UserSpec {
                login: "u5@x.org".into(),
                password: Some(pw.into()),
                enabled: true,
                ..Default::default()
            }),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
        };
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let start = |s: &Settings| {
            let handle = Arc::new(DirectoryHandle::new(Directory::new(DirSettings::default())));
            let src = LdapSource::new(s.clone(), handle.clone());
            (src, handle)
        };
        let (src, handle) = start(&s);
        src.apply(|idx, d| {
            idx.put(d, a, entry("{X}a", &["al5@x.org"]), None);
            idx.put(d, b, entry("{X}b", &[]), Some("uid=dup,dc=x"));
        });
        assert!(handle.snapshot().ambiguous_claims("u5@x.org").is_some());
        assert!(src.write_snapshot(tmp.path()).unwrap());
        let text = std::fs::read_to_string(snapshot_path(tmp.path())).unwrap();
        assert_eq!(text.lines().count(), 3, "both claimants are saved: {text}");
        assert!(text.contains("uid=dup,dc=x"));

        // A restart: the same ambiguity, the same claims.
        let (src2, handle2) = start(&s);
        assert!(src2.warm_start());
        let d = handle2.snapshot();
        assert!(d.user("u5@x.org").is_none());
        assert_eq!(d.ambiguous_claims("u5@x.org"), Some(2));
        assert!(d.lookup_alias("al5@x.org").is_err());
        assert_eq!(src2.status()["ambiguous"], 1);
        // Claimants in the snapshot's order (unspecified).
        let listed = src2.status()["ambiguous_addresses"][0]["entries"].to_string();
        assert!(
            listed.contains(&format!("entryUUID={} (uid=dup,dc=x)", format_uuid(&b)))
                && listed.contains(&format!("entryUUID={}", format_uuid(&a))),
            "{listed}"
        );
        // …and it heals the same way: the duplicate deleted, the original
        // is served, and saved as such.
        src2.apply(|idx, d| idx.delete(d, &b));
        let d = handle2.snapshot();
        assert_eq!(d.user("u5@x.org").unwrap().password, Some("{X}a"));
        assert!(src2.write_snapshot(tmp.path()).unwrap());
        let (src3, handle3) = start(&s);
        assert!(src3.warm_start());
        let d = handle3.snapshot();
        assert_eq!(d.user("u5@x.org").unwrap().password, Some("{X}a"));
        assert_eq!(d.alias("al5@x.org").unwrap()[0].as_ref(), "u5@x.org");
        assert_eq!(d.counts().ambiguous, 0);
    }

    #[test]
    fn cookies_keep_the_newest_csn_of_every_server_id() {
        let a1 = "20261206150000.000001Z#000000#001#000000";
        let a2 = "20261206150500.000001Z#000000#001#000000";
        let b1 = "20261206150100.000001Z#000000#002#000000";
        let m = |old: Option<&str>, new: &str| {
            String::from_utf8(merge_cookie(
                old.map(str::as_bytes),
                new.as_bytes().to_vec(),
            ))
            .unwrap()
        };
        // The full load's cookie, then a change of server 1 (with the
        // provider's sid), then an old change of server 2 replicated.
        let c = m(None, &format!("rid=000,csn={a1};{b1}"));
        assert_eq!(c, format!("rid=000,csn={a1};{b1}"));
        let c = m(Some(&c), &format!("rid=000,sid=001,csn={a2}"));
        assert_eq!(c, format!("rid=000,csn={a2};{b1}"));
        let c = m(Some(&c), &format!("rid=000,sid=002,csn={a1}"));
        assert_eq!(c, format!("rid=000,csn={a2};{b1}"), "never goes back");
        // delcsn is dropped; an unknown form is kept as it came.
        assert_eq!(
            m(Some(&c), &format!("rid=000,csn={b1},delcsn={b1}")),
            format!("rid=000,csn={a2};{b1}")
        );
        assert_eq!(m(Some(&c), "opaque"), "opaque");
    }

    proptest::proptest! {
        /// Whatever a server sends as a cookie, merging never panics, and
        /// a cookie merged with itself is a fixed point.
        #[test]
        fn merging_any_cookie_never_panics(
            old in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
            new in "(rid=[0-9]{0,3}|sid=[0-9a-f]{0,3}|csn=[0-9.Z#;]{0,60}|delcsn=[0-9#]{0,9}|x)(,(rid|sid|csn)=[0-9.Z#;]{0,40}){0,3}",
        ) {
            let once = merge_cookie(Some(&old), new.clone().into_bytes());
            let twice = merge_cookie(Some(&once), once.clone());
            proptest::prop_assert_eq!(&twice, &once);
            merge_cookie(None, old);
        }
    }

    #[test]
    fn corrupt_snapshot_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(snapshot_path(tmp.path()), "garbage\n").unwrap();
        let handle = Arc::new(DirectoryHandle::new(Directory::new(DirSettings::default())));
        let mut s = Settings::new("ldap://127.0.0.1:1", "dc=x");
        s.state_dir = Some(tmp.path().to_path_buf());
        assert!(!LdapSource::new(s, handle.clone()).warm_start());
        assert!(!handle.snapshot().authoritative());
    }
}
