//! Benchmark of shared quota usage (`[quota] shared`, docs/benchmarks.md
//! "Shared usage on Redis"): a real redis-server on 127.0.0.1 and three
//! ramdirs from `target/<profile>/ramdir` (or `$RAMDIR_BIN`):
//!
//! - "store": `[dict]` + `[quota]` with `shared` on (host `store`);
//! - "plain": the same without `shared` (the baseline for throughput);
//! - "mx": `[policy]` + `[quota]` with `shared` on (host `mx`).
//!
//! 1. **Propagation**: a quota dict commit on the store (`S` storage over
//!    the limit, or back to 0) is answered `O` at t0; the MX's policy
//!    service is asked about that recipient in a loop until its answer
//!    changes, at t1. Reports p50/p99/max of t1 − t0 over `--samples`.
//! 2. **Dict throughput with publishing on vs off**: `--conns` connections
//!    each commit `S` storage + `S` messages transactions for distinct
//!    users, one at a time, for `--duration` seconds, on "store" and
//!    "plain" alternately (ABBA, `--rounds`), median commits/s each. Run
//!    in two placements (`--placement`): **shared**, every process on
//!    every CPU, so Redis and the MX compete with the store for them; and
//!    **split**, the store host's processes (the dict ramdir and the load
//!    client, which plays its Dovecot) on CPU 0 and the other hosts'
//!    (redis-server, the MX ramdir) on CPU 1, as on separate machines.
//!    The goal (the store host's throughput with publishing on ≥ 0.9 ×
//!    off) is judged on the split placement.
//!
//! Prints a markdown report. Everything lives in a temp dir; every process
//! is stopped on exit (the harness's drop).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ramdir_integration::dovecot::DictClient;
use ramdir_integration::ramdir::{DirectoryFiles, Ramdir, write_config};
use ramdir_integration::redis::Redis;
use ramdir_integration::{DirectoryContent, StackDir, write_atomic};

const USERS: usize = 10_000;
const LIMIT: &str = "1M";
const OVER: i64 = 2 << 20;

struct Args {
    samples: usize,
    duration: f64,
    conns: usize,
    rounds: usize,
    placements: Vec<Placement>,
}

/// Where the processes run during the throughput rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Placement {
    /// Every process on every CPU.
    Shared,
    /// The store host (dict ramdir, load client) on CPU 0; redis-server
    /// and the MX ramdir on CPU 1.
    Split,
}

impl Placement {
    fn name(self) -> &'static str {
        match self {
            Placement::Shared => "shared (all processes on all CPUs)",
            Placement::Split => "split (store host on CPU 0; Redis and the MX on CPU 1)",
        }
    }
}

fn args() -> Args {
    let mut a = Args {
        samples: 500,
        duration: 5.0,
        conns: 8,
        rounds: 3,
        placements: vec![Placement::Shared, Placement::Split],
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--samples" => a.samples = v().parse().expect("--samples N"),
            "--duration" => a.duration = v().parse().expect("--duration SECS"),
            "--conns" => a.conns = v().parse().expect("--conns N"),
            "--rounds" => a.rounds = v().parse().expect("--rounds N"),
            "--placement" => {
                a.placements = match v().as_str() {
                    "shared" => vec![Placement::Shared],
                    "split" => vec![Placement::Split],
                    "both" => vec![Placement::Shared, Placement::Split],
                    p => panic!("--placement shared|split|both, not {p}"),
                }
            }
            "-h" | "--help" => {
                println!(
                    "shared-bench [--samples 500] [--duration 5] [--conns 8] [--rounds 3] [--placement both|shared|split]"
                );
                std::process::exit(0);
            }
            _ => panic!("unknown argument {k}"),
        }
    }
    a
}

fn user(i: usize) -> String {
    format!("u{i:05}@bench.test")
}

/// Start a ramdir in `dir` with `files` and the extra config `extra`.
fn ramdir(dir: &Path, files: &DirectoryFiles, extra: &str) -> Ramdir {
    std::fs::create_dir_all(dir).expect("mkdir");
    let socketmap = dir.join("socketmap.sock");
    let config = dir.join("ramdir.toml");
    write_config(
        &config,
        files,
        &socketmap,
        &format!("default_quota = {LIMIT:?}\n"),
    );
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str(extra);
    write_atomic(&config, &text);
    Ramdir::start(&config, &socketmap, &dir.join("ramdir.log"))
}

fn policy_rcpt(conn: &mut (BufReader<UnixStream>, UnixStream), rcpt: &str) -> String {
    write!(
        conn.1,
        "request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient={rcpt}\nsize=1000\n\n"
    )
    .expect("policy write");
    let mut action = String::new();
    loop {
        let mut line = String::new();
        conn.0.read_line(&mut line).expect("policy read");
        let line = line.trim_end();
        if line.is_empty() {
            return action;
        }
        action = line.trim_start_matches("action=").to_string();
    }
}

fn wait_dict(path: &Path) -> DictClient {
    let start = Instant::now();
    loop {
        if let Ok(mut d) = DictClient::connect(path, "quota")
            && d.lookup("priv/quota/storage", "probe@bench.test").is_ok()
        {
            return d;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "dict {path:?} never answered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn set(d: &mut DictClient, user: &str, storage: i64, messages: i64) {
    let s = format!("S\tpriv/quota/storage\t{storage}");
    let m = format!("S\tpriv/quota/messages\t{messages}");
    let r = d.transaction(user, &[&s, &m]).expect("dict commit");
    assert!(r.starts_with('O'), "dict commit for {user}: {r}");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Commits/s on `socket` with `conns` connections for `secs`, users offset
/// by `base` so each run writes users of its own.
fn throughput(socket: &Path, conns: usize, secs: f64, base: usize) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..conns)
        .map(|c| {
            let (stop, done, socket) = (stop.clone(), done.clone(), socket.to_path_buf());
            std::thread::spawn(move || {
                let mut d = DictClient::connect(&socket, "quota").expect("dict connect");
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let u = user((base + c + n * conns) % USERS);
                    set(&mut d, &u, (n as i64 + 1) * 1000, n as i64 + 1);
                    done.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let n = done.load(Ordering::Relaxed);
    let el = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("load thread");
    }
    n as f64 / el
}

/// CPU seconds (user + system) process `pid` has used so far.
fn cpu_secs(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime is the
    // 12th, stime the 13th of them.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    ticks as f64 / 100.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let a = args();
    let dir = StackDir::new();
    let mut users = String::new();
    for i in 0..USERS {
        users.push_str(&format!(
            "{}:{{PLAIN}}x:5000:5000::/nonexistent::\n",
            user(i)
        ));
    }
    let files = DirectoryFiles::write(
        &dir.join("data"),
        &DirectoryContent {
            users,
            domains: "bench.test\n".into(),
            ..Default::default()
        },
    );
    let redis = Redis::start(&dir.join("redis"));
    let shared = |host: &str| format!("shared = {:?}\nhost_id = {host:?}\n", redis.url());
    let store_dir = dir.join("store");
    let store_dict = store_dir.join("dict.sock");
    let store = ramdir(
        &store_dir,
        &files,
        &format!(
            "\n[dict]\nlisten = \"unix:{}\"\n\n[quota]\nstore = \"{}\"\n{}",
            store_dict.display(),
            store_dir.join("quota.redb").display(),
            shared("store")
        ),
    );
    let plain_dir = dir.join("plain");
    let plain_dict = plain_dir.join("dict.sock");
    let plain = ramdir(
        &plain_dir,
        &files,
        &format!(
            "\n[dict]\nlisten = \"unix:{}\"\n\n[quota]\nstore = \"{}\"\n",
            plain_dict.display(),
            plain_dir.join("quota.redb").display(),
        ),
    );
    let mx_dir = dir.join("mx");
    let mx_policy = mx_dir.join("policy.sock");
    let mx = ramdir(
        &mx_dir,
        &files,
        &format!(
            "\n[policy]\nlisten = \"unix:{}\"\n\n[quota]\nstore = \"{}\"\n{}",
            mx_policy.display(),
            mx_dir.join("quota.redb").display(),
            shared("mx")
        ),
    );
    let mut d = wait_dict(&store_dict);
    wait_dict(&plain_dict);
    let s = ramdir_integration::wait_for(Duration::from_secs(30), "the MX's policy socket", || {
        UnixStream::connect(&mx_policy).ok()
    });
    let mut policy = (BufReader::new(s.try_clone().expect("dup")), s);

    // 1. Propagation.
    let mut samples = Vec::with_capacity(a.samples);
    let mut polls = 0u64;
    for k in 0..a.samples {
        // Each user goes over the limit, then back under.
        let u = user((k / 2) % USERS);
        let over = k % 2 == 0;
        let want_refusal = over;
        set(&mut d, &u, if over { OVER } else { 0 }, 1);
        let t0 = Instant::now();
        loop {
            polls += 1;
            let act = policy_rcpt(&mut policy, &u);
            if (act != "DUNNO") == want_refusal {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the MX never saw {u}'s change (answer {act:?})"
            );
        }
        samples.push(t0.elapsed());
        // Spread the commits out a little, as real deliveries are.
        std::thread::sleep(Duration::from_millis(2 + (k as u64 * 7) % 11));
    }
    samples.sort();
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1000.0);

    // 2. Throughput, ABBA, in each placement.
    let pid = |r: &Ramdir| r.pid().expect("ramdir running");
    let procs = Procs {
        store: (store_dict.clone(), pid(&store)),
        plain: (plain_dict.clone(), pid(&plain)),
        redis: redis.pid().expect("redis running"),
        mx: pid(&mx),
    };
    let results: Vec<(Placement, Rounds)> = a
        .placements
        .iter()
        .map(|&p| (p, rounds(&a, p, &procs)))
        .collect();

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("### shared usage benchmark (`shared-bench`)");
    println!();
    println!(
        "- {USERS} users; redis-server {} on 127.0.0.1; three ramdirs (store: dict + shared, plain: dict only, mx: policy + shared); load average at the end: {}",
        redis_version(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "- propagation: {} samples (dict `S` commit answered `O` on the store → the MX's policy answer for that recipient changes), {} policy requests in all",
        samples.len(),
        polls
    );
    println!();
    println!("| propagation | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| store commit → MX policy | {} | {} | {} | {} |",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.9)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().expect("samples"))
    );
    println!();
    println!(
        "| dict commits/s ({} connections, {} s × {} rounds, ABBA, median) | publishing off | publishing on | on/off |",
        a.conns, a.duration, a.rounds
    );
    println!("|---|---:|---:|---:|");
    for (p, r) in &results {
        println!(
            "| {} | {:.0} | {:.0} | {:.3} |",
            p.name(),
            r.off,
            r.on,
            r.on / r.off
        );
    }
    println!();
    println!(
        "| CPU µs per commit (median; /proc, 10 ms ticks) | dict ramdir | redis-server | MX ramdir |\n|---|---:|---:|---:|"
    );
    for (p, r) in &results {
        for (what, c) in [("off (\"plain\")", r.cpu_off), ("on (\"store\")", r.cpu_on)] {
            println!(
                "| {}, publishing {what} | {:.1} | {:.1} | {:.1} |",
                p.name(),
                c[0],
                c[1],
                c[2]
            );
        }
    }
    println!();
    let p99 = percentile(&samples, 0.99);
    let met = |ok: bool| if ok { "met" } else { "**NOT met**" };
    println!(
        "| goal | target | measured | |\n|---|---|---:|---|\n| propagation p99 | ≤ 1000 ms | {} ms | {} |",
        ms(p99),
        met(p99 <= Duration::from_secs(1)),
    );
    for (p, r) in &results {
        let ratio = r.on / r.off;
        // The goal is the store host's throughput: judged where the other
        // hosts do not take its CPU.
        let judged = if *p == Placement::Split {
            met(ratio >= 0.9)
        } else {
            "(reported)"
        };
        println!(
            "| dict throughput publishing on/off, {} | ≥ 0.9 | {ratio:.3} | {judged} |",
            p.name()
        );
    }
}

/// The processes of the throughput rounds: dict socket and pid of the
/// store (publishing) and of the plain ramdir, and the other hosts' pids.
struct Procs {
    store: (std::path::PathBuf, i32),
    plain: (std::path::PathBuf, i32),
    redis: i32,
    mx: i32,
}

/// Medians of one placement's rounds: commits/s with publishing on and
/// off, and CPU µs per commit of [dict ramdir, redis-server, MX ramdir].
struct Rounds {
    on: f64,
    off: f64,
    cpu_on: [f64; 3],
    cpu_off: [f64; 3],
}

/// Pin every thread of `pid` to `cpus` (a `taskset -c` list).
fn pin(pid: i32, cpus: &str) {
    let ok = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "taskset -a -p -c {cpus} {pid} failed");
}

fn place(p: Placement, procs: &Procs) {
    let me = i32::try_from(std::process::id()).expect("pid");
    let all = format!(
        "0-{}",
        std::thread::available_parallelism().map_or(1, |n| n.get()) - 1
    );
    let (host, others) = match p {
        Placement::Shared => (all.as_str(), all.as_str()),
        Placement::Split => ("0", "1"),
    };
    for pid in [procs.store.1, procs.plain.1, me] {
        pin(pid, host);
    }
    for pid in [procs.redis, procs.mx] {
        pin(pid, others);
    }
}

fn rounds(a: &Args, placement: Placement, procs: &Procs) -> Rounds {
    place(placement, procs);
    let mut on = Vec::new();
    let mut off = Vec::new();
    let mut cpu_on = vec![Vec::new(); 3];
    let mut cpu_off = vec![Vec::new(); 3];
    for r in 0..a.rounds {
        let order: [bool; 2] = if r % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for publish in order {
            let (sock, server) = if publish { &procs.store } else { &procs.plain };
            let pids = [*server, procs.redis, procs.mx];
            let before: Vec<f64> = pids.iter().map(|p| cpu_secs(*p)).collect();
            let tput = throughput(sock, a.conns, a.duration, r * 1000);
            let commits = tput * a.duration;
            for (i, p) in pids.iter().enumerate() {
                let us = (cpu_secs(*p) - before[i]) * 1e6 / commits.max(1.0);
                if publish {
                    cpu_on[i].push(us)
                } else {
                    cpu_off[i].push(us)
                }
            }
            eprintln!(
                "{placement:?} round {}: publishing {}: {tput:.0} commits/s",
                r + 1,
                if publish { "on" } else { "off" }
            );
            if publish {
                on.push(tput)
            } else {
                off.push(tput)
            }
        }
    }
    place(Placement::Shared, procs);
    let m3 = |v: Vec<Vec<f64>>| {
        let mut it = v.into_iter().map(median);
        [(); 3].map(|()| it.next().unwrap_or(0.0))
    };
    Rounds {
        on: median(on),
        off: median(off),
        cpu_on: m3(cpu_on),
        cpu_off: m3(cpu_off),
    }
}

fn redis_version() -> String {
    let out = std::process::Command::new(ramdir_integration::redis::REDIS_SERVER)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    out.split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .unwrap_or("?")
        .to_string()
}
