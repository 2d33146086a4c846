//! Talking to systemd when it runs ramdir (`Type=notify`, sd_notify(3)):
//! `READY=1` once the first directory is served, `STATUS=` with users,
//! generation and LDAP state, `EXTEND_TIMEOUT_USEC` while a first LDAP load
//! is making progress, `WATCHDOG=1` from the serving runtime, and
//! `RELOADING=1`/`STOPPING=1` around reloads and shutdown.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op, so the
//! same binary runs from a shell, in tests and under the unit. The truth for
//! the protocol is sd_notify(3) of systemd 252 (Debian 12).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ramdir_core::DirectoryHandle;
use ramdir_ldap::source::LdapSource;
use sd_notify::NotifyState;
use tokio::sync::watch;

/// How often `STATUS=` is refreshed (and `WATCHDOG=1` sent when no shorter
/// watchdog interval asks for more).
const STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// While the first LDAP load makes progress, each tick asks systemd for
/// this much more start time (the unit's TimeoutStartSec is the floor).
const EXTEND_BY: Duration = Duration::from_secs(30);

/// A first LDAP load that has made no progress for this long (LDAP down,
/// unreachable) no longer holds the start back: ramdir reports ready and
/// serves what it has (misses are `TEMP` or go to the LDAP fallback), so
/// Postfix and Dovecot, ordered after ramdir, are not held up either.
const READY_WITHOUT_PROGRESS: Duration = Duration::from_secs(60);

/// Whether systemd listens (`NOTIFY_SOCKET` is set).
fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// The one-line state for `systemctl status`.
pub fn status_line(handle: &DirectoryHandle, ldap: Option<&LdapSource>) -> String {
    let d = handle.snapshot();
    let c = d.counts();
    let m = d.meta();
    let mut s = format!(
        "{} users, {} aliases, {} domains, generation {}",
        c.users, c.aliases, c.domains, m.generation
    );
    if let Some(src) = ldap {
        let st = src.status();
        s.push_str(&format!(
            "; LDAP {}",
            st["phase"].as_str().unwrap_or("unknown")
        ));
    }
    if !m.authoritative {
        s.push_str("; not authoritative (misses are TEMP or asked of LDAP)");
    }
    s
}

/// `RELOADING=1` before a reload.
pub fn reloading() {
    send(&[NotifyState::Reloading]);
}

/// `READY=1` and a fresh `STATUS=` after a reload (or at start).
pub fn ready(handle: &DirectoryHandle, ldap: Option<&LdapSource>) {
    send(&[
        NotifyState::Ready,
        NotifyState::Status(&status_line(handle, ldap)),
    ]);
}

/// `STOPPING=1` at shutdown.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

/// Report readiness, then keep `STATUS=` and the watchdog fed until `stop`.
/// Call once every listener is bound.
pub async fn supervise(
    handle: Arc<DirectoryHandle>,
    ldap: Option<Arc<LdapSource>>,
    mut stop: watch::Receiver<bool>,
) {
    if !enabled() {
        return;
    }
    let tick = Duration::from_secs(1);
    // A first LDAP load (no warm snapshot) is what can take long.
    if let Some(src) = &ldap {
        let mut loaded = src.stats.entries_loaded.load(Ordering::Relaxed);
        let mut progress = Instant::now();
        while !handle.snapshot().meta().authoritative {
            let now = src.stats.entries_loaded.load(Ordering::Relaxed);
            if now != loaded {
                loaded = now;
                progress = Instant::now();
            }
            if progress.elapsed() >= READY_WITHOUT_PROGRESS {
                tracing::warn!(
                    "first LDAP load made no progress for {}s: reporting ready without it",
                    READY_WITHOUT_PROGRESS.as_secs()
                );
                break;
            }
            let status = format!("loading from LDAP: {loaded} entries");
            send(&[
                NotifyState::ExtendTimeoutUsec(EXTEND_BY.as_micros() as u32),
                NotifyState::Status(&status),
            ]);
            tokio::select! {
                () = tokio::time::sleep(tick) => {}
                _ = stop.changed() => return,
            }
        }
    }
    ready(&handle, ldap.as_deref());
    // Half the watchdog interval, as sd_watchdog_enabled(3) advises.
    let every = sd_notify::watchdog_enabled()
        .map(|w| (w / 2).min(STATUS_INTERVAL))
        .unwrap_or(STATUS_INTERVAL)
        .max(Duration::from_millis(100));
    let mut last = String::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let status = status_line(&handle, ldap.as_deref());
        if status != last {
            send(&[NotifyState::Watchdog, NotifyState::Status(&status)]);
            last = status;
        } else {
            send(&[NotifyState::Watchdog]);
        }
    }
}
