//! A private Dovecot instance (2.3 from the host, or 2.4 from the Debian 13
//! root, see [`Flavor`]) that authenticates users and keeps quota usage
//! through ramdir's dict socket, and the clients the tests drive it with.
//!
//! How Dovecot is run follows `docs/stack-notes.md` section 4: one
//! self-contained `dovecot.conf` (no `!include` of `/etc/dovecot`) under
//! `<stack>/dv`, with `base_dir`, `state_dir`, the log and the mail root all
//! inside it; IMAP on a free 127.0.0.1 port, LMTP on the unix socket
//! `<stack>/dv/run/lmtp` (mode 0666 so Postfix's `lmtp` client, user
//! `postfix`, can connect; trap 11). Dovecot is started with stdin, stdout
//! and stderr redirected away from the test (it keeps the caller's stderr
//! open after daemonizing, trap 8) and every `doveadm` call gets `-c` (trap
//! 9).
//!
//! Dovecot 2.3: passdb and userdb are `driver = dict` on ramdir's `auth`
//! dict, and the quota backend is `dict:User quota::proxy:…:quota`, both
//! through `proxy:idle_msecs=10000:` URIs (trap 10, G11).
//!
//! Dovecot 2.4 has neither driver (debian13.md): passdb and userdb are
//! `driver = lua` running the shipped bridge
//! `contrib/dovecot/ramdir-auth.lua` (copied into the stack, so the root
//! sees it) against the same `auth` dict, and the quota is `driver =
//! count` with `quota_clone` writing the usage into ramdir's `quota` dict.
//!
//! For both versions the ramdir part of `dovecot.conf` (and 2.3's
//! `dovecot-dict-auth.conf.ext`) is read from docs/dovecot.md itself, paths
//! replaced ([`documented_block`]): what the docs tell operators is what
//! the tests run. Only the instance settings (paths, listeners, users,
//! logging) are the harness's own.
//!
//! No limit is set in `dovecot.conf`: every limit comes from ramdir's
//! userdb answer.
//!
//! The tests fail logins on purpose, so the instance turns off what makes
//! that slow: `auth_failure_delay = 0`, and the anvil auth-penalty socket is
//! moved to a name the auth process does not look for (it then silently
//! disables the per-IP penalty of 2 s doubling up to 15 s per failure).
//!
//! Pieces:
//! - [`Dovecot`]: the instance (start, stop, `doveadm` wrappers);
//! - [`Lmtp`]: a tiny LMTP client for the `lmtp` socket;
//! - [`Imap`]: a tiny IMAP client (LOGIN, APPEND, COPY, …);
//! - [`DictClient`]: a raw dict-protocol client for ramdir's socket, to
//!   read and damage quota counters behind Dovecot's back;
//! - [`MailStack`]: ramdir (socketmap, dict, quota store) + Dovecot, and
//!   optionally a Postfix that delivers to Dovecot over LMTP.
//!
//! Set `RAMDIR_DOVECOT_DEBUG=1` to run Dovecot with `auth_debug` and
//! `mail_debug` (the log then shows every dict lookup and transaction).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::flavor::Flavor;
use crate::postfix::Postfix;
use crate::ramdir::{DirectoryContent, DirectoryFiles, Ramdir, write_config};
use crate::smtp::{Reply, Smtp};
use crate::{StackDir, WAIT, process_alive, require_root, set_mode, write_atomic};

/// uid and gid that own the mail (`mail_uid`, `first_valid_uid`, and the
/// passwd-file entries of the tests).
pub const VMAIL_ID: u32 = 5000;

/// Placeholder in [`DirectoryContent::users`] that [`MailStack`] replaces
/// by the mail root (`<stack>/dv/mail`), for users with an explicit home.
pub const MAIL_ROOT_VAR: &str = "@MAILROOT@";

/// The binaries and system users a Dovecot instance needs.
const REQUIRED: [&str; 5] = [
    "/usr/sbin/dovecot",
    "/usr/bin/doveadm",
    "/usr/lib/dovecot/imap",
    "/usr/lib/dovecot/lmtp",
    "/usr/lib/dovecot/modules/lib10_quota_plugin.so",
];

/// What Dovecot 2.4 needs on top: the Lua auth driver and the quota clone
/// plugin, and the Lua module the bridge loads (lua-cjson's, under the
/// architecture's directory, is checked by [`require_dovecot_on`]).
const REQUIRED_24: [&str; 3] = [
    "/usr/lib/dovecot/modules/auth/libauthdb_lua.so",
    "/usr/lib/dovecot/modules/lib20_quota_clone_plugin.so",
    "/usr/share/lua/5.4/socket.lua",
];

/// The Lua passdb/userdb bridge ramdir ships for Dovecot 2.4.
pub fn lua_bridge() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/dovecot/ramdir-auth.lua")
}

/// Panic, saying how to fix it, unless the host's Dovecot (core, imapd,
/// lmtpd) and its system users are installed and we are root.
pub fn require_dovecot() {
    require_dovecot_on(Flavor::Debian12);
}

/// [`require_dovecot`] for `flavor`'s Dovecot (for Debian 13: in its root,
/// with the Lua bridge's needs).
pub fn require_dovecot_on(flavor: Flavor) {
    require_root();
    let extra: &[&str] = if flavor.dovecot_24() {
        &REQUIRED_24
    } else {
        &[]
    };
    for p in REQUIRED.iter().chain(extra) {
        if !flavor.exists(Path::new(p)) {
            panic!(
                "{p} is missing ({flavor}): Dovecot (dovecot-core, dovecot-imapd, dovecot-lmtpd{}) \
                 is needed; run scripts/install-test-deps.sh (as root) first",
                if flavor.dovecot_24() {
                    ", dovecot-auth-lua, lua-socket, lua-cjson"
                } else {
                    ""
                }
            );
        }
    }
    for user in ["dovecot", "dovenull"] {
        flavor.user(user);
    }
    if flavor.dovecot_24() {
        // /usr/lib/<multiarch triplet>/lua/5.4/cjson.so
        let cjson = std::fs::read_dir(flavor.host_path(Path::new("/usr/lib")))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.path().join("lua/5.4/cjson.so").is_file());
        if !cjson {
            panic!(
                "lua-cjson (Lua 5.4) is missing ({flavor}): run scripts/install-test-deps.sh \
                 (as root) first"
            );
        }
        if !lua_bridge().is_file() {
            panic!("{} is missing", lua_bridge().display());
        }
    }
}

/// A Dovecot instance under `<stack>/dv`. Stopped on drop.
#[derive(Debug)]
pub struct Dovecot {
    flavor: Flavor,
    root: PathBuf,
    conf: PathBuf,
    imap_port: u16,
    started: bool,
}

impl Dovecot {
    /// Write `dovecot.conf` (and for 2.3 `dovecot-dict-auth.conf.ext`, for
    /// 2.4 a copy of the Lua bridge) for an instance of the stack's
    /// flavor that uses the ramdir dict socket `dict_socket`, create its
    /// directories (the mail root owned by 5000:5000). Does not start it.
    /// `extra` is appended to `dovecot.conf` (later settings win; it must
    /// be in the flavor's syntax).
    pub fn prepare(stack: &StackDir, dict_socket: &Path, extra: &str) -> Dovecot {
        Dovecot::prepare_with(stack, dict_socket, extra, None)
    }

    /// [`Dovecot::prepare`], with passdb and userdb through the auth
    /// module on the map directory `module_map` when given (the
    /// configuration of docs/dovecot-module.md in place of the dict
    /// passdb/userdb; the quota part stays).
    pub fn prepare_with(
        stack: &StackDir,
        dict_socket: &Path,
        extra: &str,
        module_map: Option<&Path>,
    ) -> Dovecot {
        let flavor = stack.flavor();
        require_dovecot_on(flavor);
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(sweep_leaked_masters);
        let root = stack.join("dv");
        for d in ["run", "state", "mail"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        }
        set_mode(&root, 0o755);
        let mail = root.join("mail");
        nix::unistd::chown(
            &mail,
            Some(nix::unistd::Uid::from_raw(VMAIL_ID)),
            Some(nix::unistd::Gid::from_raw(VMAIL_ID)),
        )
        .unwrap_or_else(|e| panic!("chown 5000:5000 {}: {e}", mail.display()));
        let conf = root.join("dovecot.conf");
        let auth_ext = root.join("dovecot-dict-auth.conf.ext");
        let imap_port = free_port();
        let instance = stack
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "rdi".into());
        let text = if flavor.dovecot_24() {
            let lua = root.join("ramdir-auth.lua");
            std::fs::copy(lua_bridge(), &lua).unwrap_or_else(|e| {
                panic!("copy {} to {}: {e}", lua_bridge().display(), lua.display())
            });
            let conf = dovecot24_conf(&root, &instance, &lua, dict_socket, imap_port, extra);
            match module_map {
                Some(m) => with_auth_module(&conf, m, true),
                None => conf,
            }
        } else {
            write_atomic(&auth_ext, &auth_ext_text(dict_socket));
            let conf = dovecot_conf(&root, &instance, &auth_ext, dict_socket, imap_port, extra);
            match module_map {
                Some(m) => with_auth_module(&conf, m, false),
                None => conf,
            }
        };
        write_atomic(&conf, &text);
        Dovecot {
            flavor,
            root,
            conf,
            imap_port,
            started: false,
        }
    }

    /// Start Dovecot and wait (up to [`WAIT`]) until the master's pid file, the
    /// LMTP socket and the IMAP `* OK` greeting are all there.
    pub fn start(&mut self) {
        assert!(!self.started, "Dovecot is already running");
        let stderr_path = self.root.join("dovecot.stderr");
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", stderr_path.display()));
        // Counted as started from here on: whatever happens next, stop()
        // looks for a master to end.
        self.started = true;
        // Never our own stdio: the daemon keeps it open (trap 8).
        let status = self
            .flavor
            .command("/usr/sbin/dovecot")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .status()
            .unwrap_or_else(|e| panic!("run dovecot: {e}"));
        if !status.success() {
            panic!(
                "dovecot -c {} failed ({status}): {}\nlog:\n{}",
                self.conf.display(),
                std::fs::read_to_string(&stderr_path).unwrap_or_default(),
                self.log_text()
            );
        }
        let start = Instant::now();
        loop {
            let ready = self.master_pid().is_some()
                && self.lmtp_socket().exists()
                && Imap::connect(self.imap_addr()).is_ok_and(|i| i.greeting.starts_with("* OK"));
            if ready {
                return;
            }
            if start.elapsed() > WAIT {
                panic!(
                    "Dovecot was not ready within {WAIT:?} (pid file, {}, IMAP greeting on {}); \
                     stderr: {}\nlog:\n{}",
                    self.lmtp_socket().display(),
                    self.imap_addr(),
                    std::fs::read_to_string(&stderr_path).unwrap_or_default(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    /// Stop Dovecot: SIGTERM to the master, wait (up to [`WAIT`]) until it
    /// has exited (a zombie counts as exited, trap 15), SIGKILL otherwise.
    /// Never panics (it runs in drops, also of failed tests).
    pub fn stop(&mut self) {
        if !self.started {
            return;
        }
        self.started = false;
        if let Some(pid) = self.master_pid() {
            let pid_t = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid_t, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + WAIT;
            while process_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(30));
            }
            if process_alive(pid) {
                let _ = nix::sys::signal::kill(pid_t, nix::sys::signal::Signal::SIGKILL);
            }
        }
        // Anything of this instance the master did not take down (its
        // processes work in base_dir or a mail home, all under the root).
        let killed = crate::kill_processes_in(&[
            self.root.clone(),
            self.flavor.host_path_unchecked(&self.root),
        ]);
        if killed > 0 {
            eprintln!(
                "ramdir-integration: killed {killed} Dovecot process(es) left in {}",
                self.root.display()
            );
        }
    }

    /// The master's pid (`base_dir/master.pid`).
    pub fn master_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.root.join("run/master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// `dovecot.conf`.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// `<stack>/dv`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The mail root, `<stack>/dv/mail` (owned by 5000:5000).
    pub fn mail_root(&self) -> PathBuf {
        self.root.join("mail")
    }

    /// The LMTP socket, `base_dir/lmtp`.
    pub fn lmtp_socket(&self) -> PathBuf {
        self.root.join("run/lmtp")
    }

    /// Where IMAP listens.
    pub fn imap_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.imap_port))
    }

    /// Dovecot's log (`log_path`).
    pub fn log_path(&self) -> PathBuf {
        self.root.join("dovecot.log")
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Log lines that contain `needle`.
    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// Log lines that report trouble: `Panic:`, `Fatal:` and `Error:`
    /// lines, and the quota plugin's warnings about lost updates.
    pub fn trouble(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| {
                [" Panic: ", " Fatal: ", " Error: ", "desynced", "broken"]
                    .iter()
                    .any(|n| l.contains(n))
            })
            .map(str::to_string)
            .collect()
    }

    /// Which Dovecot this is.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// Run `doveadm -c CONF ARGS…` and return its output.
    pub fn doveadm(&self, args: &[&str]) -> Output {
        self.flavor
            .command("/usr/bin/doveadm")
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run doveadm {args:?}: {e}"))
    }

    /// Run `doveadm ARGS…`, panic unless it exits 0; its stdout.
    pub fn doveadm_ok(&self, args: &[&str]) -> String {
        let out = self.doveadm(args);
        if !out.status.success() {
            panic!(
                "doveadm {args:?} failed ({}): {}{}\nlog:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                tail(&self.log_text(), 30)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `doveadm auth test USER PASSWORD`: did the passdb accept it? Panics
    /// when doveadm itself fails in another way than "auth failed".
    pub fn auth_test(&self, user: &str, password: &str) -> bool {
        let out = self.doveadm(&["auth", "test", user, password]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() && text.contains("auth succeeded") {
            return true;
        }
        if text.contains("auth failed") {
            return false;
        }
        panic!(
            "doveadm auth test {user}: unexpected result ({}): {text}",
            out.status
        );
    }

    /// `doveadm user USER`: the userdb fields, or `None` when the user does
    /// not exist (exit 67). Panics on any other failure.
    pub fn user(&self, user: &str) -> Option<BTreeMap<String, String>> {
        let out = self.doveadm(&["user", user]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        match out.status.code() {
            Some(0) => Some(
                stdout
                    .lines()
                    .skip_while(|l| !l.starts_with("field"))
                    .skip(1)
                    .filter_map(|l| l.split_once('\t'))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .collect(),
            ),
            Some(67) => None,
            _ => panic!(
                "doveadm user {user} failed ({}): {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// `doveadm user MASK` with a wildcard mask (`*`): the users the userdb
    /// iteration returns, in the order given.
    pub fn list_users(&self, mask: &str) -> Vec<String> {
        self.doveadm_ok(&["user", mask])
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// `doveadm quota get -u USER` (tab format), which reads the counters
    /// through the quota dict and recalculates them when they are missing.
    pub fn quota_get(&self, user: &str) -> DovecotQuota {
        let text = self.doveadm_ok(&["-f", "tab", "quota", "get", "-u", user]);
        DovecotQuota::parse(&text)
            .unwrap_or_else(|| panic!("unparsable doveadm quota get output: {text:?}"))
    }

    /// `doveadm quota recalc -u USER`.
    pub fn quota_recalc(&self, user: &str) {
        self.doveadm_ok(&["quota", "recalc", "-u", user]);
    }

    /// A new LMTP session on the `lmtp` socket (greeting read, `LHLO`
    /// sent).
    pub fn lmtp(&self) -> Lmtp {
        let mut l = Lmtp::connect(&self.lmtp_socket())
            .unwrap_or_else(|e| panic!("LMTP connect {}: {e}", self.lmtp_socket().display()));
        let r = l.command("LHLO test.client").expect("LHLO");
        assert_eq!(r.code, 250, "LHLO: {r}");
        l
    }

    /// A new IMAP connection (greeting read).
    pub fn imap(&self) -> Imap {
        Imap::connect(self.imap_addr())
            .unwrap_or_else(|e| panic!("IMAP connect {}: {e}", self.imap_addr()))
    }

    /// An IMAP session logged in as `user`; panics if the login fails.
    pub fn imap_login(&self, user: &str, password: &str) -> Imap {
        let mut i = self.imap();
        let r = i.login(user, password).expect("IMAP LOGIN");
        assert!(
            r.is_ok(),
            "IMAP LOGIN {user}: {r}\nlog:\n{}",
            tail(&self.log_text(), 20)
        );
        i
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Stop Dovecot masters left behind by test processes that are gone (a
/// run killed by a timeout never reaches the `Drop`s). A master is only
/// signalled when its command line is exactly the one [`Dovecot::start`]
/// runs, `/usr/sbin/dovecot -c /tmp/rdi-<owner>-<n>/dv/dovecot.conf`, and
/// the owner process no longer runs.
pub(crate) fn sweep_leaked_masters() {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .collect();
        let [b"/usr/sbin/dovecot", b"-c", conf] = args.as_slice() else {
            continue;
        };
        let conf = String::from_utf8_lossy(conf);
        let owner = conf
            .strip_prefix("/tmp/rdi-")
            .and_then(|r| r.strip_suffix("/dv/dovecot.conf"))
            .and_then(|r| r.split_once('-'))
            .filter(|(_, n)| n.parse::<u32>().is_ok())
            .and_then(|(o, _)| o.parse::<i32>().ok());
        let Some(owner) = owner else { continue };
        if owner == std::process::id() as i32 || process_alive(owner) || !process_alive(pid) {
            continue;
        }
        eprintln!("ramdir-integration: stopping leaked Dovecot master {pid} ({conf})");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// `dovecot-dict-auth.conf.ext` exactly as docs/dovecot.md gives it, with
/// the documented socket replaced by the stack's.
fn auth_ext_text(dict_socket: &Path) -> String {
    documented_block(DOC_23_HEADING, "password_key")
        .replace(DOC_DICT_SOCKET, &dict_socket.display().to_string())
}

/// The Dovecot 2.3 `dovecot.conf`: the instance settings
/// ([`instance_conf`]), then **the ramdir part exactly as docs/dovecot.md
/// gives it** (passdb/userdb `driver = dict`, the `dict:` quota backend),
/// with the documented paths replaced by the stack's, so every 2.3 test
/// runs the documented configuration. `extra` goes last (later settings
/// win).
fn dovecot_conf(
    root: &Path,
    instance: &str,
    auth_ext: &Path,
    dict_socket: &Path,
    imap_port: u16,
    extra: &str,
) -> String {
    let documented = documented_block(DOC_23_HEADING, "driver = dict")
        .replace(DOC_AUTH_EXT, &auth_ext.display().to_string())
        .replace(DOC_DICT_SOCKET, &dict_socket.display().to_string());
    instance_conf(
        &DIALECT_23,
        root,
        instance,
        imap_port,
        DOC_23_HEADING,
        &documented,
        extra,
    )
}

/// The Dovecot 2.4 `dovecot.conf`: the instance settings
/// ([`instance_conf`]) in 2.4 names, then **the ramdir part exactly as
/// docs/dovecot.md gives it** ([`documented_24_block`]: passdb and userdb
/// through the Lua bridge on ramdir's `auth` dict, a `count` quota that
/// `quota_clone` mirrors into ramdir's `quota` dict), with the documented
/// paths replaced by the stack's, so every 2.4 test runs the documented
/// configuration. Limits come from the userdb; `extra` goes last (later
/// settings win, and blocks of the same name merge).
fn dovecot24_conf(
    root: &Path,
    instance: &str,
    lua: &Path,
    dict_socket: &Path,
    imap_port: u16,
    extra: &str,
) -> String {
    let documented = documented_24_block()
        .replace(DOC_LUA_FILE, &lua.display().to_string())
        .replace(DOC_DICT_SOCKET, &dict_socket.display().to_string());
    instance_conf(
        &DIALECT_24,
        root,
        instance,
        imap_port,
        DOC_24_HEADING,
        &documented,
        extra,
    )
}

/// What Dovecot 2.3 and 2.4 spell differently in the instance settings.
struct Dialect {
    /// The first lines (2.4 requires its config version first).
    head: &'static str,
    /// Plaintext logins without TLS allowed.
    cleartext: &'static str,
    /// Logins lower-cased.
    username_format: &'static str,
    /// Maildir under the home.
    mail: &'static str,
    /// Inside `inet_listener imap`, before the port.
    imap_listener: &'static str,
    /// Namespaces (2.4 has no default INBOX namespace; Debian's
    /// conf.d/10-mail.conf sets this one).
    namespace: &'static str,
}

const DIALECT_23: Dialect = Dialect {
    head: "# Generated by ramdir-integration (a private test instance).\n",
    cleartext: "disable_plaintext_auth = no",
    username_format: "%Lu",
    mail: "mail_location = maildir:~/Maildir\n",
    imap_listener: "    address = 127.0.0.1\n",
    namespace: "",
};

const DIALECT_24: Dialect = Dialect {
    head: "# Generated by ramdir-integration (a private Dovecot 2.4 test instance).\n\
           dovecot_config_version = 2.4.1\n\
           dovecot_storage_version = 2.4.1\n",
    cleartext: "auth_allow_cleartext = yes",
    username_format: "%{user | lower}",
    mail: "mail_driver = maildir\n\
           mail_path = ~/Maildir\n",
    imap_listener: "",
    namespace: "namespace inbox {\n  inbox = yes\n}\n",
};

/// A private Dovecot instance's `dovecot.conf` (paths, listeners, users,
/// logging; as a packaged Dovecot has them in its stock files) in
/// `dialect`, with `documented` (the ramdir part, from docs/dovecot.md's
/// section `heading`) and `extra` after it.
fn instance_conf(
    dialect: &Dialect,
    root: &Path,
    instance: &str,
    imap_port: u16,
    heading: &str,
    documented: &str,
    extra: &str,
) -> String {
    let debug = if std::env::var_os("RAMDIR_DOVECOT_DEBUG").is_some_and(|v| v == "1") {
        "yes"
    } else {
        "no"
    };
    let heading = heading.trim_start_matches("## ");
    format!(
        "\
{head}instance_name = {instance}
base_dir = {root}/run
state_dir = {root}/state
protocols = imap lmtp
listen = 127.0.0.1
log_path = {root}/dovecot.log
ssl = no
{cleartext}
auth_mechanisms = plain login
auth_username_format = {username_format}
auth_cache_size = 0
# No 2 s sleep after each failed login (Dovecot still answers failures on
# a 0.5 s tick).
auth_failure_delay = 0
auth_debug = {debug}
mail_debug = {debug}
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
mail_uid = {id}
mail_gid = {id}
first_valid_uid = {id}
last_valid_uid = {id}
first_valid_gid = {id}
{mail}postmaster_address = postmaster@example.org
{namespace}service imap-login {{
  inet_listener imap {{
{imap_listener}    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0666
  }}
}}
service anvil {{
  # Moved away, so the auth process finds no penalty socket and turns the
  # per-IP auth penalty off (2 s doubling up to 15 s before each login
  # after a failure; the tests fail logins on purpose).
  unix_listener anvil-auth-penalty {{
    path = anvil-auth-penalty-off
  }}
}}

# ---- docs/dovecot.md, \"{heading}\" ----
{documented}
# ---- end of the documented part ----

{extra}
",
        head = dialect.head,
        cleartext = dialect.cleartext,
        username_format = dialect.username_format,
        mail = dialect.mail,
        imap_listener = dialect.imap_listener,
        namespace = dialect.namespace,
        root = root.display(),
        id = VMAIL_ID,
    )
}

/// The sections of docs/dovecot.md that hold each version's configuration.
const DOC_23_HEADING: &str = "## dovecot.conf (Dovecot 2.3, Debian 12)";
const DOC_24_HEADING: &str = "## dovecot.conf (Dovecot 2.4, Debian 13)";
/// Where the documented 2.3 configuration has the dict auth file.
const DOC_AUTH_EXT: &str = "/etc/dovecot/dovecot-dict-auth.conf.ext";
/// Where the documented 2.4 configuration has the Lua bridge.
const DOC_LUA_FILE: &str = "/etc/dovecot/ramdir-auth.lua";
/// Where the documented configurations have ramdir's dict socket.
const DOC_DICT_SOCKET: &str = "/run/ramdir/dict.sock";

/// Where docs/dovecot-module.md has the `[dovecot_map]` directory.
const DOC_MODULE_MAP: &str = "/run/ramdir/dovecot";
/// docs/dovecot-module.md's 2.3 section.
const DOC_MODULE_23_HEADING: &str = "## dovecot.conf (Dovecot 2.3, Debian 12)";
/// docs/dovecot-module.md's 2.4 section.
const DOC_MODULE_24_HEADING: &str = "## dovecot.conf (Dovecot 2.4, Debian 13)";

/// The module's `passdb` and `userdb` sections exactly as
/// docs/dovecot-module.md gives them for the version, with its map
/// directory replaced by `map`.
pub fn auth_module_block(map: &Path, v24: bool) -> String {
    let heading = if v24 {
        DOC_MODULE_24_HEADING
    } else {
        DOC_MODULE_23_HEADING
    };
    let module = documented_block_in("dovecot-module.md", heading, "driver = ramdir");
    assert!(
        module.contains(DOC_MODULE_MAP),
        "docs/dovecot-module.md's {heading:?} block no longer names {DOC_MODULE_MAP}"
    );
    module.replace(DOC_MODULE_MAP, &map.display().to_string())
}

/// `conf` with its `passdb … { }` and `userdb … { }` sections replaced by
/// the module's ([`auth_module_block`]).
fn with_auth_module(conf: &str, map: &Path, v24: bool) -> String {
    let module = auth_module_block(map, v24);
    let mut out = String::new();
    // Brace depth inside a skipped section (0: not skipping).
    let mut depth = 0usize;
    let mut replaced = false;
    for line in conf.lines() {
        let opens = line.matches('{').count();
        let closes = line.matches('}').count();
        let section = line.starts_with("passdb ") || line.starts_with("userdb ");
        if depth == 0 && section && opens > closes {
            depth = opens - closes;
            if !replaced {
                out.push_str("# ---- docs/dovecot-module.md ----\n");
                out.push_str(&module);
                out.push_str("# ---- end ----\n");
                replaced = true;
            }
            continue;
        }
        if depth > 0 {
            depth = (depth + opens).saturating_sub(closes);
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert!(
        replaced,
        "no passdb section to replace in the generated dovecot.conf"
    );
    out
}

/// Dovecot's group id where its processes run (the host's or the root's).
pub fn dovecot_gid(flavor: Flavor) -> u32 {
    let out = flavor
        .command("id")
        .args(["-g", "dovecot"])
        .output()
        .unwrap_or_else(|e| panic!("id -g dovecot: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("id -g dovecot: {out:?}"))
}

/// Where Dovecot loads auth modules from (compiled in; no setting).
pub const AUTH_MODULE_DIR: &str = "/usr/lib/dovecot/modules/auth";

/// The built `libauthdb_ramdir.so` for `flavor`: `$RAMDIR_DOVECOT_MODULE`
/// (Debian 12) / `$RAMDIR_DOVECOT24_MODULE` (Debian 13) when set, else
/// the workspace build: next to the ramdir binary for 2.3 (`cargo build -p
/// dovecot-ramdir`), under `target/dovecot-2.4/<profile>/` for 2.4
/// (`scripts/build-dovecot24-module.sh`).
pub fn module_so(flavor: Flavor) -> PathBuf {
    let var = if flavor.dovecot_24() {
        "RAMDIR_DOVECOT24_MODULE"
    } else {
        "RAMDIR_DOVECOT_MODULE"
    };
    if let Some(p) = std::env::var_os(var) {
        return PathBuf::from(p);
    }
    let bin = crate::ramdir::ramdir_bin();
    let p = if flavor.dovecot_24() {
        // target/<profile>/ramdir → target/dovecot-2.4/<profile>/…
        let profile_dir = bin.parent().unwrap_or(Path::new("."));
        let profile = profile_dir.file_name().unwrap_or_default();
        let target = profile_dir.parent().unwrap_or(Path::new("."));
        target
            .join("dovecot-2.4")
            .join(profile)
            .join("libauthdb_ramdir.so")
    } else {
        bin.with_file_name("libauthdb_ramdir.so")
    };
    assert!(
        p.is_file(),
        "{} not found: run `cargo build -p dovecot-ramdir` for Dovecot 2.3, \
         `scripts/build-dovecot24-module.sh` for 2.4 (same profile), or set {var}",
        p.display()
    );
    p
}

/// How many live stacks of this process use each installed module file.
static MODULE_USERS: std::sync::Mutex<BTreeMap<PathBuf, usize>> =
    std::sync::Mutex::new(BTreeMap::new());

/// `libauthdb_ramdir.so` installed in Dovecot's auth module directory
/// (the host's, or the Debian 13 root's) while any stack of this process
/// uses it; removed when the last one is dropped.
#[derive(Debug)]
pub struct ModuleInstall {
    target: PathBuf,
}

impl ModuleInstall {
    /// Install the module built for `flavor` (root 0644, as Dovecot's own).
    pub fn new(flavor: Flavor) -> ModuleInstall {
        ModuleInstall::file(flavor, &module_so(flavor))
    }

    /// Install `so` as the module of `flavor`'s Dovecot (a test of a
    /// module built for another ABI). While any stack of the process holds
    /// the file, a second call keeps that file: tests installing different
    /// files must not overlap (dovecot_module_abi.rs runs them one at a
    /// time).
    pub fn file(flavor: Flavor, so: &Path) -> ModuleInstall {
        let dir = flavor.host_path_unchecked(Path::new(AUTH_MODULE_DIR));
        let target = dir.join("libauthdb_ramdir.so");
        let mut users = MODULE_USERS.lock().unwrap_or_else(|p| p.into_inner());
        let n = users.entry(target.clone()).or_insert(0);
        if *n == 0 {
            install_module(so, &target);
        }
        *n += 1;
        ModuleInstall { target }
    }
}

/// Copy `so` to `target` under a temporary name, then rename (a Dovecot
/// starting meanwhile never maps a half-written file).
pub fn install_module(so: &Path, target: &Path) {
    let tmp = target.with_extension("so.tmp");
    std::fs::copy(so, &tmp)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", so.display(), tmp.display()));
    set_mode(&tmp, 0o644);
    std::fs::rename(&tmp, target)
        .unwrap_or_else(|e| panic!("rename {} to {}: {e}", tmp.display(), target.display()));
}

impl Drop for ModuleInstall {
    fn drop(&mut self) {
        let mut users = MODULE_USERS.lock().unwrap_or_else(|p| p.into_inner());
        let n = users.entry(self.target.clone()).or_insert(1);
        *n = n.saturating_sub(1);
        if *n == 0 {
            let _ = std::fs::remove_file(&self.target);
        }
    }
}

/// The `dovecot.conf` code block of docs/dovecot.md's Dovecot 2.4 section.
pub fn documented_24_block() -> String {
    let body = documented_block(DOC_24_HEADING, "driver = lua");
    for needle in [DOC_LUA_FILE, DOC_DICT_SOCKET] {
        assert!(
            body.contains(needle),
            "the documented 2.4 dovecot.conf no longer names {needle}"
        );
    }
    body
}

/// The README's `dovecot.conf` snippet says nothing the tested block
/// does not: in the README section under `heading` (up to the next
/// heading that starts with `until`), the first code block with `needle`
/// has only lines (comments and indentation aside) of `documented`, the
/// block of docs/dovecot.md the harness runs.
pub fn assert_readme_snippet_tested(heading: &str, until: &str, needle: &str, documented: &str) {
    let strip = |l: &str| l.split('#').next().unwrap_or("").trim().to_string();
    let documented: Vec<String> = documented.lines().map(strip).collect();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).expect("read README.md");
    let section = readme
        .split_once(heading)
        .map(|(_, r)| r.split(until).next().unwrap_or(r))
        .unwrap_or_else(|| panic!("README has no {heading:?} section"));
    let block = code_block(section, needle)
        .unwrap_or_else(|| panic!("no block with {needle:?} in the README's {heading:?}"));
    let missing: Vec<&str> = block
        .lines()
        .filter(|l| !strip(l).is_empty() && !documented.contains(&strip(l)))
        .collect();
    assert!(
        missing.is_empty(),
        "README lines ({heading:?}) not in docs/dovecot.md's tested block: {missing:?}"
    );
}

/// The first unlabelled fenced code block (a line ```` ``` ```` … ```` ``` ````)
/// of Markdown `text` that contains `needle`, with a final newline.
pub fn code_block(text: &str, needle: &str) -> Option<String> {
    // (is the open block unlabelled, its lines)
    let mut block: Option<(bool, Vec<&str>)> = None;
    for line in text.lines() {
        match (&mut block, line.strip_prefix("```")) {
            (None, Some(label)) => block = Some((label.is_empty(), Vec::new())),
            (Some((unlabelled, b)), Some(_)) => {
                let body = b.join("\n");
                if *unlabelled && body.contains(needle) {
                    return Some(body + "\n");
                }
                block = None;
            }
            (Some((_, b)), None) => b.push(line),
            (None, None) => {}
        }
    }
    None
}

/// The first unlabelled fenced code block containing `needle` in the
/// section `heading` of docs/dovecot.md (up to the next `## ` heading).
/// Panics, naming the file, when the docs lost it.
pub fn documented_block(heading: &str, needle: &str) -> String {
    documented_block_in("dovecot.md", heading, needle)
}

/// [`documented_block`] in another file of docs/.
pub fn documented_block_in(file: &str, heading: &str, needle: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(file);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let section = text
        .split_once(heading)
        .map(|(_, rest)| rest.split("\n## ").next().unwrap_or(rest))
        .unwrap_or_else(|| panic!("{} has no {heading:?}", path.display()));
    if let Some(b) = code_block(section, needle) {
        return b;
    }
    panic!(
        "no code block with {needle:?} under {heading:?} in {}",
        path.display()
    );
}

/// One quota root as `doveadm quota get` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DovecotQuota {
    /// Storage in KiB (Dovecot rounds the byte count up).
    pub storage_kib: u64,
    /// Storage limit in KiB, if any.
    pub storage_limit_kib: Option<u64>,
    /// Message count.
    pub messages: u64,
}

impl DovecotQuota {
    /// Parse `doveadm -f tab quota get` output (a header, then one
    /// `name<TAB>type<TAB>value<TAB>limit<TAB>%` row per resource).
    pub fn parse(text: &str) -> Option<DovecotQuota> {
        let mut storage = None;
        let mut messages = None;
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() < 4 {
                continue;
            }
            let limit = f[3].trim().parse::<u64>().ok();
            let value = f[2].trim().parse::<u64>().ok()?;
            match f[1].trim() {
                "STORAGE" => storage = Some((value, limit)),
                "MESSAGE" => messages = Some(value),
                _ => {}
            }
        }
        let (storage_kib, storage_limit_kib) = storage?;
        Some(DovecotQuota {
            storage_kib,
            storage_limit_kib,
            messages: messages?,
        })
    }
}

// ---------------------------------------------------------------------------
// LMTP

/// The replies to one LMTP transaction.
#[derive(Debug, Clone)]
pub struct LmtpOutcome {
    /// Reply to `MAIL FROM`.
    pub mail: Reply,
    /// Reply to each `RCPT TO`, in order.
    pub rcpts: Vec<Reply>,
    /// Reply to `DATA` when it was not 354 (or was not sent because no
    /// recipient was accepted: then `None` and `per_rcpt` is empty).
    pub data: Option<Reply>,
    /// After the message: one reply per accepted recipient, in order.
    pub per_rcpt: Vec<Reply>,
}

impl LmtpOutcome {
    /// Was the message accepted for every recipient?
    pub fn delivered(&self) -> bool {
        self.mail.is_positive()
            && self.rcpts.iter().all(Reply::is_positive)
            && !self.per_rcpt.is_empty()
            && self.per_rcpt.iter().all(Reply::is_positive)
    }

    /// The first negative reply, if any (RCPT, DATA or after the message).
    pub fn refusal(&self) -> Option<&Reply> {
        std::iter::once(&self.mail)
            .chain(&self.rcpts)
            .chain(&self.data)
            .chain(&self.per_rcpt)
            .find(|r| !r.is_positive() && r.code != 354)
    }
}

impl fmt::Display for LmtpOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MAIL: {}", self.mail)?;
        for r in &self.rcpts {
            write!(f, "; RCPT: {r}")?;
        }
        if let Some(d) = &self.data {
            write!(f, "; DATA: {d}")?;
        }
        for r in &self.per_rcpt {
            write!(f, "; after data: {r}")?;
        }
        Ok(())
    }
}

/// An LMTP session over a unix socket.
#[derive(Debug)]
pub struct Lmtp(Smtp<UnixStream>);

impl Lmtp {
    /// Connect and read the greeting ([`WAIT`] timeouts).
    pub fn connect(path: &Path) -> io::Result<Lmtp> {
        Ok(Lmtp(Smtp::over(crate::connect_unix(path)?)?))
    }

    /// Send one command line and read its reply.
    pub fn command(&mut self, line: &str) -> io::Result<Reply> {
        self.0.command(line)
    }

    /// One transaction: `MAIL FROM`, a `RCPT TO` per recipient, and when
    /// any was accepted `DATA` with `message` (dot-stuffed, CRLF) and one
    /// reply per accepted recipient. Ends with `RSET` when nothing was
    /// sent, so the session can be reused.
    pub fn send(&mut self, from: &str, rcpts: &[&str], message: &str) -> io::Result<LmtpOutcome> {
        let mail = self.command(&format!("MAIL FROM:<{from}>"))?;
        let mut out = LmtpOutcome {
            mail,
            rcpts: Vec::new(),
            data: None,
            per_rcpt: Vec::new(),
        };
        if !out.mail.is_positive() {
            self.command("RSET")?;
            return Ok(out);
        }
        for r in rcpts {
            out.rcpts.push(self.command(&format!("RCPT TO:<{r}>"))?);
        }
        let accepted = out.rcpts.iter().filter(|r| r.is_positive()).count();
        if accepted == 0 {
            self.command("RSET")?;
            return Ok(out);
        }
        let go = self.command("DATA")?;
        if go.code != 354 {
            out.data = Some(go);
            return Ok(out);
        }
        out.per_rcpt = self.0.message(message, accepted)?;
        Ok(out)
    }

    /// `QUIT`.
    pub fn quit(mut self) -> io::Result<Reply> {
        self.command("QUIT")
    }
}

/// Send one message of about `size` bytes carrying `token` through
/// `postfix` over SMTP to `rcpts`, each of which must be accepted; returns
/// the queue id.
pub fn send_message(postfix: &Postfix, rcpts: &[&str], token: &str, size: usize) -> String {
    let mut c = postfix.smtp();
    let r = c.ehlo("client.test").expect("EHLO");
    assert_eq!(r.code, 250, "EHLO: {r}");
    let r = c.mail_from("sender@outside.test").expect("MAIL FROM");
    assert_eq!(r.code, 250, "MAIL FROM: {r}");
    for rcpt in rcpts {
        let r = c.rcpt_to(rcpt).expect("RCPT TO");
        assert_eq!(r.code, 250, "RCPT TO:<{rcpt}>: {r}");
    }
    let r = c.data(&message(token, size)).expect("DATA");
    assert_eq!(r.code, 250, "end of DATA: {r}");
    let _ = c.quit();
    r.queue_id()
        .unwrap_or_else(|| panic!("no queue id in {r}"))
        .to_string()
}

/// Wait (up to [`WAIT`]) for a file in `maildir/new/` whose text contains
/// `token`; return its path. Panics with the end of Postfix's maillog and
/// Dovecot's trouble otherwise.
pub fn wait_for_mail(postfix: &Postfix, dovecot: &Dovecot, maildir: &Path, token: &str) -> PathBuf {
    let start = Instant::now();
    loop {
        if let Ok(rd) = std::fs::read_dir(maildir.join("new")) {
            for e in rd.flatten() {
                if std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(token)) {
                    return e.path();
                }
            }
        }
        if start.elapsed() > WAIT {
            let log = postfix.maillog_text();
            let lines: Vec<&str> = log.lines().collect();
            panic!(
                "no message with {token:?} in {}/new within {WAIT:?}; maillog:\n{}\nDovecot trouble: {:#?}",
                maildir.display(),
                lines[lines.len().saturating_sub(20)..].join("\n"),
                dovecot.trouble()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A test message of about `size` bytes (headers included) whose subject
/// and `Message-ID` carry `token`, so it can be found in a Maildir.
pub fn message(token: &str, size: usize) -> String {
    let mut m = format!(
        "From: sender@outside.test\r\n\
         To: someone@example.org\r\n\
         Subject: test {token}\r\n\
         Message-ID: <{token}@ramdir.test>\r\n\
         \r\n\
         token {token}\r\n"
    );
    let line = format!("{}\r\n", "x".repeat(76));
    while m.len() + line.len() <= size {
        m.push_str(&line);
    }
    m
}

// ---------------------------------------------------------------------------
// IMAP

/// The tagged completion of one IMAP command and the untagged lines before
/// it.
#[derive(Debug, Clone)]
pub struct ImapResponse {
    /// `OK`, `NO` or `BAD`.
    pub status: String,
    /// The rest of the tagged line (`[CODE] text`).
    pub text: String,
    /// Untagged (`* …`) and continuation lines, literals inlined.
    pub untagged: Vec<String>,
}

impl ImapResponse {
    /// Tagged `OK`?
    pub fn is_ok(&self) -> bool {
        self.status == "OK"
    }
}

impl fmt::Display for ImapResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.text)?;
        for u in &self.untagged {
            write!(f, "\n  {u}")?;
        }
        Ok(())
    }
}

/// An IMAP connection over TCP (no TLS: the test instance has `ssl = no`).
#[derive(Debug)]
pub struct Imap {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    tag: u32,
    /// The server greeting line.
    pub greeting: String,
}

impl Imap {
    /// Connect and read the greeting ([`WAIT`] timeouts).
    pub fn connect(addr: SocketAddr) -> io::Result<Imap> {
        let s = crate::connect_tcp(addr)?;
        s.set_read_timeout(Some(crate::WAIT))?;
        s.set_write_timeout(Some(crate::WAIT))?;
        let mut reader = BufReader::new(s.try_clone()?);
        let greeting = read_imap_line(&mut reader)?;
        Ok(Imap {
            reader,
            writer: s,
            tag: 0,
            greeting,
        })
    }

    fn next_tag(&mut self) -> String {
        self.tag += 1;
        format!("a{}", self.tag)
    }

    /// Send `TAG command` and read until the tagged completion.
    pub fn command(&mut self, command: &str) -> io::Result<ImapResponse> {
        let tag = self.next_tag();
        self.writer
            .write_all(format!("{tag} {command}\r\n").as_bytes())?;
        self.writer.flush()?;
        self.read_completion(&tag)
    }

    fn read_completion(&mut self, tag: &str) -> io::Result<ImapResponse> {
        let mut untagged = Vec::new();
        loop {
            let line = read_imap_line(&mut self.reader)?;
            if let Some(rest) = line.strip_prefix(tag).and_then(|r| r.strip_prefix(' ')) {
                let (status, text) = rest.split_once(' ').unwrap_or((rest, ""));
                return Ok(ImapResponse {
                    status: status.to_string(),
                    text: text.to_string(),
                    untagged,
                });
            }
            untagged.push(line);
        }
    }

    /// `LOGIN user password` (quoted strings).
    pub fn login(&mut self, user: &str, password: &str) -> io::Result<ImapResponse> {
        self.command(&format!("LOGIN {} {}", quote(user), quote(password)))
    }

    /// `SELECT mailbox`.
    pub fn select(&mut self, mailbox: &str) -> io::Result<ImapResponse> {
        self.command(&format!("SELECT {}", quote(mailbox)))
    }

    /// `APPEND mailbox {n}` with `message` (CRLF line ends) as a
    /// synchronizing literal.
    pub fn append(&mut self, mailbox: &str, message: &str) -> io::Result<ImapResponse> {
        let data: String = message.lines().flat_map(|l| [l, "\r\n"]).collect();
        let tag = self.next_tag();
        self.writer.write_all(
            format!("{tag} APPEND {} {{{}}}\r\n", quote(mailbox), data.len()).as_bytes(),
        )?;
        self.writer.flush()?;
        let go = read_imap_line(&mut self.reader)?;
        if !go.starts_with('+') {
            // Refused before the literal: that line is the tagged reply.
            let rest = go.strip_prefix(&tag).map(str::trim_start).unwrap_or(&go);
            let (status, text) = rest.split_once(' ').unwrap_or((rest, ""));
            return Ok(ImapResponse {
                status: status.to_string(),
                text: text.to_string(),
                untagged: Vec::new(),
            });
        }
        self.writer.write_all(data.as_bytes())?;
        self.writer.write_all(b"\r\n")?;
        self.writer.flush()?;
        self.read_completion(&tag)
    }

    /// The `STORAGE` and `MESSAGE` usage and limits from `GETQUOTAROOT
    /// mailbox`: `(resource, usage, limit)` triples.
    pub fn quota(&mut self, mailbox: &str) -> io::Result<Vec<(String, u64, u64)>> {
        let r = self.command(&format!("GETQUOTAROOT {}", quote(mailbox)))?;
        if !r.is_ok() {
            return Err(io::Error::other(format!("GETQUOTAROOT: {r}")));
        }
        let mut out = Vec::new();
        for l in r.untagged.iter().filter(|l| l.starts_with("* QUOTA ")) {
            let Some(inner) = l.rsplit_once('(').and_then(|(_, r)| r.strip_suffix(')')) else {
                continue;
            };
            let f: Vec<&str> = inner.split_whitespace().collect();
            for c in f.chunks(3) {
                if let [name, used, limit] = c {
                    out.push((
                        name.to_string(),
                        used.parse().unwrap_or(u64::MAX),
                        limit.parse().unwrap_or(u64::MAX),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// `LOGOUT`.
    pub fn logout(mut self) -> io::Result<ImapResponse> {
        self.command("LOGOUT")
    }
}

/// Read one response line, with any `{n}` literals it announces inlined.
fn read_imap_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut out = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "IMAP server closed the connection",
            ));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        out.push_str(line);
        let literal = line
            .strip_suffix('}')
            .and_then(|l| l.rsplit_once('{'))
            .and_then(|(_, n)| n.parse::<usize>().ok());
        match literal {
            Some(n) => {
                let mut buf = vec![0; n];
                r.read_exact(&mut buf)?;
                out.push_str(&String::from_utf8_lossy(&buf));
            }
            None => return Ok(out),
        }
    }
}

/// An IMAP quoted string.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

// ---------------------------------------------------------------------------
// Dict protocol

/// A raw Dovecot dict-protocol (v3.2) client: it speaks to ramdir's dict
/// socket the way Dovecot's `proxy` dict does, one line per command, and
/// returns the raw reply lines.
#[derive(Debug)]
pub struct DictClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_txid: u32,
}

impl DictClient {
    /// Connect and send the hello for dict `name` (`auth`, `quota`).
    pub fn connect(path: &Path, name: &str) -> io::Result<DictClient> {
        let s = crate::connect_unix(path)?;
        s.set_read_timeout(Some(crate::WAIT))?;
        s.set_write_timeout(Some(crate::WAIT))?;
        let mut c = DictClient {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
            next_txid: 1,
        };
        c.send(&format!("H3\t2\t0\t\t{}", escape(name)))?;
        Ok(c)
    }

    /// Send one line (LF added) without reading anything.
    pub fn send(&mut self, line: &str) -> io::Result<()> {
        self.writer.write_all(format!("{line}\n").as_bytes())?;
        self.writer.flush()
    }

    /// Read one reply line (without its LF).
    pub fn read_line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "dict server closed the connection",
            ));
        }
        Ok(line.trim_end_matches('\n').to_string())
    }

    /// `L<key>\t<user>`: the raw reply (`O<value>`, `N`, `F<error>`).
    pub fn lookup(&mut self, key: &str, user: &str) -> io::Result<String> {
        self.send(&format!("L{}\t{}", escape(key), escape(user)))?;
        self.read_line()
    }

    /// One transaction for `user`: `B`, then each change (`S\tkey\tvalue`,
    /// `U\tkey`, `A\tkey\tdiff`: the letter and its arguments without the
    /// transaction id), then `C`. Returns the raw commit reply (`O<id>`,
    /// `N<id>`, `F<id>\t<error>`).
    pub fn transaction(&mut self, user: &str, changes: &[&str]) -> io::Result<String> {
        let id = self.next_txid;
        self.next_txid += 1;
        self.send(&format!("B{id}\t{}", escape(user)))?;
        for c in changes {
            let (cmd, args) = c.split_at(1);
            let args = args.strip_prefix('\t').unwrap_or(args);
            self.send(&format!("{cmd}{id}\t{args}"))?;
        }
        self.send(&format!("C{id}"))?;
        self.read_line()
    }
}

/// Dict tab-escaping (`\x01` escapes; protocols.md 3.1).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\x01' => out.push_str("\x011"),
            '\0' => out.push_str("\x010"),
            '\t' => out.push_str("\x01t"),
            '\r' => out.push_str("\x01r"),
            '\n' => out.push_str("\x01n"),
            c => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The stack

/// Quota usage as ramdir holds it (`None`: no counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// `priv/quota/storage`, bytes.
    pub storage: Option<i64>,
    /// `priv/quota/messages`.
    pub messages: Option<i64>,
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_else(|| "missing".into());
        write!(
            f,
            "storage={} messages={}",
            show(self.storage),
            show(self.messages)
        )
    }
}

/// What a user's Maildir holds, from the `,S=<size>` (physical) and
/// `,W=<size>` (virtual: CRLF line ends) of every message file in every
/// folder. Dovecot 2.3's dict quota counts the physical sizes, 2.4's
/// `count` quota the virtual ones (seen: its usage equals the `W=` sum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MaildirUsage {
    /// Sum of the message sizes, bytes.
    pub bytes: i64,
    /// Sum of the virtual message sizes, bytes.
    pub vbytes: i64,
    /// Number of messages.
    pub messages: i64,
}

impl MaildirUsage {
    /// Walk `maildir` (`<home>/Maildir`): `cur/` and `new/` of the INBOX
    /// and of every `.Folder`.
    pub fn of(maildir: &Path) -> MaildirUsage {
        let mut u = MaildirUsage::default();
        let mut folders = vec![maildir.to_path_buf()];
        if let Ok(rd) = std::fs::read_dir(maildir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with('.') && e.path().is_dir() {
                    folders.push(e.path());
                }
            }
        }
        for f in folders {
            for sub in ["cur", "new"] {
                let Ok(rd) = std::fs::read_dir(f.join(sub)) else {
                    continue;
                };
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let field = |tag: &str| {
                        name.split([',', ':'])
                            .find_map(|p| p.strip_prefix(tag))
                            .and_then(|s| s.parse::<i64>().ok())
                    };
                    let size = field("S=")
                        .unwrap_or_else(|| e.metadata().map(|m| m.len() as i64).unwrap_or(0));
                    u.bytes += size;
                    u.vbytes += field("W=").unwrap_or(size);
                    u.messages += 1;
                }
            }
        }
        u
    }
}

/// Knobs for [`MailStack::start`].
#[derive(Debug, Clone, Default)]
pub struct MailStackOptions {
    /// Lines added to ramdir's `[directory]` section. A `home_template`
    /// under the mail root (`<mail root>/%d/%n`) is always set first.
    pub directory_extra: String,
    /// Lines appended to `dovecot.conf`.
    pub dovecot_extra: String,
    /// Also run a Postfix that uses ramdir's socketmap and delivers to
    /// Dovecot over LMTP (`virtual_transport = lmtp:unix:<lmtp socket>`).
    pub postfix: bool,
    /// Lines appended to `main.cf` (with `postfix`).
    pub main_cf_extra: String,
    /// Whose Postfix and Dovecot run (ramdir always runs on the host).
    pub flavor: Flavor,
    /// Dovecot's passdb and userdb through the in-process module
    /// (`libauthdb_ramdir.so` on ramdir's `[dovecot_map]` files, configured
    /// as docs/dovecot-module.md gives it) instead of the auth dict.
    pub auth_module: bool,
    /// Lines added to ramdir's `[quota]` section (e.g. `shared = …`).
    pub quota_extra: String,
}

/// ramdir (socketmap, `[dict]` on `<stack>/run/dict.sock`, `[quota]` store
/// `<stack>/quota.redb`) with a Dovecot that uses it for passdb, userdb
/// and quota, and optionally a Postfix in front (with its socketmap socket
/// at `<spool>/private/ramdir-socketmap`).
///
/// Dropping it stops Postfix, Dovecot, ramdir, then removes the directory.
#[derive(Debug)]
pub struct MailStack {
    /// The Postfix instance, when asked for.
    pub postfix: Option<Postfix>,
    /// The Dovecot instance (started).
    pub dovecot: Dovecot,
    /// The ramdir process.
    pub ramdir: Ramdir,
    /// The installed auth module (with `auth_module`; removed when the last
    /// stack of this process that uses it is dropped).
    pub auth_module: Option<ModuleInstall>,
    /// ramdir's `[dovecot_map]` directory (with `auth_module`).
    pub dovecot_map: Option<PathBuf>,
    /// The directory files ramdir serves.
    pub files: DirectoryFiles,
    /// ramdir's dict socket.
    pub dict_socket: PathBuf,
    /// Holds everything; dropped last.
    pub dir: StackDir,
}

impl MailStack {
    /// Write the files (with [`MAIL_ROOT_VAR`] in the users replaced by the
    /// mail root), start ramdir, then Dovecot, then Postfix if asked.
    pub fn start(content: &DirectoryContent, opts: &MailStackOptions) -> MailStack {
        require_dovecot_on(opts.flavor);
        let dir = StackDir::for_flavor(opts.flavor);
        let run = dir.join("run");
        std::fs::create_dir_all(&run).unwrap_or_else(|e| panic!("mkdir {}: {e}", run.display()));
        set_mode(&run, 0o755);
        let dict_socket = run.join("dict.sock");
        let mail_root = dir.join("dv/mail");
        let mut content = content.clone();
        content.users = content
            .users
            .replace(MAIL_ROOT_VAR, &mail_root.display().to_string());
        let files = DirectoryFiles::write(&dir.join("data"), &content);
        let postfix = opts.postfix.then(|| {
            let lmtp = dir.join("dv/run/lmtp");
            let extra = format!(
                "virtual_transport = lmtp:unix:{}\n{}",
                lmtp.display(),
                opts.main_cf_extra
            );
            Postfix::prepare(&dir, &extra)
        });
        let socketmap = match &postfix {
            Some(p) => p.socketmap_path(),
            None => run.join("socketmap.sock"),
        };
        let config_path = dir.join("ramdir.toml");
        let directory_extra = format!(
            "home_template = {:?}\n{}",
            format!("{}/%d/%n", mail_root.display()),
            opts.directory_extra
        );
        write_config(&config_path, &files, &socketmap, &directory_extra);
        let mut text = std::fs::read_to_string(&config_path)
            .unwrap_or_else(|e| panic!("read {}: {e}", config_path.display()));
        text.push_str(&format!(
            "\n[dict]\nlisten = {:?}\nmode = \"0666\"\n\n[quota]\nstore = {:?}\n{}\n",
            format!("unix:{}", dict_socket.display()),
            dir.join("quota.redb").display().to_string(),
            opts.quota_extra.trim_end(),
        ));
        let dovecot_map = opts.auth_module.then(|| run.join("dovecot-map"));
        if let Some(m) = &dovecot_map {
            text.push_str(&format!(
                "\n[dovecot_map]\ndirectory = {:?}\ngroup = {:?}\n",
                m.display().to_string(),
                dovecot_gid(opts.flavor).to_string(),
            ));
        }
        write_atomic(&config_path, &text);
        let auth_module = opts.auth_module.then(|| ModuleInstall::new(opts.flavor));
        let ramdir = Ramdir::start(&config_path, &socketmap, &dir.join("ramdir.log"));
        wait_dict(&dict_socket);
        let mut dovecot = Dovecot::prepare_with(
            &dir,
            &dict_socket,
            &opts.dovecot_extra,
            dovecot_map.as_deref(),
        );
        dovecot.start();
        let postfix = postfix.map(|mut p| {
            p.start();
            p
        });
        MailStack {
            postfix,
            dovecot,
            ramdir,
            auth_module,
            dovecot_map,
            files,
            dict_socket,
            dir,
        }
    }

    /// `kill -9` ramdir (nothing is flushed or cleaned up).
    pub fn kill_ramdir(&mut self) {
        self.ramdir.kill();
    }

    /// Start ramdir again with the same config and wait until its dict
    /// socket answers too ([`Ramdir::restart`] only waits for the
    /// socketmap, which comes up first).
    pub fn restart_ramdir(&mut self) {
        self.ramdir.restart();
        wait_dict(&self.dict_socket);
    }

    /// The Postfix instance; panics when the stack has none.
    pub fn postfix(&self) -> &Postfix {
        self.postfix.as_ref().expect("this stack runs no Postfix")
    }

    /// A raw connection to ramdir's quota dict.
    pub fn quota_dict(&self) -> DictClient {
        DictClient::connect(&self.dict_socket, "quota")
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.dict_socket.display()))
    }

    /// A raw connection to ramdir's auth dict.
    pub fn auth_dict(&self) -> DictClient {
        DictClient::connect(&self.dict_socket, "auth")
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.dict_socket.display()))
    }

    /// `user`'s counters, read with `ramdir query --config F quota USER`
    /// (which asks the running daemon). Panics unless it answers `OK`.
    pub fn usage(&self, user: &str) -> Usage {
        let (rc, out) = self.ramdir.query_cli("quota", user);
        assert_eq!(
            rc, 0,
            "ramdir query quota {user}: exit {rc}, output {out:?}"
        );
        let field = |name: &str| -> Option<i64> {
            let v = out.split_whitespace().find_map(|w| w.strip_prefix(name))?;
            match v {
                "unknown" => None,
                v => Some(
                    v.parse()
                        .unwrap_or_else(|_| panic!("ramdir query quota {user}: {out:?}")),
                ),
            }
        };
        assert!(
            out.contains("storage="),
            "ramdir query quota {user}: {out:?}"
        );
        Usage {
            storage: field("storage="),
            messages: field("messages="),
        }
    }

    /// `user`'s counters read directly over the dict protocol (`L` on
    /// `priv/quota/{storage,messages}`).
    pub fn usage_raw(&self, user: &str) -> Usage {
        crate::hosts::dict_usage(&self.dict_socket, user)
    }

    /// Wait (up to [`WAIT`]) until ramdir's counters for `user` equal `want`
    /// (Dovecot commits its quota updates asynchronously). Panics with the
    /// last value seen and `what`.
    pub fn wait_usage(&self, user: &str, want: Usage, what: &str) {
        let start = Instant::now();
        loop {
            let got = self.usage(user);
            if got == want {
                return;
            }
            if start.elapsed() > WAIT {
                panic!(
                    "{what}: ramdir's counters for {user} are {got}, expected {want} \
                     (waited {WAIT:?})\nDovecot log trouble: {:#?}",
                    self.dovecot.trouble()
                );
            }
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    /// Wait (up to [`WAIT`]) until ramdir holds a storage counter for
    /// `user` (on Dovecot 2.4 quota_clone writes it after the first
    /// change), and return the counters.
    pub fn wait_usage_tracked(&self, user: &str) -> Usage {
        crate::wait_for(
            WAIT,
            &format!("a usage counter for {user} in ramdir"),
            || {
                let u = self.usage(user);
                u.storage.is_some().then_some(u)
            },
        )
    }

    /// Wait (up to [`WAIT`]) until ramdir's counters for `user` equal what
    /// the Maildir holds ([`maildir_usage`](Self::maildir_usage); Dovecot
    /// commits its quota updates asynchronously), then check that Dovecot
    /// reports the same (`doveadm quota get`: KiB rounded up, and the
    /// message count). Returns the counters; panics naming `what`.
    pub fn assert_quota_agrees(&self, user: &str, what: &str) -> Usage {
        let want = self.maildir_usage(user);
        self.wait_usage(user, want, what);
        let q = self.dovecot.quota_get(user);
        let bytes = want.storage.unwrap_or_default() as u64;
        assert_eq!(
            (q.storage_kib, q.messages),
            (
                bytes.div_ceil(1024),
                want.messages.unwrap_or_default() as u64
            ),
            "{what}: doveadm quota get -u {user} disagrees with ramdir's counters {want}"
        );
        want
    }

    /// What Dovecot's quota must count for `user`'s Maildir (template
    /// home): physical sizes on 2.3, virtual sizes on 2.4 (see
    /// [`MaildirUsage`]).
    pub fn maildir_usage(&self, user: &str) -> Usage {
        self.usage_of_maildir(&self.maildir(user))
    }

    /// [`maildir_usage`](Self::maildir_usage) of the Maildir `maildir`.
    pub fn usage_of_maildir(&self, maildir: &Path) -> Usage {
        let m = MaildirUsage::of(maildir);
        let bytes = if self.dovecot.flavor().dovecot_24() {
            m.vbytes
        } else {
            m.bytes
        };
        Usage {
            storage: Some(bytes),
            messages: Some(m.messages),
        }
    }

    /// The Maildir of `user` (`local@domain`) under the template home
    /// `<mail root>/<domain>/<local>/Maildir`.
    pub fn maildir(&self, user: &str) -> PathBuf {
        let (local, domain) = user.rsplit_once('@').unwrap_or((user, ""));
        self.dovecot
            .mail_root()
            .join(domain)
            .join(local)
            .join("Maildir")
    }

    /// Deliver `message` to `rcpt` over LMTP; the outcome.
    pub fn lmtp_deliver(&self, rcpt: &str, message: &str) -> LmtpOutcome {
        let mut l = self.dovecot.lmtp();
        let out = l
            .send("sender@outside.test", &[rcpt], message)
            .unwrap_or_else(|e| panic!("LMTP delivery to {rcpt}: {e}"));
        let _ = l.quit();
        out
    }

    /// Deliver over LMTP and panic unless it was accepted.
    pub fn lmtp_deliver_ok(&self, rcpt: &str, message: &str) {
        let out = self.lmtp_deliver(rcpt, message);
        assert!(
            out.delivered(),
            "LMTP delivery to {rcpt} ({} bytes) was not accepted: {out}\nDovecot log trouble: {:#?}",
            message.len(),
            self.dovecot.trouble()
        );
    }
}

/// Wait (up to [`WAIT`]) until the dict socket `path` answers a quota lookup
/// (a socket file left by a killed process does not count).
fn wait_dict(path: &Path) {
    let start = Instant::now();
    loop {
        let answer = DictClient::connect(path, "quota")
            .and_then(|mut d| d.lookup("priv/quota/storage", "ramdir-probe@example.invalid"));
        match answer {
            Ok(r) if r.starts_with(['O', 'N']) => return,
            Ok(r) => panic!(
                "ramdir's dict {} answered a probe lookup with {r:?}",
                path.display()
            ),
            Err(e) if start.elapsed() > WAIT => {
                panic!(
                    "ramdir's dict {} did not answer within {WAIT:?}: {e}",
                    path.display()
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doveadm_quota_output_is_parsed() {
        let t = "Quota name\tType\tValue\tLimit\t%\n\
                 User quota\tSTORAGE\t2\t100\t2\n\
                 User quota\tMESSAGE\t1\t-\t0\n";
        assert_eq!(
            DovecotQuota::parse(t),
            Some(DovecotQuota {
                storage_kib: 2,
                storage_limit_kib: Some(100),
                messages: 1
            })
        );
        assert_eq!(
            DovecotQuota::parse("Quota name\tType\tValue\tLimit\t%\n"),
            None
        );
    }

    #[test]
    fn imap_literals_are_inlined() {
        let mut r = io::Cursor::new(&b"* 1 FETCH (BODY[] {5}\r\nab\r\nc)\r\na1 OK done\r\n"[..]);
        assert_eq!(
            read_imap_line(&mut r).unwrap(),
            "* 1 FETCH (BODY[] {5}ab\r\nc)"
        );
        assert_eq!(read_imap_line(&mut r).unwrap(), "a1 OK done");
    }

    #[test]
    fn code_blocks_are_found_past_labelled_ones() {
        let md = "x\n```sh\nrun driver = lua\n```\ntext\n```\na = 1\n```\n```\ndriver = lua\n```\n";
        assert_eq!(
            code_block(md, "driver = lua").as_deref(),
            Some("driver = lua\n")
        );
        assert_eq!(code_block(md, "a = 1").as_deref(), Some("a = 1\n"));
        assert_eq!(code_block(md, "run"), None);
    }

    #[test]
    fn dict_escaping() {
        assert_eq!(escape("a\tb\nc\x01"), "a\x01tb\x01nc\x011");
    }

    #[test]
    fn messages_have_the_asked_size() {
        let m = message("tok", 5000);
        assert!(m.len() <= 5000 && m.len() > 5000 - 80, "{}", m.len());
        assert!(m.contains("Subject: test tok\r\n"));
    }
}
