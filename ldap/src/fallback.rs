//! Direct LDAP lookups for misses while the directory is not authoritative
//! (initial load running, sync disabled or lost for too long).
//!
//! Each miss is searched once (filter: the configured one AND the address
//! in any address attribute), what is found is added to the directory like
//! a sync change, and "not found" is remembered for `negative_ttl` so spam
//! to unknown addresses costs LDAP one search per address per TTL. At most
//! `fallback_concurrency` searches run at once; the others wait their turn
//! (bounded by the timeout). When LDAP cannot be asked the caller answers
//! "temporary".

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ldap3::{Ldap, SearchEntry, ldap_escape};
use ramdir_core::fallback::{Fallback, FetchFuture, KeyKind};
use tokio::sync::Semaphore;

use crate::conn::{LdapError, connect, scope};
use crate::source::LdapSource;

/// Most negative-cache entries: bounded memory under a dictionary attack;
/// when full, the cache is cleared (the cost is extra searches, not errors).
pub const MAX_NEGATIVE: usize = 100_000;

/// Fallback lookups against the source's LDAP server.
pub struct LdapFallback {
    source: Arc<LdapSource>,
    conn: tokio::sync::Mutex<Option<Ldap>>,
    negative: Mutex<HashMap<String, Instant>>,
    slots: Semaphore,
}

impl std::fmt::Debug for LdapFallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapFallback").finish_non_exhaustive()
    }
}

impl LdapFallback {
    /// Fallback lookups for `source`.
    pub fn new(source: Arc<LdapSource>) -> LdapFallback {
        let n = source.settings().fallback_concurrency.max(1);
        LdapFallback {
            source,
            conn: tokio::sync::Mutex::new(None),
            negative: Mutex::new(HashMap::new()),
            slots: Semaphore::new(n),
        }
    }

    fn filter(&self, kind: KeyKind, key: &str) -> Option<String> {
        let s = self.source.settings();
        let dir = self.source.handle().snapshot();
        let n = &dir.settings().normalizer;
        let mut attrs = vec![s.mapping.address.clone()];
        attrs.extend(s.mapping.aliases.iter().cloned());
        let alts: Vec<String> = match kind {
            KeyKind::Address => {
                let a = n.address(key)?;
                let mut keys = vec![a.full()];
                if a.extension.is_some() {
                    keys.push(a.base());
                }
                keys.iter()
                    .flat_map(|k| {
                        attrs
                            .iter()
                            .map(move |at| format!("({at}={})", ldap_escape(k.as_str())))
                    })
                    .collect()
            }
            KeyKind::Domain => {
                let d = n.domain(key)?;
                attrs
                    .iter()
                    .map(|at| format!("({at}=*@{})", ldap_escape(d.as_str())))
                    .collect()
            }
        };
        Some(format!("(&{}(|{}))", s.filter, alts.concat()))
    }

    async fn search(&self, filter: &str, limit: i32) -> Result<Vec<SearchEntry>, LdapError> {
        let s = self.source.settings();
        let mut guard = self.conn.lock().await;
        if guard.as_mut().is_none_or(Ldap::is_closed) {
            *guard = Some(connect(s).await?);
        }
        let ldap = guard.as_mut().expect("connected above");
        let attrs = s.mapping.attributes();
        let r = tokio::time::timeout(
            s.timeout,
            ldap.with_search_options(ldap3::SearchOptions::new().sizelimit(limit))
                .search(&s.base, scope(s.scope), filter, attrs),
        )
        .await;
        let r = match r {
            Err(_) => {
                *guard = None;
                return Err(LdapError::Timeout("fallback search"));
            }
            Ok(Err(e)) => {
                *guard = None;
                return Err(e.into());
            }
            Ok(Ok(r)) => r,
        };
        // Size limit exceeded (4) still carries entries: enough for a domain probe.
        if r.1.rc != 0 && r.1.rc != 4 {
            return Err(LdapError::Result {
                op: "fallback search",
                rc: r.1.rc,
                text: r.1.text,
            });
        }
        Ok(r.0.into_iter().map(SearchEntry::construct).collect())
    }

    async fn fetch_inner(&self, kind: KeyKind, key: &str) -> Result<bool, String> {
        let Some(filter) = self.filter(kind, key) else {
            return Ok(false);
        };
        let cache_key = filter.clone();
        let ttl = self.source.settings().negative_ttl;
        {
            let neg = self.negative.lock().unwrap_or_else(|e| e.into_inner());
            if neg.get(&cache_key).is_some_and(|t| t.elapsed() < ttl) {
                self.source
                    .stats
                    .fallback_cached
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(false);
            }
        }
        let timeout = self.source.settings().timeout;
        let _slot = tokio::time::timeout(timeout, self.slots.acquire())
            .await
            .map_err(|_| "too many LDAP fallback lookups in flight".to_string())?
            .expect("semaphore never closed");
        self.source
            .stats
            .fallback_searches
            .fetch_add(1, Ordering::Relaxed);
        let limit = if kind == KeyKind::Domain { 1 } else { 10 };
        let entries = match self.search(&filter, limit).await {
            Ok(e) => e,
            // A connection that died since its last use (LDAP restarted)
            // is only noticed when used: reconnect and try once more.
            Err(LdapError::Ldap(_)) => self
                .search(&filter, limit)
                .await
                .map_err(|e| e.to_string())?,
            Err(e) => return Err(e.to_string()),
        };
        let normalizer = self
            .source
            .handle()
            .snapshot()
            .settings()
            .normalizer
            .clone();
        let mut found = false;
        for e in entries {
            let uuid = e
                .attrs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("entryUUID"))
                .and_then(|(_, v)| v.first())
                .and_then(|v| crate::index::parse_uuid(v));
            let (Some(uuid), Ok(data)) = (
                uuid,
                self.source.settings().mapping.map(&e.attrs, &normalizer),
            ) else {
                continue;
            };
            if data.user.is_some() {
                found = true;
                self.source
                    .apply(|idx, d| idx.put(d, uuid, data, Some(&e.dn)));
            }
        }
        if !found {
            let mut neg = self.negative.lock().unwrap_or_else(|e| e.into_inner());
            if neg.len() >= MAX_NEGATIVE {
                neg.clear();
            }
            neg.insert(cache_key, Instant::now());
        }
        tracing::debug!(%key, found, "LDAP fallback lookup");
        Ok(found)
    }
}

impl Fallback for LdapFallback {
    fn fetch<'a>(&'a self, kind: KeyKind, key: &'a str) -> FetchFuture<'a> {
        Box::pin(self.fetch_inner(kind, key))
    }
}
