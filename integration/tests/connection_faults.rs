//! Connection faults against the real ramdir binary (issue 13, item 4):
//! what a misbehaving or overwhelming client can do to the connection
//! layer (`conn/`), and what it must not do to the other clients.
//!
//! - Slow clients (a byte per second), half-open connections (a partial
//!   request, then silence; or requests whose replies are never read) and a
//!   flood of connections beyond `max_connections`: a client connected
//!   before keeps getting every answer while they hold, ramdir's memory
//!   stays bounded, the connections that waited in the backlog are served
//!   once the flood lets go, and the slow clients are cut off when their
//!   request has taken `REQUEST_TIMEOUT` to arrive.
//! - File descriptor exhaustion (ramdir run with a low `RLIMIT_NOFILE`):
//!   accepting backs off instead of spinning (ramdir's CPU time stays low
//!   while clients keep knocking), no listener dies (the milter's included),
//!   and service resumes when descriptors are free again.
//!
//! No timed assertions: "keeps its latency" is checked as "answered,
//! correctly, every time, while the fault holds", and the latencies are
//! printed; the CPU bound is a fraction of the wall time a busy loop would
//! fill. Needs the binary: `cargo build -p ramdir` (or `RAMDIR_BIN`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ramdir_integration::{
    DirectoryContent, DirectoryFiles, Ramdir, SocketmapClient, StackDir, WAIT, wait_for,
    write_atomic,
};

const USERS: usize = 50;

fn content() -> DirectoryContent {
    let mut users = String::new();
    for i in 0..USERS {
        users.push_str(&format!(
            "user{i}@example.org:{{PLAIN}}pw:5000:5000::/home/u{i}::\n"
        ));
    }
    DirectoryContent {
        users,
        ..Default::default()
    }
}

/// A config with the socketmap (at most `max` connections), and the
/// quota store, policy and milter listeners.
fn setup(dir: &StackDir, max: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    let files = DirectoryFiles::write(&dir.join("data"), &content());
    let socket = dir.join("socketmap");
    let config = dir.join("ramdir.toml");
    write_atomic(
        &config,
        &format!(
            "[directory]\n\
             passwd_files = [\"{}\"]\n\
             watch_files = false\n\
             \n\
             [socketmap]\n\
             listen = \"unix:{}\"\n\
             max_connections = {max}\n\
             \n\
             [quota]\n\
             store = \"{}\"\n\
             \n\
             [policy]\n\
             listen = \"unix:{}\"\n\
             \n\
             [milter]\n\
             listen = \"unix:{}\"\n",
            files.users.display(),
            socket.display(),
            dir.join("quota.redb").display(),
            dir.join("policy").display(),
            dir.join("milter").display(),
        ),
    );
    (config, socket)
}

/// Resident memory of a process, in KiB (`VmRSS`).
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// User plus system CPU time of a process (clock ticks: 1/100 s).
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // proc(5): utime is field 14, stime 15 (here index field - 3).
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn ask(c: &mut SocketmapClient, i: usize) -> Duration {
    let t = Instant::now();
    let key = format!("user{}@example.org", i % USERS);
    let r = c.query("mailboxes", &key).expect("query");
    assert_eq!(r, format!("OK {key}"));
    t.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn slow_half_open_and_flooding_clients_do_not_starve_the_others() {
    const MAX: usize = 64;
    let dir = StackDir::new();
    let (config, socket) = setup(&dir, MAX);
    let ramdir = Ramdir::start(&config, &socket, &dir.join("ramdir.log"));
    let pid = ramdir.pid().unwrap();

    // The client that must keep being served, connected before the faults.
    let mut good = SocketmapClient::connect(&socket).unwrap();
    let before: Vec<Duration> = (0..200).map(|i| ask(&mut good, i)).collect();
    let rss_before = rss_kib(pid);

    // Slow clients: a request at one byte per second, for as long as the
    // test holds them.
    let stop = Arc::new(AtomicBool::new(false));
    let slow: Vec<_> = (0..4)
        .map(|i| {
            let (socket, stop) = (socket.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut c = UnixStream::connect(&socket).unwrap();
                let req = format!(
                    "{}:mailboxes user{i}@example.org,",
                    26 + i.to_string().len()
                );
                // Whether ramdir closed the connection (the write fails).
                for b in req.bytes().cycle() {
                    if stop.load(Ordering::Relaxed) {
                        return false;
                    }
                    if c.write_all(&[b]).is_err() {
                        return true;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
                unreachable!()
            })
        })
        .collect();
    // Half-open: a partial request, then nothing; and clients that send
    // requests and never read a reply (their socket buffers fill up).
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut c = UnixStream::connect(&socket).unwrap();
        c.write_all(b"30:mailboxes user1@ex").unwrap();
        held.push(c);
    }
    for _ in 0..4 {
        let c = UnixStream::connect(&socket).unwrap();
        c.set_nonblocking(true).unwrap();
        let mut c2 = c;
        let req = b"27:mailboxes user1@example.org,";
        // Until the kernel takes no more: ramdir's replies pile up unread.
        while c2.write(req).is_ok() {}
        held.push(c2);
    }
    // The flood: more connections than the limit, each sending a request.
    // Those beyond the limit wait in the listen backlog.
    let mut flood = Vec::new();
    for _ in 0..(MAX + 100) {
        let mut c = UnixStream::connect(&socket).unwrap();
        c.write_all(b"27:mailboxes user2@example.org,").unwrap();
        flood.push(c);
    }

    // While all of that holds, the good client gets every answer.
    let during: Vec<Duration> = (0..500).map(|i| ask(&mut good, i)).collect();
    let rss_during = rss_kib(pid);
    println!(
        "good client's median latency: {:?} before, {:?} during the faults; \
         ramdir VmRSS {rss_before} KiB before, {rss_during} KiB during",
        median(before),
        median(during)
    );
    // Memory: the connections' threads and buffers, not unbounded growth
    // (64 connections' stacks and buffers are a few MB).
    assert!(
        rss_during < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_during} KiB"
    );

    // The flood lets go: the connections in the backlog are served (the
    // last one flooded answers), and new clients are.
    let mut last = flood.pop().unwrap();
    drop(flood);
    drop(held);
    last.set_read_timeout(Some(WAIT)).unwrap();
    let mut reply = [0u8; 24];
    last.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"20:OK user2@example.org,");
    ask(&mut SocketmapClient::connect(&socket).unwrap(), 3);
    // The slow clients are cut off once their request has taken
    // REQUEST_TIMEOUT (10 s) to arrive, far sooner than their bytes would
    // ever complete it.
    wait_for(WAIT, "the slow clients to be cut off", || {
        slow.iter()
            .all(std::thread::JoinHandle::is_finished)
            .then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    for s in slow {
        assert!(s.join().unwrap(), "a slow client was not cut off");
    }
    ask(&mut good, 7);
}

#[test]
fn fd_exhaustion_backs_off_without_spinning_and_recovers() {
    // ramdir needs about 20 descriptors of its own (runtime, listeners,
    // store, log); the rest go to connections until accept fails.
    const NOFILE: u64 = 64;
    let dir = StackDir::new();
    let (config, socket) = setup(&dir, 4096);
    let log = dir.join("ramdir.log");
    let mut ramdir = Ramdir::start_limited(&config, &socket, &log, Some(NOFILE));
    let pid = ramdir.pid().unwrap();

    // More connections than ramdir has descriptors for, each with a
    // request.
    let mut conns = Vec::new();
    for _ in 0..NOFILE {
        let mut c = UnixStream::connect(&socket).unwrap();
        c.write_all(b"27:mailboxes user2@example.org,").unwrap();
        conns.push(c);
    }
    wait_for(WAIT, "ramdir to run out of descriptors", || {
        ramdir
            .log_text()
            .contains("Too many open files")
            .then_some(())
    });
    // Now one knocks at the milter, whose accept fails too (indymilter on
    // its own would stop the milter there, and with it ramdir).
    let milter = UnixStream::connect(dir.join("milter")).unwrap();
    wait_for(WAIT, "the milter's accept to fail", || {
        ramdir
            .log_text()
            .lines()
            .any(|l| l.contains("milter") && l.contains("Too many open files"))
            .then_some(())
    });

    // Exhausted, with clients waiting: ramdir retries at a slow pace.
    let (t0, c0) = (Instant::now(), cpu_ticks(pid));
    std::thread::sleep(Duration::from_secs(3));
    let (wall, cpu) = (t0.elapsed(), cpu_ticks(pid) - c0);
    let cpu = Duration::from_millis(cpu * 10);
    println!("ramdir used {cpu:?} of CPU in {wall:?} while out of descriptors");
    // A busy accept loop would take most of a CPU for the whole window.
    assert!(
        cpu * 10 < wall,
        "ramdir used {cpu:?} of CPU in {wall:?}: accept is spinning"
    );
    assert!(ramdir.is_running(), "ramdir died:\n{}", ramdir.log_text());

    // Descriptors come back: service resumes, the milter listener is alive.
    drop(conns);
    drop(milter);
    let mut c = wait_for(WAIT, "a connection after the exhaustion", || {
        SocketmapClient::connect(&socket).ok()
    });
    ask(&mut c, 5);
    let mut m = UnixStream::connect(dir.join("milter")).unwrap();
    // SMFIC_OPTNEG: the milter answers with its own negotiation.
    m.write_all(&[0, 0, 0, 13, b'O', 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0x1f, 0xff])
        .unwrap();
    m.set_read_timeout(Some(WAIT)).unwrap();
    let mut head = [0u8; 5];
    m.read_exact(&mut head).unwrap();
    assert_eq!(head[4], b'O', "milter did not negotiate");
    assert!(ramdir.is_running());
    let status = ramdir.stop();
    assert!(status.success(), "{status}");
}
