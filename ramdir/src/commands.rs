//! The one-shot commands: `query`, `explain`, `check-config`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use ramdir_core::Directory;
use ramdir_core::lookup::{Class, TargetKind};
use ramdir_core::quota::QuotaLimit;
use ramdir_postfix::socketmap::codec::{Reply, Request};
use ramdir_postfix::socketmap::service::{self, Table};

use crate::config::Config;
use crate::serve::{CmdError, load_directory};

/// Exit status for a temporary failure (`EX_TEMPFAIL`, sysexits.h).
pub const EXIT_TEMPFAIL: u8 = 75;

/// How long `query --socket` waits for the daemon.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Exit status for a reply, as `postmap -q`: 0 found, 1 not found.
pub fn exit_status(reply: &Reply) -> u8 {
    match reply {
        Reply::Ok(_) => 0,
        Reply::NotFound => 1,
        _ => EXIT_TEMPFAIL,
    }
}

/// `ramdir query --config`: answer in-process with the same service the
/// socket uses.
pub fn query_config(config: &Config, table: &str, key: &str) -> Result<Reply, CmdError> {
    let dir = load_directory(config)?;
    Ok(service::answer(&dir, &Request::new(table, key)))
}

/// `ramdir query --socket`: ask a running daemon.
pub fn query_socket(path: &Path, table: &str, key: &str) -> Result<Reply, CmdError> {
    let mut s =
        UnixStream::connect(path).map_err(|e| format!("connect {}: {e}", path.display()))?;
    s.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    s.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut out = BytesMut::new();
    Request::new(table, key).encode(&mut out);
    s.write_all(&out)?;
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(r) = Reply::decode(&mut buf)? {
            return Ok(r);
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err("the daemon closed the connection without a reply".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `ramdir check-config`: validate the configuration and load every source.
pub fn check_config(config: &Config) -> Result<String, CmdError> {
    let dir = load_directory(config)?;
    let c = dir.counts();
    let mut out = format!(
        "{}: ok: {} users, {} aliases, {} domains, {} sender-login keys\n",
        config.path.display(),
        c.users,
        c.aliases,
        c.domains,
        c.senders
    );
    match &config.socketmap {
        Some(l) => out.push_str(&format!(
            "socketmap: {} (mode {:04o})\n",
            l.path.display(),
            l.mode
        )),
        None => out.push_str("socketmap: off\n"),
    }
    Ok(out)
}

fn quota_text(q: &QuotaLimit) -> String {
    let size = |b: u64| {
        if b.is_multiple_of(1 << 30) {
            format!("{}G", b >> 30)
        } else if b.is_multiple_of(1 << 20) {
            format!("{}M", b >> 20)
        } else {
            format!("{b}B")
        }
    };
    let s = q.storage.map(size).unwrap_or_else(|| "unlimited".into());
    match q.messages {
        Some(m) => format!("{s}, {m} messages"),
        None => s,
    }
}

/// `ramdir explain`: how an address resolves, and why.
pub fn explain(dir: &Directory, key: &str) -> String {
    let mut o = String::new();
    let mut line = |s: String| {
        o.push_str(&s);
        o.push('\n');
    };
    line(format!("address:    {key}"));
    let (addr, class) = dir.classify(key);
    match &addr {
        None => {
            line("normalised: not an address ramdir can hold (every table says NOTFOUND)".into())
        }
        Some(a) => {
            let ext = a
                .extension
                .as_deref()
                .map(|e| format!(" (extension {e})"))
                .unwrap_or_default();
            line(format!("normalised: {}{ext}", a.base()));
            let ours = if dir.has_domain(&a.domain) {
                "ours"
            } else {
                "not ours"
            };
            line(format!("domain:     {} ({ours})", a.domain));
        }
    }
    let what = match &class {
        Class::Alias {
            key,
            propagate: Some(e),
        } => {
            format!("alias {key}; extension {e} re-appended to local targets")
        }
        Class::Alias {
            key,
            propagate: None,
        } => format!("alias {key}"),
        Class::Mailbox { login } => format!("mailbox {login}"),
        Class::CatchAll { key } => format!("no alias or mailbox; catch-all {key}"),
        Class::UnknownLocal => "unknown user in one of our domains".into(),
        Class::Foreign => "not ours".into(),
    };
    line(format!("resolves:   {what}"));
    match dir.resolve(key) {
        Err(e) => line(format!(
            "error:      {e} (socketmap answers TEMP: Postfix defers)"
        )),
        Ok(r) => {
            if r.trace.len() > 1 {
                line("expansion:".into());
                for (depth, text) in &r.trace {
                    line(format!("  {}{text}", "  ".repeat(*depth)));
                }
            }
            if !r.targets.is_empty() {
                line("delivers to:".into());
            }
            for t in &r.targets {
                match &t.kind {
                    TargetKind::Mailbox(login) => {
                        let u = dir.user(login).expect("resolved mailbox exists");
                        let quota = format!(
                            "{}{}",
                            quota_text(&u.quota),
                            if u.own_quota { "" } else { " (default)" }
                        );
                        line(format!("  {}  mailbox {login}", t.address));
                        line(format!(
                            "      quota: {quota}; folder rules: {}",
                            u.quota_rules.join(", ")
                        ));
                        let scheme = u
                            .password
                            .map(
                                |p| match p.strip_prefix('{').and_then(|p| p.split_once('}')) {
                                    Some((s, _)) => format!("set ({{{s}}}, hash not shown)"),
                                    None => "set (hash not shown)".into(),
                                },
                            )
                            .unwrap_or_else(|| "none".into());
                        line(format!(
                            "      uid {} gid {} home {} mail {}",
                            u.uid.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                            u.gid.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                            u.home.as_deref().unwrap_or("-"),
                            u.mail.unwrap_or("-"),
                        ));
                        line(format!(
                            "      password {scheme}; login {}",
                            if u.enabled {
                                "allowed"
                            } else {
                                "disabled (still receives mail)"
                            }
                        ));
                    }
                    TargetKind::UnknownLocal => line(format!(
                        "  {}  unknown in our domain (Postfix will reject it)",
                        t.address
                    )),
                    TargetKind::Remote => line(format!("  {}  remote", t.address)),
                }
            }
        }
    }
    line("socketmap answers:".into());
    let domain = addr
        .as_ref()
        .map(|a| a.domain.clone())
        .unwrap_or_else(|| key.to_string());
    for t in Table::ALL {
        let k = if t == Table::Domains {
            domain.as_str()
        } else {
            key
        };
        let reply = service::answer(dir, &Request::new(t.name(), k));
        line(format!(
            "  {:<9} {k} → {}",
            t.name(),
            reply.payload().trim_end()
        ));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explain_shows_the_path_and_no_secret() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = Config::load(&crate::demo::prepare(tmp.path()).unwrap()).unwrap();
        let dir = load_directory(&cfg).unwrap();
        let text = explain(&dir, "Team+X@Example.org");
        assert!(
            text.contains("normalised: team@example.org (extension +x)"),
            "{text}"
        );
        assert!(
            text.contains("alice+x@example.org  mailbox alice@example.org"),
            "{text}"
        );
        assert!(
            text.contains("password set ({PLAIN}, hash not shown)"),
            "{text}"
        );
        assert!(
            text.contains(
                "aliases   Team+X@Example.org → OK alice+x@example.org,bob+x@example.org"
            ),
            "{text}"
        );
        assert!(!text.contains("{PLAIN}alice"), "{text}");
        let text = explain(&dir, "[1.2.3.4]");
        assert!(text.contains("not an address"), "{text}");
    }

    #[test]
    fn exit_status_follows_postmap() {
        assert_eq!(exit_status(&Reply::Ok("x".into())), 0);
        assert_eq!(exit_status(&Reply::NotFound), 1);
        assert_eq!(exit_status(&Reply::Temp("x".into())), EXIT_TEMPFAIL);
    }
}
