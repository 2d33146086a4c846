//! Which Debian's Postfix and Dovecot a stack runs: the host's Debian 12
//! packages (Postfix 3.7, Dovecot 2.3), or Debian 13's (Postfix 3.10,
//! Dovecot 2.4) from the root that `scripts/trixie-root.sh` builds once
//! per machine (docs/notes: debian13.md, "Recipe").
//!
//! ramdir itself always runs on the host. A Debian 13 daemon or tool runs
//! as `chroot <root> <program>`, and each test's stack directory is
//! bind-mounted at the *identical* path inside the root (trap 1), so every
//! generated path (configs, sockets, spool, maildirs) means the same file
//! on both sides. User and group ids are the root's own (`postfix` is
//! 100:102 there, trap 2), read from its `/etc/passwd`.

use std::path::{Path, PathBuf};
use std::process::Command;

use nix::unistd::{Gid, Uid};

/// Where `scripts/trixie-root.sh` builds the Debian 13 root unless
/// `RAMDIR_TRIXIE_ROOT` says otherwise (keep the two in step).
pub const TRIXIE_ROOT_DEFAULT: &str = "/var/tmp/ramdir-trixie";

/// Written last by `scripts/trixie-root.sh`: a root without it is
/// missing or half-built.
const STAMP: &str = ".ramdir-stamp";

/// The Postfix/Dovecot generation a stack runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Flavor {
    /// The host's packages: Postfix 3.7, Dovecot 2.3 (dict passdb/userdb
    /// and dict quota).
    #[default]
    Debian12,
    /// Debian 13 "trixie" from its root: Postfix 3.10, Dovecot 2.4 (Lua
    /// passdb/userdb bridge, `count` quota cloned into ramdir).
    Debian13,
}

impl Flavor {
    /// Both, in the order tests run them.
    pub const ALL: [Flavor; 2] = [Flavor::Debian12, Flavor::Debian13];

    /// A short name for messages and test output.
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Debian12 => "debian12",
            Flavor::Debian13 => "debian13",
        }
    }

    /// Does this flavor run Dovecot 2.4 (2.4 configuration syntax)?
    pub fn dovecot_24(self) -> bool {
        self == Flavor::Debian13
    }

    /// The root the daemons run in: `None` for the host, the Debian 13
    /// root otherwise. Panics, saying how to build it, when that root is
    /// missing or incomplete: the Debian 13 tests never skip.
    pub fn root(self) -> Option<PathBuf> {
        match self {
            Flavor::Debian12 => None,
            Flavor::Debian13 => Some(trixie_root()),
        }
    }

    /// A command that runs `program` (an absolute path) in this flavor:
    /// `program` itself, or `chroot <root> program`.
    pub fn command(self, program: &str) -> Command {
        match self.root() {
            None => Command::new(program),
            Some(root) => {
                let mut c = Command::new("/usr/sbin/chroot");
                c.arg(root).arg(program);
                c
            }
        }
    }

    /// The same as a `sh` word prefix: empty, or `chroot '<root>' `.
    pub fn shell_prefix(self) -> String {
        match self.root() {
            None => String::new(),
            Some(root) => format!(
                "/usr/sbin/chroot {} ",
                crate::shell_quote(&root.display().to_string())
            ),
        }
    }

    /// Where a path as the daemons see it is on the host.
    pub fn host_path(self, path: &Path) -> PathBuf {
        match self.root() {
            None => path.to_path_buf(),
            Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
        }
    }

    /// [`host_path`](Self::host_path) without checking that the root is
    /// complete (for the sweep of leaked processes, which must not panic).
    pub fn host_path_unchecked(self, path: &Path) -> PathBuf {
        match self {
            Flavor::Debian12 => path.to_path_buf(),
            Flavor::Debian13 => trixie_root_path().join(path.strip_prefix("/").unwrap_or(path)),
        }
    }

    /// Does `path` (as the daemons see it) exist?
    pub fn exists(self, path: &Path) -> bool {
        self.host_path(path).exists()
    }

    /// A system user's uid and primary gid as this flavor's daemons see
    /// them. Panics, with the fix, when there is no such user.
    pub fn user(self, name: &str) -> (Uid, Gid) {
        match self.root() {
            None => {
                let u = nix::unistd::User::from_name(name)
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| {
                        panic!("no user '{name}': run scripts/install-test-deps.sh (as root)")
                    });
                (u.uid, u.gid)
            }
            Some(root) => {
                let passwd = root.join("etc/passwd");
                let text = std::fs::read_to_string(&passwd)
                    .unwrap_or_else(|e| panic!("read {}: {e}", passwd.display()));
                passwd_entry(&text, name).unwrap_or_else(|| {
                    panic!(
                        "no user '{name}' in {}: rebuild the root (scripts/trixie-root.sh)",
                        passwd.display()
                    )
                })
            }
        }
    }
}

impl std::fmt::Display for Flavor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The Debian 13 root (`$RAMDIR_TRIXIE_ROOT` or [`TRIXIE_ROOT_DEFAULT`]),
/// after checking that `scripts/trixie-root.sh` finished it.
pub fn trixie_root() -> PathBuf {
    let root = trixie_root_path();
    if !root.join(STAMP).is_file() {
        panic!(
            "the Debian 13 root {} is missing or incomplete (no {STAMP}): \
             run scripts/install-test-deps.sh (as root), which builds it with \
             scripts/trixie-root.sh",
            root.display()
        );
    }
    root
}

/// The configured root path, checked or not.
pub(crate) fn trixie_root_path() -> PathBuf {
    std::env::var_os("RAMDIR_TRIXIE_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(TRIXIE_ROOT_DEFAULT))
}

/// uid and gid of `name` in a passwd file's text.
fn passwd_entry(text: &str, name: &str) -> Option<(Uid, Gid)> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 || f[0] != name {
            return None;
        }
        Some((
            Uid::from_raw(f[2].parse().ok()?),
            Gid::from_raw(f[3].parse().ok()?),
        ))
    })
}

/// Bind-mount `dir` at the same path inside the Debian 13 root; the guard
/// unmounts it (and removes the empty mount point) on drop.
#[derive(Debug)]
pub(crate) struct RootMount {
    target: PathBuf,
}

impl RootMount {
    pub(crate) fn new(root: &Path, dir: &Path) -> RootMount {
        let target = root.join(dir.strip_prefix("/").unwrap_or(dir));
        std::fs::create_dir_all(&target)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", target.display()));
        nix::mount::mount(
            Some(dir),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("bind-mount {} at {}: {e}", dir.display(), target.display()));
        RootMount { target }
    }
}

impl Drop for RootMount {
    fn drop(&mut self) {
        unmount(&self.target);
    }
}

/// Unmount a bind mount (lazily when something still holds it) and remove
/// its empty mount point. Never panics: it runs in drops.
pub(crate) fn unmount(target: &Path) {
    use nix::mount::{MntFlags, umount2};
    if umount2(target, MntFlags::empty()).is_err()
        && let Err(e) = umount2(target, MntFlags::MNT_DETACH)
    {
        eprintln!(
            "ramdir-integration: could not unmount {}: {e}",
            target.display()
        );
        return;
    }
    let _ = std::fs::remove_dir(target);
}

/// Mount points inside the Debian 13 root that belong to stack
/// directories (`<root>/tmp/rdi-<pid>-<n>`), with the owning test
/// process's pid, from the kernel's mount table.
pub fn stack_mounts() -> Vec<(PathBuf, i32)> {
    let root = trixie_root_path();
    let prefix = root.join("tmp/rdi-");
    let prefix = prefix.to_string_lossy().into_owned();
    let table = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut out = Vec::new();
    for line in table.lines() {
        let Some(point) = line.split(' ').nth(1) else {
            continue;
        };
        // The table escapes spaces as \040; stack paths have none.
        let Some(rest) = point.strip_prefix(&prefix) else {
            continue;
        };
        if let Some(owner) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) {
            out.push((PathBuf::from(point), owner));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_entries_are_read() {
        let t = "root:x:0:0:root:/root:/bin/bash\npostfix:x:100:102::/var/spool/postfix:/usr/sbin/nologin\n";
        assert_eq!(
            passwd_entry(t, "postfix"),
            Some((Uid::from_raw(100), Gid::from_raw(102)))
        );
        assert_eq!(passwd_entry(t, "post"), None);
    }

    #[test]
    fn host_paths_are_under_the_root() {
        assert_eq!(
            Flavor::Debian12.host_path(Path::new("/tmp/x")),
            PathBuf::from("/tmp/x")
        );
    }
}
