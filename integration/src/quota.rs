//! SMTP-time quota checks in front of a real Postfix → LMTP → Dovecot
//! chain: the three checkers the tests compare, switching Postfix between
//! them, and reading what happened to a message (SMTP replies, the
//! maillog, the queue).
//!
//! A [`MailStack`] with a Postfix is started as usual; then
//! [`enable_quota_listeners`] gives ramdir its `[policy]` and `[milter]`
//! listeners inside Postfix's spool (`<spool>/private/ramdir-policy`,
//! `<spool>/private/ramdir-milter`, named in `main.cf` by relative paths,
//! as docs/policy.md and docs/milter.md tell operators) and restarts it,
//! and [`use_checker`] rewrites `main.cf` with `postconf -e` and restarts
//! Postfix for one [`Checker`]. [`QUOTA_STATUS_DOVECOT_CONF`] is the
//! Dovecot side of Dovecot's own `quota-status` service.
//!
//! [`attempt`] sends one message and sums up its fate in one line
//! ([`Fate::summary`]), e.g. `near: RCPT 452 4.2.2` or
//! `accepted; free: sent; near: deferred (LMTP 452 4.2.2)`, so a test can
//! compare whole outcomes per checker.

use std::fmt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::dovecot::MailStack;
use crate::postfix::Postfix;
use crate::smtp::Reply;
use crate::{WAIT, write_atomic};

/// The policy socket's name inside the spool.
pub const POLICY_REL: &str = "private/ramdir-policy";

/// The milter socket's name inside the spool.
pub const MILTER_REL: &str = "private/ramdir-milter";

/// ramdir's over-quota reply, as configured by [`enable_quota_listeners`]
/// (ramdir's default).
pub const OVER_QUOTA_REPLY: &str = "452 4.2.2 Mailbox full";

/// The envelope sender of every test message (a remote domain: a bounce to
/// it goes to `default_transport`, which is `error:` in the harness).
pub const SENDER: &str = "sender@outside.test";

/// Dovecot's `quota_status_overquota`: ramdir's reply with a marker, so a
/// test can tell which checker refused.
pub const QUOTA_STATUS_OVER_QUOTA_REPLY: &str = "452 4.2.2 Mailbox is full (quota-status)";

/// Lines appended to `dovecot.conf` for Dovecot's own `quota-status`
/// policy service, on `base_dir/quota-status` (mode 0666: Postfix's smtpd
/// runs as `postfix`), with the settings every guide uses (`DUNNO`, never
/// the default `OK`, for success; `DUNNO` for unknown users so aliases are
/// not refused; a temporary reply for over quota, as ramdir's, see
/// [`QUOTA_STATUS_OVER_QUOTA_REPLY`]). LMTP answers over quota with a
/// temporary `452 4.2.2` (`quota_full_tempfail = yes`; Dovecot's default
/// is a final `552 5.2.2`).
pub const QUOTA_STATUS_DOVECOT_CONF: &str = "\
quota_full_tempfail = yes
service quota-status {
  executable = quota-status -p postfix
  client_limit = 1
  unix_listener quota-status {
    mode = 0666
  }
}
plugin {
  quota_status_success = DUNNO
  quota_status_nouser = DUNNO
  quota_status_overquota = \"452 4.2.2 Mailbox is full (quota-status)\"
}
";

/// [`QUOTA_STATUS_DOVECOT_CONF`] in Dovecot 2.4's syntax (the
/// `quota_status_*` settings are top-level there), with the grace set to
/// what ramdir uses for `near@` in the tests (10% of 100K; 2.4's grace is
/// a size, default 10M).
pub const QUOTA_STATUS_DOVECOT24_CONF: &str = "\
quota_full_tempfail = yes
quota_storage_grace = 10K
service quota-status {
  executable = quota-status -p postfix
  client_limit = 1
  unix_listener quota-status {
    mode = 0666
  }
}
quota_status_success = DUNNO
quota_status_nouser = DUNNO
quota_status_overquota = \"452 4.2.2 Mailbox is full (quota-status)\"
";

/// The quota-status lines for `flavor`'s Dovecot.
pub fn quota_status_dovecot_conf(flavor: crate::Flavor) -> &'static str {
    if flavor.dovecot_24() {
        QUOTA_STATUS_DOVECOT24_CONF
    } else {
        QUOTA_STATUS_DOVECOT_CONF
    }
}

/// The SMTP-time quota check Postfix consults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checker {
    /// ramdir's policy service, at RCPT and at end of data.
    RamdirPolicy,
    /// ramdir's milter.
    RamdirMilter,
    /// Dovecot's `quota-status` policy service, at RCPT.
    QuotaStatus,
}

impl Checker {
    /// All three, in the order of the comparison table.
    pub const ALL: [Checker; 3] = [
        Checker::RamdirPolicy,
        Checker::RamdirMilter,
        Checker::QuotaStatus,
    ];

    /// A short name (also put in the SMTP banner to see which config
    /// answers).
    pub fn name(self) -> &'static str {
        match self {
            Checker::RamdirPolicy => "ramdir-policy",
            Checker::RamdirMilter => "ramdir-milter",
            Checker::QuotaStatus => "quota-status",
        }
    }

    /// The `main.cf` settings for this checker (each a `name = value`
    /// line for `postconf -e`). Dovecot's quota-status socket is
    /// `quota_status_socket` (an absolute path: the harness's Postfix runs
    /// unchrooted).
    pub fn main_cf(self, quota_status_socket: &Path) -> Vec<String> {
        let policy = format!(
            "check_policy_service {{ unix:{POLICY_REL}, timeout=10s, default_action=DUNNO }}"
        );
        let (rcpt, eod, milters) = match self {
            Checker::RamdirPolicy => (
                format!("reject_unauth_destination, {policy}"),
                policy.clone(),
                String::new(),
            ),
            Checker::RamdirMilter => (
                "reject_unauth_destination".to_string(),
                String::new(),
                format!("{{ unix:{MILTER_REL}, default_action=tempfail }}"),
            ),
            Checker::QuotaStatus => (
                format!(
                    "reject_unauth_destination, check_policy_service {{ unix:{}, \
                     timeout=10s, default_action=DUNNO }}",
                    quota_status_socket.display()
                ),
                String::new(),
                String::new(),
            ),
        };
        vec![
            format!("smtpd_recipient_restrictions = {rcpt}"),
            format!("smtpd_end_of_data_restrictions = {eod}"),
            format!("smtpd_milters = {milters}"),
            "milter_protocol = 6".to_string(),
            format!("smtpd_banner = $myhostname ESMTP {}", self.name()),
        ]
    }
}

impl fmt::Display for Checker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Add `[policy]` and `[milter]` listeners (in Postfix's spool, mode
/// 0666) and the `[quota]` `grace` (keep it equal to Dovecot's: 2.3's
/// `quota_grace`, a percentage by default, 2.4's `quota_storage_grace`, a
/// size) and reply to the stack's ramdir config, restart ramdir
/// (listeners are only read at start) and wait until both sockets accept
/// connections. The stack must have a Postfix.
pub fn enable_quota_listeners(s: &mut MailStack, grace: &str) {
    let spool = s.postfix().spool().to_path_buf();
    let config = s.ramdir.config().to_path_buf();
    let text = std::fs::read_to_string(&config)
        .unwrap_or_else(|e| panic!("read {}: {e}", config.display()));
    assert!(
        text.contains("\n[quota]\n"),
        "no [quota] section in {}:\n{text}",
        config.display()
    );
    let mut text = text.replacen(
        "\n[quota]\n",
        &format!("\n[quota]\ngrace = \"{grace}\"\nover_quota_reply = \"{OVER_QUOTA_REPLY}\"\n"),
        1,
    );
    for (section, rel) in [("policy", POLICY_REL), ("milter", MILTER_REL)] {
        text.push_str(&format!(
            "\n[{section}]\nlisten = \"unix:{}\"\nmode = \"0666\"\n",
            spool.join(rel).display()
        ));
    }
    write_atomic(&config, &text);
    s.ramdir.stop();
    s.restart_ramdir();
    for rel in [POLICY_REL, MILTER_REL] {
        let p = spool.join(rel);
        crate::wait_for(
            WAIT,
            &format!("ramdir listening on {}", p.display()),
            || UnixStream::connect(&p).ok(),
        );
    }
}

/// Run a Postfix tool; panic if it fails or takes more than [`WAIT`] (a
/// Postfix whose logging is stuck blocks every tool, as each logs through
/// `postlogd`: fail with the command named rather than hang).
fn run_tool(cmd: &mut Command) -> std::process::Output {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            // A busy machine: the fork failed for a moment.
            std::thread::sleep(Duration::from_millis(200));
            cmd.spawn().unwrap_or_else(|e| panic!("run {what}: {e}"))
        }
        Err(e) => panic!("run {what}: {e}"),
    };
    // Read both pipes on threads, so a chatty tool cannot block on them.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for a Postfix tool") {
            break st;
        }
        if start.elapsed() > WAIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let output = std::process::Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    };
    assert!(
        output.status.success(),
        "{what} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Set `main.cf` parameters with `postconf -c ETC -e`, then date `main.cf`
/// back a minute (Postfix pauses on a config file changed within the
/// last seconds; see the harness's `age_config`).
pub fn postconf(pf: &Postfix, settings: &[String]) {
    run_tool(pf.tool("postconf").arg("-e").args(settings));
    let main_cf = pf.etc().join("main.cf");
    std::fs::File::options()
        .write(true)
        .open(&main_cf)
        .and_then(|f| f.set_modified(std::time::SystemTime::now() - Duration::from_secs(60)))
        .unwrap_or_else(|e| panic!("set mtime of {}: {e}", main_cf.display()));
}

/// Point Postfix at `checker`: `postconf -e` its settings
/// ([`Checker::main_cf`]), then restart Postfix and check that the new
/// smtpd answers (its banner names the checker).
///
/// A restart rather than `postfix reload`: once, under load, a reload
/// left this test instance's master without a `postlogd`, and since every
/// Postfix process logs through it (and `max_dgram_qlen` is 10 here),
/// every later smtpd and `postqueue` blocked for good. A stopped and
/// started master has never done that, and costs a few tenths of a second.
pub fn use_checker(s: &mut MailStack, checker: Checker) {
    let socket = quota_status_socket(s);
    let pf = s.postfix.as_mut().expect("this stack runs no Postfix");
    postconf(pf, &checker.main_cf(&socket));
    pf.stop();
    pf.start();
    let c = pf.smtp();
    let banner = c.banner.clone();
    let _ = c.quit();
    assert!(
        banner.text.ends_with(checker.name()),
        "Postfix restarted for {checker} answers {banner}"
    );
}

/// Dovecot's quota-status socket (`base_dir/quota-status`).
pub fn quota_status_socket(s: &MailStack) -> PathBuf {
    s.dovecot.root().join("run/quota-status")
}

/// One message in Postfix's queue, from `postqueue -j`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// The queue id.
    pub id: String,
    /// `incoming`, `active`, `deferred`, `hold`, …
    pub queue: String,
    /// The raw JSON line (recipients and delay reasons), for messages.
    pub json: String,
}

/// What is in Postfix's queue (`postqueue -c ETC -j`).
pub fn queue(pf: &Postfix) -> Vec<Queued> {
    let out = run_tool(pf.tool("postqueue").arg("-j"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Queued {
            id: json_str(l, "queue_id").unwrap_or_default(),
            queue: json_str(l, "queue_name").unwrap_or_default(),
            json: l.to_string(),
        })
        .collect()
}

/// The string value of `"key": "…"` in one flat JSON line (no escapes in
/// the values we read: queue ids and queue names).
fn json_str(line: &str, key: &str) -> Option<String> {
    let at = line.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = line[at..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

/// Delete every queued message (`postsuper -d ALL`).
pub fn delete_queue(pf: &Postfix) {
    run_tool(pf.tool("postsuper").args(["-d", "ALL"]));
}

/// One message to send: envelope, optional `SIZE=`, and the text (which
/// must contain `token`, to find it in a Maildir).
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    /// `RCPT TO` addresses, in order.
    pub rcpts: &'a [&'a str],
    /// The `SIZE=` parameter of `MAIL FROM`, if any.
    pub size_param: Option<usize>,
    /// The message (headers and body).
    pub message: String,
}

/// What became of one [`Attempt`].
#[derive(Debug, Clone)]
pub struct Fate {
    /// The summary line (see [`attempt`]).
    pub summary: String,
    /// The queue id, when the message was accepted.
    pub queue_id: Option<String>,
    /// Every negative SMTP reply (MAIL, RCPT, end of DATA), in order.
    pub refusals: Vec<Reply>,
    /// The maillog written during the attempt, for diagnostics.
    pub log: String,
}

/// `<code> <enhanced code>` of a reply (the enhanced code when the text
/// starts with one).
fn short(r: &Reply) -> String {
    let first = r.text.split_whitespace().next().unwrap_or("");
    let enhanced = first.split('.').count() == 3
        && first
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if enhanced {
        format!("{} {first}", r.code)
    } else {
        r.code.to_string()
    }
}

/// The local part of an address.
fn local(addr: &str) -> &str {
    addr.split('@').next().unwrap_or(addr)
}

/// Send `a` from [`SENDER`] over one SMTP session and wait for its fate.
/// The summary lists, joined by `"; "`:
/// - `MAIL <code> <x.y.z>` when MAIL was refused (nothing else is sent);
/// - `<local>: RCPT <code> <x.y.z>` for each refused recipient;
/// - `end of DATA <code> <x.y.z>` when the message was refused there;
/// - or `accepted`, then per final recipient (sorted) `<local>: sent`,
///   `<local>: deferred (LMTP <code> <x.y.z>)` or
///   `<local>: bounced (LMTP <code> <x.y.z>)`, and `bounce sent` when
///   Postfix sent the sender a non-delivery notification.
///
/// An accepted message's fate is settled when it has left the queue or
/// sits in the `deferred` queue (every recipient was tried once).
pub fn attempt(pf: &Postfix, a: &Attempt) -> Fate {
    let mark = pf.maillog_text().len();
    let mut parts = Vec::new();
    let mut c = pf.smtp();
    let r = c.ehlo("client.test").expect("EHLO");
    assert_eq!(r.code, 250, "EHLO: {r}");
    let mail = match a.size_param {
        Some(n) => format!("MAIL FROM:<{SENDER}> SIZE={n}"),
        None => format!("MAIL FROM:<{SENDER}>"),
    };
    let r = c.command(&mail).expect("MAIL FROM");
    let mut queue_id = None;
    let mut refusals = Vec::new();
    if !r.is_positive() {
        parts.push(format!("MAIL {}", short(&r)));
        refusals.push(r);
    } else {
        let mut accepted = 0;
        for rcpt in a.rcpts {
            let r = c.rcpt_to(rcpt).expect("RCPT TO");
            if r.is_positive() {
                accepted += 1;
            } else {
                parts.push(format!("{}: RCPT {}", local(rcpt), short(&r)));
                refusals.push(r);
            }
        }
        if accepted > 0 {
            let r = c.data(&a.message).expect("DATA");
            if r.is_positive() {
                let id = r
                    .queue_id()
                    .unwrap_or_else(|| panic!("no queue id in {r}"))
                    .to_string();
                parts.push("accepted".into());
                parts.extend(settle(pf, &id, mark));
                queue_id = Some(id);
            } else {
                parts.push(format!("end of DATA {}", short(&r)));
                refusals.push(r);
            }
        }
    }
    let _ = c.quit();
    let log = pf.maillog_text()[mark..].to_string();
    Fate {
        summary: parts.join("; "),
        queue_id,
        refusals,
        log,
    }
}

/// Wait until message `id` has left the queue or is deferred, then read
/// its deliveries from the maillog written since `mark`.
fn settle(pf: &Postfix, id: &str, mark: usize) -> Vec<String> {
    let start = Instant::now();
    loop {
        let q = queue(pf);
        match q.iter().find(|m| m.id == id) {
            None => {
                pf.wait_for_log(&[&format!(" {id}: removed")]);
                break;
            }
            Some(m) if m.queue == "deferred" => break,
            Some(m) => {
                if start.elapsed() > WAIT {
                    panic!(
                        "message {id} still in the {} queue after {WAIT:?}: {}\nmaillog:\n{}",
                        m.queue,
                        m.json,
                        &pf.maillog_text()[mark..]
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let log = pf.maillog_text()[mark..].to_string();
    let tag = format!(" {id}: to=<");
    let mut out: Vec<String> = log
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find(&tag)? + tag.len()..];
            let to = &rest[..rest.find('>')?];
            let status = &rest[rest.find("status=")? + "status=".len()..];
            let word = status.split_whitespace().next().unwrap_or("");
            Some(match word {
                "sent" => format!("{}: sent", local(to)),
                other => {
                    // "… said: 452 4.2.2 <…> Quota exceeded … (in reply to …)"
                    let said = status
                        .find("said: ")
                        .map(|i| &status[i + "said: ".len()..])
                        .unwrap_or("");
                    let mut w = said.split_whitespace();
                    let code = [w.next().unwrap_or("?"), w.next().unwrap_or("?")].join(" ");
                    format!("{}: {other} (LMTP {code})", local(to))
                }
            })
        })
        .collect();
    out.sort();
    out.dedup();
    if log.contains(&format!(" {id}: sender non-delivery notification")) {
        out.push("bounce sent".into());
    }
    out
}

/// Files in a Maildir's `new/` and `cur/` whose text contains `token`.
pub fn mails_with(maildir: &Path, token: &str) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for sub in ["new", "cur"] {
        if let Ok(rd) = std::fs::read_dir(maildir.join(sub)) {
            v.extend(
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains(token))),
            );
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_status_conf_uses_the_marked_reply() {
        for conf in [QUOTA_STATUS_DOVECOT_CONF, QUOTA_STATUS_DOVECOT24_CONF] {
            assert!(conf.contains(&format!(
                "quota_status_overquota = \"{QUOTA_STATUS_OVER_QUOTA_REPLY}\""
            )));
        }
    }

    #[test]
    fn postqueue_json_fields_are_read() {
        let l = r#"{"queue_name": "deferred", "queue_id": "4ABC12", "arrival_time": 1, "recipients": [{"address": "near@example.org"}]}"#;
        assert_eq!(json_str(l, "queue_id").as_deref(), Some("4ABC12"));
        assert_eq!(json_str(l, "queue_name").as_deref(), Some("deferred"));
        assert_eq!(json_str(l, "sender"), None);
    }

    #[test]
    fn replies_are_shortened_to_codes() {
        let r = |code, text: &str| Reply {
            code,
            text: text.into(),
        };
        assert_eq!(
            short(&r(452, "4.2.2 <a@b>: Recipient address rejected: x")),
            "452 4.2.2"
        );
        assert_eq!(short(&r(503, "Error: nested MAIL command")), "503");
        assert_eq!(local("Near+tag@Example.ORG"), "Near+tag");
    }

    #[test]
    fn checkers_configure_postfix() {
        let sock = Path::new("/x/quota-status");
        let policy = Checker::RamdirPolicy.main_cf(sock).join("\n");
        assert!(policy.contains(
            "smtpd_end_of_data_restrictions = check_policy_service { unix:private/ramdir-policy,"
        ));
        assert!(policy.contains("smtpd_milters = \n"));
        let milter = Checker::RamdirMilter.main_cf(sock).join("\n");
        assert!(
            milter.contains(
                "smtpd_milters = { unix:private/ramdir-milter, default_action=tempfail }"
            )
        );
        let qs = Checker::QuotaStatus.main_cf(sock).join("\n");
        assert!(qs.contains("check_policy_service { unix:/x/quota-status,"));
        assert!(qs.contains("smtpd_end_of_data_restrictions = \n"));
    }
}
