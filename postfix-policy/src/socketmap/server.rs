//! Socketmap server: the socketmap protocol on the connection layer
//! ([`ramdir_conn`], which does the I/O, limits, timeouts and shutdown).
//!
//! One request at a time per connection (Postfix never pipelines; a client
//! that does simply has its requests answered in order). Each request takes
//! exactly one directory snapshot. A malformed or oversized netstring gets a
//! `warn` log line and the connection is closed: after a framing error the
//! stream cannot be trusted. Other connections are not affected.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use ramdir_conn::{COUNT_BATCH, Close, Limits, Out, Protocol};
use ramdir_core::DirectoryHandle;
use ramdir_core::fallback::Fallback;
use tokio::net::UnixListener;

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

/// Default cap on concurrent connections: see
/// [`ramdir_conn::DEFAULT_MAX_CONNECTIONS`].
pub const DEFAULT_MAX_CONNECTIONS: usize = ramdir_conn::DEFAULT_MAX_CONNECTIONS;

/// Free room made in the read buffer before each read: a socketmap request
/// (table name and an address, with the netstring's length) fits.
const READ_ROOM: usize = 512;

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
/// settle (on the runtime: the fallback is asynchronous).
fn answer_request(
    directory: &DirectoryHandle,
    config: &Config,
    runtime: &tokio::runtime::Handle,
    req: &Request,
) -> Reply {
    let dir = directory.snapshot();
    let reply = answer(&dir, req);
    let Some((kind, key)) = source_question(&dir, req, &reply) else {
        return reply;
    };
    let Some(fallback) = &config.fallback else {
        return source_unavailable(&dir, None);
    };
    match runtime.block_on(fallback.fetch(kind, &key)) {
        // Found (now in the directory) or not: the fresh snapshot answers.
        Ok(_) => answer(&directory.snapshot(), req),
        Err(e) => source_unavailable(&dir, Some(&e)),
    }
}

/// Counters for `stats` and tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections, requests, protocol errors and latency (the layer's).
    pub conn: Arc<ramdir_conn::Stats>,
    /// `TEMP` and `TIMEOUT` answers (Postfix defers): counted where they
    /// are made, off the hot path, for `ramdir check` and metrics.
    pub temp: AtomicU64,
    /// `PERM` answers (configuration errors), counted as they are made.
    pub perm: AtomicU64,
    /// `OK` answers, counted per connection in batches as the requests are
    /// (so `NOTFOUND` is `requests` minus `found`, `temp` and `perm`).
    pub found: AtomicU64,
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
    let limits = Limits {
        max_connections: config.max_connections,
        idle_timeout: config.idle_timeout,
        write_timeout: WRITE_TIMEOUT,
        read_room: READ_ROOM,
    };
    let conn_stats = stats.conn.clone();
    let protocol = Socketmap {
        directory,
        config,
        stats,
        runtime: tokio::runtime::Handle::current(),
    };
    ramdir_conn::serve(listener, Arc::new(protocol), limits, conn_stats, shutdown).await
}

/// The socketmap protocol for the connection layer.
struct Socketmap {
    directory: Arc<DirectoryHandle>,
    config: Config,
    stats: Arc<Stats>,
    runtime: tokio::runtime::Handle,
}

/// A connection's `OK` count, added to [`Stats::found`] in batches.
struct Found {
    stats: Arc<Stats>,
    pending: u64,
    seen: u64,
}

impl Drop for Found {
    fn drop(&mut self) {
        self.stats.found.fetch_add(self.pending, Ordering::Relaxed);
    }
}

impl Protocol for Socketmap {
    type Conn = Found;
    const NAME: &'static str = "socketmap";

    fn open(&self) -> Found {
        Found {
            stats: self.stats.clone(),
            pending: 0,
            seen: 0,
        }
    }

    fn answer(
        &self,
        conn: &mut Found,
        buf: &mut BytesMut,
        out: &mut Out<'_>,
    ) -> Result<bool, Close> {
        let ctx = out;
        let out = &mut *ctx.buf;
        let dir = self.directory.current();
        // Answer in place from the snapshot; only a miss the source must
        // settle copies the request out of the buffer.
        let decoded = Request::decode_with(buf, |map, key| {
            let reply = match decide(&dir, map, key) {
                Answer::Login(login) => {
                    Reply::encode_ok(login, out);
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
        let found = match decoded {
            Ok(Some(Ok(None))) => true,
            Ok(Some(Ok(Some(reply)))) => {
                count_rare(&self.stats, &reply);
                reply.encode(out);
                matches!(reply, Reply::Ok(_))
            }
            Ok(Some(Err(req))) => {
                drop(dir);
                // Waits for the source: off the runtime's workers.
                let reply = ctx.blocking(|_| {
                    answer_request(&self.directory, &self.config, &self.runtime, &req)
                });
                count_rare(&self.stats, &reply);
                reply.encode(ctx.buf);
                matches!(reply, Reply::Ok(_))
            }
            Ok(None) => return Ok(false),
            Err(e) => return Err(Close::Protocol(e.to_string())),
        };
        conn.pending += u64::from(found);
        conn.seen += 1;
        if conn.seen >= COUNT_BATCH {
            self.stats.found.fetch_add(conn.pending, Ordering::Relaxed);
            (conn.pending, conn.seen) = (0, 0);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socketmap::codec::Reply;
    use ramdir_core::{Directory, Settings, UserSpec};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

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
        while srv.stats.conn.requests.load(Ordering::Relaxed) < 5 {
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
        assert_eq!(srv.stats.conn.protocol_errors.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_timeout() {
        let srv = spawn(Config {
            idle_timeout: Duration::from_millis(300),
            ..Config::default()
        })
        .await;
        let mut c = UnixStream::connect(&srv.path).await.unwrap();
        assert_eq!(
            roundtrip(&mut c, b"13:domains x.org,").await,
            b"8:OK x.org,"
        );
        // Nothing more sent: ramdir closes the connection.
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
            if srv.stats.conn.requests.load(Ordering::Relaxed) == 32 * 50 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(srv.stats.conn.requests.load(Ordering::Relaxed), 32 * 50);
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
