//! ramdir-postfix: the servers Postfix talks to.
//!
//! - [`socketmap`]: Postfix `socketmap_table(5)` lookups (domains, mailboxes,
//!   aliases, sender logins) answered from the in-memory directory.
//! - [`policy`]: the SMTPD policy service that checks recipients' quota at
//!   RCPT and END-OF-MESSAGE.
//!
//! Each protocol is split the same way: `codec` (pure bytes ↔ typed
//! messages, says "need more data" explicitly), `service` (pure: request +
//! directory snapshot → reply; the one place that maps outcomes to protocol
//! answers) and `server` (the protocol on the connection layer, `ramdir_conn`,
//! which does the sockets, timeouts, limits and shutdown).
//!
//! # Logging policy
//! `info` for listeners starting and stopping, `warn` for a peer that breaks
//! the protocol (its connection is closed), `error` only when a listener can
//! no longer accept. Per-request detail is `debug`/`trace`. Keys are logged
//! truncated; nothing from the directory besides addresses is logged.

pub mod policy;
pub mod socketmap;
