//! A minimal socketmap client (netstrings over a Unix stream socket), as
//! Postfix's `dict_sockmap` speaks it: one persistent connection, strictly
//! one request and one reply at a time.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Postfix's limit on a reply payload (`DICT_SOCKMAP_DEF_MAX_REPLY`).
pub const MAX_REPLY: usize = 100_000;

/// One socketmap connection.
#[derive(Debug)]
pub struct SocketmapClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl SocketmapClient {
    /// Connect to a socketmap server ([`crate::WAIT`] read/write timeouts).
    pub fn connect(path: &Path) -> io::Result<SocketmapClient> {
        let s = crate::connect_unix(path)?;
        s.set_read_timeout(Some(crate::WAIT))?;
        s.set_write_timeout(Some(crate::WAIT))?;
        Ok(SocketmapClient {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// Send `"<table> <key>"` and return the reply payload, e.g.
    /// `OK alice@example.org`, `NOTFOUND ` or `TEMP reason`.
    pub fn query(&mut self, table: &str, key: &str) -> io::Result<String> {
        let req = format!("{table} {key}");
        self.writer
            .write_all(format!("{}:{req},", req.len()).as_bytes())?;
        self.writer.flush()?;
        self.read_reply()
    }

    fn read_reply(&mut self) -> io::Result<String> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        let mut len = Vec::new();
        let n = self.reader.read_until(b':', &mut len)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        if len.pop() != Some(b':')
            || len.is_empty()
            || !len.iter().all(u8::is_ascii_digit)
            || len.len() > 7
        {
            return Err(bad(format!(
                "bad netstring length {:?}",
                String::from_utf8_lossy(&len)
            )));
        }
        let len: usize = std::str::from_utf8(&len)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(usize::MAX);
        if len > MAX_REPLY {
            return Err(bad(format!(
                "reply of {len} bytes is over Postfix's {MAX_REPLY}"
            )));
        }
        let mut buf = vec![0; len + 1];
        self.reader.read_exact(&mut buf)?;
        if buf.pop() != Some(b',') {
            return Err(bad("netstring without its trailing ','".into()));
        }
        String::from_utf8(buf).map_err(|_| bad("reply is not UTF-8".into()))
    }
}
