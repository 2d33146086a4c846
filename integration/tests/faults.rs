//! Faults under the quota store and during reloads, against the real
//! `ramdir serve` (docs/reliability.md, "Faults"): a full disk, a damaged
//! or truncated store, `kill -9` during thousands of concurrent commits,
//! and SIGHUP storms under load. Each test states its outcome in its name
//! and checks it through ramdir's own sockets: the dict (as Dovecot's
//! quota dict speaks it, protocol 3), the policy service (as Postfix's
//! smtpd asks) and the socketmap.
//!
//! Needs root (the full-disk test mounts a small tmpfs; ramdir runs with
//! `--allow-root`, as everywhere in the suite) and the binary
//! (`cargo build -p ramdir`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ramdir_integration::ramdir::{serve_refused, standalone_config, start_standalone};
use ramdir_integration::{Ramdir, StackDir, WAIT, write_atomic};

/// Users of the directory: the policy test's recipient has a limit.
const USERS: &str = "\
alice@example.org:{PLAIN}faults-alice-secret:5000:5000::::userdb_quota_rule=*:storage=10M
bob@example.org:{PLAIN}faults-bob-secret:5000:5000::::
";

/// A ramdir with socketmap, dict (quota and auth) and policy listeners,
/// its quota store at `store`.
struct Daemon {
    ramdir: Ramdir,
    dict: PathBuf,
    policy: PathBuf,
}

/// The listeners every test here runs.
const LISTENERS: [&str; 3] = ["socketmap", "dict", "policy"];

fn write_files(dir: &Path, store: &Path) -> PathBuf {
    write_atomic(&dir.join("users"), USERS);
    write_atomic(&dir.join("aliases"), "info@example.org alice@example.org\n");
    let config = dir.join("ramdir.toml");
    let directory = format!(
        "passwd_files = [\"{}\"]\nalias_files = [\"{}\"]\n",
        dir.join("users").display(),
        dir.join("aliases").display()
    );
    write_atomic(
        &config,
        &standalone_config(dir, "", &directory, &LISTENERS, store),
    );
    config
}

fn start(dir: &StackDir, store: &Path) -> Daemon {
    let config = write_files(dir.path(), store);
    Daemon {
        ramdir: start_standalone(dir.path(), &config, &LISTENERS),
        dict: dir.join("dict"),
        policy: dir.join("policy"),
    }
}

/// ramdir's own start waits for the socketmap only.
fn wait_listening(dir: &Path) {
    ramdir_integration::ramdir::wait_listening(dir, &LISTENERS);
}

/// A dict connection on the quota dict, protocol 3 (Dovecot 2.3's
/// `proxy:` client: hello, then `B`/`S`/`A`/`C` per transaction, one reply
/// line per commit and per lookup, in command order).
struct Dict {
    r: BufReader<UnixStream>,
    w: UnixStream,
    next: u64,
}

impl Dict {
    fn connect(path: &Path) -> std::io::Result<Dict> {
        let w = UnixStream::connect(path)?;
        w.set_read_timeout(Some(WAIT))?;
        let mut d = Dict {
            r: BufReader::new(w.try_clone()?),
            w,
            next: 1,
        };
        d.w.write_all(b"H3\t2\t0\t\tquota\n")?;
        Ok(d)
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut l = String::new();
        if self.r.read_line(&mut l)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(l.trim_end_matches('\n').to_string())
    }

    /// Set the user's storage and message counters in one transaction;
    /// the commit's reply (`O<id>`, `F<id>\t…`).
    fn set(&mut self, user: &str, storage: i64, messages: i64) -> std::io::Result<String> {
        let id = self.next;
        self.next += 1;
        self.w.write_all(
            format!(
                "B{id}\t{user}\nS{id}\tpriv/quota/storage\t{storage}\n\
                 S{id}\tpriv/quota/messages\t{messages}\nC{id}\n"
            )
            .as_bytes(),
        )?;
        self.line()
    }

    /// `Lpriv/quota/<key>`: `O<value>`, `N` or `F…`.
    fn lookup(&mut self, user: &str, key: &str) -> std::io::Result<String> {
        self.w
            .write_all(format!("Lpriv/quota/{key}\t{user}\n").as_bytes())?;
        self.line()
    }
}

fn is_ok_commit(reply: &str, id_hint: &str) -> bool {
    reply == format!("O{id_hint}")
}

/// One policy delegation request as smtpd sends it at RCPT; the action.
fn policy(path: &Path, recipient: &str, size: u64) -> String {
    let mut s =
        UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n\
         instance=faults.{recipient}\nsender=s@example.net\nrecipient={recipient}\n\
         size={size}\n\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut action = String::new();
    r.read_line(&mut action).unwrap();
    action.trim_end().to_string()
}

/// A small tmpfs, unmounted on drop (also while a failed test unwinds;
/// lazily if something still holds it).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        use nix::mount::{MsFlags, mount};
        std::fs::create_dir_all(at).unwrap();
        mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("size={size},mode=0755").as_str()),
        )
        .unwrap_or_else(|e| panic!("mount tmpfs on {} (needs root): {e}", at.display()));
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        use nix::mount::{MntFlags, umount2};
        if umount2(&self.0, MntFlags::empty()).is_err() {
            let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        }
    }
}

/// Fill the file system holding `path` with one file until a write fails
/// with ENOSPC.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0x55u8; 4096];
    loop {
        match f.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let _ = f.sync_all();
}

/// Poll `f` until it returns `Some`, for at most [`WAIT`].
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < WAIT, "{what}: not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every acknowledged commit must read back exactly, through the dict.
fn assert_all_there(dict: &Path, acked: &HashMap<String, (i64, i64)>, when: &str) {
    let mut d = Dict::connect(dict).unwrap();
    for (user, (storage, messages)) in acked {
        assert_eq!(
            d.lookup(user, "storage").unwrap(),
            format!("O{storage}"),
            "{when}: storage of {user}"
        );
        assert_eq!(
            d.lookup(user, "messages").unwrap(),
            format!("O{messages}"),
            "{when}: messages of {user}"
        );
    }
}

/// The quota store's file system fills up: commits fail with `F` (Dovecot
/// logs the error and recalculates later), the SMTP-time check answers
/// `DEFER_IF_PERMIT` (usage is unknown while writes fail), and nothing
/// that was acknowledged is lost; when space returns, commits succeed
/// again without a restart, and after a restart everything is there.
#[test]
fn disk_full_under_the_quota_store_fails_commits_defers_and_loses_nothing() {
    let dir = StackDir::new();
    let mnt = dir.join("quota");
    let tmpfs = Tmpfs::mount(&mnt, "4m");
    let store = mnt.join("usage.redb");
    let mut daemon = start(&dir, &store);
    let mut acked: HashMap<String, (i64, i64)> = HashMap::new();
    let mut d = Dict::connect(&daemon.dict).unwrap();
    assert_eq!(d.set("alice@example.org", 1000, 1).unwrap(), "O1");
    acked.insert("alice@example.org".into(), (1000, 1));
    assert_eq!(
        policy(&daemon.policy, "alice@example.org", 100),
        "action=DUNNO"
    );
    for i in 0..200 {
        let user = format!("before-{i:05}@example.org");
        let r = d.set(&user, i, i % 7).unwrap();
        assert!(r.starts_with('O'), "{user}: {r}");
        acked.insert(user, (i, i % 7));
    }

    fill(&mnt.join("filler"));
    // New users grow the store's tree until a page cannot be written.
    let mut failed = None;
    for i in 0..200_000 {
        let user = format!("{}-{i:06}@example.org", "x".repeat(120));
        let r = d.set(&user, i, 1).unwrap();
        if r.starts_with('O') {
            acked.insert(user, (i, 1));
        } else {
            assert!(r.starts_with('F'), "{user}: unexpected commit reply {r:?}");
            failed = Some(r);
            break;
        }
    }
    let failed = failed.expect("no commit failed on a full file system");
    eprintln!(
        "first failed commit after {} acknowledged: {failed}",
        acked.len()
    );
    // While writes fail, usage is unknown: temporary answers only.
    let action = policy(&daemon.policy, "alice@example.org", 100);
    assert!(
        action.starts_with("action=DEFER_IF_PERMIT "),
        "policy while the store cannot write: {action}"
    );
    let r = d.lookup("alice@example.org", "storage").unwrap();
    assert!(r.starts_with('F'), "dict lookup while failing: {r}");
    // More commits while the disk is full: each is `O` (it fitted in pages
    // redb freed, and is durable) or `F`, never anything else.
    let mut more_failed = 0;
    for i in 0..100 {
        let user = format!("{}-more-{i:03}@example.org", "y".repeat(120));
        let r = d.set(&user, i, 2).unwrap();
        if r.starts_with('O') {
            acked.insert(user, (i, 2));
        } else {
            assert!(r.starts_with('F'), "{user}: {r}");
            more_failed += 1;
        }
    }
    eprintln!("while full: {more_failed} of 100 more commits failed");
    assert!(
        more_failed > 0,
        "the disk was full, yet every commit fitted"
    );
    assert!(daemon.ramdir.is_running(), "ramdir died on a full disk");

    // Space returns: the store recovers by itself.
    std::fs::remove_file(mnt.join("filler")).unwrap();
    // The store probes by itself: no commit is needed for the checks to
    // answer again.
    wait_for("the policy check answering after space returned", || {
        (policy(&daemon.policy, "alice@example.org", 100) == "action=DUNNO").then_some(())
    });
    for i in 0..300 {
        let user = format!("{}-after-{i:03}@example.org", "z".repeat(120));
        let r = d.set(&user, i, 3).unwrap();
        assert!(r.starts_with('O'), "{user} after space returned: {r}");
        acked.insert(user, (i, 3));
    }
    assert_all_there(&daemon.dict, &acked, "after space returned");

    daemon.ramdir.stop();
    daemon.ramdir.restart();
    wait_listening(dir.path());
    assert_all_there(&daemon.dict, &acked, "after a restart");
    let log = daemon.ramdir.log_text();
    assert!(log.contains("quota usage commit failed"), "{log}");
    drop(daemon);
    drop(tmpfs);
}

/// The same full disk under a host that shares usage through Redis
/// (`[quota] shared`): its policy service reads the mirror, which holds
/// this host's own users' last published values. While the local store
/// fails those may lag behind what Dovecot counted, so the check for a
/// user this host owns answers `DEFER_IF_PERMIT`, as on a single host,
/// until the store can write again.
#[test]
fn disk_full_under_a_shared_usage_owner_defers_its_own_users() {
    let dir = StackDir::new();
    let redis = ramdir_integration::redis::Redis::start(&dir.join("redis"));
    let mnt = dir.join("quota");
    let tmpfs = Tmpfs::mount(&mnt, "4m");
    let store = mnt.join("usage.redb");
    let config = write_files(dir.path(), &store);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "shared = {:?}\nhost_id = \"store\"\n",
        redis.url()
    ));
    write_atomic(&config, &text);
    let ramdir = Ramdir::start(&config, &dir.join("socketmap"), &dir.join("ramdir.log"));
    wait_listening(dir.path());
    let (dict, policy_sock) = (dir.join("dict"), dir.join("policy"));
    let mut d = Dict::connect(&dict).unwrap();
    assert_eq!(d.set("alice@example.org", 1000, 1).unwrap(), "O1");
    assert_eq!(
        policy(&policy_sock, "alice@example.org", 100),
        "action=DUNNO"
    );

    fill(&mnt.join("filler"));
    let mut failed = false;
    for i in 0..200_000 {
        let user = format!("{}-{i:06}@example.org", "x".repeat(120));
        let r = d.set(&user, i, 1).unwrap();
        if !r.starts_with('O') {
            assert!(r.starts_with('F'), "{user}: unexpected commit reply {r:?}");
            failed = true;
            break;
        }
    }
    assert!(failed, "no commit failed on a full file system");
    // alice is owned here: her mirrored value is not trusted now.
    let action = policy(&policy_sock, "alice@example.org", 100);
    assert!(
        action.starts_with("action=DEFER_IF_PERMIT "),
        "policy for an owned user while the store cannot write: {action}"
    );
    // A user nobody has published yet (its first commit may be what
    // failed) is not known to fit either.
    let action = policy(&policy_sock, "bob@example.org", 100);
    assert!(
        action.starts_with("action=DEFER_IF_PERMIT "),
        "policy for an unknown user while the store cannot write: {action}"
    );

    std::fs::remove_file(mnt.join("filler")).unwrap();
    wait_for("the policy check answering after space returned", || {
        (policy(&policy_sock, "alice@example.org", 100) == "action=DUNNO").then_some(())
    });
    drop(ramdir);
    drop(tmpfs);
}

/// Run `ramdir serve` on `config` and expect it to exit (not serve);
/// returns (exit code, stderr).
fn start_fails(config: &Path) -> (i32, String) {
    serve_refused(&["--allow-root"], config)
}

/// A damaged, truncated or emptied quota store stops the start with an
/// error naming the file; ramdir never starts from empty usage (which
/// would let every mailbox overfill until Dovecot recalculates). The
/// intact file still serves every value.
#[test]
fn a_damaged_or_truncated_quota_store_stops_the_start_naming_the_file() {
    let dir = StackDir::new();
    let store = dir.join("usage.redb");
    let mut daemon = start(&dir, &store);
    let mut acked = HashMap::new();
    let mut d = Dict::connect(&daemon.dict).unwrap();
    for i in 0..300 {
        let user = format!("u{i:04}@example.org");
        assert!(d.set(&user, 10 * i, i).unwrap().starts_with('O'));
        acked.insert(user, (10 * i, i));
    }
    drop(d);
    daemon.ramdir.stop();
    let good = std::fs::read(&store).unwrap();
    let config = dir.join("ramdir.toml");
    let cases: [(&str, Vec<u8>); 3] = [
        ("truncated to half", good[..good.len() / 2].to_vec()),
        ("emptied", Vec::new()),
        ("overwritten", b"# not a quota store\n".repeat(500)),
    ];
    for (what, bytes) in cases {
        std::fs::write(&store, &bytes).unwrap();
        let (code, err) = start_fails(&config);
        assert_eq!(code, 2, "{what}: exit code; stderr:\n{err}");
        assert!(
            err.contains(&store.display().to_string()) && err.contains("damaged"),
            "{what}: the error must name the file and say what is wrong:\n{err}"
        );
        assert!(
            !dir.join("socketmap").exists(),
            "{what}: a socket was left behind"
        );
        // The file is left as it was, for the operator to look at.
        assert_eq!(
            std::fs::read(&store).unwrap(),
            bytes,
            "{what}: file changed"
        );
    }
    std::fs::write(&store, &good).unwrap();
    daemon.ramdir.restart();
    wait_listening(dir.path());
    assert_all_there(&daemon.dict, &acked, "the intact file");
}

/// `kill -9` while 100 connections commit 10,000 transactions (100 each,
/// one user per transaction): after the restart every transaction that was
/// answered `O` is there with its values.
#[test]
fn kill_9_during_10000_concurrent_commits_loses_no_acknowledged_commit() {
    const CONNECTIONS: usize = 100;
    const PER_CONNECTION: usize = 100;
    let dir = StackDir::new();
    let store = dir.join("usage.redb");
    let mut daemon = start(&dir, &store);
    let acked: Arc<Mutex<HashMap<String, (i64, i64)>>> = Arc::default();
    let sent = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let (acked, sent, answered) = (acked.clone(), sent.clone(), answered.clone());
            let path = daemon.dict.clone();
            std::thread::spawn(move || {
                let mut d = Dict::connect(&path).unwrap();
                for n in 0..PER_CONNECTION {
                    let user = format!("c{c:03}-n{n:03}@example.org");
                    let (storage, messages) = ((c * 1000 + n) as i64 * 17, n as i64 + 1);
                    sent.fetch_add(1, Ordering::Relaxed);
                    let id = (n + 1).to_string();
                    match d.set(&user, storage, messages) {
                        Ok(r) if is_ok_commit(&r, &id) => {
                            acked.lock().unwrap().insert(user, (storage, messages));
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => panic!("{user}: commit reply {r:?}"),
                        // The daemon was killed: whatever was not answered
                        // may or may not be there.
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    // Kill when about half of the commits have been answered: the others
    // are in flight, queued in the writer, or not sent yet.
    wait_for("half of the commits answered", || {
        (answered.load(Ordering::Relaxed) >= CONNECTIONS * PER_CONNECTION / 2).then_some(())
    });
    daemon.ramdir.kill();
    for t in threads {
        t.join().expect("client thread");
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    eprintln!(
        "killed after {} commits sent, {} answered O",
        sent.load(Ordering::Relaxed),
        acked.len()
    );
    assert!(acked.len() >= CONNECTIONS * PER_CONNECTION / 2);
    daemon.ramdir.restart();
    wait_listening(dir.path());
    assert_all_there(&daemon.dict, &acked, "after kill -9 and restart");
}

/// SIGHUP every few milliseconds while the files change and clients ask
/// without pause over the socketmap and the dict: no request fails, no
/// connection breaks, every answer is right for one of the two versions
/// of the files, and the last version is served at the end.
#[test]
fn sighup_storm_during_load_fails_no_request() {
    const HUPS: usize = 200;
    let dir = StackDir::new();
    let store = dir.join("usage.redb");
    let daemon = start(&dir, &store);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut d = Dict::connect(&daemon.dict).unwrap();
    assert_eq!(d.set("bob@example.org", 42, 1).unwrap(), "O1");
    drop(d);

    let mut workers = Vec::new();
    for w in 0..4 {
        let (stop, done) = (stop.clone(), done.clone());
        let socket = daemon.ramdir.socket().to_path_buf();
        workers.push(std::thread::spawn(move || {
            let mut c = ramdir_integration::SocketmapClient::connect(&socket).unwrap();
            while !stop.load(Ordering::Relaxed) {
                let r = c.query("mailboxes", "alice@example.org").unwrap();
                assert_eq!(r, "OK alice@example.org", "worker {w}");
                let r = c.query("aliases", "info@example.org").unwrap();
                assert!(
                    r == "OK alice@example.org" || r == "OK bob@example.org",
                    "worker {w}: aliases info@: {r}"
                );
                let r = c.query("mailboxes", "nobody@example.org").unwrap();
                assert_eq!(r, "NOTFOUND ", "worker {w}");
                done.fetch_add(3, Ordering::Relaxed);
            }
        }));
    }
    for w in 0..2 {
        let (stop, done) = (stop.clone(), done.clone());
        let path = daemon.dict.clone();
        workers.push(std::thread::spawn(move || {
            let mut d = Dict::connect(&path).unwrap();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let user = format!("hup{w}@example.org");
                let r = d.set(&user, n, n).unwrap();
                assert!(r.starts_with('O'), "dict worker {w}: {r}");
                assert_eq!(d.lookup(&user, "storage").unwrap(), format!("O{n}"));
                assert_eq!(d.lookup("bob@example.org", "storage").unwrap(), "O42");
                done.fetch_add(3, Ordering::Relaxed);
            }
        }));
    }
    let aliases = dir.join("aliases");
    for i in 0..HUPS {
        let target = if i % 2 == 0 { "bob" } else { "alice" };
        write_atomic(
            &aliases,
            &format!("info@example.org {target}@example.org\n"),
        );
        daemon.ramdir.reload();
        std::thread::sleep(Duration::from_millis(10));
    }
    // The last version (alice) is served once the storm is over.
    wait_for("the last aliases version", || {
        (daemon.ramdir.query("aliases", "info@example.org") == "OK alice@example.org").then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("a request failed during the SIGHUP storm");
    }
    let log = daemon.ramdir.log_text();
    let reloads = log.matches("reload done").count();
    eprintln!(
        "{HUPS} SIGHUPs, {reloads} reloads, {} requests, none failed",
        done.load(Ordering::Relaxed)
    );
    assert!(reloads >= 1, "no reload happened:\n{log}");
    assert!(!log.contains("reload failed"), "{log}");
}
