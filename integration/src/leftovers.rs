//! Which processes belong to a test stack, and which of them outlived the
//! test that started them.
//!
//! Every daemon the harness starts works inside its stack directory
//! `/tmp/rdi-<owner>-<n>` ([`crate::StackDir`], `<owner>` the test
//! process's id), seen from the host either at that path or, for the
//! Debian 13 daemons, at the same path inside the Debian 13 root. Each
//! one shows it in `/proc`: Postfix's master and daemons (and redis-server,
//! which rewrites its command line) run with their working directory there;
//! Dovecot's master, slapd and ramdir name their config file from there on
//! their command line; and every process the harness spawns itself carries
//! [`STACK_ENV`] in its environment (Postfix and Dovecot clear theirs, but
//! their processes are found by the first two). A process of a stack whose
//! owner no longer runs is a leftover: nothing will stop it but the next
//! run's sweep ([`stop_leaked`]).
//!
//! `scripts/test-under-load.sh` (through the `leftover-daemons` binary) and
//! `tests/harness_cleanup.rs` use this to prove the suite leaves nothing
//! behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::process_alive;

/// Set by the harness on every daemon it spawns itself (ramdir, slapd,
/// redis-server): the stack directory the daemon belongs to.
pub const STACK_ENV: &str = "RAMDIR_STACK";

/// What every stack directory's path holds (host or Debian 13 root view).
const STACK_MARK: &str = "/tmp/rdi-";

/// How a process was seen to belong to a stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// Its working directory is inside the stack.
    Cwd,
    /// An argument names a path inside the stack.
    Cmdline,
    /// [`STACK_ENV`] names the stack.
    Environ,
}

/// A live process of a test stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackProcess {
    /// Its process id.
    pub pid: i32,
    /// The stack directory (`/tmp/rdi-<owner>-<n>`).
    pub stack: PathBuf,
    /// The test process that made the stack.
    pub owner: i32,
    /// How it was seen to belong there.
    pub evidence: Evidence,
    /// Its command line, arguments separated by spaces.
    pub cmdline: String,
}

impl std::fmt::Display for StackProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\t{}\t{:?}\t{}",
            self.pid,
            self.stack.display(),
            self.evidence,
            self.cmdline
        )
    }
}

/// The stack directory a path (as the host sees it, or as a daemon in the
/// Debian 13 root sees it) lies in, with its owner: the first
/// `/tmp/rdi-<owner>-<n>` in it.
pub fn stack_in(text: &str) -> Option<(PathBuf, i32)> {
    let at = text.find(STACK_MARK)?;
    let rest = &text[at + STACK_MARK.len()..];
    let name_len = rest.find(['/', ' ', '\0', '"', '\'']).unwrap_or(rest.len());
    let (owner, n) = rest[..name_len].split_once('-')?;
    let owner: i32 = owner.parse().ok()?;
    let n: usize = n.parse().ok()?;
    Some((PathBuf::from(format!("{STACK_MARK}{owner}-{n}")), owner))
}

/// Which stack a process belongs to, from what `/proc/<pid>` shows of it:
/// its working directory, its NUL-separated command line and environment.
pub fn stack_of(cwd: &Path, cmdline: &[u8], environ: &[u8]) -> Option<(PathBuf, i32, Evidence)> {
    let with = |e: Evidence| move |(s, o): (PathBuf, i32)| (s, o, e);
    if let Some(found) = stack_in(&cwd.to_string_lossy()).map(with(Evidence::Cwd)) {
        return Some(found);
    }
    let args = cmdline.split(|b| *b == 0).filter(|a| !a.is_empty());
    if let Some(found) = args
        .filter_map(|a| stack_in(&String::from_utf8_lossy(a)))
        .next()
        .map(with(Evidence::Cmdline))
    {
        return Some(found);
    }
    let prefix = format!("{STACK_ENV}=");
    environ
        .split(|b| *b == 0)
        .filter_map(|v| v.strip_prefix(prefix.as_bytes()))
        .filter_map(|v| stack_in(&String::from_utf8_lossy(v)))
        .next()
        .map(with(Evidence::Environ))
}

/// Every live process (but this one) of any test stack.
pub fn stack_processes() -> Vec<StackProcess> {
    let me = std::process::id() as i32;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cwd = std::fs::read_link(e.path().join("cwd")).unwrap_or_default();
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
        let Some((stack, owner, evidence)) = stack_of(&cwd, &cmdline, &environ) else {
            continue;
        };
        if !process_alive(pid) {
            continue;
        }
        out.push(StackProcess {
            pid,
            stack,
            owner,
            evidence,
            cmdline: String::from_utf8_lossy(&cmdline)
                .split('\0')
                .filter(|a| !a.is_empty())
                .collect::<Vec<_>>()
                .join(" "),
        });
    }
    out.sort_by_key(|p| p.pid);
    out
}

/// The processes of stacks whose owner no longer runs.
pub fn leaked() -> Vec<StackProcess> {
    stack_processes()
        .into_iter()
        .filter(|p| !process_alive(p.owner))
        .collect()
}

/// The processes of the stacks `owner` made (it may have exited).
pub fn of_owner(owner: i32) -> Vec<StackProcess> {
    stack_processes()
        .into_iter()
        .filter(|p| p.owner == owner)
        .collect()
}

/// How long a leftover gets to exit after SIGTERM before SIGKILL: slapd
/// and ramdir flush on TERM, which a busy machine may slow down.
pub const TERM_GRACE: Duration = Duration::from_secs(10);

/// Stop every process of a stack whose owner no longer runs: SIGTERM, then
/// SIGKILL for any still alive after [`TERM_GRACE`]. Returns what it found.
/// With `record`, each one is also appended to `swept-daemons.txt` in
/// [`crate::logs::archive_dir`] (the start-up sweep does that, so that a
/// sweep inside a test run, which hides an earlier test's leak, is still
/// seen by `scripts/test-under-load.sh`). Never panics.
pub fn stop_leaked(record: bool) -> Vec<StackProcess> {
    let found = leaked();
    if found.is_empty() {
        return found;
    }
    for p in &found {
        eprintln!("ramdir-integration: stopping leftover {p}");
    }
    if record {
        record_sweep(&found);
    }
    for p in &found {
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + TERM_GRACE;
    while found.iter().any(|p| process_alive(p.pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in &found {
        if process_alive(p.pid) {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
        }
    }
    found
}

/// The file [`stop_leaked`] appends to.
pub fn sweep_record() -> PathBuf {
    crate::logs::archive_dir().join("swept-daemons.txt")
}

fn record_sweep(found: &[StackProcess]) {
    use std::io::Write;
    let path = sweep_record();
    if let Some(d) = path.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let Ok(mut f) = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&path)
    else {
        return;
    };
    for p in found {
        let _ = writeln!(f, "{p}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_paths_on_the_host_and_in_the_root() {
        let want = Some((PathBuf::from("/tmp/rdi-123-4"), 123));
        assert_eq!(stack_in("/tmp/rdi-123-4/pf/spool"), want);
        assert_eq!(stack_in("/tmp/rdi-123-4"), want);
        assert_eq!(
            stack_in("/var/tmp/ramdir-trixie/tmp/rdi-123-4/dv (deleted)"),
            want
        );
        assert_eq!(stack_in("unix:/tmp/rdi-123-4/run/dict.sock"), want);
        assert_eq!(stack_in("/tmp/rdi-x-4/pf"), None);
        assert_eq!(stack_in("/tmp/rdi-123/pf"), None);
        assert_eq!(stack_in("/tmp/other/pf"), None);
    }

    #[test]
    fn a_process_belongs_by_cwd_cmdline_or_environ() {
        let none = Path::new("/");
        assert_eq!(
            stack_of(Path::new("/tmp/rdi-7-0/pf/spool"), b"master\0-w\0", b""),
            Some((PathBuf::from("/tmp/rdi-7-0"), 7, Evidence::Cwd))
        );
        assert_eq!(
            stack_of(
                none,
                b"/usr/sbin/slapd\0-f\0/tmp/rdi-7-1/ld/slapd.conf\0",
                b""
            ),
            Some((PathBuf::from("/tmp/rdi-7-1"), 7, Evidence::Cmdline))
        );
        assert_eq!(
            stack_of(
                none,
                b"redis-server 127.0.0.1:5000\0",
                b"PATH=/bin\0RAMDIR_STACK=/tmp/rdi-7-2\0"
            ),
            Some((PathBuf::from("/tmp/rdi-7-2"), 7, Evidence::Environ))
        );
        // Another variable naming a stack proves nothing (the test
        // process itself may have one).
        assert_eq!(
            stack_of(none, b"cargo\0test\0", b"OLDPWD=/tmp/rdi-7-2\0"),
            None
        );
        assert_eq!(stack_of(none, b"sleep\x00600\0", b""), None);
    }

    /// The check sees a real process left in a stack directory of a gone
    /// owner (as a daemon whose guard never ran would be): it is not a
    /// check that cannot fail. (tests/harness_cleanup.rs shows it on a
    /// whole stack, and the sweep.)
    #[test]
    fn a_leftover_is_found() {
        // An owner id that no process has: past the kernel's pid_max.
        let dead_owner = 4_194_304 + 7;
        let stack = PathBuf::from(format!("/tmp/rdi-{dead_owner}-0"));
        std::fs::create_dir_all(&stack).expect("mkdir fake stack");
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .current_dir(&stack)
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        let start = Instant::now();
        // exec of sleep may lag the fork on a busy machine.
        while !leaked().iter().any(|p| p.pid == pid) && start.elapsed() < crate::WAIT {
            std::thread::sleep(Duration::from_millis(20));
        }
        let found: Vec<_> = leaked().into_iter().filter(|p| p.pid == pid).collect();
        assert_eq!(found.len(), 1, "the leftover sleep was not found");
        assert_eq!(found[0].stack, stack);
        assert_eq!(found[0].evidence, Evidence::Cwd);
        // Only ours: the sweep would also stop other leftovers.
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let _ = child.wait();
        assert!(!leaked().iter().any(|p| p.pid == pid));
        let _ = std::fs::remove_dir(&stack);
    }
}
