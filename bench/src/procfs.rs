//! What `/proc` says about a process: memory (`VmRSS`, `VmHWM`) and CPU
//! time, for the `rss` subcommand and the client's `--server-pid`.

use std::io;

/// Clock ticks per second in `/proc/<pid>/stat`. The kernel reports these
/// fields in `USER_HZ`, which is 100 on every Linux architecture ramdir
/// targets (it is part of the ABI, unlike the kernel's internal `HZ`).
const USER_HZ: f64 = 100.0;

/// Resident memory of a process, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Resident set size now (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size (`VmHWM`, the high-water mark).
    pub hwm_kib: u64,
}

/// Parse `VmRSS` and `VmHWM` out of the text of `/proc/<pid>/status`.
pub fn parse_status(text: &str) -> Option<Memory> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// Memory of process `pid`.
pub fn memory(pid: u32) -> io::Result<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/status has no VmRSS/VmHWM (a kernel thread or a zombie?)"),
        )
    })
}

/// CPU time (user + system, all threads) process `pid` has used, in
/// seconds; `None` for this process.
pub fn cpu_seconds(pid: Option<u32>) -> io::Result<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let text = std::fs::read_to_string(&path)?;
    parse_stat_cpu(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{path}: unexpected format"),
        )
    })
}

/// utime + stime from the text of `/proc/<pid>/stat`, in seconds. The
/// command name (field 2) may contain spaces and parentheses, so fields are
/// counted from the last `)`: utime and stime are fields 14 and 15.
pub fn parse_stat_cpu(text: &str) -> Option<f64> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// The command name (field 2, without its parentheses) of the text of
/// `/proc/<pid>/stat`.
pub fn parse_stat_comm(text: &str) -> Option<&str> {
    Some(&text[text.find('(')? + 1..text.rfind(')')?])
}

/// The parent's pid (field 4) of the text of `/proc/<pid>/stat`.
pub fn parse_stat_ppid(text: &str) -> Option<u32> {
    text[text.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU seconds used so far by process `pid` and its direct children (a
/// forking server such as Dovecot's master and its auth and auth-worker
/// processes). Children that exited are not counted.
pub fn cpu_seconds_with_children(pid: u32) -> io::Result<f64> {
    let mut total = cpu_seconds(Some(pid))?;
    for e in std::fs::read_dir("/proc")?.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path().join("stat")) else {
            continue; // exited meanwhile
        };
        if parse_stat_ppid(&text) == Some(pid) {
            total += parse_stat_cpu(&text).unwrap_or(0.0);
        }
    }
    Ok(total)
}

/// CPU seconds used so far by all processes whose command name
/// (`/proc/<pid>/comm`, at most 15 bytes) is one of `names` (compared on
/// their first 15 bytes). Processes that exited are not counted.
pub fn cpu_seconds_by_comm(names: &[String]) -> io::Result<f64> {
    let short: Vec<&[u8]> = names
        .iter()
        .map(|n| &n.as_bytes()[..n.len().min(15)])
        .collect();
    let mut total = 0.0;
    for e in std::fs::read_dir("/proc")?.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path().join("stat")) else {
            continue; // exited meanwhile
        };
        if parse_stat_comm(&text).is_some_and(|c| short.contains(&c.as_bytes())) {
            total += parse_stat_cpu(&text).unwrap_or(0.0);
        }
    }
    Ok(total)
}

/// CPU time the whole machine has spent busy (all CPUs: user, nice,
/// system, irq, softirq, steal), in seconds, from `/proc/stat`.
pub fn system_busy_seconds() -> io::Result<f64> {
    let text = std::fs::read_to_string("/proc/stat")?;
    parse_system_busy(&text)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "/proc/stat: unexpected format"))
}

/// Busy seconds from the text of `/proc/stat` (its first, `cpu`, line).
pub fn parse_system_busy(text: &str) -> Option<f64> {
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest is in user).
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| v.get(i).copied().unwrap_or(0))
        .sum::<u64>();
    Some(busy as f64 / USER_HZ)
}

/// `rss` subcommand: print a process's memory.
pub fn run(pid: u32, json: bool) -> io::Result<()> {
    let m = memory(pid)?;
    if json {
        println!(
            "{{\"pid\":{pid},\"vm_rss_kib\":{},\"vm_hwm_kib\":{}}}",
            m.rss_kib, m.hwm_kib
        );
    } else {
        println!(
            "pid {pid}: VmRSS {:.1} MiB, VmHWM {:.1} MiB",
            m.rss_kib as f64 / 1024.0,
            m.hwm_kib as f64 / 1024.0
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let status = "Name:\tramdir\nVmPeak:\t  999 kB\nVmHWM:\t  204800 kB\nVmRSS:\t  150000 kB\n";
        assert_eq!(
            parse_status(status),
            Some(Memory {
                rss_kib: 150_000,
                hwm_kib: 204_800
            })
        );
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 1 1";
        assert_eq!(parse_stat_cpu(stat), Some(3.0));
        assert_eq!(parse_stat_comm(stat), Some("a (b) c"));
        assert_eq!(parse_stat_ppid(stat), Some(1));
        // This process's children include none, but it counts itself.
        assert!(cpu_seconds_with_children(std::process::id()).unwrap() >= 0.0);
        let me = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert!(cpu_seconds_by_comm(&[me.trim().to_string()]).unwrap() >= 0.0);
        assert_eq!(cpu_seconds_by_comm(&["no-such-comm".into()]).unwrap(), 0.0);
        let stat = "cpu  100 10 50 9000 20 5 5 30 0 0\ncpu0 1 2 3\n";
        assert_eq!(parse_system_busy(stat), Some(2.0));
        assert!(memory(std::process::id()).unwrap().rss_kib > 0);
        assert!(system_busy_seconds().is_ok());
        assert!(cpu_seconds(None).is_ok());
    }
}
