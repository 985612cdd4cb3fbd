//! Retention of logical dumps, apart from the backups': the newest dump of
//! each of the latest N days, ISO weeks and months that have one (a dump
//! missed by cron costs no slot), every marked dump (`backup-mark`), and
//! incomplete dumps left by a push that died once they are a day old.

use crate::dump::{self, keep, list, Manifest};
use crate::marks::Keep;
use crate::retention::{self, Tally, INCOMPLETE_GRACE_HOURS};
use crate::store::Store;
use anyhow::Result;
use chrono::{DateTime, Datelike, Utc};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Policy {
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
}

impl Policy {
    pub fn any(&self) -> bool {
        self.keep_daily > 0 || self.keep_weekly > 0 || self.keep_monthly > 0
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub id: String,
    pub keep: bool,
    pub why: String,
}

/// A calendar period a time falls in (a day, an ISO week, a month).
type Period = fn(&DateTime<Utc>) -> (i32, u32);

/// The verdict on every complete dump, newest first.
pub fn plan(
    dumps: &[Manifest],
    marks: &BTreeMap<String, Keep>,
    p: Policy,
    now: DateTime<Utc>,
) -> Vec<Verdict> {
    let mut newest_first: Vec<&Manifest> = dumps.iter().collect();
    newest_first.sort_by_key(|m| std::cmp::Reverse(m.finished_at));
    let mut reasons: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let periods: [(&str, u32, Period); 3] = [
        ("day", p.keep_daily, |t| (t.year(), t.ordinal())),
        ("week", p.keep_weekly, |t| {
            let w = t.iso_week();
            (w.year(), w.week())
        }),
        ("month", p.keep_monthly, |t| (t.year(), t.month())),
    ];
    for (name, n, period) in periods {
        let mut seen = BTreeSet::new();
        for m in &newest_first {
            if seen.len() as u32 >= n {
                break;
            }
            if seen.insert(period(&m.finished_at)) {
                reasons
                    .entry(m.id.as_str())
                    .or_default()
                    .push(format!("newest of its {name} ({} of {n})", seen.len()));
            }
        }
    }
    newest_first
        .iter()
        .map(|m| {
            let mut why = reasons.remove(m.id.as_str()).unwrap_or_default();
            if let Some(r) = marks.get(&m.id).and_then(|k| k.reason(now)) {
                why.insert(0, r);
            }
            Verdict {
                id: m.id.clone(),
                keep: !why.is_empty(),
                why: if why.is_empty() {
                    "outside every dump policy".into()
                } else {
                    why.join("; ")
                },
            }
        })
        .collect()
}

pub async fn run(store: &dyn Store, p: Policy, confirm: bool) -> Result<bool> {
    let now = Utc::now();
    let listing = list(store).await?;
    let mut marks = BTreeMap::new();
    for m in &listing.dumps {
        if let Some(k) = keep::read(store, &m.id).await? {
            marks.insert(m.id.clone(), k);
        }
    }
    let mut verdicts = plan(&listing.dumps, &marks, p, now);
    let objects = store.list("dumps/").await?;
    let of = |id: &str| {
        let prefix = dump::prefix(id);
        objects
            .iter()
            .filter(|o| o.key.starts_with(&prefix))
            .cloned()
            .collect::<Vec<_>>()
    };
    for id in &listing.incomplete {
        let newest = of(id).iter().filter_map(|o| o.modified).max();
        let stale =
            newest.is_none_or(|t| now - t > chrono::Duration::hours(INCOMPLETE_GRACE_HOURS));
        verdicts.push(Verdict {
            id: id.clone(),
            keep: !stale,
            why: if stale {
                format!("incomplete (no manifest: a dump-push that died), last written over {INCOMPLETE_GRACE_HOURS} h ago")
            } else {
                format!("incomplete (no manifest), written within {INCOMPLETE_GRACE_HOURS} h: may be a dump-push still running")
            },
        });
    }
    let locking = store.object_lock().await?;
    if locking {
        for v in verdicts.iter_mut().filter(|v| !v.keep) {
            let key = dump::manifest_key(&v.id);
            if let Some(until) = retention::locked_until(store, &key, now).await? {
                v.keep = true;
                v.why = format!("under Object Lock until {} ({})", until.to_rfc3339(), v.why);
            }
        }
    }
    println!(
        "dump retention: keep the newest dump of each of the latest {} days, {} weeks, {} months with one",
        p.keep_daily, p.keep_weekly, p.keep_monthly
    );
    for v in &verdicts {
        retention::print_verdict("dump", 22, &v.id, v.keep, &v.why);
    }
    let gone: Vec<&Verdict> = verdicts.iter().filter(|v| !v.keep).collect();
    if !confirm {
        println!(
            "dry run: nothing removed ({} dumps would be); run with --confirm to remove them",
            gone.len()
        );
        return Ok(true);
    }
    let mut tally = Tally::default();
    for v in gone {
        let mut objs = of(&v.id);
        // The manifest first: a dump half removed is never listed as complete.
        objs.sort_by_key(|o| !o.key.ends_with("/manifest.json"));
        let (first, rest) = objs.split_at(objs.len().min(1));
        retention::remove(store, first, locking, now, &mut tally).await;
        retention::remove(store, rest, locking, now, &mut tally).await;
    }
    Ok(retention::report(&tally, store, "delete"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(at: &str) -> Manifest {
        let t: DateTime<Utc> = at.parse().unwrap();
        Manifest {
            format: 1,
            id: format!("dump-{}", t.format("%Y%m%dT%H%M%SZ")),
            started_at: t,
            finished_at: t,
            host: "h".into(),
            server_version: "15.18".into(),
            server_major: 15,
            system_identifier: "1".into(),
            pg_dump_major: 15,
            encrypted: false,
            databases: vec![],
            globals: None,
        }
    }

    #[test]
    fn newest_of_each_period_and_marks_are_kept() {
        // Nightly dumps for 70 days, two on the last day.
        let start: DateTime<Utc> = "2026-09-01T02:00:00Z".parse().unwrap();
        let mut dumps: Vec<Manifest> = (0..70)
            .map(|d| dump(&(start + chrono::Duration::days(d)).to_rfc3339()))
            .collect();
        dumps.push(dump("2026-11-09T14:00:00Z"));
        let now: DateTime<Utc> = "2026-11-10T00:00:00Z".parse().unwrap();
        let p = Policy {
            keep_daily: 3,
            keep_weekly: 2,
            keep_monthly: 3,
        };
        let mut marks = BTreeMap::new();
        marks.insert(
            "dump-20260902T020000Z".to_string(),
            Keep {
                permanent: true,
                keep_until: None,
                note: Some("audit".into()),
                marked_at: now,
                marked_by: "dba".into(),
            },
        );
        let v = plan(&dumps, &marks, p, now);
        let kept: Vec<&str> = v.iter().filter(|v| v.keep).map(|v| v.id.as_str()).collect();
        assert_eq!(
            kept,
            [
                "dump-20261109T140000Z", // day 1, week 1 (Mon 9 Nov), month 1
                "dump-20261108T020000Z", // day 2, week 2 (the week of Sun 8 Nov)
                "dump-20261107T020000Z", // day 3
                "dump-20261031T020000Z", // month 2 (October)
                "dump-20260930T020000Z", // month 3 (September)
                "dump-20260902T020000Z", // permanent
            ]
        );
        assert!(v[0].why.contains("newest of its day (1 of 3)"));
        assert!(v.iter().any(|v| v.id == "dump-20261109T020000Z" && !v.keep));
        assert_eq!(
            v.iter()
                .find(|v| v.id == "dump-20260902T020000Z")
                .unwrap()
                .why,
            "permanent: audit"
        );
    }
}
