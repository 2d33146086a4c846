//! Connecting and binding, the same way for the sync and the fallback.

use std::os::unix::fs::PermissionsExt;

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings};

use crate::settings::{Bind, Settings};

/// Why LDAP could not be reached or used.
#[derive(Debug)]
pub enum LdapError {
    /// Connecting, TLS or the protocol failed.
    Ldap(ldap3::LdapError),
    /// The server answered an operation with an error code.
    Result {
        /// What was being done.
        op: &'static str,
        /// LDAP result code.
        rc: u32,
        /// Server's text.
        text: String,
    },
    /// The password file is missing, unreadable or world-readable.
    Credentials(String),
    /// No answer in time.
    Timeout(&'static str),
    /// The server sent something ramdir cannot use.
    Protocol(String),
}

impl std::fmt::Display for LdapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LdapError::Ldap(e) => write!(f, "ldap: {e}"),
            LdapError::Result { op, rc, text } => write!(f, "ldap {op} failed: rc={rc} {text}"),
            LdapError::Credentials(e) => write!(f, "ldap credentials: {e}"),
            LdapError::Timeout(op) => write!(f, "ldap {op} timed out"),
            LdapError::Protocol(e) => write!(f, "ldap protocol: {e}"),
        }
    }
}

impl std::error::Error for LdapError {}

impl LdapError {
    /// `Ok` for result code 0 (success), else the server's refusal of `op`.
    pub fn ensure_success(op: &'static str, rc: u32, text: String) -> Result<(), LdapError> {
        match rc {
            0 => Ok(()),
            rc => Err(LdapError::Result { op, rc, text }),
        }
    }
}

impl From<ldap3::LdapError> for LdapError {
    fn from(e: ldap3::LdapError) -> Self {
        LdapError::Ldap(e)
    }
}

/// Read the bind password, refusing a world-readable file.
pub fn read_password(path: &std::path::Path) -> Result<String, LdapError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| LdapError::Credentials(format!("{}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(LdapError::Credentials(format!(
            "{} is world-readable; chmod o-r it",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| LdapError::Credentials(format!("{}: {e}", path.display())))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// Connect to the first provider that answers, in the configured order
/// (the fallback's and the DN look-ups' way: any replica will do).
pub async fn connect(s: &Settings) -> Result<Ldap, LdapError> {
    let mut last = None;
    for url in s.urls() {
        match connect_to(s, url).await {
            Ok(l) => return Ok(l),
            // A refused bind is the same everywhere: no use trying on.
            Err(e @ (LdapError::Result { .. } | LdapError::Credentials(_))) => return Err(e),
            Err(e) => {
                tracing::debug!(%url, error = %e, "LDAP provider unreachable; trying the next");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| LdapError::Protocol("no LDAP URL configured".into())))
}

/// Connect to `url`, optionally StartTLS, bind. The connection's driver
/// runs on the current runtime until the handle is dropped or unbound.
pub async fn connect_to(s: &Settings, url: &str) -> Result<Ldap, LdapError> {
    let conn_settings = LdapConnSettings::new()
        .set_conn_timeout(s.timeout)
        .set_starttls(s.starttls);
    let fut = LdapConnAsync::with_settings(conn_settings, url);
    let (conn, mut ldap) = tokio::time::timeout(s.timeout, fut)
        .await
        .map_err(|_| LdapError::Timeout("connect"))??;
    tokio::spawn(async move {
        if let Err(e) = conn.drive().await {
            tracing::debug!(error = %e, "ldap connection ended");
        }
    });
    let res = match &s.bind {
        Bind::Anonymous => return Ok(ldap),
        Bind::Simple { dn, password_file } => {
            let pw = read_password(password_file)?;
            tokio::time::timeout(s.timeout, ldap.simple_bind(dn, &pw)).await
        }
        Bind::SaslExternal => tokio::time::timeout(s.timeout, ldap.sasl_external_bind()).await,
    };
    let res = res.map_err(|_| LdapError::Timeout("bind"))??;
    LdapError::ensure_success("bind", res.rc, res.text)?;
    Ok(ldap)
}

/// ldap3's scope for ours.
pub fn scope(s: crate::settings::Scope) -> ldap3::Scope {
    match s {
        crate::settings::Scope::Base => ldap3::Scope::Base,
        crate::settings::Scope::One => ldap3::Scope::OneLevel,
        crate::settings::Scope::Sub => ldap3::Scope::Subtree,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_readable_password_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "secret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_password(&p).unwrap_err().to_string();
        assert!(e.contains("world-readable") && !e.contains("secret"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(read_password(&p).unwrap(), "secret");
    }
}
