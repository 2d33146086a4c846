//! A private Postfix instance run from the stack directory, as in
//! `docs/stack-notes.md` section 3: its own `main.cf` and `master.cf`
//! (`chroot = n` everywhere, one smtpd listener on 127.0.0.1 or another
//! loopback address ([`Postfix::prepare_on`]), a `postlog`
//! service and a `maillog_file` inside the stack), its own spool and data
//! directories, outbound delivery disabled, and virtual mail discarded after
//! alias expansion (`virtual_transport = discard:`) so the maillog shows the
//! final recipients.
//!
//! All of the Postfix lookups that ramdir serves go to one socket,
//! `<spool>/private/ramdir-socketmap`, named in `main.cf` by the *relative*
//! path `unix:private/ramdir-socketmap`, which is what operators are told to
//! write (daemons run with the spool as their working directory, chrooted or
//! not; protocols.md G5).
//!
//! The instance is the host's Postfix 3.7 or, for a [`Flavor::Debian13`]
//! stack, Postfix 3.10 run with `chroot <root>` (debian13.md, "Recipe");
//! every command goes through [`Flavor::command`], and the stack directory
//! is visible at the same path inside the root.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::flavor::Flavor;
use crate::smtp::Smtp;
use crate::{StackDir, WAIT, process_alive, require_root, shell_quote, write_atomic};

/// The socketmap socket's name inside the spool, as operators configure it.
pub const SOCKETMAP_REL: &str = "private/ramdir-socketmap";

/// The `main.cf` lines that hand Postfix's directory lookups to ramdir, as
/// the README tells operators to write them.
pub const RAMDIR_MAIN_CF: &str = "\
virtual_mailbox_domains = socketmap:unix:private/ramdir-socketmap:domains
virtual_mailbox_maps = socketmap:unix:private/ramdir-socketmap:mailboxes
virtual_alias_maps = socketmap:unix:private/ramdir-socketmap:aliases
virtual_alias_domains =
smtpd_sender_login_maps = socketmap:unix:private/ramdir-socketmap:senders
virtual_transport = discard:
";

/// A Postfix instance under `<stack>/pf/{etc,spool,data}` with its log at
/// `<stack>/pf/maillog`. Stopped on drop.
#[derive(Debug)]
pub struct Postfix {
    flavor: Flavor,
    etc: PathBuf,
    spool: PathBuf,
    maillog: PathBuf,
    addr: Ipv4Addr,
    port: u16,
    hostname: String,
    started: bool,
}

impl Postfix {
    /// Write the configuration and create the spool (with its `private/`
    /// directory, where ramdir's socket goes). Does not start Postfix.
    /// `main_cf_extra` is appended to `main.cf` (later lines win).
    pub fn prepare(stack: &StackDir, main_cf_extra: &str) -> Postfix {
        Postfix::prepare_on(stack, main_cf_extra, Ipv4Addr::LOCALHOST)
    }

    /// [`prepare`](Self::prepare) with smtpd on the loopback address
    /// `addr`, e.g. 127.0.0.2 for a second "host" (Linux routes all of
    /// 127.0.0.0/8 to `lo`). The address goes on the `master.cf` listener
    /// (`127.0.0.2:port inet … smtpd`), not in `inet_interfaces`: Postfix
    /// wants every `inet_interfaces` address on an interface ("no local
    /// interface found for 127.0.0.2"), and `lo` carries only 127.0.0.1/8,
    /// while a `master.cf` address is simply bound.
    pub fn prepare_on(stack: &StackDir, main_cf_extra: &str, addr: Ipv4Addr) -> Postfix {
        assert!(addr.is_loopback(), "test traffic stays on loopback: {addr}");
        let flavor = stack.flavor();
        require_root();
        require_tools(flavor);
        let base = stack.join("pf");
        let etc = base.join("etc");
        let spool = base.join("spool");
        let data = base.join("data");
        std::fs::create_dir_all(&etc).unwrap_or_else(|e| panic!("mkdir {}: {e}", etc.display()));
        std::fs::create_dir_all(&data).unwrap_or_else(|e| panic!("mkdir {}: {e}", data.display()));
        crate::set_mode(&base, 0o755);
        // data_directory must belong to postfix (trap 3), as the flavor's
        // Postfix knows it (debian13.md trap 2).
        chown_postfix(flavor, &data);
        let port = free_port(addr);
        let maillog = base.join("maillog");
        // Unique per stack, so the banner proves which instance answered.
        let name = stack
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let hostname = format!("{}.stack.test", name.as_deref().unwrap_or("mx"));
        write_atomic(
            &etc.join("main.cf"),
            &main_cf(
                stack.path(),
                &spool,
                &data,
                &maillog,
                &hostname,
                main_cf_extra,
            ),
        );
        write_atomic(&etc.join("master.cf"), &master_cf(addr, port));
        age_config(&etc);
        let pf = Postfix {
            flavor,
            etc,
            spool,
            maillog,
            addr,
            port,
            hostname,
            started: false,
        };
        match template_spool(flavor) {
            Some(t) => copy_tree(&t, &pf.spool),
            None => {
                std::fs::create_dir(&pf.spool)
                    .unwrap_or_else(|e| panic!("mkdir {}: {e}", pf.spool.display()));
                pf.run_ok("check");
            }
        }
        assert!(
            pf.spool.join("private").is_dir(),
            "{} has no private/ after postfix check",
            pf.spool.display()
        );
        pf
    }

    /// Start Postfix and wait (up to [`WAIT`]) for this instance's `220 `
    /// banner (a listening port alone proves nothing, trap 5). If another
    /// process took the port in the meantime, move to a new one.
    pub fn start(&mut self) {
        assert!(!self.started, "Postfix is already running");
        // From here on stop() looks for a master to end, even if the start
        // fails half-way.
        self.started = true;
        for _ in 0..3 {
            let out = self.run("start");
            if out.status.success() {
                break;
            }
            let in_use = format!(
                "bind {} port {}: Address already in use",
                self.addr, self.port
            );
            if !self.maillog_text().contains(&in_use) {
                // On a saturated machine `postfix start` can fail without
                // a word in the maillog ("mail system startup failed":
                // postlogd not up yet, a fork refused for a moment). Try
                // again unless a master runs; run_ok below reports a
                // failure that persists.
                if self.master_pid().is_some_and(process_alive) {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            self.port = free_port(self.addr);
            write_atomic(
                &self.etc.join("master.cf"),
                &master_cf(self.addr, self.port),
            );
            age_config(&self.etc);
        }
        if self.master_pid().is_none_or(|p| !process_alive(p)) {
            self.run_ok("start");
        }
        let start = Instant::now();
        loop {
            if let Ok(s) = Smtp::connect(self.smtp_addr())
                && s.banner.code == 220
            {
                let ours = s.banner.text.starts_with(&format!("{} ", self.hostname));
                let _ = s.quit();
                assert!(
                    ours,
                    "port {} is answered by another SMTP server",
                    self.port
                );
                return;
            }
            if start.elapsed() > WAIT {
                panic!(
                    "Postfix on {} gave no 220 banner within {WAIT:?}; maillog:\n{}",
                    self.smtp_addr(),
                    self.maillog_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop Postfix (`postfix stop`, which waits for the master to exit),
    /// killing the master if it is still alive afterwards. Never panics
    /// (it runs in drops, also of failed tests).
    pub fn stop(&mut self) {
        if !self.started {
            return;
        }
        self.started = false;
        let pid = self.master_pid();
        let _ = self.try_run("stop");
        if let Some(pid) = pid {
            let deadline = Instant::now() + WAIT;
            while process_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if process_alive(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        // Anything of this instance the master did not take down.
        if let Some(base) = self.spool.parent() {
            let killed = crate::kill_processes_in(&[
                base.to_path_buf(),
                self.flavor.host_path_unchecked(base),
            ]);
            if killed > 0 {
                eprintln!(
                    "ramdir-integration: killed {killed} Postfix process(es) left in {}",
                    base.display()
                );
            }
        }
    }

    /// The master's pid, from `spool/pid/master.pid` (space-padded).
    pub fn master_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.spool.join("pid/master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Where smtpd listens.
    pub fn smtp_addr(&self) -> SocketAddr {
        SocketAddr::from((self.addr, self.port))
    }

    /// A new SMTP session (banner read). Panics if the connection fails.
    pub fn smtp(&self) -> Smtp {
        Smtp::connect(self.smtp_addr())
            .unwrap_or_else(|e| panic!("SMTP connect {}: {e}", self.smtp_addr()))
    }

    /// The config directory (`-c` for every Postfix command).
    pub fn etc(&self) -> &Path {
        &self.etc
    }

    /// The queue directory; daemons run with it as their working directory.
    pub fn spool(&self) -> &Path {
        &self.spool
    }

    /// Where ramdir's socketmap socket must be:
    /// `<spool>/private/ramdir-socketmap`.
    pub fn socketmap_path(&self) -> PathBuf {
        self.spool.join(SOCKETMAP_REL)
    }

    /// Run `postfix -c ETC <sub>` through `script` (Postfix only prints its
    /// errors to a terminal, trap 1). Returns the command's output.
    pub fn run(&self, sub: &str) -> Output {
        self.try_run(sub)
            .unwrap_or_else(|e| panic!("run postfix {sub} through script: {e}"))
    }

    fn try_run(&self, sub: &str) -> std::io::Result<Output> {
        // A wedged Postfix (e.g. its postlogd gone) can block `postfix
        // stop` forever: bound every command so the suite cannot hang.
        let cmd = format!(
            "timeout -k 5 60 {}/usr/sbin/postfix -c {} {sub}",
            self.flavor.shell_prefix(),
            shell_quote(&self.etc.display().to_string())
        );
        retry_eagain(|| {
            Command::new("script")
                .args(["-qec", &cmd, "/dev/null"])
                .stdin(Stdio::null())
                .output()
        })
    }

    /// Which Postfix this is.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// A Postfix tool of this instance's flavor with `-c ETC` as its first
    /// arguments: `tool("postconf")`, `tool("postqueue")`, …
    pub fn tool(&self, name: &str) -> Command {
        let mut c = self.flavor.command(&format!("/usr/sbin/{name}"));
        c.arg("-c").arg(&self.etc);
        c
    }

    fn run_ok(&self, sub: &str) {
        let out = self.run(sub);
        if !out.status.success() {
            panic!(
                "postfix {sub} failed ({}): {}{}\nmaillog:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.maillog_text()
            );
        }
    }

    /// `postmap -c ETC -q KEY socketmap:unix:private/ramdir-socketmap:TABLE`
    /// run from the spool directory (postmap does not chdir, G5). Returns
    /// (exit code, stdout): 0 and the value when found, 1 and nothing when
    /// not found; other codes are errors.
    pub fn postmap_q(&self, table: &str, key: &str) -> (i32, String) {
        let out = self.postmap(table, &["-q", key], None);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// `postmap -q -` with one key per line on stdin: many lookups from one
    /// process over one socketmap connection. Returns (exit code, stdout:
    /// `key<TAB>value` for each key found).
    pub fn postmap_q_many(&self, table: &str, keys: &[&str]) -> (i32, String) {
        let mut input = keys.join("\n");
        input.push('\n');
        let out = self.postmap(table, &["-q", "-"], Some(&input));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn postmap(&self, table: &str, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let map = format!("socketmap:unix:{SOCKETMAP_REL}:{table}");
        let mut child = self
            .command_in_spool("/usr/sbin/postmap")
            .arg("-c")
            .arg(&self.etc)
            .args(args)
            .arg(&map)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run postmap: {e}"));
        if let Some(text) = stdin {
            let mut w = child.stdin.take().expect("postmap stdin");
            w.write_all(text.as_bytes()).expect("write postmap stdin");
        }
        child.wait_with_output().expect("wait for postmap")
    }

    /// A command that runs `program` (this flavor's) with the spool as its
    /// working directory, as Postfix's daemons do: relative `unix:private/…`
    /// socket paths then work (G5).
    pub fn command_in_spool(&self, program: &str) -> Command {
        command_in(self.flavor, &self.spool, program)
    }

    /// The maillog so far.
    pub fn maillog_text(&self) -> String {
        std::fs::read_to_string(&self.maillog).unwrap_or_default()
    }

    /// The maillog path.
    pub fn maillog(&self) -> &Path {
        &self.maillog
    }

    /// Maillog lines that contain every one of `needles`.
    pub fn log_lines_with(&self, needles: &[&str]) -> Vec<String> {
        self.maillog_text()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_string)
            .collect()
    }

    /// Wait (up to [`WAIT`]) for a maillog line that contains every one of
    /// `needles`, and return it. Panics with the end of the maillog when
    /// none shows up.
    pub fn wait_for_log(&self, needles: &[&str]) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self.log_lines_with(needles).into_iter().next() {
                return l;
            }
            if start.elapsed() > WAIT {
                let text = self.maillog_text();
                let lines: Vec<&str> = text.lines().collect();
                panic!(
                    "no maillog line with all of {needles:?} within {WAIT:?}; last lines:\n{}",
                    lines[lines.len().saturating_sub(30)..].join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.stop();
    }
}

fn main_cf(
    stack: &Path,
    spool: &Path,
    data: &Path,
    maillog: &Path,
    hostname: &str,
    extra: &str,
) -> String {
    format!(
        "\
# Generated by ramdir-integration (a private test instance).
compatibility_level = 3.6
queue_directory = {spool}
data_directory = {data}
maillog_file = {maillog}
maillog_file_prefixes = {stack}
mail_owner = postfix
setgid_group = postdrop
myhostname = {hostname}
mydomain = stack.test
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
alias_maps =
alias_database =
local_recipient_maps =
local_transport = error:5.1.1 local delivery disabled
relayhost =
relay_domains =
default_transport = error:5.7.1 outbound delivery disabled (test instance)
relay_transport = error:5.7.1 outbound delivery disabled (test instance)
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
biff = no
in_flow_delay = 0
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 1000
smtpd_hard_error_limit = 1000
smtpd_relay_restrictions = reject_unauth_destination
recipient_delimiter = +
{RAMDIR_MAIN_CF}{extra}
",
        spool = spool.display(),
        data = data.display(),
        maillog = maillog.display(),
        stack = stack.display(),
    )
}

fn master_cf(addr: Ipv4Addr, port: u16) -> String {
    // Every service unchrooted (trap 6); the only listener is ours.
    let services = [
        ("pickup", "unix", "n", "60", "1", "pickup"),
        ("cleanup", "unix", "n", "-", "0", "cleanup"),
        ("qmgr", "unix", "n", "300", "1", "qmgr"),
        ("rewrite", "unix", "-", "-", "-", "trivial-rewrite"),
        ("bounce", "unix", "-", "-", "0", "bounce"),
        ("defer", "unix", "-", "-", "0", "bounce"),
        ("trace", "unix", "-", "-", "0", "bounce"),
        ("verify", "unix", "-", "-", "1", "verify"),
        ("flush", "unix", "n", "1000?", "0", "flush"),
        ("proxymap", "unix", "-", "-", "-", "proxymap"),
        ("proxywrite", "unix", "-", "-", "1", "proxymap"),
        ("smtp", "unix", "-", "-", "-", "smtp"),
        ("relay", "unix", "-", "-", "-", "smtp"),
        ("showq", "unix", "n", "-", "-", "showq"),
        ("error", "unix", "-", "-", "-", "error"),
        ("retry", "unix", "-", "-", "-", "error"),
        ("discard", "unix", "-", "-", "-", "discard"),
        ("lmtp", "unix", "-", "-", "-", "lmtp"),
        ("anvil", "unix", "-", "-", "1", "anvil"),
        ("scache", "unix", "-", "-", "1", "scache"),
        ("postlog", "unix-dgram", "n", "-", "1", "postlogd"),
    ];
    let mut s = String::from("# Generated by ramdir-integration.\n");
    s.push_str(&format!("{addr}:{port} inet n - n - - smtpd\n"));
    for (name, ty, private, wakeup, limit, cmd) in services {
        s.push_str(&format!(
            "{name} {ty} {private} - n {wakeup} {limit} {cmd}\n"
        ));
    }
    s
}

/// Date `main.cf` and `master.cf` a minute back. Postfix re-reads a
/// config file that changed in the last second or two, pausing 300 ms
/// each time until it "cools down" (`dict_load_fp()`), which costs more
/// than a second per command on a freshly written config.
pub fn age_config(etc: &Path) {
    let past = std::time::SystemTime::now() - Duration::from_secs(60);
    for name in ["main.cf", "master.cf"] {
        let p = etc.join(name);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_modified(past))
            .unwrap_or_else(|e| panic!("set mtime of {}: {e}", p.display()));
    }
}

/// A command that runs `program` of `flavor` in the directory `dir` (a
/// path as the daemons see it). chroot(8) itself changes to `/`, so inside
/// the root a shell changes back.
pub fn command_in(flavor: Flavor, dir: &Path, program: &str) -> Command {
    match flavor.root() {
        None => {
            let mut c = Command::new(program);
            c.current_dir(dir);
            c
        }
        Some(_) => {
            let mut c = flavor.command("/bin/sh");
            c.args(["-c", "cd \"$0\" && exec \"$@\""])
                .arg(dir)
                .arg(program);
            c
        }
    }
}

/// Panic, with the fix, when a needed tool is missing.
fn require_tools(flavor: Flavor) {
    for tool in ["/usr/bin/script", "/usr/bin/timeout"] {
        if !Path::new(tool).exists() {
            panic!("{tool} is missing: run scripts/install-test-deps.sh (as root) first");
        }
    }
    for tool in [
        "/usr/sbin/postfix",
        "/usr/sbin/postmap",
        "/usr/sbin/postconf",
    ] {
        if !flavor.exists(Path::new(tool)) {
            panic!(
                "{tool} is missing ({flavor}): run scripts/install-test-deps.sh (as root) first"
            );
        }
    }
}

fn chown_postfix(flavor: Flavor, path: &Path) {
    let (uid, gid) = flavor.user("postfix");
    nix::unistd::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown postfix {}: {e}", path.display()));
}

/// Run `f` again (for up to [`WAIT`]) while it fails with `EAGAIN`: on a
/// busy machine a fork can fail for a moment.
pub fn retry_eagain<T>(mut f: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let start = Instant::now();
    loop {
        match f() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && start.elapsed() < WAIT => {
                std::thread::sleep(Duration::from_millis(100));
            }
            r => return r,
        }
    }
}

/// A port of `addr` that was free a moment ago.
fn free_port(addr: Ipv4Addr) -> u16 {
    let l = TcpListener::bind((addr, 0)).unwrap_or_else(|e| panic!("bind {addr}:0: {e}"));
    l.local_addr().expect("local_addr").port()
}

/// `cp -a` (keeps owners and modes, which Postfix checks).
fn copy_tree(from: &Path, to: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .unwrap_or_else(|e| panic!("run cp: {e}"));
    assert!(
        out.status.success(),
        "cp -a {} {}: {}",
        from.display(),
        to.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A spool made by `postfix check` once (the first check on an empty spool
/// takes ~2 s) and then copied for every instance. For the host's Postfix
/// it lives next to the test binaries (`target/ramdir-it/spool-template`);
/// for Debian 13's inside its root (`/var/tmp/ramdir-it/spool-template`
/// there, so it goes when the root is rebuilt), since that Postfix must see
/// the paths it writes. Reused across runs; `None` when it cannot be made
/// (then each instance runs `postfix check` itself).
fn template_spool(flavor: Flavor) -> Option<PathBuf> {
    static LOCK: Mutex<[Option<PathBuf>; 2]> = Mutex::new([None, None]);
    let slot = match flavor {
        Flavor::Debian12 => 0,
        Flavor::Debian13 => 1,
    };
    let mut guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = guard[slot].as_ref() {
        return Some(p.clone());
    }
    // `inner`: the directory as this Postfix sees it.
    let inner = match flavor {
        Flavor::Debian12 => template_root()?,
        Flavor::Debian13 => PathBuf::from("/var/tmp/ramdir-it"),
    };
    let root = flavor.host_path(&inner);
    let tpl = root.join("spool-template");
    if !tpl.join("private").is_dir() || !tpl.join("maildrop").is_dir() {
        std::fs::create_dir_all(&root).ok()?;
        // Build beside it, then rename into place: another test binary may
        // be doing the same right now.
        let build_inner = inner.join(format!("build-{}", std::process::id()));
        let build = flavor.host_path(&build_inner);
        let _ = std::fs::remove_dir_all(&build);
        let spool = build.join("spool");
        std::fs::create_dir_all(build.join("etc")).ok()?;
        std::fs::create_dir_all(build.join("data")).ok()?;
        std::fs::create_dir_all(&spool).ok()?;
        chown_postfix(flavor, &build.join("data"));
        write_atomic(
            &build.join("etc/main.cf"),
            &main_cf(
                &build_inner,
                &build_inner.join("spool"),
                &build_inner.join("data"),
                &build_inner.join("maillog"),
                "template.stack.test",
                "",
            ),
        );
        write_atomic(
            &build.join("etc/master.cf"),
            &master_cf(Ipv4Addr::LOCALHOST, 1),
        );
        age_config(&build.join("etc"));
        let cmd = format!(
            "{}/usr/sbin/postfix -c {} check",
            flavor.shell_prefix(),
            shell_quote(&build_inner.join("etc").display().to_string())
        );
        let ok = retry_eagain(|| {
            Command::new("script")
                .args(["-qec", &cmd, "/dev/null"])
                .stdin(Stdio::null())
                .output()
        })
        .is_ok_and(|o| o.status.success());
        if !ok || !spool.join("private").is_dir() {
            let _ = std::fs::remove_dir_all(&build);
            return None;
        }
        if std::fs::rename(&spool, &tpl).is_err() && !tpl.join("private").is_dir() {
            let _ = std::fs::remove_dir_all(&build);
            return None;
        }
        let _ = std::fs::remove_dir_all(&build);
    }
    guard[slot] = Some(tpl.clone());
    Some(tpl)
}

/// `target/ramdir-it`, found from the test binary's path
/// (`target/<profile>/deps/<test>`).
fn template_root() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    // dir is target/<profile> (or target/<triple>/<profile>).
    Some(dir.parent()?.join("ramdir-it"))
}

/// One recipient's delivery as the maillog reports it
/// (`QID: to=<…>, orig_to=<…>, relay=…, status=sent (…)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The final recipient.
    pub to: String,
    /// The recipient as the client sent it, when aliasing changed it.
    pub orig_to: Option<String>,
    /// `sent`, `bounced`, `deferred`, …
    pub status: String,
}

impl Postfix {
    /// Wait (up to [`WAIT`]) until the queue manager has removed message `qid`,
    /// then return every delivery logged for it.
    pub fn wait_deliveries(&self, qid: &str) -> Vec<Delivery> {
        self.wait_for_log(&[&format!(" {qid}: removed")]);
        let tag = format!(" {qid}: to=<");
        self.log_lines_with(&[&tag])
            .iter()
            .filter_map(|l| parse_delivery(l, qid))
            .collect()
    }
}

fn parse_delivery(line: &str, qid: &str) -> Option<Delivery> {
    let rest = &line[line.find(&format!(" {qid}: to=<"))? + qid.len() + 3..];
    let field = |name: &str| -> Option<String> {
        let start = rest.find(&format!("{name}=<"))? + name.len() + 2;
        // `to=` also occurs inside `orig_to=`: only accept a field that
        // starts the text or follows ", ".
        let before = &rest[..start - name.len() - 2];
        if !(before.is_empty() || before.ends_with(", ")) {
            return None;
        }
        let end = rest[start..].find('>')? + start;
        Some(rest[start..end].to_string())
    };
    let status = rest.split(", ").find_map(|f| f.strip_prefix("status="))?;
    Some(Delivery {
        to: field("to")?,
        orig_to: field("orig_to"),
        status: status.split_whitespace().next().unwrap_or("").to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_lines_are_parsed() {
        let l = "Nov 24 03:49:01 mx postfix/discard[77]: 4AB12C: to=<alice@example.org>, \
                 orig_to=<info@example.org>, relay=none, delay=0.03, delays=0.02/0/0/0, \
                 dsn=2.0.0, status=sent (example.org)";
        assert_eq!(
            parse_delivery(l, "4AB12C"),
            Some(Delivery {
                to: "alice@example.org".into(),
                orig_to: Some("info@example.org".into()),
                status: "sent".into()
            })
        );
        let l =
            "x postfix/discard[77]: 4AB12C: to=<real@catchall.test>, relay=none, status=sent (x)";
        let d = parse_delivery(l, "4AB12C").unwrap();
        assert_eq!((d.to.as_str(), d.orig_to), ("real@catchall.test", None));
    }

    #[test]
    fn master_cf_has_one_listener_and_no_chroot() {
        let m = master_cf(Ipv4Addr::LOCALHOST, 2525);
        assert!(m.contains("127.0.0.1:2525 inet n - n - - smtpd"));
        assert!(
            m.lines()
                .skip(1)
                .all(|l| l.split_whitespace().nth(4) == Some("n")),
            "{m}"
        );
        assert!(m.contains("postlog unix-dgram n - n - 1 postlogd"));
    }
}
