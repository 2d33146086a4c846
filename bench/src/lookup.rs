//! `lookup`: ramdir's socketmap service without any I/O. Loads passwd and
//! alias files with ramdir's own loader and times `service::answer` plus
//! `Reply::encode` on one thread, so the per-request cost of the lookup
//! itself can be told apart from the server's socket and scheduling work
//! (compare with the server CPU µs/request of `socketmap --server-pid`).

use std::path::PathBuf;
use std::time::Instant;

use bytes::BytesMut;
use ramdir_core::Settings;
use ramdir_core::files::{FileSources, load};
use ramdir_postfix::socketmap::codec::{Reply, Request};
use ramdir_postfix::socketmap::service::answer;

use crate::hist::Histogram;
use crate::keys::{KeyPattern, XorShift};
use crate::procfs;

/// What to load and ask.
#[derive(Debug)]
pub struct LookupOptions {
    /// passwd-files.
    pub passwd: Vec<PathBuf>,
    /// Alias map sources.
    pub aliases: Vec<PathBuf>,
    /// Table.
    pub map: String,
    /// Key pattern, item count and domain count (as `socketmap`).
    pub pattern: KeyPattern,
    /// Items `0..key_count`.
    pub key_count: u64,
    /// Domains for the pattern's second number.
    pub key_domains: u64,
    /// Lookups to time.
    pub requests: u64,
    /// Seed of the key sequence.
    pub seed: u64,
}

/// Run it and print the figures.
pub fn run(o: &LookupOptions) -> Result<(), String> {
    let started = Instant::now();
    let sources = FileSources {
        passwd_files: o.passwd.clone(),
        alias_files: o.aliases.clone(),
        ..Default::default()
    };
    let dir = load(&sources, Settings::default()).map_err(|e| e.to_string())?;
    let load_s = started.elapsed().as_secs_f64();
    let mem = procfs::memory(std::process::id()).map_err(|e| e.to_string())?;
    let c = dir.counts();
    println!(
        "loaded {} users, {} aliases, {} domains in {load_s:.2} s (default settings); \
         this process: VmRSS {:.0} MB, VmHWM {:.0} MB",
        c.users,
        c.aliases,
        c.domains,
        mem.rss_kib as f64 * 1024.0 / 1e6,
        mem.hwm_kib as f64 * 1024.0 / 1e6
    );
    // Requests in a random order, decoded up front (as the server has them
    // after `Request::decode`).
    let mut rng = XorShift::new(o.seed, 0);
    let n = o.requests.min(1 << 22) as usize;
    let reqs: Vec<Request> = (0..n)
        .map(|_| {
            let i = rng.below(o.key_count.max(1));
            Request::new(&o.map, &o.pattern.render_string(i, o.key_domains))
        })
        .collect();
    let mut out = BytesMut::with_capacity(512);
    let mut hist = Histogram::default();
    let (mut ok, mut other) = (0u64, 0u64);
    let t0 = Instant::now();
    for r in reqs.iter().cycle().take(o.requests as usize) {
        let s = Instant::now();
        let reply = answer(&dir, r);
        out.clear();
        reply.encode(&mut out);
        hist.record(s.elapsed().as_nanos() as u64);
        if matches!(reply, Reply::Ok(_)) {
            ok += 1;
        } else {
            other += 1;
        }
    }
    let total = t0.elapsed().as_secs_f64();
    println!(
        "{} lookups in map {} on one thread: {:.0} ns/lookup on average \
         (p50 {} ns, p99 {} ns, p99.9 {} ns); OK {ok}, other {other}",
        o.requests,
        o.map,
        total * 1e9 / o.requests.max(1) as f64,
        hist.percentile(0.5),
        hist.percentile(0.99),
        hist.percentile(0.999),
    );
    Ok(())
}
