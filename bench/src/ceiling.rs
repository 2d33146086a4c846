//! `ceiling`: the fastest socketmap server this machine can run with the
//! same building blocks as ramdir, answering every request with one
//! constant reply. It is the baseline ramdir is measured against: anything
//! ramdir loses to it is the cost of ramdir's own work (the lookup, the
//! snapshot, the timeouts, the connection limit), not of tokio, the kernel
//! or the protocol.
//!
//! To be a fair baseline it does what ramdir's server does per request and
//! nothing less: a multi-threaded tokio runtime with the default number of
//! workers (one per CPU, as `ramdir serve`), one task per connection,
//! `read_buf` into a `BytesMut`, `Request::decode` (which copies map and
//! key out, as ramdir's does), `Reply::encode` into a reused buffer,
//! `write_all`. It leaves out what is not I/O: no lookup, no timeouts, no
//! connection limit, no logging.
//!
//! The server is generic over the protocol ([`Answer`]); `dict-ceiling`
//! and `policy-ceiling` are the same server with the dict and policy
//! codecs.
//!
//! `--blocking` runs the same answer on a blocking thread per connection
//! (std sockets, `read` into the same buffer, one `write` per reply): for
//! one-request-at-a-time clients such as Postfix this is the limit of the
//! machine's IPC, since a blocked `read` is woken directly by the peer's
//! `write` with no readiness poll in between. The connection layer's model
//! (`conn/`) was chosen against both.

use std::path::{Path, PathBuf};

use bytes::BytesMut;
use ramdir_postfix::socketmap::codec::{Reply, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};

/// One protocol's constant answer: `dict-ceiling` and `policy-ceiling`
/// are this server with another [`Answer`].
pub trait Answer: Clone + Send + Sync + 'static {
    /// Initial capacity of a connection's read buffer: the same as ramdir's
    /// server for the protocol, so both read a request in as many calls.
    const READ_BUF: usize = 512;
    /// Initial capacity of a connection's reply buffer (as ramdir's).
    const WRITE_BUF: usize = 512;
    /// Decode one message off the front of `buf` with the protocol's codec
    /// and append its reply (if the message gets one) to the empty `out`.
    /// Each connection has its own clone, for buffers it reuses as ramdir's
    /// server does.
    /// `Ok(false)`: no whole message yet. `Err`: undecodable, close.
    fn step(&mut self, buf: &mut BytesMut, out: &mut BytesMut) -> Result<bool, ()>;
}

/// The socketmap answer: `OK <data>` to every request.
#[derive(Debug, Clone)]
pub struct SocketmapAnswer(pub Reply);

impl Answer for SocketmapAnswer {
    fn step(&mut self, buf: &mut BytesMut, out: &mut BytesMut) -> Result<bool, ()> {
        match Request::decode(buf) {
            Ok(Some(req)) => {
                std::hint::black_box(&req);
                self.0.encode(out);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(_) => Err(()),
        }
    }
}

/// Run the socketmap ceiling server on `socket` until SIGTERM or SIGINT.
pub fn run(socket: &Path, reply: &str, blocking: bool) -> std::io::Result<()> {
    run_answer(
        "ceiling",
        socket,
        SocketmapAnswer(Reply::Ok(reply.to_string())),
        blocking,
    )
}

/// Run a constant-reply server for `answer` on `socket` until SIGTERM or
/// SIGINT; `name` prefixes its messages. `blocking`: a thread per
/// connection instead of tokio.
pub fn run_answer<A: Answer>(
    name: &'static str,
    socket: &Path,
    answer: A,
    blocking: bool,
) -> std::io::Result<()> {
    if blocking {
        return run_blocking(name, socket, answer);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(name)
        .build()?;
    runtime.block_on(serve(name, socket.to_path_buf(), answer))
}

async fn serve<A: Answer>(name: &str, socket: PathBuf, answer: A) -> std::io::Result<()> {
    // A socket file left by an earlier run would make bind fail.
    match std::fs::remove_file(&socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(&socket)?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    eprintln!("{name}: listening on {}", socket.display());
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let answer = answer.clone();
                    tokio::spawn(async move {
                        // Errors only end this connection, as in ramdir.
                        let _ = connection(stream, answer).await;
                    });
                }
                Err(e) => eprintln!("{name}: accept failed: {e}"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    let _ = std::fs::remove_file(&socket);
    eprintln!("{name}: stopped");
    Ok(())
}

async fn connection<A: Answer>(mut stream: UnixStream, mut answer: A) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(A::READ_BUF);
    let mut out = BytesMut::with_capacity(A::WRITE_BUF);
    loop {
        loop {
            out.clear();
            match answer.step(&mut buf, &mut out) {
                Ok(true) => {
                    if !out.is_empty() {
                        stream.write_all(&out).await?;
                    }
                }
                Ok(false) => break,
                Err(()) => return Ok(()),
            }
        }
        // As ramdir's servers: room for a whole request before each read.
        buf.reserve(A::READ_BUF);
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// The blocking variant: a thread per connection; SIGTERM's default action
/// ends it (the socket file is replaced by the next run).
fn run_blocking<A: Answer>(name: &str, socket: &Path, answer: A) -> std::io::Result<()> {
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(socket)?;
    eprintln!("{name}: listening on {} (blocking)", socket.display());
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let answer = answer.clone();
                std::thread::spawn(move || {
                    let _ = blocking_connection(stream, answer);
                });
            }
            Err(e) => {
                eprintln!("{name}: accept failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

fn blocking_connection<A: Answer>(
    mut stream: std::os::unix::net::UnixStream,
    mut answer: A,
) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut buf = BytesMut::with_capacity(A::READ_BUF);
    let mut out = BytesMut::with_capacity(A::WRITE_BUF);
    loop {
        loop {
            out.clear();
            match answer.step(&mut buf, &mut out) {
                Ok(true) => {
                    if !out.is_empty() {
                        stream.write_all(&out)?;
                    }
                }
                Ok(false) => break,
                Err(()) => return Ok(()),
            }
        }
        buf.reserve(A::READ_BUF);
        let start = buf.len();
        let cap = buf.capacity();
        buf.resize(cap, 0);
        let n = stream.read(&mut buf[start..])?;
        buf.truncate(start + n);
        if n == 0 {
            return Ok(());
        }
    }
}
