//! `backup-mark` of a backup: its mark (`backups/<id>/keep.json`, see
//! [`crate::marks`]), its objects, its WAL and the backups it builds on put in
//! the mark's lifecycle class.

use super::{prefix, read_manifest, Manifest};
use crate::marks::{self, Keep, Mark};
use crate::store::{Class, Store};
use crate::wal::names::{Lsn, SegmentName, WalFile};
use anyhow::{Context, Result};
use chrono::Utc;
use std::collections::HashSet;

pub fn key(id: &str) -> String {
    format!("{}keep.json", prefix(id))
}

pub async fn read(store: &dyn Store, id: &str) -> Result<Option<Keep>> {
    marks::read(store, &key(id)).await
}

pub async fn run(store: &dyn Store, id: &str, mark: Mark, note: Option<String>) -> Result<()> {
    let manifest = read_manifest(store, id).await?;
    let now = Utc::now();
    let class = mark.class();
    let keep = marks::write(store, &key(id), mark, note).await?;
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
