//! Looking a miss up at the source while the directory is not authoritative.
//!
//! While an LDAP source is still loading, or has lost its sync for longer
//! than allowed, a key missing from memory may exist at the source. The
//! protocol servers then ask a [`Fallback`] before answering: it looks the
//! key up (with a negative cache and a concurrency limit, so spam to unknown
//! addresses cannot flood LDAP) and adds what it finds to the directory.
//! When the source cannot answer, the caller must answer "temporary"
//! (socketmap `TEMP`, dict `F`), never "not found".
//!
//! Defined here, without any async runtime, so protocols and sources stay
//! independent: the future is a plain boxed `std` future.

use std::future::Future;
use std::pin::Pin;

/// What kind of key is being looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// An address (mailbox, alias, login).
    Address,
    /// A bare domain.
    Domain,
}

/// The future a fallback lookup returns: `Ok(true)` found (and now in the
/// directory), `Ok(false)` not found at the source, `Err` the source could
/// not be asked.
pub type FetchFuture<'a> = Pin<Box<dyn Future<Output = Result<bool, String>> + Send + 'a>>;

/// A source that can look single keys up.
pub trait Fallback: Send + Sync + std::fmt::Debug {
    /// Look `key` up at the source and add what is found to the directory.
    fn fetch<'a>(&'a self, kind: KeyKind, key: &'a str) -> FetchFuture<'a>;
}
