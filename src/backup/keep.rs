//! `backup-mark`: backups that retention never removes (audit keeps).
//!
//! The mark is its own clear object, `backups/<id>/keep.json`, so the manifest is
//! never rewritten (it may be under Object Lock) and a host without the private key
//! can read it. Unmarking writes a mark that keeps nothing, which also works on a
//! versioned, locked bucket where deleting would only hide the mark.

use super::{prefix, read_manifest, Manifest};
use crate::store::{Class, Mode, Store};
use crate::wal::names::{Lsn, SegmentName, WalFile};
use anyhow::{bail, Context, Result};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Keep {
    /// Never removed by any retention policy.
    pub permanent: bool,
    /// Not removed before the end of this day (UTC).
    pub keep_until: Option<NaiveDate>,
    pub note: Option<String>,
    pub marked_at: DateTime<Utc>,
    pub marked_by: String,
}

impl Keep {
    /// Why retention must keep the backup at `now`; `None` when the mark keeps nothing.
    pub fn reason(&self, now: DateTime<Utc>) -> Option<String> {
        let note = self
            .note
            .as_deref()
            .map(|n| format!(": {n}"))
            .unwrap_or_default();
        if self.permanent {
            return Some(format!("permanent{note}"));
        }
        match self.keep_until {
            Some(d) if now.date_naive() <= d => Some(format!("kept until {d}{note}")),
            _ => None,
        }
    }
}

pub fn key(id: &str) -> String {
    format!("{}keep.json", prefix(id))
}

pub async fn read(store: &dyn Store, id: &str) -> Result<Option<Keep>> {
    crate::store::get_json(store, &key(id), "a walvault keep mark").await
}

pub enum Mark {
    Permanent,
    Until(NaiveDate),
    Unmark,
}

/// Parses `--keep-until`: a date, YYYY-MM-DD.
pub fn parse_date(s: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .with_context(|| format!("--keep-until '{s}' is not a date; use YYYY-MM-DD"))
}

impl Mark {
    /// The lifecycle class a marked object goes into.
    pub fn class(&self) -> Class {
        match self {
            Mark::Permanent => Class::Permanent,
            Mark::Until(_) => Class::Kept,
            Mark::Unmark => Class::Standard,
        }
    }
}

/// Writes a mark under `key` (replacing the last one) and returns it.
pub async fn write(store: &dyn Store, key: &str, mark: Mark, note: Option<String>) -> Result<Keep> {
    let now = Utc::now();
    let keep = Keep {
        permanent: matches!(mark, Mark::Permanent),
        keep_until: match mark {
            Mark::Until(d) => {
                if d < now.date_naive() {
                    bail!("--keep-until {d} is in the past");
                }
                Some(d)
            }
            _ => None,
        },
        note,
        marked_at: now,
        marked_by: crate::pg::conn::os_user(),
    };
    let text = serde_json::to_vec_pretty(&keep)?;
    // The one object walvault replaces on purpose: a mark changes.
    store
        .write(
            key,
            Box::new(std::io::Cursor::new(text)),
            Class::Standard,
            Mode::Replace,
        )
        .await?;
    Ok(keep)
}

pub async fn run(store: &dyn Store, id: &str, mark: Mark, note: Option<String>) -> Result<()> {
    if id.starts_with(crate::dump::ID_PREFIX) {
        return crate::dump::keep::run(store, id, mark, note).await;
    }
    let manifest = read_manifest(store, id).await?;
    let now = Utc::now();
    let class = mark.class();
    let keep = write(store, &key(id), mark, note).await?;
    match keep.reason(now) {
        Some(r) => println!("backup {id}: {r}; no retention policy removes it"),
        None => println!("backup {id}: unmarked; retention policies apply to it again"),
    }
    let mut tagged = classify(store, &manifest, class).await.with_context(|| {
        format!("the mark is stored, but putting the backup in lifecycle class {} failed; run backup-mark again once fixed", class.as_str())
    })?;
    // An incremental backup is kept with the backups it builds on: they join
    // its class (never leaving a stronger one; an unmark leaves them as they are).
    if class != Class::Standard {
        for ancestor in &manifest.chain {
            let permanent = read(store, ancestor).await?.is_some_and(|k| k.permanent);
            if permanent && class != Class::Permanent {
                continue;
            }
            let m = read_manifest(store, ancestor).await?;
            tagged += classify(store, &m, class).await.with_context(|| {
                format!("the mark is stored, but putting backup {ancestor}, which {id} builds on, in lifecycle class {} failed; run backup-mark again once fixed", class.as_str())
            })?;
        }
        if !manifest.chain.is_empty() {
            println!(
                "backup {id} builds on {}: retention keeps them with it",
                manifest.chain.join(", ")
            );
        }
    }
    if tagged > 0 {
        println!(
            "lifecycle: {tagged} objects (backup and its WAL) tagged {}={}",
            Class::TAG,
            class.as_str()
        );
    }
    Ok(())
}

/// Puts the backup's objects and the WAL from its start to its stop in
/// `class`, so the bucket's lifecycle rules treat them alike (a permanent
/// backup moves to colder storage with its WAL). Returns how many objects were
/// tagged: 0 where the store has no classes. History files are left alone: they
/// are never expired whatever the class (wal-push files them apart).
pub async fn classify(store: &dyn Store, m: &Manifest, class: Class) -> Result<usize> {
    let mut keys: Vec<String> = store
        .list(&prefix(&m.id))
        .await?
        .into_iter()
        .map(|o| o.key)
        .collect();
    // A backup's own WAL lies on its own timeline (on a standby too: a switch
    // during its backup fails the wait for its WAL): no history file, so no
    // key, is needed to name it.
    let seg = m.wal_segment_size;
    let last = Lsn(m.stop()?.0.saturating_sub(1)).segno(seg);
    let needed: HashSet<SegmentName> = (m.start()?.segno(seg)..=last)
        .map(|n| SegmentName::from_segno(m.timeline, n, seg))
        .collect();
    for o in store.list("wal/").await? {
        let name = o.key.rsplit('/').next().unwrap_or("");
        let belongs = match WalFile::parse(name) {
            Ok(WalFile::Segment(s) | WalFile::Partial(s) | WalFile::BackupHistory(s, _)) => {
                needed.contains(&s)
            }
            _ => false,
        };
        if belongs {
            keys.push(o.key);
        }
    }
    let mut tagged = 0;
    for k in &keys {
        if !store.set_class(k, class).await? {
            return Ok(0);
        }
        tagged += 1;
    }
    Ok(tagged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        let now = "2026-11-22T10:00:00Z".parse().unwrap();
        let mut k = Keep {
            permanent: true,
            keep_until: None,
            note: Some("audit 2026".into()),
            marked_at: now,
            marked_by: "dba".into(),
        };
        assert_eq!(k.reason(now).unwrap(), "permanent: audit 2026");
        k.permanent = false;
        assert_eq!(k.reason(now), None);
        k.keep_until = Some(parse_date("2026-11-22").unwrap());
        assert!(k.reason(now).unwrap().starts_with("kept until 2026-11-22"));
        assert_eq!(k.reason("2026-11-23T00:00:01Z".parse().unwrap()), None);
        assert!(parse_date("22/11/2026").is_err());
    }
}
