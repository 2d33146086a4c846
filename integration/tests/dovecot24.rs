//! Debian 13's stack with ramdir: Postfix 3.10 and Dovecot 2.4 from the
//! root `scripts/trixie-root.sh` builds, ramdir on the host. Dovecot 2.4
//! has no dict passdb/userdb and no dict quota (docs/notes: debian13.md),
//! so this is the configuration docs/dovecot.md gives for 2.4:
//! passdb/userdb through the shipped Lua bridge
//! (`contrib/dovecot/ramdir-auth.lua`) on ramdir's `auth` dict, the
//! `count` quota, and `quota_clone` mirroring the usage into ramdir's
//! `quota` dict, which the policy service and the milter read.
//!
//! What must hold there:
//! - authentication: right and wrong password, unknown user, a disabled
//!   user, through `doveadm auth test` and IMAP LOGIN;
//! - the userdb in 2.4's field names (`quota_storage_size`, folder rules as
//!   `namespace/inbox/mailbox/<box>/quota_storage_extra`), and the
//!   iteration `doveadm user '*'`;
//! - delivery Postfix 3.10 → LMTP → Dovecot 2.4, direct, through an alias
//!   and through a catch-all;
//! - ramdir's mirror equals Dovecot's own count (`doveadm quota get`)
//!   after deliveries, an APPEND and an EXPUNGE;
//! - a per-user limit given in 2.4's spelling and one in 2.3's: the limit
//!   Dovecot enforces is the one ramdir's `explain` shows and its policy
//!   service applies;
//! - a user at the limit is refused at LMTP (4xx), yet can still copy and
//!   move mail to Trash (ramdir's folder rule in 2.4's form);
//! - ramdir stopped: an internal auth failure, LMTP 4xx, Postfix defers,
//!   nothing bounces.
//!
//! The Debian 12 side of the same scenarios is in dovecot_dict.rs and the
//! tests that run on both stacks.

use std::collections::BTreeMap;

use ramdir_integration::dovecot::{
    Imap, MailStack, MailStackOptions, MaildirUsage, Usage, message, send_message, wait_for_mail,
};
use ramdir_integration::quota::{
    Attempt, Checker, attempt, delete_queue, enable_quota_listeners, queue, use_checker,
};
use ramdir_integration::{DirectoryContent, Flavor, WAIT, wait_for};

/// bob's limit is given in Dovecot 2.4's spelling, carol's in 2.3's; dis
/// is disabled; the others get `default_quota`.
const USERS: &str = "\
alice@example.org:{PLAIN}alice-pw:5000:5000::::
bob@example.org:{PLAIN}bob-pw:5000:5000::::userdb_quota_storage_size=3M
carol@example.org:{PLAIN}carol-pw:5000:5000::::userdb_quota_rule=*:storage=2M
dis@example.org:{PLAIN}dis-pw:5000:5000::::nologin
erin@other.test:{PLAIN}erin-pw:5000:5000::::
full@example.org:{PLAIN}full-pw:5000:5000::::userdb_quota_storage_size=1M
";

const ALIASES: &str = "\
info@example.org alice@example.org
@catch.test erin@other.test
";

const DOMAINS: &str = "example.org\nother.test\ncatch.test\n";

/// Every login of [`USERS`], sorted.
const ALL_USERS: [&str; 6] = [
    "alice@example.org",
    "bob@example.org",
    "carol@example.org",
    "dis@example.org",
    "erin@other.test",
    "full@example.org",
];

/// A default other than ramdir's built-in 10G, and a folder rule.
const DIRECTORY_EXTRA: &str = "\
default_quota = \"2G\"
quota_rules = [\"Trash:storage=+500M\"]
";

/// The grace, the same on both sides as docs/dovecot.md asks: Dovecot 2.4's
/// `quota_storage_grace` (a size) and ramdir's `[quota] grace`. Small, so
/// a message at the edge stays under Postfix's `message_size_limit`.
const GRACE: &str = "100K";
const GRACE_BYTES: i64 = 100 * 1024;

fn start(postfix: bool) -> MailStack {
    let content = DirectoryContent {
        users: USERS.into(),
        aliases: ALIASES.into(),
        domains: DOMAINS.into(),
        senders: String::new(),
    };
    MailStack::start(
        &content,
        &MailStackOptions {
            directory_extra: DIRECTORY_EXTRA.into(),
            dovecot_extra: format!("quota_storage_grace = {GRACE}\n"),
            postfix,
            flavor: Flavor::Debian13,
            ..Default::default()
        },
    )
}

/// ramdir's mirror of `user`'s usage equals Dovecot's own count
/// (`doveadm quota get`, KiB rounded up, and messages) and what the
/// Maildir holds; waits for quota_clone's asynchronous write.
fn assert_mirror_matches(s: &MailStack, user: &str, what: &str) -> Usage {
    s.assert_quota_agrees(user, what)
}

/// `doveadm auth test` as raw text and exit code (for the failures that
/// [`ramdir_integration::dovecot::Dovecot::auth_test`] refuses to read).
fn auth_test_raw(s: &MailStack, user: &str, password: &str) -> (Option<i32>, String) {
    let out = s.dovecot.doveadm(&["auth", "test", user, password]);
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The limit `ramdir explain` shows for `user` (`quota: 3M` …), in bytes.
fn explained_limit(s: &MailStack, user: &str) -> u64 {
    let out = std::process::Command::new(ramdir_integration::ramdir::ramdir_bin())
        .arg("explain")
        .arg("--config")
        .arg(s.ramdir.config())
        .arg(user)
        .output()
        .expect("run ramdir explain");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ramdir explain {user}: {text}");
    let q = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("quota: "))
        .unwrap_or_else(|| panic!("no quota line in ramdir explain {user}:\n{text}"));
    let size = q.split([';', ',', ' ']).next().unwrap_or("");
    let (n, unit) = size.split_at(size.len() - 1);
    let n: u64 = n
        .parse()
        .unwrap_or_else(|_| panic!("quota {size:?} in ramdir explain {user}"));
    n * match unit {
        "G" => 1 << 30,
        "M" => 1 << 20,
        "B" => 1,
        _ => panic!("quota unit {unit:?} in ramdir explain {user}"),
    }
}

#[test]
fn auth_userdb_and_iteration_through_the_lua_bridge() {
    let s = start(false);
    let d = &s.dovecot;

    // doveadm auth test: right, wrong, unknown, and case-folded.
    assert!(d.auth_test("alice@example.org", "alice-pw"));
    assert!(d.auth_test("Alice@Example.ORG", "alice-pw"));
    assert!(!d.auth_test("alice@example.org", "wrong"));
    assert!(!d.auth_test("nobody@example.org", "x"));
    let (rc, text) = auth_test_raw(&s, "nobody@example.org", "x");
    assert!(
        rc != Some(0) && text.contains("auth failed") && !text.contains("internal"),
        "unknown user: {rc:?} {text}"
    );

    // IMAP LOGIN.
    let mut i = d.imap_login("alice@example.org", "alice-pw");
    assert!(i.select("INBOX").expect("SELECT").is_ok());
    let _ = i.logout();
    let r = d.imap().login("alice@example.org", "wrong").expect("LOGIN");
    assert!(!r.is_ok(), "a wrong password must fail: {r}");
    assert!(r.text.contains("AUTHENTICATIONFAILED"), "{r}");

    // A disabled user cannot log in (the same answer as a wrong
    // password), but keeps a userdb, so queued mail is delivered.
    assert!(!d.auth_test("dis@example.org", "dis-pw"));
    let r = d.imap().login("dis@example.org", "dis-pw").expect("LOGIN");
    assert!(!r.is_ok(), "a disabled user logged in: {r}");
    assert!(
        d.user("dis@example.org").is_some(),
        "a disabled user keeps the userdb"
    );

    // The userdb in 2.4's names: every limit a quota_storage_size (2.4
    // ignores quota_rule without a word), the Trash rule a per-mailbox
    // quota_storage_extra, no message limit (0), and no 2.3 field at all.
    let alice: BTreeMap<String, String> = d.user("alice@example.org").expect("alice's userdb");
    let field = |u: &BTreeMap<String, String>, k: &str| u.get(k).cloned().unwrap_or_default();
    assert_eq!(field(&alice, "uid"), "5000", "{alice:?}");
    assert_eq!(field(&alice, "gid"), "5000", "{alice:?}");
    assert_eq!(
        field(&alice, "home"),
        d.mail_root()
            .join("example.org/alice")
            .display()
            .to_string(),
        "{alice:?}"
    );
    assert_eq!(
        field(&alice, "quota_storage_size"),
        format!("{}B", 2u64 << 30),
        "{alice:?}"
    );
    assert_eq!(
        field(&alice, "namespace/inbox/mailbox/Trash/quota_storage_extra"),
        format!("{}B", 500u64 << 20),
        "{alice:?}"
    );
    assert_eq!(field(&alice, "quota_message_count"), "0", "{alice:?}");
    assert!(
        !alice.keys().any(|k| k.starts_with("quota_rule")),
        "2.3 fields sent to Dovecot 2.4: {alice:?}"
    );
    let bob = d.user("bob@example.org").expect("bob's userdb");
    assert_eq!(
        field(&bob, "quota_storage_size"),
        format!("{}B", 3u64 << 20),
        "{bob:?}"
    );
    let carol = d.user("carol@example.org").expect("carol's userdb");
    assert_eq!(
        field(&carol, "quota_storage_size"),
        format!("{}B", 2u64 << 20),
        "{carol:?}"
    );
    assert_eq!(d.user("nobody@example.org"), None);

    // doveadm user '*' lists every user through the bridge's iteration.
    let mut all = d.list_users("*");
    all.sort();
    assert_eq!(all, ALL_USERS);
    assert_eq!(d.list_users("*@other.test"), ["erin@other.test"]);

    let trouble = d.trouble();
    assert!(
        trouble.is_empty(),
        "Dovecot logged trouble:\n{}",
        trouble.join("\n")
    );
}

#[test]
fn delivery_and_the_quota_mirror() {
    let s = start(true);
    let pf = s.postfix();
    let alice = s.maildir("alice@example.org");

    // Postfix 3.10 → LMTP → Dovecot 2.4: direct, alias, catch-all.
    let qid = send_message(pf, &["alice@example.org"], "direct-24", 2_000);
    wait_for_mail(pf, &s.dovecot, &alice, "direct-24");
    let line = pf.wait_for_log(&[&qid, "to=<alice@example.org>", "status=sent"]);
    assert!(
        line.contains("/dv/run/lmtp") && line.contains("Saved"),
        "delivered by LMTP to Dovecot 2.4: {line}"
    );
    assert!(
        pf.maillog_text().contains("version 3.10."),
        "this is Postfix 3.10"
    );
    let qid = send_message(pf, &["info@example.org"], "alias-24", 3_000);
    wait_for_mail(pf, &s.dovecot, &alice, "alias-24");
    let d = pf.wait_deliveries(&qid);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        (d[0].to.as_str(), d[0].orig_to.as_deref()),
        ("alice@example.org", Some("info@example.org"))
    );
    let qid = send_message(pf, &["whoever@catch.test"], "catchall-24", 2_500);
    wait_for_mail(pf, &s.dovecot, &s.maildir("erin@other.test"), "catchall-24");
    let d = pf.wait_deliveries(&qid);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].to, "erin@other.test");

    // quota_clone mirrored Dovecot's count into ramdir.
    let after_lmtp = assert_mirror_matches(&s, "alice@example.org", "after two deliveries");
    assert_eq!(after_lmtp.messages, Some(2));
    assert_mirror_matches(&s, "erin@other.test", "after the catch-all delivery");

    // An IMAP APPEND raises it, an EXPUNGE lowers it.
    let mut i = s.dovecot.imap_login("alice@example.org", "alice-pw");
    let r = i
        .append("INBOX", &message("append-24", 4_000))
        .expect("APPEND");
    assert!(r.is_ok(), "APPEND: {r}");
    let after_append = assert_mirror_matches(&s, "alice@example.org", "after IMAP APPEND");
    assert_eq!(after_append.messages, Some(3));
    assert!(after_append.storage > after_lmtp.storage);
    let r = i.select("INBOX").expect("SELECT");
    assert!(r.is_ok(), "SELECT: {r}");
    let r = i
        .command("STORE 1 +FLAGS.SILENT (\\Deleted)")
        .expect("STORE");
    assert!(r.is_ok(), "STORE: {r}");
    let r = i.command("EXPUNGE").expect("EXPUNGE");
    assert!(
        r.is_ok() && r.untagged.iter().any(|l| l == "* 1 EXPUNGE"),
        "EXPUNGE: {r}"
    );
    let after_expunge = assert_mirror_matches(&s, "alice@example.org", "after IMAP EXPUNGE");
    assert_eq!(after_expunge.messages, Some(2));
    assert!(after_expunge.storage < after_append.storage);
    // GETQUOTAROOT answers from the same count, with the 2G from ramdir.
    let q = i.quota("INBOX").expect("GETQUOTAROOT");
    let storage_kib = (after_expunge.storage.unwrap_or_default() as u64).div_ceil(1024);
    assert!(
        q.contains(&("STORAGE".to_string(), storage_kib, 2 << 20)),
        "GETQUOTAROOT: {q:?}"
    );
    let _ = i.logout();

    let trouble = s.dovecot.trouble();
    assert!(
        trouble.is_empty(),
        "Dovecot logged trouble:\n{}",
        trouble.join("\n")
    );
}

#[test]
fn custom_limits_in_both_spellings_agree_everywhere() {
    let mut s = start(true);
    enable_quota_listeners(&mut s, GRACE);
    use_checker(&mut s, Checker::RamdirPolicy);

    for (user, spelled, limit) in [
        (
            "bob@example.org",
            "userdb_quota_storage_size=3M",
            3i64 << 20,
        ),
        (
            "carol@example.org",
            "userdb_quota_rule=*:storage=2M",
            2i64 << 20,
        ),
    ] {
        // What ramdir's explain and Dovecot's quota say.
        assert_eq!(
            explained_limit(&s, user) as i64,
            limit,
            "ramdir explain {user} ({spelled})"
        );
        // A first delivery, so that quota_clone has given ramdir a usage
        // (an untracked user is accepted whatever the size).
        s.lmtp_deliver_ok(user, &message(&format!("first-{user}"), 5_000));
        let used = s
            .wait_usage_tracked(user)
            .storage
            .expect("a storage counter");
        let q = s.dovecot.quota_get(user);
        assert_eq!(
            q.storage_limit_kib,
            Some(limit as u64 / 1024),
            "doveadm quota get -u {user} ({spelled}): {q:?}"
        );

        // ramdir's policy applies the same limit and grace: a message one
        // byte over the room left is refused at RCPT with a 4xx, one of
        // exactly the room left is accepted (in that order, so the usage
        // is still `used`), never a bounce.
        let room = limit - used + GRACE_BYTES;
        for (size, want) in [(room + 1, "RCPT 452 4.2.2"), (room, "accepted")] {
            let fate = attempt(
                s.postfix(),
                &Attempt {
                    rcpts: &[user],
                    size_param: Some(size as usize),
                    message: message(&format!("edge-{size}"), 1_000),
                },
            );
            assert!(
                fate.summary.contains(want),
                "{user} ({spelled}), limit {limit}, used {used}, SIZE={size}: {}\n{}",
                fate.summary,
                fate.log
            );
            assert!(!fate.summary.contains("bounce"), "{}", fate.summary);
        }
    }
    delete_queue(s.postfix());
}

#[test]
fn ramdir_stopped_means_temporary_failures_only() {
    let mut s = start(true);
    // Park one message (accepted while ramdir runs) in the hold queue.
    {
        let pf = s.postfix.as_mut().expect("a Postfix");
        ramdir_integration::quota::postconf(
            pf,
            &["smtpd_end_of_data_restrictions = check_client_access static:HOLD".into()],
        );
        pf.stop();
        pf.start();
    }
    let qid = send_message(s.postfix(), &["alice@example.org"], "held-24", 1_500);
    wait_for(WAIT, "the message on hold", || {
        queue(s.postfix())
            .iter()
            .any(|m| m.id == qid && m.queue == "hold")
            .then_some(())
    });

    s.ramdir.stop();

    // Dovecot: an internal failure, not "unknown user" or a wrong
    // password.
    let (rc, text) = auth_test_raw(&s, "alice@example.org", "alice-pw");
    assert!(
        rc != Some(0) && text.contains("internal"),
        "doveadm auth test with ramdir stopped: {rc:?} {text}"
    );
    let r = Imap::connect(s.dovecot.imap_addr())
        .and_then(|mut i| i.login("alice@example.org", "alice-pw"))
        .expect("IMAP LOGIN");
    assert!(
        !r.is_ok() && r.text.contains("UNAVAILABLE"),
        "IMAP LOGIN with ramdir stopped: {r}"
    );
    // LMTP: a temporary refusal at RCPT.
    let out = s.lmtp_deliver("alice@example.org", &message("lmtp-down", 1_000));
    let refusal = out.refusal().expect("LMTP must refuse");
    assert!(
        (400..500).contains(&refusal.code),
        "LMTP with ramdir stopped: {out}"
    );

    // Postfix: the held message, released, is deferred (its address
    // resolver asks ramdir for the domain); nothing bounces.
    let pf = s.postfix();
    let mark = pf.maillog_text().len();
    let out = pf
        .tool("postsuper")
        .args(["-H", &qid])
        .output()
        .expect("postsuper -H");
    assert!(out.status.success(), "postsuper -H: {out:?}");
    let out = pf
        .tool("postqueue")
        .arg("-f")
        .output()
        .expect("postqueue -f");
    assert!(out.status.success(), "postqueue -f: {out:?}");
    let line = pf.wait_for_log(&[&format!(" {qid}: "), "status=deferred"]);
    eprintln!("with ramdir stopped: {line}");
    wait_for(WAIT, "the message in the deferred queue", || {
        queue(pf)
            .iter()
            .any(|m| m.id == qid && m.queue == "deferred")
            .then_some(())
    });

    // The same message when Postfix gets as far as LMTP (its domain now
    // listed in main.cf, as if Postfix had resolved it before ramdir
    // went away): Dovecot's userdb lookup fails, LMTP answers 4xx, and
    // Postfix defers again.
    {
        let pf = s.postfix.as_mut().expect("a Postfix");
        ramdir_integration::quota::postconf(pf, &["virtual_mailbox_domains = example.org".into()]);
        pf.stop();
        pf.start();
    }
    let pf = s.postfix();
    let out = pf
        .tool("postqueue")
        .arg("-f")
        .output()
        .expect("postqueue -f");
    assert!(out.status.success(), "postqueue -f: {out:?}");
    let line = pf.wait_for_log(&[&format!(" {qid}: "), "/dv/run/lmtp", "status=deferred"]);
    eprintln!("with ramdir stopped, at LMTP: {line}");
    assert!(line.contains(" said: 4"), "LMTP's answer: {line}");
    let log = &pf.maillog_text()[mark..];
    assert!(
        !log.contains("status=bounced") && !log.contains("non-delivery notification"),
        "something bounced with ramdir stopped:\n{log}"
    );
    // And SMTP refuses new mail with a 4xx.
    let fate = attempt(
        pf,
        &Attempt {
            rcpts: &["alice@example.org"],
            size_param: None,
            message: message("smtp-down", 1_000),
        },
    );
    assert!(
        fate.summary.starts_with("alice: RCPT 4"),
        "SMTP with ramdir stopped: {}",
        fate.summary
    );
    delete_queue(pf);
}

#[test]
fn a_full_user_is_refused_but_can_still_move_mail_to_trash() {
    let s = start(false);
    let full = "full@example.org"; // quota_storage_size=1M, Trash +500M, grace 100K
    let limit: i64 = 1 << 20;

    // ~300 KB messages: three fit under 1 MiB, the fourth would pass
    // limit + grace and is refused (a 4xx: quota_full_tempfail = yes).
    for n in 0..3 {
        s.lmtp_deliver_ok(full, &message(&format!("f{n}"), 300_000));
    }
    let out = s.lmtp_deliver(full, &message("f3", 300_000));
    let refusal = out
        .refusal()
        .unwrap_or_else(|| panic!("a delivery past the limit was accepted: {out}"));
    assert!(
        refusal.code == 452 && refusal.text.contains("4.2.2"),
        "over-quota LMTP delivery: expected 452 4.2.2, got {out}"
    );
    assert_mirror_matches(&s, full, "after the refused delivery");

    // Under the limit before saving, a message may overshoot by the grace.
    s.lmtp_deliver_ok(full, &message("f4-grace", 150_000));
    let at_limit = assert_mirror_matches(&s, full, "after the grace delivery");
    assert!(
        at_limit.storage.unwrap_or_default() > limit,
        "now over the limit: {at_limit}"
    );

    // Over the limit: refused already at RCPT (lmtp_rcpt_check_quota).
    let out = s.lmtp_deliver(full, &message("f5", 1_000));
    assert!(
        out.rcpts.first().is_some_and(|r| r.code == 452),
        "an over-quota user must be refused at RCPT with a 452: {out}"
    );

    // IMAP: Trash has +500M, so copying and moving mail there works.
    let mut i = s.dovecot.imap_login(full, "full-pw");
    let r = i.command("CREATE Trash").expect("CREATE");
    assert!(r.is_ok(), "CREATE Trash: {r}");
    let r = i.select("INBOX").expect("SELECT");
    assert!(
        r.is_ok() && r.untagged.iter().any(|l| l == "* 4 EXISTS"),
        "SELECT INBOX: {r}"
    );
    let r = i.command("COPY 1 Trash").expect("COPY");
    assert!(r.is_ok(), "COPY to Trash of a user over the limit: {r}");
    let after_copy = assert_mirror_matches(&s, full, "after COPY to Trash");
    assert_eq!(after_copy.messages, Some(5));
    assert!(after_copy.storage > at_limit.storage);
    let r = i.command("MOVE 2 Trash").expect("MOVE");
    assert!(r.is_ok(), "MOVE to Trash of a user over the limit: {r}");
    assert_mirror_matches(&s, full, "after MOVE to Trash");

    // INBOX itself stays closed.
    let r = i.append("INBOX", &message("f6", 2_000)).expect("APPEND");
    assert_eq!(r.status, "NO", "APPEND to a full INBOX: {r}");
    let _ = i.logout();
    let trash = MaildirUsage::of(&s.maildir(full).join(".Trash"));
    assert_eq!(
        trash.messages, 2,
        "Trash holds the copied and the moved message"
    );
    assert_mirror_matches(&s, full, "at the end");
    let trouble = s.dovecot.trouble();
    assert!(
        trouble.is_empty(),
        "Dovecot logged trouble:\n{}",
        trouble.join("\n")
    );
}

/// The README's short Dovecot 2.4 snippet says nothing the tested block of
/// docs/dovecot.md does not: each of its lines (comments and indentation
/// aside) is a line of that block.
#[test]
fn the_readme_snippet_is_part_of_the_tested_configuration() {
    ramdir_integration::dovecot::assert_readme_snippet_tested(
        "### Dovecot 2.4 (Debian 13)",
        "\n## ",
        "driver = lua",
        &ramdir_integration::dovecot::documented_24_block(),
    );
}
