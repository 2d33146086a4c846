//! Connection churn on the dict: Dovecot's dict client without
//! `idle_msecs` connects for every lookup (protocols.md G11). Each client
//! thread connects, sends `H` and one `L`, reads the reply and closes,
//! over and over; the report is connections per second and the CPU time
//! per connection of the server and of this client.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::dict::{hello, lookup_line};
use crate::keys::{KeyPattern, KeySet};
use crate::procfs;

/// What the churn load does.
#[derive(Debug)]
pub struct ChurnOptions {
    /// The dict server's socket.
    pub socket: PathBuf,
    /// Dict name sent in `H`.
    pub dict: String,
    /// Client threads, each one connection at a time.
    pub threads: usize,
    /// Measured time.
    pub duration: Duration,
    /// Key pattern, item count and domains (as `dict`).
    pub pattern: KeyPattern,
    /// Items `0..count` of the pattern.
    pub count: u64,
    /// Domains for the pattern.
    pub domains: u64,
    /// The server's pid, for its CPU time.
    pub server_pid: Option<u32>,
}

/// Run the churn load and print one JSON object.
///
/// # Errors
/// When a connection fails or a reply is not a found value.
pub fn run(o: &ChurnOptions) -> Result<(), String> {
    let keys = Arc::new(KeySet::build(
        &o.pattern,
        o.domains,
        o.count.max(1),
        80,
        lookup_line,
    ));
    let hello = hello(&o.dict);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let cpu = |pid| procfs::cpu_seconds(pid).map_err(|e| format!("cpu time: {e}"));
    let (server0, client0, t0) = (
        o.server_pid.map(|p| cpu(Some(p))).transpose()?,
        cpu(None)?,
        Instant::now(),
    );
    let workers: Vec<_> = (0..o.threads.max(1))
        .map(|t| {
            let (keys, stop, done, failed) =
                (keys.clone(), stop.clone(), done.clone(), failed.clone());
            let (socket, hello) = (o.socket.clone(), hello.clone());
            std::thread::spawn(move || {
                let mut i = t * 7919;
                let mut reply = [0u8; 4096];
                let mut req = Vec::with_capacity(256);
                while !stop.load(Ordering::Relaxed) {
                    i = (i + 1) % keys.len();
                    req.clear();
                    req.extend_from_slice(&hello);
                    req.extend_from_slice(keys.request(i));
                    let ok = (|| -> std::io::Result<bool> {
                        let mut s = UnixStream::connect(&socket)?;
                        s.write_all(&req)?;
                        let mut n = 0;
                        while !reply[..n].contains(&b'\n') {
                            let r = s.read(&mut reply[n..])?;
                            if r == 0 {
                                return Ok(false);
                            }
                            n += r;
                        }
                        Ok(reply[0] == b'O')
                    })();
                    match ok {
                        Ok(true) => done.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(o.duration);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let secs = t0.elapsed().as_secs_f64();
    let (server1, client1) = (o.server_pid.map(|p| cpu(Some(p))).transpose()?, cpu(None)?);
    let n = done.load(Ordering::Relaxed);
    let per = |s: f64| if n == 0 { 0.0 } else { s * 1e6 / n as f64 };
    let server = server0.zip(server1).map(|(a, b)| b - a);
    println!(
        "{{\"connections\":{n},\"failed\":{},\"seconds\":{secs:.3},\"per_s\":{:.1},\
         \"server_cpu_us_per_conn\":{},\"client_cpu_us_per_conn\":{:.2}}}",
        failed.load(Ordering::Relaxed),
        n as f64 / secs,
        server.map_or("null".to_string(), |s| format!("{:.2}", per(s))),
        per(client1 - client0),
    );
    Ok(())
}
