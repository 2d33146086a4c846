//! `[ldap]` settings, validated by the `ramdir` binary's configuration.

use std::path::PathBuf;
use std::time::Duration;

use crate::mapping::Mapping;

/// How ramdir authenticates to LDAP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bind {
    /// No bind.
    Anonymous,
    /// Simple bind; the password is read from a file that must not be
    /// world-readable (checked at start and on every connect).
    Simple {
        /// Bind DN.
        dn: String,
        /// File holding the password (one line; a trailing newline is
        /// ignored).
        password_file: PathBuf,
    },
    /// SASL EXTERNAL, over `ldapi://` (peer credentials) or TLS.
    SaslExternal,
}

/// Search scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The base entry only.
    Base,
    /// Direct children.
    One,
    /// The whole subtree.
    Sub,
}

/// Everything the LDAP source needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The providers, in order of preference: `ldap://host:port`,
    /// `ldaps://…` or `ldapi://%2Fpath%2Fto%2Fsocket`, separated by
    /// whitespace as in OpenLDAP's `ldap.conf` `URI` (see
    /// [`Settings::urls`]). The sync fails over from one to the next.
    pub url: String,
    /// Search base.
    pub base: String,
    /// Search filter selecting mail entries.
    pub filter: String,
    /// Search scope.
    pub scope: Scope,
    /// Authentication.
    pub bind: Bind,
    /// Upgrade `ldap://` with StartTLS.
    pub starttls: bool,
    /// Attribute mapping.
    pub mapping: Mapping,
    /// Page size of the full load.
    pub page_size: i32,
    /// Keep a live RFC 4533 sync (otherwise: full load only, then fallback).
    pub sync: bool,
    /// Where the warm-start snapshot (directory + sync cookie) is kept.
    pub state_dir: Option<PathBuf>,
    /// A sync lost for longer than this makes the directory non-authoritative
    /// (misses are asked to LDAP, or answered "temporary").
    pub sync_lost_after: Duration,
    /// Look misses up in LDAP while not authoritative.
    pub fallback: bool,
    /// How long a fallback "not found" is remembered.
    pub negative_ttl: Duration,
    /// Most fallback searches in flight.
    pub fallback_concurrency: usize,
    /// Timeout for connecting, binding and each fallback search.
    pub timeout: Duration,
}

impl Settings {
    /// The providers in order: [`Settings::url`] split at whitespace.
    pub fn urls(&self) -> impl Iterator<Item = &str> {
        self.url.split_whitespace()
    }

    /// The `i`-th provider, wrapping around (the sync's rotation).
    pub fn url_at(&self, i: usize) -> &str {
        let n = self.urls().count().max(1);
        self.urls().nth(i % n).unwrap_or("")
    }

    /// Settings with ramdir's defaults for everything but the URL (one
    /// provider, or several separated by whitespace) and base.
    pub fn new(url: &str, base: &str) -> Settings {
        Settings {
            url: url.into(),
            base: base.into(),
            filter: DEFAULT_FILTER.into(),
            scope: Scope::Sub,
            bind: Bind::Anonymous,
            starttls: false,
            mapping: Mapping::default(),
            page_size: DEFAULT_PAGE_SIZE,
            sync: true,
            state_dir: None,
            sync_lost_after: DEFAULT_SYNC_LOST_AFTER,
            fallback: true,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            fallback_concurrency: DEFAULT_FALLBACK_CONCURRENCY,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Entries that have a mail address.
pub const DEFAULT_FILTER: &str = "(mail=*)";
/// Paged results page size: 1000 is slapd's default `sizelimit`, so a page
/// never trips it.
pub const DEFAULT_PAGE_SIZE: i32 = 1000;
/// A minute of lost sync is tolerated before misses stop being final:
/// short outages (slapd restart) must not change answers.
pub const DEFAULT_SYNC_LOST_AFTER: Duration = Duration::from_secs(60);
/// Remember a fallback "not found" for a minute: spam to unknown addresses
/// then costs LDAP one search per address per minute.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(60);
/// At most 8 fallback searches at once, so a flood of misses cannot
/// overload LDAP.
pub const DEFAULT_FALLBACK_CONCURRENCY: usize = 8;
/// 10 s to connect, bind or search: far below Postfix's 100 s socketmap
/// timeout, so a hung LDAP gives a clean TEMP.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
