//! The one-shot commands: `query`, `explain`, `check-config`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use ramdir_core::Directory;
use ramdir_core::lookup::{Class, TargetKind};
use ramdir_core::quota::QuotaLimit;
use ramdir_dovecot::codec::{Command as DictCommand, Reply as DictReply};
use ramdir_dovecot::service::{Session, Settings as DictSettings, Step};
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

/// `ramdir query --config`: answer in-process with the same services the
/// sockets use (quota usage comes from the running daemon, or from the store
/// when the daemon is not running).
pub fn query_config(config: &Config, table: &str, key: &str) -> Result<Reply, CmdError> {
    let dir = load_directory(config)?;
    Ok(match table {
        "passdb" | "userdb" => {
            let settings = config
                .dict
                .as_ref()
                .map(|d| d.settings.clone())
                .unwrap_or_default();
            match auth_dict_lookup(&dir, &settings, &format!("shared/{table}/{key}")) {
                DictReply::Value(v) | DictReply::Json(v) => Reply::Ok(redact_password(&v)),
                DictReply::NotFound => Reply::NotFound,
                other => Reply::Temp(format!("{other:?}")),
            }
        }
        "quota" => quota_reply(config, key),
        _ => service::answer(&dir, &Request::new(table, key)),
    })
}

/// `ramdir query quota USER`: the usage this host's policy service and
/// milter decide on. Without `[quota] shared` that is the local store's.
/// With it, a user another host owns is decided on the value that host
/// published to Redis (which the running daemon's mirror follows), so
/// that value is shown, with its owner and version, even where the local
/// store cannot be read (an MX without `[dict]`, whose running daemon holds
/// the store's lock); a user this host owns, or that nobody published,
/// shows the local store's value. With Redis unreachable only a value in
/// the local store can be shown (the daemon's mirror keeps other hosts'
/// last values, which a separate process cannot read), and an unknown one
/// answers TEMP.
fn quota_reply(config: &Config, key: &str) -> Reply {
    let show = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_else(|| "unknown".into());
    let text = |(storage, messages): (Option<i64>, Option<i64>)| {
        format!("storage={} messages={}", show(storage), show(messages))
    };
    let local = usage(config, key).map_err(|e| e.to_string());
    let Some(shared) = config.quota.as_ref().and_then(|q| q.shared.as_ref()) else {
        return match local {
            Ok(u) => Reply::Ok(text(u)),
            Err(e) => Reply::Temp(e),
        };
    };
    let here = &shared.host_id;
    match (
        crate::shared::read_entry(shared, &key.to_lowercase()),
        local,
    ) {
        (Ok(Some(e)), local) if *e.host != **here => Reply::Ok(format!(
            "{} owner={} version={} (shared usage from Redis; this host's store: {})",
            text((e.storage, e.messages)),
            e.host,
            e.version,
            local.map_or_else(|e| format!("unreadable: {e}"), text),
        )),
        (Err(re), Err(e)) => Reply::Temp(format!("{e}; other hosts' usage: {re}")),
        (Ok(_), Err(e)) => Reply::Temp(e),
        (Ok(Some(e)), Ok(u)) => Reply::Ok(format!(
            "{} owner={here} (this host; Redis holds version {})",
            text(u),
            e.version
        )),
        (Ok(None), Ok(u)) => Reply::Ok(format!(
            "{} (this host's store; no host published this user to Redis)",
            text(u)
        )),
        (Err(e), Ok(u)) if u.0.is_some() || u.1.is_some() => Reply::Ok(format!(
            "{} (this host's store; another host's newer value cannot be read: {e})",
            text(u)
        )),
        (Err(e), Ok(_)) => Reply::Temp(format!(
            "this host's store has no usage for this user, and other hosts' cannot be read: {e}"
        )),
    }
}

/// Answer an auth dict lookup exactly as the dict socket would.
fn auth_dict_lookup(dir: &Directory, settings: &DictSettings, key: &str) -> DictReply {
    let mut session = Session::new();
    let hello = DictCommand::Hello {
        major: 3,
        minor: 2,
        value_type: 0,
        user: String::new().into(),
        dict: settings.auth_dict.clone().into(),
    };
    let _ = session.handle(hello, dir, None, settings);
    match session.handle(
        DictCommand::Lookup {
            key: key.into(),
            user: String::new().into(),
        },
        dir,
        None,
        settings,
    ) {
        Step::One(r) => r,
        Step::Reply(mut r) if r.len() == 1 => r.remove(0),
        other => DictReply::Fail(format!("{other:?}")),
    }
}

/// Replace a `password` value by its scheme: `query` output is for humans.
fn redact_password(json: &str) -> String {
    let Ok(serde_json::Value::Object(mut m)) = serde_json::from_str(json) else {
        return json.to_string();
    };
    if let Some(serde_json::Value::String(p)) = m.get("password") {
        let scheme = p
            .strip_prefix('{')
            .and_then(|p| p.split_once('}'))
            .map(|(s, _)| s);
        let shown = match scheme {
            Some(s) => format!("{{{s}}}(hidden)"),
            None => "(hidden)".into(),
        };
        m.insert("password".into(), shown.into());
    }
    serde_json::Value::Object(m).to_string()
}

/// A user's quota usage (bytes, messages): from the daemon's quota dict if
/// it runs (it holds the store open), else from the store file.
pub fn usage(config: &Config, user: &str) -> Result<(Option<i64>, Option<i64>), CmdError> {
    let user = user.to_lowercase();
    let Some(q) = &config.quota else {
        return Err("no [quota] store is configured".into());
    };
    if let Some(d) = &config.dict {
        // A dict socket means a daemon holds the store (or is starting and
        // about to): ask it, and never take the store's lock from under it.
        if d.listener.path.exists() {
            return dict_usage(&d.listener.path, &d.settings.quota_dict, &user)
                .map_err(|e| format!("asking the running daemon: {e}").into());
        }
    }
    let store = ramdir_core::usage::UsageStore::open(&q.store).map_err(|e| {
        format!(
            "{}: {e} (is ramdir running without a [dict] socket?)",
            q.store.display()
        )
    })?;
    let [storage, messages] = store.counters(&user)?;
    Ok((storage, messages))
}

fn dict_usage(
    socket: &Path,
    dict: &str,
    user: &str,
) -> Result<(Option<i64>, Option<i64>), CmdError> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    s.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut out = BytesMut::new();
    let hello = DictCommand::Hello {
        major: 3,
        minor: 2,
        value_type: 0,
        user: String::new().into(),
        dict: dict.into(),
    };
    hello.encode(&mut out);
    for key in ["priv/quota/storage", "priv/quota/messages"] {
        DictCommand::Lookup {
            key: key.into(),
            user: user.into(),
        }
        .encode(&mut out);
    }
    s.write_all(&out)?;
    let mut text = String::new();
    let mut chunk = [0u8; 1024];
    while text.matches('\n').count() < 2 {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err("the daemon closed the dict connection".into());
        }
        text.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
    let parse = |line: &str| -> Result<Option<i64>, CmdError> {
        match line.split_at(line.len().min(1)) {
            ("O", v) => Ok(Some(v.parse()?)),
            ("N", _) => Ok(None),
            (_, e) => Err(format!("quota dict: {e}").into()),
        }
    };
    let mut lines = text.lines();
    Ok((
        parse(lines.next().unwrap_or(""))?,
        parse(lines.next().unwrap_or(""))?,
    ))
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
    let mut listener = |name: &str, l: Option<&crate::config::ListenerConfig>| match l {
        Some(l) => out.push_str(&format!(
            "{name}: {} (mode {:04o})\n",
            l.path.display(),
            l.mode
        )),
        None => out.push_str(&format!("{name}: off\n")),
    };
    listener("socketmap", config.socketmap.as_ref());
    listener("policy", config.policy.as_ref());
    listener("milter", config.milter.as_ref());
    listener("dict", config.dict.as_ref().map(|d| &d.listener));
    if let Some(l) = &config.ldap {
        if let ramdir_ldap::settings::Bind::Simple { password_file, .. } = &l.bind {
            ramdir_ldap::conn::read_password(password_file)?;
        }
        out.push_str(&format!(
            "ldap: {} base {} (sync {}, fallback {})\n",
            l.url,
            l.base,
            if l.sync { "on" } else { "off" },
            if l.fallback { "on" } else { "off" }
        ));
    }
    if let Some(m) = &config.postfix_map {
        out.push_str(&format!(
            "postfix map: {} (mode {:04o})\n",
            m.directory.display(),
            m.mode
        ));
        for line in crate::postfix_map::check_plugin(&m.postfix_config_directory) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    match &config.quota {
        Some(q) => out.push_str(&format!(
            "quota store: {} (grace {:?}, over quota: {})\n",
            q.store.display(),
            q.grace,
            q.over_quota_reply
        )),
        None => out.push_str("quota store: off\n"),
    }
    for w in permission_warnings(config) {
        out.push_str(&format!("warning: {w}\n"));
    }
    Ok(out)
}

/// What `check-config` warns about in file permissions: secrets others may
/// read (the LDAP bind password file, passwd-files, which hold password
/// hashes) and files others may change (the configuration and every source:
/// whoever writes them decides where mail goes and who may log in). A file
/// that cannot be examined is skipped: loading it has been checked already.
pub fn permission_warnings(config: &Config) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| m.permissions().mode() & 0o7777)
    };
    let writable = |p: &Path, what: &str| {
        let m = mode(p).filter(|m| m & 0o022 != 0)?;
        let who = if m & 0o002 != 0 {
            "everyone"
        } else {
            "its group"
        };
        Some(format!(
            "{}: {what} is writable by {who} (mode {m:04o}): whoever can write it \
             controls mail routing and logins; chmod go-w",
            p.display()
        ))
    };
    let readable = |p: &Path, what: &str| {
        let m = mode(p).filter(|m| m & 0o004 != 0)?;
        Some(format!(
            "{}: {what} is readable by everyone (mode {m:04o}); chmod o-r \
             (and give it to ramdir's group)",
            p.display()
        ))
    };
    let mut out: Vec<Option<String>> = vec![writable(&config.path, "the configuration")];
    for p in config.directory.sources.all() {
        out.push(writable(p, "a source file"));
    }
    if let Some(l) = &config.ldap
        && let ramdir_ldap::settings::Bind::Simple { password_file, .. } = &l.bind
    {
        out.push(readable(password_file, "the LDAP bind password file"));
        out.push(writable(password_file, "the LDAP bind password file"));
    }
    for p in &config.directory.sources.passwd_files {
        out.push(readable(p, "a passwd-file (password hashes)"));
    }
    out.into_iter().flatten().collect()
}

fn size_text(b: u64) -> String {
    if b > 0 && b.is_multiple_of(1 << 30) {
        format!("{}G", b >> 30)
    } else if b > 0 && b.is_multiple_of(1 << 20) {
        format!("{}M", b >> 20)
    } else {
        format!("{b}B")
    }
}

/// The quota fields each Dovecot version gets in the user's userdb answer
/// (what the dict sends after an `H3` or an `H4` hello; 2.4's folder
/// settings shown per folder, under the `[dict] quota_namespace`
/// namespace).
fn dovecot_fields(u: &ramdir_core::User<'_>) -> (String, String) {
    use ramdir_core::quota::QuotaRule;
    let mut v23 = format!(
        "quota_rule={}",
        u.quota.to_rule().unwrap_or_else(|| "*:storage=0".into())
    );
    if let Some(g) = u.quota_grace {
        v23.push_str(&format!(" quota_grace={g}B"));
    }
    for (i, r) in u.quota_rules.iter().enumerate() {
        v23.push_str(&format!(" quota_rule{}={r}", i + 2));
    }
    let mut v24 = format!(
        "quota_storage_size={} quota_message_count={}",
        u.quota.storage.map_or("0".into(), |s| format!("{s}B")),
        u.quota.messages.unwrap_or(0)
    );
    if let Some(g) = u.quota_grace {
        v24.push_str(&format!(" quota_storage_grace={g}B"));
    }
    for r in u
        .quota_rules
        .iter()
        .filter_map(|r| QuotaRule::parse(r).ok())
    {
        let mut settings = Vec::new();
        r.v24_settings(u.quota, |k, v| settings.push(format!("{k}={v}")));
        if !ramdir_core::quota::v24_name_ok(&r.mailbox) {
            v24.push_str(&format!(
                "; mailbox {}: not sent (a 2.4 userdb field cannot name it; set it in dovecot.conf)",
                r.mailbox
            ));
        } else if !settings.is_empty() {
            v24.push_str(&format!("; mailbox {}: {}", r.mailbox, settings.join(" ")));
        }
    }
    (v23, v24)
}

fn quota_text(q: &QuotaLimit) -> String {
    let s = q
        .storage
        .map(size_text)
        .unwrap_or_else(|| "unlimited".into());
    match q.messages {
        Some(m) => format!("{s}, {m} messages"),
        None => s,
    }
}

/// A user's quota usage for `explain`, when a store is configured.
pub type UsageFn<'a> = &'a dyn Fn(&str) -> Option<Result<(Option<i64>, Option<i64>), String>>;

/// `ramdir explain`: how an address resolves, and why.
pub fn explain(dir: &Directory, key: &str, usage: UsageFn<'_>) -> String {
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
        Class::Ambiguous { key, claims } => format!(
            "{key} is claimed by {claims} directory entries (a directory error: every \
             table answers TEMP until only one claims it)"
        ),
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
                            u.quota_rules.to_vec().join(", ")
                        ));
                        line(format!(
                            "      grace: {}",
                            match u.quota_grace {
                                Some(g) =>
                                    format!("{} (own; replaces [quota] grace)", size_text(g)),
                                None => "[quota] grace".into(),
                            }
                        ));
                        let (v23, v24) = dovecot_fields(&u);
                        line(format!("      Dovecot 2.3 gets: {v23}"));
                        line(format!("      Dovecot 2.4 gets: {v24}"));
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
                            u.home.map_or("-".to_string(), |h| h.to_string()),
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
                        match usage(login) {
                            None => {}
                            Some(Ok((None, None))) => line(
                                "      usage: not tracked yet (Dovecot creates the counters on first use)"
                                    .into(),
                            ),
                            Some(Ok((bytes, messages))) => {
                                let show = |v: Option<i64>| {
                                    v.map(|v| v.to_string()).unwrap_or_else(|| "unknown".into())
                                };
                                line(format!(
                                    "      usage: {} bytes, {} messages",
                                    show(bytes),
                                    show(messages)
                                ));
                            }
                            Some(Err(e)) => line(format!("      usage: unavailable ({e})")),
                        }
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
    #[test]
    fn check_config_warns_about_readable_secrets_and_writable_files() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let chmod = |p: &std::path::Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        std::fs::write(d.join("users"), "a@x.org:{PLAIN}pw:1:1::/h::\n").unwrap();
        std::fs::write(d.join("aliases"), "b@x.org a@x.org\n").unwrap();
        std::fs::write(d.join("bindpw"), "secret\n").unwrap();
        let text = "[directory]\npasswd_files = [\"users\"]\nalias_files = [\"aliases\"]\n\
                    [ldap]\nurl = \"ldap://127.0.0.1:1\"\nbase = \"dc=x\"\n\
                    bind_dn = \"cn=r,dc=x\"\nbind_password_file = \"bindpw\"\n";
        let cfg_path = d.join("ramdir.toml");
        std::fs::write(&cfg_path, text).unwrap();
        let config = crate::config::Config::load(&cfg_path).unwrap();
        // Tight modes: nothing to say.
        for (f, m) in [
            ("users", 0o640),
            ("aliases", 0o644),
            ("bindpw", 0o640),
            ("ramdir.toml", 0o644),
        ] {
            chmod(&d.join(f), m);
        }
        assert_eq!(super::permission_warnings(&config), Vec::<String>::new());
        chmod(&d.join("users"), 0o644);
        chmod(&d.join("bindpw"), 0o604);
        chmod(&d.join("ramdir.toml"), 0o664);
        chmod(&d.join("aliases"), 0o666);
        let w = super::permission_warnings(&config);
        let has = |file: &str, what: &str| {
            w.iter()
                .any(|l| l.contains(&format!("/{file}:")) && l.contains(what))
        };
        assert!(has("users", "readable by everyone"), "{w:#?}");
        assert!(has("bindpw", "readable by everyone"), "{w:#?}");
        assert!(has("ramdir.toml", "writable by its group"), "{w:#?}");
        assert!(has("aliases", "writable by everyone"), "{w:#?}");
        assert_eq!(w.len(), 4, "{w:#?}");
        // The aliases' readability is no secret: only the passwd-file's
        // and the bind password's are.
        chmod(&d.join("aliases"), 0o644);
        assert_eq!(super::permission_warnings(&config).len(), 3);
    }

    use super::*;

    #[test]
    fn explain_shows_the_path_and_no_secret() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = Config::load(&crate::demo::prepare(tmp.path()).unwrap()).unwrap();
        let dir = load_directory(&cfg).unwrap();
        let text = explain(&dir, "Team+X@Example.org", &|_| None);
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
        let text = explain(&dir, "[1.2.3.4]", &|_| Some(Err("x".into())));
        assert!(text.contains("not an address"), "{text}");
        let text = explain(&dir, "bob@example.org", &|_| Some(Ok((Some(42), None))));
        assert!(text.contains("usage: 42 bytes, unknown messages"), "{text}");
        assert!(text.contains("grace: [quota] grace"), "{text}");
        assert!(
            text.contains("Dovecot 2.3 gets: quota_rule=*:storage=")
                && text.contains("quota_rule2=Trash:storage=+524288000B"),
            "{text}"
        );
        assert!(
            text.contains("Dovecot 2.4 gets: quota_storage_size=")
                && text.contains("; mailbox Trash: quota_storage_extra=524288000B"),
            "{text}"
        );
        assert!(!text.contains("2.4 gets: quota_rule"), "{text}");
    }

    #[test]
    fn explain_shows_the_limit_from_either_spelling() {
        let tmp = tempfile::tempdir().unwrap();
        let users = tmp.path().join("users");
        std::fs::write(
            &users,
            "new@x.org:{PLAIN}n::::::userdb_quota_storage_size=2M userdb_quota_message_count=100 userdb_quota_storage_grace=1M\n\
             old@x.org:{PLAIN}o::::::userdb_quota_rule=*:storage=3M userdb_quota_rule2=Trash:storage=+1M\n\
             both@x.org:{PLAIN}b::::::userdb_quota_rule=*:storage=4M userdb_quota_storage_size=4096K\n",
        )
        .unwrap();
        let sources = ramdir_core::files::FileSources {
            passwd_files: vec![users],
            ..Default::default()
        };
        let dir = ramdir_core::files::load(&sources, ramdir_core::Settings::default()).unwrap();
        let text = explain(&dir, "new@x.org", &|_| None);
        assert!(text.contains("quota: 2M, 100 messages;"), "{text}");
        assert!(text.contains("grace: 1M (own"), "{text}");
        assert!(
            text.contains(
                "2.3 gets: quota_rule=*:storage=2097152B:messages=100 quota_grace=1048576B"
            ),
            "{text}"
        );
        assert!(
            text.contains("2.4 gets: quota_storage_size=2097152B quota_message_count=100 quota_storage_grace=1048576B"),
            "{text}"
        );
        let text = explain(&dir, "old@x.org", &|_| None);
        assert!(text.contains("quota: 3M;"), "{text}");
        assert!(
            text.contains("2.4 gets: quota_storage_size=3145728B quota_message_count=0; mailbox Trash: quota_storage_extra=1048576B"),
            "{text}"
        );
        assert!(explain(&dir, "both@x.org", &|_| None).contains("quota: 4M;"));
    }

    #[test]
    fn query_shows_dict_answers_without_the_hash() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = Config::load(&crate::demo::prepare(tmp.path()).unwrap()).unwrap();
        let r = query_config(&cfg, "passdb", "alice@example.org").unwrap();
        assert_eq!(r, Reply::Ok("{\"password\":\"{PLAIN}(hidden)\"}".into()));
        let Reply::Ok(u) = query_config(&cfg, "userdb", "carol@example.org").unwrap() else {
            panic!()
        };
        assert!(u.contains("\"quota_rule\":\"*:storage=524288000B\""), "{u}");
        assert_eq!(
            query_config(&cfg, "passdb", "dave@example.net").unwrap(),
            Reply::NotFound
        );
        assert!(query_config(&cfg, "userdb", "dave@example.net").unwrap() != Reply::NotFound);
        // The demo has a quota store; nothing has been counted yet.
        assert_eq!(
            query_config(&cfg, "quota", "alice@example.org").unwrap(),
            Reply::Ok("storage=unknown messages=unknown".into())
        );
    }

    #[test]
    fn exit_status_follows_postmap() {
        assert_eq!(exit_status(&Reply::Ok("x".into())), 0);
        assert_eq!(exit_status(&Reply::NotFound), 1);
        assert_eq!(exit_status(&Reply::Temp("x".into())), EXIT_TEMPFAIL);
    }
}
