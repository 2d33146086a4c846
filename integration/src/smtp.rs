//! A tiny SMTP (and LMTP) client over a plain stream: enough to drive
//! smtpd or Dovecot's LMTP step by step and see each reply. One
//! implementation of the reply reader, the dot-stuffing and the command
//! loop for both: [`Smtp`] over TCP, [`crate::dovecot::Lmtp`] over a Unix
//! socket.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// One SMTP reply; multi-line replies are joined with `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The text of every line, without the code and separator.
    pub text: String,
}

impl Reply {
    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// The queue id from a `250 2.0.0 Ok: queued as <ID>` reply to DATA.
    pub fn queue_id(&self) -> Option<&str> {
        let rest = &self.text[self.text.find("queued as ")? + "queued as ".len()..];
        let id = rest.split_whitespace().next()?;
        (!id.is_empty()).then_some(id)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// A stream a session runs on: TCP (SMTP) or a Unix socket (LMTP).
pub trait Stream: Read + Write + Sized {
    /// A second handle on the same connection (one reads, one writes).
    fn try_clone(&self) -> io::Result<Self>;
    /// Read and write timeouts.
    fn set_timeouts(&self, t: Duration) -> io::Result<()>;
}

/// The same two calls on both stream types (their inherent methods).
macro_rules! stream {
    ($t:ty) => {
        impl Stream for $t {
            fn try_clone(&self) -> io::Result<Self> {
                <$t>::try_clone(self)
            }
            fn set_timeouts(&self, t: Duration) -> io::Result<()> {
                self.set_read_timeout(Some(t))?;
                self.set_write_timeout(Some(t))
            }
        }
    };
}
stream!(TcpStream);
stream!(UnixStream);

/// An SMTP session (over TCP unless said otherwise).
#[derive(Debug)]
pub struct Smtp<S = TcpStream> {
    reader: BufReader<S>,
    writer: S,
    /// The greeting.
    pub banner: Reply,
}

impl Smtp {
    /// Connect and read the greeting ([`crate::WAIT`] timeouts on every read/write).
    pub fn connect(addr: SocketAddr) -> io::Result<Smtp> {
        Smtp::over(crate::connect_tcp(addr)?)
    }
}

impl<S: Stream> Smtp<S> {
    /// Start a session on a connected stream: read the greeting
    /// ([`crate::WAIT`] timeouts on every read/write).
    pub fn over(s: S) -> io::Result<Smtp<S>> {
        s.set_timeouts(crate::WAIT)?;
        let mut reader = BufReader::new(s.try_clone()?);
        let banner = read_reply(&mut reader)?;
        Ok(Smtp {
            reader,
            writer: s,
            banner,
        })
    }

    /// Send one command line (CRLF added) and read the reply.
    pub fn command(&mut self, line: &str) -> io::Result<Reply> {
        self.writer.write_all(format!("{line}\r\n").as_bytes())?;
        self.writer.flush()?;
        read_reply(&mut self.reader)
    }

    /// Send `message` (dot-stuffed, CRLF line ends, the final `.`) after a
    /// 354, and read `replies` replies (one for SMTP, one per accepted
    /// recipient for LMTP).
    pub fn message(&mut self, message: &str, replies: usize) -> io::Result<Vec<Reply>> {
        self.writer.write_all(dot_stuff(message).as_bytes())?;
        self.writer.flush()?;
        (0..replies).map(|_| read_reply(&mut self.reader)).collect()
    }

    /// `EHLO name`.
    pub fn ehlo(&mut self, name: &str) -> io::Result<Reply> {
        self.command(&format!("EHLO {name}"))
    }

    /// `MAIL FROM:<addr>`.
    pub fn mail_from(&mut self, addr: &str) -> io::Result<Reply> {
        self.command(&format!("MAIL FROM:<{addr}>"))
    }

    /// `RCPT TO:<addr>`.
    pub fn rcpt_to(&mut self, addr: &str) -> io::Result<Reply> {
        self.command(&format!("RCPT TO:<{addr}>"))
    }

    /// `DATA`, then the message (dot-stuffed, CRLF line ends) and `.`.
    /// Returns the reply to `DATA` when it is not 354, otherwise the reply
    /// after the final dot.
    pub fn data(&mut self, message: &str) -> io::Result<Reply> {
        let go = self.command("DATA")?;
        if go.code != 354 {
            return Ok(go);
        }
        let mut r = self.message(message, 1)?;
        Ok(r.remove(0))
    }

    /// `AUTH PLAIN` with an initial response.
    pub fn auth_plain(&mut self, user: &str, password: &str) -> io::Result<Reply> {
        let raw = format!("\0{user}\0{password}");
        self.command(&format!(
            "AUTH PLAIN {}",
            crate::sasl::base64_encode(raw.as_bytes())
        ))
    }

    /// `QUIT`.
    pub fn quit(mut self) -> io::Result<Reply> {
        self.command("QUIT")
    }
}

/// The message with CRLF line ends, dot-stuffed, and the final `.` line.
fn dot_stuff(message: &str) -> String {
    let mut body = String::with_capacity(message.len() + 64);
    for line in message.lines() {
        if line.starts_with('.') {
            body.push('.');
        }
        body.push_str(line);
        body.push_str("\r\n");
    }
    body.push_str(".\r\n");
    body
}

/// Read one (possibly multi-line) reply: `250-…` lines until `250 …`.
fn read_reply(r: &mut impl BufRead) -> io::Result<Reply> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let mut text = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let code = line
            .get(..3)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| bad(format!("bad reply line {line:?}")))?;
        let sep = line.as_bytes().get(3).copied();
        text.push(line.get(4..).unwrap_or("").to_string());
        match sep {
            Some(b'-') => continue,
            Some(b' ') | None => {
                return Ok(Reply {
                    code,
                    text: text.join("\n"),
                });
            }
            Some(_) => return Err(bad(format!("bad reply line {line:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_replies_are_joined() {
        let mut r =
            io::Cursor::new(&b"250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n220 next\r\n"[..]);
        let rep = read_reply(&mut r).unwrap();
        assert_eq!(rep.code, 250);
        assert_eq!(rep.text, "mx.test\nPIPELINING\n8BITMIME");
        assert_eq!(
            read_reply(&mut r).unwrap(),
            Reply {
                code: 220,
                text: "next".into()
            }
        );
        assert!(read_reply(&mut r).is_err());
    }

    #[test]
    fn messages_are_dot_stuffed() {
        assert_eq!(dot_stuff(".a\r\nb\r\n"), "..a\r\nb\r\n.\r\n");
        assert_eq!(dot_stuff("a\nb"), "a\r\nb\r\n.\r\n");
    }

    #[test]
    fn queue_id_is_found() {
        let r = Reply {
            code: 250,
            text: "2.0.0 Ok: queued as 4ABCD12345".into(),
        };
        assert_eq!(r.queue_id(), Some("4ABCD12345"));
        assert_eq!(
            Reply {
                code: 250,
                text: "2.1.0 Ok".into()
            }
            .queue_id(),
            None
        );
    }
}
