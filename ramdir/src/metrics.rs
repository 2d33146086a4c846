//! `[metrics]`: Prometheus' text exposition format (version 0.0.4,
//! prometheus.io/docs/instrumenting/exposition_formats) on `GET /metrics`
//! over a TCP listener (Prometheus cannot scrape a Unix socket).
//!
//! The mail listeners keep counting on their own atomics ([`Counters`],
//! the LDAP source's stats); a scrape reads them and encodes the document,
//! so metrics cost the hot path nothing. The HTTP side is a bounded
//! HTTP/1.1 responder, not a web server: it reads one request head of at
//! most [`MAX_HEAD`] bytes within [`CLIENT_TIMEOUT`], answers, and closes.
//! At most [`MAX_SCRAPES`] clients are served at once; further ones are
//! closed at once, so a slow or malformed client cannot tie up the runtime
//! the mail listeners share. Names follow prometheus.io/docs/practices/naming:
//! `ramdir_` prefix, `_total` counters, base units, no per-user labels.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use ramdir_core::DirectoryHandle;
use ramdir_ldap::source::LdapSource;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::stats::Counters;

/// Longest request head read: a scrape's is about 200 bytes.
const MAX_HEAD: usize = 8192;

/// A client must send its request and take the answer within this time
/// (Prometheus' default scrape timeout is 10 s).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Clients served at once; one Prometheus needs one.
const MAX_SCRAPES: usize = 4;

/// Figures from parts that exist only with some configurations.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// The quota usage store (`[quota]`).
    pub store: Option<Arc<ramdir_core::usage::UsageStore>>,
    /// The generation `[postfix_map]` last published.
    pub map_generation: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// The generation `[dovecot_map]` last published.
    pub dovecot_map_generation: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// Shared usage (`[quota] shared`): its counters and the mirror.
    pub shared: Option<(Arc<crate::shared::Stats>, Arc<ramdir_core::mirror::Mirror>)>,
}

/// The content type of the text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One metric family: HELP and TYPE once, then its samples. The one
/// writer of the document's lines: a sample always carries the family's
/// name (histograms add their `_bucket`/`_sum`/`_count` suffix).
struct Family<'a> {
    out: &'a mut String,
    name: &'a str,
}

impl Family<'_> {
    /// A sample of the family itself (`labels` may be empty).
    fn sample(&mut self, labels: &str, value: impl std::fmt::Display) -> &mut Self {
        self.sample_of("", labels, value)
    }

    /// A sample of the family's `suffix` series (a histogram's parts).
    fn sample_of(
        &mut self,
        suffix: &str,
        labels: &str,
        value: impl std::fmt::Display,
    ) -> &mut Self {
        let name = self.name;
        if labels.is_empty() {
            writeln!(self.out, "{name}{suffix} {value}").unwrap();
        } else {
            writeln!(self.out, "{name}{suffix}{{{labels}}} {value}").unwrap();
        }
        self
    }
}

fn family<'a>(out: &'a mut String, name: &'a str, kind: &str, help: &str) -> Family<'a> {
    writeln!(out, "# HELP {name} {help}").unwrap();
    writeln!(out, "# TYPE {name} {kind}").unwrap();
    Family { out, name }
}

/// Escape a label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The process' own figures, from procfs (Linux).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Process {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    open_fds: u64,
    max_fds: Option<u64>,
    start_time_seconds: f64,
}

fn process() -> Option<Process> {
    // Both constants are fixed on Linux/x86-64 and arm64 Debian kernels
    // (USER_HZ is 100 ABI-wide; the page size is 4 KiB there).
    const CLK_TCK: f64 = 100.0;
    const PAGE: u64 = 4096;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) in ")".
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // proc(5): utime 14, stime 15, starttime 22, vsize 23, rss 24 (1-based
    // over the whole line; here the index is field - 3).
    let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    let btime = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    })?;
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        });
    Some(Process {
        cpu_seconds: (num(14)? + num(15)?) as f64 / CLK_TCK,
        virtual_bytes: num(23)?,
        resident_bytes: num(24)? * PAGE,
        start_time_seconds: btime as f64 + num(22)? as f64 / CLK_TCK,
        open_fds: std::fs::read_dir("/proc/self/fd").ok()?.count() as u64,
        max_fds,
    })
}

/// The exposition document.
pub fn encode(
    handle: &DirectoryHandle,
    c: &Counters,
    ldap: Option<&LdapSource>,
    extras: &Extras,
) -> String {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut out = String::with_capacity(4096);
    let o = &mut out;
    family(
        o,
        "ramdir_build_info",
        "gauge",
        "ramdir's version; always 1.",
    )
    .sample(
        &format!("version=\"{}\"", label(env!("CARGO_PKG_VERSION"))),
        1,
    );

    // Every listener's connection-layer figures, in one order.
    let listeners: [(&str, &ramdir_conn::Stats); 4] = [
        ("socketmap", &c.socketmap.conn),
        ("policy", &c.policy),
        ("dict", &c.dict),
        ("milter", &c.milter),
    ];
    let mut f = family(
        o,
        "ramdir_requests_total",
        "counter",
        "Requests answered, per listener (dict: commands; milter: quota checks at RCPT and end of message); counted per connection in batches and when it closes.",
    );
    for (name, st) in &listeners {
        f.sample(&format!("listener=\"{name}\""), load(&st.requests));
    }
    let sm = &c.socketmap;
    let (requests, found, temp, perm) = (
        load(&sm.conn.requests),
        load(&sm.found),
        load(&sm.temp),
        load(&sm.perm),
    );
    // TEMP and PERM are counted at once, the others per batch: clamp the
    // difference rather than go below zero between two flushes.
    let notfound = requests.saturating_sub(found + temp + perm);
    family(
        o,
        "ramdir_replies_total",
        "counter",
        "Socketmap replies by kind: found (OK), notfound, temp (TEMP/TIMEOUT: Postfix defers), perm.",
    )
    .sample("listener=\"socketmap\",kind=\"found\"",
        found,
    )
    .sample("listener=\"socketmap\",kind=\"notfound\"",
        notfound,
    )
    .sample("listener=\"socketmap\",kind=\"temp\"",
        temp,
    )
    .sample("listener=\"socketmap\",kind=\"perm\"",
        perm,
    );
    {
        let mut f = family(
            o,
            "ramdir_request_duration_seconds",
            "histogram",
            "Time to answer a request (decode, look up, encode; milter: a quota check), per listener; one request in 16 per connection is timed.",
        );
        for (listener, st) in &listeners {
            let snap = st.latency.snapshot();
            for (le, n) in &snap.buckets {
                let le = match le {
                    Some(us) => (*us as f64 / 1e6).to_string(),
                    None => "+Inf".to_string(),
                };
                f.sample_of(
                    "_bucket",
                    &format!("listener=\"{listener}\",le=\"{le}\""),
                    n,
                );
            }
            let l = format!("listener=\"{listener}\"");
            f.sample_of("_sum", &l, snap.sum_ns as f64 / 1e9)
                .sample_of("_count", &l, snap.count);
        }
    }
    for (metric, help, get) in [
        (
            "ramdir_connections_total",
            "Connections accepted, per listener.",
            (|s: &ramdir_conn::Stats| &s.connections)
                as fn(&ramdir_conn::Stats) -> &std::sync::atomic::AtomicU64,
        ),
        (
            "ramdir_protocol_errors_total",
            "Connections closed for a protocol error, per listener (the milter's are indymilter's and not counted).",
            |s| &s.protocol_errors,
        ),
    ] {
        let mut f = family(o, metric, "counter", help);
        for (name, st) in &listeners {
            f.sample(&format!("listener=\"{name}\""), load(get(st)));
        }
    }

    let d = handle.snapshot();
    let n = d.counts();
    let m = d.meta();
    family(
        o,
        "ramdir_directory_entries",
        "gauge",
        "Entries in the served directory, per kind.",
    )
    .sample("kind=\"users\"", n.users)
    .sample("kind=\"aliases\"", n.aliases)
    .sample("kind=\"domains\"", n.domains)
    .sample("kind=\"senders\"", n.senders)
    .sample("kind=\"ambiguous\"", n.ambiguous);
    family(
        o,
        "ramdir_directory_generation",
        "gauge",
        "Generation of the served directory snapshot.",
    )
    .sample("", m.generation);
    let published = m
        .published
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    family(
        o,
        "ramdir_directory_published_timestamp_seconds",
        "gauge",
        "When the served snapshot was published (its age: time() minus this).",
    )
    .sample("", published);
    family(
        o,
        "ramdir_directory_authoritative",
        "gauge",
        "1 while misses are final (NOTFOUND); 0 while they are TEMP or asked of LDAP.",
    )
    .sample("", u8::from(m.authoritative));

    if let Some(src) = ldap {
        let st = src.status();
        let lost = st["sync_lost_secs"].as_u64();
        let s = &src.stats;
        family(
            o,
            "ramdir_ldap_in_sync",
            "gauge",
            "1 while the LDAP sync runs.",
        )
        .sample("", u8::from(st["phase"] == "in sync"));
        family(
            o,
            "ramdir_ldap_sync_lost_seconds",
            "gauge",
            "Seconds since the LDAP sync was lost; 0 while in sync.",
        )
        .sample("", lost.unwrap_or(0));
        family(
            o,
            "ramdir_ldap_connects_total",
            "counter",
            "Connections the LDAP sync made (more than one: reconnects).",
        )
        .sample("", load(&s.connects));
        family(
            o,
            "ramdir_ldap_full_loads_total",
            "counter",
            "Full LDAP loads.",
        )
        .sample("", load(&s.full_loads));
        family(
            o,
            "ramdir_ldap_entries_loaded_total",
            "counter",
            "Entries read by full LDAP loads.",
        )
        .sample("", load(&s.entries_loaded));
        family(
            o,
            "ramdir_ldap_changes_applied_total",
            "counter",
            "Adds, modifies and deletes applied from the LDAP sync.",
        )
        .sample("", load(&s.changes_applied));
        family(
            o,
            "ramdir_ldap_fallback_lookups_total",
            "counter",
            "Misses looked up in LDAP while not authoritative, by where the answer came from.",
        )
        .sample("result=\"searched\"", load(&s.fallback_searches))
        .sample("result=\"negative_cache\"", load(&s.fallback_cached));
    }

    if let Some(store) = &extras.store {
        let st = store.commit_stats();
        family(
            o,
            "ramdir_quota_store_commits_total",
            "counter",
            "Durable commits of the quota usage store (group commits).",
        )
        .sample("", load(&st.commits));
        family(
            o,
            "ramdir_quota_store_transactions_total",
            "counter",
            "Usage transactions committed to the quota usage store.",
        )
        .sample("", load(&st.transactions));
        family(
            o,
            "ramdir_quota_store_commit_failures_total",
            "counter",
            "Group commits of the quota usage store that failed.",
        )
        .sample("", load(&st.failures));
    }
    if let Some((st, mirror)) = &extras.shared {
        shared(o, st, mirror);
    }
    if let Some(g) = &extras.map_generation {
        family(
            o,
            "ramdir_postfix_map_generation",
            "gauge",
            "Directory generation last published for postfix-ramdir.so.",
        )
        .sample("", load(g));
    }
    if let Some(g) = &extras.dovecot_map_generation {
        family(
            o,
            "ramdir_dovecot_map_generation",
            "gauge",
            "Directory generation last published for the Dovecot module.",
        )
        .sample("", load(g));
    }

    if let Some(p) = process() {
        family(
            o,
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
        )
        .sample("", p.cpu_seconds);
        family(
            o,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        )
        .sample("", p.resident_bytes);
        family(
            o,
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
        )
        .sample("", p.virtual_bytes);
        family(
            o,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
        )
        .sample("", p.open_fds);
        if let Some(max) = p.max_fds {
            family(
                o,
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
            )
            .sample("", max);
        }
        family(
            o,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
        )
        .sample("", p.start_time_seconds);
    }
    out
}

/// The shared usage families (`[quota] shared`, docs/shared-usage.md).
fn shared(o: &mut String, st: &crate::shared::Stats, mirror: &ramdir_core::mirror::Mirror) {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let up = |a: &std::sync::atomic::AtomicBool| u8::from(a.load(Ordering::Relaxed));
    family(
        o,
        "ramdir_shared_redis_connected",
        "gauge",
        "1 while the part (publisher: this host's commits to Redis; feed: Redis to the mirror) holds a working connection to Redis.",
    )
    .sample("part=\"publisher\"", up(&st.publisher_connected))
    .sample("part=\"feed\"", up(&st.feed_connected));
    family(
        o,
        "ramdir_shared_queued_users",
        "gauge",
        "Users committed here whose value is not yet in Redis (coalesced: one per user).",
    )
    .sample("", load(&st.queued));
    for (name, help, v) in [
        (
            "ramdir_shared_published_total",
            "User values this host applied in Redis (newer than what Redis held).",
            &st.published,
        ),
        (
            "ramdir_shared_publish_failures_total",
            "Publishing calls to Redis that failed; their users stayed queued.",
            &st.publish_failures,
        ),
        (
            "ramdir_shared_republishes_total",
            "Full republishes of every user owned here (start, reconnect, Redis lost its data, queue overflow).",
            &st.republishes,
        ),
        (
            "ramdir_shared_rescans_total",
            "Full rescans of Redis into the mirror (start, reconnect, Redis lost its data).",
            &st.rescans,
        ),
    ] {
        family(o, name, "counter", help).sample("", load(v));
    }
    family(
        o,
        "ramdir_shared_mirror_users",
        "gauge",
        "Users in the mirror of shared usage.",
    )
    .sample("", mirror.len());
    family(
        o,
        "ramdir_shared_mirror_fresh",
        "gauge",
        "1 while the mirror has heard from Redis within stale_after_secs; 0: other hosts' users are stale (over quota only defers).",
    )
    .sample("", u8::from(mirror.is_fresh()));
    let refreshed = mirror
        .refreshed()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    family(
        o,
        "ramdir_shared_mirror_refreshed_timestamp_seconds",
        "gauge",
        "When the mirror last heard from Redis (its age: time() minus this); 0: never.",
    )
    .sample("", refreshed);
}

/// The answer to one request head: status line and body.
fn respond(head: &[u8], document: impl FnOnce() -> String) -> (&'static str, String) {
    let Some(line) = head.split(|&b| b == b'\n').next() else {
        return ("400 Bad Request", "bad request\n".into());
    };
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return ("400 Bad Request", "bad request\n".into());
    };
    if !version.starts_with("HTTP/1.") {
        return ("400 Bad Request", "bad request\n".into());
    }
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", "GET /metrics\n".into());
    }
    // Prometheus may add query parameters; only the path matters.
    if target.split('?').next() != Some("/metrics") {
        return ("404 Not Found", "GET /metrics\n".into());
    }
    ("200 OK", document())
}

async fn serve_client(
    mut stream: TcpStream,
    handle: &DirectoryHandle,
    counters: &Counters,
    ldap: Option<&LdapSource>,
    extras: &Extras,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() >= MAX_HEAD {
            let _ = stream
                .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
                .await;
            return Ok(());
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let is_head = head.starts_with(b"HEAD ");
    let (status, body) = respond(&head, || encode(handle, counters, ldap, extras));
    let ctype = if status.starts_with("200") {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let mut reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !is_head {
        reply.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&reply).await?;
    stream.shutdown().await
}

/// Serve `GET /metrics` until `shutdown`. Scrapes are not logged (a poll
/// every few seconds is not news); a failed accept is.
pub async fn run(
    listener: TcpListener,
    handle: Arc<DirectoryHandle>,
    counters: Arc<Counters>,
    ldap: Option<Arc<LdapSource>>,
    extras: Extras,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPES));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!("metrics: too many clients at once; closing one");
            continue;
        };
        let (h, c, l, x) = (
            handle.clone(),
            counters.clone(),
            ldap.clone(),
            extras.clone(),
        );
        tokio::spawn(async move {
            let r = tokio::time::timeout(
                CLIENT_TIMEOUT,
                serve_client(stream, &h, &c, l.as_deref(), &x),
            )
            .await;
            if let Ok(Err(e)) | Err(e) = r.map_err(std::io::Error::other) {
                tracing::debug!(error = %e, "metrics client");
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramdir_core::{Directory, Settings, UserSpec};

    fn handle(users: usize) -> DirectoryHandle {
        let mut d = Directory::new(Settings::default());
        for i in 0..users {
            d.insert_user(&UserSpec {
                login: format!("u{i}@example.org"),
                ..Default::default()
            });
        }
        DirectoryHandle::new(d)
    }

    #[test]
    fn exposition_is_well_formed_text_0_0_4() {
        let h = handle(3);
        let c = Counters::default();
        c.socketmap.conn.requests.store(42, Ordering::Relaxed);
        c.socketmap.temp.store(2, Ordering::Relaxed);
        c.socketmap.found.store(30, Ordering::Relaxed);
        c.socketmap.conn.latency.observe(Duration::from_micros(40));
        c.socketmap.conn.latency.observe(Duration::from_millis(2));
        c.dict.latency.observe(Duration::from_micros(70));
        c.milter.latency.observe(Duration::from_millis(3));
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(ramdir_core::usage::UsageStore::open(&dir.path().join("q.redb")).unwrap());
        let shared_stats = Arc::new(crate::shared::Stats::default());
        shared_stats.feed_connected.store(true, Ordering::Relaxed);
        shared_stats.queued.store(3, Ordering::Relaxed);
        shared_stats.published.store(5, Ordering::Relaxed);
        let mirror = Arc::new(ramdir_core::mirror::Mirror::new(
            "here",
            Duration::from_secs(30),
        ));
        for (user, host) in [("a@x.org", "here"), ("b@x.org", "there")] {
            mirror.apply(
                user,
                ramdir_core::mirror::Entry {
                    storage: Some(1),
                    messages: Some(1),
                    version: 1,
                    host: host.into(),
                },
            );
        }
        mirror.mark_fresh();
        let extras = Extras {
            store: Some(store),
            map_generation: Some(Arc::new(std::sync::atomic::AtomicU64::new(7))),
            dovecot_map_generation: Some(Arc::new(std::sync::atomic::AtomicU64::new(8))),
            shared: Some((shared_stats, mirror)),
        };
        let doc = encode(&h, &c, None, &extras);
        // Shared usage: the feed connected and fresh, two users mirrored.
        assert!(doc.contains("ramdir_shared_mirror_refreshed_timestamp_seconds 1"));
        assert!(doc.ends_with('\n'));
        for want in [
            "ramdir_requests_total{listener=\"socketmap\"} 42\n",
            "ramdir_replies_total{listener=\"socketmap\",kind=\"temp\"} 2\n",
            "ramdir_replies_total{listener=\"socketmap\",kind=\"found\"} 30\n",
            "ramdir_replies_total{listener=\"socketmap\",kind=\"notfound\"} 10\n",
            "ramdir_directory_entries{kind=\"users\"} 3\n",
            "ramdir_directory_authoritative 1\n",
            "ramdir_request_duration_seconds_bucket{listener=\"socketmap\",le=\"0.000025\"} 0\n",
            "ramdir_request_duration_seconds_bucket{listener=\"socketmap\",le=\"0.00005\"} 1\n",
            "ramdir_request_duration_seconds_bucket{listener=\"socketmap\",le=\"0.0025\"} 2\n",
            "ramdir_request_duration_seconds_bucket{listener=\"socketmap\",le=\"+Inf\"} 2\n",
            "ramdir_request_duration_seconds_sum{listener=\"socketmap\"} 0.00204\n",
            "ramdir_request_duration_seconds_count{listener=\"socketmap\"} 2\n",
            "ramdir_request_duration_seconds_bucket{listener=\"dict\",le=\"0.0001\"} 1\n",
            "ramdir_request_duration_seconds_bucket{listener=\"milter\",le=\"0.0025\"} 0\n",
            "ramdir_request_duration_seconds_count{listener=\"milter\"} 1\n",
            "ramdir_request_duration_seconds_count{listener=\"policy\"} 0\n",
            "ramdir_connections_total{listener=\"milter\"} 0\n",
            "# TYPE ramdir_request_duration_seconds histogram\n",
            "ramdir_quota_store_commits_total 0\n",
            "ramdir_postfix_map_generation 7\n",
            "ramdir_shared_redis_connected{part=\"publisher\"} 0\n",
            "ramdir_shared_redis_connected{part=\"feed\"} 1\n",
            "ramdir_shared_queued_users 3\n",
            "ramdir_shared_published_total 5\n",
            "ramdir_shared_publish_failures_total 0\n",
            "ramdir_shared_mirror_users 2\n",
            "ramdir_shared_mirror_fresh 1\n",
            "# TYPE ramdir_shared_rescans_total counter\n",
            "ramdir_dovecot_map_generation 8\n",
            "# TYPE ramdir_requests_total counter\n",
            "# TYPE process_resident_memory_bytes gauge\n",
            &format!(
                "ramdir_build_info{{version=\"{}\"}} 1\n",
                env!("CARGO_PKG_VERSION")
            ),
        ] {
            assert!(doc.contains(want), "missing {want:?} in\n{doc}");
        }
        // Every sample belongs to the family announced just before it, each
        // family once, counters end in _total.
        let mut seen = std::collections::HashSet::new();
        let (mut current, mut histogram) = (String::new(), false);
        for line in doc.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(seen.insert(name.to_string()), "{name} twice");
                assert!(kind != "counter" || name.ends_with("_total"), "{name}");
                current = name.to_string();
                histogram = kind == "histogram";
            } else if !line.starts_with('#') {
                let mut name = line.split(['{', ' ']).next().unwrap();
                if histogram {
                    name = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .unwrap_or_else(|| panic!("{line}"));
                }
                assert_eq!(name, current, "{line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
        // No LDAP section without LDAP.
        assert!(!doc.contains("ramdir_ldap_"));
    }

    #[test]
    fn only_get_metrics_is_answered() {
        let doc = || "doc".to_string();
        assert_eq!(
            respond(b"GET /metrics HTTP/1.1\r\n\r\n", doc),
            ("200 OK", "doc".into())
        );
        assert_eq!(
            respond(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", doc).0,
            "200 OK"
        );
        assert_eq!(respond(b"GET / HTTP/1.1\r\n\r\n", doc).0, "404 Not Found");
        assert_eq!(
            respond(b"POST /metrics HTTP/1.1\r\n\r\n", doc).0,
            "405 Method Not Allowed"
        );
        assert_eq!(respond(b"GET /metrics\r\n\r\n", doc).0, "400 Bad Request");
        assert_eq!(
            respond(b"\x00\xff garbage\r\n\r\n", doc).0,
            "400 Bad Request"
        );
    }

    async fn get(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn slow_and_malformed_clients_do_not_block_scrapes() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(
            l,
            Arc::new(handle(1)),
            Arc::new(Counters::default()),
            None,
            Extras::default(),
            async {
                let _ = rx.await;
            },
        ));
        // Clients that connect and never finish their request hold a slot
        // each, at most until CLIENT_TIMEOUT; one fewer than the slots.
        let mut idle = Vec::new();
        for _ in 0..MAX_SCRAPES - 1 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /metr").await.unwrap();
            idle.push(s);
        }
        let r = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Type: text/plain; version=0.0.4"), "{r}");
        assert!(
            r.contains("ramdir_directory_entries{kind=\"users\"} 1\n"),
            "{r}"
        );
        let r = get(addr, b"BREW /pot HTCPCP/1.0\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
        // An endless header is cut off at once (the 431 may be lost to the
        // reset that closing with unread input causes), not read forever.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let junk = vec![b'a'; MAX_HEAD * 4];
        let _ = s.write_all(&junk).await;
        let mut out = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        assert!(closed.is_ok(), "an oversized head was not cut off");
        let out = String::from_utf8_lossy(&out);
        assert!(out.is_empty() || out.starts_with("HTTP/1.1 431"), "{out}");
        // And scrapes still work.
        let r = get(addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        drop(idle);
        tx.send(()).unwrap();
        task.await.unwrap().unwrap();
    }
}
