//! ramdir with a real OpenLDAP slapd (2.5, mdb + syncprov) as its source:
//! live RFC 4533 sync, outages, warm start, fallback lookups and the bind
//! password file check.
//!
//! Each test runs its own slapd ([`Slapd`], loaded with `slapadd -q` from
//! generated entries) and a `ramdir serve` whose config has `[ldap]`
//! (simple bind as `cn=mailsvc` over `ldap://127.0.0.1`), `[socketmap]`,
//! `[dict]` (auth only) and `[stats]`. Answers are read the way Postfix and
//! Dovecot read them: socketmap netstrings and dict-protocol lookups on
//! ramdir's sockets. Counters (`full_loads`, `changes_applied`,
//! `fallback_searches`, …) come from the stats socket, and slapd's own
//! `stats` log counts the searches it really received.
//!
//! Nothing is skipped: without slapd, ldap-utils or root the tests panic
//! with the fix. Needs the binary: `cargo build -p ramdir` (or
//! `RAMDIR_BIN=/path/to/ramdir`). Run with `--nocapture` to see the
//! measured change-propagation latencies.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ramdir_integration::dovecot::DictClient;
use ramdir_integration::slapd::{
    self, DOMAIN, RamdirStats, SVC_PW, Slapd, alias_mail, user_dn, user_ldif, user_mail,
    user_password, users_ldif, write_secret,
};
use ramdir_integration::{Ramdir, SocketmapClient, StackDir, set_mode, write_atomic};

/// Changes must be visible this fast.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(1);
/// How often a test looks for a change.
const POLL: Duration = Duration::from_millis(20);

/// slapd + ramdir. Fields drop in order: ramdir, slapd, then the directory.
struct LdapStack {
    ramdir: Ramdir,
    slapd: Slapd,
    config: PathBuf,
    dict_socket: PathBuf,
    stats_socket: PathBuf,
    state_dir: PathBuf,
    secret: PathBuf,
    dir: StackDir,
}

impl LdapStack {
    /// slapd with `users` generated entries, then ramdir with `ldap_extra`
    /// added to its `[ldap]` section and the bind password file at
    /// `secret_mode`. Does not wait for the load.
    fn start(users: usize, ldap_extra: &str, secret_mode: u32) -> LdapStack {
        let dir = StackDir::new();
        let slapd = Slapd::start(&dir, &users_ldif(users));
        let run = dir.join("run");
        std::fs::create_dir_all(&run).expect("mkdir run");
        set_mode(&run, 0o755);
        let secret = dir.join("ldap.secret");
        write_secret(&secret, SVC_PW, secret_mode);
        let state_dir = dir.join("state");
        let (socketmap, dict_socket, stats_socket) =
            (run.join("sm.sock"), run.join("dict.sock"), run.join("stats.sock"));
        let extra = format!("state_dir = \"{}\"\n{ldap_extra}", state_dir.display());
        let config = dir.join("ramdir.toml");
        let text = format!(
            "[socketmap]\nlisten = \"unix:{}\"\nmode = \"0666\"\n\n\
             [dict]\nlisten = \"unix:{}\"\nmode = \"0666\"\n\n\
             [stats]\nlisten = \"unix:{}\"\n\n{}",
            socketmap.display(),
            dict_socket.display(),
            stats_socket.display(),
            slapd.ramdir_section(&slapd.url(), &secret, &extra),
        );
        write_atomic(&config, &text);
        let ramdir = Ramdir::start(&config, &socketmap, &dir.join("ramdir.log"));
        LdapStack { ramdir, slapd, config, dict_socket, stats_socket, state_dir, secret, dir }
    }

    fn stats(&self) -> RamdirStats {
        RamdirStats::get(&self.stats_socket)
    }

    /// Wait (up to `timeout`) until the stats satisfy `ok`.
    fn wait_stats(&self, what: &str, timeout: Duration, ok: impl Fn(&RamdirStats) -> bool) -> RamdirStats {
        let start = Instant::now();
        loop {
            if let Ok(s) = RamdirStats::fetch(&self.stats_socket)
                && ok(&s)
            {
                return s;
            }
            if start.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; stats: {}\nramdir log:\n{}",
                    self.stats().raw,
                    tail(&self.ramdir.log_text(), 30)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Wait for the first full load to end and the sync to be live.
    fn wait_in_sync(&self, users: usize) -> RamdirStats {
        let s = self.wait_stats("the LDAP load and sync", Duration::from_secs(20), |s| {
            s.authoritative() && s.phase() == "in sync"
        });
        assert_eq!(s.num("entries"), users as u64, "mailboxes held: {}", s.raw);
        s
    }

    fn socketmap(&self) -> SocketmapClient {
        self.ramdir.client()
    }

    fn auth_dict(&self) -> DictClient {
        DictClient::connect(&self.dict_socket, "auth")
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.dict_socket.display()))
    }

    fn log(&self) -> String {
        self.ramdir.log_text()
    }

    /// Neither the bind password nor any password hash reached the log.
    fn assert_no_secrets_logged(&self) {
        let log = self.log();
        assert!(!log.contains(SVC_PW), "the bind password appears in ramdir's log");
        assert!(!log.contains("{SSHA}"), "a password hash appears in ramdir's log");
    }
}

/// One lookup on a persistent socketmap connection; the raw reply.
fn sm(c: &mut SocketmapClient, table: &str, key: &str) -> String {
    c.query(table, key).unwrap_or_else(|e| panic!("socketmap {table} {key}: {e}"))
}

/// `shared/{db}/{user}` on the auth dict; the raw reply (`O{json}`, `N`,
/// `F…`).
fn dict(d: &mut DictClient, db: &str, user: &str) -> String {
    d.lookup(&format!("shared/{db}/{user}"), user)
        .unwrap_or_else(|e| panic!("dict {db} {user}: {e}"))
}

fn ok(v: &str) -> String {
    format!("OK {v}")
}

const NOTFOUND: &str = "NOTFOUND ";

/// The connections the checks use (one of each, like a Postfix process
/// and a Dovecot auth worker).
struct Clients {
    sm: SocketmapClient,
    dict: DictClient,
}

impl Clients {
    fn new(s: &LdapStack) -> Clients {
        Clients { sm: s.socketmap(), dict: s.auth_dict() }
    }
    fn sm(&mut self, table: &str, key: &str) -> String {
        sm(&mut self.sm, table, key)
    }
    fn dict(&mut self, db: &str, user: &str) -> String {
        dict(&mut self.dict, db, user)
    }
}

/// One named check: `Ok` once the change is visible, else the answer seen.
type Check<'a> = (&'a str, Box<dyn Fn(&mut Clients) -> Result<(), String> + 'a>);

fn check<'a>(name: &'a str, f: impl Fn(&mut Clients) -> Result<(), String> + 'a) -> Check<'a> {
    (name, Box::new(f))
}

/// The measured latencies of one change: per check, from the moment the
/// LDAP tool returned (the change is committed in slapd) until ramdir's
/// answer showed it.
struct Propagation {
    what: String,
    latencies: Vec<(String, Duration)>,
}

impl Propagation {
    fn max(&self) -> Duration {
        self.latencies.iter().map(|(_, d)| *d).max().unwrap_or_default()
    }
}

/// Poll every 20 ms until every check holds (each is polled until it first
/// holds), for at most 5 s; record when each first held, measured from
/// `t0`. Panics with the last answers if one never holds.
fn propagation(what: &str, t0: Instant, c: &mut Clients, checks: Vec<Check<'_>>) -> Propagation {
    let mut done: Vec<Option<Duration>> = vec![None; checks.len()];
    let mut last: Vec<String> = vec![String::new(); checks.len()];
    loop {
        for (i, (_, f)) in checks.iter().enumerate() {
            if done[i].is_some() {
                continue;
            }
            match f(c) {
                Ok(()) => done[i] = Some(t0.elapsed()),
                Err(e) => last[i] = e,
            }
        }
        if done.iter().all(Option::is_some) {
            break;
        }
        if t0.elapsed() > Duration::from_secs(5) {
            let missing: Vec<String> = checks
                .iter()
                .zip(&done)
                .zip(&last)
                .filter(|((_, d), _)| d.is_none())
                .map(|(((name, _), _), l)| format!("{name}: last answer {l}"))
                .collect();
            panic!("{what}: not visible after 5 s: {missing:#?}");
        }
        std::thread::sleep(POLL);
    }
    let p = Propagation {
        what: what.into(),
        latencies: checks.iter().zip(done).map(|((n, _), d)| (n.to_string(), d.unwrap_or_default())).collect(),
    };
    for (n, d) in &p.latencies {
        println!("latency  {:<28} {:<36} {:>4} ms", p.what, n, d.as_millis());
    }
    p
}

/// `Ok` when the answer `got` equals `want`.
fn expect(got: String, want: &str) -> Result<(), String> {
    if got == want { Ok(()) } else { Err(format!("{got:?} (want {want:?})")) }
}

/// `Ok` when the answer `got` contains `needle`.
fn expect_contains(got: String, needle: &str) -> Result<(), String> {
    if got.contains(needle) { Ok(()) } else { Err(format!("{got:?} (want it to contain {needle:?})")) }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

