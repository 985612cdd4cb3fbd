//! `backup-list`: complete backups and the recoverable window.

use super::{list, Manifest};
use crate::codec::Codec;
use crate::store::Store;
use crate::wal::inventory::Inventory;
use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;

#[derive(Serialize)]
pub struct Window {
    /// The earliest time a restore can reach: the end of the oldest usable backup.
    pub from: DateTime<Utc>,
    /// When the last contiguous WAL segment was stored: commits up to about here.
    pub to: Option<DateTime<Utc>>,
    pub end_lsn: String,
    pub timeline: u32,
    /// A missing segment with later ones present: the window ends before it.
    pub gap: Option<String>,
}

#[derive(Serialize)]
struct Row<'a> {
    #[serde(flatten)]
    manifest: &'a Manifest,
    wal_complete: bool,
}

#[derive(Serialize)]
struct Catalog<'a> {
    backups: Vec<Row<'a>>,
    window: Option<Window>,
    incomplete: Vec<String>,
}

pub async fn run(store: &dyn Store, codec: &Codec, json: bool) -> Result<()> {
    let listing = list(store).await?;
    let seg = listing
        .complete
        .first()
        .map(|m| m.wal_segment_size)
        .unwrap_or(16 << 20);
    let inv = Inventory::load(store, codec, seg).await?;
    let tli = inv.latest_timeline();
    let mut rows = Vec::new();
    for m in &listing.complete {
        let wal_complete = match (m.start(), m.stop()) {
            (Ok(a), Ok(z)) => inv.missing_between(m.timeline, a, z).is_none(),
            _ => false,
        };
        rows.push(Row {
            manifest: m,
            wal_complete,
        });
    }
    let window = rows
        .iter()
        .find(|r| {
            r.wal_complete
                && r.manifest
                    .stop()
                    .is_ok_and(|s| inv.reaches(tli, r.manifest.timeline, s))
        })
        .map(|r| {
            let m = r.manifest;
            let run = inv.run_from(tli, m.start().map(|l| l.segno(seg)).unwrap_or(0));
            Window {
                from: m.stop_time,
                to: run.last_archived,
                end_lsn: run.end_lsn.to_string(),
                timeline: tli,
                gap: run.gap.map(|g| g.to_string()),
            }
        });
    let catalog = Catalog {
        backups: rows,
        window,
        incomplete: listing.incomplete,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&catalog)?);
        return Ok(());
    }
    if catalog.backups.is_empty() {
        println!("no complete backups in {}", store.locate(""));
    } else {
        println!(
            "{:<17} {:<20} {:<20} {:>12} {:>12} {:>4} {:>9} {:>9} {:>8}  WAL",
            "ID",
            "START (UTC)",
            "STOP (UTC)",
            "START LSN",
            "STOP LSN",
            "TLI",
            "RAW MiB",
            "STORED",
            "SECONDS"
        );
        for r in &catalog.backups {
            let m = r.manifest;
            println!(
                "{:<17} {:<20} {:<20} {:>12} {:>12} {:>4} {:>9} {:>9} {:>8.1}  {}",
                m.id,
                m.start_time.format("%Y-%m-%d %H:%M:%S"),
                m.stop_time.format("%Y-%m-%d %H:%M:%S"),
                m.start_lsn,
                m.stop_lsn,
                m.timeline,
                m.raw_bytes >> 20,
                m.stored_bytes >> 20,
                m.duration_seconds,
                if r.wal_complete {
                    "complete"
                } else {
                    "MISSING: not restorable"
                }
            );
        }
    }
    match &catalog.window {
        Some(w) => {
            println!(
                "recoverable window: {} .. {} (timeline {}, WAL to {})",
                w.from.to_rfc3339(),
                w.to.map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| "end of backup".into()),
                w.timeline,
                w.end_lsn
            );
            if let Some(g) = &w.gap {
                println!("WAL GAP: segment {g} is missing; the window ends before it and later WAL cannot be replayed");
            }
        }
        None if !catalog.backups.is_empty() => {
            println!("recoverable window: none (no backup has all its WAL)")
        }
        None => {}
    }
    if !catalog.incomplete.is_empty() {
        println!(
            "incomplete (no manifest: a backup-push that did not finish): {}",
            catalog.incomplete.join(", ")
        );
    }
    Ok(())
}
