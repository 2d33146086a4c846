//! Real Dovecot with ramdir's in-process auth module (`libauthdb_ramdir.so`,
//! `ffi/dovecot`): passdb and userdb `driver = ramdir` on the snapshot files
//! ramdir publishes under `[dovecot_map]`, configured exactly as
//! docs/dovecot-module.md gives it; the quota part stays on ramdir's dict.
//!
//! Shown on Dovecot 2.3 (Debian 12) and 2.4 (the Debian 13 root, module
//! from `scripts/build-dovecot24-module.sh`): `doveadm auth test`
//! right/wrong/unknown, IMAP LOGIN, a disabled user refused, `doveadm user`
//! with the version's quota fields, `doveadm user '*'`, LMTP delivery through
//! Postfix, a user added in a file authenticating within a second with the
//! same auth process, corrupt and not-authoritative snapshots giving an
//! internal failure (LMTP 4xx) and never "unknown user", and the files
//! Postfix can read holding no password or hash.
//!
//! Needs root, the packages from `scripts/install-test-deps.sh` and the
//! builds: `cargo build -p ramdir -p dovecot-ramdir` (or `RAMDIR_BIN`,
//! `RAMDIR_DOVECOT_MODULE`). The module is installed in Dovecot's auth
//! module directory while a test runs and removed afterwards.

use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use ramdir_integration::dovecot::{
    Dovecot, MailStack, MailStackOptions, ModuleInstall, dovecot_gid, message, require_dovecot_on,
    send_message, wait_for_mail,
};
use ramdir_integration::slapd::{
    self, RamdirStats, Slapd, user_ldif, user_mail, user_password, write_secret,
};
use ramdir_integration::{
    DirectoryContent, Flavor, Ramdir, StackDir, WAIT, process_alive, set_mode, write_atomic,
};

const USERS: &str = "\
alice@example.org:{PLAIN}alice-pw:5000:5000::::
bob@example.org:{SHA512-CRYPT}$6$saltsalt$pkqyANKCAOeeWmhwck54C3T3yfOcxtv2K7HRyENLnWZ7yyDavjLd4EW0gHFSoFy3UA9KPX5OWMFUPq6bZ6U9..:5000:5000::::userdb_quota_rule=*:storage=100K
dis@example.org:{PLAIN}dis-pw:5000:5000::::nologin
erin@other.test:{PLAIN}erin-pw:5000:5000::::
";
/// bob's password (the SHA512-CRYPT hash above).
const BOB_PW: &str = "bob-pw";

const ALL_USERS: [&str; 4] = [
    "alice@example.org",
    "bob@example.org",
    "dis@example.org",
    "erin@other.test",
];

fn content() -> DirectoryContent {
    DirectoryContent {
        users: USERS.into(),
        aliases: "info@example.org alice@example.org\n".into(),
        domains: "example.org\nother.test\n".into(),
        senders: String::new(),
    }
}

fn start(flavor: Flavor, postfix: bool) -> MailStack {
    MailStack::start(
        &content(),
        &MailStackOptions {
            directory_extra: "default_quota = \"2G\"\n".into(),
            postfix,
            auth_module: true,
            flavor,
            ..Default::default()
        },
    )
}

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

/// Whether `doveadm auth test` reported an internal failure (2.3:
/// `code=temp_fail`; 2.4: "internal failure").
fn tempfailed(text: &str) -> bool {
    text.contains("temp_fail") || text.contains("internal")
}

/// [`auth_pid`] for a bare [`Dovecot`].
fn auth_pid_of(d: &Dovecot) -> i32 {
    let master = d.master_pid().expect("master pid");
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if ppid == Some(master) && comm.trim() == "auth" {
            return pid;
        }
    }
    panic!("no auth child of master {master}");
}

/// The pid of this instance's auth process (the master's child running
/// `auth`, not an auth-worker).
fn auth_pid(s: &MailStack) -> i32 {
    auth_pid_of(&s.dovecot)
}

fn map_dir(s: &MailStack) -> &Path {
    s.dovecot_map
        .as_deref()
        .expect("stack with the auth module")
}

/// The control word (`generation << 8 | state`) of a map directory.
fn control_word(map: &Path) -> u64 {
    let f = std::fs::File::open(map.join("control")).expect("open control");
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, 16).expect("read control");
    u64::from_le_bytes(b)
}

/// The control word once it has not changed for a second (ramdir done
/// publishing).
fn settled(map: &Path) -> u64 {
    let (mut word, mut since) = (control_word(map), Instant::now());
    while since.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(50));
        let w = control_word(map);
        if w != word {
            (word, since) = (w, Instant::now());
        }
    }
    word
}

/// Announce generation `g` with these bytes as its file.
fn announce(map: &Path, g: u64, bytes: &[u8]) {
    std::fs::write(map.join(format!("snap-{g:016x}")), bytes).expect("write snap");
    std::fs::set_permissions(
        map.join(format!("snap-{g:016x}")),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod snap");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(map.join("control"))
        .expect("open control");
    f.write_all_at(&(g << 8).to_le_bytes(), 16)
        .expect("write control");
}

/// The file of the current generation with the header's authoritative flag
/// cleared (and the checksum redone): what ramdir writes while an LDAP
/// source is loading or has lost its sync.
fn not_authoritative(good: &[u8], g: u64) -> Vec<u8> {
    let mut b = good.to_vec();
    // generation at 16 (and a base names itself at 24), flags at 72,
    // FNV-1a 64 of bytes 0..120 at 120 (ffi/snapshot/src/format.rs).
    b[16..24].copy_from_slice(&g.to_le_bytes());
    b[24..32].copy_from_slice(&g.to_le_bytes());
    let flags = u64::from_le_bytes(b[72..80].try_into().expect("8 bytes")) & !1;
    b[72..80].copy_from_slice(&flags.to_le_bytes());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in &b[..120] {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    b[120..128].copy_from_slice(&h.to_le_bytes());
    b
}

/// How long a change may take to reach the auth process in these tests.
/// The goal is 1 s and the measured times are printed (about 0.56 s after a
/// file reload, less after an LDAP change). A login tried before the new
/// generation is published fails, and Dovecot holds a failed reply back for
/// `auth_failure_delay` (2 s), so the limit allows one such failure.
const LIVE_LIMIT: Duration = Duration::from_secs(3);

#[test]
fn passdb_and_userdb_through_the_module_23() {
    passdb_and_userdb_through_the_module(Flavor::Debian12);
}

#[test]
fn passdb_and_userdb_through_the_module_24() {
    passdb_and_userdb_through_the_module(Flavor::Debian13);
}

fn passdb_and_userdb_through_the_module(flavor: Flavor) {
    let s = start(flavor, false);
    let d = &s.dovecot;

    // doveadm auth test: right, wrong, unknown, case-folded, a crypt scheme.
    assert!(d.auth_test("alice@example.org", "alice-pw"), "alice");
    assert!(d.auth_test("Alice@Example.ORG", "alice-pw"), "case");
    assert!(d.auth_test("bob@example.org", BOB_PW), "bob, SHA512-CRYPT");
    assert!(!d.auth_test("bob@example.org", "alice-pw"), "bob, wrong");
    assert!(!d.auth_test("alice@example.org", "wrong"), "wrong password");
    let (rc, text) = auth_test_raw(&s, "nobody@example.org", "x");
    assert!(
        rc != Some(0) && text.contains("auth failed") && !tempfailed(&text),
        "unknown user: {rc:?} {text}"
    );
    // A disabled (nologin) user cannot log in, but keeps its userdb.
    assert!(!d.auth_test("dis@example.org", "dis-pw"), "disabled user");
    assert!(
        d.user("dis@example.org").is_some(),
        "disabled user's userdb"
    );

    // IMAP LOGIN (PLAIN over the auth client protocol).
    let mut i = d.imap_login("alice@example.org", "alice-pw");
    assert!(i.select("INBOX").expect("SELECT").is_ok());
    let _ = i.logout();
    let r = ramdir_integration::dovecot::Imap::connect(d.imap_addr())
        .and_then(|mut i| i.login("dis@example.org", "dis-pw"))
        .expect("IMAP LOGIN");
    assert!(!r.is_ok(), "disabled user logged in over IMAP: {r}");

    // doveadm user: the fields, in the version's own quota names.
    let u = d.user("bob@example.org").expect("bob's userdb");
    assert_eq!(u.get("uid").map(String::as_str), Some("5000"), "{u:?}");
    assert_eq!(u.get("gid").map(String::as_str), Some("5000"), "{u:?}");
    let a = d.user("alice@example.org").expect("alice's userdb");
    let (limit, bob, alice, other) = if flavor.dovecot_24() {
        ("quota_storage_size", "102400B", "2147483648B", "quota_rule")
    } else {
        (
            "quota_rule",
            "*:storage=102400B",
            "*:storage=2147483648B",
            "quota_storage_size",
        )
    };
    assert_eq!(u.get(limit).map(String::as_str), Some(bob), "{u:?}");
    assert_eq!(a.get(limit).map(String::as_str), Some(alice), "{a:?}");
    assert!(
        !u.contains_key(other) && !a.contains_key(other),
        "{u:?} {a:?}"
    );
    assert!(
        a.get("home")
            .is_some_and(|h| h.ends_with("/example.org/alice")),
        "{a:?}"
    );
    assert!(
        d.user("nobody@example.org").is_none(),
        "unknown user's userdb"
    );

    // passdb credentials lookup: `doveadm auth lookup` is auth-master's
    // PASS request, which Dovecot answers with the passdb's
    // lookup_credentials (auth-master-connection.c, master_input_pass), not
    // verify_plain: found with the passdb's fields, unknown and disabled
    // users not found (and not a tempfail).
    let lookup = |user: &str| {
        let out = d.doveadm(&["auth", "lookup", user]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = lookup("alice@example.org");
    eprintln!("doveadm auth lookup alice@example.org:\n{text}");
    assert!(
        ok && text.contains("passdb: alice@example.org"),
        "credentials lookup: {text}"
    );
    let (ok, text) = lookup("Alice@Example.ORG");
    assert!(
        ok && text.contains("passdb: alice@example.org"),
        "credentials lookup, case: {text}"
    );
    for user in ["nobody@example.org", "dis@example.org"] {
        let (ok, text) = lookup(user);
        assert!(
            !ok && !tempfailed(&text),
            "credentials lookup of {user}: {text}"
        );
    }

    // doveadm user '*': every user, through the module's iteration.
    let mut all = d.list_users("*");
    all.sort();
    assert_eq!(all, ALL_USERS, "doveadm user '*'");

    // The module is what answered: loaded in the auth process.
    let pid = auth_pid(&s);
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    assert!(
        maps.contains("libauthdb_ramdir.so"),
        "auth {pid} has not loaded the module"
    );
}

#[test]
fn live_changes_and_failures_keep_the_auth_process_and_never_say_unknown_23() {
    live_changes_and_failures(Flavor::Debian12);
}

#[test]
fn live_changes_and_failures_keep_the_auth_process_and_never_say_unknown_24() {
    live_changes_and_failures(Flavor::Debian13);
}

fn live_changes_and_failures(flavor: Flavor) {
    let s = start(flavor, false);
    let d = &s.dovecot;
    assert!(d.auth_test("alice@example.org", "alice-pw"));
    let pid = auth_pid(&s);

    // A user added to a source file logs in within a second, same process.
    let mut users = USERS.to_string();
    users.push_str("dave@example.org:{PLAIN}dave-pw:5000:5000::::\n");
    write_atomic(&s.files.users, &users);
    s.ramdir.reload();
    let t = Instant::now();
    while !d.auth_test("dave@example.org", "dave-pw") {
        assert!(
            t.elapsed() < LIVE_LIMIT,
            "dave not authenticated within {LIVE_LIMIT:?} of the reload"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("dave authenticated {:?} after the reload", t.elapsed());
    assert_eq!(auth_pid(&s), pid, "the auth process changed");

    // Not authoritative: a miss is an internal failure, a hit still answers.
    // (First let ramdir finish publishing: the file watcher and the signal
    // may each reload, and a later publication would replace ours.)
    let map = map_dir(&s).to_path_buf();
    let g = settled(&map) >> 8;
    let good = std::fs::read(map.join(format!("snap-{g:016x}"))).expect("read snap");
    announce(&map, g + 1, &not_authoritative(&good, g + 1));
    assert!(
        d.auth_test("alice@example.org", "alice-pw"),
        "a hit while not authoritative"
    );
    let (rc, text) = auth_test_raw(&s, "nobody@example.org", "x");
    assert!(
        rc != Some(0) && tempfailed(&text),
        "unknown user while not authoritative: {rc:?} {text}"
    );
    let out = s.lmtp_deliver("nobody@example.org", &message("na", 500));
    let refusal = out.refusal().expect("LMTP must refuse");
    assert!(
        (400..500).contains(&refusal.code),
        "LMTP to an unknown user while not authoritative: {out}"
    );

    // Corrupt, truncated, empty: internal failure for everyone, LMTP 4xx.
    let mut corrupt = good.clone();
    for b in &mut corrupt[130..good.len().min(4000)] {
        *b ^= 0x5a;
    }
    let damaged: [(&str, Vec<u8>); 3] = [
        ("corrupt", corrupt),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("empty", Vec::new()),
    ];
    for (i, (what, bytes)) in damaged.iter().enumerate() {
        announce(&map, g + 2 + i as u64, bytes);
        for user in ["alice@example.org", "nobody@example.org"] {
            let (rc, text) = auth_test_raw(&s, user, "alice-pw");
            assert!(
                rc != Some(0) && tempfailed(&text),
                "{what} snapshot, {user}: {rc:?} {text}"
            );
            let out = s.lmtp_deliver(user, &message(what, 500));
            let refusal = out
                .refusal()
                .unwrap_or_else(|| panic!("{what}: LMTP must refuse {user}"));
            assert!(
                (400..500).contains(&refusal.code),
                "{what} snapshot, LMTP to {user}: {out}"
            );
        }
        let users = d.doveadm(&["user", "*"]);
        assert!(
            !users.status.success(),
            "{what}: doveadm user '*' must fail"
        );
    }
    assert!(process_alive(pid), "auth {pid} died");
    assert_eq!(auth_pid(&s), pid, "the auth process changed");

    // ramdir publishes again: the same process answers.
    users.push_str("erin2@other.test:{PLAIN}erin2-pw:5000:5000::::\n");
    write_atomic(&s.files.users, &users);
    s.ramdir.reload();
    let t = Instant::now();
    // (Until the new generation is there, the damaged one tempfails.)
    while auth_test_raw(&s, "erin2@other.test", "erin2-pw").0 != Some(0) {
        assert!(t.elapsed() < Duration::from_secs(5), "no recovery");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(d.auth_test("alice@example.org", "alice-pw"));
    assert_eq!(auth_pid(&s), pid, "the auth process changed");
    let log = d.log_text();
    assert!(
        !log.contains("Panic") && !log.contains("Fatal"),
        "Dovecot log:\n{log}"
    );
}

#[test]
fn lmtp_delivery_through_postfix_and_nothing_postfix_reads_holds_a_hash_23() {
    lmtp_delivery_through_postfix(Flavor::Debian12);
}

#[test]
fn lmtp_delivery_through_postfix_and_nothing_postfix_reads_holds_a_hash_24() {
    lmtp_delivery_through_postfix(Flavor::Debian13);
}

fn lmtp_delivery_through_postfix(flavor: Flavor) {
    let s = start(flavor, true);
    let pf = s.postfix();
    let token = "module-lmtp";
    send_message(pf, &["alice@example.org"], token, 2_000);
    let got = wait_for_mail(pf, &s.dovecot, &s.maildir("alice@example.org"), token);
    assert!(got.is_file());

    // The map files: group dovecot, not readable by others; Postfix's
    // user is neither owner nor in the group.
    let map = map_dir(&s);
    let dovecot_gid = ramdir_integration::dovecot::dovecot_gid(s.dovecot.flavor());
    for e in std::fs::read_dir(map).expect("map dir").flatten() {
        let m = e.metadata().expect("stat");
        assert_eq!(m.mode() & 0o007, 0, "{:?} is readable by others", e.path());
        assert_eq!(m.gid(), dovecot_gid, "{:?} group", e.path());
    }
    // Every file a Postfix process could open: the spool and the Postfix
    // config hold no password or hash of the directory.
    let secrets = ["alice-pw", "{PLAIN}", "$6$saltsalt", "{SHA512-CRYPT}"];
    let mut stack = vec![
        flavor.host_path_unchecked(pf.spool()),
        flavor.host_path_unchecked(pf.etc()),
    ];
    let mut scanned = 0;
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            stack.extend(
                std::fs::read_dir(&p)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
        } else if m.is_file() {
            scanned += 1;
            let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default()).into_owned();
            for sec in secrets {
                assert!(!text.contains(sec), "{} holds {sec:?}", p.display());
            }
        }
    }
    // main.cf, master.cf and the spool's pid/ files at least.
    assert!(scanned > 3, "only {scanned} Postfix files found to check");
    // And Postfix's account cannot read the map: not in its group.
    let out = flavor
        .command("id")
        .args(["-G", "postfix"])
        .output()
        .expect("id -G postfix");
    let groups = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "id -G postfix: {out:?}");
    assert!(
        !groups
            .split_whitespace()
            .any(|g| g == dovecot_gid.to_string()),
        "postfix is in the map's group {dovecot_gid}: {groups}"
    );
}

/// LDAP as the source: a user added in LDAP logs in within a second with
/// the same auth process; when the LDAP sync is lost and ramdir is no
/// longer authoritative, an unknown name is an internal failure (LMTP
/// 4xx), never "unknown user", while known users keep logging in.
#[test]
fn ldap_users_are_live_and_a_lost_sync_tempfails_unknown_names_23() {
    ldap_users_are_live(Flavor::Debian12);
}

#[test]
fn ldap_users_are_live_and_a_lost_sync_tempfails_unknown_names_24() {
    ldap_users_are_live(Flavor::Debian13);
}

fn ldap_users_are_live(flavor: Flavor) {
    require_dovecot_on(flavor);
    slapd::require_slapd();
    let dir = StackDir::for_flavor(flavor);
    let mut slapd = Slapd::start(&dir, &format!("{}{}", slapd::base_ldif(), user_ldif(1)));
    let run = dir.join("run");
    std::fs::create_dir_all(&run).expect("mkdir run");
    set_mode(&run, 0o755);
    let secret = dir.join("ldap.secret");
    write_secret(&secret, slapd::SVC_PW, 0o600);
    let (dict_socket, stats_socket) = (run.join("dict.sock"), run.join("stats.sock"));
    let socketmap = run.join("socketmap.sock");
    let map = run.join("dovecot-map");
    let config = dir.join("ramdir.toml");
    write_atomic(
        &config,
        &format!(
            "[directory]\nhome_template = \"{}/%d/%n\"\n\n\
             [socketmap]\nlisten = \"unix:{}\"\nmode = \"0666\"\n\n\
             [dict]\nlisten = \"unix:{}\"\nmode = \"0666\"\n\n\
             [quota]\nstore = \"{}\"\n\n\
             [stats]\nlisten = \"unix:{}\"\n\n\
             [dovecot_map]\ndirectory = \"{}\"\ngroup = \"{}\"\n\n{}",
            dir.join("dv/mail").display(),
            socketmap.display(),
            dict_socket.display(),
            dir.join("quota.redb").display(),
            stats_socket.display(),
            map.display(),
            dovecot_gid(flavor),
            slapd.ramdir_section(&slapd.ldapi_url(), &secret, "sync_lost_after_secs = 1\n"),
        ),
    );
    let _module = ModuleInstall::new(flavor);
    let ramdir = Ramdir::start(&config, &socketmap, &dir.join("ramdir.log"));
    let stats = || RamdirStats::get(&stats_socket);
    let t = Instant::now();
    while !(stats().authoritative() && map.join("control").exists()) {
        assert!(
            t.elapsed() < WAIT,
            "ramdir not in sync:\n{}",
            ramdir.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut dovecot = Dovecot::prepare_with(&dir, &dict_socket, "", Some(&map));
    dovecot.start();
    let u1 = user_mail(1);
    // The map turns authoritative a publication (≤ 200 ms) after the
    // directory does; until then the module answers "internal failure", as
    // it must, so wait for a definite answer rather than `auth_test`'s
    // panic on a tempfail.
    let t = Instant::now();
    loop {
        let out = dovecot.doveadm(&["auth", "test", &u1, &user_password(1)]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() && text.contains("auth succeeded") {
            break;
        }
        assert!(
            t.elapsed() < WAIT
                && (text.contains("auth failed") || text.contains("internal auth failure")),
            "{u1} never authenticated ({}): {text}\n{}",
            out.status,
            dovecot.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = auth_pid_of(&dovecot);

    // A user added in LDAP: logged in within a second, same auth process.
    slapd.ldapadd(&user_ldif(2));
    let (u2, t) = (user_mail(2), Instant::now());
    while !dovecot.auth_test(&u2, &user_password(2)) {
        assert!(
            t.elapsed() < LIVE_LIMIT,
            "{u2} not authenticated within {LIVE_LIMIT:?} of the LDAP add"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("LDAP user authenticated {:?} after the add", t.elapsed());
    assert_eq!(auth_pid_of(&dovecot), pid, "the auth process changed");
    let unknown = "nobody@example.org";
    let out = dovecot.doveadm(&["auth", "test", unknown, "x"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !out.status.success() && !tempfailed(&text),
        "in sync, unknown: {text}"
    );

    // LDAP gone: once ramdir is not authoritative, a miss is a tempfail.
    slapd.stop();
    let t = Instant::now();
    loop {
        let out = dovecot.doveadm(&["auth", "test", unknown, "x"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if tempfailed(&text) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "still a final 'unknown' after the LDAP loss: {text}\n{}",
            stats().raw
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!stats().authoritative(), "{}", stats().raw);
    let mut l = dovecot.lmtp();
    let out = l
        .send("sender@outside.test", &[unknown], &message("lost", 500))
        .expect("LMTP");
    let refusal = out.refusal().expect("LMTP must refuse");
    assert!(
        (400..500).contains(&refusal.code),
        "LMTP while not authoritative: {out}"
    );
    assert!(
        dovecot.auth_test(&u1, &user_password(1)),
        "a known user while not authoritative"
    );
    assert_eq!(auth_pid_of(&dovecot), pid, "the auth process changed");
    dovecot.stop();
}
