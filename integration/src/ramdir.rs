//! The ramdir process under test: its binary, config, data files, and
//! signals.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::socketmap::SocketmapClient;
use crate::{WAIT, shell_quote, write_atomic};

/// The path of the ramdir binary: `$RAMDIR_BIN` when set, otherwise
/// `target/<profile>/ramdir` next to the running test
/// (`target/<profile>/deps/<test>`). Panics, saying how to build it, when it
/// is missing.
pub fn ramdir_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RAMDIR_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            panic!("RAMDIR_BIN={} does not exist", p.display());
        }
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join("ramdir");
    if !p.is_file() {
        panic!(
            "ramdir binary not found at {}: run `cargo build -p ramdir` first \
             (same profile as the tests), or set RAMDIR_BIN",
            p.display()
        );
    }
    p
}

/// The text of the directory files a test wants ramdir to serve.
#[derive(Debug, Clone, Default)]
pub struct DirectoryContent {
    /// Dovecot passwd-file lines (`user@dom:{PLAIN}pw:5000:5000::/home::`).
    pub users: String,
    /// Postfix map source for aliases (`address target, target`,
    /// `@domain target` for a catch-all).
    pub aliases: String,
    /// Postfix map source for domains (`domain [anything]`).
    pub domains: String,
    /// Postfix map source for sender logins (`address login, login`).
    pub senders: String,
}

/// Where the directory files are on disk.
#[derive(Debug, Clone)]
pub struct DirectoryFiles {
    /// passwd-file.
    pub users: PathBuf,
    /// Alias map source.
    pub aliases: PathBuf,
    /// Domain map source.
    pub domains: PathBuf,
    /// Sender-login map source.
    pub senders: PathBuf,
}

impl DirectoryFiles {
    /// Create `dir` and write the four files into it.
    pub fn write(dir: &Path, content: &DirectoryContent) -> DirectoryFiles {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let files = DirectoryFiles {
            users: dir.join("users.passwd"),
            aliases: dir.join("aliases"),
            domains: dir.join("domains"),
            senders: dir.join("senders"),
        };
        write_atomic(&files.users, &content.users);
        write_atomic(&files.aliases, &content.aliases);
        write_atomic(&files.domains, &content.domains);
        write_atomic(&files.senders, &content.senders);
        files
    }
}

/// Write a ramdir config serving `files` on the socketmap socket `socket`
/// (mode 0666, so Postfix's daemons, user `postfix`, can connect), with
/// `directory_extra` added to the `[directory]` section. Returns `path`.
pub fn write_config(
    path: &Path,
    files: &DirectoryFiles,
    socket: &Path,
    directory_extra: &str,
) -> PathBuf {
    let q = |p: &Path| toml_string(&p.display().to_string());
    let text = format!(
        "[directory]\n\
         passwd_files = [{}]\n\
         alias_files = [{}]\n\
         domain_files = [{}]\n\
         sender_login_files = [{}]\n\
         recipient_delimiter = \"+\"\n\
         {}\n\
         \n\
         [socketmap]\n\
         listen = {}\n\
         mode = \"0666\"\n",
        q(&files.users),
        q(&files.aliases),
        q(&files.domains),
        q(&files.senders),
        directory_extra.trim_end(),
        toml_string(&format!("unix:{}", socket.display())),
    );
    write_atomic(path, &text);
    path.to_path_buf()
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A running `ramdir serve --config FILE`, its stderr captured to a file.
///
/// Dropping it stops the process (SIGTERM, then SIGKILL after [`WAIT`]).
#[derive(Debug)]
pub struct Ramdir {
    child: Option<Child>,
    config: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    /// `RLIMIT_NOFILE` to run it with (through `prlimit`), for the
    /// fd-exhaustion test; `None`: inherited.
    open_files: Option<u64>,
}

impl Ramdir {
    /// Start ramdir and wait (up to [`WAIT`]) until its socket exists and
    /// answers a query. Panics with its log if it exits or never answers.
    pub fn start(config: &Path, socket: &Path, log: &Path) -> Ramdir {
        Ramdir::start_limited(config, socket, log, None)
    }

    /// [`start`](Self::start) with a limit on open files (`RLIMIT_NOFILE`,
    /// soft and hard), set by util-linux's `prlimit`, which then execs
    /// ramdir (so the process id is ramdir's).
    pub fn start_limited(
        config: &Path,
        socket: &Path,
        log: &Path,
        open_files: Option<u64>,
    ) -> Ramdir {
        let mut r = Ramdir {
            child: None,
            config: config.to_path_buf(),
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
            open_files,
        };
        r.restart();
        r
    }

    /// Start the process again after [`stop`](Self::stop) or
    /// [`kill`](Self::kill), with the same config, and wait until it
    /// answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "ramdir is already running");
        let bin = crate::ramdir::ramdir_bin();
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log.display()));
        // The suite runs as root (Postfix and Dovecot need it); ramdir
        // refuses root unless told (tests/security.rs covers the refusal
        // and the switch to `[server] user`).
        let mut command = match self.open_files {
            None => Command::new(&bin),
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(&bin);
                c
            }
        };
        let child = command
            .arg("serve")
            .arg("--allow-root")
            .arg("--config")
            .arg(&self.config)
            .env(
                crate::leftovers::STACK_ENV,
                self.config.parent().unwrap_or(&self.config),
            )
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().expect("dup log fd"))
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        // For the sweep of stacks left by a killed test run (see
        // `sweep_stale_stacks`).
        let _ = std::fs::write(self.pid_file(), format!("{}\n", child.id()));
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "ramdir serve exited with {status} before answering on {}; its log:\n{}",
                    self.socket.display(),
                    self.log_text()
                );
            }
            if self.socket.exists() && self.answers() {
                return;
            }
            if start.elapsed() > WAIT {
                panic!(
                    "ramdir did not answer on {} within {WAIT:?}; its log:\n{}",
                    self.socket.display(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid_file(&self) -> PathBuf {
        self.log.with_extension("pid")
    }

    /// Does the socket answer a query with any well-formed reply?
    fn answers(&self) -> bool {
        SocketmapClient::connect(&self.socket)
            .and_then(|mut c| c.query("domains", "ramdir-probe.invalid"))
            .is_ok()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Is the process running?
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn signal(&self, sig: Signal) {
        let pid = self.pid().expect("ramdir is not running");
        kill(Pid::from_raw(pid), sig).unwrap_or_else(|e| panic!("kill -{sig} {pid}: {e}"));
    }

    /// Send SIGHUP (reload the directory files).
    pub fn reload(&self) {
        self.signal(Signal::SIGHUP);
    }

    /// SIGTERM and wait (up to [`WAIT`]) for the exit; returns its status.
    /// Panics if it does not exit in time (after killing it).
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        let status = self.wait_exit(WAIT);
        match status {
            Some(s) => s,
            None => {
                self.kill();
                panic!(
                    "ramdir did not exit within {WAIT:?} of SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(s)) = c.try_wait() {
                self.child = None;
                return Some(s);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The socketmap socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The config file.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// Everything ramdir has written to stdout/stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A fresh socketmap connection to this ramdir.
    pub fn client(&self) -> SocketmapClient {
        SocketmapClient::connect(&self.socket)
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.socket.display()))
    }

    /// One socketmap query on a fresh connection; the raw reply
    /// (`OK …`, `NOTFOUND `, `TEMP …`).
    pub fn query(&self, table: &str, key: &str) -> String {
        self.client()
            .query(table, key)
            .unwrap_or_else(|e| panic!("socketmap query {table} {key:?}: {e}"))
    }

    /// Run `ramdir query --config FILE TABLE KEY`; returns (exit code,
    /// stdout). Panics if it takes more than [`WAIT`].
    pub fn query_cli(&self, table: &str, key: &str) -> (i32, String) {
        let bin = ramdir_bin();
        let mut child = Command::new(&bin)
            .arg("query")
            .arg("--config")
            .arg(&self.config)
            .arg(table)
            .arg(key)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("run {} query: {e}", shell_quote(&bin.display().to_string()))
            });
        // The reply is one short line: it fits in the pipe, so waiting
        // before reading cannot deadlock.
        let start = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait for ramdir query") {
                break st;
            }
            if start.elapsed() > WAIT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ramdir query {table} {key:?} did not finish within {WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        if let Some(mut o) = child.stdout.take() {
            use std::io::Read;
            let _ = o.read_to_string(&mut out);
        }
        (status.code().unwrap_or(-1), out)
    }
}

impl Drop for Ramdir {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.pid().map(|p| kill(Pid::from_raw(p), Signal::SIGTERM));
            if self.wait_exit(WAIT).is_none() {
                self.kill();
            }
        }
    }
}

/// The configuration of a ramdir on its own in `dir` (no Postfix or
/// Dovecot in front), as the fault and security tests run it: `head`
/// first (e.g. a `[server]` section), then `[directory]` with `directory`
/// lines and `watch_files = false` (the tests reload by signal), then
/// each of `listeners` (`socketmap`, `dict`, `policy`) on the Unix socket
/// `<dir>/<name>`, then `[quota]` with its store at `store`.
pub fn standalone_config(
    dir: &Path,
    head: &str,
    directory: &str,
    listeners: &[&str],
    store: &Path,
) -> String {
    let mut text = format!("{head}\n[directory]\n{directory}watch_files = false\n");
    for l in listeners {
        text.push_str(&format!(
            "[{l}]\nlisten = \"unix:{}\"\n",
            dir.join(l).display()
        ));
    }
    text.push_str(&format!("[quota]\nstore = \"{}\"\n", store.display()));
    text
}

/// Start a ramdir configured by [`standalone_config`] (its log at
/// `<dir>/ramdir.log`) and wait (up to [`WAIT`] each) until every one of
/// `listeners` accepts connections: [`Ramdir::start`] waits for the
/// socketmap, the others are bound a moment later.
pub fn start_standalone(dir: &Path, config: &Path, listeners: &[&str]) -> Ramdir {
    let ramdir = Ramdir::start(config, &dir.join("socketmap"), &dir.join("ramdir.log"));
    wait_listening(dir, listeners);
    ramdir
}

/// Wait (up to [`WAIT`] each) until the sockets `<dir>/<name>` accept
/// connections.
pub fn wait_listening(dir: &Path, listeners: &[&str]) {
    for l in listeners {
        let path = dir.join(l);
        let start = Instant::now();
        while crate::connect_unix(&path).is_err() {
            assert!(
                start.elapsed() < WAIT,
                "{} does not accept connections within {WAIT:?}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Run `ramdir serve <args> --config <config>` where it must refuse to
/// start; returns its exit code and stderr. Panics (after killing it) if
/// it is still running after [`WAIT`].
pub fn serve_refused(args: &[&str], config: &Path) -> (i32, String) {
    use std::io::Read;
    let mut child = Command::new(ramdir_bin())
        .arg("serve")
        .args(args)
        .arg("--config")
        .arg(config)
        .env(
            crate::leftovers::STACK_ENV,
            config.parent().unwrap_or(config),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", ramdir_bin().display()));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for ramdir") {
            break s;
        }
        if start.elapsed() > WAIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ramdir serve {args:?} kept running on {} (it should have refused to start)",
                config.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status.code().unwrap_or(-1), err)
}
