//! Lookup semantics, the same for every protocol.
//!
//! An address key resolves in this order (architecture.md, protocols.md 1.4):
//! 1. an alias for the full key (`user+ext@domain`);
//! 2. an alias for the key without its extension (`user@domain`); the
//!    unmatched extension is re-appended to local targets when
//!    `propagate_extension` is on, as Postfix does for hash tables;
//! 3. a mailbox (full key, then without extension): a mailbox is final and is
//!    never swallowed by a catch-all;
//! 4. the catch-all `@domain`: its targets get the extension too, and a
//!    target of the form `@other.domain` keeps the local part (an alias
//!    domain, as Postfix's `@domain` results do).
//!
//! Alias targets are expanded recursively with the same rules, to
//! [`MAX_ALIAS_DEPTH`] levels and [`MAX_ALIAS_EXPANSION`] final targets. An
//! address met again on its own expansion path is a loop: it is kept when it
//! is a mailbox ("an address may expand to itself", Postfix
//! `src/cleanup/cleanup_map1n.c`) and dropped otherwise; an alias that
//! expands to nothing but loops is an error, so Postfix defers rather than
//! bounces while the operator fixes it.
//!
//! An address that two or more source entries claim (two LDAP entries with
//! one `mail`, or one's `mail` equal to another's alias) is *ambiguous*: it
//! is none of the above, and every lookup that reaches it, directly or as
//! an alias target, is [`LookupError::Ambiguous`], so each protocol answers
//! "temporary" and nobody is served another entry's data or password.

use std::fmt;

use crate::address::Address;
use crate::directory::Directory;
use crate::model::{Settings, User};

/// Deepest alias nesting followed. Postfix's own
/// `virtual_alias_recursion_limit` is 1000; real directories nest a few
/// levels, so 100 is generous while keeping a bad directory cheap.
pub const MAX_ALIAS_DEPTH: usize = 100;

/// Most final targets one address may expand to, as Postfix's
/// `virtual_alias_expansion_limit` (default 1000).
pub const MAX_ALIAS_EXPANSION: usize = 1000;

/// Why a lookup could not give an answer (never "not found": these are
/// directory errors the operator must fix, so callers answer "temporary").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// Every target of the alias leads back to itself.
    AliasLoop(String),
    /// Nesting deeper than [`MAX_ALIAS_DEPTH`].
    TooDeep(String),
    /// More than [`MAX_ALIAS_EXPANSION`] targets.
    TooMany(String),
    /// The address is claimed by more than one source entry.
    Ambiguous {
        /// The ambiguous address.
        address: String,
        /// How many entries claim it.
        claims: u32,
    },
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LookupError::AliasLoop(a) => write!(f, "alias loop at {a}"),
            LookupError::TooDeep(a) => {
                write!(f, "alias nesting deeper than {MAX_ALIAS_DEPTH} at {a}")
            }
            LookupError::TooMany(a) => {
                write!(
                    f,
                    "alias expands to more than {MAX_ALIAS_EXPANSION} targets at {a}"
                )
            }
            LookupError::Ambiguous { address, claims } => {
                write!(f, "{address} is claimed by {claims} directory entries")
            }
        }
    }
}

impl std::error::Error for LookupError {}

/// What one address is, before expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// Matched an alias key (`key` is the key that matched).
    Alias {
        /// The alias key that matched (`a@x` or `a+e@x`).
        key: String,
        /// Extension to re-append to local targets.
        propagate: Option<String>,
    },
    /// A mailbox; `login` is its canonical login.
    Mailbox {
        /// Canonical login.
        login: String,
    },
    /// Matched the domain's catch-all.
    CatchAll {
        /// `@domain`.
        key: String,
    },
    /// Claimed by more than one source entry: a directory error, so any
    /// lookup reaching it fails with [`LookupError::Ambiguous`].
    Ambiguous {
        /// The ambiguous key (`a@x`, or `a@x` for `a+e@x`).
        key: String,
        /// How many entries claim it.
        claims: u32,
    },
    /// In one of our domains, but nothing matches.
    UnknownLocal,
    /// Not in our domains (or not an address at all).
    Foreign,
}

/// What a final target of an expansion is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetKind {
    /// A local mailbox with this login.
    Mailbox(String),
    /// In one of our domains, but no such mailbox or alias.
    UnknownLocal,
    /// Not ours: delivered elsewhere.
    Remote,
}

/// One final target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The address mail goes to (extension included).
    pub address: String,
    /// What it is.
    pub kind: TargetKind,
}

/// How an address resolves, step by step (for `explain`, and for quota
/// decisions that need the final mailboxes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The key as given.
    pub input: String,
    /// The normalised address, `None` when the key is not an address.
    pub address: Option<Address>,
    /// What the key itself is.
    pub class: Class,
    /// Final targets, deduplicated, in order. For a mailbox, itself.
    pub targets: Vec<Target>,
    /// Each step: (depth, text), for humans.
    pub trace: Vec<(usize, String)>,
}

/// The raw entries the lookup rules read: what a directory holds, whether
/// it is the in-memory [`Directory`] or a snapshot file mapped by the
/// in-process Postfix plugin (`ffi/snapshot`). The rules below are written
/// once against this trait, so every reader answers alike.
pub trait Entries {
    /// The targets or logins stored under one key.
    type List<'a>: Iterator<Item = &'a str>
    where
        Self: 'a;
    /// The lookup settings (normaliser, extension propagation, implicit
    /// sender logins).
    fn settings(&self) -> &Settings;
    /// Targets of the alias stored under exactly `key` (`a@x` or `@x`).
    fn alias(&self, key: &str) -> Option<Self::List<'_>>;
    /// The stored login of the user whose login is exactly `login`.
    fn user_key(&self, login: &str) -> Option<&str>;
    /// Whether `domain` (folded) is ours.
    fn has_domain(&self, domain: &str) -> bool;
    /// Explicit sender logins stored under exactly `key`.
    fn sender_logins(&self, key: &str) -> Option<Self::List<'_>>;
    /// How many source entries claim exactly `key`, when more than one
    /// does (an ambiguous address); `None` for the usual single claim.
    fn ambiguous_claims(&self, key: &str) -> Option<u32>;
    /// Whether a user with exactly this login exists.
    fn has_user(&self, login: &str) -> bool {
        self.user_key(login).is_some()
    }
    /// `Err` when `key` is ambiguous: the one check every lookup path
    /// makes before calling a key unknown.
    fn check_ambiguous(&self, key: &str) -> Result<(), LookupError> {
        match self.ambiguous_claims(key) {
            Some(claims) => Err(LookupError::Ambiguous {
                address: key.to_string(),
                claims,
            }),
            None => Ok(()),
        }
    }
}

impl Entries for Directory {
    type List<'a> = std::iter::Map<std::slice::Iter<'a, Box<str>>, fn(&Box<str>) -> &str>;

    fn settings(&self) -> &Settings {
        Directory::settings(self)
    }
    fn alias(&self, key: &str) -> Option<Self::List<'_>> {
        Directory::alias(self, key).map(|l| l.iter().map(unbox as fn(&Box<str>) -> &str))
    }
    fn user_key(&self, login: &str) -> Option<&str> {
        Directory::user_key(self, login)
    }
    fn has_domain(&self, domain: &str) -> bool {
        Directory::has_domain(self, domain)
    }
    fn sender_logins(&self, key: &str) -> Option<Self::List<'_>> {
        Directory::sender_logins(self, key).map(|l| l.iter().map(unbox as fn(&Box<str>) -> &str))
    }
    fn ambiguous_claims(&self, key: &str) -> Option<u32> {
        Directory::ambiguous_claims(self, key)
    }
    fn has_user(&self, login: &str) -> bool {
        Directory::has_user(self, login)
    }
}

/// A stored list entry as a string (the `Directory` side of [`Entries::List`]).
#[allow(clippy::borrowed_box)]
fn unbox(b: &Box<str>) -> &str {
    b
}

impl Directory {
    /// Classify an address without expanding it.
    pub fn classify(&self, key: &str) -> (Option<Address>, Class) {
        classify(self, key)
    }

    /// Resolve an address fully.
    pub fn resolve(&self, key: &str) -> Result<Resolution, LookupError> {
        resolve(self, key)
    }

    /// Socketmap `domains`: the folded domain when it is ours.
    pub fn lookup_domain(&self, key: &str) -> Option<String> {
        lookup_domain(self, key)
    }

    /// The login of the mailbox an address delivers to directly; the fast
    /// path of [`Directory::lookup_mailbox`] (no allocation when the key is
    /// already in normal form, no `User` built). An ambiguous address is an
    /// error, checked on the miss path only (a hit is never ambiguous).
    pub fn mailbox_login(&self, key: &str) -> Result<Option<&str>, LookupError> {
        mailbox_login(self, key)
    }

    /// The mailbox a key already in normal form names when nothing takes
    /// precedence over it (no alias of exactly that key), with its effective
    /// limit: what [`Directory::classify`] calls [`Class::Mailbox`], without
    /// copies. `None` means "ask `classify`", not "unknown".
    pub fn direct_mailbox_quota(&self, key: &str) -> Option<(&str, crate::quota::UserQuota)> {
        if !self.settings().normalizer.is_normal_form(key) || self.alias(key).is_some() {
            return None;
        }
        self.user_key_quota(key)
    }

    /// Socketmap `mailboxes`: the mailbox an address delivers to directly.
    pub fn lookup_mailbox(&self, key: &str) -> Result<Option<User<'_>>, LookupError> {
        Ok(self.mailbox_login(key)?.and_then(|login| self.user(login)))
    }

    /// Socketmap `aliases`: the final targets of an alias or catch-all;
    /// `None` for mailboxes and unknown addresses.
    pub fn lookup_alias(&self, key: &str) -> Result<Option<Vec<String>>, LookupError> {
        lookup_alias(self, key)
    }

    /// Socketmap `senders`: see [`lookup_sender_logins`].
    pub fn lookup_sender_logins(&self, key: &str) -> Result<Option<Vec<String>>, LookupError> {
        lookup_sender_logins(self, key)
    }
}

/// Classify an address without expanding it.
pub fn classify<E: Entries + ?Sized>(e: &E, key: &str) -> (Option<Address>, Class) {
    let Some(addr) = e.settings().normalizer.address(key) else {
        return (None, Class::Foreign);
    };
    let full = addr.full();
    // An ambiguous key may be an alias or a mailbox: it is checked
    // where either would have been found, before anything it could hide.
    if let Some(claims) = e.ambiguous_claims(&full) {
        return (Some(addr), Class::Ambiguous { key: full, claims });
    }
    if e.alias(&full).is_some() {
        return (
            Some(addr),
            Class::Alias {
                key: full,
                propagate: None,
            },
        );
    }
    let base = addr.base();
    if let Some(claims) = e
        .ambiguous_claims(&base)
        .filter(|_| addr.extension.is_some())
    {
        return (Some(addr), Class::Ambiguous { key: base, claims });
    }
    if addr.extension.is_some() && e.alias(&base).is_some() {
        let propagate = addr
            .extension
            .clone()
            .filter(|_| e.settings().propagate_extension);
        return (
            Some(addr),
            Class::Alias {
                key: base,
                propagate,
            },
        );
    }
    if e.has_user(&full) {
        return (Some(addr), Class::Mailbox { login: full });
    }
    if e.has_user(&base) {
        return (Some(addr), Class::Mailbox { login: base });
    }
    let catch = addr.catch_all();
    if e.alias(&catch).is_some() {
        return (Some(addr), Class::CatchAll { key: catch });
    }
    if e.has_domain(&addr.domain) {
        return (Some(addr), Class::UnknownLocal);
    }
    (Some(addr), Class::Foreign)
}

/// Resolve an address fully.
pub fn resolve<E: Entries + ?Sized>(e: &E, key: &str) -> Result<Resolution, LookupError> {
    let (address, class) = classify(e, key);
    let mut r = Resolution {
        input: key.to_string(),
        address: address.clone(),
        class: class.clone(),
        targets: Vec::new(),
        trace: Vec::new(),
    };
    let Some(addr) = address else {
        r.trace
            .push((0, format!("{key:?} is not an address ramdir can hold")));
        return Ok(r);
    };
    let mut path = vec![addr.full()];
    expand_one(e, &addr, &class, key, 0, &mut path, &mut r)?;
    if matches!(class, Class::Alias { .. } | Class::CatchAll { .. }) && r.targets.is_empty() {
        return Err(LookupError::AliasLoop(addr.full()));
    }
    Ok(r)
}

fn expand_one<E: Entries + ?Sized>(
    e: &E,
    addr: &Address,
    class: &Class,
    written: &str,
    depth: usize,
    path: &mut Vec<String>,
    r: &mut Resolution,
) -> Result<(), LookupError> {
    if depth > MAX_ALIAS_DEPTH {
        return Err(LookupError::TooDeep(addr.full()));
    }
    let (targets, ext, catch_local) = match class {
        Class::Alias { key, propagate } => {
            r.trace
                .push((depth, format!("{} is an alias ({key})", addr.full())));
            (
                e.alias(key).into_iter().flatten().collect::<Vec<_>>(),
                propagate.clone(),
                None,
            )
        }
        Class::CatchAll { key } => {
            r.trace.push((
                depth,
                format!("{} matches the catch-all {key}", addr.full()),
            ));
            let ext = addr
                .extension
                .clone()
                .filter(|_| e.settings().propagate_extension);
            let local = format!("{}{}", addr.local, addr.extension.as_deref().unwrap_or(""));
            (
                e.alias(key).into_iter().flatten().collect::<Vec<_>>(),
                ext,
                Some(local),
            )
        }
        Class::Mailbox { login } => {
            r.trace
                .push((depth, format!("{} is the mailbox {login}", addr.full())));
            push_target(r, addr.full(), TargetKind::Mailbox(login.clone()))?;
            return Ok(());
        }
        Class::Ambiguous { key, claims } => {
            r.trace.push((
                depth,
                format!("{} is claimed by {claims} directory entries", addr.full()),
            ));
            return Err(LookupError::Ambiguous {
                address: key.clone(),
                claims: *claims,
            });
        }
        Class::UnknownLocal => {
            r.trace.push((
                depth,
                format!("{} is in our domain but unknown", addr.full()),
            ));
            push_target(r, addr.full(), TargetKind::UnknownLocal)?;
            return Ok(());
        }
        Class::Foreign => {
            r.trace
                .push((depth, format!("{written} is not ours (remote)")));
            push_target(r, written.trim().to_string(), TargetKind::Remote)?;
            return Ok(());
        }
    };
    for t in targets {
        let t = rewrite_target(e, t, ext.as_deref(), catch_local.as_deref());
        let (taddr, tclass) = classify(e, &t);
        let Some(taddr) = taddr else {
            r.trace
                .push((depth + 1, format!("{t} is not ours (remote)")));
            push_target(r, t.trim().to_string(), TargetKind::Remote)?;
            continue;
        };
        let tfull = taddr.full();
        if path.contains(&tfull) {
            match tclass {
                // Loops back to an address that is a mailbox too: deliver there.
                _ if e.has_user(&taddr.base()) || e.has_user(&tfull) => {
                    let login = if e.has_user(&tfull) {
                        tfull.clone()
                    } else {
                        taddr.base()
                    };
                    r.trace
                        .push((depth + 1, format!("{tfull} is the mailbox {login} (self)")));
                    push_target(r, tfull, TargetKind::Mailbox(login))?;
                }
                _ => {
                    tracing::warn!(address = %tfull, "alias loop; target dropped");
                    r.trace
                        .push((depth + 1, format!("{tfull} loops back; dropped")));
                }
            }
            continue;
        }
        path.push(tfull);
        expand_one(e, &taddr, &tclass, &t, depth + 1, path, r)?;
        path.pop();
    }
    Ok(())
}

/// Apply extension propagation and `@domain` (alias domain) targets.
fn rewrite_target<E: Entries + ?Sized>(
    e: &E,
    t: &str,
    ext: Option<&str>,
    catch_local: Option<&str>,
) -> String {
    let t = t.trim();
    if let (Some(domain), Some(local)) = (t.strip_prefix('@'), catch_local) {
        return format!("{local}@{domain}");
    }
    let Some(ext) = ext else { return t.to_string() };
    let Some((local, domain)) = t.rsplit_once('@') else {
        return t.to_string();
    };
    let n = &e.settings().normalizer;
    let has_ext = n.address(t).is_some_and(|a| a.extension.is_some());
    let ours = n.domain(domain).is_some_and(|d| e.has_domain(&d));
    if ours && !has_ext {
        format!("{local}{ext}@{domain}")
    } else {
        t.to_string()
    }
}

/// Socketmap `domains`: the folded domain when it is ours.
pub fn lookup_domain<E: Entries + ?Sized>(e: &E, key: &str) -> Option<String> {
    let d = e.settings().normalizer.domain(key)?;
    e.has_domain(&d).then_some(d)
}

/// The login of the mailbox an address delivers to directly; the fast
/// path of `Directory::lookup_mailbox` (no allocation when the key is
/// already in normal form, no `User` built).
pub fn mailbox_login<'a, E: Entries + ?Sized>(
    e: &'a E,
    key: &str,
) -> Result<Option<&'a str>, LookupError> {
    if e.settings().normalizer.is_normal_form(key) {
        if let Some(login) = e.user_key(key) {
            return Ok(Some(login));
        }
        e.check_ambiguous(key)?;
        return Ok(None);
    }
    let Some(addr) = e.settings().normalizer.address(key) else {
        return Ok(None);
    };
    let full = addr.full();
    if let Some(login) = e.user_key(&full) {
        return Ok(Some(login));
    }
    e.check_ambiguous(&full)?;
    let base = addr.base();
    if let Some(login) = e.user_key(&base) {
        return Ok(Some(login));
    }
    e.check_ambiguous(&base)?;
    Ok(None)
}

/// Socketmap `aliases`: the final targets of an alias or catch-all;
/// `None` for mailboxes and unknown addresses.
pub fn lookup_alias<E: Entries + ?Sized>(
    e: &E,
    key: &str,
) -> Result<Option<Vec<String>>, LookupError> {
    let (_, class) = classify(e, key);
    if let Class::Ambiguous { key, claims } = class {
        return Err(LookupError::Ambiguous {
            address: key,
            claims,
        });
    }
    if !matches!(class, Class::Alias { .. } | Class::CatchAll { .. }) {
        return Ok(None);
    }
    let r = resolve(e, key)?;
    let mut targets = r.targets;
    if matches!(class, Class::CatchAll { .. }) {
        // A catch-all that only leads to unknown local addresses (an
        // alias domain `@a @b` for a user `b` lacks) accepts nothing:
        // answering with those targets would make Postfix accept the
        // mail and bounce it after queueing.
        targets.retain(|t| t.kind != TargetKind::UnknownLocal);
        if targets.is_empty() {
            return Ok(None);
        }
    }
    Ok(Some(targets.into_iter().map(|t| t.address).collect()))
}

/// Socketmap `senders`: the SASL logins allowed to use `key` as sender.
///
/// Explicit entries are looked up as Postfix does for a hash table (full
/// key, key without extension, `@domain`; first match wins). With
/// `implicit_sender_logins`, a mailbox owns its own address and the
/// mailboxes an alias delivers to own the alias (not a catch-all).
pub fn lookup_sender_logins<E: Entries + ?Sized>(
    e: &E,
    key: &str,
) -> Result<Option<Vec<String>>, LookupError> {
    let Some(addr) = e.settings().normalizer.address(key) else {
        return Ok(None);
    };
    let mut out: Vec<String> = Vec::new();
    let explicit = e
        .sender_logins(&addr.full())
        .or_else(|| e.sender_logins(&addr.base()))
        .or_else(|| e.sender_logins(&addr.catch_all()));
    if let Some(list) = explicit {
        out.extend(list.map(str::to_string));
    }
    if e.settings().implicit_sender_logins {
        match classify(e, key).1 {
            Class::Mailbox { login } => out.push(login),
            Class::Alias { .. } => {
                for t in resolve(e, key)?.targets {
                    if let TargetKind::Mailbox(login) = t.kind {
                        out.push(login);
                    }
                }
            }
            Class::Ambiguous { key, claims } => {
                return Err(LookupError::Ambiguous {
                    address: key,
                    claims,
                });
            }
            _ => {}
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|l| seen.insert(l.to_lowercase()));
    Ok((!out.is_empty()).then_some(out))
}

fn push_target(r: &mut Resolution, address: String, kind: TargetKind) -> Result<(), LookupError> {
    if r.targets.iter().any(|t| t.address == address) {
        return Ok(());
    }
    if r.targets.len() >= MAX_ALIAS_EXPANSION {
        return Err(LookupError::TooMany(r.input.clone()));
    }
    r.targets.push(Target { address, kind });
    Ok(())
}
