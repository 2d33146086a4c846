//! The connection layer every Unix-socket mail listener uses (socketmap,
//! policy, dict): the accept loop with its connection limit and accept
//! back-off, the per-connection loop with its read room, idle and write
//! timeouts, batched counters and sampled latency, and the drain on
//! shutdown. What a request is and how it is answered is a [`Protocol`]
//! (codec plus service, no I/O); this crate does only the I/O, so what is
//! hardened here is hardened for every listener. The milter runs on
//! indymilter's own loop and shares the conventions ([`Stats`], the
//! latency histogram, the limit constants) instead.
//!
//! # Model: a tokio task per connection
//! Chosen by measurement against a blocking thread per connection (both
//! ran from this crate, docs/benchmarks.md "The connection layer" has the
//! figures): the task model costs 35–55 % less server CPU time per request
//! at 16, 100 and 500 connections for every protocol (two runtime workers
//! batch readiness events; a thread per connection pays a context switch
//! per request), which on a machine that is not shared is throughput
//! (the tokio constant-reply server reached 1.4–2.0 × the blocking one on
//! a quiet machine), and it handles connect-per-request clients (Dovecot's
//! dict without `idle_msecs`) at least as fast with less CPU time per
//! connection. On a machine saturated by other work, a process with
//! hundreds of runnable threads takes a larger share of the CPUs, which
//! flatters the thread model's throughput there, not its cost.
//!
//! Services are synchronous and answer from memory in microseconds, so a
//! request is answered inline on the runtime worker. What may wait is
//! kept off the workers: a durable commit is a future the connection
//! awaits ([`Out::later`]: no thread waits for the disk), and a step that
//! may block its thread for long (an LDAP fallback lookup run with
//! `Handle::block_on`, an iteration over the whole directory) runs in
//! [`Out::blocking`], which hands the worker's other tasks to another
//! thread first ([`tokio::task::block_in_place`]; the layer therefore
//! needs the multi-thread runtime).
//!
//! Timekeeping costs nothing per request: each connection has one timer,
//! set to its idle deadline and moved on only when it fires early (the
//! last read's time is noted per request, not the timer). While a partial
//! request waits for its rest the deadline is at most what is left of
//! [`REQUEST_TIMEOUT`], so a client trickling bytes cannot hold a
//! connection slot for long. Shutdown wakes every connection (a
//! `Notify` each, registered once per connection, no descriptor): it
//! answers the requests already received, those still in its socket
//! buffer included, and ends; a flood of connections past the descriptor
//! limit leaves the clients waiting in the listen backlog, as accept fails
//! before anything is taken.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ramdir_core::latency::{Latency, Sampler};
use tokio::net::UnixListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// How long shutdown waits for connections to finish their current
/// request. systemd's stop timeout is 90 s by default; Postfix retries a
/// request whose connection closed, so a few seconds is enough.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause after a transient accept error (out of file descriptors, out of
/// memory, a thread that could not start), so that a persistent one costs
/// ten wake-ups a second instead of a busy loop. The connections waiting
/// meanwhile stay in the kernel's listen backlog.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Requests counted locally before they are added to the shared counter:
/// an atomic add per request would bounce its cache line between the CPUs
/// serving different connections.
pub const COUNT_BATCH: u64 = 256;

/// Default cap on concurrent connections per listener. Each Postfix
/// process keeps one connection per socketmap or policy endpoint and
/// `default_process_limit` is 100 per service (smtpd, cleanup,
/// trivial-rewrite, …); Dovecot has up to 30 auth workers plus one per
/// imap/lmtp process: a few hundred in practice. More wait in the listen
/// backlog, not accepted and dropped.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Replies buffered before they are written while a request is still
/// being answered (a dict iteration over a million users): the memory a
/// connection holds for its output stays bounded.
pub const OUT_FLUSH: usize = 64 * 1024;

/// Time a request may take to arrive once its first byte has. Postfix
/// and Dovecot write each request with one `write`, which a Unix socket
/// delivers whole, so a request that trickles in (a byte a second) is a
/// broken or hostile client holding a connection slot; the idle timeout
/// alone would let it hold the slot for as long as each byte comes before
/// the idle timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The I/O settings of one listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Concurrent connections; more wait in the listen backlog.
    pub max_connections: usize,
    /// Close a connection that sent nothing for this long. Each protocol
    /// sets it above its client's own idle close, so ramdir never closes
    /// first under a live client and only reaps vanished ones.
    pub idle_timeout: Duration,
    /// Time allowed to write replies: the client's own request timeout (a
    /// peer that does not read for that long is gone).
    pub write_timeout: Duration,
    /// Free room made in the read buffer before each read: at least one
    /// whole typical request, so that a request takes one `read`.
    pub read_room: usize,
}

/// What every listener counts, read by `ramdir stats` and `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Requests answered (dict: commands); counted per connection in
    /// batches of [`COUNT_BATCH`] and when it closes.
    pub requests: AtomicU64,
    /// Connections closed for a protocol error.
    pub protocol_errors: AtomicU64,
    /// Time to answer a request (decode, service, encode; not the socket
    /// I/O), sampled while metrics are on.
    pub latency: Latency,
}

/// Why a connection ends early.
#[derive(Debug)]
pub enum Close {
    /// The client broke the protocol: logged, counted, closed; what was
    /// answered before is still sent.
    Protocol(String),
    /// The client went away or stopped reading.
    Io(io::Error),
}

impl From<io::Error> for Close {
    fn from(e: io::Error) -> Self {
        Close::Io(e)
    }
}

/// A reply that waits for something asynchronous (a durable commit): its
/// bytes are written after the replies before it and before any later
/// request is answered.
pub type Later = std::pin::Pin<Box<dyn std::future::Future<Output = BytesMut> + Send>>;

/// A connection's reply buffer. Replies are appended to [`Out::buf`] and
/// written when the requests at hand are answered; a long answer (an
/// iteration) calls [`Out::flush_if_full`] as it goes.
pub struct Out<'a> {
    /// The replies not written yet.
    pub buf: &'a mut BytesMut,
    stream: &'a tokio::net::UnixStream,
    write_timeout: Duration,
    later: Option<Later>,
}

impl std::fmt::Debug for Out<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Out")
            .field("buf", &self.buf.len())
            .field("later", &self.later.is_some())
            .finish()
    }
}

impl Out<'_> {
    /// Write the buffered replies if they reached [`OUT_FLUSH`].
    ///
    /// # Errors
    /// When the client went away or did not read within the write timeout.
    pub fn flush_if_full(&mut self) -> io::Result<()> {
        if self.buf.len() >= OUT_FLUSH {
            let (stream, buf, t) = (self.stream, &mut *self.buf, self.write_timeout);
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(write_out(stream, buf, t))
            })?;
        }
        Ok(())
    }

    /// Run `f`, which may block its thread for long (wait on the runtime
    /// with `Handle::block_on`, walk a whole directory): the runtime
    /// worker's other tasks are handed to another thread first
    /// ([`tokio::task::block_in_place`]), so the other connections go on
    /// being served.
    pub fn blocking<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        tokio::task::block_in_place(|| f(self))
    }

    /// Make `reply` this request's reply, written once it completes (after
    /// the replies before it, before any later request is answered). For
    /// a wait with nothing to compute (a durable commit): no thread waits,
    /// the connection's task awaits it.
    pub fn later(&mut self, reply: Later) {
        self.later = Some(reply);
    }
}

/// Write `out` whole within `timeout`, and empty it.
async fn write_out(
    stream: &tokio::net::UnixStream,
    out: &mut BytesMut,
    timeout: Duration,
) -> io::Result<()> {
    use bytes::Buf;
    // A reply nearly always fits the socket buffer: one write, no timer.
    match stream.try_write(out) {
        Ok(n) => out.advance(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => {
            out.clear();
            return Err(e);
        }
    }
    if out.is_empty() {
        out.clear();
        return Ok(());
    }
    let rest = async {
        while !out.is_empty() {
            stream.writable().await?;
            match stream.try_write(out) {
                Ok(n) => out.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    let r = match tokio::time::timeout(timeout, rest).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    };
    out.clear();
    r
}

/// One protocol on the layer: its codec and service behind one call. Runs
/// on a runtime worker: it answers from memory; what may wait goes through
/// [`Out::later`] or [`Out::blocking`].
pub trait Protocol: Send + Sync + 'static {
    /// Per-connection state (a session, reused buffers, local counters).
    type Conn: Send;
    /// The listener's name in logs and metrics.
    const NAME: &'static str;
    /// State for a new connection.
    fn open(&self) -> Self::Conn;
    /// Answer the request at the front of `buf` if it is whole: remove its
    /// bytes and append its reply (if it has one) to `out`. `Ok(false)`:
    /// no whole request yet (nothing consumed).
    ///
    /// # Errors
    /// [`Close`]: the connection ends (a protocol error is counted).
    fn answer(
        &self,
        conn: &mut Self::Conn,
        buf: &mut BytesMut,
        out: &mut Out<'_>,
    ) -> Result<bool, Close>;
}

/// The connections being served, so that shutdown can wake them.
#[derive(Debug, Default)]
struct Registry {
    next: u64,
    live: std::collections::HashMap<u64, Arc<Notify>>,
}

/// Serve `protocol` on `listener` until `shutdown` completes; then stop
/// accepting, wake every connection (requests already received are
/// answered) and wait for them up to [`DRAIN_TIMEOUT`].
///
/// # Errors
/// Only when the listener itself fails; a connection's failure closes
/// that connection.
pub async fn serve<P: Protocol>(
    listener: UnixListener,
    protocol: Arc<P>,
    limits: Limits,
    stats: Arc<Stats>,
    shutdown: impl std::future::Future<Output = ()>,
) -> io::Result<()> {
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let limit = Arc::new(Semaphore::new(max));
    let registry = Arc::new(Mutex::new(Registry::default()));
    let limits = Arc::new(limits);
    tokio::pin!(shutdown);
    let result = loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.expect("semaphore never closed"),
            () = &mut shutdown => break Ok(()),
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) if is_transient(&e) => {
                    tracing::warn!(listener = P::NAME, error = %e, "accept failed; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
                Err(e) => {
                    tracing::error!(listener = P::NAME, error = %e, "listener failed");
                    break Err(e);
                }
            },
            () = &mut shutdown => break Ok(()),
        };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        start(&protocol, stream, &limits, &stats, &registry, permit);
    };
    // Wake every connection: it answers the requests already received
    // (those in its socket buffer included) and ends. A connection busy
    // with a request finds the wake-up stored when it next waits.
    for stop in registry.lock().expect("registry").live.values() {
        stop.notify_one();
    }
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, limit.acquire_many(max as u32)).await;
    result
}

/// Whether an accept error is a passing lack of resources (the listener
/// itself is fine): accepting pauses for [`ACCEPT_BACKOFF`] and goes on.
pub fn is_transient(e: &io::Error) -> bool {
    // ENFILE, EMFILE, ENOBUFS, ENOMEM, ECONNABORTED, EINTR, EAGAIN: the
    // listener itself is still fine.
    matches!(e.raw_os_error(), Some(23 | 24 | 105 | 12 | 103 | 4 | 11))
}

/// Hand an accepted connection to a runtime task of its own.
fn start<P: Protocol>(
    protocol: &Arc<P>,
    stream: tokio::net::UnixStream,
    limits: &Arc<Limits>,
    stats: &Arc<Stats>,
    registry: &Arc<Mutex<Registry>>,
    permit: OwnedSemaphorePermit,
) {
    let stop = Arc::new(Notify::new());
    let id = {
        let mut r = registry.lock().expect("registry");
        let id = r.next;
        r.next += 1;
        r.live.insert(id, stop.clone());
        id
    };
    let guard = Guard {
        registry: registry.clone(),
        id,
        _permit: permit,
    };
    let (protocol, limits, stats) = (protocol.clone(), limits.clone(), stats.clone());
    tokio::spawn(async move {
        let _guard = guard;
        connection(&*protocol, stream, &stop, &limits, &stats).await;
    });
}

struct Guard {
    registry: Arc<Mutex<Registry>>,
    id: u64,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(mut r) = self.registry.lock() {
            r.live.remove(&self.id);
        }
    }
}

/// A connection's request count, added to the shared one in batches.
struct Counted<'a> {
    stats: &'a Stats,
    pending: u64,
}

impl Counted<'_> {
    #[inline]
    fn add(&mut self) {
        self.pending += 1;
        if self.pending >= COUNT_BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.stats
            .requests
            .fetch_add(self.pending, Ordering::Relaxed);
        self.pending = 0;
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Serve one connection until the client closes, goes idle, breaks the
/// protocol or shutdown wakes it.
async fn connection<P: Protocol>(
    protocol: &P,
    mut stream: tokio::net::UnixStream,
    stop: &Notify,
    limits: &Limits,
    stats: &Stats,
) {
    use tokio::io::AsyncReadExt;
    let mut conn = protocol.open();
    let mut buf = BytesMut::with_capacity(limits.read_room);
    let mut out = BytesMut::with_capacity(limits.read_room);
    let mut counted = Counted { stats, pending: 0 };
    let mut sampler = Sampler::default();
    let mut partial: Option<Instant> = None;
    // The last time bytes arrived; the timer is moved only when it fires
    // early (no timer work per request).
    let mut active = Instant::now();
    let timer = tokio::time::sleep(limits.idle_timeout);
    tokio::pin!(timer);
    // Shutdown's wake-up: registered once, polled only while waiting.
    let wake = stop.notified();
    tokio::pin!(wake);
    let mut stopping = false;
    loop {
        loop {
            let started = sampler.start(&stats.latency);
            let mut o = Out {
                buf: &mut out,
                stream: &stream,
                write_timeout: limits.write_timeout,
                later: None,
            };
            let answered = protocol.answer(&mut conn, &mut buf, &mut o);
            let later = o.later.take();
            match answered {
                Ok(true) => {
                    if let Some(later) = later {
                        out.extend_from_slice(&later.await);
                    }
                    counted.add();
                    Sampler::finish(&stats.latency, started);
                }
                Ok(false) => {
                    sampler.undo();
                    break;
                }
                Err(Close::Protocol(why)) => {
                    stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(listener = P::NAME, error = %why, "closing connection");
                    let _ = write_out(&stream, &mut out, limits.write_timeout).await;
                    return;
                }
                Err(Close::Io(e)) => {
                    log_io(P::NAME, &e);
                    return;
                }
            }
        }
        if !out.is_empty()
            && let Err(e) = write_out(&stream, &mut out, limits.write_timeout).await
        {
            log_io(P::NAME, &e);
            return;
        }
        match (&partial, buf.is_empty()) {
            (None, false) => partial = Some(Instant::now()),
            (Some(_), true) => partial = None,
            _ => {}
        }
        let deadline = match partial {
            Some(since) => (since + REQUEST_TIMEOUT).min(active + limits.idle_timeout),
            None => active + limits.idle_timeout,
        };
        // Only a partial request brings the deadline forward.
        if tokio::time::Instant::from(deadline) < timer.deadline() {
            timer.as_mut().reset(deadline.into());
        }
        buf.reserve(limits.read_room);
        if stopping {
            // Shutting down: what the socket holds already, then the end.
            match stream.try_read_buf(&mut buf) {
                Ok(n) if n > 0 => continue,
                _ => return,
            }
        }
        let read = loop {
            tokio::select! {
                biased;
                r = stream.read_buf(&mut buf) => break Some(r),
                () = &mut wake => break None,
                () = &mut timer => {
                    if Instant::now() >= deadline {
                        tracing::debug!(
                            listener = P::NAME,
                            pending = buf.len(),
                            "connection idle or request not complete in time; closing"
                        );
                        return;
                    }
                    timer.as_mut().reset(deadline.into());
                }
            }
        };
        let Some(read) = read else {
            stopping = true;
            continue;
        };
        match read {
            Ok(0) => {
                if !buf.is_empty() {
                    tracing::debug!(
                        listener = P::NAME,
                        pending = buf.len(),
                        "client closed mid-request"
                    );
                }
                return;
            }
            Ok(_) => active = Instant::now(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(listener = P::NAME, error = %e, "read failed");
                return;
            }
        }
    }
}

fn log_io(name: &str, e: &io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        tracing::warn!(
            listener = name,
            "client did not read its replies within the write timeout; closing"
        );
    } else {
        tracing::debug!(listener = name, error = %e, "client went away");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::UnixStream;

    /// Lines in, the same lines upper-cased out; `quit` is a protocol
    /// error, `many` a long answer.
    struct Upper;

    impl Protocol for Upper {
        type Conn = ();
        const NAME: &'static str = "test";
        fn open(&self) {}
        fn answer(&self, _: &mut (), buf: &mut BytesMut, out: &mut Out<'_>) -> Result<bool, Close> {
            let Some(n) = buf.iter().position(|&b| b == b'\n') else {
                return Ok(false);
            };
            let line = buf.split_to(n + 1);
            match &line[..] {
                b"quit\n" => return Err(Close::Protocol("quit".into())),
                b"many\n" => {
                    for i in 0..20_000 {
                        out.buf.extend_from_slice(format!("{i:08}\n").as_bytes());
                        out.flush_if_full()?;
                    }
                    return Ok(true);
                }
                _ => {}
            }
            out.buf.extend_from_slice(&line.to_ascii_uppercase());
            Ok(true)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_per_request_is_served_each_time() {
        let srv = spawn(limits()).await;
        let path = srv.path.clone();
        blocking(move || {
            // One connection per request, one after the other (Dovecot's
            // dict client without idle_msecs): more connections than the
            // limit (4), so each one's slot must come back when it closes.
            for i in 0..300 {
                let mut c = BufReader::new(UnixStream::connect(&path).unwrap());
                assert_eq!(ask(&mut c, &format!("r{i}\n")), format!("R{i}\n"));
            }
        })
        .await;
        assert_eq!(srv.stats.connections.load(Ordering::Relaxed), 300);
    }

    struct Server {
        path: std::path::PathBuf,
        stats: Arc<Stats>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<io::Result<()>>,
        _dir: tempfile::TempDir,
    }

    fn limits() -> Limits {
        Limits {
            max_connections: 4,
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            read_room: 64,
        }
    }

    async fn spawn(limits: Limits) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        let stats = Arc::new(Stats::default());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(serve(
            listener,
            Arc::new(Upper),
            limits,
            stats.clone(),
            async {
                let _ = rx.await;
            },
        ));
        Server {
            path,
            stats,
            stop: Some(tx),
            task,
            _dir: dir,
        }
    }

    /// Blocking client calls, off the runtime's threads.
    async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        tokio::task::spawn_blocking(f).await.unwrap()
    }

    fn ask(s: &mut BufReader<UnixStream>, line: &str) -> String {
        s.get_mut().write_all(line.as_bytes()).unwrap();
        let mut got = String::new();
        s.read_line(&mut got).unwrap();
        got
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_in_order_counts_and_drains() {
        let mut srv = spawn(limits()).await;
        let path = srv.path.clone();
        let mut c = blocking(move || {
            let mut c = BufReader::new(UnixStream::connect(&path).unwrap());
            assert_eq!(ask(&mut c, "a\n"), "A\n");
            // Split at every byte, and two in one write.
            for b in b"bc\n" {
                c.get_mut().write_all(&[*b]).unwrap();
            }
            let mut l = String::new();
            c.read_line(&mut l).unwrap();
            assert_eq!(l, "BC\n");
            c.get_mut().write_all(b"d\ne\n").unwrap();
            let (mut d, mut e) = (String::new(), String::new());
            c.read_line(&mut d).unwrap();
            c.read_line(&mut e).unwrap();
            assert_eq!((d.as_str(), e.as_str()), ("D\n", "E\n"));
            // A long answer is written as it goes (more than the socket
            // buffer holds), whole and in order.
            c.get_mut().write_all(b"many\n").unwrap();
            for i in 0..20_000 {
                let mut l = String::new();
                c.read_line(&mut l).unwrap();
                assert_eq!(l, format!("{i:08}\n"));
            }
            c
        })
        .await;
        // Shutdown: stops accepting, wakes the idle connection, returns.
        srv.stop.take().unwrap().send(()).unwrap();
        srv.task.await.unwrap().unwrap();
        let rest = blocking(move || {
            let mut rest = String::new();
            c.read_to_string(&mut rest).unwrap();
            rest
        })
        .await;
        assert_eq!(rest, "");
        assert_eq!(srv.stats.requests.load(Ordering::Relaxed), 5);
        assert_eq!(srv.stats.connections.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_protocol_error_closes_that_connection_after_its_answers() {
        let srv = spawn(limits()).await;
        let path = srv.path.clone();
        blocking(move || {
            let mut good = BufReader::new(UnixStream::connect(&path).unwrap());
            let mut bad = UnixStream::connect(&path).unwrap();
            bad.write_all(b"x\nquit\ny\n").unwrap();
            let mut rest = String::new();
            bad.read_to_string(&mut rest).unwrap();
            assert_eq!(rest, "X\n");
            assert_eq!(ask(&mut good, "z\n"), "Z\n");
        })
        .await;
        assert_eq!(srv.stats.protocol_errors.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_are_closed() {
        let srv = spawn(Limits {
            idle_timeout: Duration::from_millis(200),
            ..limits()
        })
        .await;
        let path = srv.path.clone();
        blocking(move || {
            let mut c = BufReader::new(UnixStream::connect(&path).unwrap());
            assert_eq!(ask(&mut c, "a\n"), "A\n");
            // Nothing more sent: ramdir closes.
            let mut rest = String::new();
            c.read_to_string(&mut rest).unwrap();
            assert_eq!(rest, "");
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_that_trickles_in_is_cut_off() {
        let srv = spawn(limits()).await;
        let path = srv.path.clone();
        blocking(move || {
            let mut c = BufReader::new(UnixStream::connect(&path).unwrap());
            assert_eq!(ask(&mut c, "a\n"), "A\n");
            // A partial request, then one byte now and then, for longer
            // than REQUEST_TIMEOUT (though each comes well within the idle
            // timeout): ramdir closes the connection.
            let started = Instant::now();
            let mut closed = false;
            while started.elapsed() < REQUEST_TIMEOUT * 3 {
                if c.get_mut().write_all(b"x").is_err() {
                    closed = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            assert!(
                closed,
                "a request trickling in for {:?} was not cut off",
                started.elapsed()
            );
            assert!(started.elapsed() >= REQUEST_TIMEOUT);
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_beyond_the_limit_wait_and_are_served_later() {
        let srv = spawn(limits()).await;
        let path = srv.path.clone();
        blocking(move || {
            // The limit (4) held by clients that send nothing.
            let held: Vec<_> = (0..4)
                .map(|_| {
                    let mut c = BufReader::new(UnixStream::connect(&path).unwrap());
                    assert_eq!(ask(&mut c, "h\n"), "H\n");
                    c
                })
                .collect();
            // A fifth connects (the backlog) and sends; it is answered once
            // a slot is free.
            let mut late = UnixStream::connect(&path).unwrap();
            late.write_all(b"late\n").unwrap();
            drop(held);
            let mut late = BufReader::new(late);
            let mut l = String::new();
            late.read_line(&mut l).unwrap();
            assert_eq!(l, "LATE\n");
        })
        .await;
    }
}
