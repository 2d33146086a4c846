//! Policy server: the policy delegation protocol on the connection layer
//! ([`ramdir_conn`], which does the I/O, limits, timeouts and shutdown).
//!
//! One request at a time (smtpd never pipelines), one directory snapshot per
//! request. A malformed request is logged and the connection closed without
//! a reply; Postfix then retries and finally applies the service's
//! `default_action`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use ramdir_conn::{Close, Limits, Out, Protocol};
use ramdir_core::DirectoryHandle;
use ramdir_core::check::UsageSource;
use tokio::net::UnixListener;

use super::codec::{Attr, PolicyRequest};
use super::service::{SWEEP_EVERY, Settings, Tracker, Transactions, decide};

/// Idle time after which ramdir closes a connection. Postfix closes an idle
/// policy connection after `smtpd_policy_service_max_idle` (300 s) and any
/// after `…_max_ttl` (1000 s); ramdir waits longer so it never closes first.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(330);

/// Time allowed to write one reply: Postfix's `smtpd_policy_service_timeout`
/// (100 s).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(100);

/// Free room made in the read buffer before each read: a whole request
/// (Postfix 3.7 sends about 670 bytes at RCPT) fits, so it takes one read.
const READ_ROOM: usize = 1024;

/// Default cap on concurrent connections: see
/// [`ramdir_conn::DEFAULT_MAX_CONNECTIONS`].
pub const DEFAULT_MAX_CONNECTIONS: usize = ramdir_conn::DEFAULT_MAX_CONNECTIONS;

/// Tunables of one policy listener.
#[derive(Debug, Clone)]
pub struct Config {
    /// Concurrent connections.
    pub max_connections: usize,
    /// See [`IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// Grace and reply.
    pub settings: Settings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: IDLE_TIMEOUT,
            settings: Settings::default(),
        }
    }
}

/// Counters for `stats` and tests: the connection layer's.
pub type Stats = ramdir_conn::Stats;

/// Serve policy requests on `listener` until `shutdown` completes.
///
/// # Errors
/// Only when the listener itself fails.
pub async fn run(
    listener: UnixListener,
    directory: Arc<DirectoryHandle>,
    usage: Arc<dyn UsageSource + Send + Sync>,
    config: Config,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let tracker = Arc::new(Tracker::new());
    // Transactions that never reach END-OF-MESSAGE (client gone, message
    // rejected by another restriction) are forgotten on a timer.
    let sweeper = {
        let tracker = tracker.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tick.tick().await;
                tracker.sweep(Instant::now());
            }
        })
    };
    let limits = Limits {
        max_connections: config.max_connections,
        idle_timeout: config.idle_timeout,
        write_timeout: WRITE_TIMEOUT,
        read_room: READ_ROOM,
    };
    let protocol = Policy {
        directory,
        usage,
        tracker,
        settings: config.settings,
    };
    let result = ramdir_conn::serve(listener, Arc::new(protocol), limits, stats, shutdown).await;
    sweeper.abort();
    result
}

/// The policy protocol for the connection layer.
struct Policy {
    directory: Arc<DirectoryHandle>,
    usage: Arc<dyn UsageSource + Send + Sync>,
    tracker: Arc<Tracker>,
    settings: Settings,
}

/// A connection's state: its transaction (handed to the tracker if the
/// connection closes before its END-OF-MESSAGE) and the parsed
/// attributes' vector, reused for every request.
struct Conn {
    transactions: Transactions<Arc<Tracker>>,
    attrs: Vec<Attr<'static>>,
}

impl Protocol for Policy {
    type Conn = Conn;
    const NAME: &'static str = "policy";

    fn open(&self) -> Conn {
        Conn {
            transactions: Transactions::new(self.tracker.clone()),
            attrs: Vec::new(),
        }
    }

    fn answer(
        &self,
        conn: &mut Conn,
        buf: &mut BytesMut,
        out: &mut Out<'_>,
    ) -> Result<bool, Close> {
        // Parsed in place: the request borrows from `buf` until its bytes
        // are dropped after the answer.
        match PolicyRequest::parse_into(buf, std::mem::take(&mut conn.attrs)) {
            Ok(Some((req, used))) => {
                let action = decide(
                    &req,
                    &self.directory.current(),
                    &*self.usage,
                    &mut conn.transactions,
                    &self.settings,
                    Instant::now(),
                );
                action.encode(out.buf);
                conn.attrs = req.recycle();
                buf.advance(used);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(Close::Protocol(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramdir_core::check::Usage;
    use ramdir_core::quota::QuotaLimit;
    use ramdir_core::usage::StoreError;
    use ramdir_core::{Directory, UserSpec};
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    struct Full;
    impl UsageSource for Full {
        fn usage(&self, _: &str) -> Result<Usage, StoreError> {
            Ok(Usage {
                storage: Some(1000),
                messages: None,
            })
        }
    }

    async fn spawn() -> (std::path::PathBuf, tempfile::TempDir, Arc<Stats>) {
        let mut d = Directory::new(ramdir_core::Settings::default());
        d.insert_user(&UserSpec {
            login: "full@x.org".into(),
            quota: Some(QuotaLimit {
                storage: Some(1000),
                messages: None,
            }),
            ..Default::default()
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy");
        let listener = UnixListener::bind(&path).unwrap();
        let stats = Arc::new(Stats::default());
        tokio::spawn(run(
            listener,
            Arc::new(DirectoryHandle::new(d)),
            Arc::new(Full),
            Config::default(),
            stats.clone(),
            std::future::pending(),
        ));
        (path, dir, stats)
    }

    async fn ask(c: &mut UnixStream, req: &[u8]) -> Vec<u8> {
        c.write_all(req).await.unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"\n\n") {
            let mut chunk = [0u8; 256];
            let n = c.read(&mut chunk).await.unwrap();
            assert_ne!(n, 0);
            got.extend_from_slice(&chunk[..n]);
        }
        got
    }

    #[tokio::test]
    async fn answers_on_a_persistent_connection_and_closes_on_garbage() {
        let (path, _dir, stats) = spawn().await;
        let mut c = UnixStream::connect(&path).await.unwrap();
        let rcpt = b"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=full@x.org\nsize=10\ninstance=1.2.3.4\n\n";
        assert_eq!(
            ask(&mut c, rcpt).await,
            b"action=452 4.2.2 Mailbox full\n\n"
        );
        let other =
            b"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=x@remote.test\n\n";
        assert_eq!(ask(&mut c, other).await, b"action=DUNNO\n\n");
        let mut bad = UnixStream::connect(&path).await.unwrap();
        bad.write_all(b"garbage line\n\n").await.unwrap();
        let mut rest = Vec::new();
        bad.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        assert_eq!(ask(&mut c, other).await, b"action=DUNNO\n\n");
        assert_eq!(stats.protocol_errors.load(Ordering::Relaxed), 1);
        // Counts are batched and flushed when the connection ends.
        drop(c);
        for _ in 0..200 {
            if stats.requests.load(Ordering::Relaxed) == 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(stats.requests.load(Ordering::Relaxed), 3);
    }
}
