//! `backup-list`: complete backups and the recoverable window.

use super::{Listing, Manifest};
use crate::codec::Codec;
use crate::store::Store;
use crate::wal::backlog::Dropped;
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
    /// When that segment was dropped on purpose (push.max_backlog).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gap_dropped: Option<Dropped>,
}

impl Window {
    /// Names the drop behind the gap, when push.max_backlog made it.
    pub fn mark_dropped(&mut self, dropped: &[Dropped]) {
        self.gap_dropped = self
            .gap
            .as_ref()
            .and_then(|g| dropped.iter().find(|d| &d.segment == g))
            .cloned();
    }
}

/// How a dropped segment reads in a gap line.
pub fn describe_drop(d: &Dropped) -> String {
    format!(
        "DROPPED on purpose by push.max_backlog on {} at {} ({} files waiting, bound {})",
        d.host,
        d.at.to_rfc3339(),
        d.backlog,
        d.max_backlog
    )
}

#[derive(Serialize)]
struct Row<'a> {
    #[serde(flatten)]
    manifest: &'a Manifest,
    wal_complete: bool,
    /// "full" or "incr".
    kind: &'static str,
    /// Every backup of its chain is complete (always for a full backup).
    chain_complete: bool,
    /// What the backup and the backups it builds on store together.
    chain_stored_bytes: u64,
    /// Why retention keeps it whatever the policy (backup-mark).
    keep: Option<String>,
}

/// The recoverable window on the latest timeline: from the end of the oldest
/// restorable backup on its history to the end of contiguous WAL.
pub fn window(listing: &Listing, inv: &Inventory) -> Option<Window> {
    let tli = inv.latest_timeline();
    listing
        .complete
        .iter()
        .find(|m| super::restorable_on(listing, inv, m, tli))
        .map(|m| {
            let run = inv.run_from(tli, m.start().map(|l| l.segno(inv.seg_size)).unwrap_or(0));
            Window {
                from: m.stop_time,
                // Stores keep whole seconds (S3): the last segment can appear
                // stored before the backup's own stop time.
                to: run.last_archived.map(|t| t.max(m.stop_time)),
                end_lsn: run.end_lsn.to_string(),
                timeline: tli,
                gap: run.gap.map(|g| g.to_string()),
                gap_dropped: None,
            }
        })
}

#[derive(Serialize)]
struct Catalog<'a> {
    /// The repository of the cluster this one was upgraded from (repo-switch).
    previous: Option<crate::repo::Link>,
    /// Where this repository's cluster archives since an upgrade (repo-switch).
    successor: Option<crate::repo::Link>,
    backups: Vec<Row<'a>>,
    window: Option<Window>,
    incomplete: Vec<String>,
    damaged: Vec<(String, String)>,
}

pub async fn run(store: &dyn Store, codec: &Codec, json: bool) -> Result<()> {
    let identity = crate::repo::require(store).await?;
    let successor = crate::repo::successor(store).await?;
    let (listing, inv) = super::list_with_wal_cached(store, codec).await?;
    let mut rows = Vec::new();
    for m in &listing.complete {
        let chain_stored_bytes = m
            .chain
            .iter()
            .filter_map(|id| listing.complete.iter().find(|b| &b.id == id))
            .map(|b| b.stored_bytes)
            .sum::<u64>()
            + m.stored_bytes;
        rows.push(Row {
            manifest: m,
            wal_complete: super::restorable(&inv, m),
            kind: m.kind(),
            chain_complete: super::chain_present(&listing, m),
            chain_stored_bytes,
            keep: listing
                .keeps
                .get(&m.id)
                .and_then(|k| k.reason(chrono::Utc::now())),
        });
    }
    let mut window = window(&listing, &inv);
    if let Some(w) = window.as_mut().filter(|w| w.gap.is_some()) {
        w.mark_dropped(&crate::wal::backlog::recorded(store).await?);
    }
    let catalog = Catalog {
        previous: identity.previous,
        successor,
        backups: rows,
        window,
        incomplete: listing.incomplete,
        damaged: listing.damaged,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&catalog)?);
        return Ok(());
    }
    if catalog.backups.is_empty() {
        println!("no complete backups in {}", store.locate(""));
    } else {
        println!(
            "{:<17} {:<4} {:<24} {:>3} {:<20} {:<20} {:>12} {:>12} {:>4} {:>9} {:>9} {:>8}  WAL",
            "ID",
            "KIND",
            "TAKEN ON",
            "PG",
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
                "{:<17} {:<4} {:<24} {:>3} {:<20} {:<20} {:>12} {:>12} {:>4} {:>9} {:>9} {:>8.1}  {}{}",
                m.id,
                r.kind,
                m.taken_on
                    .as_ref()
                    .map_or_else(|| "-".to_string(), |t| t.to_string()),
                m.pg_version_num / 10000,
                m.start_time.format("%Y-%m-%d %H:%M:%S"),
                m.stop_time.format("%Y-%m-%d %H:%M:%S"),
                m.start_lsn,
                m.stop_lsn,
                m.timeline,
                m.raw_bytes >> 20,
                m.stored_bytes >> 20,
                m.duration_seconds,
                match (r.wal_complete, &r.keep) {
                    (true, None) => "complete".to_string(),
                    (true, Some(k)) => format!("complete; KEEP {k}"),
                    (false, _) => "MISSING: not restorable".to_string(),
                },
                match &m.parent {
                    Some(p) if r.chain_complete => format!(
                        "; on {p}, chain of {} backups storing {} MiB",
                        m.chain.len() + 1,
                        r.chain_stored_bytes >> 20
                    ),
                    Some(p) => format!(
                        "; on {p}: CHAIN BROKEN, a backup it builds on is gone ({})",
                        m.chain.join(", ")
                    ),
                    None => String::new(),
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
                println!(
                    "WAL GAP: segment {g} is missing{}; the window ends before it and later WAL cannot be replayed",
                    w.gap_dropped
                        .as_ref()
                        .map(|d| format!(" ({})", describe_drop(d)))
                        .unwrap_or_default()
                );
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
    for (id, why) in &catalog.damaged {
        println!("DAMAGED: backup {id} cannot be used: {why}");
    }
    if let Some(p) = &catalog.previous {
        println!("upgraded from: {}", p.describe());
    }
    if let Some(n) = &catalog.successor {
        println!(
            "SWITCHED to: {}; this repository keeps the history before the upgrade",
            n.describe()
        );
    }
    Ok(())
}
