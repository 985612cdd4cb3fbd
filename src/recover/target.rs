//! Recovery targets: parsing what a DBA types, and the settings PostgreSQL reads.

use crate::wal::names::Lsn;
use anyhow::{bail, Result};
use chrono::{DateTime, Datelike, FixedOffset, NaiveDateTime, TimeDelta, Timelike, Utc};

#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Time(DateTime<Utc>),
    Lsn(Lsn),
    Xid(u64),
    Name(String),
    /// The end of the backup: the earliest consistent point.
    Immediate,
    /// The end of the archived WAL.
    Latest,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    Promote,
    Pause,
    Shutdown,
}

impl Action {
    pub fn parse(s: &str) -> Result<Action> {
        Ok(match s {
            "promote" => Action::Promote,
            "pause" => Action::Pause,
            "shutdown" => Action::Shutdown,
            _ => bail!("--target-action '{s}': use promote, pause or shutdown"),
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Promote => "promote",
            Action::Pause => "pause",
            Action::Shutdown => "shutdown",
        }
    }
}

/// Parses a time with its zone: RFC 3339 (2026-11-22T14:32:00Z) or PostgreSQL's
/// form (2026-11-22 14:32:00.123+01, +0100, +01:00, or UTC). The result is
/// rounded to the microsecond, as PostgreSQL reads a timestamptz, so the time
/// walvault checks against backups is the one the server stops at.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>> {
    let t = to_micros(read_time(s)?);
    // PostgreSQL has no year 0 and walvault writes years with four digits.
    if !(1..=9999).contains(&t.year()) {
        bail!("target time '{s}' is out of range; use a year from 0001 to 9999");
    }
    Ok(t)
}

/// Rounds as PostgreSQL does: the fraction as a double, times a million,
/// rint (ties to even), so .0000005 gives 0 and .0000015 gives 2.
fn to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    let nanos = t.timestamp_subsec_nanos();
    let micros = ((f64::from(nanos) / 1e9) * 1e6).round_ties_even() as i64;
    t.with_nanosecond(0).unwrap_or(t) + TimeDelta::microseconds(micros)
}

fn read_time(s: &str) -> Result<DateTime<Utc>> {
    let t = s.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Ok(d.with_timezone(&Utc));
    }
    let t2 = t
        .strip_suffix(" UTC")
        .or_else(|| t.strip_suffix("Z"))
        .map(|b| format!("{b}+00"))
        .unwrap_or_else(|| t.to_string())
        .replacen('T', " ", 1);
    for f in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M%#z"] {
        if let Ok(d) = DateTime::<FixedOffset>::parse_from_str(&t2, f) {
            return Ok(d.with_timezone(&Utc));
        }
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M"] {
        if NaiveDateTime::parse_from_str(&t2, f).is_ok() {
            bail!("target time '{s}' has no time zone; add one so it is unambiguous, e.g. '{t2}+00' or '{t2}+01:00'");
        }
    }
    bail!("cannot read target time '{s}'; use RFC 3339 (2026-11-22T14:32:00Z) or PostgreSQL's form (2026-11-22 14:32:00+01)");
}

/// The target as typed: at most one of these is set (clap refuses more).
pub struct Asked {
    pub time: Option<String>,
    pub lsn: Option<String>,
    pub xid: Option<String>,
    pub name: Option<String>,
    /// `immediate` or `latest` (the default).
    pub end: Option<String>,
}

impl Asked {
    pub fn parse(self) -> Result<Target> {
        Ok(if let Some(t) = self.time {
            Target::Time(parse_time(&t)?)
        } else if let Some(l) = self.lsn {
            Target::Lsn(Lsn::parse(&l)?)
        } else if let Some(x) = self.xid {
            Target::Xid(
                x.trim()
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--target-xid '{x}' is not a transaction id"))?,
            )
        } else if let Some(n) = self.name {
            Target::Name(n)
        } else {
            match self.end.as_deref() {
                None | Some("latest") => Target::Latest,
                Some("immediate") => Target::Immediate,
                Some(o) => bail!("--target '{o}': use immediate or latest"),
            }
        })
    }
}

/// `--target-timeline`: a number, or None for the latest.
pub fn parse_timeline(s: Option<&str>) -> Result<Option<u32>> {
    match s {
        None | Some("latest") => Ok(None),
        Some(t) => Ok(Some(t.parse().map_err(|_| {
            anyhow::anyhow!("--target-timeline '{t}': use a number or latest")
        })?)),
    }
}

/// PostgreSQL's timestamptz literal, in UTC, with microseconds.
pub fn pg_time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

/// A postgresql.conf string literal.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl Target {
    /// Every recovery_target* setting naming a target: this target's value, the
    /// others empty (so none set elsewhere in the configuration applies).
    pub fn settings(&self) -> Vec<(String, String)> {
        let (key, value) = match self {
            Target::Time(t) => ("recovery_target_time", pg_time(t)),
            Target::Lsn(l) => ("recovery_target_lsn", l.to_string()),
            Target::Xid(x) => ("recovery_target_xid", x.to_string()),
            Target::Name(n) => ("recovery_target_name", n.clone()),
            Target::Immediate => ("recovery_target", "immediate".into()),
            Target::Latest => ("", String::new()),
        };
        // The server refuses a second target as soon as one is set, even an
        // empty one: the empty ones first, the target last.
        let mut out: Vec<(String, String)> = [
            "recovery_target",
            "recovery_target_lsn",
            "recovery_target_name",
            "recovery_target_time",
            "recovery_target_xid",
        ]
        .iter()
        .filter(|k| **k != key)
        .map(|k| (k.to_string(), quote("")))
        .collect();
        if !key.is_empty() {
            out.push((key.to_string(), quote(&value)));
        }
        out
    }

    pub fn describe(&self) -> String {
        match self {
            Target::Time(t) => format!("time {}", pg_time(t)),
            Target::Lsn(l) => format!("LSN {l}"),
            Target::Xid(x) => format!("transaction {x}"),
            Target::Name(n) => format!("restore point '{n}'"),
            Target::Immediate => "the end of the backup (immediate)".into(),
            Target::Latest => "the end of the archived WAL (latest)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn times_with_zones() {
        let want = Utc.with_ymd_and_hms(2026, 11, 22, 13, 32, 0).unwrap();
        for s in [
            "2026-11-22T13:32:00Z",
            "2026-11-22T14:32:00+01:00",
            "2026-11-22 14:32:00+01",
            "2026-11-22 14:32:00+0100",
            "2026-11-22 13:32:00 UTC",
            "2026-11-22 13:32:00Z",
            "2026-11-22 14:32+01",
        ] {
            assert_eq!(parse_time(s).unwrap(), want, "{s}");
        }
        let frac = parse_time("2026-11-22 13:32:00.123456+00").unwrap();
        assert_eq!(frac.timestamp_subsec_micros(), 123456);
        assert_eq!(pg_time(&frac), "2026-11-22 13:32:00.123456+00");
    }

    #[test]
    fn nanoseconds_round_to_the_microsecond() {
        for (s, printed) in [
            (
                "2026-11-22T13:32:00.0000001Z",
                "2026-11-22 13:32:00.000000+00",
            ),
            (
                "2026-11-22T13:32:00.1234567Z",
                "2026-11-22 13:32:00.123457+00",
            ),
            (
                "2026-12-31 23:59:59.9999996+00",
                "2027-01-01 00:00:00.000000+00",
            ),
            // A leap second is the next second's start, as PostgreSQL reads it.
            ("2026-12-31T23:59:60Z", "2027-01-01 00:00:00.000000+00"),
            // Ties go to even, as PostgreSQL's rint does.
            (
                "2026-11-22T13:32:00.0000005Z",
                "2026-11-22 13:32:00.000000+00",
            ),
            (
                "2026-11-22T13:32:00.0000015Z",
                "2026-11-22 13:32:00.000002+00",
            ),
        ] {
            let t = parse_time(s).unwrap();
            assert_eq!(pg_time(&t), printed, "{s}");
            assert_eq!(parse_time(printed).unwrap(), t, "{s}");
        }
    }

    #[test]
    fn refuses_years_postgres_cannot_read() {
        for s in ["0000-01-01T00:00:00Z", "9999-12-31T23:59:59.9999999Z"] {
            let e = parse_time(s).unwrap_err().to_string();
            assert!(e.contains("out of range"), "{s}: {e}");
        }
        assert!(parse_time("0001-01-01 00:00:00+00").is_ok());
    }

    #[test]
    fn refuses_ambiguous_or_garbage_times() {
        let e = parse_time("2026-11-22 14:32:00").unwrap_err().to_string();
        assert!(e.contains("no time zone"), "{e}");
        for s in ["yesterday", "2026-13-40 10:00:00+00", "", "14:32"] {
            assert!(parse_time(s).is_err(), "{s}");
        }
    }

    #[test]
    fn settings_are_quoted() {
        let set = |t: Target| -> Vec<String> {
            t.settings()
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect()
        };
        assert_eq!(
            set(Target::Name("it's".into())),
            [
                "recovery_target=''",
                "recovery_target_lsn=''",
                "recovery_target_time=''",
                "recovery_target_xid=''",
                "recovery_target_name='it''s'",
            ]
        );
        assert_eq!(set(Target::Immediate)[4], "recovery_target='immediate'");
        // Latest: every target key written, all empty.
        assert!(set(Target::Latest).iter().all(|s| s.ends_with("=''")));
        assert_eq!(Target::Latest.settings().len(), 5);
    }
}
