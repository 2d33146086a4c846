//! The accept loop both Postfix-facing listeners share: a connection limit
//! (excess clients wait in the kernel backlog, not accepted-then-dropped),
//! transient accept errors survived, and a drained shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// How long shutdown waits for connections to finish their current request.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause after a transient accept error (out of file descriptors, …), so a
/// persistent one does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

fn is_transient(e: &std::io::Error) -> bool {
    // ENFILE, EMFILE, ENOBUFS, ENOMEM, ECONNABORTED, EINTR: the listener is
    // still fine.
    matches!(e.raw_os_error(), Some(23 | 24 | 105 | 12 | 103 | 4))
}

/// Accept connections and run `handle` for each until `shutdown`; then tell
/// the handlers to stop (the receiver turns `true`) and wait for them up to
/// [`DRAIN_TIMEOUT`].
pub(crate) async fn run<F, Fut>(
    what: &'static str,
    listener: UnixListener,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
    handle: F,
) -> std::io::Result<()>
where
    F: Fn(UnixStream, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.expect("semaphore never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) if is_transient(&e) => {
                    tracing::warn!(listener = what, error = %e, "accept failed; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
                Err(e) => {
                    tracing::error!(listener = what, error = %e, "listener failed");
                    return Err(e);
                }
            },
            () = &mut shutdown => break,
        };
        let fut = handle(stream, stop_rx.clone());
        tasks.spawn(async move {
            let _permit = permit;
            fut.await;
        });
        // Reap finished tasks so the set does not grow with churn.
        while tasks.try_join_next().is_some() {}
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}
