//! The four Postfix lookup tables ramdir answers, and what a lookup in each
//! comes to: the one definition shared by the socketmap service
//! (`postfix-policy`) and the in-process Postfix plugin (`ffi/postfix`),
//! so that `socketmap:…:mailboxes` and `ramdir:…/mailboxes` answer every key
//! alike.
//!
//! | table | key | value | used for |
//! |---|---|---|---|
//! | `domains` | bare domain | the domain | `virtual_mailbox_domains` |
//! | `mailboxes` | address | the mailbox's login | `virtual_mailbox_maps` |
//! | `aliases` | address | final targets, comma-separated | `virtual_alias_maps` |
//! | `senders` | address | SASL logins, comma-separated | `smtpd_sender_login_maps` |

use std::fmt;

use crate::fallback::KeyKind;
use crate::lookup::{self, Entries, LookupError};

/// The tables ramdir serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `virtual_mailbox_domains`.
    Domains,
    /// `virtual_mailbox_maps`.
    Mailboxes,
    /// `virtual_alias_maps`.
    Aliases,
    /// `smtpd_sender_login_maps`.
    Senders,
}

impl Table {
    /// Every table, for docs and `--help`.
    pub const ALL: [Table; 4] = [
        Table::Domains,
        Table::Mailboxes,
        Table::Aliases,
        Table::Senders,
    ];

    /// The table's name (socketmap map name, plugin table name).
    pub fn name(self) -> &'static str {
        match self {
            Table::Domains => "domains",
            Table::Mailboxes => "mailboxes",
            Table::Aliases => "aliases",
            Table::Senders => "senders",
        }
    }

    /// The table with this name.
    pub fn from_name(name: &[u8]) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name().as_bytes() == name)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a lookup came to, before it is put in a protocol's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Found, with values (at least one).
    Found(Vec<String>),
    /// Not ours, or not a key ramdir can hold.
    NotFound,
    /// The directory cannot answer now.
    Trouble(String),
}

impl Outcome {
    /// The value Postfix gets for a hit: the non-empty values joined with
    /// `,`; `None` when nothing usable was found (an empty value is a
    /// configuration error for Postfix, so "found nothing" is "not found").
    pub fn value(values: &[String]) -> Option<String> {
        let mut out = String::new();
        for v in values.iter().filter(|v| !v.is_empty()) {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(v);
        }
        (!out.is_empty()).then_some(out)
    }
}

/// Look `key` up in `table`.
pub fn lookup<E: Entries + ?Sized>(e: &E, table: Table, key: &str) -> Outcome {
    let from = |r: Result<Option<Vec<String>>, LookupError>| match r {
        Ok(Some(v)) => Outcome::Found(v),
        Ok(None) => Outcome::NotFound,
        Err(e) => Outcome::Trouble(e.to_string()),
    };
    match table {
        Table::Domains => match lookup::lookup_domain(e, key) {
            Some(d) => Outcome::Found(vec![d]),
            None => Outcome::NotFound,
        },
        Table::Mailboxes => {
            from(lookup::mailbox_login(e, key).map(|l| l.map(|login| vec![login.to_string()])))
        }
        Table::Aliases => from(lookup::lookup_alias(e, key)),
        Table::Senders => from(lookup::lookup_sender_logins(e, key)),
    }
}

/// A miss of `key` in `table` from a directory that is not authoritative
/// may be wrong: the key to ask the source about, or `None` when the key
/// cannot name anything ramdir holds (garbage stays "not found").
pub fn source_key<E: Entries + ?Sized>(
    e: &E,
    table: Table,
    key: &str,
) -> Option<(KeyKind, String)> {
    let n = &e.settings().normalizer;
    match table {
        Table::Domains => n.domain(key).map(|d| (KeyKind::Domain, d)),
        _ => n.address(key).map(|_| (KeyKind::Address, key.to_string())),
    }
}
