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

use std::path::{Path, PathBuf};

use bytes::BytesMut;
use ramdir_postfix::socketmap::codec::{Reply, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};

/// Run the ceiling server on `socket` until SIGTERM or SIGINT.
pub fn run(socket: &Path, reply: &str) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ceiling")
        .build()?;
    runtime.block_on(serve(socket.to_path_buf(), Reply::Ok(reply.to_string())))
}

async fn serve(socket: PathBuf, reply: Reply) -> std::io::Result<()> {
    // A socket file left by an earlier run would make bind fail.
    match std::fs::remove_file(&socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(&socket)?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    eprintln!("ceiling: listening on {}", socket.display());
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let reply = reply.clone();
                    tokio::spawn(async move {
                        // Errors only end this connection, as in ramdir.
                        let _ = connection(stream, &reply).await;
                    });
                }
                Err(e) => eprintln!("ceiling: accept failed: {e}"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    let _ = std::fs::remove_file(&socket);
    eprintln!("ceiling: stopped");
    Ok(())
}

async fn connection(mut stream: UnixStream, reply: &Reply) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(512);
    let mut out = BytesMut::with_capacity(512);
    loop {
        loop {
            match Request::decode(&mut buf) {
                Ok(Some(req)) => {
                    std::hint::black_box(&req);
                    out.clear();
                    reply.encode(&mut out);
                    stream.write_all(&out).await?;
                }
                Ok(None) => break,
                Err(_) => return Ok(()),
            }
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}
