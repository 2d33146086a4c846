//! Policy server: Unix-socket I/O, limits, timeouts, shutdown.
//!
//! One task per connection, one request at a time (smtpd never pipelines),
//! one directory snapshot per request. A malformed request is logged and
//! the connection closed without a reply; Postfix then retries and finally
//! applies the service's `default_action`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use ramdir_core::DirectoryHandle;
use ramdir_core::check::UsageSource;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use super::codec::PolicyRequest;
use super::service::{SWEEP_EVERY, Settings, Tracker, Transactions, decide};

/// Idle time after which ramdir closes a connection (between one and two of
/// these after the last request: the timer re-arms itself when it fires).
/// Postfix closes an idle policy connection after `smtpd_policy_service_max_idle` (300 s) and any
/// after `…_max_ttl` (1000 s); ramdir waits longer so it never closes first.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(330);

/// Time allowed to write one reply: Postfix's `smtpd_policy_service_timeout`
/// (100 s).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(100);

/// Requests counted locally before they are added to the shared counter (an
/// atomic add per request would bounce its cache line between the CPUs).
const COUNT_BATCH: u64 = 256;

/// Free room made in the read buffer before each read. Parsing in place
/// leaves the consumed front of the buffer unusable until it is reclaimed;
/// without this, a request read into what was left took two reads (a
/// 670-byte policy request after one that used most of a 1 KiB buffer).
const READ_ROOM: usize = 1024;

/// Default cap on concurrent connections: one per smtpd process
/// (`default_process_limit` 100), with room for several smtpd services.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

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

/// Counters for `stats` and tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Requests answered.
    pub requests: AtomicU64,
    /// Connections closed for a protocol error.
    pub protocol_errors: AtomicU64,
    /// Time to decide a request, sampled, while metrics are on.
    pub latency: ramdir_core::latency::Latency,
}

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
    let max = config.max_connections;
    let result = crate::accept::run("policy", listener, max, shutdown, move |stream, stop| {
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let (directory, usage, config, stats, tracker) = (
            directory.clone(),
            usage.clone(),
            config.clone(),
            stats.clone(),
            tracker.clone(),
        );
        async move {
            serve_connection(stream, &directory, &*usage, &tracker, &config, &stats, stop).await
        }
    })
    .await;
    sweeper.abort();
    result
}

async fn serve_connection(
    mut stream: UnixStream,
    directory: &DirectoryHandle,
    usage: &(dyn UsageSource + Send + Sync),
    tracker: &Tracker,
    config: &Config,
    stats: &Stats,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = BytesMut::with_capacity(1024);
    let mut out = BytesMut::with_capacity(128);
    // The parsed attributes' vector, reused for every request.
    let mut attrs = Vec::new();
    // This connection's transaction; handed to `tracker` if the connection
    // closes before its END-OF-MESSAGE.
    let mut transactions = Transactions::new(tracker);
    // As in the socketmap server: one idle timer and one stop future per
    // connection, re-armed when it fires if the connection was used, so no
    // timer or clock work is done per request.
    let idle = tokio::time::sleep(config.idle_timeout);
    tokio::pin!(idle);
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopping);
    let (mut stopped, mut reads, mut reads_when_armed) = (false, 0u64, 0u64);
    let mut answered = 0u64;
    let mut sampler = ramdir_core::latency::Sampler::default();
    let result = 'conn: loop {
        loop {
            // Parsed in place: the request borrows from `buf` until its
            // bytes are dropped after the answer.
            match PolicyRequest::parse_into(&buf, std::mem::take(&mut attrs)) {
                Ok(Some((req, used))) => {
                    let started = sampler.start(&stats.latency);
                    let action = decide(
                        &req,
                        &directory.current(),
                        usage,
                        &mut transactions,
                        &config.settings,
                        Instant::now(),
                    );
                    action.encode(&mut out);
                    ramdir_core::latency::Sampler::finish(&stats.latency, started);
                    attrs = req.recycle();
                    buf.advance(used);
                    answered += 1;
                    if answered >= COUNT_BATCH {
                        stats.requests.fetch_add(answered, Ordering::Relaxed);
                        answered = 0;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "closing policy connection");
                    break 'conn Err(());
                }
            }
        }
        if !out.is_empty() {
            match stream.try_write(&out) {
                Ok(n) => {
                    let _ = out.split_to(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::debug!(error = %e, "policy client went away");
                    break Err(());
                }
            }
            if !out.is_empty() {
                match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&out)).await {
                    Ok(Ok(())) => out.clear(),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "policy client went away");
                        break Err(());
                    }
                    Err(_) => {
                        tracing::warn!("policy client did not read its reply; closing");
                        break Err(());
                    }
                }
            }
        }
        if stopped {
            break Ok(());
        }
        tokio::select! {
            biased;
            r = { buf.reserve(READ_ROOM); stream.read_buf(&mut buf) } => match r {
                Ok(0) | Err(_) => break Ok(()),
                Ok(_) => reads += 1,
            },
            () = &mut idle => {
                if reads != reads_when_armed {
                    reads_when_armed = reads;
                    idle.as_mut().reset(tokio::time::Instant::now() + config.idle_timeout);
                    continue;
                }
                break Ok(());
            }
            () = &mut stopping, if !stopped => {
                stopped = true;
                if buf.is_empty() {
                    break Ok(());
                }
            }
        }
    };
    let _ = result;
    stats.requests.fetch_add(answered, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramdir_core::check::Usage;
    use ramdir_core::quota::QuotaLimit;
    use ramdir_core::usage::StoreError;
    use ramdir_core::{Directory, UserSpec};

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
