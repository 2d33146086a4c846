//! No daemon outlives a failed test (docs/reliability.md "The suite under
//! load").
//!
//! A child process (the `stack-then-fail` binary) starts everything the
//! harness offers in one stack — Postfix, Dovecot, ramdir, slapd,
//! redis-server — and then fails. While it runs, the check
//! (`ramdir_integration::leftovers`) must see every one of those daemons
//! as the child's: otherwise "nothing left" below would prove nothing.
//!
//! - A panic (what a failing assertion does): the harness's guards stop
//!   everything while the panic unwinds; nothing of the child's stacks may
//!   remain once it has exited.
//! - SIGKILL (a run killed outright, a CI timeout): no guard runs. Postfix
//!   and Dovecot daemonize and the other daemons are not tied to the test
//!   process (`PR_SET_PDEATHSIG` fires when the spawning *thread* ends and
//!   does not reach a daemon that forks away), so they do stay; the next
//!   run's start-up sweep (`sweep_stale_stacks`) must then stop every one
//!   of them and remove the Debian 13 bind mount.
//!
//! Needs root, the packages from `scripts/install-test-deps.sh` and the
//! binaries: `cargo build -p ramdir -p ramdir-integration`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ramdir_integration::leftovers::{self, StackProcess};
use ramdir_integration::{Flavor, WAIT, process_alive};

/// How long the child may take to start its whole stack: five daemons on
/// a machine that may be saturated.
const START_WAIT: Duration = Duration::from_secs(600);

/// The kinds of daemon a whole stack runs, as its processes show them.
const KINDS: [&str; 5] = ["postfix", "dovecot", "ramdir", "slapd", "redis"];

fn kind(p: &StackProcess) -> Option<&'static str> {
    let argv0 = p.cmdline.split(' ').next().unwrap_or_default();
    let c = &p.cmdline;
    if argv0.ends_with("/master") || c.contains("postfix/") || argv0 == "master" {
        Some("postfix")
    } else if argv0.contains("dovecot") {
        Some("dovecot")
    } else if argv0.ends_with("/ramdir") || c.contains("ramdir serve") {
        Some("ramdir")
    } else if argv0.ends_with("slapd") {
        Some("slapd")
    } else if argv0.starts_with("redis-server") || argv0.ends_with("/redis-server") {
        Some("redis")
    } else {
        None
    }
}

fn kinds(procs: &[StackProcess]) -> BTreeSet<&'static str> {
    procs.iter().filter_map(kind).collect()
}

fn list(procs: &[StackProcess]) -> String {
    procs.iter().map(|p| format!("  {p}\n")).collect::<String>()
}

/// The running child, its stack up.
struct Running {
    child: Child,
    stderr: PathBuf,
}

/// One scenario at a time: a child's start-up sweep would stop another
/// scenario's killed stack before that scenario's own sweep.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn start_child(flavor: Flavor, scenario: &str) -> Running {
    ramdir_integration::require_root();
    let tag = match flavor {
        Flavor::Debian12 => "debian12",
        Flavor::Debian13 => "debian13",
    };
    let stderr = std::env::temp_dir().join(format!(
        "ramdir-stack-then-fail-{}-{tag}-{scenario}.stderr",
        std::process::id()
    ));
    let mut child = Command::new(env!("CARGO_BIN_EXE_stack-then-fail"))
        .arg(tag)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).expect("create the child's stderr file"))
        .spawn()
        .expect("spawn stack-then-fail");
    // Read on a thread, so that a child stuck starting its stack fails
    // this test after START_WAIT instead of hanging it.
    let out = child.stdout.take().expect("child stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut ready = String::new();
        // Until the child prints or exits (its stdout closes).
        let _ = BufReader::new(out).read_line(&mut ready);
        let _ = tx.send(ready);
    });
    let ready = rx.recv_timeout(START_WAIT).unwrap_or_default();
    if ready.trim() != "ready" {
        let _ = child.kill();
        let _ = child.wait();
        let owner = child.id() as i32;
        let _ = ramdir_integration::sweep_stale_stacks();
        remove_stack_dirs(owner);
        panic!(
            "the child did not start its stack within {START_WAIT:?}; its stderr:\n{}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
    }
    Running { child, stderr }
}

/// Wait (up to `limit`) for the child to exit.
fn wait_exit(c: &mut Running, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = c.child.try_wait().expect("wait for the child") {
            return s;
        }
        assert!(
            start.elapsed() < limit,
            "the child did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The child's stacks, live: every kind of daemon must be seen as its own.
fn assert_whole_stack_seen(owner: i32) {
    let start = Instant::now();
    // The daemons are all up once the child printed "ready".
    let procs = leftovers::of_owner(owner);
    let seen = kinds(&procs);
    assert_eq!(
        seen,
        KINDS.into_iter().collect(),
        "the check does not see every daemon of the running stack (after {:?}):\n{}",
        start.elapsed(),
        list(&procs)
    );
}

/// Remove the stack directories the child left (kept for inspection by a
/// failing test), once nothing runs or is mounted there.
fn remove_stack_dirs(owner: i32) {
    let Ok(rd) = std::fs::read_dir("/tmp") else {
        return;
    };
    let prefix = format!("rdi-{owner}-");
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn panic_stops_every_daemon(flavor: Flavor) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = start_child(flavor, "panic");
    let owner = c.child.id() as i32;
    assert_whole_stack_seen(owner);
    {
        let mut w = c.child.stdin.take().expect("child stdin");
        writeln!(w, "panic").expect("tell the child to panic");
    }
    // Unwinding stops five daemons, each within the harness's WAIT.
    let status = wait_exit(&mut c, 5 * WAIT);
    let stderr = std::fs::read_to_string(&c.stderr).unwrap_or_default();
    let _ = std::fs::remove_file(&c.stderr);
    assert!(!status.success(), "the child did not fail: {status}");
    assert!(
        stderr.contains("forced failure with the whole stack running"),
        "the child failed otherwise ({status}); its stderr:\n{stderr}"
    );
    let left = leftovers::of_owner(owner);
    // Stop them anyway, so that a failure here leaves nothing either.
    if !left.is_empty() {
        let _ = ramdir_integration::sweep_stale_stacks();
    }
    remove_stack_dirs(owner);
    assert!(
        left.is_empty(),
        "daemons of the failed test still run after it exited:\n{}",
        list(&left)
    );
}

fn sigkill_leaves_daemons_the_next_sweep_stops(flavor: Flavor) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = start_child(flavor, "sigkill");
    let owner = c.child.id() as i32;
    assert_whole_stack_seen(owner);
    c.child.kill().expect("SIGKILL the child");
    let _ = wait_exit(&mut c, WAIT);
    let _ = std::fs::remove_file(&c.stderr);
    assert!(!process_alive(owner));
    // No guard ran: the daemons are still there, and seen as leftovers.
    let left: Vec<_> = leftovers::leaked()
        .into_iter()
        .filter(|p| p.owner == owner)
        .collect();
    assert!(
        !left.is_empty(),
        "nothing of the killed test's stack is left: the check or this test is wrong"
    );
    // What the next test run does first. (A test run elsewhere on the
    // machine may get there first, with the same sweep: what counts is
    // that nothing is left after it.)
    let _ = ramdir_integration::sweep_stale_stacks();
    // SIGKILL after TERM_GRACE is immediate, but the kernel may take a
    // moment to tear a process down on a busy machine.
    let start = Instant::now();
    let mut still = leftovers::of_owner(owner);
    while !still.is_empty() && start.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(100));
        still = leftovers::of_owner(owner);
    }
    let mounts: Vec<_> = ramdir_integration::flavor::stack_mounts()
        .into_iter()
        .filter(|(_, o)| *o == owner)
        .collect();
    if mounts.is_empty() {
        remove_stack_dirs(owner);
    }
    assert!(
        still.is_empty(),
        "the sweep left daemons of the killed test running:\n{}",
        list(&still)
    );
    assert!(
        mounts.is_empty(),
        "the sweep left the killed test's bind mounts: {mounts:?}"
    );
}

ramdir_integration::test_on_both_flavors!(
    panic_stops_every_daemon,
    sigkill_leaves_daemons_the_next_sweep_stops
);

#[test]
fn every_daemon_kind_is_recognised() {
    let p = |cmdline: &str| StackProcess {
        pid: 1,
        stack: PathBuf::from("/tmp/rdi-1-0"),
        owner: 1,
        evidence: leftovers::Evidence::Cwd,
        cmdline: cmdline.into(),
    };
    let procs = [
        p("/usr/lib/postfix/sbin/master -w"),
        p("smtpd -n 127.0.0.1:2525 -t inet -u -o stress="),
        p("/usr/sbin/dovecot -c /tmp/rdi-1-0/dv/dovecot.conf"),
        p("dovecot/imap-login"),
        p("/work/target/debug/ramdir serve --allow-root --config /tmp/rdi-1-0/ramdir.toml"),
        p("/usr/sbin/slapd -d stats -f /tmp/rdi-1-0/ld/slapd.conf"),
        p("/usr/bin/redis-server 127.0.0.1:6379"),
    ];
    assert_eq!(kinds(&procs), KINDS.into_iter().collect());
    assert_eq!(kinds(&procs[1..]), KINDS[1..].iter().copied().collect());
}
