//! Running as root only when told to. Started as root, ramdir binds its
//! sockets and opens its quota store, then switches for good to the user
//! `[server] user` names (its primary group and supplementary groups from
//! the group database), as Postfix's and Dovecot's daemons do; without
//! that key it refuses to start as root unless `--allow-root` says so. The
//! Debian package's unit starts it as user `ramdir` from the beginning.

use std::ffi::CString;

use nix::unistd::{Gid, Uid, User};

use crate::config::Config;
use crate::serve::CmdError;

/// Who to become after binding.
#[derive(Debug, Clone)]
pub struct Target {
    name: String,
    uid: Uid,
    gid: Gid,
}

/// Decide before anything is opened: `Some` when running as root with
/// `[server] user` set; an error when running as root with neither that
/// key nor `allow_root`, or when the user does not exist, or when not
/// root and asked to become somebody else.
pub fn plan(config: &Config, allow_root: bool) -> Result<Option<Target>, CmdError> {
    let euid = nix::unistd::geteuid();
    let Some(name) = &config.server.user else {
        if euid.is_root() && !allow_root {
            return Err(format!(
                "refusing to run as root: set [server] user = \"ramdir\" in {} to switch \
                 to that user once the sockets are bound, start ramdir as an unprivileged \
                 user (the Debian package's unit runs it as ramdir), or pass --allow-root",
                config.path.display()
            )
            .into());
        }
        return Ok(None);
    };
    let user = match name.parse::<u32>() {
        Ok(n) => User::from_uid(Uid::from_raw(n)),
        Err(_) => User::from_name(name),
    }
    .map_err(|e| format!("[server] user {name:?}: {e}"))?
    .ok_or_else(|| format!("[server] user {name:?}: no such user"))?;
    if user.uid.is_root() && !allow_root {
        return Err(format!(
            "[server] user {name:?} is root: name an unprivileged user, or pass --allow-root"
        )
        .into());
    }
    if !euid.is_root() {
        if user.uid == euid {
            return Ok(None);
        }
        return Err(format!(
            "[server] user {name:?}: ramdir runs as uid {euid}, not root, and cannot \
             switch users; start it as root or as {name}"
        )
        .into());
    }
    Ok(Some(Target {
        name: user.name,
        uid: user.uid,
        gid: user.gid,
    }))
}

impl Target {
    /// The uid and gid to hand files to before switching.
    pub fn ids(&self) -> (Uid, Gid) {
        (self.uid, self.gid)
    }

    /// Switch every thread of the process to the user for good (glibc's
    /// setuid applies to all threads). Checks that root cannot be had
    /// back.
    pub fn switch(&self) -> Result<(), CmdError> {
        let name = CString::new(self.name.as_str())
            .map_err(|_| format!("[server] user {:?}: NUL in name", self.name))?;
        nix::unistd::initgroups(&name, self.gid)
            .map_err(|e| format!("initgroups({}): {e}", self.name))?;
        nix::unistd::setgid(self.gid).map_err(|e| format!("setgid({}): {e}", self.gid))?;
        nix::unistd::setuid(self.uid).map_err(|e| format!("setuid({}): {e}", self.uid))?;
        if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
            return Err("switching users failed: root could be regained".into());
        }
        tracing::info!(user = %self.name, uid = %self.uid, gid = %self.gid, "switched from root");
        Ok(())
    }
}
