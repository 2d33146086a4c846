//! The load client shared by every protocol (`socketmap`, `dict`,
//! `policy`, `ldap-search`). C connections, each behaving like one Postfix
//! or Dovecot process: one request, wait for the reply, next request (no
//! pipelining), requests drawn pseudo-randomly from a fixed set.
//!
//! What a request is and how its reply is read is a [`Target`]; this
//! module only runs connections, keeps time and counts. [`SocketmapTarget`]
//! is the socketmap one; the others live next to their protocols.
//!
//! # Threads and runtime
//! The client shares the machine with the server under test, so it must
//! be cheap per request and must not add scheduling noise of its own. It
//! runs `--threads` OS threads (default 1), each with a tokio
//! *current-thread* runtime driving its share of the connections: no
//! work stealing, no cross-thread wake-ups, no atomics on the hot path;
//! per-thread tallies are merged at the end. Requests are encoded once up
//! front ([`KeySet`]), so sending one is a single `write` of a prepared
//! slice; replies are read with `read_buf` and decoded with the project's
//! codec, like a server reads requests.
//!
//! Because client and server share the CPUs, absolute throughput depends
//! on both. Comparing two servers with the same client and settings is
//! fair; `--server-pid` additionally reports the server's own CPU time per
//! request, which does not depend on the client's share.
//!
//! # Bounds
//! Every connection stops starting requests at the end of the measured
//! window (or after its share of `--max-requests`); a request still
//! unanswered `--grace` seconds after the end is abandoned and its
//! connection counted as `stalled`, so a hung server cannot hang the run.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ramdir_postfix::socketmap::codec::{CodecError, Reply};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::hist::Histogram;
use crate::keys::{KeySet, XorShift};
use crate::procfs;

/// How a reply counts. Each protocol maps its replies onto these four
/// and names them ([`Kind::labels`]); the JSON keys stay `ok`, `notfound`,
/// `temp` and `other` for every protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The normal answer (socketmap `OK`, dict `O`, policy `DUNNO`, an LDAP
    /// entry found).
    Ok,
    /// A negative answer (socketmap `NOTFOUND`, dict `N`, policy reject,
    /// no LDAP entry).
    NotFound,
    /// Try again later (socketmap `TEMP`/`TIMEOUT`, dict `F`, policy
    /// defer, an LDAP error result).
    Temp,
    /// Anything else.
    Other,
}

/// How a target describes itself in reports.
#[derive(Debug, Clone)]
pub struct Kind {
    /// The JSON `map` field (socketmap: the map name).
    pub map: String,
    /// The text report's description, e.g. `map mailboxes`.
    pub what: String,
    /// Names of the four [`Outcome`]s in the text report.
    pub labels: [&'static str; 4],
}

/// A server protocol the client can drive: how to open a connection and
/// how to make one request on it. Methods run on the client threads'
/// current-thread runtimes (so their futures need not be `Send`).
pub trait Target: Send + Sync + 'static {
    /// One open connection.
    type Conn: 'static;
    /// Number of distinct requests (request `i` is `0..len`).
    fn len(&self) -> usize;
    /// How to describe the target in reports.
    fn kind(&self) -> Kind;
    /// Connect (and say hello, bind, …) as connection number `id`.
    async fn connect(&self, id: usize) -> Result<Self::Conn, String>;
    /// Send request `i` and wait for its reply.
    async fn call(&self, conn: &mut Self::Conn, i: usize) -> Result<Outcome, String>;
}

/// Bytes read per `recv` by the client (replies are far smaller).
const CLIENT_READ: usize = 8192;

/// A client connection that waits for readability only, as Postfix's and
/// Dovecot's clients do (Postfix polls for input while it waits for a reply;
/// Dovecot's ioloop adds a write watch only when output is blocked).
///
/// tokio's `UnixStream` registers for reading *and* writing, edge-triggered,
/// and on Unix sockets every `recv` by the server frees send space on the
/// client's socket, which wakes the client's epoll for nothing. On two CPUs
/// shared with the server, that spurious wake-up per request cost the
/// server a cross-CPU wake-up in its `recv` and made the result depend on
/// how long the server took (the longer, the likelier the client was
/// asleep). A real client pays neither, so this one does not either.
pub struct Stream {
    fd: AsyncFd<std::os::unix::net::UnixStream>,
}

impl Stream {
    /// Send all of `buf`. A request always fits the socket buffer of an
    /// idle connection; if it ever does not, the task yields and retries
    /// (the load's single request in flight makes that a corner case).
    pub async fn write_all(&mut self, mut buf: &[u8]) -> std::io::Result<()> {
        use std::io::Write as _;
        while !buf.is_empty() {
            match self.fd.get_ref().write(buf) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    tokio::task::yield_now().await
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Read what is there (waiting until something is) and append it to
    /// `buf`; `Ok(0)` at end of stream.
    pub async fn read_buf(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        use std::io::Read as _;
        let mut chunk = [0u8; CLIENT_READ];
        loop {
            let mut ready = self.fd.readable().await?;
            match ready.try_io(|fd| fd.get_ref().read(&mut chunk)) {
                Ok(r) => {
                    let n = r?;
                    buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(_would_block) => continue,
            }
        }
    }
}

/// Read from `stream` into `buf` until `decode` takes one reply off it.
/// `decode` returns `Ok(None)` while it needs more bytes.
pub async fn read_reply<R>(
    stream: &mut Stream,
    buf: &mut BytesMut,
    mut decode: impl FnMut(&mut BytesMut) -> Result<Option<R>, String>,
) -> Result<R, String> {
    loop {
        if let Some(r) = decode(buf)? {
            return Ok(r);
        }
        match stream.read_buf(buf).await {
            Ok(0) => return Err("server closed the connection".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// Connect to a Unix socket, with the error message every target uses.
pub async fn connect_unix(socket: &std::path::Path) -> Result<Stream, String> {
    let err = |e: std::io::Error| format!("cannot connect to {}: {e}", socket.display());
    // A Unix-socket connect completes at once or fails (no handshake).
    let s = std::os::unix::net::UnixStream::connect(socket).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    // `with_interest` is deprecated for not tying the registration to the
    // descriptor's lifetime (tokio#8587): a descriptor closed while still
    // registered. Here the `AsyncFd` owns the stream, so the descriptor
    // lives exactly as long as the registration; its replacement is
    // `unsafe`, which the workspace keeps to `ffi/`.
    #[allow(deprecated)]
    let fd = AsyncFd::with_interest(s, Interest::READABLE).map_err(err)?;
    Ok(Stream { fd })
}

/// Bytes every connection's read buffer starts with room for.
pub const READ_BUF: usize = 4096;

/// Connect ([`connect_unix`]) and send the protocol's opening lines
/// (`hello`; nothing when empty): the stream and its read buffer, as
/// every target's `connect` starts.
pub async fn connect_hello(
    socket: &std::path::Path,
    hello: &[u8],
) -> Result<(Stream, BytesMut), String> {
    let mut s = connect_unix(socket).await?;
    if !hello.is_empty() {
        s.write_all(hello)
            .await
            .map_err(|e| format!("write the hello to {}: {e}", socket.display()))?;
    }
    Ok((s, BytesMut::with_capacity(READ_BUF)))
}

/// The socketmap protocol: pre-encoded netstring requests, replies read
/// with the project's codec.
pub struct SocketmapTarget {
    /// Socket of the server.
    pub socket: PathBuf,
    /// Map name.
    pub map: String,
    /// The requests.
    pub keys: KeySet,
}

impl Target for SocketmapTarget {
    type Conn = (Stream, BytesMut);

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn kind(&self) -> Kind {
        Kind {
            map: self.map.clone(),
            what: format!("map {}", self.map),
            labels: ["OK", "NOTFOUND", "TEMP", "other"],
        }
    }

    async fn connect(&self, _id: usize) -> Result<Self::Conn, String> {
        connect_hello(&self.socket, b"").await
    }

    async fn call(&self, conn: &mut Self::Conn, i: usize) -> Result<Outcome, String> {
        let (stream, buf) = conn;
        stream
            .write_all(self.keys.request(i))
            .await
            .map_err(|e| format!("write: {e}"))?;
        read_reply(stream, buf, |b| match Reply::decode(b) {
            Ok(Some(Reply::Ok(_))) => Ok(Some(Outcome::Ok)),
            Ok(Some(Reply::NotFound)) => Ok(Some(Outcome::NotFound)),
            Ok(Some(Reply::Temp(_) | Reply::Timeout(_))) => Ok(Some(Outcome::Temp)),
            Ok(Some(Reply::Perm(_))) => Ok(Some(Outcome::Other)),
            Ok(None) => Ok(None),
            // A whole frame with an unknown status word: Postfix would
            // treat it as "try again"; count it and go on.
            Err(CodecError::BadReply(_)) => Ok(Some(Outcome::Other)),
            Err(e) => Err(format!("bad reply: {e}")),
        })
        .await
    }
}

/// How to run the load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Socket (or, for LDAP, URL) of the server under test, as reported.
    pub socket: PathBuf,
    /// Concurrent connections.
    pub connections: usize,
    /// Client OS threads (each a current-thread runtime).
    pub threads: usize,
    /// Time before measuring starts (connections run, nothing is counted).
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
    /// Stop after this many measured requests in total.
    pub max_requests: Option<u64>,
    /// How long after the end to wait for requests still in flight.
    pub grace: Duration,
    /// Seed of the key sequence.
    pub seed: u64,
    /// Server process whose CPU time to measure over the window.
    pub server_pid: Option<u32>,
    /// Also count the CPU time of every process with one of these command
    /// names (a forking server's children) as the server's.
    pub server_comm: Vec<String>,
    /// Also count the CPU time of this process and its direct children
    /// (a forking server's master) as the server's.
    pub server_children: Option<u32>,
}

/// Outcome counts and latencies.
#[derive(Clone, Default)]
pub struct Tally {
    /// Latency of every measured request, in nanoseconds.
    pub hist: Histogram,
    /// [`Outcome::Ok`] replies (socketmap `OK`).
    pub ok: u64,
    /// [`Outcome::NotFound`] replies (socketmap `NOTFOUND`).
    pub notfound: u64,
    /// [`Outcome::Temp`] replies (socketmap `TEMP` and `TIMEOUT`).
    pub temp: u64,
    /// [`Outcome::Other`] replies (socketmap `PERM` and unknown words).
    pub other: u64,
    /// Connections that ended with an I/O or framing error.
    pub errors: u64,
    /// The first such error.
    pub first_error: Option<String>,
    /// Connections that finished (normally or with an error).
    pub finished: u64,
    /// When the last measured reply arrived.
    pub last: Option<Instant>,
}

impl Tally {
    fn merge(&mut self, o: &Tally) {
        self.hist.merge(&o.hist);
        self.ok += o.ok;
        self.notfound += o.notfound;
        self.temp += o.temp;
        self.other += o.other;
        self.errors += o.errors;
        self.finished += o.finished;
        self.last = self.last.max(o.last);
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
    }
}

/// The result of a run.
pub struct Report {
    /// Options used.
    pub opts: LoadOptions,
    /// What was loaded.
    pub kind: Kind,
    /// Number of distinct keys.
    pub keys: usize,
    /// Length of the measured window, in seconds.
    pub seconds: f64,
    /// Counts and latencies.
    pub tally: Tally,
    /// Connections still waiting for a reply when the run was cut off.
    pub stalled: u64,
    /// Server CPU seconds over the window (with `--server-pid`).
    pub server_cpu: Option<f64>,
    /// This client's CPU seconds over the window.
    pub client_cpu: Option<f64>,
    /// CPU seconds the whole machine was busy over the window.
    pub system_cpu: Option<f64>,
}

/// Run the load and return the figures.
pub fn run<T: Target>(opts: &LoadOptions, target: T) -> Result<Report, String> {
    if target.len() == 0 {
        return Err("no keys to send".into());
    }
    let threads = opts.threads.clamp(1, opts.connections.max(1));
    let keys = Arc::new(target);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let epoch = Arc::new(OnceLock::new());
    let per_conn_limit = opts
        .max_requests
        .map_or(u64::MAX, |n| n.div_ceil(opts.connections as u64));
    let mut handles = Vec::new();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    for t in 0..threads {
        let conns: Vec<usize> = (t..opts.connections).step_by(threads).collect();
        let (keys, barrier, epoch, opts) =
            (keys.clone(), barrier.clone(), epoch.clone(), opts.clone());
        let done = done_tx.clone();
        let h = std::thread::Builder::new()
            .name(format!("load-{t}"))
            .spawn(move || {
                let r = thread_main(&conns, &keys, &opts, per_conn_limit, &barrier, &epoch);
                let _ = done.send(());
                r
            })
            .map_err(|e| format!("cannot start a client thread: {e}"))?;
        handles.push(h);
    }
    barrier.wait();
    let t0 = *epoch.get_or_init(Instant::now);
    let measure_start = t0 + opts.warmup;
    let end = measure_start + opts.duration;
    // Sample CPU times at the window's edges (this thread is otherwise idle).
    sleep_until(measure_start);
    let cpu0 = (
        server_cpu(opts),
        procfs::cpu_seconds(None).ok(),
        procfs::system_busy_seconds().ok(),
    );
    // Until the window ends, or earlier if every thread is done
    // (--max-requests, or every connection failed).
    for _ in 0..threads {
        let left = end.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    let cpu1 = (
        server_cpu(opts),
        procfs::cpu_seconds(None).ok(),
        procfs::system_busy_seconds().ok(),
    );
    let mut tally = Tally::default();
    let mut connect_error = None;
    for h in handles {
        match h
            .join()
            .map_err(|_| "a client thread panicked".to_string())?
        {
            Ok(t) => tally.merge(&t),
            Err(e) => connect_error = Some(e),
        }
    }
    if let Some(e) = connect_error {
        return Err(e);
    }
    let stalled = opts.connections as u64 - tally.finished;
    let diff = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    // A run cut short by --max-requests lasts until its last reply.
    let seconds = match tally.last {
        Some(l) if l < end => (l - measure_start).as_secs_f64(),
        _ => opts.duration.as_secs_f64(),
    };
    Ok(Report {
        opts: opts.clone(),
        kind: keys.kind(),
        keys: keys.len(),
        seconds,
        tally,
        stalled,
        server_cpu: diff(cpu0.0, cpu1.0),
        client_cpu: diff(cpu0.1, cpu1.1),
        system_cpu: diff(cpu0.2, cpu1.2),
    })
}

/// CPU seconds of the server: `--server-pid` plus the `--server-children`
/// tree plus the `--server-comm` processes; `None` when none is given.
fn server_cpu(opts: &LoadOptions) -> Option<f64> {
    let pid = opts
        .server_pid
        .and_then(|p| procfs::cpu_seconds(Some(p)).ok());
    let tree = match opts.server_children {
        Some(p) => Some(procfs::cpu_seconds_with_children(p).ok()?),
        None => None,
    };
    if opts.server_comm.is_empty() && tree.is_none() {
        return pid;
    }
    let comm = if opts.server_comm.is_empty() {
        0.0
    } else {
        procfs::cpu_seconds_by_comm(&opts.server_comm).ok()?
    };
    Some(pid.unwrap_or(0.0) + tree.unwrap_or(0.0) + comm)
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// One client thread: connect its connections, wait for the others, run.
fn thread_main<T: Target>(
    conns: &[usize],
    keys: &Arc<T>,
    opts: &LoadOptions,
    limit: u64,
    barrier: &Barrier,
    epoch: &OnceLock<Instant>,
) -> Result<Tally, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build a runtime: {e}"));
    let streams = runtime.as_ref().map_err(Clone::clone).and_then(|rt| {
        rt.block_on(async {
            let mut v = Vec::with_capacity(conns.len());
            for &id in conns {
                v.push(keys.connect(id).await?);
            }
            Ok::<_, String>(v)
        })
    });
    // Everyone reaches the barrier, even after a failure, or the others
    // would wait forever.
    barrier.wait();
    let (runtime, streams) = (runtime?, streams?);
    let t0 = *epoch.get_or_init(Instant::now);
    let measure_start = t0 + opts.warmup;
    let end = measure_start + opts.duration;
    let hard = end + opts.grace;
    let tally = Rc::new(RefCell::new(Tally::default()));
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let mut tasks = Vec::new();
        for (&id, stream) in conns.iter().zip(streams) {
            let w = Window {
                measure_start,
                end,
                limit,
            };
            let rng = XorShift::new(opts.seed, id as u64);
            tasks.push(tokio::task::spawn_local(connection::<T>(
                stream,
                keys.clone(),
                rng,
                w,
                tally.clone(),
            )));
        }
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        tokio::select! {
            () = all => {}
            () = tokio::time::sleep_until(hard.into()) => {}
        }
    });
    drop(local);
    Ok(std::mem::take(&mut *tally.borrow_mut()))
}

/// When a connection counts and stops.
#[derive(Debug, Clone, Copy)]
struct Window {
    measure_start: Instant,
    end: Instant,
    limit: u64,
}

async fn connection<T: Target>(
    mut conn: T::Conn,
    keys: Arc<T>,
    mut rng: XorShift,
    w: Window,
    tally: Rc<RefCell<Tally>>,
) {
    let n = keys.len() as u64;
    let mut measured = 0u64;
    let result: Result<(), String> = async {
        loop {
            let i = rng.below(n) as usize;
            let t0 = Instant::now();
            if t0 >= w.end || measured >= w.limit {
                return Ok(());
            }
            let outcome = keys.call(&mut conn, i).await?;
            let t1 = Instant::now();
            if t0 >= w.measure_start {
                measured += 1;
                let mut t = tally.borrow_mut();
                t.last = t.last.max(Some(t1));
                t.hist.record((t1 - t0).as_nanos() as u64);
                match outcome {
                    Outcome::Ok => t.ok += 1,
                    Outcome::NotFound => t.notfound += 1,
                    Outcome::Temp => t.temp += 1,
                    Outcome::Other => t.other += 1,
                }
            }
        }
    }
    .await;
    let mut t = tally.borrow_mut();
    t.finished += 1;
    if let Err(e) = result {
        t.errors += 1;
        t.first_error.get_or_insert(e);
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Report {
    /// Requests per second over the measured window.
    pub fn rate(&self) -> f64 {
        self.tally.hist.count() as f64 / self.seconds
    }

    /// A latency percentile in microseconds.
    fn us(&self, q: f64) -> f64 {
        self.tally.hist.percentile(q) as f64 / 1000.0
    }

    /// CPU seconds spent by neither the server nor this client over the
    /// window: other processes competing for the machine (noise).
    pub fn other_cpu(&self) -> Option<f64> {
        Some((self.system_cpu? - self.client_cpu? - self.server_cpu.unwrap_or(0.0)).max(0.0))
    }

    fn per_request_us(&self, cpu: Option<f64>) -> Option<f64> {
        let n = self.tally.hist.count();
        cpu.filter(|_| n > 0).map(|c| c * 1e6 / n as f64)
    }

    /// One JSON object.
    pub fn json(&self) -> String {
        let t = &self.tally;
        let h = &t.hist;
        let opt = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.3}"));
        format!(
            concat!(
                "{{\"socket\":{},\"map\":{},\"keys\":{},\"connections\":{},\"threads\":{},",
                "\"warmup_s\":{:.3},\"seconds\":{:.3},\"requests\":{},\"rps\":{:.1},",
                "\"latency_us\":{{\"min\":{:.2},\"mean\":{:.2},\"p50\":{:.2},\"p90\":{:.2},",
                "\"p99\":{:.2},\"p999\":{:.2},\"max\":{:.2}}},",
                "\"replies\":{{\"ok\":{},\"notfound\":{},\"temp\":{},\"other\":{}}},",
                "\"errors\":{},\"stalled\":{},\"first_error\":{},",
                "\"server_cpu_s\":{},\"server_cpu_us_per_req\":{},",
                "\"client_cpu_s\":{},\"client_cpu_us_per_req\":{},",
                "\"system_cpu_s\":{},\"other_cpu_s\":{}}}"
            ),
            json_str(&self.opts.socket.display().to_string()),
            json_str(&self.kind.map),
            self.keys,
            self.opts.connections,
            self.opts.threads.clamp(1, self.opts.connections.max(1)),
            self.opts.warmup.as_secs_f64(),
            self.seconds,
            h.count(),
            self.rate(),
            h.min() as f64 / 1000.0,
            h.mean() / 1000.0,
            self.us(0.5),
            self.us(0.9),
            self.us(0.99),
            self.us(0.999),
            h.max() as f64 / 1000.0,
            t.ok,
            t.notfound,
            t.temp,
            t.other,
            t.errors,
            self.stalled,
            t.first_error
                .as_deref()
                .map_or("null".to_string(), json_str),
            opt(self.server_cpu),
            opt(self.per_request_us(self.server_cpu)),
            opt(self.client_cpu),
            opt(self.per_request_us(self.client_cpu)),
            opt(self.system_cpu),
            opt(self.other_cpu()),
        )
    }

    /// Human-readable summary.
    pub fn text(&self) -> String {
        let t = &self.tally;
        let h = &t.hist;
        let [l_ok, l_nf, l_temp, l_other] = self.kind.labels;
        let mut s = format!(
            "{} requests in {:.1} s over {} connection(s) ({} client thread(s)), {}, {} keys\n\
             throughput: {:.0} requests/s\n\
             latency µs: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  (min {:.1}, mean {:.1}, max {:.1})\n\
             replies: {l_ok} {}  {l_nf} {}  {l_temp} {}  {l_other} {}\n",
            h.count(),
            self.seconds,
            self.opts.connections,
            self.opts.threads.clamp(1, self.opts.connections.max(1)),
            self.kind.what,
            self.keys,
            self.rate(),
            self.us(0.5),
            self.us(0.9),
            self.us(0.99),
            self.us(0.999),
            h.min() as f64 / 1000.0,
            h.mean() / 1000.0,
            h.max() as f64 / 1000.0,
            t.ok,
            t.notfound,
            t.temp,
            t.other,
        );
        if let (Some(c), Some(per)) = (self.server_cpu, self.per_request_us(self.server_cpu)) {
            s.push_str(&format!(
                "server CPU: {c:.2} s ({:.2} cores), {per:.2} µs/request\n",
                c / self.seconds
            ));
        }
        if let (Some(c), Some(per)) = (self.client_cpu, self.per_request_us(self.client_cpu)) {
            s.push_str(&format!(
                "client CPU: {c:.2} s ({:.2} cores), {per:.2} µs/request\n",
                c / self.seconds
            ));
        }
        if let Some(o) = self.other_cpu() {
            s.push_str(&format!(
                "other processes' CPU: {o:.2} s ({:.2} cores)\n",
                o / self.seconds
            ));
        }
        if t.errors > 0 || self.stalled > 0 {
            s.push_str(&format!(
                "connection errors: {}, stalled: {}; first error: {}\n",
                t.errors,
                self.stalled,
                t.first_error.as_deref().unwrap_or("-")
            ));
        }
        s
    }
}

/// Poll `socket` until a socketmap request gets any reply; return the time
/// that took. Used to time the server's start-up (the load).
pub fn wait_ready(
    socket: &std::path::Path,
    request: &[u8],
    timeout: Duration,
) -> Result<Duration, String> {
    use std::io::{Read, Write};
    let started = Instant::now();
    let deadline = started + timeout;
    let mut last_error = String::from("no attempt");
    while Instant::now() < deadline {
        let attempt = (|| -> std::io::Result<bool> {
            let mut s = std::os::unix::net::UnixStream::connect(socket)?;
            s.set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))?;
            s.write_all(request)?;
            let mut buf = BytesMut::with_capacity(512);
            let mut chunk = [0u8; 512];
            loop {
                match Reply::decode(&mut buf) {
                    Ok(Some(_)) | Err(CodecError::BadReply(_)) => return Ok(true),
                    Ok(None) => {}
                    Err(e) => return Err(std::io::Error::other(e)),
                }
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    return Ok(false);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        })();
        match attempt {
            Ok(true) => return Ok(started.elapsed()),
            Ok(false) => last_error = "connection closed without a reply".into(),
            Err(e) => last_error = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Err(format!(
        "{} did not answer within {:.1} s (last: {last_error})",
        socket.display(),
        timeout.as_secs_f64()
    ))
}
