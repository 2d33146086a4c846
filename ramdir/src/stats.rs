//! `[stats]`: a Unix socket that answers every connection with one JSON
//! document about the running daemon (directory sizes and provenance,
//! whether misses are final, LDAP sync state, per-listener counters), then
//! closes. `ramdir stats` prints it.

use std::future::Future;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use ramdir_core::DirectoryHandle;
use ramdir_dovecot::server as dict;
use ramdir_ldap::source::LdapSource;
use ramdir_postfix::{policy, socketmap};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;

use crate::serve::CmdError;

/// How long a stats client may take to read the document.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The listeners' counters, shared with the stats socket.
#[derive(Debug, Default)]
pub struct Counters {
    /// Socketmap.
    pub socketmap: Arc<socketmap::server::Stats>,
    /// Policy.
    pub policy: Arc<policy::server::Stats>,
    /// Dict.
    pub dict: Arc<dict::Stats>,
}

/// The document.
pub fn document(
    handle: &DirectoryHandle,
    c: &Counters,
    ldap: Option<&LdapSource>,
) -> serde_json::Value {
    let d = handle.snapshot();
    let counts = d.counts();
    let m = d.meta();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    serde_json::json!({
        "directory": {
            "users": counts.users,
            "aliases": counts.aliases,
            "domains": counts.domains,
            "senders": counts.senders,
            "ambiguous": counts.ambiguous,
            "generation": m.generation,
            "published_unix": m.published.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            "source": &*m.source,
            "authoritative": m.authoritative,
            "note": m.note.as_deref(),
        },
        "ldap": ldap.map(LdapSource::status),
        "socketmap": {
            "connections": load(&c.socketmap.connections),
            "requests": load(&c.socketmap.requests),
            "protocol_errors": load(&c.socketmap.protocol_errors),
        },
        "policy": {
            "connections": load(&c.policy.connections),
            "requests": load(&c.policy.requests),
            "protocol_errors": load(&c.policy.protocol_errors),
        },
        "dict": {
            "connections": load(&c.dict.connections),
            "commands": load(&c.dict.commands),
            "protocol_errors": load(&c.dict.protocol_errors),
        },
    })
}

/// Serve the stats socket until `shutdown`.
pub async fn run(
    listener: UnixListener,
    handle: Arc<DirectoryHandle>,
    counters: Arc<Counters>,
    ldap: Option<Arc<LdapSource>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let mut stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "stats accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let mut text = document(&handle, &counters, ldap.as_deref()).to_string();
        text.push('\n');
        tokio::spawn(async move {
            let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(text.as_bytes())).await;
        });
    }
}

/// `ramdir stats`: read the document from a running daemon.
pub fn fetch(socket: &Path) -> Result<String, CmdError> {
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        format!(
            "connect {}: {e} (is ramdir running with [stats]?)",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(WRITE_TIMEOUT))?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    Ok(serde_json::to_string_pretty(&v)?)
}
