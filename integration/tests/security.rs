//! Running as root (docs/reliability.md, "Security"): the real `ramdir
//! serve` refuses root unless told, and with `[server] user` it binds its
//! sockets and opens its store as root, then runs as that user for good.
//!
//! Needs root (the suite does anyway) and the binary (`cargo build -p
//! ramdir`).

use std::path::Path;
use std::time::{Duration, Instant};

use ramdir_integration::ramdir::{serve_refused, standalone_config};
use ramdir_integration::{Ramdir, StackDir, WAIT, write_atomic};

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "tests/security.rs needs root (as the whole integration suite)"
    );
}

fn write_config(dir: &StackDir, server: &str) -> std::path::PathBuf {
    write_atomic(
        &dir.join("users"),
        "alice@example.org:{PLAIN}security-alice-secret:5000:5000::::\n",
    );
    let config = dir.join("ramdir.toml");
    write_atomic(
        &config,
        &standalone_config(
            dir.path(),
            server,
            &format!("passwd_files = [\"{}/users\"]\n", dir.path().display()),
            &["socketmap", "dict"],
            &dir.join("usage.redb"),
        ),
    );
    config
}

/// `ramdir serve` without `--allow-root`; expects an exit, returns (code,
/// stderr).
fn serve_without_flag(config: &Path) -> (i32, String) {
    serve_refused(&[], config)
}

/// Started by root without `[server] user` and without `--allow-root`:
/// refused before anything is bound, saying what to do.
#[test]
fn root_without_user_or_allow_root_is_refused() {
    require_root();
    let dir = StackDir::new();
    let config = write_config(&dir, "");
    let (code, err) = serve_without_flag(&config);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("refusing to run as root")
            && err.contains("[server] user")
            && err.contains("--allow-root"),
        "{err}"
    );
    assert!(!dir.join("socketmap").exists(), "a socket was bound");
    assert!(!dir.join("usage.redb").exists(), "the store was created");

    // A user that does not exist is an error, not a silent root daemon.
    let config = write_config(&dir, "[server]\nuser = \"no-such-user-ramdir\"\n");
    let (code, err) = serve_without_flag(&config);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no such user"), "{err}");
}

/// The ids of a process from /proc: (real, effective, saved, fs) uid and
/// the same for gid, and the supplementary groups.
fn ids(pid: i32) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    };
    (field("Uid:"), field("Gid:"), field("Groups:"))
}

/// With `[server] user = "nobody"`, started by root: the sockets and the
/// store are made as root, then every thread runs as nobody (real,
/// effective, saved and file-system ids, no supplementary group of
/// root's), and the daemon still serves, commits quota and reloads.
#[test]
fn server_user_switches_every_thread_after_binding() {
    require_root();
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody");
    let dir = StackDir::new();
    let config = write_config(&dir, "[server]\nuser = \"nobody\"\n");
    let mut r = Ramdir::start(&config, &dir.join("socketmap"), &dir.join("ramdir.log"));
    let pid = r.pid().unwrap();
    // The socketmap answers as soon as it is bound; the switch follows
    // once every listener is.
    let start = Instant::now();
    while !r.log_text().contains("switched from root") {
        assert!(start.elapsed() < WAIT, "no switch:\n{}", r.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let want_uid = nobody.uid.as_raw();
    let want_gid = nobody.gid.as_raw();
    let (uids, gids, groups) = ids(pid);
    assert_eq!(uids, vec![want_uid; 4], "Uid: of the daemon");
    assert_eq!(gids, vec![want_gid; 4], "Gid: of the daemon");
    assert!(!groups.contains(&0), "root's group kept: {groups:?}");
    // Every thread, not only the main one (tokio's workers, the quota
    // writer): glibc's setuid applies to all.
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid: i32 = t.unwrap().file_name().to_str().unwrap().parse().unwrap();
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap_or_default();
        if let Some(l) = status.lines().find(|l| l.starts_with("Uid:")) {
            let u: Vec<u32> = l[4..]
                .split_whitespace()
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(u, vec![want_uid; 4], "thread {tid}");
        }
    }
    assert_eq!(
        r.query("mailboxes", "alice@example.org"),
        "OK alice@example.org"
    );
    // The store was given to nobody and takes commits.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(dir.join("usage.redb")).unwrap().uid(),
        want_uid
    );
    let mut s = std::os::unix::net::UnixStream::connect(dir.join("dict")).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    use std::io::{BufRead, Write};
    s.write_all(
        b"H3\t2\t0\t\tquota\nB1\talice@example.org\nS1\tpriv/quota/storage\t77\nC1\n\
          Lpriv/quota/storage\talice@example.org\n",
    )
    .unwrap();
    let mut lines = std::io::BufReader::new(s).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "O1");
    assert_eq!(lines.next().unwrap().unwrap(), "O77");
    // A reload reads the configuration and the sources as nobody.
    r.reload();
    let start = Instant::now();
    while !r.log_text().contains("reload done") {
        assert!(start.elapsed() < WAIT, "no reload:\n{}", r.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    r.stop();
}
