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
//! # Model: a blocking thread per connection
//! Postfix and Dovecot send one request and wait for its reply on each
//! connection, and keep a connection per process (a few hundred at most,
//! [`DEFAULT_MAX_CONNECTIONS`] bounds it). For that pattern a thread
//! blocked in `read` is woken directly by the peer's `write`: one `read`
//! and one `write` per request. A tokio task needs a readiness poll, a
//! `read` that finds the socket empty and an `epoll_wait` on top, and a
//! cross-thread wake-up; measured on the 2-CPU test machine, a tokio
//! constant-reply server reaches about 0.7 of a blocking one at 16
//! connections (docs/benchmarks.md, "The connection layer", has the figures at
//! 16, 100 and 500 connections). So connections are served by threads;
//! accepting stays on the tokio runtime (it is not per request, and there
//! the runtime gives the back-off timer and the shutdown signal), and the
//! few asynchronous steps a protocol has (an LDAP fallback lookup, waiting
//! for a durable commit) block their connection's thread on the runtime
//! ([`Protocol`] implementations hold a [`tokio::runtime::Handle`]).
//! Threads are reused from connection to connection ([`THREAD_IDLE`]), so
//! a client that connects per request (Dovecot's dict client without
//! `idle_msecs`) does not pay for a thread start each time.
//!
//! The kernel does the timekeeping: the idle timeout is the socket's
//! receive timeout (`SO_RCVTIMEO`), the write timeout its send timeout
//! (`SO_SNDTIMEO`); no timer is touched per request. Only while a partial
//! request waits for its rest is the receive timeout shortened to what is
//! left of [`REQUEST_TIMEOUT`], so a client trickling bytes cannot hold a
//! connection slot for long. Shutdown shuts every
//! connection's reading side, which wakes the blocked `read`s: requests
//! that had arrived are answered, then the threads end.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ramdir_core::latency::{Latency, Sampler};
use tokio::net::UnixListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// Stack of a connection thread. The loop, the codecs and the services
/// use a few KiB (no recursion on input); this leaves room for an LDAP
/// fallback future run on the thread. Only touched pages cost memory, so
/// [`DEFAULT_MAX_CONNECTIONS`] threads reserve address space, not RAM.
pub const THREAD_STACK: usize = 256 * 1024;

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
    /// Connections refused because no thread could be started for them.
    pub refused: AtomicU64,
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

/// Where a connection's replies go.
#[derive(Debug, Clone, Copy)]
enum Sink<'a> {
    /// A blocking socket on the connection's own thread.
    Thread(&'a UnixStream),
    /// A non-blocking socket served by a runtime task, with the write
    /// timeout.
    Task(&'a tokio::net::UnixStream, Duration),
}

/// A connection's reply buffer. Replies are appended to [`Out::buf`] and
/// written when the requests at hand are answered; a long answer (an
/// iteration) calls [`Out::flush_if_full`] as it goes.
pub struct Out<'a> {
    /// The replies not written yet.
    pub buf: &'a mut BytesMut,
    sink: Sink<'a>,
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
            match self.sink {
                Sink::Thread(s) => write_out(s, self.buf)?,
                Sink::Task(s, t) => {
                    let buf = &mut *self.buf;
                    tokio::task::block_in_place(|| {
                        tokio::runtime::Handle::current().block_on(write_task(s, buf, t))
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Run `f`, which may block its thread for long (wait on the runtime
    /// with `Handle::block_on`, walk a whole directory): on a connection
    /// thread it simply runs; on a runtime task the worker thread is first
    /// handed over ([`tokio::task::block_in_place`]) so that the other
    /// connections go on being served.
    pub fn blocking<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        match self.sink {
            Sink::Thread(_) => f(self),
            Sink::Task(..) => tokio::task::block_in_place(|| f(self)),
        }
    }

    /// Make `reply` this request's reply, written once it completes (after
    /// the replies before it, before any later request is answered). For
    /// a wait with nothing to compute (a durable commit): no thread waits.
    pub fn later(&mut self, reply: Later) {
        self.later = Some(reply);
    }
}

fn write_out(mut stream: &UnixStream, out: &mut BytesMut) -> io::Result<()> {
    let r = stream.write_all(out);
    out.clear();
    r
}

/// Write `out` whole on a runtime task within `timeout`, and empty it.
async fn write_task(
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
/// on the connection's thread; it may block (on the runtime, on a commit).
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
    live: std::collections::HashMap<u64, Arc<UnixStream>>,
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
    let pool = Arc::new(Pool::default());
    let limits = Arc::new(limits);
    let runtime = tokio::runtime::Handle::current();
    // Temporary, for bench/conn.sh's comparison of the two models.
    let tasks = std::env::var("RAMDIR_CONN_MODEL").is_ok_and(|m| m == "task");
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
        let started = if tasks {
            start_task(&protocol, stream, &limits, &stats, &registry, permit)
        } else {
            start(
                &pool, &runtime, &protocol, stream, &limits, &stats, &registry, permit,
            )
        };
        if let Err(e) = started {
            // Out of threads or memory: the client is closed (it retries),
            // and accepting pauses as for any resource shortage.
            stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(listener = P::NAME, error = %e, "cannot serve a connection; closed it");
            tokio::time::sleep(ACCEPT_BACKOFF).await;
        }
    };
    // Wake every connection blocked in `read`: it sees end of input after
    // the requests already received, answers them and ends.
    for s in registry.lock().expect("registry").live.values() {
        let _ = s.shutdown(Shutdown::Read);
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

/// Hand an accepted connection to a thread of its own.
#[allow(clippy::too_many_arguments)]
fn start<P: Protocol>(
    pool: &Arc<Pool>,
    runtime: &tokio::runtime::Handle,
    protocol: &Arc<P>,
    stream: tokio::net::UnixStream,
    limits: &Arc<Limits>,
    stats: &Arc<Stats>,
    registry: &Arc<Mutex<Registry>>,
    permit: OwnedSemaphorePermit,
) -> io::Result<()> {
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(limits.idle_timeout))?;
    stream.set_write_timeout(Some(limits.write_timeout))?;
    let stream = Arc::new(stream);
    let id = {
        let mut r = registry.lock().expect("registry");
        let id = r.next;
        r.next += 1;
        r.live.insert(id, stream.clone());
        id
    };
    // Removes the connection from the registry and frees its slot however
    // the thread ends (a panic included).
    let guard = Guard {
        registry: registry.clone(),
        id,
        _permit: permit,
    };
    let (protocol, limits, stats) = (protocol.clone(), limits.clone(), stats.clone());
    let runtime = runtime.clone();
    // On failure the job (and the guard, and the stream) is dropped.
    pool.run(
        P::NAME,
        Box::new(move || {
            let _guard = guard;
            connection(&*protocol, &runtime, &stream, &limits, &stats);
        }),
    )
}

/// Hand an accepted connection to a runtime task of its own.
fn start_task<P: Protocol>(
    protocol: &Arc<P>,
    stream: tokio::net::UnixStream,
    limits: &Arc<Limits>,
    stats: &Arc<Stats>,
    registry: &Arc<Mutex<Registry>>,
    permit: OwnedSemaphorePermit,
) -> io::Result<()> {
    use std::os::fd::AsFd;
    // A second descriptor of the same socket, for shutdown to wake the
    // task (`shutdown` acts on the socket, not the descriptor).
    let waker = Arc::new(UnixStream::from(stream.as_fd().try_clone_to_owned()?));
    let id = {
        let mut r = registry.lock().expect("registry");
        let id = r.next;
        r.next += 1;
        r.live.insert(id, waker);
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
        task_connection(&*protocol, stream, &limits, &stats).await;
    });
    Ok(())
}

/// How long a connection thread whose connection ended waits for the next
/// one before it ends. Dovecot's dict client without `idle_msecs` connects
/// once per lookup (protocols.md G11): starting a thread for each of those
/// connections halved the rate a dict served them; a thread that waits a
/// little is reused instead. Idle threads hold no connection slot.
pub const THREAD_IDLE: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce() + Send>;

/// A listener's connection threads: reused while connections come and go,
/// started when none is free, ended after [`THREAD_IDLE`] without work.
#[derive(Default)]
struct Pool {
    state: Mutex<PoolState>,
    ready: Condvar,
}

#[derive(Default)]
struct PoolState {
    /// Jobs handed to idle threads and not yet taken.
    jobs: VecDeque<Job>,
    /// Threads waiting for a job and not yet handed one.
    idle: usize,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // A poisoned lock only means a panic elsewhere; the queue is intact
        // (jobs run outside the lock).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `job` on an idle thread, or on a new one.
    fn run(self: &Arc<Self>, name: &str, job: Job) -> io::Result<()> {
        {
            let mut st = self.lock();
            if st.idle > 0 {
                st.idle -= 1;
                st.jobs.push_back(job);
                drop(st);
                self.ready.notify_one();
                return Ok(());
            }
        }
        let pool = self.clone();
        std::thread::Builder::new()
            .name(name.into())
            .stack_size(THREAD_STACK)
            .spawn(move || {
                job();
                pool.work();
            })
            .map(drop)
    }

    /// An idle thread's life: take jobs until none comes for THREAD_IDLE.
    fn work(&self) {
        let mut st = self.lock();
        st.idle += 1;
        loop {
            if let Some(job) = st.jobs.pop_front() {
                drop(st);
                // A panic ends this connection (its guard frees the slot)
                // and this thread, not the pool.
                job();
                st = self.lock();
                st.idle += 1;
                continue;
            }
            let (guard, waited) = self
                .ready
                .wait_timeout(st, THREAD_IDLE)
                .unwrap_or_else(|e| e.into_inner());
            st = guard;
            // Timed out with nothing queued: this thread's idle unit is
            // not reserved (reserved ones have a job queued), so it leaves.
            if waited.timed_out() && st.jobs.is_empty() && st.idle > 0 {
                st.idle -= 1;
                return;
            }
        }
    }
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
fn connection<P: Protocol>(
    protocol: &P,
    runtime: &tokio::runtime::Handle,
    stream: &UnixStream,
    limits: &Limits,
    stats: &Stats,
) {
    let mut conn = protocol.open();
    let mut buf = BytesMut::with_capacity(limits.read_room);
    let mut out = BytesMut::with_capacity(limits.read_room);
    let mut counted = Counted { stats, pending: 0 };
    let mut sampler = Sampler::default();
    // While a partial request waits for its rest: when it began, and the
    // receive timeout is then the rest of REQUEST_TIMEOUT instead of the
    // idle timeout (one clock read and one setsockopt per read, only then).
    let mut partial: Option<Instant> = None;
    loop {
        // Answer every whole request already read.
        loop {
            let started = sampler.start(&stats.latency);
            let mut o = Out {
                buf: &mut out,
                sink: Sink::Thread(stream),
                later: None,
            };
            let answered = protocol.answer(&mut conn, &mut buf, &mut o);
            let later = o.later.take();
            match answered {
                Ok(true) => {
                    if let Some(later) = later {
                        out.extend_from_slice(&runtime.block_on(later));
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
                    let _ = write_out(stream, &mut out);
                    return;
                }
                Err(Close::Io(e)) => {
                    log_io(P::NAME, &e);
                    return;
                }
            }
        }
        if !out.is_empty()
            && let Err(e) = write_out(stream, &mut out)
        {
            log_io(P::NAME, &e);
            return;
        }
        match (&partial, buf.is_empty()) {
            (None, false) => {
                partial = Some(Instant::now());
                let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT.min(limits.idle_timeout)));
            }
            (Some(since), false) => {
                let left = REQUEST_TIMEOUT.saturating_sub(since.elapsed());
                if left.is_zero() {
                    tracing::debug!(
                        listener = P::NAME,
                        pending = buf.len(),
                        "request not complete within the request timeout; closing"
                    );
                    return;
                }
                let _ = stream.set_read_timeout(Some(left.min(limits.idle_timeout)));
            }
            (Some(_), true) => {
                partial = None;
                let _ = stream.set_read_timeout(Some(limits.idle_timeout));
            }
            (None, true) => {}
        }
        match read_some(stream, &mut buf, limits.read_room) {
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
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                tracing::debug!(listener = P::NAME, "connection idle; closing");
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(listener = P::NAME, error = %e, "read failed");
                return;
            }
        }
    }
}

/// Serve one connection on a runtime task: the same loop as
/// [`connection`], with readiness instead of blocking reads and one timer
/// per connection instead of the socket's timeouts.
async fn task_connection<P: Protocol>(
    protocol: &P,
    mut stream: tokio::net::UnixStream,
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
    loop {
        loop {
            let started = sampler.start(&stats.latency);
            let mut o = Out {
                buf: &mut out,
                sink: Sink::Task(&stream, limits.write_timeout),
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
                    let _ = write_task(&stream, &mut out, limits.write_timeout).await;
                    return;
                }
                Err(Close::Io(e)) => {
                    log_io(P::NAME, &e);
                    return;
                }
            }
        }
        if !out.is_empty()
            && let Err(e) = write_task(&stream, &mut out, limits.write_timeout).await
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
        let read = loop {
            tokio::select! {
                biased;
                r = stream.read_buf(&mut buf) => break r,
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

/// Read what is there (at most `room` bytes) onto the end of `buf`.
fn read_some(mut stream: &UnixStream, buf: &mut BytesMut, room: usize) -> io::Result<usize> {
    let start = buf.len();
    buf.resize(start + room, 0);
    let r = stream.read(&mut buf[start..]);
    buf.truncate(start + *r.as_ref().unwrap_or(&0));
    r
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
    use std::io::{BufRead, BufReader};

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

    /// [`Upper`], noting which threads served its connections (thread
    /// ids are never reused within a process).
    #[derive(Default)]
    struct Churn(Mutex<std::collections::HashSet<std::thread::ThreadId>>);

    impl Protocol for Churn {
        type Conn = ();
        const NAME: &'static str = "churn";
        fn open(&self) {
            self.0.lock().unwrap().insert(std::thread::current().id());
        }
        fn answer(&self, c: &mut (), buf: &mut BytesMut, out: &mut Out<'_>) -> Result<bool, Close> {
            Upper.answer(c, buf, out)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn threads_are_reused_across_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let churn = Arc::new(Churn::default());
        let task = tokio::spawn(serve(
            listener,
            churn.clone(),
            limits(),
            Arc::new(Stats::default()),
            async {
                let _ = rx.await;
            },
        ));
        blocking(move || {
            // One connection per request, one after the other.
            for i in 0..300 {
                let mut c = BufReader::new(UnixStream::connect(&path).unwrap());
                assert_eq!(ask(&mut c, &format!("r{i}\n")), format!("R{i}\n"));
            }
        })
        .await;
        // A thread per connection would be 300 threads; reused, a handful
        // (a connection may arrive before the last one's thread is idle).
        let threads = churn.0.lock().unwrap().len();
        assert!(
            threads <= 16,
            "{threads} threads served 300 connections made one at a time"
        );
        tx.send(()).unwrap();
        task.await.unwrap().unwrap();
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
