//! Dict server: Unix-socket I/O, FIFO replies, durable commits.
//!
//! Commands on a connection are handled strictly in order and their replies
//! written in that order (no async ids: Dovecot's client matches a plain
//! reply to its oldest pending command). A commit is answered only after the
//! usage store has made it durable; commands after it wait, which keeps the
//! order without any bookkeeping. Transactions live in the connection's
//! [`Session`] and vanish with it, as Dovecot expects (ids repeat across
//! connections). Connection churn is normal: without `idle_msecs` Dovecot
//! connects for every operation (protocols.md G11).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use ramdir_conn::{Close, Limits, Out, Protocol};
use ramdir_core::DirectoryHandle;
use ramdir_core::fallback::Fallback;
use ramdir_core::usage::{CommitOutcome, Txn, UsageStore, Writer};
use tokio::net::UnixListener;
use tokio::sync::oneshot;

use crate::codec::{self, Command, CommitResult, Reply};
use crate::service::{Session, Settings, Step, source_question, source_unavailable};

/// Close a connection idle this long. Dovecot closes its own idle
/// connections after `idle_msecs` (0 by default: at once), so this only
/// reaps clients that vanished; it must exceed any sensible `idle_msecs`.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Time allowed to write replies. Dovecot's client gives up on a request
/// after 30 s (`DICT_CLIENT_REQUEST_TIMEOUT_MSECS`); a peer that does not
/// read for longer is gone.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Default cap on concurrent connections: see
/// [`ramdir_conn::DEFAULT_MAX_CONNECTIONS`].
pub const DEFAULT_MAX_CONNECTIONS: usize = ramdir_conn::DEFAULT_MAX_CONNECTIONS;

/// Free room made in the read buffer before each read: a lookup or a
/// transaction's few commands fit, so they take one read.
const READ_ROOM: usize = 1024;

/// Tunables and shared state of one dict listener.
#[derive(Debug, Clone)]
pub struct Config {
    /// Concurrent connections; more wait in the backlog.
    pub max_connections: usize,
    /// See [`IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// Dict names and auth behaviour.
    pub settings: Settings,
    /// Where auth misses go while the directory is not authoritative.
    pub fallback: Option<Arc<dyn Fallback>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: IDLE_TIMEOUT,
            settings: Settings::default(),
            fallback: None,
        }
    }
}

/// The quota usage store and its group-commit writer.
#[derive(Debug, Clone)]
pub struct Usage {
    /// For reads.
    pub store: Arc<UsageStore>,
    /// For durable commits.
    pub writer: Writer,
}

/// Counters for `stats` and tests: the connection layer's (requests are
/// commands).
pub type Stats = ramdir_conn::Stats;

/// Serve the dict protocol on `listener` until `shutdown` completes.
///
/// # Errors
/// Only when the listener itself fails.
pub async fn run(
    listener: UnixListener,
    directory: Arc<DirectoryHandle>,
    usage: Option<Usage>,
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
    let protocol = Dict {
        directory,
        usage,
        config,
        runtime: tokio::runtime::Handle::current(),
    };
    ramdir_conn::serve(listener, Arc::new(protocol), limits, stats, shutdown).await
}

/// The dict protocol for the connection layer.
struct Dict {
    directory: Arc<DirectoryHandle>,
    usage: Option<Usage>,
    config: Config,
    runtime: tokio::runtime::Handle,
}

impl Dict {
    /// Ask the source about a miss in `dir`, a snapshot that is not
    /// authoritative, then answer from the snapshot it updated.
    fn ask_source(
        &self,
        session: &mut Session,
        dir: &ramdir_core::Directory,
        cmd: &Command<'_>,
        (kind, key): (ramdir_core::fallback::KeyKind, String),
    ) -> Reply {
        let store = self.usage.as_ref().map(|u| &*u.store);
        match &self.config.fallback {
            None => source_unavailable(dir, None),
            Some(fb) => match self.runtime.block_on(fb.fetch(kind, &key)) {
                Ok(_) => match session.handle(
                    cmd.clone(),
                    &self.directory.snapshot(),
                    store,
                    &self.config.settings,
                ) {
                    Step::One(r) => r,
                    _ => source_unavailable(dir, None),
                },
                Err(e) => source_unavailable(dir, Some(&e)),
            },
        }
    }

    /// Hand a transaction to the group-commit writer; the result comes
    /// once it is durable.
    fn commit(&self, txn: Txn) -> impl Future<Output = CommitResult> + Send + 'static {
        let rx = self.usage.as_ref().map(|u| {
            let (tx, rx) = oneshot::channel();
            u.writer.commit(
                txn,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
            rx
        });
        async move {
            let Some(rx) = rx else {
                return CommitResult::Fail("quota store is not configured".into());
            };
            match rx.await {
                Ok(Ok(CommitOutcome::Ok)) => CommitResult::Ok,
                Ok(Ok(CommitOutcome::NotFound)) => CommitResult::NotFound,
                Ok(Err(e)) => CommitResult::Fail(e.to_string()),
                Err(_) => CommitResult::Fail("quota store writer is gone".into()),
            }
        }
    }
}

impl Protocol for Dict {
    type Conn = Session;
    const NAME: &'static str = "dict";

    fn open(&self) -> Session {
        Session::new()
    }

    fn answer(
        &self,
        session: &mut Session,
        buf: &mut BytesMut,
        out: &mut Out<'_>,
    ) -> Result<bool, Close> {
        // Parsed in place: the command borrows from `buf` until its line is
        // dropped at the end.
        let n = match codec::frame(buf) {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(false),
            Err(e) => return Err(Close::Protocol(e.to_string())),
        };
        let cmd = Command::parse_bytes(&buf[..n]).map_err(|e| Close::Protocol(e.to_string()))?;
        let dir = self.directory.current();
        // Kept only to ask the source about a miss, which only a snapshot
        // that is not authoritative can have.
        let lookup =
            (!dir.authoritative() && matches!(cmd, Command::Lookup { .. })).then(|| cmd.clone());
        let store = self.usage.as_ref().map(|u| &*u.store);
        let mut step = session.handle(cmd, &dir, store, &self.config.settings);
        // A miss in a snapshot that is not authoritative: ask the source.
        if let (Step::One(reply), Some(c)) = (&step, &lookup)
            && let Some(question) = source_question(&dir, c, reply)
        {
            // Waits for the source: off the runtime's workers.
            step = Step::One(out.blocking(|_| self.ask_source(session, &dir, c, question)));
        }
        match step {
            Step::One(reply) => {
                reply.encode(out.buf);
                session.recycle(reply);
            }
            Step::Reply(replies) => {
                for r in replies {
                    r.encode(out.buf);
                }
            }
            // A walk over the whole directory may take long: off the
            // runtime's workers.
            Step::Iterate(plan) => out.blocking(|out| -> Result<(), Close> {
                for row in plan.rows(&dir) {
                    row.encode(out.buf);
                    out.flush_if_full()?;
                }
                Reply::IterEnd.encode(out.buf);
                Ok(())
            })?,
            Step::Commit {
                id,
                async_reply,
                txn,
            } => {
                drop(dir);
                // The reply waits for the group commit; nothing else does.
                let result = self.commit(txn);
                out.later(Box::pin(async move {
                    let mut reply = BytesMut::new();
                    Reply::Commit {
                        id,
                        async_reply,
                        result: result.await,
                    }
                    .encode(&mut reply);
                    reply
                }));
            }
            Step::Close(why) => return Err(Close::Protocol(why)),
        }
        buf.advance(n + 1);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramdir_core::{Directory, UserSpec};
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    struct TestServer {
        path: std::path::PathBuf,
        _dir: tempfile::TempDir,
        stats: Arc<Stats>,
        store: Arc<UsageStore>,
    }

    async fn spawn() -> TestServer {
        let mut d = Directory::new(ramdir_core::Settings::default());
        for i in 0..300 {
            d.insert_user(&UserSpec {
                login: format!("u{i}@x.org"),
                password: Some("{PLAIN}pw".into()),
                uid: Some(5000),
                gid: Some(5000),
                enabled: true,
                ..Default::default()
            });
        }
        let handle = Arc::new(DirectoryHandle::new(d));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dict");
        let store = Arc::new(UsageStore::open(&dir.path().join("q")).unwrap());
        let usage = Usage {
            store: store.clone(),
            writer: Writer::start(store.clone()),
        };
        let listener = UnixListener::bind(&path).unwrap();
        let stats = Arc::new(Stats::default());
        tokio::spawn(run(
            listener,
            handle,
            Some(usage),
            Config::default(),
            stats.clone(),
            std::future::pending(),
        ));
        TestServer {
            path,
            _dir: dir,
            stats,
            store,
        }
    }

    /// Send `input`, read until `lines` reply lines arrived.
    async fn exchange(c: &mut UnixStream, input: &[u8], lines: usize) -> Vec<String> {
        c.write_all(input).await.unwrap();
        let mut got = Vec::new();
        let mut buf = Vec::new();
        while got.len() < lines {
            let mut chunk = [0u8; 4096];
            let n = c.read(&mut chunk).await.unwrap();
            assert_ne!(n, 0, "closed after {got:?}");
            buf.extend_from_slice(&chunk[..n]);
            while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                got.push(String::from_utf8(buf[..i].to_vec()).unwrap());
                buf.drain(..=i);
            }
        }
        got
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replies_come_in_command_order_across_a_commit() {
        let srv = spawn().await;
        let mut c = UnixStream::connect(&srv.path).await.unwrap();
        let got = exchange(
            &mut c,
            b"H3\t2\t0\t\tquota\nLpriv/quota/storage\tu1@x.org\nB1\tu1@x.org\nS1\tpriv/quota/storage\t10\nC1\nB2\tu1@x.org\nA2\tpriv/quota/storage\t5\nA2\tpriv/quota/messages\t1\nD2\nLpriv/quota/storage\tu1@x.org\n",
            4,
        )
        .await;
        // D2: the messages counter was missing, so N; the storage increment
        // in the same transaction was applied all the same.
        assert_eq!(got, ["N", "O1", "AN2", "O15"]);
        assert_eq!(
            srv.store.get("u1@x.org", "quota/storage").unwrap(),
            Some(15)
        );
    }

    /// Protocol 4 (Dovecot 2.4's `quota_clone`, and the Lua bridge's
    /// `H4` auth connection) over the socket: `B` with its third field and
    /// `V` take no reply, the commit answers, and the userdb answer uses
    /// 2.4's names.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn protocol_4_clients_are_served() {
        let srv = spawn().await;
        // This thread (where the policy service or milter would read)
        // holds the user as untracked in its own copy.
        assert_eq!(srv.store.counters("u1@x.org").unwrap(), [None, None]);
        let mut c = UnixStream::connect(&srv.path).await.unwrap();
        let got = exchange(
            &mut c,
            b"H4\t0\t0\t\tquota\nB1\tu1@x.org\t0\nV1\tyes\nS1\tpriv/quota/storage\t248\nS1\tpriv/quota/messages\t1\nC1\nLpriv/quota/messages\tu1@x.org\n",
            2,
        )
        .await;
        assert_eq!(got, ["O1", "O1"]);
        // Committed by the writer thread; seen here once `O1` was sent.
        assert_eq!(
            srv.store.counters("u1@x.org").unwrap(),
            [Some(248), Some(1)]
        );
        let mut a = UnixStream::connect(&srv.path).await.unwrap();
        let got = exchange(
            &mut a,
            b"H4\t0\t0\t\tauth\nLshared/userdb/u1@x.org\tu1@x.org\n",
            1,
        )
        .await;
        assert_eq!(
            got[0],
            "O{\"uid\":5000,\"gid\":5000,\"quota_storage_size\":\"10737418240B\",\"quota_message_count\":\"0\",\"namespace/inbox/mailbox/Trash/quota_storage_extra\":\"524288000B\",\"namespace/inbox/mailbox/Junk/quota_storage_extra\":\"524288000B\"}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn iteration_streams_all_users_then_an_empty_line() {
        let srv = spawn().await;
        let mut c = UnixStream::connect(&srv.path).await.unwrap();
        let got = exchange(
            &mut c,
            b"H3\t2\t0\t\tauth\nI8\t0\tshared/userdb/\t\nLshared/passdb/u7@x.org\tu7@x.org\n",
            302,
        )
        .await;
        assert!(
            got[..300]
                .iter()
                .all(|l| l.starts_with("Oshared/userdb/u") && l.ends_with('\t'))
        );
        assert_eq!(got[300], "");
        assert_eq!(got[301], "O{\"password\":\"{PLAIN}pw\"}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_input_closes_that_connection_only() {
        let srv = spawn().await;
        let mut good = UnixStream::connect(&srv.path).await.unwrap();
        exchange(
            &mut good,
            b"H3\t2\t0\t\tauth\nLshared/passdb/u1@x.org\tu1@x.org\n",
            1,
        )
        .await;
        for bad in [
            &b"X1\n"[..],
            b"Lkey\n",
            b"H9\t0\t0\t\tauth\n",
            b"H3\t2\t0\t\tauth\nS1\tk\tv\n",
        ] {
            let mut c = UnixStream::connect(&srv.path).await.unwrap();
            c.write_all(bad).await.unwrap();
            let mut rest = Vec::new();
            c.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty(), "{bad:?}");
            let got = exchange(&mut good, b"Lshared/userdb/u2@x.org\tu2@x.org\n", 1).await;
            assert!(got[0].starts_with("O{"), "{got:?}");
        }
        assert_eq!(srv.stats.protocol_errors.load(Ordering::Relaxed), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn heavy_connect_disconnect_churn() {
        let srv = spawn().await;
        let mut tasks = Vec::new();
        for t in 0..8 {
            let path = srv.path.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..100 {
                    let mut c = UnixStream::connect(&path).await.unwrap();
                    let line = format!(
                        "H3\t2\t0\t\tauth\nLshared/userdb/u{}@x.org\tx\n",
                        (t * 100 + i) % 300
                    );
                    let got = exchange(&mut c, line.as_bytes(), 1).await;
                    assert!(got[0].starts_with("O{\"uid\":5000,\"gid\":5000"), "{got:?}");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(srv.stats.connections.load(Ordering::Relaxed), 800);
    }
}
