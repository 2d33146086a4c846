//! `e2e`: the end-to-end mail benchmark (issue 14, item 4): real Postfix
//! → LMTP → real Dovecot, mail injected with Postfix's own `smtp-source`,
//! the same run for each directory setup:
//!
//! - `a`: ramdir (synced from slapd) answers Postfix's socketmap and
//!   Dovecot's dict passdb/userdb and quota (docs/dovecot.md's 2.3
//!   configuration);
//! - `b`: as `a`, with Postfix's tables in-process (`postfix-ramdir.so`,
//!   docs/postfix-map.md);
//! - `b-mod`: ramdir in-process on both sides: Postfix's tables as in
//!   `b`, Dovecot's passdb/userdb through the auth module
//!   (`libauthdb_ramdir.so`, docs/dovecot-module.md), and Dovecot's own
//!   `maildir` quota as in `c`: the same shape as the text files, with
//!   ramdir's directory;
//! - `a-mq`: as `a`, but Dovecot keeps its quota itself (`maildir`, as in
//!   `c` and `d`): ramdir answers the lookups only, so `a-mq` against `c`
//!   compares the directories alone;
//! - `c`: the operator's text files: `hash:` tables made by `postmap`
//!   (`c-cdb`: `cdb:`) and Dovecot's `passwd-file`, no ramdir, no slapd;
//! - `d`: the operator's original: Postfix `ldap:` tables and Dovecot's
//!   `ldap` passdb/userdb against slapd.
//!
//! Every setup gets the same users (`<n>u@example.org`, n = 1..=users, the
//! names `smtp-source -N` makes), each with an alias
//! `<n>a@example.org` in the directory and a 1 GiB quota. Dovecot's quota
//! is ramdir's quota dict in `a`/`b` (as documented) and Dovecot's own
//! `maildir` quota in `c`/`d` (what those operators run); LMTP checks the
//! quota at RCPT everywhere (`lmtp_rcpt_check_quota = yes`).
//!
//! Measured per setup: messages per second from the first SMTP connection
//! to the last `status=sent` in Postfix's log; the CPU time of every
//! process of the stack (from `/proc/<pid>/stat`, sampled every
//! [`SAMPLE`], summed per process name: `postfix/smtpd`,
//! `dovecot/lmtp`, `ramdir`, `slapd`, …) per 1,000 messages; and slapd's
//! work per message: the searches its `stats` log shows during the run and
//! its CPU.
//!
//! The stacks come from the integration harness (`ramdir_integration`):
//! every daemon runs from a temp dir on loopback and Unix sockets and is
//! stopped when the setup ends, whatever the outcome.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ramdir_integration::dovecot::{Dovecot, ModuleInstall, auth_module_block, dovecot_gid};
use ramdir_integration::postfix::Postfix;
use ramdir_integration::postfix_map::{
    drop_socketmap_tables, install_plugin, main_cf as ramdir_map_main_cf,
};
use ramdir_integration::slapd::{
    PEOPLE, RamdirStats, SVC_DN, SVC_PW, Slapd, base_ldif, ssha, write_secret,
};
use ramdir_integration::{Ramdir, StackDir, set_mode, write_atomic};

/// How often the processes' CPU times are read.
const SAMPLE: Duration = Duration::from_millis(250);
/// The directory's domain.
const DOMAIN: &str = "example.org";
/// Every user's quota (as in the soak and the integration tests).
const QUOTA: u64 = 1 << 30;
/// Messages sent and delivered before the measured run, so that every
/// daemon process is started and connected.
const WARMUP_MESSAGES: u64 = 200;
/// The longest a run may take to deliver everything (a stuck setup).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(3600);
/// The password of every user (`{PLAIN}` in files, `{SSHA}` in LDAP).
const PASSWORD: &str = "e2e-pw";

/// What `ramdir-load e2e` takes.
#[derive(Debug, Clone)]
pub struct E2eOptions {
    /// Setups in order (`a`, `b`, `c`, `c-cdb`, `d`).
    pub setups: Vec<String>,
    /// Users (at least `messages`: `smtp-source -N` numbers recipients
    /// 1..=messages).
    pub users: u64,
    /// Messages in the measured run.
    pub messages: u64,
    /// Parallel SMTP sessions (`smtp-source -s`).
    pub sessions: u32,
    /// Message body bytes (`smtp-source -l`).
    pub size: u32,
    /// Deliver to every measured recipient once before the measured run,
    /// so that it goes to existing mailboxes with their quota usage known
    /// (a host in service) instead of to first deliveries, where Dovecot
    /// creates the Maildir and recalculates the quota.
    pub prefill: bool,
    /// Also write the results as JSON here.
    pub json: Option<PathBuf>,
}

/// One setup's result.
#[derive(Debug, Clone)]
pub struct Outcome {
    setup: String,
    messages: u64,
    seconds: f64,
    /// CPU seconds per process name.
    cpu: BTreeMap<String, f64>,
    /// slapd searches during the run (`None`: no slapd in this setup).
    slapd_searches: Option<u64>,
    /// Deliveries that did not end `status=sent`.
    not_sent: u64,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.seconds
    }
}

fn user(n: u64) -> String {
    format!("{n}u@{DOMAIN}")
}

fn alias(n: u64) -> String {
    format!("{n}a@{DOMAIN}")
}

/// The passwd-file of every setup that reads files (ramdir's files are
/// not used: `a`/`b` read LDAP; this is `c`'s).
fn passwd_file(users: u64, mail_root: &Path) -> String {
    let mut s = String::with_capacity(users as usize * 110);
    for n in 1..=users {
        let _ = writeln!(
            s,
            "{u}:{{PLAIN}}{PASSWORD}:5000:5000::{root}/{DOMAIN}/{n}u::userdb_quota_rule=*:storage={QUOTA}B",
            u = user(n),
            root = mail_root.display()
        );
    }
    s
}

/// The LDAP entries (as the harness's, but named as `smtp-source -N`
/// numbers recipients).
fn ldif(users: u64) -> String {
    let mut s = base_ldif();
    let hash = ssha(PASSWORD, b"e2e-salt");
    s.reserve(users as usize * 330);
    for n in 1..=users {
        let _ = write!(
            s,
            "dn: uid=u{n},{PEOPLE}\n\
             objectClass: inetOrgPerson\n\
             objectClass: inetLocalMailRecipient\n\
             objectClass: mailAccount\n\
             uid: u{n}\n\
             cn: User {n}\n\
             sn: {n}\n\
             mail: {mail}\n\
             mailLocalAddress: {al}\n\
             mailQuotaBytes: {QUOTA}\n\
             mailEnabled: TRUE\n\
             userPassword: {hash}\n\n",
            mail = user(n),
            al = alias(n),
        );
    }
    s
}

/// Replace the harness's documented ramdir block of `dovecot.conf` with
/// `block` (setups `c` and `d`).
fn replace_dovecot_auth(conf: &Path, block: &str) {
    let text = std::fs::read_to_string(conf).expect("read dovecot.conf");
    let start = text
        .find("# ---- docs/dovecot.md")
        .expect("documented block start");
    let end_marker = "# ---- end of the documented part ----";
    let end = text.find(end_marker).expect("documented block end") + end_marker.len();
    let out = format!("{}{block}{}", &text[..start], &text[end..]);
    write_atomic(conf, &out);
}

/// Dovecot's quota and LMTP settings of `c` and `d` (as the documented
/// block has them, with Dovecot's own maildir quota).
const OWN_QUOTA: &str = "\
mail_plugins = $mail_plugins quota
protocol lmtp {
  mail_plugins = $mail_plugins
}
lmtp_rcpt_check_quota = yes
quota_full_tempfail = yes
plugin {
  quota = maildir:User quota
  quota_grace = 10%%
}
";

/// Run `postmap TYPE:FILE` with the instance's configuration.
fn postmap(pf: &Postfix, map: &str) -> Result<(), String> {
    let out = pf
        .tool("postmap")
        .arg(map)
        .output()
        .map_err(|e| format!("postmap {map}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "postmap {map}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// A Postfix `ldap:` table file.
fn ldap_table(url: &str, filter: &str) -> String {
    format!(
        "server_host = {url}\nversion = 3\nsearch_base = {PEOPLE}\nscope = sub\n\
         query_filter = {filter}\nresult_attribute = mail\n\
         bind = yes\nbind_dn = {SVC_DN}\nbind_pw = {SVC_PW}\n"
    )
}

/// Everything a setup runs. Fields drop in order: Postfix, Dovecot,
/// ramdir, slapd, then the directory.
struct Setup {
    postfix: Postfix,
    dovecot: Dovecot,
    ramdir: Option<Ramdir>,
    slapd: Option<Slapd>,
    /// Dovecot's auth module, installed while the setup runs (b-mod).
    _module: Option<ModuleInstall>,
    _dir: StackDir,
}

fn start_setup(name: &str, users: u64) -> Result<Setup, String> {
    let dir = StackDir::new();
    let run = dir.join("run");
    std::fs::create_dir_all(&run).map_err(|e| e.to_string())?;
    set_mode(&run, 0o755);
    let mail_root = dir.join("dv/mail");
    let lmtp = dir.join("dv/run/lmtp");
    let dict_socket = run.join("dict.sock");
    let stats_socket = run.join("stats.sock");
    let uses_ldap = matches!(name, "a" | "a-mq" | "b" | "b-mod" | "d");
    let slapd = if uses_ldap {
        Some(Slapd::start(&dir, &ldif(users)))
    } else {
        None
    };
    let data = dir.join("data");
    std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
    set_mode(&data, 0o755);

    // Postfix's tables.
    let mut extra = format!("virtual_transport = lmtp:unix:{}\n", lmtp.display());
    let meta = name.starts_with('b').then(|| install_plugin(&dir));
    // b-mod: ramdir's Dovecot map, read by the in-process auth module.
    let dovecot_map = (name == "b-mod").then(|| run.join("dovecot-map"));
    let map_dir = dir.join("map");
    match name {
        "a" | "a-mq" => {}
        "b" | "b-mod" => {
            let meta = meta.as_ref().expect("meta");
            let _ = write!(
                extra,
                "meta_directory = {}\n{}",
                meta.dir.display(),
                ramdir_map_main_cf(&map_dir)
            );
        }
        "c" | "c-cdb" => {
            let ty = if name == "c" { "hash" } else { "cdb" };
            let d = data.display();
            let _ = write!(
                extra,
                "virtual_mailbox_domains = {DOMAIN}\n\
                 virtual_mailbox_maps = {ty}:{d}/mailboxes\n\
                 virtual_alias_maps = {ty}:{d}/aliases\n\
                 smtpd_sender_login_maps = {ty}:{d}/senders\n"
            );
        }
        "d" => {
            let url = slapd.as_ref().expect("slapd").url();
            write_atomic(
                &data.join("mailboxes.cf"),
                &ldap_table(&url, "(&(objectClass=mailAccount)(mail=%s))"),
            );
            write_atomic(
                &data.join("aliases.cf"),
                &ldap_table(&url, "(&(objectClass=mailAccount)(mailLocalAddress=%s))"),
            );
            let d = data.display();
            let _ = write!(
                extra,
                "virtual_mailbox_domains = {DOMAIN}\n\
                 virtual_mailbox_maps = ldap:{d}/mailboxes.cf\n\
                 virtual_alias_maps = ldap:{d}/aliases.cf\n\
                 smtpd_sender_login_maps = ldap:{d}/mailboxes.cf\n"
            );
        }
        other => {
            return Err(format!(
                "unknown setup {other:?} (a, a-mq, b, b-mod, c, c-cdb, d)"
            ));
        }
    }
    let mut postfix = Postfix::prepare(&dir, &extra);
    if !name.starts_with('a') {
        drop_socketmap_tables(postfix.etc());
    }
    if name.starts_with('c') {
        let ty = if name == "c" { "hash" } else { "cdb" };
        let mut mailboxes = String::with_capacity(users as usize * 40);
        let mut aliases = String::with_capacity(users as usize * 40);
        for n in 1..=users {
            let _ = writeln!(mailboxes, "{} {DOMAIN}/{n}u/", user(n));
            let _ = writeln!(aliases, "{} {}", alias(n), user(n));
        }
        write_atomic(&data.join("mailboxes"), &mailboxes);
        write_atomic(&data.join("aliases"), &aliases);
        write_atomic(&data.join("senders"), &mailboxes);
        for t in ["mailboxes", "aliases", "senders"] {
            postmap(&postfix, &format!("{ty}:{}", data.join(t).display()))?;
        }
        write_atomic(&data.join("users"), &passwd_file(users, &mail_root));
    }

    // ramdir (a, b).
    let ramdir = if matches!(name, "a" | "a-mq" | "b" | "b-mod") {
        let slapd = slapd.as_ref().expect("slapd");
        let secret = dir.join("ldap.secret");
        write_secret(&secret, SVC_PW, 0o600);
        let mut text = format!(
            "[directory]\nhome_template = \"{root}/%d/%n\"\n\n\
             [socketmap]\nlisten = \"unix:{sm}\"\nmode = \"0666\"\n\n\
             [dict]\nlisten = \"unix:{dict}\"\nmode = \"0666\"\n\n\
             [quota]\nstore = \"{store}\"\n\n\
             [stats]\nlisten = \"unix:{stats}\"\n\n",
            root = mail_root.display(),
            sm = postfix.socketmap_path().display(),
            dict = dict_socket.display(),
            store = dir.join("quota.redb").display(),
            stats = stats_socket.display(),
        );
        if let Some(meta) = &meta {
            let (_, gid) = postfix.flavor().user("postfix");
            let _ = write!(
                text,
                "[postfix_map]\ndirectory = \"{}\"\ngroup = \"{gid}\"\npostfix_config_directory = \"{}\"\n\n",
                map_dir.display(),
                meta.dir.display()
            );
        }
        if let Some(map) = &dovecot_map {
            let _ = write!(
                text,
                "[dovecot_map]\ndirectory = \"{}\"\ngroup = \"{}\"\n\n",
                map.display(),
                dovecot_gid(postfix.flavor())
            );
        }
        text.push_str(&slapd.ramdir_section(
            &slapd.url(),
            &secret,
            &format!("state_dir = \"{}\"", dir.join("state").display()),
        ));
        let config = dir.join("ramdir.toml");
        write_atomic(&config, &text);
        let r = Ramdir::start(&config, &postfix.socketmap_path(), &dir.join("ramdir.log"));
        let end = Instant::now() + Duration::from_secs(600);
        loop {
            if let Ok(s) = RamdirStats::fetch(&stats_socket)
                && s.authoritative()
                && s.phase() == "in sync"
                && s.num("entries") == users
            {
                break;
            }
            if Instant::now() > end {
                return Err("ramdir did not load the LDAP entries".into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // The published maps answer only from their first generation on
        // (before it, every lookup is a temporary failure).
        for map in [meta.as_ref().map(|_| &map_dir), dovecot_map.as_ref()]
            .into_iter()
            .flatten()
        {
            while !map_published(map) {
                if Instant::now() > end {
                    return Err(format!("{} was never published", map.display()));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Some(r)
    } else {
        None
    };

    // Dovecot.
    let module = dovecot_map
        .as_ref()
        .map(|_| ModuleInstall::new(postfix.flavor()));
    let mut dovecot = Dovecot::prepare(&dir, &dict_socket, "");
    match name {
        "b-mod" => {
            // The module's passdb/userdb (docs/dovecot-module.md) with
            // Dovecot's own quota, as in c.
            let map = dovecot_map.as_deref().expect("b-mod has a map");
            let block = auth_module_block(map, postfix.flavor().dovecot_24());
            replace_dovecot_auth(dovecot.conf(), &format!("{block}{OWN_QUOTA}"));
        }
        "a-mq" => {
            let ext = dovecot.root().join("dovecot-dict-auth.conf.ext");
            replace_dovecot_auth(
                dovecot.conf(),
                &format!(
                    "passdb {{\n  driver = dict\n  args = {e}\n}}\n\
                     userdb {{\n  driver = dict\n  args = {e}\n}}\n{OWN_QUOTA}",
                    e = ext.display()
                ),
            );
        }
        "c" | "c-cdb" => {
            let users_file = data.join("users");
            replace_dovecot_auth(
                dovecot.conf(),
                &format!(
                    "passdb {{\n  driver = passwd-file\n  args = {f}\n}}\n\
                     userdb {{\n  driver = passwd-file\n  args = {f}\n}}\n{OWN_QUOTA}",
                    f = users_file.display()
                ),
            );
        }
        "d" => {
            let slapd = slapd.as_ref().expect("slapd");
            let ext = data.join("dovecot-ldap.conf.ext");
            write_atomic(
                &ext,
                &format!(
                    "uris = {url}\ndn = {SVC_DN}\ndnpass = {SVC_PW}\nauth_bind = no\n\
                     ldap_version = 3\nbase = {PEOPLE}\nscope = subtree\n\
                     user_attrs = =home={root}/%d/%n,=uid=5000,=gid=5000,mailQuotaBytes=quota_rule=*:storage=%$B\n\
                     user_filter = (&(objectClass=mailAccount)(mail=%u))\n\
                     pass_attrs = mail=user,userPassword=password\n\
                     pass_filter = (&(objectClass=mailAccount)(mail=%u))\n\
                     iterate_attrs = mail=user\n\
                     iterate_filter = (objectClass=mailAccount)\n",
                    url = slapd.url(),
                    root = mail_root.display()
                ),
            );
            set_mode(&ext, 0o600);
            replace_dovecot_auth(
                dovecot.conf(),
                &format!(
                    "passdb {{\n  driver = ldap\n  args = {e}\n}}\n\
                     userdb {{\n  driver = ldap\n  args = {e}\n}}\n{OWN_QUOTA}",
                    e = ext.display()
                ),
            );
        }
        _ => {}
    }
    dovecot.start();
    postfix.start();
    Ok(Setup {
        postfix,
        dovecot,
        ramdir,
        slapd,
        _module: module,
        _dir: dir,
    })
}

/// Counts of delivery outcomes in Postfix's log, read incrementally.
struct LogCounter {
    path: PathBuf,
    offset: u64,
    partial: String,
    sent: u64,
    other: u64,
}

impl LogCounter {
    fn new(path: &Path) -> LogCounter {
        let offset = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        LogCounter {
            path: path.to_path_buf(),
            offset,
            partial: String::new(),
            sent: 0,
            other: 0,
        }
    }

    fn poll(&mut self) {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = String::new();
        if let Ok(n) = f.read_to_string(&mut buf) {
            self.offset += n as u64;
        }
        self.partial.push_str(&buf);
        let keep = match self.partial.rfind('\n') {
            Some(i) => self.partial.split_off(i + 1),
            None => return,
        };
        for line in self.partial.lines() {
            if line.contains(" status=sent ") {
                self.sent += 1;
            } else if line.contains(" status=deferred ") || line.contains(" status=bounced ") {
                self.other += 1;
            }
        }
        self.partial = keep;
    }
}

/// One process as sampled.
struct Proc {
    label: String,
    first: f64,
    last: f64,
}

/// Label of `pid` if it belongs to the stack.
fn label_of(pid: u32, comm: &str, ppid: u32, roots: &Roots) -> Option<String> {
    if Some(pid) == roots.ramdir {
        return Some("ramdir".into());
    }
    if Some(pid) == roots.slapd {
        return Some("slapd".into());
    }
    if pid == roots.postfix || ppid == roots.postfix {
        return Some(format!("postfix/{comm}"));
    }
    if pid == roots.dovecot || ppid == roots.dovecot {
        return Some(format!("dovecot/{comm}"));
    }
    if comm == "smtp-source" {
        return Some("smtp-source (the load)".into());
    }
    None
}

#[derive(Clone)]
struct Roots {
    postfix: u32,
    dovecot: u32,
    ramdir: Option<u32>,
    slapd: Option<u32>,
}

fn scan(roots: &Roots, procs: &mut BTreeMap<u32, Proc>, first_scan: bool) {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(comm), Some(ppid), Some(cpu)) = (
            crate::procfs::parse_stat_comm(&text),
            crate::procfs::parse_stat_ppid(&text),
            crate::procfs::parse_stat_cpu(&text),
        ) else {
            continue;
        };
        match procs.get_mut(&pid) {
            Some(p) => p.last = cpu,
            None => {
                if let Some(label) = label_of(pid, comm, ppid, roots) {
                    // Seen first after the start: born during the run.
                    let first = if first_scan { cpu } else { 0.0 };
                    procs.insert(
                        pid,
                        Proc {
                            label,
                            first,
                            last: cpu,
                        },
                    );
                }
            }
        }
    }
}

/// Send `count` messages with `smtp-source` and wait until Postfix logged
/// as many deliveries; returns (seconds, not sent).
fn inject(s: &Setup, o: &E2eOptions, count: u64) -> Result<(f64, u64), String> {
    let mut log = LogCounter::new(s.postfix.maillog());
    let t0 = Instant::now();
    let status = Command::new("smtp-source")
        .args(["-N", "-d", "-c"])
        .args(["-m", &count.to_string()])
        .args(["-s", &o.sessions.to_string()])
        .args(["-l", &o.size.to_string()])
        .args(["-f", "sender@remote.test"])
        .args(["-t", &format!("u@{DOMAIN}")])
        .arg(s.postfix.smtp_addr().to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("smtp-source: {e}"))?;
    if !status.success() {
        return Err(format!("smtp-source: {status}"));
    }
    loop {
        log.poll();
        if log.sent + log.other >= count {
            break;
        }
        if t0.elapsed() > DELIVERY_TIMEOUT {
            return Err(format!(
                "only {} of {count} delivered after {DELIVERY_TIMEOUT:?}",
                log.sent
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((t0.elapsed().as_secs_f64(), log.other))
}

fn run_setup(name: &str, o: &E2eOptions) -> Result<Outcome, String> {
    eprintln!("e2e: setup {name}: starting ({} users)", o.users);
    let s = start_setup(name, o.users)?;
    eprintln!("e2e: setup {name}: warm-up ({WARMUP_MESSAGES} messages)");
    let (_, bad) = inject(&s, o, WARMUP_MESSAGES)?;
    if bad > 0 {
        return Err(format!(
            "setup {name}: {bad} warm-up messages not delivered; maillog (what was not sent):\n{}",
            tail(&not_sent(&s.postfix.maillog_text()), 20)
        ));
    }
    if o.prefill {
        eprintln!(
            "e2e: setup {name}: prefill ({} messages, one per measured recipient)",
            o.messages
        );
        let (_, bad) = inject(&s, o, o.messages)?;
        if bad > 0 {
            return Err(format!(
                "setup {name}: {bad} prefill messages not delivered"
            ));
        }
    }
    settle_disk();
    let roots = Roots {
        postfix: s.postfix.master_pid().ok_or("no Postfix master pid")? as u32,
        dovecot: s.dovecot.master_pid().ok_or("no Dovecot master pid")? as u32,
        ramdir: s.ramdir.as_ref().and_then(Ramdir::pid).map(|p| p as u32),
        slapd: s.slapd.as_ref().and_then(slapd_pid),
    };
    let searches0 = s.slapd.as_ref().map(|sl| sl.searches_matching(""));
    let procs = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    scan(&roots, &mut procs.lock().expect("procs"), true);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (procs, stop) = (procs.clone(), stop.clone());
        let roots = roots.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(SAMPLE);
                scan(&roots, &mut procs.lock().expect("procs"), false);
            }
        })
    };
    eprintln!(
        "e2e: setup {name}: {} messages, {} sessions",
        o.messages, o.sessions
    );
    let r = inject(&s, o, o.messages);
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let (seconds, not_sent) = r?;
    let mut cpu = BTreeMap::new();
    for p in procs.lock().expect("procs").values() {
        *cpu.entry(p.label.clone()).or_insert(0.0) += (p.last - p.first).max(0.0);
    }
    let searches = s
        .slapd
        .as_ref()
        .zip(searches0)
        .map(|(sl, before)| sl.searches_matching("").saturating_sub(before) as u64);
    let out = Outcome {
        setup: name.to_string(),
        messages: o.messages,
        seconds,
        cpu,
        slapd_searches: searches,
        not_sent,
    };
    eprintln!(
        "e2e: setup {name}: {:.0} messages/s, {} not sent, slapd searches {:?}",
        out.rate(),
        out.not_sent,
        out.slapd_searches
    );
    drop(s);
    Ok(out)
}

/// Whether ramdir published an authoritative generation in the map
/// directory `dir`, as the in-process readers see it. Before that, a
/// lookup that misses is a temporary failure.
fn map_published(dir: &Path) -> bool {
    ramdir_snapshot::Reader::open(dir)
        .and_then(|mut r| r.refresh().map(|()| r.authoritative()))
        .is_ok_and(|a| a == Some(true))
}

/// Before a measured run: write back every dirty page (the previous
/// setup's mail and the removal of its temp dir, this setup's start and
/// warm-up) and wait for it, so that no setup pays for another's
/// writeback. (Here it takes 0.1–0.2 s: the spread between rounds in
/// docs/benchmarks.md, "End to end", has another cause.)
fn settle_disk() {
    let t = Instant::now();
    if let Err(e) = Command::new("sync").status() {
        eprintln!("e2e: sync: {e}");
    }
    eprintln!("e2e: sync took {:.1} s", t.elapsed().as_secs_f64());
}

fn slapd_pid(s: &Slapd) -> Option<u32> {
    // The harness runs slapd in the foreground; find it by its command
    // line (its configuration file is the stack's).
    let conf = s.conf().display().to_string();
    let rd = std::fs::read_dir("/proc").ok()?;
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd);
            if cmd.contains("slapd") && cmd.contains(&conf) {
                return Some(pid);
            }
        }
    }
    None
}

/// The log lines of deliveries that did not succeed.
fn not_sent(maillog: &str) -> String {
    maillog
        .lines()
        .filter(|l| l.contains(" status=") && !l.contains(" status=sent"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `ramdir-load e2e`: every setup in turn; prints a markdown report.
pub fn run(o: &E2eOptions) -> Result<(), String> {
    if o.messages > o.users {
        return Err(
            "--messages may not exceed --users (smtp-source -N numbers recipients 1..=messages)"
                .into(),
        );
    }
    let mut results = Vec::new();
    for name in &o.setups {
        results.push(run_setup(name, o)?);
    }
    print!("{}", report(o, &results));
    if let Some(p) = &o.json {
        std::fs::write(p, json(&results)).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let bad: u64 = results.iter().map(|r| r.not_sent).sum();
    if bad > 0 {
        return Err(format!("{bad} messages were not delivered"));
    }
    Ok(())
}

/// The process names of the table, in this order, then any others.
const COLUMNS: [&str; 9] = [
    "postfix/smtpd",
    "postfix/cleanup",
    "postfix/trivial-rewrite",
    "postfix/qmgr",
    "postfix/lmtp",
    "dovecot/lmtp",
    "dovecot/auth",
    "slapd",
    "ramdir",
];

fn report(o: &E2eOptions, rs: &[Outcome]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} users, {} messages of {} bytes per setup, {} SMTP sessions (smtp-source -N -d -s {} -l {}), {}\n",
        o.users,
        o.messages,
        o.size,
        o.sessions,
        o.sessions,
        o.size,
        if o.prefill {
            "to mailboxes that exist (--prefill)"
        } else {
            "each a user's first delivery"
        }
    );
    let base = rs.iter().find(|r| r.setup == "c").map(Outcome::rate);
    let ldap = rs.iter().find(|r| r.setup == "d").map(Outcome::rate);
    let _ = writeln!(
        s,
        "| setup | messages/s | × (c) | × (d) | slapd searches per message | not sent |\n|---|---|---|---|---|---|"
    );
    for r in rs {
        let x = |b: Option<f64>| b.map_or("—".into(), |b| format!("{:.2}", r.rate() / b));
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} | {} | {} | {} |",
            r.setup,
            r.rate(),
            x(base),
            x(ldap),
            r.slapd_searches.map_or("no slapd".into(), |n| format!(
                "{:.2}",
                n as f64 / r.messages as f64
            )),
            r.not_sent
        );
    }
    let mut cols: Vec<String> = COLUMNS.iter().map(|c| c.to_string()).collect();
    for r in rs {
        for k in r.cpu.keys() {
            if !cols.contains(k) {
                cols.push(k.clone());
            }
        }
    }
    let _ = writeln!(
        s,
        "\nCPU seconds per 1,000 messages, by process name (summed over processes):\n"
    );
    let _ = writeln!(s, "| setup | {} | all |", cols.join(" | "));
    let _ = writeln!(s, "|---|{}---|", "---|".repeat(cols.len()));
    for r in rs {
        let per = |v: f64| v * 1000.0 / r.messages as f64;
        let all: f64 = r
            .cpu
            .iter()
            .filter(|(k, _)| !k.starts_with("smtp-source"))
            .map(|(_, v)| per(*v))
            .sum();
        let cells: Vec<String> = cols
            .iter()
            .map(|c| {
                r.cpu
                    .get(c)
                    .map_or("—".into(), |v| format!("{:.2}", per(*v)))
            })
            .collect();
        let _ = writeln!(s, "| {} | {} | {all:.2} |", r.setup, cells.join(" | "));
    }
    s
}

fn json(rs: &[Outcome]) -> String {
    let items: Vec<String> = rs
        .iter()
        .map(|r| {
            let cpu: Vec<String> = r
                .cpu
                .iter()
                .map(|(k, v)| format!("\"{k}\":{v:.4}"))
                .collect();
            format!(
                "{{\"setup\":\"{}\",\"messages\":{},\"seconds\":{:.3},\"rate\":{:.1},\"not_sent\":{},\"slapd_searches\":{},\"cpu_s\":{{{}}}}}",
                r.setup,
                r.messages,
                r.seconds,
                r.rate(),
                r.not_sent,
                r.slapd_searches.map_or("null".into(), |n| n.to_string()),
                cpu.join(",")
            )
        })
        .collect();
    format!("[{}]\n", items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_are_labelled_by_their_master() {
        let roots = Roots {
            postfix: 10,
            dovecot: 20,
            ramdir: Some(30),
            slapd: Some(40),
        };
        assert_eq!(
            label_of(11, "lmtp", 10, &roots).as_deref(),
            Some("postfix/lmtp")
        );
        assert_eq!(
            label_of(21, "lmtp", 20, &roots).as_deref(),
            Some("dovecot/lmtp")
        );
        assert_eq!(label_of(30, "ramdir", 1, &roots).as_deref(), Some("ramdir"));
        assert_eq!(label_of(40, "slapd", 1, &roots).as_deref(), Some("slapd"));
        assert_eq!(label_of(50, "bash", 1, &roots), None);
    }

    #[test]
    fn the_log_counter_counts_only_new_complete_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("maillog");
        std::fs::write(&p, "old status=sent \n").unwrap();
        let mut c = LogCounter::new(&p);
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        write!(f, "a status=sent (250)\nb status=deferred (x)\nc status=se").unwrap();
        c.poll();
        assert_eq!((c.sent, c.other), (1, 1));
        writeln!(f, "nt (250)").unwrap();
        c.poll();
        assert_eq!((c.sent, c.other), (2, 1));
    }

    #[test]
    fn files_and_ldap_hold_the_names_smtp_source_sends_to() {
        let p = passwd_file(3, Path::new("/m"));
        assert!(p.starts_with("1u@example.org:{PLAIN}"));
        assert_eq!(p.lines().count(), 3);
        let l = ldif(2);
        assert!(l.contains("mail: 2u@example.org\n"));
        assert!(l.contains("mailLocalAddress: 2a@example.org\n"));
    }
}
