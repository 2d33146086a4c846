//! The whole chain: SMTP → Postfix (domains, mailboxes and aliases from
//! ramdir's socketmap) → LMTP → Dovecot (userdb from ramdir's dict) →
//! Maildir.
//!
//! Run on both stacks: Debian 12 (Postfix 3.7, Dovecot 2.3 with the dict
//! passdb/userdb and dict quota) and Debian 13 (Postfix 3.10, Dovecot 2.4
//! with the Lua bridge and `quota_clone` into ramdir's quota dict).
//!
//! One [`MailStack`] with a Postfix whose `virtual_transport` is
//! `lmtp:unix:<stack>/dv/run/lmtp` (Postfix runs unchrooted in the
//! harness, so the absolute path works; Dovecot's listener is mode 0666
//! because Postfix's `lmtp` client runs as `postfix`). Messages are sent
//! over SMTP and must show up as files in the right `Maildir/new/`.
//!
//! Needs root, the packages from `scripts/install-test-deps.sh` and the
//! binary: `cargo build -p ramdir` (or `RAMDIR_BIN=/path/to/ramdir`).

use std::path::{Path, PathBuf};

use ramdir_integration::dovecot::{MailStack, MailStackOptions, send_message};
use ramdir_integration::{DirectoryContent, Flavor};

const USERS: &str = "\
alice@example.org:{PLAIN}alice-pw:5000:5000::::
bob@example.org:{PLAIN}bob-pw:5000:5000::@MAILROOT@/elsewhere/bob::
";

const ALIASES: &str = "\
info@example.org alice@example.org
team@example.org alice@example.org, bob@example.org
";

const DOMAINS: &str = "example.org\n";

/// Files in `dir/new` and `dir/cur`.
fn message_files(maildir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for sub in ["new", "cur"] {
        if let Ok(rd) = std::fs::read_dir(maildir.join(sub)) {
            v.extend(rd.flatten().map(|e| e.path()));
        }
    }
    v
}

/// Wait for the message carrying `token` in `maildir/new/`.
fn wait_for_mail(s: &MailStack, maildir: &Path, token: &str) -> PathBuf {
    ramdir_integration::dovecot::wait_for_mail(s.postfix(), &s.dovecot, maildir, token)
}

/// Send a message of this test's size to `rcpts` (all accepted); its
/// queue id.
fn send(s: &MailStack, rcpts: &[&str], token: &str) -> String {
    send_message(s.postfix(), rcpts, token, 1_500)
}

ramdir_integration::test_on_both_flavors!(smtp_to_maildir_through_lmtp);

fn smtp_to_maildir_through_lmtp(flavor: Flavor) {
    let content = DirectoryContent {
        users: USERS.into(),
        aliases: ALIASES.into(),
        domains: DOMAINS.into(),
        senders: String::new(),
    };
    let s = MailStack::start(
        &content,
        &MailStackOptions {
            postfix: true,
            flavor,
            ..Default::default()
        },
    );
    let alice = s.maildir("alice@example.org");
    let bob = s.dovecot.mail_root().join("elsewhere/bob/Maildir");

    // 1. A mailbox, straight.
    let qid = send(&s, &["alice@example.org"], "direct-1");
    let f = wait_for_mail(&s, &alice, "direct-1");
    let deliveries = s.postfix().wait_deliveries(&qid);
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!(
        (deliveries[0].to.as_str(), deliveries[0].status.as_str()),
        ("alice@example.org", "sent")
    );
    let line = s
        .postfix()
        .wait_for_log(&[&qid, "to=<alice@example.org>", "status=sent"]);
    assert!(
        line.contains("/dv/run/lmtp") && line.contains("Saved"),
        "delivered by LMTP to Dovecot: {line}"
    );
    let text = std::fs::read_to_string(&f).expect("read the delivered file");
    assert!(
        text.contains("\nDelivered-To: alice@example.org\n"),
        "Dovecot's LMTP header: {text}"
    );

    // 2. Through an alias: lands in alice's Maildir (Postfix expands it
    //    with ramdir's aliases table; Dovecot sees the final recipient).
    let qid = send(&s, &["info@example.org"], "alias-1");
    wait_for_mail(&s, &alice, "alias-1");
    let d = s.postfix().wait_deliveries(&qid);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].to, "alice@example.org");
    assert_eq!(d[0].orig_to.as_deref(), Some("info@example.org"));

    // 3. An alias with two targets, one with an explicit home elsewhere.
    let qid = send(&s, &["team@example.org"], "team-1");
    wait_for_mail(&s, &alice, "team-1");
    // (One LMTP transaction with two recipients: Dovecot then adds no
    // Delivered-To header.)
    wait_for_mail(&s, &bob, "team-1");
    let mut to: Vec<String> = s
        .postfix()
        .wait_deliveries(&qid)
        .into_iter()
        .map(|d| d.to)
        .collect();
    to.sort();
    assert_eq!(to, ["alice@example.org", "bob@example.org"]);

    // 4. An address extension (recipient_delimiter = +) still reaches alice.
    send(&s, &["alice+news@example.org"], "ext-1");
    wait_for_mail(&s, &alice, "ext-1");

    // Nothing went anywhere else, and every file belongs to the mail user.
    assert_eq!(message_files(&alice).len(), 4, "alice's Maildir");
    assert_eq!(message_files(&bob).len(), 1, "bob's Maildir");
    assert!(
        !s.dovecot.mail_root().join("example.org/bob").exists(),
        "bob's explicit home must be used, not the template"
    );
    for f in message_files(&alice).iter().chain(&message_files(&bob)) {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(f).expect("stat");
        assert_eq!((m.uid(), m.gid()), (5000, 5000), "{}", f.display());
    }

    // Dovecot's quota dict (2.3) or quota_clone (2.4) counted the
    // deliveries in ramdir.
    let want = s.usage_of_maildir(&alice);
    s.wait_usage(
        "alice@example.org",
        want,
        "alice's quota counters in ramdir",
    );

    let trouble = s.dovecot.trouble();
    assert!(
        trouble.is_empty(),
        "Dovecot logged trouble:\n{}",
        trouble.join("\n")
    );
}
