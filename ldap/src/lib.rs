//! ramdir-ldap: LDAP as the source of truth.
//!
//! - [`mapping`]: attributes → users and aliases, as configured.
//! - [`index`]: entries by `entryUUID`, and atomic per-entry application.
//! - [`source`]: full load, RFC 4533 refreshAndPersist sync, reconnects,
//!   warm-start snapshots.
//! - [`bulk`]: the full load's paged search over a plain connection of its
//!   own, read in place ([`ber`]) instead of through ldap3's decoder.
//! - [`conn`]: connect, StartTLS, bind (simple with a password file, or SASL
//!   EXTERNAL).
//! - [`settings`]: what `[ldap]` in ramdir.toml configures.
//!
//! # Logging policy
//! `info` for loads, sync state changes and reconnects (with figures),
//! `warn` for entries that cannot be mapped and for a lost sync, `error`
//! never (the daemon keeps serving what it has). Bind credentials and
//! password hashes are never logged.

pub mod ber;
pub mod bulk;
pub mod conn;
pub mod fallback;
pub mod index;
pub mod mapping;
pub mod settings;
pub mod source;
