//! Socketmap server: Unix-socket I/O, limits, timeouts and shutdown.
//!
//! One task per connection, one request at a time per connection (Postfix
//! never pipelines; a client that does simply has its requests answered in
//! order). Each request takes exactly one directory snapshot. A malformed or
//! oversized netstring gets a `warn` log line and the connection is closed:
//! after a framing error the stream cannot be trusted. Other connections
//! are not affected.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use ramdir_core::DirectoryHandle;
use ramdir_core::fallback::Fallback;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use super::codec::{Reply, Request};
use super::service::{
    Answer, answer, decide, source_question, source_question_parts, source_unavailable, truncate,
};

/// Idle time after which ramdir closes a connection (a quiet connection is
/// closed between one and two timeouts after its last request: the timer is
/// re-armed when it fires rather than on every request). Postfix closes an idle
/// socketmap connection after 10 s and any connection after 100 s
/// (`DICT_SOCKMAP_DEF_MAX_IDLE`/`MAX_TTL`, `src/util/dict_sockmap.c`), so
/// 120 s means ramdir never closes first under a live Postfix and only
/// reaps clients that vanished without closing.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Time allowed to write one reply. Postfix waits up to 100 s
/// (`DICT_SOCKMAP_DEF_TIMEOUT`); a peer that does not read for that long
/// is gone.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(100);

/// Default cap on concurrent connections. Each Postfix process keeps one
/// connection per socketmap endpoint and `default_process_limit` is 100 per
/// service (smtpd, cleanup, trivial-rewrite, …): a few hundred in practice.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Tunables of one socketmap listener.
#[derive(Debug, Clone)]
pub struct Config {
    /// Concurrent connections; more wait in the listen backlog.
    pub max_connections: usize,
    /// See [`IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// Where misses go while the directory is not authoritative.
    pub fallback: Option<Arc<dyn Fallback>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: IDLE_TIMEOUT,
            fallback: None,
        }
    }
}

/// Answer one request, asking the source about misses the snapshot cannot
/// settle.
async fn answer_request(directory: &DirectoryHandle, config: &Config, req: &Request) -> Reply {
    let dir = directory.snapshot();
    let reply = answer(&dir, req);
    let Some((kind, key)) = source_question(&dir, req, &reply) else {
        return reply;
    };
    let Some(fallback) = &config.fallback else {
        return source_unavailable(&dir, None);
    };
    match fallback.fetch(kind, &key).await {
        // Found (now in the directory) or not: the fresh snapshot answers.
        Ok(_) => answer(&directory.snapshot(), req),
        Err(e) => source_unavailable(&dir, Some(&e)),
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
    /// `TEMP` and `TIMEOUT` answers (Postfix defers): counted where they
    /// are made, off the hot path, for `ramdir check` and metrics.
    pub temp: AtomicU64,
    /// `PERM` answers (configuration errors), counted as they are made.
    pub perm: AtomicU64,
    /// `OK` answers, counted with `requests` (so `NOTFOUND` is `requests`
    /// minus `found`, `temp` and `perm`).
    pub found: AtomicU64,
    /// Time to answer a request (decode, look up, encode), sampled, while
    /// metrics are on.
    pub latency: ramdir_core::latency::Latency,
}

/// Count the rare replies as they are made: those that make Postfix defer
/// and configuration errors.
fn count_rare(stats: &Stats, reply: &Reply) {
    match reply {
        Reply::Temp(_) | Reply::Timeout(_) => {
            stats.temp.fetch_add(1, Ordering::Relaxed);
        }
        Reply::Perm(_) => {
            stats.perm.fetch_add(1, Ordering::Relaxed);
        }
        Reply::Ok(_) | Reply::NotFound => {}
    }
}

/// Serve socketmap requests on `listener` until `shutdown` completes, then
/// let connections finish their current request (up to a few seconds).
///
/// # Errors
/// Only when the listener itself fails; a single connection's failure is
/// logged and closes that connection.
pub async fn run(
    listener: UnixListener,
    directory: Arc<DirectoryHandle>,
    config: Config,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let max = config.max_connections;
    crate::accept::run("socketmap", listener, max, shutdown, move |stream, stop| {
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let (directory, config, stats) = (directory.clone(), config.clone(), stats.clone());
        async move { serve_connection(stream, &directory, &config, &stats, stop).await }
    })
    .await
}

/// Requests counted locally before they are added to the shared counter:
/// an atomic add on every request would bounce its cache line between the
/// CPUs serving different connections.
const COUNT_BATCH: u64 = 256;

/// Free room made in the read buffer before each read. Parsing in place
/// leaves the consumed front of the buffer unusable until it is reclaimed;
/// without this, a request read into what was left could take two reads.
const READ_ROOM: usize = 512;

/// A connection's request count, flushed in batches and when it ends.
struct Counted<'a> {
    stats: &'a Stats,
    pending: u64,
    found: u64,
}

impl Counted<'_> {
    fn add(&mut self, found: bool) {
        self.pending += 1;
        self.found += u64::from(found);
        if self.pending >= COUNT_BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.stats
            .requests
            .fetch_add(self.pending, Ordering::Relaxed);
        self.stats.found.fetch_add(self.found, Ordering::Relaxed);
        self.pending = 0;
        self.found = 0;
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

async fn serve_connection(
    mut stream: UnixStream,
    directory: &DirectoryHandle,
    config: &Config,
    stats: &Stats,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = BytesMut::with_capacity(512);
    let mut out = BytesMut::with_capacity(512);
    // One idle timer and one stop future per connection, not per read.
    let idle = tokio::time::sleep(config.idle_timeout);
    tokio::pin!(idle);
    let (mut reads, mut reads_when_armed) = (0u64, 0u64);
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopping);
    let mut stopped = false;
    let mut counted = Counted {
        stats,
        pending: 0,
        found: 0,
    };
    let mut sampler = ramdir_core::latency::Sampler::default();
    loop {
        // Answer every complete request already buffered.
        loop {
            let started = sampler.start(&stats.latency);
            let dir = directory.current();
            // Answer in place from the snapshot; only a miss the source must
            // settle copies the request out of the buffer.
            let decoded = Request::decode_with(&mut buf, |map, key| {
                let reply = match decide(&dir, map, key) {
                    Answer::Login(login) => {
                        Reply::encode_ok(login, &mut out);
                        return Ok(None);
                    }
                    Answer::Reply(r) => r,
                };
                tracing::trace!(
                    map = %String::from_utf8_lossy(map),
                    key = %truncate(&String::from_utf8_lossy(key), 100),
                    reply = ?reply,
                    "socketmap lookup"
                );
                match source_question_parts(&dir, map, key, &reply) {
                    None => Ok(Some(reply)),
                    Some(_) => Err(Request {
                        map: map.to_vec(),
                        key: key.to_vec(),
                    }),
                }
            });
            match decoded {
                Ok(Some(answered)) => {
                    // A login found in place is encoded by the decoder.
                    let found = match answered {
                        Ok(None) => true,
                        Ok(Some(reply)) => {
                            count_rare(stats, &reply);
                            reply.encode(&mut out);
                            matches!(reply, Reply::Ok(_))
                        }
                        Err(req) => {
                            let reply = answer_request(directory, config, &req).await;
                            count_rare(stats, &reply);
                            reply.encode(&mut out);
                            matches!(reply, Reply::Ok(_))
                        }
                    };
                    counted.add(found);
                    ramdir_core::latency::Sampler::finish(&stats.latency, started);
                }
                Ok(None) => break,
                Err(e) => {
                    stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "closing socketmap connection");
                    return;
                }
            }
        }
        if !out.is_empty() {
            // Most replies fit the socket buffer at once: try without a timer.
            match stream.try_write(&out) {
                Ok(n) if n == out.len() => out.clear(),
                Ok(n) => {
                    let _ = out.split_to(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::debug!(error = %e, "socketmap client went away");
                    return;
                }
            }
            if !out.is_empty() {
                match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&out)).await {
                    Ok(Ok(())) => out.clear(),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "socketmap client went away");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!("socketmap client did not read its reply; closing");
                        return;
                    }
                }
            }
        }
        if stopped {
            // Shutting down: the requests that had arrived are answered.
            return;
        }
        tokio::select! {
            biased;
            r = { buf.reserve(READ_ROOM); stream.read_buf(&mut buf) } => match r {
                Ok(0) => {
                    if !buf.is_empty() {
                        tracing::debug!(pending = buf.len(), "socketmap client closed mid-request");
                    }
                    return;
                }
                Ok(_) => reads += 1,
                Err(e) => {
                    tracing::debug!(error = %e, "socketmap read failed");
                    return;
                }
            },
            () = &mut idle => {
                // No clock is read per request: when the timer fires, it
                // checks whether the connection was used since it was set.
                if reads != reads_when_armed {
                    reads_when_armed = reads;
                    idle.as_mut().reset(tokio::time::Instant::now() + config.idle_timeout);
                    continue;
                }
                tracing::debug!("socketmap connection idle; closing");
                return;
            }
            () = &mut stopping, if !stopped => {
                stopped = true;
                if buf.is_empty() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socketmap::codec::Reply;
    use ramdir_core::{Directory, Settings, UserSpec};

    struct TestServer {
        path: std::path::PathBuf,
        _dir: tempfile::TempDir,
        stats: Arc<Stats>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    async fn spawn(config: Config) -> TestServer {
        let mut d = Directory::new(Settings::default());
        d.insert_user(&UserSpec {
            login: "a@x.org".into(),
            ..Default::default()
        });
        let handle = Arc::new(DirectoryHandle::new(d));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        let stats = Arc::new(Stats::default());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(run(listener, handle, config, stats.clone(), async {
            let _ = rx.await;
        }));
        TestServer {
            path,
            _dir: dir,
            stats,
            stop: Some(tx),
            task,
        }
    }

    async fn roundtrip(s: &mut UnixStream, bytes: &[u8]) -> Vec<u8> {
        s.write_all(bytes).await.unwrap();
        let mut buf = BytesMut::new();
        loop {
            if let Some(r) = Reply::decode(&mut buf).unwrap() {
                let mut out = BytesMut::new();
                r.encode(&mut out);
                return out.to_vec();
            }
            assert_ne!(s.read_buf(&mut buf).await.unwrap(), 0, "server closed");
        }
    }

    #[tokio::test]
    async fn answers_in_order_on_one_connection() {
        let srv = spawn(Config::default()).await;
        let mut c = UnixStream::connect(&srv.path).await.unwrap();
        assert_eq!(
            roundtrip(&mut c, b"17:mailboxes a@x.org,").await,
            b"10:OK a@x.org,"
        );
        assert_eq!(
            roundtrip(&mut c, b"17:mailboxes b@x.org,").await,
            b"9:NOTFOUND ,"
        );
        // Two requests in one write are answered in order.
        c.write_all(b"13:domains x.org,13:domains y.org,")
            .await
            .unwrap();
        let mut buf = BytesMut::new();
        let mut replies = Vec::new();
        while replies.len() < 2 {
            c.read_buf(&mut buf).await.unwrap();
            while let Some(r) = Reply::decode(&mut buf).unwrap() {
                replies.push(r);
            }
        }
        assert_eq!(replies, [Reply::Ok("x.org".into()), Reply::NotFound]);
        // An unknown table is TEMP, and counted as such (found and
        // not-found answers are not).
        assert_eq!(srv.stats.temp.load(Ordering::Relaxed), 0);
        let temp = roundtrip(&mut c, b"14:nosuch a@x.org,").await;
        assert!(temp.windows(4).any(|w| w == b"TEMP"));
        assert_eq!(srv.stats.temp.load(Ordering::Relaxed), 1);
        drop(c);
        // Counted when the connection ends: 5 requests, one OK login and
        // one OK domain.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while srv.stats.requests.load(Ordering::Relaxed) < 5 {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(srv.stats.found.load(Ordering::Relaxed), 2);
        assert_eq!(srv.stats.perm.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn malformed_and_oversized_close_only_that_connection() {
        let srv = spawn(Config::default()).await;
        let mut good = UnixStream::connect(&srv.path).await.unwrap();
        for bad in [&b"abc:"[..], b"99999999999:", b"3:abc,", b"5:a b c;"] {
            let mut c = UnixStream::connect(&srv.path).await.unwrap();
            c.write_all(bad).await.unwrap();
            let mut rest = Vec::new();
            let n = c.read_to_end(&mut rest).await.unwrap();
            assert_eq!(n, 0, "{bad:?} got a reply");
            // The good connection still works.
            assert_eq!(
                roundtrip(&mut good, b"17:mailboxes a@x.org,").await,
                b"10:OK a@x.org,"
            );
        }
        assert_eq!(srv.stats.protocol_errors.load(Ordering::Relaxed), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed_after_the_timeout() {
        let srv = spawn(Config {
            idle_timeout: Duration::from_secs(120),
            ..Config::default()
        })
        .await;
        let mut c = UnixStream::connect(&srv.path).await.unwrap();
        assert_eq!(
            roundtrip(&mut c, b"13:domains x.org,").await,
            b"8:OK x.org,"
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        // Still open after 60 s (longer than Postfix's own 10 s idle close).
        assert_eq!(
            roundtrip(&mut c, b"13:domains x.org,").await,
            b"8:OK x.org,"
        );
        tokio::time::advance(Duration::from_secs(121)).await;
        let mut rest = Vec::new();
        assert_eq!(c.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn many_concurrent_connections_and_connection_limit() {
        let srv = spawn(Config {
            max_connections: 8,
            ..Config::default()
        })
        .await;
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let path = srv.path.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = UnixStream::connect(&path).await.unwrap();
                for _ in 0..50 {
                    assert_eq!(
                        roundtrip(&mut c, b"17:mailboxes a@x.org,").await,
                        b"10:OK a@x.org,"
                    );
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // Counts are flushed when each connection ends (clients just closed).
        for _ in 0..200 {
            if srv.stats.requests.load(Ordering::Relaxed) == 32 * 50 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(srv.stats.requests.load(Ordering::Relaxed), 32 * 50);
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_and_returns() {
        let mut srv = spawn(Config::default()).await;
        let mut c = UnixStream::connect(&srv.path).await.unwrap();
        assert_eq!(
            roundtrip(&mut c, b"13:domains x.org,").await,
            b"8:OK x.org,"
        );
        srv.stop.take().unwrap().send(()).unwrap();
        srv.task.await.unwrap().unwrap();
        let mut rest = Vec::new();
        assert_eq!(c.read_to_end(&mut rest).await.unwrap(), 0);
    }
}
