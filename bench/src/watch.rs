//! `watch`: how long a change takes to become visible. It opens one
//! persistent connection (socketmap, or a dict with its hello), checks the
//! change is not visible yet, runs a command (e.g. `ldapmodify`), and
//! polls the key until the answer shows the change. It reports the time
//! from just before the command was started and from the moment it exited
//! (negative when the change showed before the command returned).
//!
//! Requests and replies use the project's codecs (socketmap
//! `Request::encode`/`Reply::decode`, dict `Command::encode` and the
//! reply-line reader of [`crate::dict`]).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ramdir_postfix::socketmap::codec::{Reply, Request};

use crate::dict;

/// What to watch.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// The socket.
    pub socket: PathBuf,
    /// `Some(dict name)`: a dict socket; `None`: socketmap.
    pub dict: Option<String>,
    /// Socketmap map name.
    pub map: String,
    /// The key (socketmap: the address; dict: the full key).
    pub key: String,
    /// The change is visible when the key is found and its value contains
    /// this (empty: found at all).
    pub expect: String,
    /// Pause between polls.
    pub interval: Duration,
    /// Give up after this long.
    pub timeout: Duration,
    /// The command making the change.
    pub command: Vec<String>,
}

/// One probe's answer: `Some(value)` when found.
type Probe = Option<String>;

/// A persistent connection that asks for one key.
struct Prober {
    stream: UnixStream,
    request: Vec<u8>,
    buf: BytesMut,
    dict: bool,
}

impl Prober {
    fn open(o: &WatchOptions) -> Result<Prober, String> {
        let mut stream = UnixStream::connect(&o.socket)
            .map_err(|e| format!("cannot connect to {}: {e}", o.socket.display()))?;
        stream
            .set_read_timeout(Some(o.timeout.max(Duration::from_secs(1))))
            .map_err(|e| e.to_string())?;
        let mut request = BytesMut::new();
        if let Some(d) = &o.dict {
            stream
                .write_all(&dict::hello(d))
                .map_err(|e| format!("write: {e}"))?;
            dict::lookup_line(&o.key, &mut request);
        } else {
            Request::new(&o.map, &o.key).encode(&mut request);
        }
        Ok(Prober {
            stream,
            request: request.to_vec(),
            buf: BytesMut::with_capacity(4096),
            dict: o.dict.is_some(),
        })
    }

    fn probe(&mut self) -> Result<Probe, String> {
        self.stream
            .write_all(&self.request)
            .map_err(|e| format!("write: {e}"))?;
        let mut chunk = [0u8; 4096];
        loop {
            if self.dict {
                if let Some(r) = dict::take_reply(&mut self.buf)? {
                    return Ok((r.line.first() == Some(&b'O'))
                        .then(|| String::from_utf8_lossy(&r.line[1..]).into_owned()));
                }
            } else {
                match Reply::decode(&mut self.buf) {
                    Ok(Some(Reply::Ok(v))) => return Ok(Some(v)),
                    Ok(Some(_)) => return Ok(None),
                    Ok(None) => {}
                    Err(e) => return Err(format!("bad reply: {e}")),
                }
            }
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("server closed the connection".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Whether a probe's answer shows the change.
pub fn visible(p: &Probe, expect: &str) -> bool {
    p.as_deref().is_some_and(|v| v.contains(expect))
}

/// The result of one watch.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    /// Start of the command → visible, ms.
    pub from_start_ms: f64,
    /// Exit of the command → visible, ms (negative: visible earlier).
    pub from_return_ms: f64,
    /// How long the command ran, ms.
    pub command_ms: f64,
    /// Probes sent after the command started.
    pub polls: u64,
}

impl Timing {
    /// One JSON object.
    pub fn json(&self) -> String {
        format!(
            "{{\"from_start_ms\":{:.3},\"from_return_ms\":{:.3},\"command_ms\":{:.3},\"polls\":{}}}",
            self.from_start_ms, self.from_return_ms, self.command_ms, self.polls
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Run the watch.
pub fn run(o: &WatchOptions) -> Result<Timing, String> {
    let (prog, args) = o
        .command
        .split_first()
        .ok_or("no command given (after --)")?;
    let mut p = Prober::open(o)?;
    if visible(&p.probe()?, &o.expect) {
        return Err(format!(
            "{} already shows the change before the command",
            o.key
        ));
    }
    let start = Instant::now();
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    // The exit is timed by a thread blocked in wait(), not by the polls.
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        (status, Instant::now())
    });
    let mut polls = 0u64;
    let seen = loop {
        polls += 1;
        let r = p.probe()?;
        let now = Instant::now();
        if visible(&r, &o.expect) {
            break now;
        }
        if now - start > o.timeout {
            return Err(format!(
                "{} did not show {:?} within {:.1} s (last answer: {r:?})",
                o.key,
                o.expect,
                o.timeout.as_secs_f64()
            ));
        }
        std::thread::sleep(o.interval);
    };
    let (status, exited) = waiter
        .join()
        .map_err(|_| "the waiting thread panicked".to_string())?;
    let status = status.map_err(|e| format!("wait for {prog}: {e}"))?;
    if !status.success() {
        return Err(format!("{prog} failed: {status}"));
    }
    let from_return_ms = if seen >= exited {
        ms(seen - exited)
    } else {
        -ms(exited - seen)
    };
    Ok(Timing {
        from_start_ms: ms(seen - start),
        from_return_ms,
        command_ms: ms(exited - start),
        polls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_and_json() {
        assert!(!visible(&None, ""));
        assert!(visible(&Some("x".into()), ""));
        assert!(visible(&Some("a:storage=5B,".into()), "storage=5B"));
        assert!(!visible(&Some("a:storage=50B,".into()), "storage=5B,x"));
        let t = Timing {
            from_start_ms: 12.5,
            from_return_ms: -0.25,
            command_ms: 12.75,
            polls: 3,
        };
        let v: serde_json::Value = serde_json::from_str(&t.json()).unwrap();
        assert_eq!(v["from_return_ms"], -0.25);
        assert_eq!(v["polls"], 3);
    }

    #[test]
    fn watches_a_change_made_by_a_command() {
        // A socketmap server that says NOTFOUND until a flag file exists.
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s");
        let flag = dir.path().join("flag");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let f2 = flag.clone();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = BytesMut::new();
            let mut chunk = [0u8; 512];
            loop {
                while let Ok(Some(_)) = Request::decode(&mut buf) {
                    let mut out = BytesMut::new();
                    let r = if f2.exists() {
                        Reply::Ok("yes".into())
                    } else {
                        Reply::NotFound
                    };
                    r.encode(&mut out);
                    s.write_all(&out).unwrap();
                }
                let n = s.read(&mut chunk).unwrap();
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        });
        let o = WatchOptions {
            socket: sock,
            dict: None,
            map: "mailboxes".into(),
            key: "a@b.test".into(),
            expect: "yes".into(),
            interval: Duration::from_micros(100),
            timeout: Duration::from_secs(10),
            command: vec!["touch".into(), flag.display().to_string()],
        };
        let t = run(&o).unwrap();
        assert!(t.from_start_ms >= 0.0 && t.polls >= 1, "{t:?}");
        assert!(t.from_start_ms - t.command_ms - t.from_return_ms < 0.01);
    }
}
