//! ramdir-core: the in-memory mail directory shared by every ramdir listener.
//!
//! # Layout
//! - [`address`]: how a key that Postfix or Dovecot sends becomes a lookup key
//!   (case folding, `recipient_delimiter` extensions, odd keys).
//! - [`quota`]: Dovecot-style sizes, quota limits and folder rules.
//! - [`table`]: a sharded copy-on-write hash map, the building block that lets
//!   a single-entry change be applied without rebuilding a whole table.
//! - [`model`]: users (packed compactly), settings.
//! - [`directory`]: the immutable [`Directory`] snapshot, its edit operations
//!   and the lock-free [`DirectoryHandle`] readers load once per request.
//! - [`lookup`]: the lookup semantics (aliases, mailboxes, catch-all, domains,
//!   sender logins) and [`lookup::Resolution`] for `ramdir explain`.
//! - [`maps`]: the four Postfix tables (`domains`, `mailboxes`, `aliases`,
//!   `senders`) and what a lookup in each comes to, shared by the socketmap
//!   and the in-process plugin.
//! - [`files`]: the file sources (Dovecot passwd-file, Postfix map sources).
//! - [`usage`]: the durable quota usage store; [`mirror`]: the in-memory
//!   mirror of usage shared across hosts; [`check`]: the SMTP-time decision.
//!
//! This crate knows no protocol and does no I/O besides reading source files:
//! the protocol crates turn its answers into wire replies.
//!
//! # Logging policy
//! Library operation logs nothing above `debug`, with two exceptions: `warn`
//! for directory content that cannot be used as written (an alias loop, an
//! entry dropped on load), and nothing at `error` (callers decide whether a
//! failed load stops the daemon). Secrets (passwords, hashes) are never
//! logged: [`model::UserSpec`] and [`model::User`] redact them in `Debug`.

pub mod address;
pub mod check;
pub mod directory;
pub mod fallback;
pub mod files;
pub mod latency;
pub mod lookup;
pub mod maps;
pub mod mirror;
pub mod model;
pub mod quota;
pub mod table;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod usage;

pub use directory::{Directory, DirectoryHandle};
pub use model::{Settings, User, UserSpec};
