//! Real Postfix against ramdir's socketmap server: every scenario runs on
//! Debian 12's Postfix 3.7 (`debian12::…`) and on Debian 13's Postfix 3.10
//! from its root (`debian13::…`).
//!
//! Each test runs its own stack (a private Postfix plus a ramdir process
//! whose socket is `<spool>/private/ramdir-socketmap`, named in `main.cf`
//! as `unix:private/ramdir-socketmap`), so tests that stop ramdir or rewrite
//! its files cannot disturb the others; a stack starts in about 0.3 s.
//!
//! Needs root, the packages from `scripts/install-test-deps.sh`, and the
//! binary: `cargo build -p ramdir` (or `RAMDIR_BIN=/path/to/ramdir`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ramdir_integration::postfix::Delivery;
use ramdir_integration::{
    DirectoryContent, Flavor, Reply, SocketmapClient, Stack, StackOptions, wait_for, write_atomic,
};

ramdir_integration::test_on_both_flavors!(
    postmap_domains,
    postmap_mailboxes,
    postmap_aliases,
    postmap_senders,
    smtp_recipient_checks,
    smtp_delivery_after_alias_expansion,
    smtp_sender_login_maps,
    ramdir_down_defers_then_recovers,
    reload_on_sighup_under_load,
    reload_on_file_change_without_sighup
);

const USERS: &str = "\
alice@example.org:{PLAIN}alice-pw:5000:5000::/home/alice::
bob@example.org:{PLAIN}bob-pw:5000:5000::/home/bob::
Carol@Example.org:{PLAIN}carol-pw:5000:5000::/home/carol::
real@catchall.test:{PLAIN}real-pw:5000:5000::/home/real::
";

const ALIASES: &str = "\
# an alias, an alias to an alias plus a mailbox, a catch-all, a loop
info@example.org alice@example.org
team@example.org info@example.org, bob@example.org
@catchall.test bob@example.org
loop1@example.org loop2@example.org
loop2@example.org loop1@example.org
";

const DOMAINS: &str = "\
example.org
catchall.test
empty.test
";

const SENDERS: &str = "\
boss@example.org alice@example.org, bob@example.org
";

/// A client address outside every domain of ours, owned by nobody.
const STRANGER: &str = "sender@outside.test";

fn content() -> DirectoryContent {
    DirectoryContent {
        users: USERS.into(),
        aliases: ALIASES.into(),
        domains: DOMAINS.into(),
        senders: SENDERS.into(),
    }
}

// ---------------------------------------------------------------------------
// helpers

/// A comma/space separated list as a set (the order of alias targets and
/// sender logins is not part of the contract).
fn set(v: &str) -> BTreeSet<String> {
    v.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// `postmap -q` finds `key` and prints exactly `want` (a list compared as a
/// set); ramdir's own reply on the socket agrees.
fn assert_found(s: &Stack, table: &str, key: &str, want: &str) {
    let (rc, out) = s.postfix.postmap_q(table, key);
    assert_eq!(
        rc, 0,
        "postmap -q {key:?} {table}: expected found ({want}), got rc {rc}, output {out:?}"
    );
    assert!(
        out.ends_with('\n') && out.lines().count() == 1,
        "postmap -q {key:?} {table}: output {out:?}"
    );
    assert_eq!(set(&out), set(want), "postmap -q {key:?} {table}");
    let raw = s.ramdir.query(table, key);
    let value = raw
        .strip_prefix("OK ")
        .unwrap_or_else(|| panic!("{table} {key:?}: socket reply {raw:?}"));
    assert_eq!(
        set(value),
        set(want),
        "{table} {key:?}: socket reply {raw:?}"
    );
}

/// `postmap -q` does not find `key` (exit 1, no output), and ramdir's reply
/// is a plain NOTFOUND (postmap exits 1 for a TEMP too, so the socket reply
/// is what tells them apart).
fn assert_not_found(s: &Stack, table: &str, key: &str) {
    let (rc, out) = s.postfix.postmap_q(table, key);
    assert_eq!(
        (rc, out.as_str()),
        (1, ""),
        "postmap -q {key:?} {table}: expected not found"
    );
    let raw = s.ramdir.query(table, key);
    assert!(
        raw == "NOTFOUND " || raw == "NOTFOUND",
        "{table} {key:?}: expected NOTFOUND, socket reply {raw:?}"
    );
}

fn expect(r: std::io::Result<Reply>, code: u16, what: &str) -> Reply {
    let r = r.unwrap_or_else(|e| panic!("{what}: SMTP I/O error {e}"));
    assert_eq!(r.code, code, "{what}: got {r}");
    r
}

/// Send one message to `rcpts` (all must be accepted) and return its queue
/// id.
fn send(s: &Stack, rcpts: &[&str]) -> String {
    send_from(s, STRANGER, rcpts)
}

fn send_from(s: &Stack, sender: &str, rcpts: &[&str]) -> String {
    let mut c = s.postfix.smtp();
    expect(c.ehlo("client.test"), 250, "EHLO");
    expect(c.mail_from(sender), 250, "MAIL FROM");
    for r in rcpts {
        expect(c.rcpt_to(r), 250, &format!("RCPT TO:<{r}>"));
    }
    let msg = format!(
        "From: <{STRANGER}>\nTo: <{}>\nSubject: test\n\nhello\n.leading dot\n",
        rcpts[0]
    );
    let done = expect(c.data(&msg), 250, "end of DATA");
    let _ = c.quit();
    done.queue_id()
        .unwrap_or_else(|| panic!("no queue id in {done}"))
        .to_string()
}

/// The (to, orig_to) pairs delivered for message `qid`, sorted; every one
/// must have status=sent.
fn delivered(s: &Stack, qid: &str) -> Vec<(String, Option<String>)> {
    let ds: Vec<Delivery> = s.postfix.wait_deliveries(qid);
    for d in &ds {
        assert_eq!(d.status, "sent", "{qid}: {d:?}");
    }
    let mut v: Vec<_> = ds.into_iter().map(|d| (d.to, d.orig_to)).collect();
    v.sort();
    v
}

fn pair(to: &str, orig: Option<&str>) -> (String, Option<String>) {
    (to.to_string(), orig.map(str::to_string))
}

// ---------------------------------------------------------------------------
// postmap against ramdir's socket, as the README tells operators to check

fn postmap_domains(flavor: Flavor) {
    let s = Stack::start_on(flavor, &content());
    assert_found(&s, "domains", "example.org", "example.org");
    assert_found(&s, "domains", "Example.ORG", "example.org");
    assert_found(&s, "domains", "catchall.test", "catchall.test");
    assert_found(&s, "domains", "empty.test", "empty.test");
    for key in [
        "outside.test",
        "org",
        "sub.example.org",
        "[1.2.3.4]",
        "*",
        "alice@example.org",
        "@example.org",
    ] {
        assert_not_found(&s, "domains", key);
    }
}

fn postmap_mailboxes(flavor: Flavor) {
    let s = Stack::start_on(flavor, &content());
    for (key, login) in [
        ("alice@example.org", "alice@example.org"),
        ("alice+tag@example.org", "alice@example.org"),
        ("ALICE@EXAMPLE.ORG", "alice@example.org"),
        ("Alice+Tag@Example.Org", "alice@example.org"),
        ("carol@example.org", "carol@example.org"),
        ("Carol@Example.org", "carol@example.org"),
        ("real@catchall.test", "real@catchall.test"),
    ] {
        assert_found(&s, "mailboxes", key, login);
    }
    for key in [
        "nobody@example.org",
        "info@example.org",
        "unknown@catchall.test",
        "alice@outside.test",
        "example.org",
        "@example.org",
        "[1.2.3.4]",
        "alice@[1.2.3.4]",
        "*",
        "\"\"@example.org",
        "+alice@example.org",
    ] {
        assert_not_found(&s, "mailboxes", key);
    }
    // The CLI answers the same from the configuration.
    assert_eq!(
        s.ramdir.query_cli("mailboxes", "Alice+x@example.org"),
        (0, "OK alice@example.org\n".into())
    );
    assert_eq!(
        s.ramdir.query_cli("mailboxes", "nobody@example.org"),
        (1, "NOTFOUND \n".into())
    );
}

fn postmap_aliases(flavor: Flavor) {
    let s = Stack::start_on(flavor, &content());
    for (key, targets) in [
        ("info@example.org", "alice@example.org"),
        ("INFO@Example.Org", "alice@example.org"),
        // an alias to an alias is expanded to the final targets
        ("team@example.org", "alice@example.org,bob@example.org"),
        // the unmatched extension goes onto local targets
        ("info+x@example.org", "alice+x@example.org"),
        (
            "team+y@example.org",
            "alice+y@example.org,bob+y@example.org",
        ),
        // the catch-all takes addresses that are neither alias nor mailbox
        ("unknown@catchall.test", "bob@example.org"),
        ("Someone.Else@CatchAll.Test", "bob@example.org"),
    ] {
        assert_found(&s, "aliases", key, targets);
    }
    for key in [
        // mailboxes are not aliases, and the catch-all never swallows one
        "alice@example.org",
        "alice+tag@example.org",
        "real@catchall.test",
        "REAL@catchall.test",
        "nobody@example.org",
        "someone@outside.test",
        // bare domains must not make alias domains (G2)
        "example.org",
        "catchall.test",
        "[1.2.3.4]",
        "*",
        "\"\"@example.org",
        "\"\"@catchall.test",
        "x@[1.2.3.4]",
    ] {
        assert_not_found(&s, "aliases", key);
    }
    // A directory error (an alias loop) is TEMP, never NOTFOUND or PERM:
    // Postfix must defer, not bounce. postmap exits 1 with no value.
    for key in ["loop1@example.org", "Loop2+x@example.org"] {
        let (rc, out) = s.postfix.postmap_q("aliases", key);
        assert_eq!((rc, out.as_str()), (1, ""), "postmap -q {key:?} aliases");
        let raw = s.ramdir.query("aliases", key);
        assert!(
            raw.starts_with("TEMP "),
            "aliases {key:?}: expected TEMP, got {raw:?}"
        );
    }
}

fn postmap_senders(flavor: Flavor) {
    let s = Stack::start_on(flavor, &content());
    assert_found(
        &s,
        "senders",
        "boss@example.org",
        "alice@example.org,bob@example.org",
    );
    assert_found(
        &s,
        "senders",
        "BOSS@Example.ORG",
        "alice@example.org,bob@example.org",
    );
    // implicit_sender_logins (default on): a mailbox owns its own address
    assert_found(&s, "senders", "alice@example.org", "alice@example.org");
    for key in [
        "nobody@outside.test",
        "nobody@example.org",
        "[1.2.3.4]",
        "*",
        "\"\"@example.org",
        "example.org",
    ] {
        assert_not_found(&s, "senders", key);
    }
}

// ---------------------------------------------------------------------------
// SMTP through Postfix

fn smtp_recipient_checks(flavor: Flavor) {
    let s = Stack::start_on(flavor, &content());
    let mut c = s.postfix.smtp();
    expect(c.ehlo("client.test"), 250, "EHLO");
    expect(c.mail_from(STRANGER), 250, "MAIL FROM");
    for rcpt in [
        "alice@example.org",
        "ALICE@EXAMPLE.ORG",
        "alice+tag@example.org",
        "carol@example.org",
        "info@example.org",
        "team@example.org",
        "unknown@catchall.test",
        "real@catchall.test",
    ] {
        expect(c.rcpt_to(rcpt), 250, &format!("RCPT TO:<{rcpt}>"));
    }
    for rcpt in [
        "nobody@example.org",
        "NOBODY@Example.org",
        "nobody@empty.test",
        "\"\"@example.org",
    ] {
        let r = expect(c.rcpt_to(rcpt), 550, &format!("RCPT TO:<{rcpt}>"));
        assert!(
            r.text.starts_with("5.1.1 ") && r.text.contains("User unknown"),
            "RCPT TO:<{rcpt}>: {r}"
        );
    }
    let r = expect(
        c.rcpt_to("alice@outside.test"),
        554,
        "RCPT TO:<alice@outside.test>",
    );
    assert!(
        r.text.contains("5.7.1") && r.text.contains("Relay access denied"),
        "{r}"
    );
    // ramdir's TEMP for an alias loop defers the recipient.
    let r = expect(
        c.rcpt_to("loop1@example.org"),
        451,
        "RCPT TO:<loop1@example.org>",
    );
    assert!(r.text.starts_with("4.3.0 "), "{r}");
    let _ = c.quit();
    s.postfix
        .wait_for_log(&["socketmap server temporary error", "alias loop"]);
}

fn smtp_delivery_after_alias_expansion(flavor: Flavor) {
    let s = Stack::start_on(flavor, &content());
    let q = send(&s, &["info@example.org"]);
    assert_eq!(
        delivered(&s, &q),
        [pair("alice@example.org", Some("info@example.org"))]
    );

    let q = send(&s, &["team@example.org"]);
    assert_eq!(
        delivered(&s, &q),
        [
            pair("alice@example.org", Some("team@example.org")),
            pair("bob@example.org", Some("team@example.org"))
        ]
    );

    let q = send(&s, &["info+x@example.org"]);
    assert_eq!(
        delivered(&s, &q),
        [pair("alice+x@example.org", Some("info+x@example.org"))]
    );

    let q = send(&s, &["alice+tag@example.org"]);
    assert_eq!(delivered(&s, &q), [pair("alice+tag@example.org", None)]);

    let q = send(&s, &["ALICE@EXAMPLE.ORG"]);
    let d = delivered(&s, &q);
    assert!(
        d.len() == 1 && d[0].0.eq_ignore_ascii_case("alice@example.org") && d[0].1.is_none(),
        "{d:?}"
    );

    // the catch-all takes the unknown address, not the real mailbox
    let q = send(&s, &["unknown@catchall.test"]);
    assert_eq!(
        delivered(&s, &q),
        [pair("bob@example.org", Some("unknown@catchall.test"))]
    );
    let q = send(&s, &["real@catchall.test"]);
    assert_eq!(delivered(&s, &q), [pair("real@catchall.test", None)]);
}

/// MAIL FROM `sender` then RCPT to bob; the RCPT reply (sender
/// restrictions run at RCPT time, `smtpd_delay_reject = yes`).
fn try_sender(c: &mut ramdir_integration::Smtp, sender: &str) -> Reply {
    expect(c.mail_from(sender), 250, &format!("MAIL FROM:<{sender}>"));
    let r = c
        .rcpt_to("bob@example.org")
        .unwrap_or_else(|e| panic!("RCPT: {e}"));
    expect(c.command("RSET"), 250, "RSET");
    r
}

fn smtp_sender_login_maps(flavor: Flavor) {
    let opts = StackOptions {
        sasl: true,
        flavor,
        ..StackOptions::default()
    };
    let s = Stack::start_with(&content(), &opts);

    // Not logged in: an address with owners may not be used.
    let mut c = s.postfix.smtp();
    expect(c.ehlo("client.test"), 250, "EHLO");
    for sender in [
        "boss@example.org",
        "Boss@Example.org",
        "alice@example.org",
        "info@example.org",
    ] {
        let r = try_sender(&mut c, sender);
        assert!(
            r.code == 553 && r.text.contains("5.7.1") && r.text.contains("not logged in"),
            "{sender}: {r}"
        );
    }
    let r = try_sender(&mut c, STRANGER);
    assert_eq!(r.code, 250, "unowned sender, not logged in: {r}");
    let _ = c.quit();

    // Logged in as alice: her own address (with or without extension), the
    // aliases that deliver to her, and boss (explicit entry) are hers.
    let mut c = s.postfix.smtp();
    expect(c.ehlo("client.test"), 250, "EHLO");
    expect(
        c.auth_plain("alice@example.org", "wrong"),
        535,
        "AUTH with a bad password",
    );
    expect(c.auth_plain("alice@example.org", "alice-pw"), 235, "AUTH");
    for sender in [
        "alice@example.org",
        "ALICE+news@example.org",
        "info@example.org",
        "team@example.org",
        "boss@example.org",
    ] {
        let r = try_sender(&mut c, sender);
        assert_eq!(r.code, 250, "alice sending as {sender}: {r}");
    }
    for sender in ["bob@example.org", "carol@example.org", STRANGER] {
        let r = try_sender(&mut c, sender);
        assert!(
            r.code == 553 && r.text.contains("not owned by user alice@example.org"),
            "alice sending as {sender}: {r}"
        );
    }
    let _ = c.quit();

    // Logged in as carol: boss is not hers.
    let mut c = s.postfix.smtp();
    expect(c.ehlo("client.test"), 250, "EHLO");
    expect(c.auth_plain("carol@example.org", "carol-pw"), 235, "AUTH");
    let r = try_sender(&mut c, "boss@example.org");
    assert!(
        r.code == 553 && r.text.contains("not owned by user carol@example.org"),
        "carol sending as boss: {r}"
    );
    assert_eq!(
        try_sender(&mut c, "carol@example.org").code,
        250,
        "carol sending as herself"
    );
    let _ = c.quit();
}

// ---------------------------------------------------------------------------
// ramdir down: Postfix must defer, never bounce

fn ramdir_down_defers_then_recovers(flavor: Flavor) {
    let mut s = Stack::start_on(flavor, &content());
    let probe = [
        "alice@example.org",
        "nobody@example.org",
        "info@example.org",
        "unknown@catchall.test",
        "nobody@empty.test",
    ];
    // Warm up: Postfix's processes now hold connections to ramdir.
    let mut c = s.postfix.smtp();
    expect(c.ehlo("client.test"), 250, "EHLO");
    expect(c.mail_from(STRANGER), 250, "MAIL FROM");
    expect(c.rcpt_to("alice@example.org"), 250, "RCPT before stop");
    expect(c.rcpt_to("nobody@example.org"), 550, "RCPT before stop");

    let status = s.ramdir.stop();
    assert!(
        status.success(),
        "ramdir exited with {status} on SIGTERM; log:\n{}",
        s.ramdir.log_text()
    );

    // The same session (held connections see EOF) and a new one.
    for rcpt in probe {
        let r = expect(
            c.rcpt_to(rcpt),
            451,
            &format!("RCPT TO:<{rcpt}> in the old session, ramdir down"),
        );
        assert!(r.text.starts_with("4.3.0 "), "{r}");
    }
    let _ = c.quit();
    let mut c = s.postfix.smtp();
    expect(c.ehlo("client.test"), 250, "EHLO");
    expect(c.mail_from(STRANGER), 250, "MAIL FROM");
    for rcpt in probe {
        let r = expect(
            c.rcpt_to(rcpt),
            451,
            &format!("RCPT TO:<{rcpt}>, ramdir down"),
        );
        assert!(r.text.starts_with("4.3.0 "), "{r}");
    }
    let _ = c.quit();
    s.postfix
        .wait_for_log(&["private/ramdir-socketmap", "lookup error"]);

    s.ramdir.restart();
    // smtpd keeps a per-process cache of address resolutions, keyed by
    // (sender, recipient), that outlives sessions and includes the failed
    // ones (Postfix src/smtpd/smtpd_resolve.c): the pairs tried above stay
    // 451 in this smtpd process until it is recycled. A new sender shows
    // what fresh mail gets.
    let mut c = s.postfix.smtp();
    expect(c.ehlo("client.test"), 250, "EHLO");
    expect(c.mail_from("after@outside.test"), 250, "MAIL FROM");
    for rcpt in [
        "alice@example.org",
        "info@example.org",
        "unknown@catchall.test",
    ] {
        expect(
            c.rcpt_to(rcpt),
            250,
            &format!("RCPT TO:<{rcpt}> after restart"),
        );
    }
    for rcpt in ["nobody@example.org", "nobody@empty.test"] {
        expect(
            c.rcpt_to(rcpt),
            550,
            &format!("RCPT TO:<{rcpt}> after restart"),
        );
    }
    let _ = c.quit();
    let q = send_from(&s, "after@outside.test", &["info@example.org"]);
    assert_eq!(
        delivered(&s, &q),
        [pair("alice@example.org", Some("info@example.org"))]
    );
}

// ---------------------------------------------------------------------------
// reloads

/// Lookups running in the background while a test reloads: a persistent
/// connection, a connection per request, and `postmap -q -` batches through
/// Postfix's own client. Every answer must be the expected one: a reload
/// may never show a TEMP, an error, or a half-loaded directory.
struct Load {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<Result<(), String>>>,
}

/// Keys whose answers are the same before, during and after every reload
/// in these tests.
const STABLE: &[(&str, &str, &str)] = &[
    ("mailboxes", "alice@example.org", "OK alice@example.org"),
    ("mailboxes", "Carol+x@example.org", "OK carol@example.org"),
    ("aliases", "info@example.org", "OK alice@example.org"),
    ("aliases", "unknown@catchall.test", "OK bob@example.org"),
    ("domains", "example.org", "OK example.org"),
    ("mailboxes", "nobody@example.org", "NOTFOUND "),
    ("aliases", "real@catchall.test", "NOTFOUND "),
];

fn check_reply(
    table: &str,
    key: &str,
    want: &str,
    got: std::io::Result<String>,
) -> Result<(), String> {
    match got {
        Ok(g) if g == want || (want == "NOTFOUND " && g == "NOTFOUND") => Ok(()),
        Ok(g) => Err(format!("{table} {key:?}: got {g:?}, want {want:?}")),
        Err(e) => Err(format!("{table} {key:?}: {e}")),
    }
}

impl Load {
    fn start(s: &Stack) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();

        let sock = s.ramdir.socket().to_path_buf();
        let (st, n) = (stop.clone(), count.clone());
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            let mut c = SocketmapClient::connect(&sock).map_err(|e| format!("connect: {e}"))?;
            while !st.load(Ordering::Relaxed) {
                for (t, k, want) in STABLE {
                    check_reply(t, k, want, c.query(t, k))
                        .map_err(|e| format!("persistent connection: {e}"))?;
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        }));

        let sock = s.ramdir.socket().to_path_buf();
        let (st, n) = (stop.clone(), count.clone());
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            while !st.load(Ordering::Relaxed) {
                for (t, k, want) in STABLE {
                    let got = SocketmapClient::connect(&sock).and_then(|mut c| c.query(t, k));
                    check_reply(t, k, want, got).map_err(|e| format!("new connection: {e}"))?;
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        }));

        // postmap -q - : 300 lookups per process over one connection.
        let etc = s.postfix.etc().to_path_buf();
        let spool = s.postfix.spool().to_path_buf();
        let flavor = s.postfix.flavor();
        let (st, n) = (stop.clone(), count.clone());
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            let keys: Vec<&str> =
                ["info@example.org", "nobody@example.org", "team@example.org"].repeat(100);
            let mut input = keys.join("\n");
            input.push('\n');
            while !st.load(Ordering::Relaxed) {
                let out = postmap_stdin(flavor, &etc, &spool, "aliases", &input)?;
                let lines: Vec<&str> = out.lines().collect();
                let info = lines.iter().filter(|l| **l == "info@example.org\talice@example.org").count();
                let team = lines
                    .iter()
                    .filter(|l| l.strip_prefix("team@example.org\t").is_some_and(|v| {
                        set(v) == set("alice@example.org,bob@example.org")
                    }))
                    .count();
                if (info, team, lines.len()) != (100, 100, 200) {
                    return Err(format!("postmap -q - aliases: {info} info and {team} team answers of {} lines: {out:?}", lines.len()));
                }
                n.fetch_add(300, Ordering::Relaxed);
            }
            Ok(())
        }));
        Load {
            stop,
            count,
            threads,
        }
    }

    /// Stop the threads; panic with the first failure. Returns the number
    /// of lookups done.
    fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("lookup under reload failed: {e}"),
                Err(_) => panic!("load thread panicked"),
            }
        }
        self.count.load(Ordering::Relaxed)
    }
}

fn postmap_stdin(
    flavor: Flavor,
    etc: &std::path::Path,
    spool: &std::path::Path,
    table: &str,
    input: &str,
) -> Result<String, String> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = ramdir_integration::postfix::command_in(flavor, spool, "/usr/sbin/postmap")
        .arg("-c")
        .arg(etc)
        .args(["-q", "-"])
        .arg(format!("socketmap:unix:private/ramdir-socketmap:{table}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn postmap: {e}"))?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .map_err(|e| format!("postmap stdin: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("postmap: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "postmap -q - exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Wait until ramdir answers `want` for `table key` (the new data is live).
fn wait_answer(s: &Stack, table: &str, key: &str, want: &str) -> Duration {
    let start = Instant::now();
    wait_for(
        ramdir_integration::WAIT,
        &format!("{table} {key:?} to answer {want:?}"),
        || (s.ramdir.query(table, key) == want).then_some(()),
    );
    start.elapsed()
}

/// Wait until ramdir has logged one more error naming `needle` (a file and
/// line) than `before`.
fn wait_log_count(s: &Stack, needle: &str, before: usize) {
    wait_for(
        ramdir_integration::WAIT,
        &format!("ramdir to log an error naming {needle:?}"),
        || (s.ramdir.log_text().matches(needle).count() > before).then_some(()),
    );
}

fn reload_on_sighup_under_load(flavor: Flavor) {
    let opts = StackOptions {
        directory_extra: "watch_files = false".into(),
        flavor,
        ..StackOptions::default()
    };
    let mut s = Stack::start_with(&content(), &opts);
    let load = Load::start(&s);
    std::thread::sleep(Duration::from_millis(200));

    for round in 1..=5 {
        let text = format!("{ALIASES}new{round}@example.org bob@example.org\n");
        write_atomic(&s.files.aliases, &text);
        s.ramdir.reload();
        wait_answer(
            &s,
            "aliases",
            &format!("new{round}@example.org"),
            "OK bob@example.org",
        );
        if round > 1 {
            let old = s
                .ramdir
                .query("aliases", &format!("new{}@example.org", round - 1));
            assert_eq!(
                old,
                "NOTFOUND ",
                "new{} should be gone after round {round}",
                round - 1
            );
        }
    }

    // A broken file: the reload fails, the previous directory stays.
    let needle = format!("{}:3", s.files.aliases.display());
    let before = s.ramdir.log_text().matches(&needle).count();
    // Line 3 is an alias with no target.
    let broken = "\
info@example.org alice@example.org
team@example.org info@example.org, bob@example.org
broken@example.org
@catchall.test bob@example.org
new6@example.org bob@example.org
";
    write_atomic(&s.files.aliases, broken);
    s.ramdir.reload();
    wait_log_count(&s, &needle, before);
    assert!(s.ramdir.is_running(), "ramdir died on a broken file");
    assert_eq!(
        s.ramdir.query("aliases", "new5@example.org"),
        "OK bob@example.org",
        "old data must stay"
    );
    assert_eq!(
        s.ramdir.query("aliases", "new6@example.org"),
        "NOTFOUND ",
        "half-loaded data served"
    );
    assert_eq!(
        s.ramdir.query("aliases", "info@example.org"),
        "OK alice@example.org"
    );

    // Fixed again.
    write_atomic(
        &s.files.aliases,
        &format!("{ALIASES}new7@example.org bob@example.org\n"),
    );
    s.ramdir.reload();
    wait_answer(&s, "aliases", "new7@example.org", "OK bob@example.org");

    let n = load.finish();
    eprintln!("{n} lookups, all correct, during the reloads");
    assert!(n > 100, "only {n} lookups ran during the reloads");

    // Postfix sees the new alias.
    let q = send(&s, &["new7@example.org"]);
    assert_eq!(
        delivered(&s, &q),
        [pair("bob@example.org", Some("new7@example.org"))]
    );
}

fn reload_on_file_change_without_sighup(flavor: Flavor) {
    let mut s = Stack::start_on(flavor, &content());
    let load = Load::start(&s);

    // Atomic replacement (rename over the file).
    write_atomic(
        &s.files.aliases,
        &format!("{ALIASES}watched@example.org alice@example.org\n"),
    );
    let took = wait_answer(&s, "aliases", "watched@example.org", "OK alice@example.org");
    eprintln!("rename picked up after {took:?}");

    // In-place rewrite of the same inode.
    std::fs::write(
        &s.files.aliases,
        format!("{ALIASES}inplace@example.org bob@example.org\n"),
    )
    .expect("rewrite");
    let took = wait_answer(&s, "aliases", "inplace@example.org", "OK bob@example.org");
    eprintln!("in-place write picked up after {took:?}");
    assert_eq!(
        s.ramdir.query("aliases", "watched@example.org"),
        "NOTFOUND "
    );

    // Another source: a new mailbox in the passwd-file.
    write_atomic(
        &s.files.users,
        &format!("{USERS}dave@example.org:{{PLAIN}}dave-pw:5000:5000::/home/dave::\n"),
    );
    wait_answer(&s, "mailboxes", "dave@example.org", "OK dave@example.org");

    // A broken file is not loaded; the previous directory stays.
    // (the line after ALIASES)
    let needle = format!(
        "{}:{}",
        s.files.aliases.display(),
        ALIASES.lines().count() + 1
    );
    let before = s.ramdir.log_text().matches(&needle).count();
    write_atomic(
        &s.files.aliases,
        &format!("{ALIASES}broken@example.org\nlost@example.org bob@example.org\n"),
    );
    wait_log_count(&s, &needle, before);
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.ramdir.is_running(), "ramdir died on a broken file");
    assert_eq!(
        s.ramdir.query("aliases", "inplace@example.org"),
        "OK bob@example.org",
        "old data must stay"
    );
    assert_eq!(
        s.ramdir.query("aliases", "lost@example.org"),
        "NOTFOUND ",
        "half-loaded data served"
    );
    assert_eq!(
        s.ramdir.query("mailboxes", "dave@example.org"),
        "OK dave@example.org"
    );

    write_atomic(
        &s.files.aliases,
        &format!("{ALIASES}fixed@example.org bob@example.org\n"),
    );
    wait_answer(&s, "aliases", "fixed@example.org", "OK bob@example.org");

    let n = load.finish();
    eprintln!("{n} lookups, all correct, during the reloads");
    assert!(n > 100, "only {n} lookups ran during the reloads");

    // Postfix sees both changes.
    let mut c = s.postfix.smtp();
    expect(c.ehlo("client.test"), 250, "EHLO");
    expect(c.mail_from(STRANGER), 250, "MAIL FROM");
    expect(c.rcpt_to("dave@example.org"), 250, "RCPT TO new mailbox");
    expect(c.rcpt_to("fixed@example.org"), 250, "RCPT TO new alias");
    expect(
        c.rcpt_to("lost@example.org"),
        550,
        "RCPT TO alias from the broken file",
    );
    let _ = c.quit();
}
