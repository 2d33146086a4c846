//! Log lines for journald: when systemd runs ramdir, standard error is a
//! journal stream (`JOURNAL_STREAM` is set, systemd.exec(5)), and a line
//! that starts with `<N>` gets syslog priority N (sd-daemon(3), since
//! `SyslogLevelPrefix=` defaults to yes). The journal adds the timestamp
//! and the unit, so the line carries neither.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Whether standard error goes to the journal.
pub fn active() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some()
}

/// `<priority>message key=value…`: error 3, warn 4, info 6, debug and
/// trace 7.
#[derive(Debug, Clone, Copy)]
pub struct Format;

impl<S, N> FormatEvent<S, N> for Format
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_carry_the_priority_and_no_timestamp() {
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .event_format(Format)
            .with_max_level(Level::DEBUG)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(sub, || {
            tracing::error!(socket = "/x", "bind failed");
            tracing::warn!("LDAP sync lost");
            tracing::info!(users = 2, "directory loaded");
            tracing::debug!("client closed");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "<3>bind failed socket=\"/x\"\n<4>LDAP sync lost\n<6>directory loaded users=2\n<7>client closed\n"
        );
    }
}
