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
    /// Milter (requests: quota checks made).
    pub milter: Arc<ramdir_conn::Stats>,
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
            "connections": load(&c.socketmap.conn.connections),
            "requests": load(&c.socketmap.conn.requests),
            "temp": load(&c.socketmap.temp),
            "protocol_errors": load(&c.socketmap.conn.protocol_errors),
        },
        "policy": {
            "connections": load(&c.policy.connections),
            "requests": load(&c.policy.requests),
            "protocol_errors": load(&c.policy.protocol_errors),
        },
        "dict": {
            "connections": load(&c.dict.connections),
            "commands": load(&c.dict.requests),
            "protocol_errors": load(&c.dict.protocol_errors),
        },
        "milter": {
            "connections": load(&c.milter.connections),
            "checks": load(&c.milter.requests),
        },
        // What malloc holds: in use by ramdir, and taken from the system
        // (the rest is free memory the allocator keeps); absent off glibc.
        "malloc": ramdir_malloc::heap().map(|h| serde_json::json!({
            "heap_in_use_bytes": h.in_use,
            "heap_from_system_bytes": h.from_system,
        })),
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

/// Why the document could not be read.
#[derive(Debug)]
pub enum FetchError {
    /// Nothing listens on the socket (no file, or connection refused):
    /// ramdir is not running.
    NotRunning(String),
    /// The daemon did not answer in time.
    Timeout(String),
    /// Anything else (permissions, garbage).
    Other(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::NotRunning(m) | FetchError::Timeout(m) | FetchError::Other(m) => {
                f.write_str(m)
            }
        }
    }
}

impl std::error::Error for FetchError {}

/// Read and parse the document, giving up after `timeout`.
pub fn fetch_value(socket: &Path, timeout: Duration) -> Result<serde_json::Value, FetchError> {
    use std::io::ErrorKind as K;
    let s = socket.display();
    let mut conn = std::os::unix::net::UnixStream::connect(socket).map_err(|e| match e.kind() {
        K::NotFound | K::ConnectionRefused => {
            FetchError::NotRunning(format!("ramdir is not running (connect {s}: {e})"))
        }
        _ => FetchError::Other(format!("connect {s}: {e}")),
    })?;
    let io = |e: std::io::Error| match e.kind() {
        K::WouldBlock | K::TimedOut => FetchError::Timeout(format!(
            "no answer on {s} within {}s",
            timeout.as_secs_f64()
        )),
        _ => FetchError::Other(format!("read {s}: {e}")),
    };
    conn.set_read_timeout(Some(timeout)).map_err(io)?;
    let mut text = String::new();
    conn.read_to_string(&mut text).map_err(io)?;
    serde_json::from_str(&text).map_err(|e| FetchError::Other(format!("{s}: bad document: {e}")))
}

/// `ramdir stats`: read the document from a running daemon.
pub fn fetch(socket: &Path) -> Result<String, CmdError> {
    let v = fetch_value(socket, WRITE_TIMEOUT).map_err(|e| match e {
        FetchError::NotRunning(m) => format!("{m} (is ramdir running with [stats]?)"),
        e => e.to_string(),
    })?;
    Ok(serde_json::to_string_pretty(&v)?)
}
