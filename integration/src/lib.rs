//! Integration harness: ramdir against real peers (Postfix, Dovecot,
//! slapd, miltertest).
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
//! Postfix and Dovecot come in two [`Flavor`]s: the host's Debian 12
//! packages (Postfix 3.7, Dovecot 2.3) and Debian 13's (Postfix 3.10,
//! Dovecot 2.4) run with `chroot` from the root `scripts/trixie-root.sh`
//! builds, the stack directory bind-mounted at the same path inside it.
//! Scenarios that apply to both are written once, as `fn name(flavor:
//! Flavor)`, and [`test_on_both_flavors!`] makes `debian12::name` and
//! `debian13::name` of them. ramdir and slapd always run on the host.
//!
//! Set `RAMDIR_KEEP_STACK=1` to keep the stack directory after a test; it is
//! always kept (and its logs printed) when a test fails. Either way the
//! daemons are stopped: every Postfix, Dovecot, slapd and ramdir is owned by
//! a guard whose drop stops it (and any process still working in its
//! directory), also while a failed test unwinds; a run killed outright is
//! cleaned up by the next one ([`StackDir::for_flavor`]'s sweep).

pub mod dovecot;
pub mod flavor;
pub mod hosts;
pub mod leftovers;
pub mod logs;
pub mod postfix;
pub mod postfix_map;
pub mod quota;
pub mod ramdir;
pub mod redis;
pub mod sasl;
pub mod slapd;
pub mod smtp;
pub mod socketmap;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use flavor::Flavor;
pub use postfix::Postfix;
pub use ramdir::{DirectoryContent, DirectoryFiles, Ramdir};
pub use sasl::FakeDovecotAuth;
pub use smtp::{Reply, Smtp};
pub use socketmap::SocketmapClient;

/// How long the harness waits for anything to come up or show up. Generous
/// on purpose: the suite shares two cores with other builds, and a daemon
/// that is merely slow must not fail a test (a stuck one still does).
/// 30 s was not enough with both CPUs saturated and a load average of
/// 25–50 (docs/reliability.md, "The suite under load": Postfix in the
/// Debian 13 root took longer to answer `MAIL FROM` and to deliver).
pub const WAIT: Duration = Duration::from_secs(90);

/// A temporary directory with a short path (`/tmp/rdi-<pid>-<n>`), because
/// Unix socket paths inside it must fit in `sun_path` (107 bytes, trap 18).
///
/// For a [`Flavor::Debian13`] stack the directory is also bind-mounted at
/// the same path inside the Debian 13 root, so the daemons there see it
/// where ramdir does; the mount goes with the directory.
///
/// Removed on drop unless `RAMDIR_KEEP_STACK=1` is set or the thread is
/// panicking (a failing test); in both cases its path is printed. On a
/// failure the tail of every `*.log`/`maillog` file in it is printed too,
/// so CI output shows what the daemons said. Only the files are kept: the
/// daemons' own guards (fields dropped before this one) have stopped
/// them by then.
#[derive(Debug)]
pub struct StackDir {
    path: PathBuf,
    flavor: Flavor,
    mount: Option<flavor::RootMount>,
}

impl StackDir {
    /// A fresh, empty stack directory for the host's daemons
    /// ([`Flavor::Debian12`]).
    pub fn new() -> StackDir {
        StackDir::for_flavor(Flavor::Debian12)
    }

    /// A fresh, empty stack directory for `flavor`'s daemons. The first
    /// call in a process also stops daemons left running by an earlier
    /// test run that was killed before it could clean up, and removes its
    /// mounts.
    pub fn for_flavor(flavor: Flavor) -> StackDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        if n == 0 {
            let _ = sweep(true);
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
        let mount = flavor
            .root()
            .map(|root| flavor::RootMount::new(&root, &path));
        StackDir {
            path,
            flavor,
            mount,
        }
    }

    /// Whose daemons use this directory.
    pub fn flavor(&self) -> Flavor {
        self.flavor
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
        // Unmount first: the files stay reachable at the host path.
        drop(self.mount.take());
        // Kept for the check that no secret was logged (logs.rs).
        logs::archive(&self.path);
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

/// Stop every process (Postfix, Dovecot, slapd, redis-server, ramdir, …)
/// of stacks whose test process is gone (a run killed by Ctrl-C, a
/// timeout or SIGKILL never reaches the `Drop`s; see [`leftovers`]), then
/// remove those stacks' bind mounts in the
/// Debian 13 root. A process is only signalled when it provably belongs
/// to that stack: the master's working directory is the stack's spool
/// (seen from the host, or through the root), Dovecot's and ramdir's
/// command lines name the stack's config. The directories are left for
/// inspection. [`StackDir::for_flavor`] calls it once per process; public
/// for `tests/harness_cleanup.rs` and the `leftover-daemons` binary.
/// Returns the processes it found that way. Only the start-up sweep
/// records what it stopped ([`leftovers::stop_leaked`]): a sweep called
/// on purpose cleans up what its caller expected to find.
pub fn sweep_stale_stacks() -> Vec<leftovers::StackProcess> {
    sweep(false)
}

fn sweep(record: bool) -> Vec<leftovers::StackProcess> {
    // Every process of a stack whose test is gone, whatever the daemon
    // (slapd and redis-server included); then what only the stack's
    // files show.
    let found = leftovers::stop_leaked(record);
    sweep_stale_processes();
    dovecot::sweep_leaked_masters();
    let me = std::process::id() as i32;
    for (point, owner) in flavor::stack_mounts() {
        if owner != me && !process_alive(owner) {
            eprintln!(
                "ramdir-integration: removing the leaked mount {}",
                point.display()
            );
            flavor::unmount(&point);
        }
    }
    found
}

fn sweep_stale_processes() {
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
        let pf = root.join("pf");
        let dv = root.join("dv");
        let pf_dirs = [
            pf.clone(),
            Flavor::Debian13.host_path_unchecked(&pf),
            dv.clone(),
            Flavor::Debian13.host_path_unchecked(&dv),
        ];
        let pid_in =
            |p: PathBuf| -> Option<i32> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
        let spool = root.join("pf/spool");
        if let Some(pid) = pid_in(spool.join("pid/master.pid")) {
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            let in_root = Flavor::Debian13.host_path_unchecked(&spool);
            if (cwd == spool || cwd == in_root) && process_alive(pid) {
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
        // Whatever else still runs in its Postfix or Dovecot directory (a
        // master that ignored the TERM, a stuck `master -t`, …).
        let killed = kill_processes_in(&pf_dirs);
        if killed > 0 {
            eprintln!(
                "ramdir-integration: killed {killed} leaked Postfix/Dovecot process(es) of {}",
                root.display()
            );
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

pub(crate) fn collect_logs(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
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
    /// Whose Postfix runs.
    pub flavor: Flavor,
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
    /// [`start_with`](Self::start_with) default options (the host's
    /// Postfix).
    pub fn start(content: &DirectoryContent) -> Stack {
        Stack::start_with(content, &StackOptions::default())
    }

    /// [`start_with`](Self::start_with) default options on `flavor`'s
    /// Postfix.
    pub fn start_on(flavor: Flavor, content: &DirectoryContent) -> Stack {
        Stack::start_with(
            content,
            &StackOptions {
                flavor,
                ..Default::default()
            },
        )
    }

    /// Write the directory files, prepare Postfix's spool, start ramdir on
    /// its socket inside the spool, then start Postfix and wait for its
    /// banner.
    pub fn start_with(content: &DirectoryContent, opts: &StackOptions) -> Stack {
        let dir = StackDir::for_flavor(opts.flavor);
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

/// One test per [`Flavor`] for each scenario: for every `name` given, a
/// function `fn name(flavor: Flavor)` in the calling file becomes the tests
/// `debian12::name` and `debian13::name` (filter with either prefix).
#[macro_export]
macro_rules! test_on_both_flavors {
    ($($name:ident),+ $(,)?) => {
        mod debian12 {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::Flavor::Debian12)
                }
            )+
        }
        mod debian13 {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::Flavor::Debian13)
                }
            )+
        }
    };
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
/// reaps orphans late, so `kill -0` lies (stack-notes trap 15). Read from
/// `/proc/<pid>/stat` rather than by running `ps`: this runs in drops and
/// on a busy machine, where a fork can fail (EAGAIN) and must not turn a
/// cleanup into a panic.
pub fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the state follows the last ')' (comm may hold
    // anything, parentheses included).
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// Connect to a Unix socket, trying again (for up to [`WAIT`]) while the
/// kernel answers `EAGAIN`: a listener whose backlog is full on a busy
/// machine. Any other error (`ECONNREFUSED`, `ENOENT`: nobody listens) is
/// returned at once, since callers use it to see a daemon is down.
pub fn connect_unix(path: &Path) -> std::io::Result<std::os::unix::net::UnixStream> {
    let start = Instant::now();
    loop {
        match std::os::unix::net::UnixStream::connect(path) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && start.elapsed() < WAIT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// Connect over TCP (10 s timeout per try), trying again (for up to
/// [`WAIT`]) on `EAGAIN` and `EADDRNOTAVAIL` (no ephemeral port free for a
/// moment on a busy machine). Other errors are returned at once.
pub fn connect_tcp(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpStream> {
    use std::io::ErrorKind;
    let start = Instant::now();
    loop {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::AddrNotAvailable
                ) && start.elapsed() < WAIT =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// SIGKILL every live process (but this one) whose working directory is
/// inside one of `dirs`; returns how many. After a Postfix instance is
/// stopped this ends what its master did not: a `master -t` or
/// `postfix-script` stuck on logging once postlogd is gone, a daemon the
/// master lost track of. Such a process is provably the instance's: its
/// working directory is in the test's own stack. Never panics.
pub fn kill_processes_in(dirs: &[PathBuf]) -> usize {
    let me = std::process::id() as i32;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut n = 0;
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) else {
            continue;
        };
        if dirs.iter().any(|d| cwd.starts_with(d)) && process_alive(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            n += 1;
        }
    }
    n
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
