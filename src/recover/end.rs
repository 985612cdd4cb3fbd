//! Where replay ended, checked against what was asked. PostgreSQL says in its
//! log where it stopped ("recovery stopping ..."); the archive says where WAL
//! ends. A recovery that stopped elsewhere (an old target left in the
//! configuration, a gap, a wrong timeline) is a failure with both figures.

use super::target::{pg_time, Target};
use super::{End, Plan};
use crate::wal::names::Lsn;
use anyhow::{bail, Result};

/// One "recovery stopping ..." line of PostgreSQL's log, the text after it.
fn stopping_line(log: &str) -> Option<&str> {
    log.lines()
        .rev()
        .find_map(|l| l.find("recovery stopping ").map(|i| &l[i..]))
}

/// The quoted word after `after` in `line`.
fn quoted_after<'a>(line: &'a str, after: &str) -> Option<&'a str> {
    let rest = &line[line.find(after)? + after.len()..];
    let rest = rest.strip_prefix('"')?;
    Some(&rest[..rest.find('"')?])
}

/// Checks the end of replay; returns what was confirmed, for the operator.
pub fn check(
    target: &Target,
    exclusive: bool,
    plan: &Plan,
    end: &End,
    log: &str,
) -> Result<String> {
    let stop = stopping_line(log);
    let ended = Lsn::parse(&end.lsn).ok();
    let commit = end
        .last_commit
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| "none".into());
    match target {
        Target::Latest => {
            if let Some(line) = stop {
                bail!("recovery to the end of the archive stopped early, at a target it was not given ({line}): an old recovery setting may have been read; check postgresql.conf for recovery_target settings");
            }
            let seg = plan.backup.wal_segment_size;
            // Replay must reach into the last archived segment of the run (a
            // switch record ends exactly at the run's end).
            let want = match &plan.wal.last {
                Some(_) => Lsn(plan.wal.end_lsn.0.saturating_sub(seg)),
                None => plan.backup.stop()?,
            };
            match ended {
                Some(e) if e >= want => Ok(format!(
                    "replay reached the end of the archive on timeline {} (LSN {e}, archived WAL ends at {})",
                    plan.timeline, plan.wal.end_lsn
                )),
                _ => bail!(
                    "recovery ended at LSN {} (last replayed commit {commit}), but the archive holds WAL on timeline {} up to {} (segment {}): replay stopped before the end of the archive",
                    end.lsn,
                    plan.timeline,
                    plan.wal.end_lsn,
                    plan.wal.last.map(|s| s.to_string()).unwrap_or_default()
                ),
            }
        }
        Target::Time(t) => {
            if let Some(c) = end.last_commit {
                if c > *t || (exclusive && c == *t) {
                    bail!(
                        "recovery replayed a commit at {}, after the target time {}",
                        c.to_rfc3339(),
                        pg_time(t)
                    );
                }
            }
            match stop {
                Some(line) if line.starts_with("recovery stopping before commit")
                    || line.starts_with("recovery stopping before abort") =>
                {
                    Ok(format!(
                        "last replayed commit {commit} is at or before the target {}; PostgreSQL stopped at the first transaction after it ({})",
                        pg_time(t),
                        line.trim_start_matches("recovery stopping ")
                    ))
                }
                Some(line) => bail!(
                    "PostgreSQL stopped at another target than the time {} asked for: {line}",
                    pg_time(t)
                ),
                None => bail!(
                    "PostgreSQL did not report reaching the target time {} (no \"recovery stopping\" in its log; last replayed commit {commit})",
                    pg_time(t)
                ),
            }
        }
        Target::Lsn(want) => {
            let got = stop
                .filter(|l| l.contains("WAL location (LSN)"))
                .and_then(|l| quoted_after(l, "(LSN) "))
                .and_then(|s| Lsn::parse(s).ok());
            match got {
                Some(at) if at >= *want => Ok(format!(
                    "PostgreSQL stopped at LSN {at} for the target LSN {want}"
                )),
                _ => bail!(
                    "PostgreSQL did not report stopping at the target LSN {want} ({}); replay ended at {}",
                    stop.unwrap_or("no \"recovery stopping\" in its log"),
                    end.lsn
                ),
            }
        }
        Target::Xid(x) => {
            // The server reads recovery_target_xid as a 32-bit transaction id.
            let want = format!("transaction {},", x & 0xFFFF_FFFF);
            match stop {
                Some(l) if l.contains(&want) => Ok(format!("PostgreSQL stopped at {l}")),
                _ => bail!(
                    "PostgreSQL did not report stopping at transaction {x} ({})",
                    stop.unwrap_or("no \"recovery stopping\" in its log")
                ),
            }
        }
        Target::Name(n) => match stop.and_then(|l| quoted_after(l, "restore point ")) {
            Some(got) if got == n => Ok(format!("PostgreSQL stopped at restore point \"{n}\"")),
            _ => bail!(
                "PostgreSQL did not report stopping at restore point \"{n}\" ({})",
                stop.unwrap_or("no \"recovery stopping\" in its log")
            ),
        },
        Target::Immediate => match stop {
            Some(l) if l.contains("reaching consistency") => {
                Ok("PostgreSQL stopped as soon as the backup was consistent".into())
            }
            _ => bail!(
                "PostgreSQL did not report stopping at the end of the backup ({})",
                stop.unwrap_or("no \"recovery stopping\" in its log")
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::inventory::Run;
    use crate::wal::names::SegmentName;

    fn plan() -> Plan {
        let m: crate::backup::Manifest = serde_json::from_value(serde_json::json!({
            "format": 1, "id": "b", "label": "l", "system_identifier": "1",
            "pg_version_num": 150000, "timeline": 1, "start_lsn": "0/2000028",
            "stop_lsn": "0/2000100", "start_time": "2026-11-01T00:00:00Z",
            "stop_time": "2026-11-01T00:00:01Z", "wal_segment_size": 16777216,
            "raw_bytes": 0, "stored_bytes": 0, "files": 0, "duration_seconds": 0.0,
            "parts": [], "tablespaces": [], "encrypted": false, "created_by": "t"
        }))
        .unwrap();
        Plan {
            backup: m,
            timeline: 1,
            wal: Run {
                last: Some(SegmentName::from_segno(1, 5, 16 << 20)),
                end_lsn: Lsn(6 << 24),
                last_archived: None,
                gap: None,
            },
            tablespaces: Default::default(),
            major: 15,
            bin_dir: Err("not needed".into()),
        }
    }

    fn end(lsn: &str, commit: Option<&str>) -> End {
        End {
            lsn: lsn.into(),
            timeline: 1,
            last_commit: commit.map(|c| super::super::target::parse_time(c).unwrap()),
        }
    }

    #[test]
    fn latest_must_reach_the_last_segment() {
        let p = plan();
        assert!(check(&Target::Latest, false, &p, &end("0/6000000", None), "").is_ok());
        assert!(check(&Target::Latest, false, &p, &end("0/5000100", None), "").is_ok());
        let e = check(&Target::Latest, false, &p, &end("0/2000100", None), "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("0/2000100") && e.contains("0/6000000"), "{e}");
        // An old target left in the configuration stopped it.
        let log = "LOG:  recovery stopping before commit of transaction 740, time 2026-11-01 00:00:00+00\n";
        assert!(check(&Target::Latest, false, &p, &end("0/6000000", None), log).is_err());
    }

    #[test]
    fn time_needs_the_servers_stop_and_no_later_commit() {
        let p = plan();
        let t = Target::Time(super::super::target::parse_time("2026-11-01 10:00:00+00").unwrap());
        let log = "2026 LOG:  recovery stopping before commit of transaction 740, time 2026-11-01 10:00:01+00\n";
        // (inclusive, the last commit replayed, the server's log, passes)
        let cases = [
            (false, Some("2026-11-01 09:59:59+00"), log, true),
            (false, Some("2026-11-01 10:00:00+00"), log, true),
            (true, Some("2026-11-01 10:00:00+00"), log, false),
            (false, Some("2026-11-01 10:00:02+00"), log, false),
            (false, None, "", false),
        ];
        for (inclusive, commit, log, passes) in cases {
            let r = check(&t, inclusive, &p, &end("0/3000000", commit), log);
            assert_eq!(r.is_ok(), passes, "{inclusive} {commit:?} {log:?}: {r:?}");
        }
    }

    #[test]
    fn other_targets_need_the_servers_word() {
        let p = plan();
        let e = end("0/3000000", None);
        let lsn = Target::Lsn(Lsn::parse("0/3000100").unwrap());
        let xid = Target::Xid((1u64 << 32) + 750);
        let name = Target::Name("a".into());
        // (target, the server's log, passes)
        let cases = [
            (
                &lsn,
                "LOG:  recovery stopping after WAL location (LSN) \"0/3000100\"",
                true,
            ),
            (
                &lsn,
                "LOG:  recovery stopping after WAL location (LSN) \"0/3000000\"",
                false,
            ),
            (
                &xid,
                "LOG:  recovery stopping after commit of transaction 750, time x",
                true,
            ),
            (
                &xid,
                "LOG:  recovery stopping after commit of transaction 7501, time x",
                false,
            ),
            (
                &name,
                "LOG:  recovery stopping at restore point \"a\", time x",
                true,
            ),
            (
                &name,
                "LOG:  recovery stopping at restore point \"ab\", time x",
                false,
            ),
            (
                &Target::Immediate,
                "LOG:  recovery stopping after reaching consistency",
                true,
            ),
            (&Target::Immediate, "", false),
        ];
        for (target, log, passes) in cases {
            let r = check(target, false, &p, &e, log);
            assert_eq!(r.is_ok(), passes, "{target:?} {log:?}: {r:?}");
        }
    }
}
