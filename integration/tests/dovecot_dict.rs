//! Real Dovecot 2.3 against ramdir's dict socket: passdb and userdb with
//! `driver = dict` on the `auth` dict, and the `dict:` quota backend on the
//! `quota` dict, whose counters ramdir keeps in its redb store.
//!
//! Each test runs its own [`MailStack`] (ramdir with `[dict]` and `[quota]`,
//! and a Dovecot started from the stack directory, IMAP on 127.0.0.1 and
//! LMTP on a unix socket); a stack starts in well under a second. Mail goes
//! in through Dovecot's LMTP socket and IMAP APPEND; counters are read back
//! with `ramdir query quota` and compared with what Dovecot reports
//! (`doveadm quota get`, IMAP GETQUOTAROOT) and with what the Maildir holds.
//!
//! Needs root, the packages from `scripts/install-test-deps.sh` (Dovecot
//! core, imapd, lmtpd) and the binary: `cargo build -p ramdir` (or
//! `RAMDIR_BIN=/path/to/ramdir`). `RAMDIR_DOVECOT_DEBUG=1` turns on
//! Dovecot's auth and mail debug logging (every dict request is logged).

use ramdir_integration::DirectoryContent;
use ramdir_integration::dovecot::{MailStack, MailStackOptions, MaildirUsage, Usage, message};

/// Users of the passwd-file. Homes are empty (ramdir's `home_template`,
/// `<mail root>/%d/%n`, gives them) except bob's, which is explicit.
const USERS: &str = "\
alice@example.org:{PLAIN}alice-pw:5000:5000::::
bob@example.org:{PLAIN}bob-pw:5000:5000::@MAILROOT@/elsewhere/bob::userdb_quota_rule=*:storage=100K
carol@example.org:{PLAIN}carol-pw:5000:5000::::
dis@example.org:{PLAIN}dis-pw:5000:5000::::nologin
full@example.org:{PLAIN}full-pw:5000:5000::::userdb_quota_rule=*:storage=100K
erin@other.test:{PLAIN}erin-pw:5000:5000::::
";

const ALIASES: &str = "info@example.org alice@example.org\n";
const DOMAINS: &str = "example.org\nother.test\n";

/// Every login of [`USERS`], sorted.
const ALL_USERS: [&str; 6] = [
    "alice@example.org",
    "bob@example.org",
    "carol@example.org",
    "dis@example.org",
    "erin@other.test",
    "full@example.org",
];

/// A default limit other than ramdir's built-in 10G, to see that the
/// config reaches Dovecot.
const DIRECTORY_EXTRA: &str = "\
default_quota = \"2G\"
quota_rules = [\"Trash:storage=+500M\", \"Junk:storage=+500M\"]
";

fn start() -> MailStack {
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
            ..Default::default()
        },
    )
}

/// ramdir's counters must equal what the Maildir holds.
fn expected(s: &MailStack, user: &str) -> Usage {
    s.maildir_usage(user)
}

/// Wait until ramdir's counters equal the Maildir's content, then check
/// that Dovecot reports the same through the dict, and that reading them
/// did not change them.
fn assert_counters_match(s: &MailStack, user: &str, what: &str) -> Usage {
    let want = s.assert_quota_agrees(user, what);
    // doveadm read the counters without changing them.
    assert_eq!(
        s.usage(user),
        want,
        "{what}: counters changed by doveadm quota get"
    );
    want
}

/// No Panic/Fatal/Error line (nor lost quota updates) in Dovecot's log,
/// apart from lines containing one of `allowed`.
fn assert_quiet(s: &MailStack, allowed: &[&str]) {
    let bad: Vec<String> = s
        .dovecot
        .trouble()
        .into_iter()
        .filter(|l| !allowed.iter().any(|a| l.contains(a)))
        .collect();
    assert!(
        bad.is_empty(),
        "Dovecot logged trouble:\n{}",
        bad.join("\n")
    );
}

// ---------------------------------------------------------------------------

#[test]
fn passdb_logins_through_doveadm_and_imap() {
    let s = start();
    let d = &s.dovecot;

    // doveadm auth test: right password, wrong password, unknown user.
    assert!(
        d.auth_test("alice@example.org", "alice-pw"),
        "alice with the right password"
    );
    assert!(
        !d.auth_test("alice@example.org", "bob-pw"),
        "alice with a wrong password"
    );
    assert!(
        !d.auth_test("alice@example.org", ""),
        "alice with an empty password"
    );
    assert!(
        !d.auth_test("nobody@example.org", "alice-pw"),
        "an unknown user"
    );
    // auth_username_format = %Lu: ramdir sees the lowercased login.
    assert!(
        d.auth_test("ALICE@Example.ORG", "alice-pw"),
        "alice in upper case"
    );
    assert!(
        d.auth_test("erin@other.test", "erin-pw"),
        "a user of the second domain"
    );
    // An alias is not a login (alias_logins = false by default).
    assert!(
        !d.auth_test("info@example.org", "alice-pw"),
        "an alias must not log in"
    );

    // A disabled (nologin) user cannot authenticate with the right
    // password, but still has a userdb entry (mail keeps being delivered).
    assert!(
        !d.auth_test("dis@example.org", "dis-pw"),
        "a nologin user must not authenticate"
    );
    let dis = d
        .user("dis@example.org")
        .expect("doveadm user must still find the nologin user");
    assert_eq!(dis.get("uid").map(String::as_str), Some("5000"), "{dis:?}");

    // IMAP LOGIN over 127.0.0.1.
    let mut i = d.imap_login("alice@example.org", "alice-pw");
    let r = i.select("INBOX").expect("SELECT");
    assert!(r.is_ok(), "SELECT INBOX as alice: {r}");
    let _ = i.logout();

    let mut i = d.imap();
    let r = i.login("alice@example.org", "wrong").expect("LOGIN");
    assert_eq!(r.status, "NO", "IMAP LOGIN with a wrong password: {r}");
    assert!(
        r.text.contains("AUTHENTICATIONFAILED"),
        "IMAP LOGIN with a wrong password: {r}"
    );
    // The same connection can still log in with the right one.
    let r = i.login("alice@example.org", "alice-pw").expect("LOGIN");
    assert!(r.is_ok(), "IMAP LOGIN after a failure: {r}");
    let _ = i.logout();

    let mut i = d.imap();
    let r = i.login("dis@example.org", "dis-pw").expect("LOGIN");
    assert_eq!(
        r.status, "NO",
        "IMAP LOGIN of a nologin user must fail: {r}"
    );
    assert!(
        r.text.contains("AUTHENTICATIONFAILED"),
        "a nologin user must fail like a wrong password: {r}"
    );
    let _ = i.logout();

    let mut i = d.imap();
    let r = i.login("nobody@example.org", "x").expect("LOGIN");
    assert_eq!(r.status, "NO", "IMAP LOGIN of an unknown user: {r}");
    let _ = i.logout();

    assert_quiet(&s, &[]);
}

#[test]
fn userdb_fields_and_user_iteration() {
    let s = start();
    let d = &s.dovecot;
    let root = d.mail_root();

    let alice = d.user("alice@example.org").expect("doveadm user alice");
    let field = |m: &std::collections::BTreeMap<String, String>, k: &str| {
        m.get(k).cloned().unwrap_or_default()
    };
    assert_eq!(field(&alice, "uid"), "5000", "{alice:?}");
    assert_eq!(field(&alice, "gid"), "5000", "{alice:?}");
    assert_eq!(
        field(&alice, "home"),
        format!("{}/example.org/alice", root.display()),
        "home from home_template"
    );
    assert_eq!(
        field(&alice, "quota_rule"),
        "*:storage=2147483648B",
        "default_quota = 2G: {alice:?}"
    );
    assert_eq!(
        field(&alice, "quota_rule2"),
        "Trash:storage=+524288000B",
        "{alice:?}"
    );
    assert_eq!(
        field(&alice, "quota_rule3"),
        "Junk:storage=+524288000B",
        "{alice:?}"
    );

    let bob = d.user("BOB@example.org").expect("doveadm user bob");
    assert_eq!(
        field(&bob, "home"),
        format!("{}/elsewhere/bob", root.display()),
        "explicit home: {bob:?}"
    );
    assert_eq!(
        field(&bob, "quota_rule"),
        "*:storage=102400B",
        "userdb_quota_rule=*:storage=100K: {bob:?}"
    );
    assert_eq!(
        field(&bob, "quota_rule2"),
        "Trash:storage=+524288000B",
        "{bob:?}"
    );

    let erin = d.user("erin@other.test").expect("doveadm user erin");
    assert_eq!(
        field(&erin, "home"),
        format!("{}/other.test/erin", root.display()),
        "{erin:?}"
    );

    assert_eq!(d.user("nobody@example.org"), None, "unknown user");
    assert_eq!(
        d.user("info@example.org"),
        None,
        "an alias has no userdb entry"
    );

    // doveadm user with a mask iterates the userdb (I… shared/userdb/):
    // every user exactly once, nothing else.
    let mut all = d.list_users("*");
    all.sort();
    assert_eq!(all, ALL_USERS, "doveadm user '*'");
    assert_eq!(
        d.list_users("*@other.test"),
        ["erin@other.test"],
        "doveadm user '*@other.test'"
    );
    let mut ex = d.list_users("*@example.org");
    ex.sort();
    assert_eq!(ex.len(), 5, "doveadm user '*@example.org': {ex:?}");

    // The same userdb answer straight from the dict socket.
    let mut auth = s.auth_dict();
    let raw = auth
        .lookup("shared/userdb/alice@example.org", "alice@example.org")
        .expect("dict lookup");
    assert!(
        raw.starts_with("O{") && raw.contains("\"quota_rule\":\"*:storage=2147483648B\""),
        "{raw}"
    );
    assert_eq!(
        auth.lookup("shared/userdb/nobody@example.org", "nobody@example.org")
            .expect("lookup"),
        "N"
    );

    assert_quiet(&s, &[]);
}

#[test]
fn quota_counters_follow_lmtp_append_and_expunge() {
    let s = start();
    let alice = "alice@example.org";
    assert_eq!(
        s.usage(alice),
        Usage::default(),
        "no counters before any mail"
    );

    // LMTP deliveries. The first finds no counter (N) and makes Dovecot
    // count the (empty) mailbox, then increment.
    for (n, size) in [2_000, 5_000, 12_000].into_iter().enumerate() {
        s.lmtp_deliver_ok(alice, &message(&format!("lmtp{n}"), size));
    }
    let after_lmtp = assert_counters_match(&s, alice, "after 3 LMTP deliveries");
    assert_eq!(after_lmtp.messages, Some(3));

    // IMAP APPEND.
    let mut i = s.dovecot.imap_login(alice, "alice-pw");
    for (n, size) in [3_000, 7_000].into_iter().enumerate() {
        let r = i
            .append("INBOX", &message(&format!("append{n}"), size))
            .expect("APPEND");
        assert!(r.is_ok(), "APPEND #{n}: {r}");
    }
    let after_append = assert_counters_match(&s, alice, "after 2 IMAP APPENDs");
    assert_eq!(after_append.messages, Some(5));

    // GETQUOTAROOT shows the same usage, and the limit from the userdb.
    let q = i.quota("INBOX").expect("GETQUOTAROOT");
    let storage = q
        .iter()
        .find(|(r, ..)| r == "STORAGE")
        .unwrap_or_else(|| panic!("no STORAGE in {q:?}"));
    assert_eq!(
        (storage.1, storage.2),
        (
            (after_append.storage.unwrap() as u64).div_ceil(1024),
            2 * 1024 * 1024
        ),
        "GETQUOTAROOT INBOX: {q:?}"
    );

    // Expunge one message.
    let r = i.select("INBOX").expect("SELECT");
    assert!(r.is_ok(), "SELECT: {r}");
    let r = i
        .command("STORE 2 +FLAGS.SILENT (\\Deleted)")
        .expect("STORE");
    assert!(r.is_ok(), "STORE: {r}");
    let r = i.command("EXPUNGE").expect("EXPUNGE");
    assert!(
        r.is_ok() && r.untagged.iter().any(|l| l == "* 2 EXPUNGE"),
        "EXPUNGE: {r}"
    );
    let _ = i.logout();
    let after_expunge = assert_counters_match(&s, alice, "after IMAP EXPUNGE");
    assert_eq!(after_expunge.messages, Some(4));
    assert!(
        after_expunge.storage < after_append.storage,
        "{after_expunge} vs {after_append}"
    );

    // A full recount by Dovecot finds nothing to correct.
    s.dovecot.quota_recalc(alice);
    assert_counters_match(&s, alice, "after doveadm quota recalc");

    // Counters are per user.
    assert_eq!(
        s.usage("carol@example.org"),
        Usage::default(),
        "carol got no mail"
    );
    s.lmtp_deliver_ok("carol@example.org", &message("carol0", 4_000));
    assert_counters_match(&s, "carol@example.org", "carol after one delivery");
    assert_eq!(
        s.usage(alice),
        after_expunge,
        "alice's counters moved with carol's mail"
    );
    // The CLI and the raw dict agree.
    assert_eq!(s.usage_raw(alice), after_expunge);

    assert_quiet(&s, &[]);
}

#[test]
fn missing_or_wrong_counters_are_recalculated() {
    let s = start();
    let alice = "alice@example.org";
    for n in 0..2 {
        s.lmtp_deliver_ok(alice, &message(&format!("m{n}"), 6_000));
    }
    let before = assert_counters_match(&s, alice, "after 2 deliveries");
    let mut dict = s.quota_dict();

    // 1. Delete the storage counter behind Dovecot's back; the next
    //    delivery finds it missing and recounts.
    let r = dict
        .transaction(alice, &["U\tpriv/quota/storage"])
        .expect("unset");
    assert!(r.starts_with('O'), "commit of U storage: {r:?}");
    assert_eq!(
        s.usage_raw(alice),
        Usage {
            storage: None,
            messages: before.messages
        },
        "after U storage"
    );
    s.lmtp_deliver_ok(alice, &message("m2", 6_000));
    let after = assert_counters_match(&s, alice, "delivery after the storage counter was deleted");
    assert_eq!(after.messages, Some(3));

    // 2. Delete both; `doveadm quota get` recounts and writes them back.
    let r = dict
        .transaction(alice, &["U\tpriv/quota/storage", "U\tpriv/quota/messages"])
        .expect("unset both");
    assert!(r.starts_with('O'), "commit of U storage, U messages: {r:?}");
    assert_eq!(
        s.usage(alice),
        Usage::default(),
        "after deleting both counters"
    );
    let want = expected(&s, alice);
    let q = s.dovecot.quota_get(alice);
    assert_eq!(
        (q.storage_kib, q.messages as i64),
        (
            (want.storage.unwrap() as u64).div_ceil(1024),
            want.messages.unwrap()
        ),
        "doveadm quota get after the counters were deleted"
    );
    s.wait_usage(
        alice,
        want,
        "counters written back by Dovecot's recount (doveadm quota get)",
    );

    // 3. Delete both again; IMAP GETQUOTAROOT recounts too.
    let r = dict
        .transaction(alice, &["U\tpriv/quota/storage", "U\tpriv/quota/messages"])
        .expect("unset both");
    assert!(r.starts_with('O'), "{r:?}");
    let mut i = s.dovecot.imap_login(alice, "alice-pw");
    let q = i.quota("INBOX").expect("GETQUOTAROOT");
    let _ = i.logout();
    let storage = q
        .iter()
        .find(|(r, ..)| r == "STORAGE")
        .unwrap_or_else(|| panic!("{q:?}"));
    assert_eq!(
        storage.1,
        (want.storage.unwrap() as u64).div_ceil(1024),
        "GETQUOTAROOT after deletion: {q:?}"
    );
    s.wait_usage(
        alice,
        want,
        "counters written back by Dovecot's recount (GETQUOTAROOT)",
    );

    // 4. A wrong value is fixed by `doveadm quota recalc`.
    let r = dict
        .transaction(
            alice,
            &["S\tpriv/quota/storage\t1", "S\tpriv/quota/messages\t99"],
        )
        .expect("set");
    assert!(r.starts_with('O'), "{r:?}");
    assert_eq!(
        s.usage(alice),
        Usage {
            storage: Some(1),
            messages: Some(99)
        }
    );
    s.dovecot.quota_recalc(alice);
    assert_counters_match(&s, alice, "after doveadm quota recalc of wrong counters");

    // 5. An increment of a missing counter is refused with N (so Dovecot
    //    recounts), and creates nothing (protocols.md G14).
    let carol = "carol@example.org";
    let r = dict
        .transaction(
            carol,
            &["A\tpriv/quota/storage\t1000", "A\tpriv/quota/messages\t1"],
        )
        .expect("inc");
    assert!(
        r.starts_with('N'),
        "A on missing counters must commit with N, got {r:?}"
    );
    assert_eq!(
        s.usage_raw(carol),
        Usage::default(),
        "A on a missing counter must not create it"
    );
    //    ... and Dovecot's own first delivery for carol then gets it right.
    s.lmtp_deliver_ok(carol, &message("c0", 3_000));
    assert_counters_match(&s, carol, "carol's first delivery");

    assert_quiet(&s, &[]);
}

#[test]
fn committed_counters_survive_kill_9() {
    let mut s = start();
    let alice = "alice@example.org";
    for n in 0..3 {
        s.lmtp_deliver_ok(alice, &message(&format!("k{n}"), 4_000 + 1_000 * n));
    }
    s.lmtp_deliver_ok("carol@example.org", &message("c", 2_500));
    let before = assert_counters_match(&s, alice, "before kill -9");
    let before_carol = assert_counters_match(&s, "carol@example.org", "carol before kill -9");

    s.kill_ramdir(); // SIGKILL: no chance to flush anything
    s.restart_ramdir();
    assert_eq!(
        s.usage(alice),
        before,
        "alice's counters after kill -9 and restart"
    );
    assert_eq!(
        s.usage_raw("carol@example.org"),
        before_carol,
        "carol's counters after kill -9 and restart"
    );

    // Dovecot reconnects (its idle auth-worker connections died with the
    // old process) and keeps counting from the recovered values.
    assert!(
        s.dovecot.auth_test(alice, "alice-pw"),
        "auth after the restart"
    );
    s.lmtp_deliver_ok(alice, &message("k3", 9_000));
    let after = assert_counters_match(&s, alice, "delivery after the restart");
    assert_eq!(after.messages, Some(4));

    // Once more, killing right after Dovecot's update was acknowledged.
    s.lmtp_deliver_ok(alice, &message("k4", 1_500));
    let before = assert_counters_match(&s, alice, "before the second kill -9");
    s.kill_ramdir();
    s.restart_ramdir();
    assert_eq!(s.usage(alice), before, "after the second kill -9");

    // Losing the dict connections mid-run may be logged by Dovecot's auth
    // workers; nothing else may go wrong.
    assert_quiet(
        &s,
        &[
            "dict(proxy)",
            "Connection closed",
            "Disconnected",
            "connect(",
        ],
    );
}

#[test]
fn full_mailbox_can_still_move_mail_to_trash() {
    let s = start();
    let full = "full@example.org"; // *:storage=100K, Trash +500M; quota_grace 10%

    // ~30 KB messages: three fit under 100 KiB, the fourth would pass
    // limit + grace and is refused at the end of DATA.
    for n in 0..3 {
        s.lmtp_deliver_ok(full, &message(&format!("f{n}"), 30_000));
    }
    let out = s.lmtp_deliver(full, &message("f3", 30_000));
    let refusal = out
        .refusal()
        .unwrap_or_else(|| panic!("a delivery past the limit was accepted: {out}"));
    assert!(
        matches!(refusal.code, 452 | 552) && refusal.text.contains(".2.2"),
        "over-quota LMTP delivery: expected 452/552 x.2.2, got {out}"
    );
    assert_counters_match(&s, full, "after the refused delivery");

    // Under the limit before saving, a message may overshoot by the grace.
    s.lmtp_deliver_ok(full, &message("f4-grace", 15_000));
    let at_limit = assert_counters_match(&s, full, "after the grace delivery");
    assert!(
        at_limit.storage.unwrap() > 100 * 1024,
        "now over the limit: {at_limit}"
    );

    // Over the limit: refused already at RCPT (lmtp_rcpt_check_quota).
    let out = s.lmtp_deliver(full, &message("f5", 1_000));
    let refusal = out
        .refusal()
        .unwrap_or_else(|| panic!("a delivery to a full mailbox was accepted: {out}"));
    assert!(
        matches!(refusal.code, 452 | 552) && refusal.text.contains(".2.2"),
        "LMTP to a full mailbox: {out}"
    );
    assert!(
        out.rcpts.first().is_some_and(|r| !r.is_positive()),
        "an over-quota user must be refused at RCPT: {out}"
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
    assert!(r.is_ok(), "COPY to Trash of a user at the limit: {r}");
    let after_copy = assert_counters_match(&s, full, "after COPY to Trash");
    assert_eq!(after_copy.messages, Some(5));
    assert!(after_copy.storage > at_limit.storage);
    let r = i.command("MOVE 2 Trash").expect("MOVE");
    assert!(r.is_ok(), "MOVE to Trash of a user at the limit: {r}");
    assert_counters_match(&s, full, "after MOVE to Trash");

    // INBOX itself stays closed: APPEND and LMTP are refused.
    let r = i.append("INBOX", &message("f6", 2_000)).expect("APPEND");
    assert_eq!(r.status, "NO", "APPEND to a full INBOX: {r}");
    assert!(
        r.text.contains("OVERQUOTA") || r.text.contains("uota"),
        "APPEND to a full INBOX: {r}"
    );
    let _ = i.logout();
    let out = s.lmtp_deliver(full, &message("f7", 1_000));
    assert!(
        out.refusal().is_some(),
        "LMTP to a full INBOX after the moves: {out}"
    );

    let trash = MaildirUsage::of(&s.maildir(full).join(".Trash"));
    assert_eq!(
        trash.messages, 2,
        "Trash holds the copied and the moved message"
    );
    assert_counters_match(&s, full, "at the end");
    assert_quiet(&s, &[]);
}

/// The README's Dovecot 2.3 snippets say nothing the tested blocks of
/// docs/dovecot.md do not: each of their lines (comments and indentation
/// aside) is a line of the block the harness runs.
#[test]
fn the_readme_snippets_are_part_of_the_tested_configuration() {
    use ramdir_integration::dovecot::{assert_readme_snippet_tested, documented_block};
    for needle in ["driver = dict", "password_key"] {
        assert_readme_snippet_tested(
            "### Dovecot 2.3 (Debian 12)",
            "\n### ",
            needle,
            &documented_block("## dovecot.conf (Dovecot 2.3, Debian 12)", needle),
        );
    }
}
