//! `ramdir check`: a Nagios/Icinga/NRPE check (installed as
//! `check_ramdir`) that reads the `[stats]` document of a running daemon.
//!
//! It follows the monitoring-plugins contract
//! (github.com/monitoring-plugins/monitoring-plugin-guidelines): exit 0 OK,
//! 1 WARNING, 2 CRITICAL, 3 UNKNOWN; one status line, then `|` and
//! performance data (`'label'=value[UOM];warn;crit;min;max`); thresholds
//! are ranges (`[@]start:end`, `N` = `0:N`, `N:` = at least N, `~:N` = at
//! most N; alert outside the range, or inside with `@`); `-t` gives
//! UNKNOWN when the daemon does not answer in time. Evaluation is pure
//! ([`evaluate`]); only [`run`] does I/O.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::stats::{self, FetchError};

/// A plugin state, with its exit code as value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    /// 0.
    Ok = 0,
    /// 1.
    Warning = 1,
    /// 2.
    Critical = 2,
    /// 3: could not tell (timeout, permission, garbage).
    Unknown = 3,
}

impl State {
    fn word(self) -> &'static str {
        match self {
            State::Ok => "OK",
            State::Warning => "WARNING",
            State::Critical => "CRITICAL",
            State::Unknown => "UNKNOWN",
        }
    }
}

/// A monitoring-plugins threshold range.
#[derive(Debug, Clone, PartialEq)]
pub struct Range {
    start: f64,
    end: f64,
    /// `@`: alert inside the range instead of outside.
    inside: bool,
    text: String,
}

impl Range {
    /// Parse `[@]start:end` and its short forms.
    pub fn parse(s: &str) -> Result<Range, String> {
        let text = s.to_string();
        let (inside, body) = match s.strip_prefix('@') {
            Some(b) => (true, b),
            None => (false, s),
        };
        let num = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .ok_or_else(|| format!("bad range {s:?}: {v:?} is not a number"))
        };
        let (start, end) = match body.split_once(':') {
            None => (0.0, num(body)?),
            Some((a, b)) => {
                let start = if a == "~" { f64::NEG_INFINITY } else { num(a)? };
                let end = if b.is_empty() { f64::INFINITY } else { num(b)? };
                (start, end)
            }
        };
        if start > end {
            return Err(format!("bad range {s:?}: start is above end"));
        }
        Ok(Range {
            start,
            end,
            inside,
            text,
        })
    }

    /// Whether `v` raises the alert.
    pub fn alerts(&self, v: f64) -> bool {
        let within = self.start <= v && v <= self.end;
        within == self.inside
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The thresholds `ramdir check` was given.
#[derive(Debug, Clone, Default)]
pub struct Thresholds {
    /// LDAP sync lag (seconds since the sync was lost; 0 in sync).
    pub lag_warning: Option<Range>,
    /// As above, critical.
    pub lag_critical: Option<Range>,
    /// Directory age (seconds since the current generation was published).
    pub age_warning: Option<Range>,
    /// As above, critical.
    pub age_critical: Option<Range>,
    /// TEMP answers given since start (socketmap).
    pub temp_warning: Option<Range>,
    /// As above, critical.
    pub temp_critical: Option<Range>,
    /// Fewer users than this is critical (an empty or half load).
    pub min_users: Option<u64>,
}

/// The result: state and the full output line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The state (and exit code).
    pub state: State,
    /// `RAMDIR STATE - text | perfdata`.
    pub line: String,
}

fn outcome(state: State, text: &str, perf: &str) -> Outcome {
    // One line, and no `|` before the performance data.
    let text: String = text
        .chars()
        .map(|c| match c {
            '|' => '/',
            '\n' | '\r' => ' ',
            c => c,
        })
        .collect();
    let mut line = format!("RAMDIR {} - {text}", state.word());
    if !perf.is_empty() {
        line.push_str(" | ");
        line.push_str(perf);
    }
    Outcome { state, line }
}

/// An UNKNOWN (or CRITICAL for a stopped daemon) outcome for a failed read.
pub fn fetch_failed(e: &FetchError) -> Outcome {
    match e {
        FetchError::NotRunning(m) => outcome(State::Critical, m, ""),
        FetchError::Timeout(m) | FetchError::Other(m) => outcome(State::Unknown, m, ""),
    }
}

fn perf(label: &str, value: u64, uom: &str, w: Option<&Range>, c: Option<&Range>) -> String {
    let r = |r: Option<&Range>| r.map(|r| r.to_string()).unwrap_or_default();
    format!("{label}={value}{uom};{};{};0", r(w), r(c))
}

/// Judge a stats document (`now` as Unix seconds).
pub fn evaluate(doc: &Value, t: &Thresholds, now: u64) -> Outcome {
    let dir = &doc["directory"];
    let (Some(users), Some(generation), Some(published)) = (
        dir["users"].as_u64(),
        dir["generation"].as_u64(),
        dir["published_unix"].as_u64(),
    ) else {
        return outcome(
            State::Unknown,
            "the stats document lacks directory figures",
            "",
        );
    };
    let aliases = dir["aliases"].as_u64().unwrap_or(0);
    let age = now.saturating_sub(published);
    let temp = doc["socketmap"]["temp"].as_u64().unwrap_or(0);
    let ldap = &doc["ldap"];
    let lag = if ldap.is_null() {
        None
    } else {
        Some(ldap["sync_lost_secs"].as_u64().unwrap_or(0))
    };

    let mut state = State::Ok;
    let mut why: Vec<String> = Vec::new();
    let mut judge = |name: &str, v: u64, unit: &str, w: &Option<Range>, c: &Option<Range>| {
        if c.as_ref().is_some_and(|r| r.alerts(v as f64)) {
            state = state.max(State::Critical);
            why.push(format!("{name} {v}{unit} outside {}", c.as_ref().unwrap()));
        } else if w.as_ref().is_some_and(|r| r.alerts(v as f64)) {
            state = state.max(State::Warning);
            why.push(format!("{name} {v}{unit} outside {}", w.as_ref().unwrap()));
        }
    };
    if let Some(lag) = lag {
        judge("LDAP sync lag", lag, "s", &t.lag_warning, &t.lag_critical);
    }
    judge("directory age", age, "s", &t.age_warning, &t.age_critical);
    judge("TEMP answers", temp, "", &t.temp_warning, &t.temp_critical);
    if let Some(min) = t.min_users
        && users < min
    {
        state = state.max(State::Critical);
        why.push(format!("{users} users, fewer than {min}"));
    }
    if dir["authoritative"] == Value::Bool(false) {
        // Misses are TEMP (or asked of LDAP): mail to unknown addresses is
        // deferred rather than refused.
        state = state.max(State::Warning);
        let note = dir["note"].as_str().unwrap_or("source not loaded");
        why.push(format!("not authoritative ({note})"));
    }

    let mut text = format!("{users} users, {aliases} aliases, generation {generation}");
    match (lag, ldap["phase"].as_str()) {
        (Some(0), Some(p)) => text.push_str(&format!(", LDAP {p}")),
        (Some(l), Some(p)) => text.push_str(&format!(", LDAP {p}, sync lost {l}s ago")),
        _ => {}
    }
    if !why.is_empty() {
        text = format!("{}; {text}", why.join(", "));
    }
    let min_range = t.min_users.map(|m| Range::parse(&format!("{m}:")).unwrap());
    let mut p = vec![
        perf("users", users, "", None, min_range.as_ref()),
        format!("aliases={aliases};;;0"),
        perf(
            "age",
            age,
            "s",
            t.age_warning.as_ref(),
            t.age_critical.as_ref(),
        ),
    ];
    if let Some(lag) = lag {
        p.push(perf(
            "ldap_lag",
            lag,
            "s",
            t.lag_warning.as_ref(),
            t.lag_critical.as_ref(),
        ));
    }
    p.push(perf(
        "temp",
        temp,
        "c",
        t.temp_warning.as_ref(),
        t.temp_critical.as_ref(),
    ));
    if let Some(r) = doc["socketmap"]["requests"].as_u64() {
        p.push(format!("requests={r}c;;;0"));
    }
    outcome(state, &text, &p.join(" "))
}

/// Where to read from: an explicit socket, or the configuration's `[stats]`.
#[derive(Debug, Clone)]
pub enum Target {
    /// `--socket`.
    Socket(PathBuf),
    /// `--config`.
    Config(PathBuf),
}

/// Run the check: never longer than `timeout` (then UNKNOWN), whatever
/// blocks.
pub fn run(target: &Target, t: &Thresholds, timeout: Duration) -> Outcome {
    let (tx, rx) = std::sync::mpsc::channel();
    let target = target.clone();
    let t = t.clone();
    std::thread::spawn(move || {
        let socket = match target {
            Target::Socket(s) => s,
            Target::Config(c) => match crate::config::Config::load(&c) {
                Ok(cfg) => match cfg.stats {
                    Some(l) => l.path,
                    None => {
                        let _ = tx.send(outcome(
                            State::Unknown,
                            &format!("{}: no [stats] section", c.display()),
                            "",
                        ));
                        return;
                    }
                },
                Err(e) => {
                    let _ = tx.send(outcome(State::Unknown, &e.to_string(), ""));
                    return;
                }
            },
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let r = match stats::fetch_value(&socket, timeout) {
            Ok(doc) => evaluate(&doc, &t, now),
            Err(e) => fetch_failed(&e),
        };
        let _ = tx.send(r);
    });
    rx.recv_timeout(timeout).unwrap_or_else(|_| {
        outcome(
            State::Unknown,
            &format!(
                "timeout: no answer within {}s (plugin timeout -t)",
                timeout.as_secs_f64()
            ),
            "",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Range {
        Range::parse(s).unwrap()
    }

    #[test]
    fn ranges_follow_the_guidelines() {
        // N = 0:N, alert outside.
        assert!(!r("10").alerts(0.0) && !r("10").alerts(10.0));
        assert!(r("10").alerts(11.0) && r("10").alerts(-1.0));
        // N: = at least N.
        assert!(r("5:").alerts(4.0) && !r("5:").alerts(1e12));
        // ~:N = at most N.
        assert!(!r("~:3").alerts(-100.0) && r("~:3").alerts(4.0));
        // start:end, and @ inverts.
        assert!(r("10:20").alerts(9.0) && !r("10:20").alerts(15.0));
        assert!(r("@10:20").alerts(15.0) && !r("@10:20").alerts(21.0));
        for bad in ["", "x", "5:1", "1:y", "inf"] {
            assert!(Range::parse(bad).is_err(), "{bad:?}");
        }
    }

    fn doc(users: u64, published: u64, ldap: Value, temp: u64) -> Value {
        serde_json::json!({
            "directory": {"users": users, "aliases": 3, "domains": 1, "generation": 7,
                "published_unix": published, "authoritative": true, "note": null},
            "ldap": ldap,
            "socketmap": {"connections": 2, "requests": 40, "temp": temp, "protocol_errors": 0},
        })
    }

    #[test]
    fn ok_line_and_perfdata() {
        let t = Thresholds {
            lag_warning: Some(r("600")),
            lag_critical: Some(r("1800")),
            min_users: Some(1),
            ..Thresholds::default()
        };
        let ldap = serde_json::json!({"phase": "in sync", "sync_lost_secs": null});
        let o = evaluate(&doc(312004, 1000, ldap, 17), &t, 1002);
        assert_eq!(o.state, State::Ok);
        assert_eq!(
            o.line,
            "RAMDIR OK - 312004 users, 3 aliases, generation 7, LDAP in sync | \
             users=312004;;1:;0 aliases=3;;;0 age=2s;;;0 ldap_lag=0s;600;1800;0 \
             temp=17c;;;0 requests=40c;;;0"
        );
    }

    #[test]
    fn ldap_lag_temp_min_users_and_authority_raise_the_state() {
        let t = Thresholds {
            lag_warning: Some(r("60")),
            lag_critical: Some(r("600")),
            temp_warning: Some(r("10")),
            min_users: Some(100),
            ..Thresholds::default()
        };
        let lost = |s: u64| serde_json::json!({"phase": "connecting", "sync_lost_secs": s});
        assert_eq!(
            evaluate(&doc(500, 0, lost(61), 0), &t, 0).state,
            State::Warning
        );
        let o = evaluate(&doc(500, 0, lost(601), 0), &t, 0);
        assert_eq!(o.state, State::Critical);
        assert!(
            o.line
                .starts_with("RAMDIR CRITICAL - LDAP sync lag 601s outside 600;"),
            "{}",
            o.line
        );
        assert_eq!(
            evaluate(&doc(500, 0, Value::Null, 11), &t, 0).state,
            State::Warning
        );
        assert_eq!(
            evaluate(&doc(99, 0, Value::Null, 0), &t, 0).state,
            State::Critical
        );
        let mut d = doc(500, 0, Value::Null, 0);
        d["directory"]["authoritative"] = Value::Bool(false);
        let o = evaluate(&d, &t, 0);
        assert_eq!(o.state, State::Warning);
        assert!(o.line.contains("not authoritative"), "{}", o.line);
        // Without LDAP there is no lag to judge or report.
        assert!(
            !evaluate(&doc(500, 0, Value::Null, 0), &t, 0)
                .line
                .contains("ldap_lag")
        );
    }

    #[test]
    fn failures_map_to_critical_or_unknown() {
        let o = fetch_failed(&FetchError::NotRunning("ramdir is not running".into()));
        assert_eq!(
            (o.state, o.line.as_str()),
            (State::Critical, "RAMDIR CRITICAL - ramdir is not running")
        );
        assert_eq!(
            fetch_failed(&FetchError::Timeout("t".into())).state,
            State::Unknown
        );
        assert_eq!(
            evaluate(&serde_json::json!({}), &Thresholds::default(), 0).state,
            State::Unknown
        );
    }

    #[test]
    fn a_stopped_daemon_is_critical_and_a_silent_one_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("stats.sock");
        let t = Thresholds::default();
        let o = run(&Target::Socket(sock.clone()), &t, Duration::from_secs(5));
        assert_eq!(o.state, State::Critical, "{}", o.line);
        // A socket that accepts and never answers (a hung daemon).
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let o = run(&Target::Socket(sock), &t, Duration::from_millis(300));
        assert_eq!(o.state, State::Unknown, "{}", o.line);
        assert!(o.line.contains("within 0.3s"), "{}", o.line);
    }
}
