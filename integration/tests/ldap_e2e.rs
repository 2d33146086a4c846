//! LDAP as the only source of the whole chain: SMTP → Postfix (domains,
//! mailboxes and aliases from ramdir's socketmap) → LMTP → Dovecot (passdb
//! and userdb from ramdir's dict) → Maildir, and IMAP logins checked
//! against the `{SSHA}` hashes stored in LDAP; a second entry with a user's
//! address makes Postfix defer and Dovecot refuse the login until it is
//! deleted (issue 13).
//!
//! ramdir has no directory files at all: every user, alias and password
//! comes from a real slapd ([`Slapd`]) loaded with the shipped
//! `docs/ldap/example-users.ldif` plus generated users, read over
//! `ldapi://` with a simple bind as `cn=mailsvc`. Postfix and Dovecot are
//! the harness's private instances ([`Postfix`], [`Dovecot`]); Postfix runs
//! unchrooted, so `virtual_transport = lmtp:unix:<stack>/dv/run/lmtp`
//! works with an absolute path.
//!
//! Runs on both stacks: Debian 12's Postfix 3.7 and Dovecot 2.3 (dict
//! passdb/userdb) and Debian 13's Postfix 3.10 and Dovecot 2.4 (the Lua
//! bridge); slapd and ramdir run on the host either way.
//!
//! Needs root, the packages from `scripts/install-test-deps.sh` and the
//! binary: `cargo build -p ramdir` (or `RAMDIR_BIN=/path/to/ramdir`).

use std::path::Path;
use std::time::{Duration, Instant};

use ramdir_integration::dovecot::{
    DictClient, Dovecot, require_dovecot_on, send_message, wait_for_mail,
};
use ramdir_integration::slapd::{
    self, RamdirStats, Slapd, alias_mail, user_ldif, user_mail, user_password, write_secret,
};
use ramdir_integration::{
    Flavor, Postfix, Ramdir, SocketmapClient, StackDir, WAIT, set_mode, write_atomic,
};

/// The shipped example directory (jane, john, the service account).
const EXAMPLE_LDIF: &str = include_str!("../../docs/ldap/example-users.ldif");
/// Passwords documented in the example LDIF.
const SVC_PASSWORD: &str = "mailsvc-secret";
const JANE_PASSWORD: &str = "jane-secret";
const JOHN_PASSWORD: &str = "john-secret";
/// Generated users besides the example ones.
const USERS: usize = 20;

/// Send a message of this test's size to `rcpts` (each must be accepted);
/// returns the queue id.
fn send(postfix: &Postfix, rcpts: &[&str], token: &str) -> String {
    send_message(postfix, rcpts, token, 1_200)
}

/// The reply to `RCPT TO:<rcpt>` in a fresh session.
fn rcpt_reply(postfix: &Postfix, rcpt: &str) -> ramdir_integration::Reply {
    let mut c = postfix.smtp();
    c.ehlo("client.test").expect("EHLO");
    c.mail_from("sender@outside.test").expect("MAIL FROM");
    let r = c.rcpt_to(rcpt).expect("RCPT TO");
    let _ = c.quit();
    r
}

/// `* N EXISTS` of a SELECT.
fn exists(r: &ramdir_integration::dovecot::ImapResponse) -> u64 {
    r.untagged
        .iter()
        .find_map(|l| l.strip_prefix("* ")?.strip_suffix(" EXISTS")?.parse().ok())
        .unwrap_or_else(|| panic!("no EXISTS in {r}"))
}

/// Wait (up to 10 s) until ramdir's dict socket answers a lookup.
fn wait_dict(path: &Path) {
    let start = Instant::now();
    loop {
        let r = DictClient::connect(path, "auth")
            .and_then(|mut d| d.lookup("shared/passdb/probe@example.invalid", "p"));
        if r.is_ok() {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "ramdir's dict {} does not answer: {r:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

ramdir_integration::test_on_both_flavors!(smtp_lmtp_imap_with_ldap_as_the_only_source);

fn smtp_lmtp_imap_with_ldap_as_the_only_source(flavor: Flavor) {
    require_dovecot_on(flavor);
    slapd::require_slapd();
    let dir = StackDir::for_flavor(flavor);

    // slapd: the shipped example plus generated users.
    let mut ldif = format!("{EXAMPLE_LDIF}\n");
    for i in 1..=USERS {
        ldif.push_str(&user_ldif(i));
    }
    let slapd = Slapd::start(&dir, &ldif);

    // Postfix delivering virtual mail to Dovecot's LMTP socket.
    let lmtp = dir.join("dv/run/lmtp");
    let mut postfix = Postfix::prepare(
        &dir,
        &format!("virtual_transport = lmtp:unix:{}\n", lmtp.display()),
    );

    // ramdir: no files, LDAP over ldapi://, socketmap in Postfix's spool,
    // dict for Dovecot, quota store for Dovecot's quota dict.
    let run = dir.join("run");
    std::fs::create_dir_all(&run).expect("mkdir run");
    set_mode(&run, 0o755);
    let secret = dir.join("ldap.secret");
    write_secret(&secret, SVC_PASSWORD, 0o600);
    let (dict_socket, stats_socket) = (run.join("dict.sock"), run.join("stats.sock"));
    let mail_root = dir.join("dv/mail");
    let config = dir.join("ramdir.toml");
    write_atomic(
        &config,
        &format!(
            "[directory]\nhome_template = \"{}/%d/%n\"\n\n\
             [socketmap]\nlisten = \"unix:{}\"\nmode = \"0666\"\n\n\
             [dict]\nlisten = \"unix:{}\"\nmode = \"0666\"\n\n\
             [quota]\nstore = \"{}\"\n\n\
             [stats]\nlisten = \"unix:{}\"\n\n{}",
            mail_root.display(),
            postfix.socketmap_path().display(),
            dict_socket.display(),
            dir.join("quota.redb").display(),
            stats_socket.display(),
            slapd.ramdir_section(&slapd.ldapi_url(), &secret, ""),
        ),
    );
    let ramdir = Ramdir::start(&config, &postfix.socketmap_path(), &dir.join("ramdir.log"));
    let start = Instant::now();
    let st = loop {
        // ramdir binds the stats socket just after the socketmap one that
        // `Ramdir::start` waited for: on a busy machine it may not be
        // listening yet.
        let st = match RamdirStats::fetch(&stats_socket) {
            Ok(st) => st,
            Err(e) => {
                assert!(start.elapsed() < WAIT, "stats socket: {e}");
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        if st.authoritative() {
            break st;
        }
        assert!(
            start.elapsed() < WAIT,
            "ramdir never got in sync with LDAP: {}\n{}",
            st.raw,
            ramdir.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // jane, john and the generated users; the printer entry has no mail.
    assert_eq!(st.num("entries"), USERS as u64 + 2, "{}", st.raw);
    assert_eq!(st.num("users"), USERS as u64 + 2, "{}", st.raw);
    wait_dict(&dict_socket);

    let mut dovecot = Dovecot::prepare(&dir, &dict_socket, "");
    dovecot.start();
    postfix.start();
    let maildir = |user: &str| {
        let (local, domain) = user.split_once('@').expect("an address");
        mail_root.join(domain).join(local).join("Maildir")
    };

    // 1. An LDAP mailbox and two of its LDAP aliases (mailLocalAddress),
    //    and a generated user plus another generated user's alias.
    let qid = send(&postfix, &["jane@example.org"], "ldap-direct");
    wait_for_mail(
        &postfix,
        &dovecot,
        &maildir("jane@example.org"),
        "ldap-direct",
    );
    let line = postfix.wait_for_log(&[&qid, "to=<jane@example.org>", "status=sent"]);
    assert!(
        line.contains("/dv/run/lmtp"),
        "delivered over LMTP to Dovecot: {line}"
    );
    let qid = send(
        &postfix,
        &["jane.doe@example.org", "sales@example.org"],
        "ldap-alias",
    );
    wait_for_mail(
        &postfix,
        &dovecot,
        &maildir("jane@example.org"),
        "ldap-alias",
    );
    let d = postfix.wait_deliveries(&qid);
    // Both aliases expand to jane: Postfix delivers one copy.
    assert!(
        d.iter()
            .all(|d| d.to == "jane@example.org" && d.status == "sent"),
        "{d:?}"
    );
    send(&postfix, &[&user_mail(1), &alias_mail(2)], "generated");
    wait_for_mail(&postfix, &dovecot, &maildir(&user_mail(1)), "generated");
    wait_for_mail(&postfix, &dovecot, &maildir(&user_mail(2)), "generated");

    // 2. A disabled account still receives mail.
    send(&postfix, &["john@example.org"], "to-disabled");
    wait_for_mail(
        &postfix,
        &dovecot,
        &maildir("john@example.org"),
        "to-disabled",
    );

    // 3. Unknown addresses are refused at RCPT (the directory is
    //    authoritative, so "not found" is final).
    let r = rcpt_reply(&postfix, "nobody@example.org");
    assert_eq!(r.code, 550, "unknown LDAP address: {r}");
    let r = rcpt_reply(&postfix, "printer@example.org");
    assert_eq!(r.code, 550, "an entry without mail is no mailbox: {r}");

    // 4. IMAP logins against the {SSHA} hashes from LDAP.
    let mut imap = dovecot.imap_login("jane@example.org", JANE_PASSWORD);
    let sel = imap.select("INBOX").expect("SELECT");
    assert!(sel.is_ok(), "{sel}");
    assert_eq!(exists(&sel), 2, "jane's INBOX: {sel}");
    let q = imap.quota("INBOX").expect("GETQUOTAROOT");
    // mailQuotaBytes 2147483648 = 2097152 KiB.
    assert!(
        q.iter()
            .any(|(res, _, limit)| res == "STORAGE" && *limit == 2_097_152),
        "{q:?}"
    );
    let _ = imap.logout();
    let mut i = dovecot.imap_login(&user_mail(1), &user_password(1));
    assert_eq!(exists(&i.select("INBOX").expect("SELECT")), 1);
    let _ = i.logout();
    let r = dovecot
        .imap()
        .login("jane@example.org", "wrong-password")
        .expect("LOGIN");
    assert!(!r.is_ok(), "a wrong password must fail: {r}");
    let r = dovecot
        .imap()
        .login("john@example.org", JOHN_PASSWORD)
        .expect("LOGIN");
    assert!(!r.is_ok(), "mailEnabled FALSE must stop logins: {r}");

    // 5. A user added to LDAP now: Postfix accepts mail for it within a
    //    second, it is delivered, and the user can log in.
    let t0 = Instant::now();
    slapd.ldapadd(&user_ldif(777));
    let added = Instant::now();
    let mut sm = SocketmapClient::connect(ramdir.socket()).expect("socketmap");
    while sm.query("mailboxes", &user_mail(777)).expect("socketmap")
        != format!("OK {}", user_mail(777))
    {
        assert!(
            added.elapsed() < Duration::from_secs(1),
            "the new LDAP user is not in ramdir after 1 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "new LDAP user served {} µs after ldapadd returned ({} ms after it started)",
        added.elapsed().as_micros(),
        t0.elapsed().as_millis()
    );
    send(&postfix, &[&user_mail(777)], "live-added");
    wait_for_mail(&postfix, &dovecot, &maildir(&user_mail(777)), "live-added");
    let mut i = dovecot.imap_login(&user_mail(777), &user_password(777));
    assert_eq!(exists(&i.select("INBOX").expect("SELECT")), 1);
    let _ = i.logout();

    // 6. A password changed in LDAP: the old one stops working at once.
    slapd.replace(
        &slapd::user_dn(777),
        "userPassword",
        &[&slapd::ssha("changed-pw", b"new")],
    );
    let changed = Instant::now();
    loop {
        let r = dovecot
            .imap()
            .login(&user_mail(777), &user_password(777))
            .expect("LOGIN");
        if !r.is_ok() {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "the old password still works after 1 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = dovecot.imap_login(&user_mail(777), "changed-pw").logout();

    // 7. A second entry with jane's address (issue 13): neither entry is
    //    served. Postfix defers mail to jane and her aliases (4xx: never a
    //    550 bounce, never accepted for the wrong mailbox), and the other
    //    entry's password does not log in as jane. Once the duplicate is
    //    deleted, jane is served again with her own data.
    let dup_dn = format!("uid=jane-dup,{}", slapd::PEOPLE);
    slapd.ldapadd(&format!(
        "dn: {dup_dn}\nobjectClass: inetOrgPerson\nuid: jane-dup\ncn: Jane Dup\nsn: Dup\n\
         mail: jane@example.org\nuserPassword: {}\n",
        slapd::ssha("dup-secret", b"dupsalt")
    ));
    let mut until = |want: &dyn Fn(&str) -> bool, what: &str| {
        let t = Instant::now();
        loop {
            let r = sm
                .query("mailboxes", "jane@example.org")
                .expect("socketmap");
            if want(&r) {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "{what}: {r:?} after 1 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    until(&|r| r.starts_with("TEMP "), "jane ambiguous");
    for rcpt in [
        "jane@example.org",
        "jane.doe@example.org",
        "sales@example.org",
    ] {
        let r = rcpt_reply(&postfix, rcpt);
        assert_eq!(
            r.code / 100,
            4,
            "{rcpt} claimed by two entries: deferred: {r}"
        );
    }
    for pw in ["dup-secret", JANE_PASSWORD] {
        let r = dovecot.imap().login("jane@example.org", pw).expect("LOGIN");
        assert!(!r.is_ok(), "no login as an ambiguous user: {r}");
    }
    slapd.ldapdelete(&dup_dn);
    until(&|r| r == "OK jane@example.org", "jane served again");
    assert_eq!(rcpt_reply(&postfix, "jane@example.org").code, 250);
    let _ = dovecot
        .imap_login("jane@example.org", JANE_PASSWORD)
        .logout();
    let r = dovecot
        .imap()
        .login("jane@example.org", "dup-secret")
        .expect("LOGIN");
    assert!(!r.is_ok(), "the deleted entry's password: {r}");

    // Dovecot logs the failed lookups of step 7 (ramdir's reason names
    // the ambiguity); anything else is trouble.
    let trouble: Vec<String> = dovecot
        .trouble()
        .into_iter()
        .filter(|l| !l.contains("claimed by 2 directory entries"))
        .collect();
    assert!(
        trouble.is_empty(),
        "Dovecot logged trouble:\n{}",
        trouble.join("\n")
    );
    assert!(
        !ramdir.log_text().contains(SVC_PASSWORD),
        "the bind password appears in ramdir's log"
    );

    // Stop in order: Postfix, Dovecot, ramdir, slapd; then the directory.
    postfix.stop();
    dovecot.stop();
    drop(ramdir);
    drop(slapd);
    drop(dir);
}
