//! Creating listening Unix sockets the way a Debian mail daemon should:
//! refuse to steal a socket another process is serving, replace a stale one,
//! never delete a file that is not a socket, then apply mode, owner and group
//! (Postfix's daemons connect as `postfix`, Dovecot's as `dovecot` and root).

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use tokio::net::UnixListener;

use crate::config::ListenerConfig;

/// Bind the listener's socket and set its permissions.
pub fn bind(cfg: &ListenerConfig) -> io::Result<UnixListener> {
    let path = &cfg.path;
    remove_stale(path)?;
    let listener = UnixListener::bind(path).map_err(|e| annotate(e, "bind", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(cfg.mode))
        .map_err(|e| annotate(e, "chmod", path))?;
    let uid = cfg.owner.as_deref().map(resolve_user).transpose()?;
    let gid = cfg.group.as_deref().map(resolve_group).transpose()?;
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::chown(path, uid, gid).map_err(|e| annotate(e, "chown", path))?;
    }
    Ok(listener)
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

    #[test]
    fn unknown_user_is_an_error() {
        assert!(resolve_user("no-such-user-ramdir").is_err());
        assert_eq!(resolve_user("0").unwrap(), 0);
        assert_eq!(resolve_group("root").unwrap(), 0);
    }
}
