//! A real `redis-server` (Debian's redis 7.0) for the shared-usage tests:
//! on a free loopback port, its files in the test's directory, no
//! persistence (so a restart or `FLUSHALL` loses everything, as a failover
//! to an empty replica would). Dropping it kills the server.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::WAIT;

/// The server binary (package `redis-server`).
pub const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// Panic, saying what to install, unless redis-server is there.
pub fn require_redis() {
    if !Path::new(REDIS_SERVER).is_file() {
        panic!("{REDIS_SERVER} missing: run scripts/install-test-deps.sh (package redis-server)");
    }
}

/// A running redis-server (see the module docs).
#[derive(Debug)]
pub struct Redis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    /// Start on a free port of 127.0.0.1, files under `dir`; waits until it
    /// answers PING.
    pub fn start(dir: &Path) -> Redis {
        require_redis();
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let port = {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
            l.local_addr().expect("local_addr").port()
        };
        let mut r = Redis {
            child: None,
            port,
            dir: dir.to_path_buf(),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.log"))
            .expect("redis log");
        let child = Command::new(REDIS_SERVER)
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--protected-mode", "yes"])
            .env(crate::leftovers::STACK_ENV, &self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {REDIS_SERVER}: {e}"));
        self.child = Some(child);
        let start = Instant::now();
        while self.command(&["PING"]).as_deref() != Some("+PONG") {
            if start.elapsed() > WAIT {
                panic!("redis-server did not answer PING within {WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// The URL ramdir's `[quota] shared` takes.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `kill -9` the server (its data is gone: no persistence).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freeze the server (SIGSTOP): connections stay open and every
    /// command sent meanwhile waits unanswered, as with a server stuck
    /// mid-call. [`resume`](Self::resume) lets it go on; dropping it kills
    /// it either way.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Let a [`pause`](Self::pause)d server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = self.pid().expect("redis-server is not running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
            .unwrap_or_else(|e| panic!("kill -{sig} {pid}: {e}"));
    }

    /// Start again on the same port (empty).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Send one command (RESP array of bulk strings); the first reply line
    /// (`+OK`, `:3`, `$5` …), or `None` when it cannot connect.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        Some(line.trim_end().to_string())
    }

    /// `HGETALL key` as field/value pairs (empty when missing).
    pub fn hgetall(&self, key: &str) -> Vec<(String, String)> {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).expect("connect redis");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let req = format!("*2\r\n$7\r\nHGETALL\r\n${}\r\n{key}\r\n", key.len());
        s.write_all(req.as_bytes()).expect("write redis");
        let mut r = BufReader::new(s);
        let mut line = String::new();
        let mut read = |r: &mut BufReader<TcpStream>| {
            line.clear();
            r.read_line(&mut line).expect("read redis");
            line.trim_end().to_string()
        };
        let head = read(&mut r);
        let n: usize = head
            .strip_prefix('*')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("HGETALL {key}: {head:?}"));
        let mut items = Vec::new();
        for _ in 0..n {
            let _len = read(&mut r);
            items.push(read(&mut r));
        }
        items
            .chunks_exact(2)
            .map(|kv| (kv[0].clone(), kv[1].clone()))
            .collect()
    }

    /// The number in an integer reply (`XLEN`, `DBSIZE` …).
    pub fn integer(&self, args: &[&str]) -> i64 {
        let r = self
            .command(args)
            .unwrap_or_else(|| panic!("redis {args:?}: no answer"));
        r.strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("redis {args:?}: {r:?}"))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
