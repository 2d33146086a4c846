//! The milter server: indymilter callbacks, negotiation, per-connection
//! state and shutdown.
//!
//! One indymilter session per MTA connection; Postfix keeps that
//! connection for the whole SMTP session and sends every message of the
//! session over it (protocols.md G19), so the per-message state in
//! [`Session::message`] starts afresh at every MAIL and is dropped on abort
//! and at end of message.
//!
//! Every quota check takes exactly one directory snapshot and runs in the
//! session's own task, as the policy service's check does: the usage comes
//! from the per-thread copy or the store's cache, and the rare redb read
//! behind them is a page-cache read. (It ran on tokio's blocking pool
//! before; each burst of checks then grew that pool by up to hundreds of
//! threads, each with its own usage copy, and the 30-minute soak's RSS
//! crept up with them, docs/reliability.md.) The check is wrapped in a
//! panic boundary: should it panic, that one command is answered tempfail,
//! the connection and the milter go on. (An indymilter callback that
//! panicked would end its session task and drop the MTA connection, so
//! Postfix would apply `default_action`; the callbacks here do nothing
//! that can panic on input, and the check runs behind the boundary.)

use std::ffi::CString;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use indymilter::{
    Actions, Callbacks, Context, EomContext, Listener, NegotiateContext, ProtoOpts, SetErrorReply,
    SmtpReply, Status,
};
use ramdir_conn::Stats;
use ramdir_core::DirectoryHandle;
use ramdir_core::check::{Grace, UsageSource, Verdict, check_message};
use ramdir_core::latency::Sampler;
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, info, trace, warn};

use crate::config::{Config, OverQuotaReply};
use crate::service::{Answer, Message, answer, recipient};

/// The protocol options the milter asks for, when the MTA offers them
/// (Postfix 3.7 offers every one, protocols.md 5.2):
/// - no CONNECT, HELO, DATA, end-of-header or unknown-command events: the
///   milter has nothing to say about them;
/// - MAIL (for `SIZE=`), RCPT (the per-recipient check), headers and body
///   (the counted size) and end of message (the whole-message check) are
///   kept;
/// - no reply to header events (`NR_HDR`): they are only counted, so this
///   saves one round trip per header field;
/// - header values with their leading space (`HDR_LEADSPC`), so that they
///   are counted exactly;
/// - `SKIP`, so the body of a message the end-of-message check can no
///   longer refuse is not sent at all.
///
/// Not asked for: `RCPT_REJ` (recipients Postfix already refused are none
/// of our business) and no-reply for MAIL, RCPT or body (their replies
/// carry decisions or `skip`).
const WANTED_OPTS: ProtoOpts = ProtoOpts::NO_CONNECT
    .union(ProtoOpts::NO_HELO)
    .union(ProtoOpts::NO_DATA)
    .union(ProtoOpts::NO_EOH)
    .union(ProtoOpts::NO_UNKNOWN)
    .union(ProtoOpts::NOREPLY_HEADER)
    .union(ProtoOpts::LEADING_SPACE)
    .union(ProtoOpts::SKIP);

/// The reply when a check cannot be made. 4.3.0 ("other or undefined mail
/// system status", RFC 3463) is what Postfix itself answers when a lookup
/// table fails (protocols.md G3); the text says what failed.
const TROUBLE_REPLY: (&str, &str, &str) =
    ("451", "4.3.0", "Temporary failure checking mailbox quota");

/// What every session shares.
struct Shared {
    directory: Arc<DirectoryHandle>,
    usage: Arc<dyn UsageSource + Send + Sync>,
    grace: Grace,
    over_quota: OverQuotaReply,
    stats: Arc<Stats>,
}

/// The milter's listener as indymilter sees it, with the connection
/// layer's conventions: accepted connections are counted, and an accept
/// error from a lack of resources (out of file descriptors) pauses
/// accepting for [`ramdir_conn::ACCEPT_BACKOFF`] instead of ending the
/// milter (indymilter stops at any accept error).
pub(crate) struct Accepting {
    inner: UnixListener,
    stats: Arc<Stats>,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Accepting {
    pub(crate) fn new(inner: UnixListener, stats: Arc<Stats>) -> Accepting {
        Accepting {
            inner,
            stats,
            backoff: None,
        }
    }
}

impl Listener for Accepting {
    type Io = UnixStream;

    fn poll_accept(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<UnixStream>> {
        loop {
            if let Some(pause) = &mut self.backoff {
                if pause.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.backoff = None;
            }
            match self.inner.poll_accept(cx) {
                Poll::Ready(Ok((s, _))) => {
                    self.stats.connections.fetch_add(1, Ordering::Relaxed);
                    return Poll::Ready(Ok(s));
                }
                Poll::Ready(Err(e)) if ramdir_conn::is_transient(&e) => {
                    warn!(listener = "milter", error = %e, "accept failed; retrying");
                    self.backoff = Some(Box::pin(tokio::time::sleep(ramdir_conn::ACCEPT_BACKOFF)));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Per-connection state: what was negotiated, and the message in progress.
#[derive(Debug, Default)]
pub(crate) struct Session {
    /// `NR_HDR` was negotiated: header callbacks must return `Noreply`.
    noreply_header: bool,
    /// `HDR_LEADSPC` was negotiated.
    leading_space: bool,
    /// `SKIP` was negotiated.
    skip: bool,
    /// The message in progress.
    message: Message,
    /// Which of the connection's checks to time.
    sampler: Sampler,
}

/// The session state of a context. indymilter keeps `data` across
/// callbacks; it is set at negotiation and recreated (with nothing
/// negotiated) should it ever be missing.
fn session<T>(data: &mut Option<T>) -> &mut T
where
    T: Default,
{
    data.get_or_insert_with(T::default)
}

/// Serve the milter on `listener` until `shutdown` completes (see
/// [`crate::run`]). `usage` is any usage source, so tests can inject
/// failures.
pub(crate) async fn serve(
    listener: impl Listener,
    directory: Arc<DirectoryHandle>,
    usage: Arc<dyn UsageSource + Send + Sync>,
    config: Config,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    if config.max_connections == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "milter max_connections must be at least 1",
        ));
    }
    config.over_quota.validate().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "milter over-quota reply {:?}: {e}",
                config.over_quota.to_string()
            ),
        )
    })?;
    let shared = Arc::new(Shared {
        directory,
        usage,
        grace: config.grace,
        over_quota: config.over_quota,
        stats,
    });
    let milter_config = indymilter::Config {
        max_connections: config.max_connections,
        // No editing actions: the milter only answers.
        actions: Actions::empty(),
        ..indymilter::Config::default()
    };
    info!(
        max_connections = config.max_connections,
        over_quota = %shared.over_quota,
        "quota milter listening"
    );
    let result = indymilter::run(listener, callbacks(shared), milter_config, shutdown).await;
    match &result {
        Ok(()) => info!("quota milter stopped"),
        // indymilter has already logged the error; say what stopped.
        Err(e) => warn!(error = %e, "quota milter stopped: its listener failed"),
    }
    result
}

fn callbacks(shared: Arc<Shared>) -> Callbacks<Session> {
    let rcpt_shared = shared.clone();
    let eom_shared = shared;
    Callbacks::new()
        .on_negotiate(|cx, _actions, offered| Box::pin(on_negotiate(cx, offered)))
        .on_mail(|cx, args| Box::pin(on_mail(cx, args)))
        .on_rcpt(move |cx, args| Box::pin(on_rcpt(rcpt_shared.clone(), cx, args)))
        .on_header(|cx, name, value| Box::pin(on_header(cx, name, value)))
        .on_body(|cx, chunk| Box::pin(on_body(cx, chunk)))
        .on_eom(move |cx| Box::pin(on_eom(eom_shared.clone(), cx)))
        .on_abort(|cx| Box::pin(on_abort(cx)))
}

async fn on_negotiate(cx: &mut NegotiateContext<Session>, offered: ProtoOpts) -> Status {
    let opts = WANTED_OPTS & offered;
    cx.requested_actions = Actions::empty();
    cx.requested_opts = opts;
    cx.data = Some(Session {
        noreply_header: opts.contains(ProtoOpts::NOREPLY_HEADER),
        leading_space: opts.contains(ProtoOpts::LEADING_SPACE),
        skip: opts.contains(ProtoOpts::SKIP),
        message: Message::default(),
        sampler: Sampler::default(),
    });
    trace!(?opts, "negotiated");
    Status::Continue
}

async fn on_mail(cx: &mut Context<Session>, args: Vec<CString>) -> Status {
    session(&mut cx.data).message = Message::new(&args);
    Status::Continue
}

async fn on_rcpt(shared: Arc<Shared>, cx: &mut Context<Session>, args: Vec<CString>) -> Status {
    let Some(arg) = args.first() else {
        // indymilter refuses an empty RCPT payload before calling us, so
        // this is an MTA bug; the answer to any internal problem is tempfail.
        warn!("RCPT without an address; answering tempfail");
        return tempfail(&mut cx.reply);
    };
    let rcpt = recipient(arg);
    let s = session(&mut cx.data);
    let size = s.message.declared_size;
    let started = s.sampler.start(&shared.stats.latency);
    let verdict = check(&shared, std::slice::from_ref(&rcpt), size);
    checked(&shared, started);
    match answer(&verdict) {
        Answer::Continue => {
            trace!(%rcpt, size, %verdict, "recipient let through");
            session(&mut cx.data).message.let_through(rcpt, &verdict);
            Status::Continue
        }
        Answer::OverQuota => {
            debug!(%rcpt, size, %verdict, "recipient refused");
            refuse(&mut cx.reply, &shared.over_quota)
        }
        Answer::Tempfail => {
            warn!(%rcpt, %verdict, "recipient check failed; answering tempfail");
            tempfail(&mut cx.reply)
        }
    }
}

async fn on_header(cx: &mut Context<Session>, name: CString, value: CString) -> Status {
    let s = session(&mut cx.data);
    s.message
        .add_header(name.as_bytes(), value.as_bytes(), s.leading_space);
    if s.noreply_header {
        Status::Noreply
    } else {
        Status::Continue
    }
}

async fn on_body(cx: &mut Context<Session>, chunk: Bytes) -> Status {
    let s = session(&mut cx.data);
    if s.message.settled && s.skip {
        // Nothing left to decide: do not make the MTA send the rest. MTAs
        // send end-of-body without data, so this is never the reply to the
        // end-of-message command.
        return Status::Skip;
    }
    s.message.add_body(&chunk);
    Status::Continue
}

async fn on_eom(shared: Arc<Shared>, cx: &mut EomContext<Session>) -> Status {
    // The message ends here whatever the answer; the next one starts at MAIL.
    let s = session(&mut cx.data);
    let message = std::mem::take(&mut s.message);
    if message.settled || message.recipients.is_empty() {
        return Status::Continue;
    }
    let size = message.counted_size();
    let rcpts = message.recipients;
    let started = s.sampler.start(&shared.stats.latency);
    let verdict = check(&shared, &rcpts, size);
    checked(&shared, started);
    match answer(&verdict) {
        Answer::Continue => {
            trace!(?rcpts, size, %verdict, "message let through");
            Status::Continue
        }
        Answer::OverQuota => {
            debug!(?rcpts, size, %verdict, "message refused");
            refuse(&mut cx.reply, &shared.over_quota)
        }
        Answer::Tempfail => {
            warn!(?rcpts, %verdict, "message check failed; answering tempfail");
            tempfail(&mut cx.reply)
        }
    }
}

async fn on_abort(cx: &mut Context<Session>) -> Status {
    session(&mut cx.data).message = Message::default();
    Status::Continue
}

/// Count a check made (a milter "request"), and its time if sampled. The
/// milter is far from the socketmap's request rates (one check per
/// recipient and per message), so one shared atomic add per check is
/// nothing.
fn checked(shared: &Shared, started: Option<std::time::Instant>) {
    shared.stats.requests.fetch_add(1, Ordering::Relaxed);
    Sampler::finish(&shared.stats.latency, started);
}

/// Run the quota check for a message of `size` bytes to `rcpts` (one
/// recipient at RCPT, those let through at end of message) with one
/// directory snapshot. A panic becomes [`Verdict::Trouble`].
fn check(shared: &Shared, rcpts: &[String], size: u64) -> Verdict {
    let run = std::panic::AssertUnwindSafe(|| {
        let dir = shared.directory.snapshot();
        let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
        check_message(&dir, &*shared.usage, shared.grace, &rcpts, size)
    });
    // AssertUnwindSafe: nothing the check touches is left half-changed by
    // a panic (the snapshot is immutable, the usage source is only read).
    std::panic::catch_unwind(run)
        .unwrap_or_else(|_| Verdict::Trouble("the quota check panicked".into()))
}

/// Answer with the over-quota reply: a 4xx tempfails, a 5xx rejects. At
/// RCPT this refuses that recipient only; at end of message, the message.
fn refuse(reply: &mut SmtpReply, over_quota: &OverQuotaReply) -> Status {
    let status = if over_quota.is_permanent() {
        Status::Reject
    } else {
        Status::Tempfail
    };
    // libmilter's rule (`smfi_setreply`): a single `%` makes the MTA drop
    // the text, a literal one is written `%%`.
    let text = over_quota.text.replace('%', "%%");
    match reply.set_error_reply(
        &over_quota.code.to_string(),
        Some(&over_quota.enhanced),
        [text],
    ) {
        Ok(()) => status,
        Err(e) => {
            // Cannot happen for a validated reply; still, no panic here.
            warn!(error = %e, reply = %over_quota, "over-quota reply refused by indymilter; answering tempfail");
            tempfail(reply)
        }
    }
}

/// Answer tempfail with [`TROUBLE_REPLY`].
fn tempfail(reply: &mut SmtpReply) -> Status {
    let (code, enhanced, text) = TROUBLE_REPLY;
    if let Err(e) = reply.set_error_reply(code, Some(enhanced), [text]) {
        // Without a custom reply the MTA uses its generic tempfail text.
        warn!(error = %e, "trouble reply refused by indymilter");
    }
    Status::Tempfail
}

#[cfg(test)]
mod tests {
    //! Whole milter conversations over a Unix socket, with indymilter-test
    //! playing the MTA (it shows the exact reply text, which miltertest
    //! cannot at RCPT). The directory is built in code; usage comes from a
    //! table that can also fail or panic on purpose.

    use super::*;
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::time::Duration;

    use indymilter_test::{Status as Mta, TestConnection, TestConnectionBuilder};
    use ramdir_core::check::Usage;
    use ramdir_core::quota::QuotaLimit;
    use ramdir_core::usage::{Op, StoreError, Txn, UsageStore};
    use ramdir_core::{Directory, Settings, UserSpec};
    use tokio::net::UnixListener;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    /// Every user's limit; grace (10%) adds 10_000 bytes.
    const LIMIT: u64 = 100_000;
    /// `nearly@x.org` has 1_000 bytes left, so a message fits up to
    /// 1_000 + 10_000 bytes.
    const NEARLY_FITS: u64 = 11_000;

    struct Table(HashMap<&'static str, i64>);

    impl UsageSource for Table {
        fn usage(&self, login: &str) -> Result<Usage, StoreError> {
            match login {
                "broken@x.org" => Err(StoreError::Db("disk on fire".into())),
                "panics@x.org" => panic!("usage source panics on purpose"),
                _ => Ok(Usage {
                    storage: self.0.get(login).copied(),
                    messages: None,
                }),
            }
        }
    }

    fn usage_table() -> Table {
        Table(HashMap::from([
            ("free@x.org", 1_000),
            ("full@x.org", LIMIT as i64),
            ("nearly@x.org", LIMIT as i64 - 1_000),
        ]))
    }

    fn directory() -> Arc<DirectoryHandle> {
        let mut d = Directory::new(Settings::default());
        for login in [
            "free@x.org",
            "full@x.org",
            "nearly@x.org",
            "broken@x.org",
            "panics@x.org",
        ] {
            d.insert_user(&UserSpec {
                login: login.into(),
                quota: Some(QuotaLimit {
                    storage: Some(LIMIT),
                    messages: None,
                }),
                ..Default::default()
            });
        }
        d.set_alias("team@x.org", vec!["full@x.org".into()]);
        d.set_alias(
            "mixed@x.org",
            vec!["full@x.org".into(), "free@x.org".into()],
        );
        Arc::new(DirectoryHandle::new(d))
    }

    /// A milter serving on a socket in a temporary directory.
    struct Milter {
        _dir: tempfile::TempDir,
        socket: PathBuf,
        stop: oneshot::Sender<()>,
        task: JoinHandle<io::Result<()>>,
    }

    impl Milter {
        async fn start(config: Config) -> Milter {
            Milter::start_with(Arc::new(usage_table()), config).await
        }

        async fn start_with(usage: Arc<dyn UsageSource + Send + Sync>, config: Config) -> Milter {
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("milter");
            let listener = UnixListener::bind(&socket).unwrap();
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(serve(
                listener,
                directory(),
                usage,
                config,
                Arc::default(),
                async move {
                    let _ = stopped.await;
                },
            ));
            Milter {
                _dir: dir,
                socket,
                stop,
                task,
            }
        }

        /// A connection from an MTA that offers everything, as Postfix does.
        async fn open(&self) -> TestConnection {
            self.open_with(mta()).await
        }

        async fn open_with(&self, mta: TestConnectionBuilder) -> TestConnection {
            mta.open_unix(&self.socket).await.unwrap()
        }

        async fn stop(self) {
            self.stop.send(()).unwrap();
            self.task.await.unwrap().unwrap();
        }
    }

    fn mta() -> TestConnectionBuilder {
        TestConnection::configure()
            .read_timeout(Duration::from_secs(10))
            .write_timeout(Duration::from_secs(10))
    }

    fn tempfail(reply: &str) -> Mta {
        Mta::Tempfail {
            message: Some(CString::new(reply).unwrap()),
        }
    }

    fn full() -> Mta {
        tempfail("452 4.2.2 Mailbox full")
    }

    fn trouble() -> Mta {
        tempfail("451 4.3.0 Temporary failure checking mailbox quota")
    }

    async fn rcpt(conn: &mut TestConnection, addr: &str) -> Mta {
        conn.rcpt([format!("<{addr}>")]).await.unwrap()
    }

    /// Send one header (`Subject: x`, 12 bytes on the wire) and a body that
    /// makes the counted size exactly `size` (headers + CRLF + body).
    async fn content(conn: &mut TestConnection, size: u64) -> Mta {
        let header = conn.header("Subject", "x").await.unwrap();
        assert!(
            matches!(header, Mta::Noreply | Mta::Continue),
            "header: {header:?}"
        );
        let body = vec![b'a'; (size - 12 - 2) as usize];
        conn.body(body).await.unwrap()
    }

    #[tokio::test]
    async fn negotiation_asks_only_for_what_is_needed() {
        let m = Milter::start(Config::default()).await;
        let conn = m.open().await;
        assert_eq!(
            conn.negotiated_actions(),
            Actions::empty(),
            "no editing actions"
        );
        assert_eq!(conn.negotiated_opts(), WANTED_OPTS);
        assert!(conn.requested_macros().is_empty());
        conn.close().await.unwrap();

        // An MTA that offers little gets a subset, never more.
        let offered = ProtoOpts::NO_CONNECT | ProtoOpts::NO_HELO;
        let conn = m.open_with(mta().available_opts(offered)).await;
        assert_eq!(conn.negotiated_opts(), offered);
        conn.close().await.unwrap();
        m.stop().await;
    }

    #[tokio::test]
    async fn each_recipient_is_checked_against_the_declared_size() {
        let m = Milter::start(Config::default()).await;
        let mut conn = m.open().await;
        assert_eq!(
            conn.mail(["<s@remote.test>", "SIZE=5000"]).await.unwrap(),
            Mta::Continue
        );
        assert_eq!(rcpt(&mut conn, "free@x.org").await, Mta::Continue);
        assert_eq!(rcpt(&mut conn, "full@x.org").await, full());
        assert_eq!(rcpt(&mut conn, "FULL+tag@X.org").await, full());
        assert_eq!(rcpt(&mut conn, "nearly@x.org").await, Mta::Continue);
        assert_eq!(
            rcpt(&mut conn, "team@x.org").await,
            full(),
            "alias of a full mailbox"
        );
        assert_eq!(
            rcpt(&mut conn, "mixed@x.org").await,
            Mta::Continue,
            "one target has room"
        );
        assert_eq!(
            rcpt(&mut conn, "nobody@x.org").await,
            Mta::Continue,
            "unknown: not ours"
        );
        assert_eq!(rcpt(&mut conn, "someone@remote.test").await, Mta::Continue);
        assert_eq!(rcpt(&mut conn, "broken@x.org").await, trouble());
        conn.abort().await.unwrap();

        // A bigger declared size than nearly@ has room for.
        let big = format!("size={}", NEARLY_FITS + 1);
        assert_eq!(
            conn.mail(["<s@remote.test>", big.as_str()]).await.unwrap(),
            Mta::Continue
        );
        assert_eq!(rcpt(&mut conn, "nearly@x.org").await, full());
        assert_eq!(rcpt(&mut conn, "free@x.org").await, Mta::Continue);
        conn.abort().await.unwrap();

        // No SIZE: unknown, counted as 1 byte.
        assert_eq!(conn.mail(["<>"]).await.unwrap(), Mta::Continue);
        assert_eq!(rcpt(&mut conn, "nearly@x.org").await, Mta::Continue);
        assert_eq!(
            rcpt(&mut conn, "full@x.org").await,
            full(),
            "a full mailbox takes nothing"
        );
        conn.close().await.unwrap();
        m.stop().await;
    }

    #[tokio::test]
    async fn a_5xx_reply_rejects_and_percent_is_escaped() {
        let config = Config {
            over_quota: "552 5.2.2 Mailbox 100% full".parse().unwrap(),
            ..Config::default()
        };
        let m = Milter::start(config).await;
        let mut conn = m.open().await;
        conn.mail(["<s@remote.test>"]).await.unwrap();
        assert_eq!(
            rcpt(&mut conn, "full@x.org").await,
            Mta::Reject {
                message: Some(CString::new("552 5.2.2 Mailbox 100%% full").unwrap())
            }
        );
        conn.close().await.unwrap();
        m.stop().await;
    }

    #[tokio::test]
    async fn end_of_message_counts_headers_and_body() {
        // With the header value's leading space (as Postfix offers), and
        // without it (the milter adds the space back): same count.
        for offered in [
            ProtoOpts::all(),
            ProtoOpts::all() - ProtoOpts::LEADING_SPACE - ProtoOpts::NOREPLY_HEADER,
        ] {
            let m = Milter::start(Config::default()).await;
            let mut conn = m.open_with(mta().available_opts(offered)).await;
            for (size, want) in [(NEARLY_FITS, Mta::Continue), (NEARLY_FITS + 1, full())] {
                // No SIZE=: the RCPT check lets nearly@ through.
                conn.mail(["<s@remote.test>"]).await.unwrap();
                assert_eq!(rcpt(&mut conn, "nearly@x.org").await, Mta::Continue);
                assert_eq!(content(&mut conn, size).await, Mta::Continue);
                let (actions, status) = conn.eom().await.unwrap();
                assert_eq!(status, want, "size {size}, offered {offered:?}");
                assert!(actions.actions.is_empty(), "no editing: {actions:?}");
            }
            conn.close().await.unwrap();
            m.stop().await;
        }
    }

    #[tokio::test]
    async fn end_of_message_refuses_only_when_every_recipient_is_full() {
        let m = Milter::start(Config::default()).await;
        let mut conn = m.open().await;
        let big = NEARLY_FITS + 5_000;

        // nearly@ lacks room, free@ has it: the message goes on.
        conn.mail(["<s@remote.test>"]).await.unwrap();
        assert_eq!(rcpt(&mut conn, "nearly@x.org").await, Mta::Continue);
        assert_eq!(rcpt(&mut conn, "free@x.org").await, Mta::Continue);
        content(&mut conn, big).await;
        assert_eq!(conn.eom().await.unwrap().1, Mta::Continue);

        // A recipient refused at RCPT does not count at end of message.
        conn.mail(["<s@remote.test>", "SIZE=100"]).await.unwrap();
        assert_eq!(rcpt(&mut conn, "full@x.org").await, full());
        assert_eq!(rcpt(&mut conn, "free@x.org").await, Mta::Continue);
        content(&mut conn, 100).await;
        assert_eq!(conn.eom().await.unwrap().1, Mta::Continue);

        // Only nearly@, and too big for it: the whole message is refused.
        conn.mail(["<s@remote.test>"]).await.unwrap();
        assert_eq!(rcpt(&mut conn, "nearly@x.org").await, Mta::Continue);
        content(&mut conn, big).await;
        assert_eq!(conn.eom().await.unwrap().1, full());

        // A lying SIZE= does not help: the counted size decides.
        conn.mail(["<s@remote.test>", "SIZE=10"]).await.unwrap();
        assert_eq!(rcpt(&mut conn, "nearly@x.org").await, Mta::Continue);
        content(&mut conn, big).await;
        assert_eq!(conn.eom().await.unwrap().1, full());
        conn.close().await.unwrap();
        m.stop().await;
    }

    #[tokio::test]
    async fn a_recipient_that_is_not_ours_skips_the_body() {
        let m = Milter::start(Config::default()).await;
        let mut conn = m.open().await;
        conn.mail(["<s@remote.test>"]).await.unwrap();
        assert_eq!(rcpt(&mut conn, "nearly@x.org").await, Mta::Continue);
        assert_eq!(rcpt(&mut conn, "friend@remote.test").await, Mta::Continue);
        assert_eq!(content(&mut conn, NEARLY_FITS + 5_000).await, Mta::Skip);
        assert_eq!(conn.eom().await.unwrap().1, Mta::Continue);

        // Without SKIP on offer the body is read (and ignored).
        let mut conn = m
            .open_with(mta().available_opts(ProtoOpts::all() - ProtoOpts::SKIP))
            .await;
        conn.mail(["<s@remote.test>"]).await.unwrap();
        assert_eq!(rcpt(&mut conn, "friend@remote.test").await, Mta::Continue);
        assert_eq!(content(&mut conn, 1_000).await, Mta::Continue);
        assert_eq!(conn.eom().await.unwrap().1, Mta::Continue);
        conn.close().await.unwrap();
        m.stop().await;
    }

    #[tokio::test]
    async fn message_state_starts_afresh_at_mail_and_after_abort() {
        let m = Milter::start(Config::default()).await;
        let mut conn = m.open().await;

        // A big body, then abort: the next message starts from zero.
        conn.mail(["<s@remote.test>"]).await.unwrap();
        assert_eq!(rcpt(&mut conn, "nearly@x.org").await, Mta::Continue);
        content(&mut conn, NEARLY_FITS + 1).await;
        conn.abort().await.unwrap();
        conn.mail(["<s@remote.test>"]).await.unwrap();
        assert_eq!(rcpt(&mut conn, "nearly@x.org").await, Mta::Continue);
        content(&mut conn, 1_000).await;
        assert_eq!(conn.eom().await.unwrap().1, Mta::Continue);

        // A SIZE= does not outlive its message.
        conn.mail(["<s@remote.test>", "SIZE=999999"]).await.unwrap();
        assert_eq!(rcpt(&mut conn, "nearly@x.org").await, full());
        conn.abort().await.unwrap();
        conn.mail(["<s@remote.test>"]).await.unwrap();
        assert_eq!(rcpt(&mut conn, "nearly@x.org").await, Mta::Continue);

        // Recipients do not outlive their message either: a new MAIL right
        // after RCPT (Postfix sends abort first; this checks the MAIL path)
        // forgets free@, so this message to nearly@ alone is refused.
        conn.mail(["<s@remote.test>"]).await.unwrap();
        assert_eq!(rcpt(&mut conn, "free@x.org").await, Mta::Continue);
        conn.mail(["<s@remote.test>"]).await.unwrap();
        assert_eq!(rcpt(&mut conn, "nearly@x.org").await, Mta::Continue);
        content(&mut conn, NEARLY_FITS + 1).await;
        assert_eq!(conn.eom().await.unwrap().1, full());
        conn.close().await.unwrap();
        m.stop().await;
    }

    #[tokio::test]
    async fn a_failing_or_panicking_check_tempfails_and_the_milter_goes_on() {
        let m = Milter::start(Config::default()).await;
        let mut conn = m.open().await;
        conn.mail(["<s@remote.test>"]).await.unwrap();
        assert_eq!(rcpt(&mut conn, "broken@x.org").await, trouble());
        assert_eq!(rcpt(&mut conn, "panics@x.org").await, trouble());
        // Same connection, next recipient: still served.
        assert_eq!(rcpt(&mut conn, "free@x.org").await, Mta::Continue);
        content(&mut conn, 100).await;
        assert_eq!(conn.eom().await.unwrap().1, Mta::Continue);
        conn.close().await.unwrap();
        // And new connections too.
        let mut conn = m.open().await;
        conn.mail(["<s@remote.test>"]).await.unwrap();
        assert_eq!(rcpt(&mut conn, "full@x.org").await, full());
        conn.close().await.unwrap();
        m.stop().await;
    }

    #[tokio::test]
    async fn max_connections_is_passed_to_indymilter() {
        let m = Milter::start(Config {
            max_connections: 1,
            ..Config::default()
        })
        .await;
        let first = m.open().await;
        // The second connection waits in the backlog: no negotiation reply.
        let second = mta()
            .read_timeout(Duration::from_millis(300))
            .open_unix(&m.socket)
            .await;
        assert!(second.is_err(), "a second connection was served");
        drop(second);
        first.close().await.unwrap();
        let third = m.open().await;
        third.close().await.unwrap();
        m.stop().await;
    }

    #[tokio::test]
    async fn unusable_config_is_refused_at_start() {
        for config in [
            Config {
                max_connections: 0,
                ..Config::default()
            },
            Config {
                over_quota: OverQuotaReply {
                    code: 452,
                    enhanced: "5.2.2".into(),
                    text: "x".into(),
                },
                ..Config::default()
            },
        ] {
            let dir = tempfile::tempdir().unwrap();
            let listener = UnixListener::bind(dir.path().join("milter")).unwrap();
            let e = serve(
                listener,
                directory(),
                Arc::new(usage_table()),
                config,
                Arc::default(),
                async {},
            )
            .await
            .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        }
    }

    #[tokio::test]
    async fn public_run_reads_the_redb_usage_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = UsageStore::open(&dir.path().join("usage.redb")).unwrap();
        let set = |user: &str, bytes: i64| Txn {
            user: user.into(),
            ops: vec![Op::Set("quota/storage".into(), bytes)],
        };
        store
            .commit_batch(&[set("full@x.org", LIMIT as i64), set("free@x.org", 0)])
            .unwrap();
        let socket = dir.path().join("milter");
        let listener = UnixListener::bind(&socket).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::run(
            listener,
            directory(),
            Arc::new(store),
            Config::default(),
            Arc::default(),
            async {
                let _ = stopped.await;
            },
        ));
        let mut conn = mta().open_unix(&socket).await.unwrap();
        conn.mail(["<s@remote.test>", "SIZE=10"]).await.unwrap();
        assert_eq!(rcpt(&mut conn, "full@x.org").await, full());
        assert_eq!(rcpt(&mut conn, "free@x.org").await, Mta::Continue);
        // nearly@ has no counter in this store: untracked usage fits.
        assert_eq!(rcpt(&mut conn, "nearly@x.org").await, Mta::Continue);
        conn.close().await.unwrap();
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    }
}
