//! Creating listening Unix sockets the way a Debian mail daemon should:
//! refuse to steal a socket another process is serving, replace a stale one,
//! never delete a file that is not a socket, then apply mode, owner and group
//! (Postfix's daemons connect as `postfix`, Dovecot's as `dovecot` and root).

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

use crate::config::ListenerConfig;

/// Listening Unix sockets systemd passed in (socket activation,
/// `LISTEN_FDS`; sd_listen_fds(3)), by path. Outside systemd it is empty
/// and every listener binds its own socket.
#[derive(Debug, Default)]
pub struct Inherited(HashMap<PathBuf, std::os::unix::net::UnixListener>);

impl Inherited {
    /// Take over the descriptors systemd passed to this process. Call
    /// before any thread starts: it clears `LISTEN_FDS`/`LISTEN_PID`.
    pub fn from_env() -> Inherited {
        let mut fds = listenfd::ListenFd::from_env();
        let mut map = HashMap::new();
        for i in 0..fds.len() {
            match fds.take_unix_listener(i) {
                Ok(Some(l)) => match l
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(Path::to_path_buf))
                {
                    Some(p) => {
                        map.insert(p, l);
                    }
                    None => tracing::warn!(fd = i + 3, "inherited socket has no path; ignored"),
                },
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(fd = i + 3, error = %e, "inherited descriptor is not a Unix listening socket; ignored")
                }
            }
        }
        Inherited(map)
    }

    /// Inherited sockets no listener asked for (a `.socket` unit that
    /// does not match the configuration).
    pub fn unused(&self) -> impl Iterator<Item = &Path> {
        self.0.keys().map(PathBuf::as_path)
    }
}

/// The listener's socket: the one systemd passed for its path if any (its
/// mode, owner and group are the `.socket` unit's; it outlives ramdir, so
/// it is not removed at exit), otherwise bound here ([`bind`]; its path is
/// added to `ours` for removal at exit).
pub fn open(
    cfg: &ListenerConfig,
    inherited: &mut Inherited,
    ours: &mut Vec<PathBuf>,
) -> io::Result<UnixListener> {
    if let Some(l) = inherited.0.remove(&cfg.path) {
        l.set_nonblocking(true)?;
        tracing::info!(socket = %cfg.path.display(), "using the socket systemd passed (socket activation)");
        return UnixListener::from_std(l);
    }
    let l = bind(cfg)?;
    ours.push(cfg.path.clone());
    Ok(l)
}

/// Bind the listener's socket and set its permissions. If mode, owner or
/// group cannot be applied, the socket just created is removed again: a
/// failed start leaves no file behind for the next one to trip over.
pub fn bind(cfg: &ListenerConfig) -> io::Result<UnixListener> {
    let path = &cfg.path;
    check_directory(path)?;
    remove_stale(path)?;
    let listener = UnixListener::bind(path).map_err(|e| annotate(e, "bind", path))?;
    match set_permissions(cfg) {
        Ok(()) => Ok(listener),
        Err(e) => {
            drop(listener);
            cleanup(path);
            Err(e)
        }
    }
}

fn set_permissions(cfg: &ListenerConfig) -> io::Result<()> {
    let path = &cfg.path;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(cfg.mode))
        .map_err(|e| annotate(e, "chmod", path))?;
    let uid = cfg.owner.as_deref().map(resolve_user).transpose()?;
    let gid = cfg.group.as_deref().map(resolve_group).transpose()?;
    if uid.is_none() && gid.is_none() {
        return Ok(());
    }
    std::os::unix::fs::chown(path, uid, gid).map_err(|e| {
        if e.kind() != io::ErrorKind::PermissionDenied {
            return annotate(e, "chown", path);
        }
        // The common case: an unprivileged ramdir asked to hand its socket
        // to a group it is not a member of. Say what to do instead.
        let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map_or_else(|| nix::unistd::geteuid().to_string(), |u| u.name);
        io::Error::new(
            e.kind(),
            format!(
                "chown {} to owner {:?} group {:?}: {e}: ramdir runs as user {me}, which may \
                 only give a socket to a group it is a member of; leave owner and group \
                 unset and let the socket's directory guard access (the Debian package's \
                 /var/spool/postfix/ramdir is ramdir:postfix 0750, sockets mode 0666), \
                 or add {me} to that group",
                path.display(),
                cfg.owner.as_deref().unwrap_or("-"),
                cfg.group.as_deref().unwrap_or("-"),
            ),
        )
    })
}

/// Refuse a socket in a directory anyone may write to without the sticky
/// bit: any local user could then remove ramdir's socket and put their own
/// in its place, and Postfix or Dovecot would ask them (and send them
/// passwords). A sticky directory such as `/tmp` only lets the owner
/// remove the socket.
pub fn check_directory(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let meta = std::fs::metadata(dir).map_err(|e| annotate(e, "stat", dir))?;
    let mode = meta.permissions().mode();
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{}: the socket's directory {} is world-writable without the sticky bit \
                 (mode {:04o}): anyone could replace the socket; use a directory only \
                 ramdir can write (the package's /run/ramdir, /var/spool/postfix/ramdir)",
                path.display(),
                dir.display(),
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

fn annotate(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

fn remove_stale(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(annotate(e, "stat", path)),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; not touching it",
                path.display()
            ),
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} is being served by another process", path.display()),
        ));
    }
    std::fs::remove_file(path).map_err(|e| annotate(e, "remove stale socket", path))
}

fn resolve_user(name: &str) -> io::Result<u32> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no such user {name:?}"),
        )),
        Err(e) => Err(io::Error::other(format!("looking up user {name:?}: {e}"))),
    }
}

fn resolve_group(name: &str) -> io::Result<u32> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no such group {name:?}"),
        )),
        Err(e) => Err(io::Error::other(format!("looking up group {name:?}: {e}"))),
    }
}

/// Remove our socket on exit (only if it is still a socket).
pub fn cleanup(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    fn cfg(path: &Path) -> ListenerConfig {
        ListenerConfig {
            path: path.to_path_buf(),
            mode: 0o640,
            owner: None,
            group: Some("0".into()),
            max_connections: 1,
            idle_timeout: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn binds_sets_mode_and_refuses_live_or_foreign_paths() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        let l = bind(&cfg(&p)).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o640);
        // A live socket is not stolen.
        let e = bind(&cfg(&p)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        drop(l);
        // A stale one is replaced.
        bind(&cfg(&p)).unwrap();
        // A regular file is never deleted.
        let f = dir.path().join("file");
        std::fs::write(&f, "keep").unwrap();
        assert!(bind(&cfg(&f)).is_err());
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "keep");
    }

    #[tokio::test]
    async fn a_refused_chown_is_a_clear_error_and_leaves_no_socket() {
        if nix::unistd::geteuid().is_root() {
            // Root may chown to anyone; run the refusal as an unprivileged
            // user in a child so the test means the same everywhere.
            let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
                panic!("no user nobody");
            };
            let dir = tempfile::tempdir().unwrap();
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
            let p = dir.path().join("s");
            let out = std::process::Command::new("setpriv")
                .args(["--reuid", &nobody.uid.to_string(), "--regid"])
                .arg(nobody.gid.to_string())
                .args(["--clear-groups", "--"])
                .arg(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "listener::tests::a_refused_chown_is_a_clear_error_and_leaves_no_socket",
                    "--nocapture",
                ])
                .env("RAMDIR_TEST_SOCKET", &p)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("1 passed"),
                "{out:?}"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = std::env::var_os("RAMDIR_TEST_SOCKET")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.path().join("s"));
        let mut c = cfg(&p);
        c.group = Some("0".into()); // root's group: never ours when not root
        let e = bind(&c).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        let msg = e.to_string();
        assert!(msg.contains("chown") && msg.contains("member"), "{msg}");
        assert!(std::fs::symlink_metadata(&p).is_err(), "socket left behind");
    }

    #[tokio::test]
    async fn a_world_writable_directory_without_sticky_bit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = bind(&cfg(&p)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("world-writable"), "{e}");
        assert!(std::fs::symlink_metadata(&p).is_err(), "socket created");
        // Sticky (as /tmp): only the owner may remove the socket.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        drop(bind(&cfg(&p)).unwrap());
        // Group-writable is the operator's choice (a shared group).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o770)).unwrap();
        drop(bind(&cfg(&p)).unwrap());
    }

    #[test]
    fn unknown_user_is_an_error() {
        assert!(resolve_user("no-such-user-ramdir").is_err());
        assert_eq!(resolve_user("0").unwrap(), 0);
        assert_eq!(resolve_group("root").unwrap(), 0);
    }
}
