//! Quota usage shared across two hosts through a real redis-server
//! (`[quota] shared`, docs/shared-usage.md).
//!
//! The "store" host is a [`MailStack`]: ramdir with its dict and a real
//! Dovecot 2.3 (`quota = dict`) committing usage to it over LMTP
//! deliveries. The "MX" host is a second ramdir on its own state (its own
//! redb, its own sockets) serving the Postfix policy protocol, asked the
//! way Postfix's smtpd asks it. Both talk to one redis-server on
//! 127.0.0.1 (no persistence, so a restart loses its data like a failover
//! to an empty replica).
//!
//! Needs root and the packages from `scripts/install-test-deps.sh`
//! (Dovecot, redis-server) and `cargo build -p ramdir`.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ramdir_integration::dovecot::{DictClient, MailStack, MailStackOptions, message};
use ramdir_integration::hosts::{in_redis, policy_action, shared_quota_keys, wait_redis_equals};
use ramdir_integration::ramdir::{Ramdir, write_config};
use ramdir_integration::redis::Redis;
use ramdir_integration::{DirectoryContent, StackDir, WAIT, wait_for, write_atomic};

/// Every user's limit is 50K (51,200 bytes; Dovecot's grace adds 10%).
const USERS: &str = "\
alice@example.org:{PLAIN}a:5000:5000::::
bob@example.org:{PLAIN}b:5000:5000::::
carol@example.org:{PLAIN}c:5000:5000::::
";
const DOMAINS: &str = "example.org\n";
const DIRECTORY_EXTRA: &str = "default_quota = \"50K\"\n";

/// Three of these exceed the limit (each fits Dovecot's grace).
const MESSAGE: usize = 18_000;

/// Generous cap for things that take well under a second on an idle
/// machine (propagation, convergence): the suite runs on busy machines.
const CAP: Duration = Duration::from_secs(10);

/// The MX's reply for a fresh over-quota user (permanent, so that the
/// 4xx given for stale usage is told apart).
const REFUSE: &str = "552 5.2.2 Mailbox full";

fn content() -> DirectoryContent {
    DirectoryContent {
        users: USERS.into(),
        domains: DOMAINS.into(),
        ..Default::default()
    }
}

fn shared_keys(redis: &Redis, host: &str) -> String {
    shared_quota_keys(redis, host, 3)
}

fn store_host(redis: &Redis) -> MailStack {
    store_host_with(redis, String::new())
}

/// The store host with `[metrics]` on the address returned.
fn store_host_with_metrics(redis: &Redis) -> (MailStack, SocketAddr) {
    let addr = metrics_addr();
    // `quota_extra` is the end of the store's config: a section may follow.
    let s = store_host_with(redis, format!("\n[metrics]\nlisten = \"{addr}\"\n"));
    (s, addr)
}

fn store_host_with(redis: &Redis, extra: String) -> MailStack {
    MailStack::start(
        &content(),
        &MailStackOptions {
            directory_extra: DIRECTORY_EXTRA.into(),
            quota_extra: shared_keys(redis, "store") + &extra,
            ..Default::default()
        },
    )
}

/// The MX host's ramdir: the same directory, a policy listener, its own
/// usage store, the shared usage on.
struct Mx {
    ramdir: Ramdir,
    policy: PathBuf,
    dict: PathBuf,
    /// Its `[metrics]` listener.
    metrics: SocketAddr,
    _dir: StackDir,
}

fn mx_host(redis: &Redis, store: &MailStack) -> Mx {
    other_host(redis, store, "mx")
}

/// A second host named `host` (policy and dict listeners, its own store).
fn other_host(redis: &Redis, store: &MailStack, host: &str) -> Mx {
    host_with(redis, store, host, true)
}

/// A second host named `host`: a policy listener, its own store, and a
/// dict listener if `dict` (an MX without Dovecot has none).
fn host_with(redis: &Redis, store: &MailStack, host: &str, with_dict: bool) -> Mx {
    let dir = StackDir::new();
    let socketmap = dir.join("socketmap.sock");
    let policy = dir.join("policy.sock");
    let dict = dir.join("dict.sock");
    let config = dir.join("ramdir.toml");
    let metrics = metrics_addr();
    write_config(&config, &store.files, &socketmap, DIRECTORY_EXTRA);
    let mut text = std::fs::read_to_string(&config).expect("read config");
    if with_dict {
        text.push_str(&format!("\n[dict]\nlisten = \"unix:{}\"\n", dict.display()));
    }
    text.push_str(&format!(
        "\n[policy]\nlisten = {:?}\n\n[metrics]\nlisten = \"{metrics}\"\n\n[quota]\nstore = {:?}\nover_quota_reply = {REFUSE:?}\n{}",
        format!("unix:{}", policy.display()),
        dir.join("quota.redb").display().to_string(),
        shared_keys(redis, host),
    ));
    write_atomic(&config, &text);
    let ramdir = Ramdir::start(&config, &socketmap, &dir.join("ramdir.log"));
    // The socketmap comes up first; wait for the other listeners.
    wait_for(WAIT, "the policy and dict sockets", || {
        (UnixStream::connect(&policy).is_ok()
            && (!with_dict || DictClient::connect(&dict, "quota").is_ok()))
        .then_some(())
    });
    Mx {
        ramdir,
        policy,
        dict,
        metrics,
        _dir: dir,
    }
}

impl Mx {
    /// Ask the policy service about RCPT TO `rcpt` (1,000 bytes) as
    /// Postfix's smtpd does; the action.
    fn rcpt(&self, rcpt: &str) -> String {
        policy_action(&self.policy, rcpt)
    }

    /// Poll until the action for `rcpt` satisfies `want`; how long it took.
    fn wait_rcpt(&self, rcpt: &str, what: &str, want: impl Fn(&str) -> bool) -> Duration {
        let start = Instant::now();
        loop {
            let a = self.rcpt(rcpt);
            if want(&a) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < CAP,
                "{what}: the MX still answers {a:?} for {rcpt} after {CAP:?}\nMX log:\n{}",
                self.ramdir.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A free loopback port for `[metrics]` (Prometheus scrapes TCP only).
fn metrics_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// The ramdir whose `[metrics]` listen on an address.
trait Scraped {
    fn metrics_addr(&self) -> SocketAddr;

    /// `GET /metrics` as Prometheus scrapes it, checked by Debian's
    /// `promtool check metrics`; the document.
    fn scrape(&self) -> String {
        use std::io::Read;
        let addr = self.metrics_addr();
        let mut s =
            std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).expect("metrics reply");
        let (head, body) = reply.split_once("\r\n\r\n").expect("HTTP reply");
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        let mut lint = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool (package prometheus, scripts/install-test-deps.sh)");
        lint.stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = lint.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}\n{body}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        body.to_string()
    }

    /// The value of the sample `series` (name and labels as written).
    fn metric(&self, series: &str) -> f64 {
        let doc = self.scrape();
        doc.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{doc}"))
            .parse()
            .unwrap()
    }

    /// Wait until `series` has the value `want`.
    fn wait_metric(&self, series: &str, want: f64) {
        let start = Instant::now();
        loop {
            let v = self.metric(series);
            if v == want {
                return;
            }
            assert!(start.elapsed() < CAP, "{series} is {v}, not {want}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Scraped for Mx {
    fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }
}

impl Scraped for SocketAddr {
    fn metrics_addr(&self) -> SocketAddr {
        *self
    }
}

fn deliver(s: &MailStack, rcpt: &str, token: &str) {
    s.lmtp_deliver_ok(rcpt, &message(token, MESSAGE));
}

fn wait_redis_equals_store(redis: &Redis, s: &MailStack, user: &str, what: &str) {
    wait_redis_equals(redis, user, "store", CAP, what, || s.usage(user));
}

fn is_refusal(a: &str) -> bool {
    a == REFUSE
}

fn is_defer(a: &str) -> bool {
    a.starts_with("452 4.2.2") || a.starts_with("DEFER_IF_PERMIT")
}

#[test]
fn usage_from_the_store_host_reaches_the_mx_and_survives_redis_loss() {
    let rdir = StackDir::new();
    let mut redis = Redis::start(&rdir.join("redis"));
    let (s, store_metrics) = store_host_with_metrics(&redis);
    let mx = mx_host(&redis, &s);
    let (alice, bob, carol) = ("alice@example.org", "bob@example.org", "carol@example.org");
    assert_eq!(mx.rcpt(alice), "DUNNO");

    // 1. Deliveries on the store host; the third puts alice over quota.
    deliver(&s, alice, "a1");
    deliver(&s, alice, "a2");
    assert_eq!(mx.rcpt(alice), "DUNNO", "under the limit");
    deliver(&s, alice, "a3");
    // Dovecot commits its quota update asynchronously after LMTP answers;
    // the time is from the end of the delivery to the MX's refusal.
    let took = mx.wait_rcpt(alice, "over quota after 3 deliveries", is_refusal);
    println!("propagation: store LMTP delivery -> MX policy refuses: {took:?}");
    wait_redis_equals_store(&redis, &s, alice, "after the deliveries");
    assert_eq!(mx.rcpt(bob), "DUNNO");
    // `ramdir query quota` on the MX shows the value its policy decides
    // on: the store host's, with its owner; on the store host, its own.
    let on_store = s.usage(alice);
    let (rc, out) = mx.ramdir.query_cli("quota", alice);
    assert_eq!(rc, 0, "MX query quota: {out:?}");
    assert!(
        out.starts_with(&format!(
            "OK storage={} messages={} owner=store ",
            on_store.storage.unwrap(),
            on_store.messages.unwrap()
        )) && out.contains("this host's store: storage=unknown messages=unknown"),
        "MX query quota shows the store host's usage: {out:?}"
    );
    let (rc, out) = s.ramdir.query_cli("quota", alice);
    assert_eq!(rc, 0, "store query quota: {out:?}");
    assert!(
        out.contains("owner=store (this host; Redis holds version "),
        "store query quota: {out:?}"
    );
    // An MX without Dovecot has no dict listener, and its running daemon
    // holds its store's lock: the shared value is still shown.
    let bare = host_with(&redis, &s, "mx2", false);
    let (rc, out) = bare.ramdir.query_cli("quota", alice);
    assert!(
        rc == 0
            && out.starts_with(&format!(
                "OK storage={} messages={} owner=store ",
                on_store.storage.unwrap(),
                on_store.messages.unwrap()
            ))
            && out.contains("this host's store: unreadable: "),
        "query quota on an MX without [dict]: exit {rc}, {out:?}"
    );
    drop(bare);
    // The MX's metrics: connected, fresh, alice mirrored; it publishes
    // nothing of its own.
    mx.wait_metric("ramdir_shared_redis_connected{part=\"feed\"}", 1.0);
    mx.wait_metric("ramdir_shared_redis_connected{part=\"publisher\"}", 1.0);
    assert_eq!(mx.metric("ramdir_shared_mirror_fresh"), 1.0);
    assert!(mx.metric("ramdir_shared_mirror_users") >= 1.0);
    assert_eq!(mx.metric("ramdir_shared_published_total"), 0.0);
    assert_eq!(mx.metric("ramdir_shared_queued_users"), 0.0);

    // 2. Redis dies: the store host goes on committing; the MX's answers
    //    for other hosts' users turn into deferrals once stale (3 s).
    redis.kill();
    deliver(&s, bob, "b1");
    deliver(&s, bob, "b2");
    deliver(&s, bob, "b3");
    let bob_usage = s.usage(bob);
    assert_eq!(
        bob_usage.messages,
        Some(3),
        "the store committed while Redis was down"
    );
    // The store's metrics: bob waits in the queue, publishing failed.
    store_metrics.wait_metric("ramdir_shared_redis_connected{part=\"publisher\"}", 0.0);
    store_metrics.wait_metric("ramdir_shared_queued_users", 1.0);
    let took = mx.wait_rcpt(alice, "stale after Redis died", |a| a != REFUSE);
    let a = mx.rcpt(alice);
    assert!(
        is_defer(&a),
        "a stale over-quota user may only be deferred, got {a:?}"
    );
    println!("MX defers stale over-quota users {took:?} after Redis died");
    for _ in 0..20 {
        let a = mx.rcpt(alice);
        assert!(is_defer(&a), "stale usage refused permanently: {a:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // bob's last known value (none) fits: accepted.
    assert_eq!(mx.rcpt(bob), "DUNNO");
    // The MX's own store knows nothing of alice, Redis cannot be read:
    // `ramdir query quota` says so (TEMP, exit 75), it never shows 0.
    let (rc, out) = mx.ramdir.query_cli("quota", alice);
    assert!(
        rc == 75 && out.contains("other hosts' cannot be read"),
        "MX query quota with Redis down: exit {rc}, {out:?}"
    );
    // The metrics say so.
    mx.wait_metric("ramdir_shared_redis_connected{part=\"feed\"}", 0.0);
    assert_eq!(mx.metric("ramdir_shared_mirror_fresh"), 0.0);

    // 3. Redis comes back empty: the store republishes, the MX rescans;
    //    both converge without a restart.
    redis.restart();
    let took = mx.wait_rcpt(bob, "bob after Redis came back", is_refusal);
    println!("MX converged {took:?} after Redis came back empty");
    assert_eq!(mx.rcpt(alice), REFUSE, "fresh again");
    mx.wait_metric("ramdir_shared_redis_connected{part=\"feed\"}", 1.0);
    assert!(mx.metric("ramdir_shared_rescans_total") >= 2.0, "rescanned");
    wait_redis_equals_store(&redis, &s, alice, "republished after the restart");
    wait_redis_equals_store(&redis, &s, bob, "queued while Redis was down");
    store_metrics.wait_metric("ramdir_shared_queued_users", 0.0);
    assert!(store_metrics.metric("ramdir_shared_published_total") >= 2.0);
    assert!(store_metrics.metric("ramdir_shared_republishes_total") >= 2.0);

    // 4. FLUSHALL: the owner notices the missing epoch and republishes;
    //    the MX keeps answering from its mirror meanwhile.
    assert_eq!(redis.command(&["FLUSHALL"]).as_deref(), Some("+OK"));
    wait_redis_equals_store(&redis, &s, alice, "republished after FLUSHALL");
    wait_redis_equals_store(&redis, &s, bob, "republished after FLUSHALL");
    assert_eq!(mx.rcpt(alice), REFUSE);
    deliver(&s, carol, "c1");
    deliver(&s, carol, "c2");
    deliver(&s, carol, "c3");
    let took = mx.wait_rcpt(carol, "carol after FLUSHALL", is_refusal);
    println!("propagation after FLUSHALL: {took:?}");
    // The MX never wrote anything of its own.
    assert_eq!(
        in_redis(&redis, carol).map(|r| r.2).as_deref(),
        Some("store")
    );
}

#[test]
fn kill_9_of_the_store_mid_publishing_loses_and_doubles_nothing() {
    let rdir = StackDir::new();
    let redis = Redis::start(&rdir.join("redis"));
    let mut s = store_host(&redis);
    let users: Vec<String> = ["alice", "bob", "carol"]
        .iter()
        .map(|u| format!("{u}@example.org"))
        .collect();
    let mut d = s.quota_dict();
    for u in &users {
        let r = d
            .transaction(
                u,
                &["S\tpriv/quota/storage\t0", "S\tpriv/quota/messages\t0"],
            )
            .unwrap();
        assert!(r.starts_with('O'), "{r}");
    }
    // Increments from another thread while ramdir is killed: each answered
    // `O` must be in redb after the restart, and Redis must equal redb.
    let socket = s.dict_socket.clone();
    let users2 = users.clone();
    let total = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let total2 = total.clone();
    let writer = std::thread::spawn(move || {
        let mut acked = vec![0i64; users2.len()];
        let mut in_flight = vec![0i64; users2.len()];
        let Ok(mut d) = ramdir_integration::dovecot::DictClient::connect(&socket, "quota") else {
            return (acked, in_flight);
        };
        for n in 0.. {
            let i = n % users2.len();
            in_flight[i] += 1;
            match d.transaction(
                &users2[i],
                &["A\tpriv/quota/storage\t100", "A\tpriv/quota/messages\t1"],
            ) {
                Ok(r) if r.starts_with('O') => {
                    acked[i] += 1;
                    total2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    in_flight[i] -= 1;
                }
                _ => break,
            }
        }
        (acked, in_flight)
    });
    // Kill once commits (and so publishing) are well under way.
    wait_for(WAIT, "30 acknowledged commits", || {
        (total.load(std::sync::atomic::Ordering::Relaxed) >= 30).then_some(())
    });
    s.kill_ramdir();
    let (acked, in_flight) = writer.join().unwrap();
    assert!(
        acked.iter().sum::<i64>() >= 30,
        "too few commits before the kill: {acked:?}"
    );
    s.restart_ramdir();
    for (i, u) in users.iter().enumerate() {
        let got = s.usage(u);
        let m = got.messages.unwrap();
        assert!(
            m >= acked[i] && m <= acked[i] + in_flight[i],
            "{u}: {m} messages in redb, {} acknowledged, {} in flight",
            acked[i],
            in_flight[i]
        );
        assert_eq!(got.storage, Some(100 * m), "{u}: bytes and messages agree");
        wait_redis_equals_store(&redis, &s, u, "after kill -9 and restart");
    }
    println!("acknowledged before kill -9: {acked:?}; Redis equals redb for every user");
}

#[test]
fn a_user_moved_to_another_host_is_recalculated_not_incremented() {
    let rdir = StackDir::new();
    let redis = Redis::start(&rdir.join("redis"));
    let s = store_host(&redis);
    let old = other_host(&redis, &s, "old");
    let alice = "alice@example.org";
    let tx = |socket: &PathBuf, ops: &[&str]| {
        DictClient::connect(socket, "quota")
            .and_then(|mut d| d.transaction(alice, ops))
            .unwrap_or_else(|e| panic!("dict {}: {e}", socket.display()))
    };
    // alice lived on "old" (10,000 bytes there) ...
    let r = tx(
        &old.dict,
        &["S\tpriv/quota/storage\t10000", "S\tpriv/quota/messages\t1"],
    );
    assert!(r.starts_with('O'), "{r}");
    // ... then moved to "store", whose Dovecot wrote her real usage.
    let r = tx(
        &s.dict_socket,
        &["S\tpriv/quota/storage\t60000", "S\tpriv/quota/messages\t4"],
    );
    assert!(r.starts_with('O'), "{r}");
    // Once "old" sees the newer value (its policy refuses her) ...
    old.wait_rcpt(alice, "old host sees the move", is_refusal);
    // ... an increment there must not apply to its stale 10,000: N, so
    // Dovecot recalculates.
    let r = tx(
        &old.dict,
        &["A\tpriv/quota/storage\t500", "A\tpriv/quota/messages\t1"],
    );
    assert!(r.starts_with('N'), "increment on a moved user: {r}");
    wait_redis_equals_store(&redis, &s, alice, "the store host still owns her");
    // The recalculation's absolute value makes "old" the owner again.
    let r = tx(
        &old.dict,
        &["S\tpriv/quota/storage\t61000", "S\tpriv/quota/messages\t5"],
    );
    assert!(r.starts_with('O'), "{r}");
    let start = Instant::now();
    while in_redis(&redis, alice) != Some((61000, 5, "old".into())) {
        assert!(
            start.elapsed() < CAP,
            "Redis: {:?}",
            in_redis(&redis, alice)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
