//! `soak`: ramdir under a long mixed load while its sources change
//! (issue 13, item 3), every answer checked.
//!
//! The stack is the integration harness's: a real slapd (`mdb` +
//! `syncprov`, loaded with `slapadd`) and `ramdir serve` with `[ldap]`, an
//! alias file, `[socketmap]`, `[policy]`, `[dict]` (auth and quota),
//! `[milter]`, `[quota]` and `[stats]`, all on Unix sockets in the stack's
//! temp dir; both are stopped when the soak ends, however it ends.
//!
//! While the load runs:
//! - every [`FILE_PERIOD`] the alias file is rewritten (a new generation:
//!   `roleK@files.test` moves to another user) and ramdir reloads it (its
//!   file watcher);
//! - every [`LDAP_PERIOD`] one of the [`CHANGING`] LDAP entries changes
//!   its `mailLocalAddress` and `mailQuotaBytes` (`ldapmodify`, as an
//!   administrator would), which ramdir takes from its RFC 4533 sync.
//!
//! The load: `connections` connections spread over the socketmap
//! ([`SHARE_SOCKETMAP`]), the policy service, the dict (userdb/passdb
//! lookups, iterations of `shared/userdb/`, quota transactions) and the
//! milter, each one request at a time as Postfix and Dovecot send them,
//! with a short pause ([`THINK`]) between requests.
//!
//! Every answer is checked against the directory the soak itself made:
//! for what changes, an answer is right when it is the answer of a state
//! that was in effect at some moment between [`LAG`] before the request
//! was sent and the moment its reply arrived ([`History`]). A *protocol
//! error* is a connection or framing failure, a reply of the wrong shape
//! or a request not answered within [`REQUEST_TIMEOUT`]; a *wrong answer*
//! is a well-formed reply that no such state gives; a *temporary* answer
//! (TEMP, `F`, DEFER, tempfail other than the over-quota reply) counts
//! apart. The soak passes with none of the three.
//!
//! Sampled every `sample` seconds: ramdir's RSS and open file
//! descriptors, and each protocol's p99 latency in that window; the report
//! gives the least-squares slope of RSS and fds over the run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use indymilter_test::{Status as MilterStatus, TestConnection};
use ramdir_dovecot::codec::{Command as DictCommand, unescape};
use ramdir_integration::ramdir::ramdir_bin;
use ramdir_integration::slapd::{
    DOMAIN, SVC_PW, Slapd, USER_QUOTA, alias_mail, user_dn, user_mail, users_ldif, write_secret,
};
use ramdir_integration::{Ramdir, StackDir, set_mode, write_atomic};
use ramdir_postfix::policy::codec::Action;
use ramdir_postfix::socketmap::codec::{Reply, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::hist::Histogram;
use crate::keys::XorShift;
use crate::policy::rcpt_request;
use crate::procfs;

/// How often the alias file is rewritten (the "every 10 s").
pub const FILE_PERIOD: Duration = Duration::from_secs(10);
/// How often an LDAP entry changes (the "every second").
pub const LDAP_PERIOD: Duration = Duration::from_secs(1);
/// How long after a change an answer from the state before it still
/// counts as right: the file watcher's debounce and reload plus the LDAP
/// sync's delivery, on a busy 2-core machine (the goal for LDAP is < 1 s;
/// this is a correctness check, not a latency one).
pub const LAG: Duration = Duration::from_secs(5);
/// A request not answered within this is a protocol error (a stuck server).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between one connection's requests: Postfix and Dovecot processes
/// ask in bursts, not in a tight loop; without it 500 connections would
/// starve the changers on 2 cores.
pub const THINK: Duration = Duration::from_millis(20);

/// LDAP users `1..=CHANGING` change, one per [`LDAP_PERIOD`] in turn.
pub const CHANGING: usize = 50;
/// The next `OVER` users are over quota (usage set before the load).
pub const OVER: usize = 50;
/// The next `QUOTA_OWNERS` users belong to the quota-transaction
/// connections, one each, so each knows its counter exactly.
pub const QUOTA_OWNERS: usize = 200;
/// Every user after those is stable; the alias file's roles point at them.
const STABLE_FROM: usize = CHANGING + OVER + QUOTA_OWNERS + 1;
/// Roles in the alias file (`roleNNN@files.test`).
pub const ROLES: usize = 100;
/// Domain of the roles (a domain ramdir knows only from the file).
const ROLE_DOMAIN: &str = "files.test";
/// Usage of the over-quota users: twice the limit, over any grace.
const OVER_USAGE: u64 = 2 * USER_QUOTA;
/// ramdir's default over-quota reply (policy and milter).
const FULL: &str = "452 4.2.2 Mailbox full";

/// Shares of the connections, in percent: socketmap, policy, dict
/// lookups, dict iterations, dict quota transactions; the milter gets the
/// rest.
const SHARE_SOCKETMAP: usize = 40;
const SHARE_POLICY: usize = 20;
const SHARE_DICT_LOOKUP: usize = 16;
const SHARE_DICT_ITER: usize = 2;
const SHARE_DICT_QUOTA: usize = 8;

/// What `ramdir-load soak` takes.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// Length of the load.
    pub duration: Duration,
    /// Concurrent connections in all.
    pub connections: usize,
    /// Sampling window (RSS, fds, p99).
    pub sample: Duration,
    /// LDAP users (at least `STABLE_FROM + ROLES`).
    pub users: usize,
    /// Seed of the request mix.
    pub seed: u64,
    /// Where to write the JSON report (besides the text on stdout).
    pub json: Option<PathBuf>,
}

/// The protocols, for counters and histograms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Proto {
    Socketmap,
    Policy,
    DictLookup,
    DictIter,
    DictQuota,
    Milter,
}

const PROTOS: [Proto; 6] = [
    Proto::Socketmap,
    Proto::Policy,
    Proto::DictLookup,
    Proto::DictIter,
    Proto::DictQuota,
    Proto::Milter,
];

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Socketmap => "socketmap",
            Proto::Policy => "policy",
            Proto::DictLookup => "dict-lookup",
            Proto::DictIter => "dict-iterate",
            Proto::DictQuota => "dict-quota",
            Proto::Milter => "milter",
        }
    }
}

/// One change of something the soak varies: the state `value` holds from
/// `start` (the change may apply from then on) and the change is
/// certainly made at `done` (`None`: still being made).
#[derive(Debug, Clone)]
struct Change<V> {
    start: Instant,
    done: Option<Instant>,
    value: V,
}

/// The states something went through, oldest first.
#[derive(Debug)]
struct History<V> {
    changes: Vec<Change<V>>,
}

impl<V: Clone> History<V> {
    fn new(at: Instant, value: V) -> History<V> {
        History {
            changes: vec![Change {
                start: at,
                done: Some(at),
                value,
            }],
        }
    }

    /// Record the start of a change; returns its index for [`done`](Self::done).
    fn begin(&mut self, value: V) -> usize {
        self.changes.push(Change {
            start: Instant::now(),
            done: None,
            value,
        });
        self.changes.len() - 1
    }

    fn done(&mut self, i: usize) {
        self.changes[i].done = Some(Instant::now());
    }

    /// The newest state (it may still be being made).
    fn latest(&self) -> V {
        self.changes.last().expect("a first state").value.clone()
    }

    /// The states that may be served to a request sent at `t0` and
    /// answered at `t1`: each one in effect at some moment of
    /// `[t0 - LAG, t1]`. State k is in effect from its start until the
    /// next change is done (forever for the newest).
    fn acceptable(&self, t0: Instant, t1: Instant) -> Vec<V> {
        let from = t0.checked_sub(LAG).unwrap_or(t0);
        let mut out = Vec::new();
        for (k, c) in self.changes.iter().enumerate() {
            let until = match self.changes.get(k + 1) {
                Some(next) => next.done,
                None => None,
            };
            let ends_after_from = until.is_none_or(|u| u >= from);
            if c.start <= t1 && ends_after_from {
                out.push(c.value.clone());
            }
        }
        out
    }
}

/// The generation of a changing LDAP user: `None` is the entry as
/// loaded, `Some(k)` its k-th change.
type Gen = Option<u32>;

/// The alias (`mailLocalAddress`) of changing user `j` in generation `g`.
fn changing_alias(j: usize, g: Gen) -> String {
    match g {
        None => alias_mail(j),
        Some(k) => format!("alias{j:06}-g{k}@{DOMAIN}"),
    }
}

/// The `mailQuotaBytes` of a changing user in generation `g`.
fn changing_quota(g: Gen) -> u64 {
    match g {
        None => USER_QUOTA,
        Some(k) => (u64::from(k) + 1) << 20,
    }
}

/// What the soak knows of the directory, shared with every connection.
struct World {
    users: usize,
    /// Generation of the alias file.
    files: RwLock<History<u32>>,
    /// Generation of each changing user (index `j - 1`).
    ldap: Vec<RwLock<History<Gen>>>,
}

impl World {
    fn stable_count(&self) -> usize {
        self.users + 1 - STABLE_FROM
    }

    /// The user role `k` delivers to in file generation `g`.
    fn role_target(&self, k: usize, g: u32) -> String {
        user_mail(STABLE_FROM + (k + g as usize) % self.stable_count())
    }

    fn stable_user(&self, rng: &mut XorShift) -> usize {
        STABLE_FROM + rng.below(self.stable_count() as u64) as usize
    }
}

/// The alias file of generation `g`.
fn alias_file(world: &World, g: u32) -> String {
    let mut s = format!("# ramdir-load soak, generation {g}\n");
    for k in 0..ROLES {
        let _ = writeln!(s, "role{k:03}@{ROLE_DOMAIN} {}", world.role_target(k, g));
    }
    s
}

/// Counters and latency histograms of one protocol.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    protocol_errors: AtomicU64,
    wrong: AtomicU64,
    temporary: AtomicU64,
    /// One histogram (µs) per sampling window.
    windows: Mutex<Vec<Histogram>>,
    /// The first few problems, for the report.
    examples: Mutex<Vec<String>>,
}

/// Most problem examples kept per protocol.
const MAX_EXAMPLES: usize = 10;

impl Tally {
    fn note(&self, what: &str) {
        let mut e = self.examples.lock().expect("examples");
        if e.len() < MAX_EXAMPLES {
            e.push(what.to_string());
        }
    }
}

/// Shared by the connection tasks.
struct Shared {
    world: World,
    tallies: BTreeMap<Proto, Tally>,
    started: Instant,
    sample: Duration,
    stop: AtomicBool,
}

/// The verdict on one answer.
enum Verdict {
    Right,
    Wrong(String),
    Temporary(String),
}

/// A connection's local record of latencies, merged into the shared one
/// per window.
struct LocalHist {
    window: usize,
    hist: Histogram,
}

impl LocalHist {
    fn new() -> LocalHist {
        LocalHist {
            window: 0,
            hist: Histogram::default(),
        }
    }

    fn record(&mut self, sh: &Shared, p: Proto, at: Instant, us: u64) {
        let w = window_of(sh, at);
        if w != self.window {
            self.flush(sh, p);
            self.window = w;
        }
        self.hist.record(us);
    }

    fn flush(&mut self, sh: &Shared, p: Proto) {
        if self.hist.count() == 0 {
            return;
        }
        let mut ws = sh.tallies[&p].windows.lock().expect("windows");
        while ws.len() <= self.window {
            ws.push(Histogram::default());
        }
        ws[self.window].merge(&self.hist);
        self.hist = Histogram::default();
    }
}

fn window_of(sh: &Shared, at: Instant) -> usize {
    (at.saturating_duration_since(sh.started).as_nanos() / sh.sample.as_nanos().max(1)) as usize
}

/// Record one request's outcome.
fn account(sh: &Shared, p: Proto, local: &mut LocalHist, t0: Instant, v: Verdict) {
    let t1 = Instant::now();
    let t = &sh.tallies[&p];
    t.requests.fetch_add(1, Ordering::Relaxed);
    local.record(sh, p, t1, t1.duration_since(t0).as_micros() as u64);
    match v {
        Verdict::Right => {}
        Verdict::Wrong(w) => {
            t.wrong.fetch_add(1, Ordering::Relaxed);
            t.note(&format!("wrong: {w}"));
        }
        Verdict::Temporary(w) => {
            t.temporary.fetch_add(1, Ordering::Relaxed);
            t.note(&format!("temporary: {w}"));
        }
    }
}

/// A protocol error: counted, noted, and the connection is redone.
fn protocol_error(sh: &Shared, p: Proto, what: String) {
    let t = &sh.tallies[&p];
    t.protocol_errors.fetch_add(1, Ordering::Relaxed);
    t.note(&format!("protocol error: {what}"));
}

/// The sockets of the ramdir under test.
#[derive(Debug, Clone)]
struct Sockets {
    socketmap: PathBuf,
    policy: PathBuf,
    dict: PathBuf,
    milter: PathBuf,
    stats: PathBuf,
}

/// A request-reply connection over a Unix socket with a read buffer.
struct Conn {
    s: UnixStream,
    buf: BytesMut,
    /// The request being sent (kept between requests: no allocation each).
    out: BytesMut,
}

impl Conn {
    async fn open(path: &Path) -> Result<Conn, String> {
        let s = UnixStream::connect(path)
            .await
            .map_err(|e| format!("connect {}: {e}", path.display()))?;
        Ok(Conn {
            s,
            buf: BytesMut::with_capacity(4096),
            out: BytesMut::with_capacity(1024),
        })
    }

    /// Send what `encode` writes (one request, or a transaction's
    /// commands); when it was sent, for the latency.
    async fn request(&mut self, encode: impl FnOnce(&mut BytesMut)) -> Result<Instant, String> {
        self.out.clear();
        encode(&mut self.out);
        let t0 = Instant::now();
        self.s
            .write_all(&self.out)
            .await
            .map_err(|e| format!("write: {e}"))?;
        Ok(t0)
    }

    /// Read until `take` yields a message.
    async fn recv<T>(
        &mut self,
        mut take: impl FnMut(&mut BytesMut) -> Result<Option<T>, String>,
    ) -> Result<T, String> {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            if let Some(m) = take(&mut self.buf)? {
                return Ok(m);
            }
            let n = tokio::time::timeout_at(deadline, self.s.read_buf(&mut self.buf))
                .await
                .map_err(|_| format!("no reply within {REQUEST_TIMEOUT:?}"))?
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed by ramdir".into());
            }
        }
    }
}

/// One dict reply line (without LF), `Ok(None)`: need more.
fn take_line(buf: &mut BytesMut) -> Result<Option<String>, String> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(nl) => {
            let line = String::from_utf8_lossy(&buf[..nl]).into_owned();
            buf.advance(nl + 1);
            Ok(Some(line))
        }
        None if buf.len() > 1 << 20 => Err("dict reply line over 1 MiB".into()),
        None => Ok(None),
    }
}

// --- the connection worker ---------------------------------------------------

/// One protocol's client side: how a session opens and how one request is
/// sent and its answer checked. [`worker`] does the rest, the same for
/// every protocol: the loop until the soak ends, the pause between
/// requests, counting a protocol error and opening a new session after it.
trait Client: Sized + Send {
    /// Open a session with ramdir (and greet it, where the protocol does).
    /// `owner` is the user a quota-transaction connection owns (unused by
    /// the others).
    fn open(sock: &Path, owner: usize) -> impl Future<Output = Result<Self, String>> + Send;

    /// Send one request and check its answer, recording each verdict (a
    /// milter message may give two: RCPT and end-of-message; a quota round
    /// two: the commit and the read-back). An error is a protocol error:
    /// the session is dropped.
    fn ask(
        &mut self,
        w: &World,
        rng: &mut XorShift,
        rec: &mut Recorder<'_>,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// End the session when the soak is over.
    fn close(self) -> impl Future<Output = Result<(), String>> + Send {
        async { Ok(()) }
    }
}

/// Where one connection's verdicts go: its protocol's tally and its local
/// latency histogram.
struct Recorder<'a> {
    sh: &'a Shared,
    p: Proto,
    local: LocalHist,
}

impl Recorder<'_> {
    /// Record one answer to a request sent at `t0` (its reply just came).
    fn record(&mut self, t0: Instant, v: Verdict) {
        account(self.sh, self.p, &mut self.local, t0, v);
    }
}

/// One connection of protocol `p` for the whole soak.
async fn worker<C: Client>(sh: Arc<Shared>, p: Proto, sock: PathBuf, owner: usize, seed: u64) {
    let mut rng = XorShift::new(seed, p as u64 + 1);
    let mut rec = Recorder {
        sh: &sh,
        p,
        local: LocalHist::new(),
    };
    while !sh.stop.load(Ordering::Relaxed) {
        match session::<C>(&sh, &sock, owner, &mut rng, &mut rec).await {
            Ok(()) => break,
            Err(e) => {
                protocol_error(&sh, p, e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    rec.local.flush(&sh, p);
}

/// One session: requests one at a time, [`THINK`] apart, until the soak
/// ends or a protocol error.
async fn session<C: Client>(
    sh: &Shared,
    sock: &Path,
    owner: usize,
    rng: &mut XorShift,
    rec: &mut Recorder<'_>,
) -> Result<(), String> {
    let mut c = C::open(sock, owner).await?;
    while !sh.stop.load(Ordering::Relaxed) {
        c.ask(&sh.world, rng, rec).await?;
        tokio::time::sleep(THINK).await;
    }
    c.close().await
}

// --- socketmap ---------------------------------------------------------------

struct SocketmapClient {
    c: Conn,
}

impl Client for SocketmapClient {
    async fn open(sock: &Path, _: usize) -> Result<Self, String> {
        Ok(SocketmapClient {
            c: Conn::open(sock).await?,
        })
    }

    async fn ask(
        &mut self,
        w: &World,
        rng: &mut XorShift,
        rec: &mut Recorder<'_>,
    ) -> Result<(), String> {
        let ask = Ask::pick(w, rng);
        let (map, key) = ask.request();
        let t0 = self
            .c
            .request(|o| Request::new(map, &key).encode(o))
            .await?;
        let reply = self
            .c
            .recv(|b| Reply::decode(b).map_err(|e| format!("socketmap reply: {e:?}")))
            .await?;
        let t1 = Instant::now();
        let v = match &reply {
            Reply::Temp(_) | Reply::Timeout(_) => {
                Verdict::Temporary(format!("{map} {key}: {}", reply.payload()))
            }
            Reply::Perm(_) => Verdict::Wrong(format!("{map} {key}: {}", reply.payload())),
            _ => ask.judge(w, &reply, t0, t1),
        };
        rec.record(t0, v);
        Ok(())
    }
}

/// One socketmap question and what decides its answer.
enum Ask {
    /// `mailboxes` of LDAP user i: always `OK` itself.
    Mailbox(usize),
    /// `mailboxes` of an address nobody has: `NOTFOUND`.
    Nobody(u64),
    /// `aliases` of changing user j's alias in generation `asked` (its
    /// newest or the one before): `OK` the user while that is its alias.
    ChangingAlias { j: usize, asked: Gen },
    /// `aliases` of role k of the alias file: `OK` the user of the
    /// file's generation.
    Role(usize),
}

impl Ask {
    fn pick(w: &World, rng: &mut XorShift) -> Ask {
        let pick = rng.below(100);
        if pick < 40 {
            Ask::Mailbox(1 + rng.below(w.users as u64) as usize)
        } else if pick < 50 {
            Ask::Nobody(rng.below(1_000_000))
        } else if pick < 75 {
            let j = 1 + rng.below(CHANGING as u64) as usize;
            let latest = w.ldap[j - 1].read().expect("ldap").latest();
            let asked: Gen = match (latest, rng.below(2)) {
                (Some(0), 0) => None,
                (Some(k), 0) => Some(k - 1),
                (g, _) => g,
            };
            Ask::ChangingAlias { j, asked }
        } else {
            Ask::Role(rng.below(ROLES as u64) as usize)
        }
    }

    fn request(&self) -> (&'static str, String) {
        match *self {
            Ask::Mailbox(i) => ("mailboxes", user_mail(i)),
            Ask::Nobody(n) => ("mailboxes", format!("nobody{n}@{DOMAIN}")),
            Ask::ChangingAlias { j, asked } => ("aliases", changing_alias(j, asked)),
            Ask::Role(k) => ("aliases", format!("role{k:03}@{ROLE_DOMAIN}")),
        }
    }

    fn judge(&self, w: &World, r: &Reply, t0: Instant, t1: Instant) -> Verdict {
        match *self {
            Ask::Mailbox(i) => exact(r, Some(&user_mail(i))),
            Ask::Nobody(_) => exact(r, None),
            Ask::ChangingAlias { j, asked } => {
                let states = w.ldap[j - 1].read().expect("ldap").acceptable(t0, t1);
                let target = user_mail(j);
                let any = states.iter().any(|&g| {
                    let want = (g == asked).then_some(target.as_str());
                    matches!(exact(r, want), Verdict::Right)
                });
                judged(
                    any,
                    r,
                    &format!("aliases {} (states {states:?})", changing_alias(j, asked)),
                )
            }
            Ask::Role(k) => {
                let states = w.files.read().expect("files").acceptable(t0, t1);
                let any = states
                    .iter()
                    .any(|&g| matches!(exact(r, Some(&w.role_target(k, g))), Verdict::Right));
                judged(
                    any,
                    r,
                    &format!("aliases role{k:03} (file generations {states:?})"),
                )
            }
        }
    }
}

/// `want`: `Some(data)` for `OK data`, `None` for `NOTFOUND`.
fn exact(r: &Reply, want: Option<&str>) -> Verdict {
    let right = match (r, want) {
        (Reply::Ok(d), Some(w)) => d == w,
        (Reply::NotFound, None) => true,
        _ => false,
    };
    if right {
        Verdict::Right
    } else {
        Verdict::Wrong(format!("got {:?}, want {want:?}", r.payload()))
    }
}

fn judged(any: bool, r: &Reply, what: &str) -> Verdict {
    if any {
        Verdict::Right
    } else {
        Verdict::Wrong(format!("{what}: got {:?}", r.payload()))
    }
}

// --- policy ------------------------------------------------------------------

struct PolicyClient {
    c: Conn,
}

impl Client for PolicyClient {
    async fn open(sock: &Path, _: usize) -> Result<Self, String> {
        Ok(PolicyClient {
            c: Conn::open(sock).await?,
        })
    }

    async fn ask(
        &mut self,
        w: &World,
        rng: &mut XorShift,
        rec: &mut Recorder<'_>,
    ) -> Result<(), String> {
        let over = rng.below(4) == 0;
        let i = if over {
            CHANGING + 1 + rng.below(OVER as u64) as usize
        } else {
            w.stable_user(rng)
        };
        let rcpt = user_mail(i);
        let request = rcpt_request(&rcpt, rng);
        let t0 = self.c.request(|o| request.encode(o)).await?;
        let action = self
            .c
            .recv(|b| Action::decode(b).map_err(|e| format!("policy reply: {e:?}")))
            .await?;
        let want = if over { FULL } else { "DUNNO" };
        let v = if action == want {
            Verdict::Right
        } else if action.starts_with("DEFER") || action.starts_with('4') {
            Verdict::Temporary(format!("{rcpt}: {action:?}, want {want:?}"))
        } else {
            Verdict::Wrong(format!("{rcpt}: {action:?}, want {want:?}"))
        };
        rec.record(t0, v);
        Ok(())
    }
}

// --- dict --------------------------------------------------------------------

/// The dict hello for `dict`, as Dovecot 2.3 sends it.
fn dict_hello(dict: &str, out: &mut BytesMut) {
    DictCommand::Hello {
        major: 3,
        minor: 2,
        value_type: 0,
        user: "".into(),
        dict: dict.to_string().into(),
    }
    .encode(out);
}

/// A dict connection that said hello to `dict`.
async fn dict_open(sock: &Path, dict: &str) -> Result<Conn, String> {
    let mut c = Conn::open(sock).await?;
    c.request(|o| dict_hello(dict, o)).await?;
    Ok(c)
}

/// userdb and passdb lookups: a changing user's userdb (its limit
/// changes), a stable user's userdb or passdb.
struct DictLookupClient {
    c: Conn,
}

impl Client for DictLookupClient {
    async fn open(sock: &Path, _: usize) -> Result<Self, String> {
        Ok(DictLookupClient {
            c: dict_open(sock, "auth").await?,
        })
    }

    async fn ask(
        &mut self,
        w: &World,
        rng: &mut XorShift,
        rec: &mut Recorder<'_>,
    ) -> Result<(), String> {
        let pick = rng.below(100);
        let (db, i) = if pick < 40 {
            ("userdb", 1 + rng.below(CHANGING as u64) as usize)
        } else if pick < 70 {
            ("userdb", w.stable_user(rng))
        } else {
            ("passdb", w.stable_user(rng))
        };
        let user = user_mail(i);
        let key = format!("shared/{db}/{user}");
        let t0 = self
            .c
            .request(|o| {
                DictCommand::Lookup {
                    key: key.as_str().into(),
                    user: user.as_str().into(),
                }
                .encode(o)
            })
            .await?;
        let line = self.c.recv(take_line).await?;
        let t1 = Instant::now();
        let v = match line.as_bytes().first() {
            Some(b'O') => {
                let value = unescape(&line[1..]).into_owned();
                if db == "passdb" {
                    if value.contains("\"password\":\"{SSHA}") {
                        Verdict::Right
                    } else {
                        Verdict::Wrong(format!("{key}: {value}"))
                    }
                } else if i <= CHANGING {
                    let states = w.ldap[i - 1].read().expect("ldap").acceptable(t0, t1);
                    let any = states.iter().any(|&g| {
                        value.contains(&format!(
                            "\"quota_rule\":\"*:storage={}B\"",
                            changing_quota(g)
                        ))
                    });
                    if any {
                        Verdict::Right
                    } else {
                        Verdict::Wrong(format!("{key} (states {states:?}): {value}"))
                    }
                } else if value.contains(&format!("\"quota_rule\":\"*:storage={USER_QUOTA}B\"")) {
                    Verdict::Right
                } else {
                    Verdict::Wrong(format!("{key}: {value}"))
                }
            }
            Some(b'N') => Verdict::Wrong(format!("{key}: not found")),
            Some(b'F') => Verdict::Temporary(format!("{key}: {line}")),
            _ => return Err(format!("lookup reply {line:?}")),
        };
        rec.record(t0, v);
        Ok(())
    }
}

/// Iterations of `shared/userdb/`: every user, once each.
struct DictIterClient {
    c: Conn,
}

impl Client for DictIterClient {
    async fn open(sock: &Path, _: usize) -> Result<Self, String> {
        Ok(DictIterClient {
            c: dict_open(sock, "auth").await?,
        })
    }

    async fn ask(
        &mut self,
        w: &World,
        _: &mut XorShift,
        rec: &mut Recorder<'_>,
    ) -> Result<(), String> {
        let t0 = self
            .c
            .request(|o| {
                DictCommand::Iterate {
                    flags: 0,
                    max_rows: 0,
                    path: "shared/userdb/".into(),
                    user: "".into(),
                }
                .encode(o)
            })
            .await?;
        let mut rows = 0usize;
        let mut bad = None;
        loop {
            let line = self.c.recv(take_line).await?;
            match line.as_bytes().first() {
                None => break,
                Some(b'O') => {
                    rows += 1;
                    let key = unescape(line[1..].split('\t').next().unwrap_or(""));
                    if !key.starts_with("shared/userdb/") && bad.is_none() {
                        bad = Some(format!("row key {key:?}"));
                    }
                }
                Some(b'F') => {
                    bad = Some(format!("iteration failed: {line:?}"));
                    // A failed iteration ends with this line.
                    break;
                }
                _ => return Err(format!("iteration reply {line:?}")),
            }
        }
        let v = match bad {
            Some(b) if b.starts_with("iteration failed") => Verdict::Temporary(b),
            Some(b) => Verdict::Wrong(b),
            None if rows == w.users => Verdict::Right,
            None => Verdict::Wrong(format!("{rows} userdb rows, want {}", w.users)),
        };
        rec.record(t0, v);
        Ok(())
    }
}

/// A quota-transaction connection: set the owned user's counters, then
/// add to them and read them back, as Dovecot 2.3's dict quota does; the
/// value read must be exactly what this connection committed.
struct QuotaClient {
    c: Conn,
    user: String,
    /// Transaction id of the last round.
    id: u32,
    /// The counters as last committed in this session.
    bytes: i64,
    messages: i64,
    /// Nothing committed yet in this session: the first commit sets
    /// absolute values (a new session does not know what a previous one
    /// committed before it failed).
    first: bool,
}

impl Client for QuotaClient {
    async fn open(sock: &Path, owner: usize) -> Result<Self, String> {
        Ok(QuotaClient {
            c: dict_open(sock, "quota").await?,
            user: user_mail(owner),
            id: 0,
            bytes: 1_000_000,
            messages: 10,
            first: true,
        })
    }

    async fn ask(
        &mut self,
        _: &World,
        _: &mut XorShift,
        rec: &mut Recorder<'_>,
    ) -> Result<(), String> {
        self.id = self.id.wrapping_add(1);
        let (id, user) = (self.id, self.user.as_str());
        let (db, dm) = (4096 + i64::from(id % 7) * 1000, 1);
        let (first, bytes, messages) = (self.first, self.bytes, self.messages);
        let t0 = self
            .c
            .request(|o| {
                DictCommand::Begin {
                    id,
                    user: user.into(),
                    expire_secs: None,
                }
                .encode(o);
                for (key, set, diff) in [
                    ("priv/quota/storage", bytes, db),
                    ("priv/quota/messages", messages, dm),
                ] {
                    if first {
                        DictCommand::Set {
                            id,
                            key: key.into(),
                            value: set.to_string().into(),
                        }
                        .encode(o);
                    } else {
                        DictCommand::AtomicInc {
                            id,
                            key: key.into(),
                            diff,
                        }
                        .encode(o);
                    }
                }
                DictCommand::Commit {
                    id,
                    async_reply: false,
                }
                .encode(o);
            })
            .await?;
        let line = self.c.recv(take_line).await?;
        let v = match line.as_bytes().first() {
            Some(b'O') => {
                if !self.first {
                    self.bytes += db;
                    self.messages += dm;
                }
                self.first = false;
                Verdict::Right
            }
            // Nothing written: the counters stay as they were.
            Some(b'F') => Verdict::Temporary(format!("commit {user}: {line:?}")),
            _ => return Err(format!("commit reply {line:?} (a W, N or garbage)")),
        };
        rec.record(t0, v);

        let t0 = self
            .c
            .request(|o| {
                DictCommand::Lookup {
                    key: "priv/quota/storage".into(),
                    user: user.into(),
                }
                .encode(o)
            })
            .await?;
        let line = self.c.recv(take_line).await?;
        let (first, bytes) = (self.first, self.bytes);
        let v = match line.as_bytes().first() {
            Some(b'O') if first => Verdict::Right,
            Some(b'O') if line[1..] == bytes.to_string() => Verdict::Right,
            Some(b'O') => Verdict::Wrong(format!(
                "{user} storage {:?}, committed {bytes}",
                &line[1..]
            )),
            Some(b'F') => Verdict::Temporary(format!("{user} storage: {line:?}")),
            Some(b'N') if first => Verdict::Right,
            _ => Verdict::Wrong(format!("{user} storage: {line:?}, committed {bytes}")),
        };
        rec.record(t0, v);
        Ok(())
    }
}

/// Set the over-quota users' usage before the load.
async fn fill_over(sock: &Path) -> Result<(), String> {
    let mut c = Conn::open(sock).await?;
    c.request(|out| {
        dict_hello("quota", out);
        for (n, i) in (CHANGING + 1..=CHANGING + OVER).enumerate() {
            let id = n as u32 + 1;
            let user = user_mail(i);
            DictCommand::Begin {
                id,
                user: user.as_str().into(),
                expire_secs: None,
            }
            .encode(out);
            DictCommand::Set {
                id,
                key: "priv/quota/storage".into(),
                value: OVER_USAGE.to_string().into(),
            }
            .encode(out);
            DictCommand::Commit {
                id,
                async_reply: false,
            }
            .encode(out);
        }
    })
    .await?;
    for _ in 0..OVER {
        let line = c.recv(take_line).await?;
        if !line.starts_with('O') {
            return Err(format!("setting the over-quota usage: {line:?}"));
        }
    }
    Ok(())
}

// --- milter ------------------------------------------------------------------

/// A milter connection: messages one after another (MAIL with SIZE,
/// RCPT; every 8th with a header, a body and end-of-message), each ended
/// with an abort, as Postfix's smtpd reuses a milter connection.
struct MilterClient {
    conn: TestConnection,
    /// Messages sent in this session.
    n: u64,
}

impl Client for MilterClient {
    async fn open(sock: &Path, _: usize) -> Result<Self, String> {
        let conn = TestConnection::configure()
            .read_timeout(REQUEST_TIMEOUT)
            .write_timeout(REQUEST_TIMEOUT)
            .open_unix(sock)
            .await
            .map_err(|e| format!("milter negotiation: {e}"))?;
        Ok(MilterClient { conn, n: 0 })
    }

    async fn ask(
        &mut self,
        w: &World,
        rng: &mut XorShift,
        rec: &mut Recorder<'_>,
    ) -> Result<(), String> {
        let conn = &mut self.conn;
        self.n += 1;
        let over = rng.below(4) == 0;
        let i = if over {
            CHANGING + 1 + rng.below(OVER as u64) as usize
        } else {
            w.stable_user(rng)
        };
        let rcpt = format!("<{}>", user_mail(i));
        let t0 = Instant::now();
        let size = format!("SIZE={}", 1000 + rng.below(100_000));
        let st = conn
            .mail(["<sender@remote.test>", size.as_str()])
            .await
            .map_err(|e| format!("MAIL: {e}"))?;
        if st != MilterStatus::Continue {
            rec.record(t0, Verdict::Wrong(format!("MAIL: {st:?}")));
            return conn.abort().await.map_err(|e| format!("abort: {e}"));
        }
        let st = conn
            .rcpt([rcpt.as_str()])
            .await
            .map_err(|e| format!("RCPT: {e}"))?;
        let v = milter_verdict(&st, over, &rcpt);
        let whole = !over && self.n.is_multiple_of(8) && matches!(v, Verdict::Right);
        rec.record(t0, v);
        if whole {
            let t0 = Instant::now();
            let h = conn
                .header("Subject", "soak")
                .await
                .map_err(|e| format!("header: {e}"))?;
            let b = conn
                .body(vec![b'a'; 2000])
                .await
                .map_err(|e| format!("body: {e}"))?;
            let (_, eom) = conn.eom().await.map_err(|e| format!("eom: {e}"))?;
            let ok = |s: &MilterStatus| {
                matches!(
                    s,
                    MilterStatus::Continue | MilterStatus::Noreply | MilterStatus::Skip
                )
            };
            let v = if ok(&h) && ok(&b) && eom == MilterStatus::Continue {
                Verdict::Right
            } else {
                Verdict::Wrong(format!(
                    "{rcpt} message: header {h:?}, body {b:?}, eom {eom:?}"
                ))
            };
            rec.record(t0, v);
        }
        conn.abort().await.map_err(|e| format!("abort: {e}"))
    }

    async fn close(self) -> Result<(), String> {
        self.conn.close().await.map_err(|e| format!("close: {e}"))
    }
}

fn milter_verdict(st: &MilterStatus, over: bool, rcpt: &str) -> Verdict {
    let full = matches!(st, MilterStatus::Tempfail { message: Some(m) } if m.to_bytes() == FULL.as_bytes());
    match (over, st) {
        (true, _) if full => Verdict::Right,
        (false, MilterStatus::Continue) => Verdict::Right,
        (_, MilterStatus::Tempfail { .. }) => Verdict::Temporary(format!("RCPT {rcpt}: {st:?}")),
        _ => Verdict::Wrong(format!("RCPT {rcpt} (over quota: {over}): {st:?}")),
    }
}

// --- the changers ------------------------------------------------------------

/// Rewrite the alias file every [`FILE_PERIOD`] (atomically, as an
/// operator's `mv` would); ramdir's watcher reloads it.
fn file_changer(sh: &Shared, path: &Path) -> u32 {
    let mut g = 0u32;
    while !sleep_or_stop(sh, FILE_PERIOD) {
        g += 1;
        let text = alias_file(&sh.world, g);
        let i = sh.world.files.write().expect("files").begin(g);
        write_atomic(path, &text);
        sh.world.files.write().expect("files").done(i);
    }
    g
}

/// Change one LDAP entry every [`LDAP_PERIOD`], round robin over the
/// changing users; returns the changes made.
fn ldap_changer(sh: &Shared, slapd: &Slapd) -> u64 {
    let mut n = 0u64;
    while !sleep_or_stop(sh, LDAP_PERIOD) {
        let j = 1 + (n as usize % CHANGING);
        let k = (n / CHANGING as u64) as u32;
        let g = Some(k);
        let ldif = format!(
            "dn: {dn}\nchangetype: modify\nreplace: mailLocalAddress\nmailLocalAddress: {alias}\n-\n\
             replace: mailQuotaBytes\nmailQuotaBytes: {q}\n",
            dn = user_dn(j),
            alias = changing_alias(j, g),
            q = changing_quota(g),
        );
        let i = sh.world.ldap[j - 1].write().expect("ldap").begin(g);
        slapd.ldapmodify(&ldif);
        sh.world.ldap[j - 1].write().expect("ldap").done(i);
        n += 1;
    }
    n
}

/// Sleep `d` in small steps; true when the soak is over.
fn sleep_or_stop(sh: &Shared, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if sh.stop.load(Ordering::Relaxed) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
    sh.stop.load(Ordering::Relaxed)
}

/// One sample of ramdir's process.
#[derive(Debug, Clone)]
struct Sample {
    secs: f64,
    rss_kib: u64,
    /// The part of `rss_kib` in malloc's heaps ([`malloc_heap_kib`]).
    heap_kib: u64,
    /// What of the heap ramdir uses (`malloc.heap_in_use_bytes` of its
    /// stats, glibc's `mallinfo2`; 0 when it does not say): the rest of
    /// `heap_kib` is free memory the allocator keeps.
    in_use_kib: u64,
    fds: u64,
}

fn sample(pid: u32, stats: &Path, started: Instant) -> Sample {
    let rss_kib = procfs::memory(pid).map(|m| m.rss_kib).unwrap_or(0);
    let heap_kib = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map(|s| malloc_heap_kib(&s))
        .unwrap_or(0);
    let in_use_kib = ramdir_integration::slapd::RamdirStats::fetch(stats)
        .ok()
        .and_then(|s| s.field("heap_in_use_bytes")?.parse::<u64>().ok())
        .map_or(0, |b| b / 1024);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Sample {
        secs: started.elapsed().as_secs_f64(),
        rss_kib,
        heap_kib,
        in_use_kib,
        fds,
    }
}

/// Size and alignment of a glibc thread arena's heap on 64-bit Linux
/// (`HEAP_MAX_SIZE` in glibc's `malloc/arena.c`: twice the largest mmap
/// threshold, 32 MiB): each is reserved as one mapping of this size at an
/// address aligned to it, read-write as far as it is in use and `---p`
/// beyond.
const ARENA_HEAP: u64 = 64 << 20;

/// Resident KiB of glibc malloc's heaps in the text of `/proc/PID/smaps`:
/// the main arena (`[heap]`) and every thread arena's heap (an anonymous
/// read-write mapping at an [`ARENA_HEAP`]-aligned address, which with its
/// `---p` rest spans exactly [`ARENA_HEAP`]). The rest of RSS is thread
/// stacks, chunks malloc mapped on their own, and the mapped binary and
/// libraries. Telling heap from the rest is what separates the allocator's
/// growth from a thread or mapping leak.
pub fn malloc_heap_kib(smaps: &str) -> u64 {
    struct Map<'a> {
        start: u64,
        end: u64,
        perms: &'a str,
        anon: bool,
        heap: bool,
        rss: u64,
    }
    let mut maps: Vec<Map<'_>> = Vec::new();
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16))
        {
            let perms = f.next().unwrap_or("");
            let inode = f.nth(2).unwrap_or("");
            let path = f.next().unwrap_or("");
            maps.push(Map {
                start,
                end,
                perms,
                anon: inode == "0" && path.is_empty(),
                heap: path == "[heap]",
                rss: 0,
            });
        } else if first == "Rss:"
            && let Some(m) = maps.last_mut()
        {
            m.rss = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    let mut kib = 0;
    for (i, m) in maps.iter().enumerate() {
        let arena = m.anon && m.perms.starts_with("rw") && m.start.is_multiple_of(ARENA_HEAP) && {
            let rest = maps
                .get(i + 1)
                .filter(|n| n.anon && n.start == m.end && n.perms.starts_with("---"))
                .map_or(0, |n| n.end - n.start);
            m.end - m.start + rest == ARENA_HEAP
        };
        if m.heap || arena {
            kib += m.rss;
        }
    }
    kib
}

/// How long the tail of a run is, over which "flat" is judged: the issue's
/// 30-minute soak less its first 10 minutes, the warm-up (threads started,
/// per-connection caches and the allocator's arenas grown to their working
/// size).
pub const TAIL: Duration = Duration::from_secs(20 * 60);

/// Where the tail of a run of `duration` starts: [`TAIL`] before its end,
/// or, in a run shorter than 1.5 × [`TAIL`], its last two thirds.
pub fn tail_from(duration: Duration) -> Duration {
    duration - TAIL.min(duration * 2 / 3)
}

/// Least-squares slopes per minute of RSS, malloc heap and heap in use
/// (KiB) and open fds over some samples.
#[derive(Debug, Clone, Copy)]
struct Slopes {
    rss: f64,
    heap: f64,
    in_use: f64,
    fds: f64,
}

impl Slopes {
    fn of<'a>(samples: impl Iterator<Item = &'a Sample> + Clone) -> Slopes {
        let per_min = |f: fn(&Sample) -> u64| {
            let pts: Vec<(f64, f64)> = samples
                .clone()
                .map(|s| (s.secs / 60.0, f(s) as f64))
                .collect();
            slope(&pts)
        };
        Slopes {
            rss: per_min(|s| s.rss_kib),
            heap: per_min(|s| s.heap_kib),
            in_use: per_min(|s| s.in_use_kib),
            fds: per_min(|s| s.fds),
        }
    }
}

/// Least-squares slope of `y` over `x` (0 with fewer than two points).
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

// --- the run -----------------------------------------------------------------

/// The connection counts per protocol for `total` connections.
fn split(total: usize) -> Vec<(Proto, usize)> {
    let part = |pct: usize| (total * pct).div_ceil(100).max(1);
    let sm = part(SHARE_SOCKETMAP);
    let pol = part(SHARE_POLICY);
    let dl = part(SHARE_DICT_LOOKUP);
    let di = part(SHARE_DICT_ITER);
    let dq = part(SHARE_DICT_QUOTA).min(QUOTA_OWNERS);
    let milter = total.saturating_sub(sm + pol + dl + di + dq).max(1);
    vec![
        (Proto::Socketmap, sm),
        (Proto::Policy, pol),
        (Proto::DictLookup, dl),
        (Proto::DictIter, di),
        (Proto::DictQuota, dq),
        (Proto::Milter, milter),
    ]
}

/// Write ramdir's configuration; returns the sockets.
fn write_config(dir: &StackDir, slapd: &Slapd, aliases: &Path) -> (PathBuf, Sockets) {
    let run = dir.join("run");
    std::fs::create_dir_all(&run).expect("mkdir run");
    set_mode(&run, 0o755);
    let secret = dir.join("ldap.secret");
    write_secret(&secret, SVC_PW, 0o600);
    let s = Sockets {
        socketmap: run.join("sm.sock"),
        policy: run.join("policy.sock"),
        dict: run.join("dict.sock"),
        milter: run.join("milter.sock"),
        stats: run.join("stats.sock"),
    };
    let ldap = slapd.ramdir_section(
        &slapd.url(),
        &secret,
        &format!("state_dir = \"{}\"", dir.join("state").display()),
    );
    let config = dir.join("ramdir.toml");
    let text = format!(
        "[directory]\nalias_files = [\"{aliases}\"]\n\n\
         [socketmap]\nlisten = \"unix:{sm}\"\n\n\
         [policy]\nlisten = \"unix:{pol}\"\n\n\
         [dict]\nlisten = \"unix:{dict}\"\n\n\
         [milter]\nlisten = \"unix:{milter}\"\n\n\
         [quota]\nstore = \"{store}\"\n\n\
         [stats]\nlisten = \"unix:{stats}\"\n\n{ldap}",
        aliases = aliases.display(),
        sm = s.socketmap.display(),
        pol = s.policy.display(),
        dict = s.dict.display(),
        milter = s.milter.display(),
        store = dir.join("usage/usage.redb").display(),
        stats = s.stats.display(),
    );
    write_atomic(&config, &text);
    (config, s)
}

/// Wait until ramdir has loaded every LDAP entry and the sync is live.
fn wait_in_sync(stats: &Path, users: usize) -> Result<(), String> {
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(s) = ramdir_integration::slapd::RamdirStats::fetch(stats)
            && s.authoritative()
            && s.phase() == "in sync"
            && s.num("entries") == users as u64
        {
            return Ok(());
        }
        if Instant::now() > end {
            return Err("ramdir did not load the LDAP entries within 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ramdir-load soak`: run it, print the report; an error when anything
/// went wrong.
pub fn run(o: &SoakOptions) -> Result<(), String> {
    if o.users < STABLE_FROM + ROLES {
        return Err(format!("--users must be at least {}", STABLE_FROM + ROLES));
    }
    let bin = ramdir_bin();
    eprintln!("soak: ramdir {}", bin.display());
    let dir = StackDir::new();
    let slapd = Slapd::start(&dir, &users_ldif(o.users));
    let t = Instant::now();
    let world = World {
        users: o.users,
        files: RwLock::new(History::new(t, 0)),
        ldap: (0..CHANGING)
            .map(|_| RwLock::new(History::new(t, None)))
            .collect(),
    };
    let aliases = dir.join("aliases");
    write_atomic(&aliases, &alias_file(&world, 0));
    let (config, sockets) = write_config(&dir, &slapd, &aliases);
    let ramdir = Ramdir::start(&config, &sockets.socketmap, &dir.join("ramdir.log"));
    let pid = ramdir.pid().ok_or("ramdir has no pid")? as u32;
    wait_in_sync(&sockets.stats, o.users)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(fill_over(&sockets.dict))?;

    let sh = Arc::new(Shared {
        world,
        tallies: PROTOS.iter().map(|&p| (p, Tally::default())).collect(),
        started: Instant::now(),
        sample: o.sample,
        stop: AtomicBool::new(false),
    });
    let plan = split(o.connections);
    eprintln!(
        "soak: {} s, {} connections ({}), {} LDAP users; files every {:?}, LDAP every {:?}",
        o.duration.as_secs(),
        o.connections,
        plan.iter()
            .map(|(p, n)| format!("{} {n}", p.name()))
            .collect::<Vec<_>>()
            .join(", "),
        o.users,
        FILE_PERIOD,
        LDAP_PERIOD
    );
    let mut tasks = Vec::new();
    let mut seq = 0u64;
    let mut owner = CHANGING + OVER + 1;
    for &(p, n) in &plan {
        for _ in 0..n {
            seq += 1;
            let seed = o.seed.wrapping_mul(1_000_003).wrapping_add(seq);
            let sh = sh.clone();
            let owner = if p == Proto::DictQuota {
                owner += 1;
                owner - 1
            } else {
                0
            };
            let sock = match p {
                Proto::Socketmap => &sockets.socketmap,
                Proto::Policy => &sockets.policy,
                Proto::Milter => &sockets.milter,
                Proto::DictLookup | Proto::DictIter | Proto::DictQuota => &sockets.dict,
            }
            .clone();
            tasks.push(match p {
                Proto::Socketmap => rt.spawn(worker::<SocketmapClient>(sh, p, sock, owner, seed)),
                Proto::Policy => rt.spawn(worker::<PolicyClient>(sh, p, sock, owner, seed)),
                Proto::DictLookup => rt.spawn(worker::<DictLookupClient>(sh, p, sock, owner, seed)),
                Proto::DictIter => rt.spawn(worker::<DictIterClient>(sh, p, sock, owner, seed)),
                Proto::DictQuota => rt.spawn(worker::<QuotaClient>(sh, p, sock, owner, seed)),
                Proto::Milter => rt.spawn(worker::<MilterClient>(sh, p, sock, owner, seed)),
            });
        }
    }

    let mut samples = vec![sample(pid, &sockets.stats, sh.started)];
    let (files_changed, ldap_changed) = std::thread::scope(|s| {
        let f = s.spawn(|| file_changer(&sh, &aliases));
        let l = s.spawn(|| ldap_changer(&sh, &slapd));
        let end = sh.started + o.duration;
        let mut next = sh.started + o.sample;
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
            if Instant::now() >= next {
                let smp = sample(pid, &sockets.stats, sh.started);
                eprintln!(
                    "soak: {:>5.0} s  RSS {} KiB  malloc heap {} KiB (in use {} KiB)  fds {}  requests {}  problems {}",
                    smp.secs,
                    smp.rss_kib,
                    smp.heap_kib,
                    smp.in_use_kib,
                    smp.fds,
                    sh.tallies
                        .values()
                        .map(|t| t.requests.load(Ordering::Relaxed))
                        .sum::<u64>(),
                    sh.tallies
                        .values()
                        .map(|t| t.protocol_errors.load(Ordering::Relaxed)
                            + t.wrong.load(Ordering::Relaxed)
                            + t.temporary.load(Ordering::Relaxed))
                        .sum::<u64>()
                );
                samples.push(smp);
                next += o.sample;
            }
        }
        sh.stop.store(true, Ordering::Relaxed);
        (
            f.join().expect("file changer"),
            l.join().expect("ldap changer"),
        )
    });
    rt.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
    });
    let after = sample(pid, &sockets.stats, sh.started);
    let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
    drop(rt);

    let report = Report {
        o: o.clone(),
        plan,
        sh: &sh,
        samples,
        after,
        files_changed,
        ldap_changed,
        alive,
    };
    print!("{}", report.text());
    if let Some(path) = &o.json {
        std::fs::write(path, report.json()).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    drop(ramdir);
    drop(slapd);
    let bad = report.problems();
    if bad > 0 || !alive {
        return Err(format!(
            "soak failed: {bad} protocol errors, wrong or temporary answers{}",
            if alive { "" } else { "; ramdir died" }
        ));
    }
    Ok(())
}

struct Report<'a> {
    o: SoakOptions,
    plan: Vec<(Proto, usize)>,
    sh: &'a Shared,
    /// Samples during the load, the first one before it.
    samples: Vec<Sample>,
    /// After every connection closed.
    after: Sample,
    files_changed: u32,
    ldap_changed: u64,
    alive: bool,
}

impl Report<'_> {
    fn count(&self, f: impl Fn(&Tally) -> &AtomicU64) -> u64 {
        self.sh
            .tallies
            .values()
            .map(|t| f(t).load(Ordering::Relaxed))
            .sum()
    }

    fn problems(&self) -> u64 {
        self.count(|t| &t.protocol_errors) + self.count(|t| &t.wrong) + self.count(|t| &t.temporary)
    }

    /// The slopes over the whole run, from the first full window on (the
    /// first samples include the connections being opened).
    fn slopes(&self) -> Slopes {
        Slopes::of(self.samples.iter().skip(1))
    }

    /// The slopes over the run's tail ([`tail_from`]).
    fn tail_slopes(&self) -> Slopes {
        let from = tail_from(self.o.duration).as_secs_f64();
        // A sample a little early (the sampler's 100 ms tick) still counts.
        Slopes::of(self.samples.iter().filter(|s| s.secs + 1.0 >= from))
    }

    /// p99 in µs per window and protocol.
    fn p99s(&self) -> BTreeMap<Proto, Vec<u64>> {
        self.sh
            .tallies
            .iter()
            .map(|(&p, t)| {
                let ws = t.windows.lock().expect("windows");
                (p, ws.iter().map(|h| h.percentile(0.99)).collect())
            })
            .collect()
    }

    fn text(&self) -> String {
        let mut s = String::new();
        let secs = self.o.duration.as_secs_f64();
        let _ = writeln!(
            s,
            "soak: {:.0} s, {} connections, {} LDAP users, {} alias-file generations, {} LDAP changes; ramdir {}",
            secs,
            self.o.connections,
            self.o.users,
            self.files_changed,
            self.ldap_changed,
            if self.alive {
                "alive at the end"
            } else {
                "DIED"
            }
        );
        let _ = writeln!(
            s,
            "| protocol | connections | requests | req/s | protocol errors | wrong | temporary |\n|---|---|---|---|---|---|---|"
        );
        for &(p, n) in &self.plan {
            let t = &self.sh.tallies[&p];
            let r = t.requests.load(Ordering::Relaxed);
            let _ = writeln!(
                s,
                "| {} | {n} | {r} | {:.0} | {} | {} | {} |",
                p.name(),
                r as f64 / secs,
                t.protocol_errors.load(Ordering::Relaxed),
                t.wrong.load(Ordering::Relaxed),
                t.temporary.load(Ordering::Relaxed)
            );
        }
        let (all, tail) = (self.slopes(), self.tail_slopes());
        let first = self
            .samples
            .first()
            .map(|x| (x.rss_kib, x.fds))
            .unwrap_or((0, 0));
        let last = self
            .samples
            .last()
            .map(|x| (x.rss_kib, x.fds))
            .unwrap_or((0, 0));
        let _ = writeln!(
            s,
            "ramdir RSS {} → {} KiB (slope {:+.1} KiB/min), open fds {} → {} (slope {:+.2}/min)",
            first.0, last.0, all.rss, first.1, last.1, all.fds
        );
        let _ = writeln!(
            s,
            "from {:.0} s to the end: slopes RSS {:+.1} KiB/min, malloc heap {:+.1} KiB/min, heap in use {:+.1} KiB/min, fds {:+.2}/min",
            tail_from(self.o.duration).as_secs_f64(),
            tail.rss,
            tail.heap,
            tail.in_use,
            tail.fds
        );
        let _ = writeln!(
            s,
            "after the load (every connection closed): RSS {} KiB, open fds {}",
            self.after.rss_kib, self.after.fds
        );
        let _ = writeln!(
            s,
            "samples (s, RSS KiB, malloc heap KiB, heap in use KiB, fds): {}",
            self.samples
                .iter()
                .map(|x| {
                    format!(
                        "({:.0}, {}, {}, {}, {})",
                        x.secs, x.rss_kib, x.heap_kib, x.in_use_kib, x.fds
                    )
                })
                .collect::<Vec<_>>()
                .join(" ")
        );
        let _ = writeln!(
            s,
            "p99 latency per {} s window (µs):",
            self.o.sample.as_secs()
        );
        for (p, v) in self.p99s() {
            let _ = writeln!(
                s,
                "  {:<13} {}",
                p.name(),
                v.iter().map(u64::to_string).collect::<Vec<_>>().join(" ")
            );
        }
        for (&p, t) in &self.sh.tallies {
            for e in t.examples.lock().expect("examples").iter() {
                let _ = writeln!(s, "  {}: {e}", p.name());
            }
        }
        s
    }

    fn json(&self) -> String {
        let (all, tail) = (self.slopes(), self.tail_slopes());
        let mut s = format!(
            "{{\"seconds\":{},\"connections\":{},\"users\":{},\"file_generations\":{},\"ldap_changes\":{},\"alive\":{},\"rss_slope_kib_per_min\":{:.3},\"heap_slope_kib_per_min\":{:.3},\"in_use_slope_kib_per_min\":{:.3},\"fd_slope_per_min\":{:.3},\"tail_from_secs\":{},\"tail_rss_slope_kib_per_min\":{:.3},\"tail_heap_slope_kib_per_min\":{:.3},\"tail_in_use_slope_kib_per_min\":{:.3},\"tail_fd_slope_per_min\":{:.3},\"after\":{{\"rss_kib\":{},\"fds\":{}}},\"samples\":[",
            self.o.duration.as_secs(),
            self.o.connections,
            self.o.users,
            self.files_changed,
            self.ldap_changed,
            self.alive,
            all.rss,
            all.heap,
            all.in_use,
            all.fds,
            tail_from(self.o.duration).as_secs(),
            tail.rss,
            tail.heap,
            tail.in_use,
            tail.fds,
            self.after.rss_kib,
            self.after.fds
        );
        let smp: Vec<String> = self
            .samples
            .iter()
            .map(|x| {
                format!(
                    "{{\"secs\":{:.1},\"rss_kib\":{},\"heap_kib\":{},\"in_use_kib\":{},\"fds\":{}}}",
                    x.secs, x.rss_kib, x.heap_kib, x.in_use_kib, x.fds
                )
            })
            .collect();
        s.push_str(&smp.join(","));
        s.push_str("],\"protocols\":{");
        let p99 = self.p99s();
        let ps: Vec<String> = self
            .plan
            .iter()
            .map(|&(p, n)| {
                let t = &self.sh.tallies[&p];
                format!(
                    "\"{}\":{{\"connections\":{n},\"requests\":{},\"protocol_errors\":{},\"wrong\":{},\"temporary\":{},\"p99_us\":[{}]}}",
                    p.name(),
                    t.requests.load(Ordering::Relaxed),
                    t.protocol_errors.load(Ordering::Relaxed),
                    t.wrong.load(Ordering::Relaxed),
                    t.temporary.load(Ordering::Relaxed),
                    p99[&p].iter().map(u64::to_string).collect::<Vec<_>>().join(",")
                )
            })
            .collect();
        s.push_str(&ps.join(","));
        s.push_str("}}\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_accepts_states_in_effect_during_the_window() {
        let t = Instant::now();
        let mut h = History::new(t, 0u32);
        // Before any change: only the first state.
        assert_eq!(h.acceptable(t, t), vec![0]);
        let i = h.begin(1);
        // While the change is being made both are possible.
        let now = Instant::now();
        assert_eq!(h.acceptable(now, now), vec![0, 1]);
        h.done(i);
        std::thread::sleep(Duration::from_millis(5));
        let now = Instant::now();
        // Within LAG of the change the old state still counts.
        assert_eq!(h.acceptable(now, now), vec![0, 1]);
        // A request sent long after (LAG past the change) gets only the new.
        let later = now + LAG + Duration::from_secs(1);
        assert_eq!(h.acceptable(later, later), vec![1]);
    }

    #[test]
    fn slope_of_a_line_and_of_a_flat_series() {
        let line: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 3.0 * x as f64 + 7.0)).collect();
        assert!((slope(&line) - 3.0).abs() < 1e-9);
        let flat: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 5.0)).collect();
        assert_eq!(slope(&flat), 0.0);
        assert_eq!(slope(&[(1.0, 2.0)]), 0.0);
    }

    #[test]
    fn the_tail_is_the_last_twenty_minutes_or_two_thirds() {
        assert_eq!(
            tail_from(Duration::from_secs(1800)),
            Duration::from_secs(600)
        );
        assert_eq!(tail_from(Duration::from_secs(60)), Duration::from_secs(20));
        assert_eq!(
            tail_from(Duration::from_secs(3600)),
            Duration::from_secs(2400)
        );
    }

    /// Mappings as `/proc/PID/smaps` shows them (abridged): the main
    /// arena, a thread arena (64 MiB-aligned, read-write part plus `---p`
    /// rest), a thread stack with its guard page, a chunk malloc mapped on
    /// its own, the binary.
    const SMAPS: &str = "\
55d0c0a00000-55d0c0c00000 rw-p 00000000 00:00 0                          [heap]
Size:               2048 kB
Rss:                1500 kB
7f1c64000000-7f1c64400000 rw-p 00000000 00:00 0 
Size:               4096 kB
Rss:                3000 kB
7f1c64400000-7f1c68000000 ---p 00000000 00:00 0 
Size:              61440 kB
Rss:                   0 kB
7f1c6c000000-7f1c6c021000 rw-p 00000000 00:00 0 
Size:                132 kB
Rss:                 100 kB
7f1c6c021000-7f1c70000000 ---p 00000000 00:00 0 
Size:              65404 kB
Rss:                   0 kB
7f1c70000000-7f1c70001000 ---p 00000000 00:00 0 
Size:                  4 kB
Rss:                   0 kB
7f1c70001000-7f1c70041000 rw-p 00000000 00:00 0 
Size:                256 kB
Rss:                  20 kB
7f1c74000000-7f1c74400000 rw-p 00000000 00:00 0 
Size:               4096 kB
Rss:                4096 kB
55d0bf000000-55d0bf800000 r-xp 00000000 fd:01 1234                       /usr/sbin/ramdir
Size:               8192 kB
Rss:                6000 kB
";

    #[test]
    fn malloc_heap_counts_the_main_and_thread_arenas_only() {
        // [heap] 1500 + two thread arenas 3000 + 100; not the stack (20),
        // the 4 MiB chunk mapped on its own (aligned, but not followed by
        // the rest of an arena), or the binary.
        assert_eq!(malloc_heap_kib(SMAPS), 4600);
        assert_eq!(malloc_heap_kib(""), 0);
    }

    #[test]
    fn connections_split_over_every_protocol() {
        let plan = split(500);
        assert_eq!(plan.iter().map(|p| p.1).sum::<usize>(), 500);
        assert!(plan.iter().all(|p| p.1 >= 1));
        let plan = split(20);
        assert!(plan.iter().all(|p| p.1 >= 1), "{plan:?}");
    }

    #[test]
    fn an_answer_from_a_state_outside_the_window_is_wrong() {
        let t = Instant::now();
        let w = World {
            users: STABLE_FROM + ROLES,
            files: RwLock::new(History::new(t, 0)),
            ldap: vec![RwLock::new(History::new(t, None))],
        };
        let ask = Ask::Role(3);
        let now = Instant::now();
        let gen0 = Reply::Ok(w.role_target(3, 0));
        let gen1 = Reply::Ok(w.role_target(3, 1));
        assert!(matches!(ask.judge(&w, &gen0, now, now), Verdict::Right));
        assert!(matches!(ask.judge(&w, &gen1, now, now), Verdict::Wrong(_)));
        assert!(matches!(
            ask.judge(&w, &Reply::NotFound, now, now),
            Verdict::Wrong(_)
        ));
        // Generation 1 written: both count within LAG, only 1 after it.
        let i = w.files.write().unwrap().begin(1);
        w.files.write().unwrap().done(i);
        let now = Instant::now();
        assert!(matches!(ask.judge(&w, &gen0, now, now), Verdict::Right));
        assert!(matches!(ask.judge(&w, &gen1, now, now), Verdict::Right));
        let later = now + LAG + Duration::from_secs(1);
        assert!(matches!(
            ask.judge(&w, &gen0, later, later),
            Verdict::Wrong(_)
        ));

        // A changing alias: its old name stops answering once renamed.
        let old = Ask::ChangingAlias { j: 1, asked: None };
        let ok = Reply::Ok(user_mail(1));
        assert!(matches!(old.judge(&w, &ok, now, now), Verdict::Right));
        let i = w.ldap[0].write().unwrap().begin(Some(0));
        w.ldap[0].write().unwrap().done(i);
        assert!(matches!(
            old.judge(&w, &ok, later, later),
            Verdict::Wrong(_)
        ));
        assert!(matches!(
            old.judge(&w, &Reply::NotFound, later, later),
            Verdict::Right
        ));
        let new = Ask::ChangingAlias {
            j: 1,
            asked: Some(0),
        };
        assert!(matches!(new.judge(&w, &ok, later, later), Verdict::Right));
    }

    #[test]
    fn the_alias_file_moves_every_role_each_generation() {
        let t = Instant::now();
        let w = World {
            users: STABLE_FROM + ROLES,
            files: RwLock::new(History::new(t, 0)),
            ldap: vec![],
        };
        let a = alias_file(&w, 0);
        let b = alias_file(&w, 1);
        assert_eq!(a.lines().count(), ROLES + 1);
        for k in 0..ROLES {
            assert_ne!(w.role_target(k, 0), w.role_target(k, 1));
        }
        assert_ne!(a, b);
    }
}
