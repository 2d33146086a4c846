//! ramdir-milter: a quota milter that refuses over-quota recipients while
//! the SMTP session is still open, so that full mailboxes do not turn into
//! bounces from Dovecot's LMTP later.
//!
//! The decision is ramdir-core's ([`ramdir_core::check`]), the same one the
//! policy service makes; this crate only speaks the milter protocol around
//! it. The truth for that protocol is the peers' source, not this crate:
//! - libmilter (`mfapi.h`, `mfdef.h`; Sendmail 8.17 as packaged in Debian 12)
//!   for the protocol itself;
//! - [indymilter] 0.3, whose callbacks and negotiation are used here, and
//!   which aims to behave exactly like libmilter;
//! - Postfix 3.7 `MILTER_README` and `src/milter/milter8.c` for what the MTA
//!   sends and what each reply does (protocols.md section 5).
//!
//! # What the milter answers
//! - **RCPT**: the recipient is checked (through aliases and catch-alls)
//!   against the `SIZE=` of MAIL (absent or 0: unknown, counted as 1 byte).
//!   Over quota gets the configured reply (`452 4.2.2 Mailbox full` by
//!   default: a 4xx reply is sent with *tempfail*, a 5xx with *reject*), and
//!   that refuses only this recipient. Otherwise *continue*.
//! - **End of message**: the message is checked again with the size counted
//!   from its headers and body (see `Message::counted_size` in the source
//!   for the measure), for the recipients let through at RCPT. It is
//!   refused, with the same reply, only when **every** one of them is over
//!   quota; that reply applies to the whole message. Otherwise *continue*.
//! - A check that cannot be made (usage store failure, a panic in the check)
//!   answers *tempfail* with `451 4.3.0`, never *continue*.
//!
//! The milter never answers *accept* or *discard* and never deletes a
//! recipient: *accept* at RCPT would end the milter's events for the whole
//! message, *discard* at RCPT discards the whole message, and DELRCPT drops
//! a recipient silently (protocols.md G18). It asks for no editing action.
//!
//! Like the policy service, the milter sees recipients before virtual alias
//! expansion (G21) and resolves them itself from the in-memory directory.
//! With several milters, one later in `smtpd_milters` may refuse a
//! recipient this one let through; the end-of-message check then still
//! counts it, which can only make it accept more.
//!
//! # Postfix configuration
//! ```text
//! smtpd_milters = { unix:private/ramdir-milter, default_action=tempfail }
//! milter_protocol = 6
//! ```
//! `unix:private/…` is relative to Postfix's queue directory, which keeps
//! the chrooted smtpd working (G5). Set `default_action=tempfail` so that
//! mail waits rather than slipping past the quota check when the milter is
//! down.
//!
//! # Logging policy
//! `info` when the milter starts listening and when it stops. `warn` when
//! a check could not be made (the answer was tempfail) or the listener
//! failed; indymilter itself logs at `error` when it can no longer accept
//! connections. Each refusal is logged at `debug` (Postfix logs it too, as
//! `milter-reject`), each recipient or message let through at `trace`.
//! Addresses and mailbox names are logged, nothing else from the directory.

mod config;
mod server;
// Public only for the fuzz targets (`fuzz/fuzz_targets/milter.rs`): not
// part of the crate's API.
#[doc(hidden)]
pub mod service;

use std::future::Future;
use std::io;
use std::sync::Arc;

use ramdir_core::DirectoryHandle;
use ramdir_core::check::UsageSource;
use tokio::net::UnixListener;

pub use config::{Config, DEFAULT_MAX_CONNECTIONS, MAX_TEXT_LEN, OverQuotaReply, ParseReplyError};

/// Serve the quota milter on `listener` until `shutdown` completes.
///
/// Every quota check takes one snapshot of `directory` and reads `usage`
/// on tokio's blocking pool.
///
/// # Termination
/// When `shutdown` completes, the listener is closed and each MTA
/// connection finishes the command it is processing, then closes; the
/// future completes once they are gone.
///
/// Counts go to `stats` (the connection layer's: connections accepted,
/// checks made as requests, the time of each check as latency). Accept
/// errors that a lack of resources causes (out of file descriptors) pause
/// accepting for [`ramdir_conn::ACCEPT_BACKOFF`], as on every listener,
/// instead of ending the milter.
///
/// # Errors
/// - [`io::ErrorKind::InvalidInput`] at once when `config` is unusable
///   (`max_connections` of 0, or an over-quota reply Postfix would refuse).
/// - The listener's error when it can no longer accept connections. The
///   failure of one MTA connection only closes that connection.
pub async fn run(
    listener: UnixListener,
    directory: Arc<DirectoryHandle>,
    usage: Arc<dyn UsageSource + Send + Sync>,
    config: Config,
    stats: Arc<ramdir_conn::Stats>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let listener = server::Accepting::new(listener, stats.clone());
    server::serve(listener, directory, usage, config, stats, shutdown).await
}
