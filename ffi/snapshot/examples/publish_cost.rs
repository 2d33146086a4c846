//! What publishing costs the daemon: a base of N users, then single-entry
//! changes published as deltas, each timed in thread CPU and bytes written.
//! Used by `bench/postfix-map.sh`; prints one `key=value` line per figure.
//!
//! `cargo run --release -p ramdir-snapshot --example publish_cost -- DIR USERS DOMAINS CHANGES`
#![allow(unsafe_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ramdir_core::{Directory, Settings, UserSpec};
use ramdir_snapshot::format::FileKind;
use ramdir_snapshot::{Limits, Publisher};

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-parameter for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn user(login: String) -> UserSpec {
    UserSpec {
        login,
        enabled: true,
        ..UserSpec::default()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new(
        args.get(1)
            .map_or("/tmp/ramdir-publish-cost", |s| s.as_str()),
    );
    let n: u64 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let domains: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let changes: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(200);
    let _ = std::fs::remove_dir_all(dir);

    let mut d = Directory::new(Settings::default());
    d.reserve(n as usize, (n / 10) as usize);
    for i in 0..n {
        let domain = format!("d{}.example", i % domains);
        d.insert_user(&user(format!("user{i}@{domain}")));
        if i % 10 == 0 {
            d.set_alias_to(&format!("alias{i}@{domain}"), &format!("user{i}@{domain}"));
        }
    }
    let mut current = Arc::new(d);
    let mut p = Publisher::open(dir, 0o640, Limits::default()).expect("open");
    let t = thread_cpu();
    let base = p.publish(&current).expect("publish base");
    let base_cpu = thread_cpu() - t;
    println!("users={n}");
    println!("base_bytes={}", base.bytes);
    println!("base_entries={}", base.entries);
    println!("base_cpu_ms={:.1}", base_cpu.as_secs_f64() * 1e3);

    let mut cpu = Vec::new();
    let mut bytes = Vec::new();
    let mut bases = 0;
    for c in 0..changes {
        // What DirectoryHandle::update does for one LDAP change: clone the
        // snapshot (shards shared), edit one entry.
        let mut next = Directory::clone(&current);
        if c % 2 == 0 {
            next.insert_user(&user(format!("new{c}@d{}.example", c as u64 % domains)));
        } else {
            next.set_alias_to(&format!("alias{}@d1.example", c * 10), "user1@d1.example");
        }
        current = Arc::new(next);
        let t = thread_cpu();
        let r = p.publish(&current).expect("publish");
        cpu.push(thread_cpu() - t);
        bytes.push(r.bytes);
        if r.kind == FileKind::Base {
            bases += 1;
        }
    }
    cpu.sort();
    bytes.sort();
    let pct = |v: &[Duration], q: f64| v[((v.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    println!("changes={changes}");
    println!("change_bases={bases}");
    println!("change_cpu_ms_median={:.3}", pct(&cpu, 0.5));
    println!("change_cpu_ms_max={:.3}", pct(&cpu, 1.0));
    println!("change_bytes_median={}", bytes[bytes.len() / 2]);
    println!("change_bytes_max={}", bytes[bytes.len() - 1]);
    let limits = Limits::default();
    println!("delta_max_bytes={}", limits.delta_max_bytes);
    println!("delta_max_entries={}", limits.delta_max_entries);
}
