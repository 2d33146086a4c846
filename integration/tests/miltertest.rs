//! The quota milter against `miltertest`, OpenDKIM's MTA-side milter
//! driver (Debian package `miltertest`), which talks the protocol through
//! libmilter's own definitions. One Lua script per scenario lives in
//! `integration/miltertest/`; each test runs one with
//! `miltertest -D socket=<path> -s <script>` and wants exit status 0.
//!
//! The milter runs in this process: a tokio runtime and
//! `ramdir_milter::run` on a Unix socket in a temporary directory, with a
//! directory loaded from a passwd-file and an alias file, and a redb usage
//! store written by the test (`ramdir serve` would hold the store's lock).
//! No root needed. A missing `miltertest` is a failure that names the fix
//! (`scripts/install-test-deps.sh`), never a skip.
//!
//! miltertest shows only the kind of a RCPT reply (`SMFIR_REPLYCODE`); its
//! text is checked at end of message here and at every stage by the
//! milter crate's own tests.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ramdir_core::DirectoryHandle;
use ramdir_core::Settings;
use ramdir_core::files::{FileSources, load};
use ramdir_core::usage::{Op, Txn, UsageStore};
use tokio::net::UnixListener;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The driver, from `$PATH` (`/usr/bin/miltertest` on Debian).
const MILTERTEST: &str = "miltertest";

/// Every script in `integration/miltertest/`, each run by one test below.
const SCRIPTS: [&str; 6] = [
    "alias_full.lua",
    "eom_no_size.lua",
    "full_rcpt_size.lua",
    "two_rcpts.lua",
    "under_quota.lua",
    "unknown_rcpt.lua",
];

/// Every user's limit: 1 MiB, so Dovecot's default grace (10%) is 104857
/// bytes.
const LIMIT: i64 = 1 << 20;

const USERS: &str = "\
free@example.org:{PLAIN}free-pw:5000:5000::/home/free::userdb_quota_rule=*:storage=1M
full@example.org:{PLAIN}full-pw:5000:5000::/home/full::userdb_quota_rule=*:storage=1M
nearly@example.org:{PLAIN}nearly-pw:5000:5000::/home/nearly::userdb_quota_rule=*:storage=1M
";

const ALIASES: &str = "\
info@example.org full@example.org
team@example.org full@example.org, free@example.org
";

/// Usage per user: free@ has almost all its room, full@ is at its limit,
/// nearly@ has 2000 bytes left, so with grace a message of up to 106857
/// bytes fits.
const USAGE: [(&str, i64); 3] = [
    ("free@example.org", 10_000),
    ("full@example.org", LIMIT),
    ("nearly@example.org", LIMIT - 2_000),
];

/// How long stopping the milter may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The milter, served from this process.
struct Milter {
    socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
    runtime: Runtime,
    /// Holds the socket, the source files and the store; removed last.
    _dir: tempfile::TempDir,
}

impl Milter {
    fn start() -> Milter {
        // A short path under /tmp: the socket path must fit in sun_path
        // (107 bytes).
        let dir = tempfile::Builder::new()
            .prefix("rdmt-")
            .tempdir_in("/tmp")
            .expect("create a temporary directory");
        let users = dir.path().join("users.passwd");
        let aliases = dir.path().join("aliases");
        std::fs::write(&users, USERS).expect("write passwd-file");
        std::fs::write(&aliases, ALIASES).expect("write alias file");
        let sources = FileSources {
            passwd_files: vec![users],
            alias_files: vec![aliases],
            ..FileSources::default()
        };
        let directory =
            load(&sources, Settings::default()).unwrap_or_else(|e| panic!("load directory: {e}"));

        let store = UsageStore::open(&dir.path().join("usage.redb"))
            .unwrap_or_else(|e| panic!("open store: {e}"));
        let txns: Vec<Txn> = USAGE
            .iter()
            .map(|(user, bytes)| Txn {
                user: (*user).into(),
                ops: vec![Op::Set("quota/storage".into(), *bytes)],
            })
            .collect();
        store
            .commit_batch(&txns)
            .unwrap_or_else(|e| panic!("write usage: {e}"));

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let socket = dir.path().join("milter");
        let listener = {
            let _rt = runtime.enter();
            UnixListener::bind(&socket).unwrap_or_else(|e| panic!("bind {}: {e}", socket.display()))
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = runtime.spawn(ramdir_milter::run(
            listener,
            Arc::new(DirectoryHandle::new(directory)),
            Arc::new(store),
            ramdir_milter::Config::default(),
            Arc::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        Milter {
            socket,
            stop: Some(stop),
            task: Some(task),
            runtime,
            _dir: dir,
        }
    }

    /// Stop the milter and check that it ended cleanly.
    fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(task) = self.task.take() else { return };
        let result = self
            .runtime
            .block_on(async { tokio::time::timeout(STOP_TIMEOUT, task).await })
            .unwrap_or_else(|_| panic!("the milter did not stop within {STOP_TIMEOUT:?}"));
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the milter failed: {e}"),
            Err(e) => panic!("the milter task failed: {e}"),
        }
    }
}

impl Drop for Milter {
    fn drop(&mut self) {
        // On a failed test: stop serving; the runtime's drop ends the rest.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("miltertest")
}

/// Run one script against a fresh milter; it must exit 0.
fn run_script(name: &str) {
    let milter = Milter::start();
    let script = script_dir().join(name);
    let out = Command::new(MILTERTEST)
        .arg("-D")
        .arg(format!("socket={}", milter.socket.display()))
        .arg("-s")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                panic!(
                    "`{MILTERTEST}` is not installed: run scripts/install-test-deps.sh \
                     (Debian package `miltertest`)"
                )
            }
            panic!("run {MILTERTEST}: {e}")
        });
    assert!(
        out.status.success(),
        "miltertest -s {} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    milter.stop();
}

#[test]
fn every_script_has_a_test() {
    let mut found: Vec<String> = std::fs::read_dir(script_dir())
        .expect("read integration/miltertest")
        .map(|e| {
            e.expect("read integration/miltertest")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".lua"))
        .collect();
    found.sort();
    assert_eq!(
        found, SCRIPTS,
        "add a test for each script (and list it in SCRIPTS)"
    );
}

#[test]
fn a_user_under_quota_is_accepted() {
    run_script("under_quota.lua");
}

#[test]
fn a_full_user_is_refused_at_rcpt_by_size() {
    run_script("full_rcpt_size.lua");
}

#[test]
fn an_alias_of_a_full_user_is_refused_at_rcpt() {
    run_script("alias_full.lua");
}

#[test]
fn a_message_too_big_without_size_is_refused_at_end_of_message() {
    run_script("eom_no_size.lua");
}

#[test]
fn one_full_recipient_of_two_is_refused_and_the_message_goes_on() {
    run_script("two_rcpts.lua");
}

#[test]
fn recipients_that_are_not_ours_continue() {
    run_script("unknown_rcpt.lua");
}
