//! Real Postfix with `postfix-ramdir.so`: the `ramdir:` lookup table
//! loaded in-process, reading the snapshot files ramdir publishes. Every
//! scenario runs on Debian 12's Postfix 3.7 and on Debian 13's 3.10 (the
//! same host-built plugin, loaded by the root's Postfix).
//!
//! Needs root, the packages from `scripts/install-test-deps.sh`, and the
//! builds: `cargo build -p ramdir -p postfix-ramdir`.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use ramdir_integration::postfix_map::{Answer, MapStack, MapStackOptions, set_group_writable};
use ramdir_integration::{
    DirectoryContent, Flavor, Reply, Smtp, WAIT, process_alive, write_atomic,
};

ramdir_integration::test_on_both_flavors!(
    postconf_lists_the_type_and_postmap_answers_like_the_socketmap,
    a_chrooted_smtpd_answers_from_the_plugin_and_sees_changes_live,
    a_plugin_file_writable_by_others_is_refused_and_diagnosed,
    a_user_added_in_ldap_is_accepted_by_the_same_smtpd,
);

const USERS: &str = "\
alice@example.org:{PLAIN}alice-pw:5000:5000::/home/alice::
bob@example.org:{PLAIN}bob-pw:5000:5000::/home/bob::
Carol@Example.org:{PLAIN}carol-pw:5000:5000::/home/carol::
real@catchall.test:{PLAIN}real-pw:5000:5000::/home/real::
tagged+x@example.org:{PLAIN}t-pw:5000:5000::/home/tagged::
";

const ALIASES: &str = "\
info@example.org alice@example.org
team@example.org info@example.org, bob@example.org, ext@remote.test
copy@example.org copy@example.org, carol@example.org
alice@example.org alice@example.org, archive@remote.test
@catchall.test bob@example.org
@aliasdomain.test @example.org
loop1@example.org loop2@example.org
loop2@example.org loop1@example.org
half@example.org loop1@example.org, bob@example.org
";

const DOMAINS: &str = "\
example.org
catchall.test
aliasdomain.test
empty.test
";

const SENDERS: &str = "\
boss@example.org alice@example.org, bob@example.org
@example.org admin@example.org
";

/// A client address outside every domain of ours.
const STRANGER: &str = "sender@outside.test";

fn content() -> DirectoryContent {
    DirectoryContent {
        users: USERS.into(),
        aliases: ALIASES.into(),
        domains: DOMAINS.into(),
        senders: SENDERS.into(),
    }
}

/// Keys Postfix may send: case, extensions, catch-all after a mailbox,
/// alias chains and loops, alias domains, and keys that are not addresses.
const KEYS: &[&str] = &[
    "example.org",
    "EXAMPLE.ORG",
    "example.org.",
    "empty.test",
    "catchall.test",
    "aliasdomain.test",
    "other.test",
    "[127.0.0.1]",
    "alice@example.org",
    "Alice@EXAMPLE.org",
    "alice+news@example.org",
    "ALICE+News@Example.Org",
    "bob@example.org",
    "bob+x+y@example.org",
    "carol@example.org",
    "CAROL@example.org",
    "info@example.org",
    "info+tag@example.org",
    "team@example.org",
    "copy@example.org",
    "loop1@example.org",
    "half@example.org",
    "nobody@example.org",
    "nobody+x@example.org",
    "anything@catchall.test",
    "real@catchall.test",
    "real+x@catchall.test",
    "Any+Thing@CatchAll.Test",
    "bob@aliasdomain.test",
    "alice+z@aliasdomain.test",
    "bob+z@aliasdomain.test",
    "nobody@aliasdomain.test",
    "tagged+x@example.org",
    "tagged+y@example.org",
    "boss@example.org",
    "someone@example.org",
    "ext@remote.test",
    "@example.org",
    "\"\"@example.org",
    "\"alice\"@example.org",
    "alice@[127.0.0.1]",
    "postmaster",
    "a@b@example.org",
    "élise@example.org",
];

fn options(flavor: Flavor) -> MapStackOptions {
    MapStackOptions {
        flavor,
        ..MapStackOptions::default()
    }
}

fn postconf_lists_the_type_and_postmap_answers_like_the_socketmap(flavor: Flavor) {
    let s = MapStack::start(&content(), &options(flavor));
    let types = s.postconf_m();
    assert!(
        types.iter().any(|t| t == "ramdir"),
        "postconf -m: {types:?}"
    );

    let mut found = 0;
    let mut failed = 0;
    for table in ["domains", "mailboxes", "aliases", "senders"] {
        for key in KEYS {
            let want = s.postmap(&MapStack::socketmap_map(table), key);
            let got = s.postmap(&s.ramdir_map(table), key);
            match (&want, &got) {
                (Answer::Failed(_), Answer::Failed(_)) => failed += 1,
                _ => assert_eq!(got, want, "{table} {key:?}: ramdir: vs socketmap:"),
            }
            if matches!(got, Answer::Found(_)) {
                found += 1;
            }
        }
    }
    // The table exercises every outcome, not just misses.
    assert!(found >= 40, "only {found} hits");
    assert!(
        failed >= 2,
        "the alias loops must fail temporarily ({failed})"
    );
    assert_eq!(
        s.postmap(&s.ramdir_map("aliases"), "team@example.org"),
        Answer::Found(
            "alice@example.org,archive@remote.test,bob@example.org,ext@remote.test".into()
        )
    );
    assert_eq!(
        s.postmap(&s.ramdir_map("aliases"), "bob+z@aliasdomain.test"),
        Answer::Found("bob+z@example.org".into())
    );
    // A table name the plugin does not serve: the open fails, postmap says why.
    match s.postmap(&s.ramdir_map("users"), "alice@example.org") {
        Answer::Failed(e) => assert!(e.contains("unknown table"), "{e}"),
        other => panic!("ramdir:…/users: {other:?}"),
    }
}

fn expect(r: std::io::Result<Reply>, code: u16, what: &str) -> Reply {
    let r = r.unwrap_or_else(|e| panic!("{what}: SMTP I/O error {e}"));
    assert_eq!(r.code, code, "{what}: got {r}");
    r
}

/// RCPT TO in the open transaction until it gets `code`; returns the time
/// it took. Panics after [`WAIT`].
fn rcpt_until(smtp: &mut Smtp, rcpt: &str, code: u16) -> Duration {
    let start = Instant::now();
    loop {
        let r = smtp.rcpt_to(rcpt).expect("RCPT");
        if r.code == code {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < WAIT,
            "RCPT {rcpt}: still {r} after {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pid of the smtpd process that logged the last `connect from`.
fn smtpd_pid(s: &MapStack) -> i32 {
    let line = s.postfix.wait_for_log(&["smtpd[", "connect from"]);
    let lines = s.postfix.log_lines_with(&["smtpd[", "connect from"]);
    let line = lines.last().unwrap_or(&line);
    let start = line.find("smtpd[").expect("smtpd[") + 6;
    let end = line[start..].find(']').expect("]") + start;
    line[start..end].parse().expect("smtpd pid")
}

/// The control word (`generation << 8 | state`) of a map directory.
fn control_word(map: &Path) -> u64 {
    let f = std::fs::File::open(map.join("control")).expect("open control");
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, 16).expect("read control");
    u64::from_le_bytes(b)
}

/// Announce generation `g` with these bytes as its file (what a damaged
/// snapshot looks like to the plugin).
fn announce(map: &Path, g: u64, bytes: &[u8]) {
    std::fs::write(map.join(format!("snap-{g:016x}")), bytes).expect("write snap");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(map.join("control"))
        .expect("open control");
    f.write_all_at(&(g << 8).to_le_bytes(), 16)
        .expect("write control");
}

fn a_chrooted_smtpd_answers_from_the_plugin_and_sees_changes_live(flavor: Flavor) {
    let mut s = MapStack::start(
        &content(),
        &MapStackOptions {
            chroot: true,
            ..options(flavor)
        },
    );
    let mut smtp = s.postfix.smtp();
    expect(smtp.ehlo("client.test"), 250, "EHLO");
    let pid = smtpd_pid(&s);
    let root = std::fs::read_link(format!("/proc/{pid}/root")).expect("smtpd root");
    assert_eq!(
        root,
        flavor.host_path(s.postfix.spool()),
        "smtpd {pid} is not chrooted"
    );
    expect(smtp.mail_from(STRANGER), 250, "MAIL FROM");
    expect(smtp.rcpt_to("alice@example.org"), 250, "mailbox");
    expect(
        smtp.rcpt_to("Alice+tag@EXAMPLE.org"),
        250,
        "mailbox, case and extension",
    );
    let r = expect(smtp.rcpt_to("nobody@example.org"), 550, "unknown user");
    assert!(r.text.contains("5.1.1"), "{r}");
    expect(smtp.rcpt_to("team@example.org"), 250, "alias");
    expect(smtp.rcpt_to("anyone@catchall.test"), 250, "catch-all");
    expect(smtp.rcpt_to("bob@aliasdomain.test"), 250, "alias domain");

    // A user added to a source file, in the same smtpd process.
    let mut users = USERS.to_string();
    users.push_str("dave@example.org:{PLAIN}dave-pw:5000:5000::/home/dave::\n");
    write_atomic(&s.files.users, &users);
    s.ramdir.reload();
    let took = rcpt_until(&mut smtp, "dave@example.org", 250);
    eprintln!("new user accepted by smtpd {pid} {took:?} after the reload signal");

    // ramdir stopped: the last published generation keeps answering.
    s.ramdir.stop();
    expect(
        smtp.rcpt_to("dave@example.org"),
        250,
        "ramdir stopped, existing user",
    );
    let r = expect(
        smtp.rcpt_to("nobody@example.org"),
        550,
        "ramdir stopped, unknown",
    );
    assert!(r.text.contains("5.1.1"), "{r}");

    // With on_stop = "unavailable", a stop makes Postfix defer.
    s.rewrite_config("on_stop = \"unavailable\"\n");
    s.ramdir.restart();
    rcpt_until(&mut smtp, "alice@example.org", 250);
    s.ramdir.stop();
    let r = expect(smtp.rcpt_to("alice@example.org"), 451, "table unavailable");
    assert!(r.text.contains("4.3.0"), "{r}");

    // Damaged snapshots: a temporary failure, never a crash or a reject.
    let g = control_word(&s.map_dir) >> 8;
    let good = std::fs::read(s.map_dir.join(format!("snap-{g:016x}"))).expect("read snap");
    let mut corrupt = good.clone();
    for b in &mut corrupt[130..good.len().min(600)] {
        *b ^= 0x5a;
    }
    let damaged: [(&str, Vec<u8>); 3] = [
        ("corrupt", corrupt),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("empty", Vec::new()),
    ];
    for (i, (what, bytes)) in damaged.iter().enumerate() {
        announce(&s.map_dir, g + 1 + i as u64, bytes);
        for rcpt in ["alice@example.org", "nobody@example.org"] {
            let r = expect(smtp.rcpt_to(rcpt), 451, &format!("{what} snapshot, {rcpt}"));
            assert!(r.text.contains("4.3."), "{what}: {r}");
        }
    }
    assert!(process_alive(pid), "smtpd {pid} died");
    expect(smtp.command("RSET"), 250, "RSET");

    // ramdir back: a fresh generation, the same process accepts again.
    s.ramdir.restart();
    expect(smtp.mail_from(STRANGER), 250, "MAIL FROM");
    rcpt_until(&mut smtp, "dave@example.org", 250);
    let _ = smtp.quit();

    let log = s.postfix.maillog_text();
    for bad in [
        "status=bounced",
        "has changed -- restarting",
        "fatal:",
        "panic:",
    ] {
        assert!(!log.contains(bad), "maillog has {bad:?}:\n{log}");
    }
}

fn a_plugin_file_writable_by_others_is_refused_and_diagnosed(flavor: Flavor) {
    let s = MapStack::start(&content(), &options(flavor));
    let check = || {
        let out = std::process::Command::new(ramdir_integration::ramdir::ramdir_bin())
            .args(["check-config"])
            .arg(&s.config)
            .output()
            .expect("run ramdir check-config");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(check().contains("postfix plugin: ok"), "{}", check());
    for file in [s.meta.so.clone(), s.meta.cf.clone()] {
        set_group_writable(&file, true);
        // postconf reads the registration (and skips a writable cf file);
        // the .so is checked when a table is opened.
        let listed = s.postconf_m().iter().any(|t| t == "ramdir");
        assert_eq!(
            listed,
            file == s.meta.so,
            "postconf -m with {}",
            file.display()
        );
        match s.postmap(&s.ramdir_map("mailboxes"), "alice@example.org") {
            Answer::Failed(e) => assert!(e.contains("unsupported dictionary type"), "{e}"),
            other => panic!("{}: {other:?}", file.display()),
        }
        let text = check();
        assert!(
            text.contains(&format!("postfix plugin: {}", file.display()))
                && text.contains("chmod go-w"),
            "{text}"
        );
        set_group_writable(&file, false);
        assert_eq!(
            s.postmap(&s.ramdir_map("mailboxes"), "alice@example.org"),
            Answer::Found("alice@example.org".into())
        );
    }
}

fn a_user_added_in_ldap_is_accepted_by_the_same_smtpd(flavor: Flavor) {
    use ramdir_integration::slapd::{self, SVC_PW, Slapd, user_ldif, user_mail, users_ldif};
    slapd::require_slapd();
    let dir = ramdir_integration::StackDir::for_flavor(flavor);
    let slapd = Slapd::start(&dir, &users_ldif(2));
    let secret = dir.join("ldap.secret");
    slapd::write_secret(&secret, SVC_PW, 0o600);
    let ldap = slapd.ramdir_section(&slapd.ldapi_url(), &secret, "");
    let s = MapStack::start_in(
        dir,
        Some(slapd),
        &content(),
        &MapStackOptions {
            chroot: true,
            ramdir_extra: ldap,
            ..options(flavor)
        },
    );
    let mut smtp = s.postfix.smtp();
    expect(smtp.ehlo("client.test"), 250, "EHLO");
    let pid = smtpd_pid(&s);
    expect(smtp.mail_from(STRANGER), 250, "MAIL FROM");
    // The LDAP users arrive after the initial sync; the file users at once.
    expect(smtp.rcpt_to("alice@example.org"), 250, "file user");
    rcpt_until(&mut smtp, &user_mail(1), 250);
    let r = expect(smtp.rcpt_to(&user_mail(3)), 550, "not yet in LDAP");
    assert!(r.text.contains("5.1.1"), "{r}");

    let slapd = s.slapd.as_ref().expect("slapd");
    slapd.ldapadd(&user_ldif(3));
    let took = rcpt_until(&mut smtp, &user_mail(3), 250);
    eprintln!("LDAP user accepted by smtpd {pid} {took:?} after ldapadd returned");
    assert!(process_alive(pid), "smtpd {pid} died");
    let _ = smtp.quit();
    let log = s.postfix.maillog_text();
    assert!(!log.contains("has changed -- restarting"), "{log}");
}
