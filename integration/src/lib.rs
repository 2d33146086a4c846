//! Integration harness: ramdir against real peers (Postfix first).
//!
//! Everything runs from a short temporary directory under `/tmp`
//! ([`StackDir`]): the ramdir process ([`ramdir::Ramdir`]), a private Postfix
//! instance ([`postfix::Postfix`]) with its own `main.cf`, `master.cf`,
//! spool and log, and the small clients the tests drive them with
//! ([`smtp::Smtp`], [`socketmap::SocketmapClient`]). [`Stack`] puts them
//! together the way an operator would: ramdir's socket lives at
//! `<spool>/private/ramdir-socketmap` and `main.cf` names it with the
//! relative path `unix:private/ramdir-socketmap`.
//!
//! How Postfix is run (and the traps avoided) follows
//! `docs/stack-notes.md` sections 3, 5 and 6. The tests need root (Postfix
//! will not start otherwise) and the packages from
//! `scripts/install-test-deps.sh`; anything missing is a panic with the fix,
//! never a silent skip.
//!
//! Set `RAMDIR_KEEP_STACK=1` to keep the stack directory after a test; it is
//! always kept (and its logs printed) when a test fails.

pub mod dovecot;
pub mod postfix;
pub mod postfix_map;
pub mod quota;
pub mod ramdir;
pub mod sasl;
pub mod slapd;
pub mod smtp;
pub mod socketmap;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use postfix::Postfix;
pub use ramdir::{DirectoryContent, DirectoryFiles, Ramdir};
pub use sasl::FakeDovecotAuth;
pub use smtp::{Reply, Smtp};
pub use socketmap::SocketmapClient;

/// How long the harness waits for anything to come up or show up.
pub const WAIT: Duration = Duration::from_secs(10);

/// A temporary directory with a short path (`/tmp/rdi-<pid>-<n>`), because
/// Unix socket paths inside it must fit in `sun_path` (107 bytes, trap 18).
///
/// Removed on drop unless `RAMDIR_KEEP_STACK=1` is set or the thread is
/// panicking (a failing test); in both cases its path is printed. On a
/// failure the tail of every `*.log`/`maillog` file in it is printed too,
/// so CI output shows what the daemons said.
#[derive(Debug)]
pub struct StackDir {
    path: PathBuf,
}

impl StackDir {
    /// Create a fresh, empty stack directory. The first call in a process
    /// also stops daemons left running by an earlier test run that was
    /// killed before it could clean up.
    pub fn new() -> StackDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        if n == 0 {
            sweep_stale_stacks();
        }
        let path = PathBuf::from(format!("/tmp/rdi-{}-{n}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .unwrap_or_else(|e| panic!("remove stale {}: {e}", path.display()));
        }
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        // Postfix daemons (user postfix) write the maillog via postlogd and
        // must be able to traverse the tree.
        set_mode(&path, 0o755);
        StackDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }
}

impl Default for StackDir {
    fn default() -> Self {
        StackDir::new()
    }
}

impl Drop for StackDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            dump_logs(&self.path);
            eprintln!(
                "ramdir-integration: test failed; stack kept at {}",
                self.path.display()
            );
        } else if keep_stack() {
            eprintln!(
                "ramdir-integration: RAMDIR_KEEP_STACK=1, stack kept at {}",
                self.path.display()
            );
        } else if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!(
                "ramdir-integration: could not remove {}: {e}",
                self.path.display()
            );
        }
    }
}

/// Stop the Postfix masters and ramdir processes of stacks whose test
/// process is gone (a run killed by Ctrl-C or a timeout never reaches the
/// `Drop`s). A process is only signalled when it provably belongs to that
/// stack: the master's working directory is the stack's spool, ramdir's
/// command line names the stack's config. The directories are left for
/// inspection.
fn sweep_stale_stacks() {
    let Ok(rd) = std::fs::read_dir("/tmp") else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("rdi-")) else {
            continue;
        };
        let Some(owner) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if owner == std::process::id() as i32 || process_alive(owner) {
            continue;
        }
        let root = e.path();
        let pid_in =
            |p: PathBuf| -> Option<i32> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
        let spool = root.join("pf/spool");
        if let Some(pid) = pid_in(spool.join("pid/master.pid")) {
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            if cwd == spool && process_alive(pid) {
                eprintln!(
                    "ramdir-integration: stopping leaked Postfix master {pid} of {}",
                    root.display()
                );
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        if let Some(pid) = pid_in(root.join("ramdir.pid")) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let config = root.join("ramdir.toml");
            let mine = String::from_utf8_lossy(&cmdline)
                .split('\0')
                .any(|a| Path::new(a) == config);
            if mine && process_alive(pid) {
                eprintln!(
                    "ramdir-integration: stopping leaked ramdir {pid} of {}",
                    root.display()
                );
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }
}

fn keep_stack() -> bool {
    std::env::var_os("RAMDIR_KEEP_STACK").is_some_and(|v| v == "1")
}

/// Print the last lines of the logs in a stack directory (on failure).
fn dump_logs(root: &Path) {
    let mut logs = Vec::new();
    collect_logs(root, 0, &mut logs);
    logs.sort();
    for p in logs {
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(40)..];
        eprintln!("----- {} (last {} lines) -----", p.display(), tail.len());
        for l in tail {
            eprintln!("{l}");
        }
    }
}

fn collect_logs(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() && depth < 2 && !p.ends_with("spool") {
            collect_logs(&p, depth + 1, out);
        } else if ft.is_file() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".log") || name == "maillog" {
                out.push(p);
            }
        }
    }
}

/// A complete stack: a Postfix instance that uses a ramdir process for its
/// virtual domains, mailboxes, aliases and sender logins, over the socket
/// `<spool>/private/ramdir-socketmap`.
///
/// Dropping it stops Postfix, then ramdir, then removes the directory.
#[derive(Debug)]
pub struct Stack {
    /// The Postfix instance (started).
    pub postfix: Postfix,
    /// The ramdir process (running, unless a test stopped it).
    pub ramdir: Ramdir,
    /// The SASL stand-in, when [`StackOptions::sasl`] asked for one.
    pub sasl: Option<FakeDovecotAuth>,
    /// The directory files ramdir serves; rewrite them and call
    /// [`Ramdir::reload`] (or wait for the file watcher).
    pub files: DirectoryFiles,
    /// Holds everything; dropped last.
    pub dir: StackDir,
}

/// Knobs for [`Stack::start_with`].
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// Lines appended to the generated `main.cf` (later lines win).
    pub main_cf_extra: String,
    /// Lines added to ramdir's `[directory]` section
    /// (e.g. `watch_files = false`).
    pub directory_extra: String,
    /// Turn on SMTP AUTH (`smtpd_sasl_type = dovecot`, served by a
    /// [`FakeDovecotAuth`] at `<spool>/private/auth` that accepts the
    /// `{PLAIN}` passwords of the passwd-file) and
    /// `smtpd_sender_restrictions = reject_sender_login_mismatch`, so that
    /// ramdir's `senders` table is used.
    pub sasl: bool,
}

/// The `main.cf` lines [`StackOptions::sasl`] adds.
pub const SASL_MAIN_CF: &str = "\
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = private/auth
smtpd_tls_auth_only = no
smtpd_sender_restrictions = reject_sender_login_mismatch
";

impl Stack {
    /// [`start_with`](Self::start_with) default options.
    pub fn start(content: &DirectoryContent) -> Stack {
        Stack::start_with(content, &StackOptions::default())
    }

    /// Write the directory files, prepare Postfix's spool, start ramdir on
    /// its socket inside the spool, then start Postfix and wait for its
    /// banner.
    pub fn start_with(content: &DirectoryContent, opts: &StackOptions) -> Stack {
        let dir = StackDir::new();
        let files = DirectoryFiles::write(&dir.join("data"), content);
        let main_cf_extra = if opts.sasl {
            format!("{SASL_MAIN_CF}{}", opts.main_cf_extra)
        } else {
            opts.main_cf_extra.clone()
        };
        let mut postfix = Postfix::prepare(&dir, &main_cf_extra);
        let config = ramdir::write_config(
            &dir.join("ramdir.toml"),
            &files,
            &postfix.socketmap_path(),
            &opts.directory_extra,
        );
        let ramdir = Ramdir::start(&config, &postfix.socketmap_path(), &dir.join("ramdir.log"));
        let sasl = opts.sasl.then(|| {
            FakeDovecotAuth::start(
                &postfix.spool().join("private/auth"),
                FakeDovecotAuth::plain_users(&content.users),
            )
        });
        postfix.start();
        Stack {
            postfix,
            ramdir,
            sasl,
            files,
            dir,
        }
    }
}

/// Poll `f` every 50 ms until it returns `Some`, for at most `timeout`.
/// Panics with `what` (and the last value seen, via `f`'s own message) when
/// time runs out.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Is the process alive? A zombie counts as dead: PID 1 on these machines
/// reaps orphans late, so `kill -0` lies (stack-notes trap 15).
pub fn process_alive(pid: i32) -> bool {
    let out = Command::new("ps")
        .args(["-o", "stat=", "-p", &pid.to_string()])
        .output();
    match out {
        Ok(o) => {
            let stat = String::from_utf8_lossy(&o.stdout);
            let stat = stat.trim();
            !stat.is_empty() && !stat.starts_with('Z')
        }
        Err(e) => panic!("run ps (install procps: scripts/install-test-deps.sh): {e}"),
    }
}

/// Replace a file atomically: write a sibling temporary file, then rename it
/// over the target (what careful operators and config managers do).
pub fn write_atomic(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp~");
    {
        let mut f =
            std::fs::File::create(&tmp).unwrap_or_else(|e| panic!("create {}: {e}", tmp.display()));
        f.write_all(contents.as_bytes())
            .and_then(|()| f.sync_all())
            .unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    }
    std::fs::rename(&tmp, path)
        .unwrap_or_else(|e| panic!("rename {} to {}: {e}", tmp.display(), path.display()));
}

/// Quote a string for `sh` (single quotes).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Set a path's permission bits.
pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Panic unless running as root: Postfix's master refuses to start
/// otherwise.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!("the Postfix integration tests must run as root (Postfix's master needs it)");
    }
}
