//! A stand-in for Dovecot's auth socket, just enough for Postfix's
//! `smtpd_sasl_type = dovecot` client (`src/xsasl/xsasl_dovecot_server.c`):
//! the server handshake (`VERSION`, `MECH PLAIN`, `DONE`) and `AUTH` with
//! an initial PLAIN response, answered `OK … user=<login>` or `FAIL`.
//!
//! It lets the tests log in over SMTP so that `smtpd_sender_login_maps`
//! (ramdir's `senders` table) can be exercised with
//! `reject_sender_login_mismatch`, which Postfix ignores without SASL.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// The auth server; stops (and removes its socket) on drop.
#[derive(Debug)]
pub struct FakeDovecotAuth {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeDovecotAuth {
    /// Listen on `path` (mode 0666: smtpd connects as user `postfix`) and
    /// accept PLAIN logins whose password matches `users` (login →
    /// password; logins compared case-insensitively).
    pub fn start(path: &Path, users: HashMap<String, String>) -> FakeDovecotAuth {
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        crate::set_mode(path, 0o666);
        let users: Arc<HashMap<String, String>> = Arc::new(
            users
                .into_iter()
                .map(|(k, v)| (k.to_lowercase(), v))
                .collect(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in l.incoming() {
                if st.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let users = users.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &users);
                });
            }
        });
        FakeDovecotAuth {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        }
    }

    /// Parse the `{PLAIN}` passwords out of passwd-file text.
    pub fn plain_users(passwd: &str) -> HashMap<String, String> {
        passwd
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, ':');
                let user = f.next()?;
                let pw = f.next()?.strip_prefix("{PLAIN}")?;
                Some((user.to_string(), pw.to_string()))
            })
            .collect()
    }
}

impl Drop for FakeDovecotAuth {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(conn: UnixStream, users: &HashMap<String, String>) -> std::io::Result<()> {
    let mut w = conn.try_clone()?;
    w.write_all(
        format!(
            "VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nSPID\t{}\nCUID\t1\nCOOKIE\t{}\nDONE\n",
            std::process::id(),
            "0".repeat(32)
        )
        .as_bytes(),
    )?;
    for line in BufReader::new(conn).lines() {
        let line = line?;
        let f: Vec<&str> = line.split('\t').collect();
        if f.first() != Some(&"AUTH") || f.len() < 3 {
            continue; // VERSION, CPID
        }
        let id = f[1];
        let resp = f.iter().find_map(|p| p.strip_prefix("resp="));
        let login = (f[2].eq_ignore_ascii_case("PLAIN"))
            .then_some(resp)
            .flatten()
            .and_then(base64_decode)
            .and_then(|raw| {
                // authzid NUL authcid NUL password
                let mut parts = raw.split(|b| *b == 0);
                let _authz = parts.next()?;
                let user = String::from_utf8(parts.next()?.to_vec()).ok()?;
                let pass = String::from_utf8(parts.next()?.to_vec()).ok()?;
                (users.get(&user.to_lowercase()) == Some(&pass)).then_some(user)
            });
        let reply = match login {
            Some(u) => format!("OK\t{id}\tuser={u}\n"),
            None => format!("FAIL\t{id}\treason=bad credentials\n"),
        };
        w.write_all(reply.as_bytes())?;
    }
    Ok(())
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 with padding; `None` when malformed.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = B64.iter().position(|&x| x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in [
            "",
            "a",
            "ab",
            "abc",
            "abcd",
            "\0alice@example.org\0alice-pw",
        ] {
            let e = base64_encode(s.as_bytes());
            assert_eq!(
                base64_decode(&e).as_deref(),
                Some(s.as_bytes()),
                "{s:?} -> {e}"
            );
        }
        assert_eq!(base64_encode(b"ab"), "YWI=");
        assert_eq!(base64_decode("!!"), None);
    }

    #[test]
    fn plain_users_are_read_from_passwd_text() {
        let u = FakeDovecotAuth::plain_users("a@x.org:{PLAIN}pw:5000\nb@x.org:{SSHA}zz\n");
        assert_eq!(u.len(), 1);
        assert_eq!(u["a@x.org"], "pw");
    }
}
