//! `wal-verify`: walks the WAL in the repository and reports what recovery would
//! hit: segments missing since each backup and since the oldest backup, and
//! timeline breaks. A missing segment is "pending" when its successors were stored
//! recently (a push may still be on its way) and "lost" otherwise.

use crate::backup::Manifest;
use crate::codec::Codec;
use crate::store::Store;
use crate::wal::inventory::Inventory;
use crate::wal::names::{Lsn, SegmentName};
use crate::wal::stream::{self, Piece};
use crate::wal::{backlog, switches};
use anyhow::Result;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Gap {
    pub first: String,
    pub last: String,
    pub segments: u64,
    /// "pending" (probably still being pushed), "lost", or "dropped" (on
    /// purpose, by push.max_backlog).
    pub status: &'static str,
    /// For a dropped gap: when, where and with what backlog the first of its
    /// segments was dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<backlog::Dropped>,
}

#[derive(Serialize)]
pub struct BackupWal {
    pub id: String,
    pub timeline: u32,
    pub start_lsn: String,
    pub stop_lsn: String,
    /// Its own WAL (start to stop) is all present: it can be restored.
    pub restorable: bool,
    pub missing_own: Option<Gap>,
    /// Replay from this backup along the latest timeline stops here.
    pub replay_end_lsn: String,
    /// The first gap after its start on the latest timeline.
    pub gap: Option<Gap>,
    /// The backup's timeline is not an ancestor of the latest one at its stop.
    pub off_latest_timeline: bool,
}

/// A segment `wal-receive` has streamed but not stored whole (yet).
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Streamed {
    pub segment: String,
    pub timeline: u32,
    /// How far its pieces reach from the segment's start, chained, and the
    /// LSN there: where `recover --target latest` ends when this is the
    /// newest WAL of its timeline.
    pub bytes: u64,
    pub end_lsn: String,
    pub pieces: usize,
    /// No chain of pieces starts at the segment's start: a reader cannot use them.
    pub unusable: bool,
    /// Segments of its timeline missing between the newest one stored whole
    /// and this one: replay never reaches it.
    pub after_gap: bool,
}

#[derive(Serialize)]
pub struct Report {
    pub repository: String,
    pub segments: u64,
    pub timelines: Vec<u32>,
    pub latest_timeline: u32,
    pub newest_segment: Option<String>,
    pub newest_stored: Option<DateTime<Utc>>,
    pub backups: Vec<BackupWal>,
    /// Gaps on the latest timeline's path since the oldest restorable backup.
    pub gaps: Vec<Gap>,
    pub timeline_breaks: Vec<String>,
    /// Every timeline switch the history files record.
    pub switches: Vec<switches::Switch>,
    pub window_from: Option<String>,
    pub window_broken: bool,
    /// What wal-receive holds beyond the whole segments, by segment.
    pub streamed: Vec<Streamed>,
}

pub async fn run(
    store: &dyn Store,
    codec: &Codec,
    pending_seconds: i64,
    json: bool,
) -> Result<bool> {
    let (listing, inv) = crate::backup::list_with_wal(store, codec).await?;
    let now = Utc::now();
    let pinned: BTreeSet<String> = listing
        .keeps
        .iter()
        .filter(|(_, k)| k.reason(now).is_some())
        .map(|(id, _)| id.clone())
        .collect();
    let mut report = analyse(
        &inv,
        &listing.complete,
        &pinned,
        now,
        Duration::seconds(pending_seconds),
        store.locate(""),
    );
    mark_dropped(&mut report, &backlog::recorded(store).await?);
    // Names alone say what a piece holds: no key, no download.
    let pieces: Vec<Piece> = store
        .list(stream::PREFIX)
        .await?
        .iter()
        .filter_map(|o| stream::parse(&o.key))
        .collect();
    report.streamed = streamed(&inv, pieces);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report);
    }
    Ok(!report.window_broken)
}

/// The analysis itself: pure, so it is tested without a store.
/// `pinned`: backups kept by a mark; retention keeps only their own WAL, so the
/// window is anchored at the oldest restorable unpinned backup when there is one.
pub fn analyse(
    inv: &Inventory,
    backups: &[Manifest],
    pinned: &BTreeSet<String>,
    now: DateTime<Utc>,
    pending: Duration,
    repository: String,
) -> Report {
    let tli = inv.latest_timeline();
    let timelines = inv.segments.timelines();
    let newest = inv.segments.newest();

    let mut breaks = Vec::new();
    for t in timelines.iter().copied().chain([tli]) {
        if t > 1
            && !inv.histories.contains_key(&t)
            && !breaks
                .iter()
                .any(|b: &String| b.contains(&format!("timeline {t} ")))
        {
            breaks.push(format!(
                "timeline {t} has WAL but no {t:08X}.history: recovery cannot follow it from its parent"
            ));
        }
    }

    let mut rows = Vec::new();
    for m in backups {
        let (Ok(start), Ok(stop)) = (m.start(), m.stop()) else {
            continue;
        };
        let first = start.segno(inv.seg_size);
        let last_own = Lsn(stop.0.saturating_sub(1)).segno(inv.seg_size);
        let missing_own = gaps_between(inv, m.timeline, first, last_own, now, pending)
            .into_iter()
            .next();
        let run = inv.run_from(tli, first);
        let gap = run.gap.map(|g| {
            let n = g.segno(inv.seg_size).unwrap_or(0);
            gaps_between(inv, tli, n, n, now, pending)
                .into_iter()
                .next()
                .expect("a missing segment makes a gap")
        });
        rows.push(BackupWal {
            id: m.id.clone(),
            timeline: m.timeline,
            start_lsn: m.start_lsn.clone(),
            stop_lsn: m.stop_lsn.clone(),
            restorable: missing_own.is_none(),
            missing_own,
            replay_end_lsn: run.end_lsn.to_string(),
            gap,
            off_latest_timeline: !inv.reaches(tli, m.timeline, stop),
        });
    }

    // Since the oldest backup that can start recovery on the latest timeline.
    let usable = |r: &&BackupWal| r.restorable && !r.off_latest_timeline;
    let oldest = rows
        .iter()
        .filter(usable)
        .find(|r| !pinned.contains(&r.id))
        .or_else(|| rows.iter().find(usable));
    let mut gaps = Vec::new();
    if let Some(o) = oldest {
        let first = Lsn::parse(&o.start_lsn)
            .map(|l| l.segno(inv.seg_size))
            .unwrap_or(0);
        let last = inv.last_on(tli).unwrap_or(first);
        gaps = gaps_between(inv, tli, first, last, now, pending);
    }
    let window_broken = oldest.is_none() || gaps.iter().any(|g| g.status == "lost");
    let window_from = oldest.map(|o| o.id.clone());
    Report {
        repository,
        segments: inv.segments.len(),
        timelines,
        latest_timeline: tli,
        newest_segment: newest.map(|(s, _)| s.to_string()),
        newest_stored: newest.and_then(|(_, t)| t),
        backups: rows,
        gaps,
        timeline_breaks: breaks,
        switches: switches::of(inv),
        window_from,
        window_broken,
        streamed: Vec::new(),
    }
}

/// The streamed segments not stored whole, oldest first: pieces of a
/// segment stored whole are leftovers retention removes, and say nothing.
pub fn streamed(inv: &Inventory, pieces: Vec<Piece>) -> Vec<Streamed> {
    let mut by_seg: BTreeMap<SegmentName, Vec<Piece>> = BTreeMap::new();
    for p in pieces {
        if !inv.segments.contains(&p.seg) {
            by_seg.entry(p.seg).or_default().push(p);
        }
    }
    by_seg
        .into_iter()
        .filter_map(|(seg, ps)| {
            let segno = seg.segno(inv.seg_size).ok()?;
            let bytes = stream::chain(&ps).last().map_or(0, |p| p.to);
            // Between the newest whole segment on its timeline's path and it.
            let after_gap = inv
                .last_on(seg.tli)
                .filter(|&l| l < segno)
                .is_some_and(|l| !inv.missing(seg.tli, l + 1, segno - 1).is_empty());
            Some(Streamed {
                segment: seg.to_string(),
                timeline: seg.tli,
                bytes,
                end_lsn: Lsn(segno * inv.seg_size + bytes).to_string(),
                pieces: ps.len(),
                unusable: bytes == 0,
                after_gap,
            })
        })
        .collect()
}

/// Marks the gaps holding a segment push.max_backlog dropped as "dropped":
/// deliberate, and as final as a lost one.
pub fn mark_dropped(r: &mut Report, dropped: &[backlog::Dropped]) {
    let mark = |g: &mut Gap| {
        // Names of one timeline sort as their segment numbers.
        if let Some(d) = dropped
            .iter()
            .find(|d| d.segment >= g.first && d.segment <= g.last)
        {
            g.status = "dropped";
            g.dropped = Some(d.clone());
        }
    };
    r.gaps.iter_mut().for_each(mark);
    for b in &mut r.backups {
        b.missing_own.iter_mut().for_each(mark);
        b.gap.iter_mut().for_each(mark);
    }
    if r.gaps.iter().any(|g| g.status == "dropped") {
        r.window_broken = true;
    }
}

/// Missing segments from `first` to `last` (segment numbers) along `tli`'s
/// history, as runs, each pending or lost by when its successors were stored.
fn gaps_between(
    inv: &Inventory,
    tli: u32,
    first: u64,
    last: u64,
    now: DateTime<Utc>,
    pending: Duration,
) -> Vec<Gap> {
    let name = |n: u64| SegmentName::from_segno(inv.timeline_of(tli, n), n, inv.seg_size);
    inv.missing(tli, first, last)
        .into_iter()
        .map(|(a, z)| {
            // The earliest-stored segment after the gap: if even that is recent,
            // the missing ones may still be on their way.
            let after = inv.segments.earliest_stored_after(z);
            let status = match after {
                Some(t) if now - t < pending => "pending",
                _ => "lost",
            };
            Gap {
                first: name(a).to_string(),
                last: name(z).to_string(),
                segments: z - a + 1,
                status,
                dropped: None,
            }
        })
        .collect()
}

fn describe(g: &Gap) -> String {
    let dropped;
    let what = match (&g.dropped, g.status) {
        (Some(d), _) => {
            dropped = crate::backup::catalog::describe_drop(d);
            dropped.as_str()
        }
        (None, "pending") => "missing, probably still being pushed",
        _ => "LOST",
    };
    if g.segments == 1 {
        format!("{} ({what})", g.first)
    } else {
        format!(
            "{} .. {} ({} segments, {what})",
            g.first, g.last, g.segments
        )
    }
}

fn print(r: &Report) {
    let list = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
    println!(
        "WAL in {}: {} segments on timeline(s) {}; newest {} stored {}",
        r.repository,
        r.segments,
        list(&r.timelines),
        r.newest_segment.as_deref().unwrap_or("none"),
        r.newest_stored
            .map(|t| format!(
                "{} ({} s ago)",
                t.to_rfc3339(),
                (Utc::now() - t).num_seconds()
            ))
            .unwrap_or_else(|| "-".into())
    );
    for b in &r.backups {
        let own = match &b.missing_own {
            None => "its WAL present".to_string(),
            Some(g) => format!("its WAL MISSING {}: not restorable", describe(g)),
        };
        let replay = match &b.gap {
            None => format!(
                "replay reaches {} on timeline {}",
                b.replay_end_lsn, r.latest_timeline
            ),
            Some(g) => format!("replay stops at {}: gap {}", b.replay_end_lsn, describe(g)),
        };
        let off = if b.off_latest_timeline {
            format!(
                "; its timeline {} is not on the latest timeline's history",
                b.timeline
            )
        } else {
            String::new()
        };
        println!(
            "backup {} (timeline {}, {} .. {}): {own}; {replay}{off}",
            b.id, b.timeline, b.start_lsn, b.stop_lsn
        );
    }
    match &r.window_from {
        Some(id) if r.gaps.is_empty() => {
            println!(
                "since the oldest backup {id}: no gap on timeline {}",
                r.latest_timeline
            )
        }
        Some(id) => {
            println!("since the oldest backup {id}: {} gap(s)", r.gaps.len());
            for g in &r.gaps {
                println!("  GAP {}", describe(g));
            }
        }
        None => println!("no restorable backup on the latest timeline: nothing to recover from"),
    }
    for s in &r.switches {
        println!("{}", switches::describe(s));
    }
    for b in &r.timeline_breaks {
        println!("TIMELINE BREAK: {b}");
    }
    for st in &r.streamed {
        let how = if st.unusable {
            format!(
                "UNUSABLE: {} piece(s), none from the segment's start",
                st.pieces
            )
        } else if st.after_gap {
            format!(
                "to {} ({} bytes), BEYOND A GAP: replay never reaches it",
                st.end_lsn, st.bytes
            )
        } else {
            format!(
                "to {} ({} bytes in {} piece(s))",
                st.end_lsn, st.bytes, st.pieces
            )
        };
        println!("streamed {} (wal-receive): {how}", st.segment);
    }
    if r.window_broken {
        println!("recoverable window: BROKEN");
    } else if r.gaps.is_empty() {
        println!("recoverable window: unbroken");
    } else {
        println!("recoverable window: unbroken so far; pending segments should arrive shortly (check the archiver)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u64 = 16 << 20;

    /// `analyse` with nothing pinned and a 10-minute pending window.
    fn analyse_now(i: &Inventory, backups: &[Manifest], now: DateTime<Utc>) -> Report {
        analyse(
            i,
            backups,
            &BTreeSet::new(),
            now,
            Duration::seconds(600),
            "x".into(),
        )
    }

    fn inv(segs: &[(u64, i64)], now: DateTime<Utc>) -> Inventory {
        let mut i = Inventory::empty(MB16);
        for (n, age) in segs {
            let s = SegmentName::from_segno(1, *n, MB16);
            i.segments.insert(s, 1, Some(now - Duration::seconds(*age)));
        }
        i
    }

    #[test]
    fn streamed_segments_are_reported_with_their_reach() {
        let now = Utc::now();
        let i = inv(&[(1, 60), (2, 60), (3, 60)], now);
        let piece = |n: u64, from: u64, to: u64| {
            let k = stream::key(&SegmentName::from_segno(1, n, MB16), from, to);
            stream::parse(&k).unwrap()
        };
        let got = streamed(
            &i,
            vec![
                piece(2, 0, 0x100),  // stored whole: a leftover, not reported
                piece(4, 0, 0x1000), // the open segment, in two pieces
                piece(4, 0x1000, 0x3000),
                piece(4, 0x4000, 0x5000), // not chained: not counted
                piece(7, 0, 0x200),       // 5 and 6 missing before it
                piece(8, 0x100, 0x200),   // nothing from the start
            ],
        );
        let names: Vec<&str> = got.iter().map(|s| s.segment.as_str()).collect();
        assert_eq!(
            names,
            [
                "000000010000000000000004",
                "000000010000000000000007",
                "000000010000000000000008"
            ]
        );
        assert_eq!(
            got[0],
            Streamed {
                segment: names[0].into(),
                timeline: 1,
                bytes: 0x3000,
                end_lsn: "0/4003000".into(),
                pieces: 3,
                unusable: false,
                after_gap: false,
            }
        );
        assert!(got[1].after_gap && !got[1].unusable);
        assert_eq!(got[1].end_lsn, "0/7000200");
        assert!(got[2].unusable && got[2].bytes == 0);
    }

    fn backup(seg: u64) -> Manifest {
        serde_json::from_value(serde_json::json!({
            "format": 1, "id": format!("b{seg}"), "label": "", "system_identifier": "1", "pg_version_num": 150000,
            "timeline": 1, "start_lsn": format!("0/{:X}", seg * MB16 + 0x28),
            "stop_lsn": format!("0/{:X}", seg * MB16 + 0x138),
            "start_time": "2026-11-22T00:00:00Z", "stop_time": "2026-11-22T00:00:00Z", "wal_segment_size": MB16,
            "raw_bytes": 1, "stored_bytes": 1, "files": 1, "duration_seconds": 1.0,
            "parts": [], "tablespaces": [], "encrypted": false, "created_by": "test"
        }))
        .unwrap()
    }

    #[test]
    fn old_gaps_are_lost_recent_ones_pending() {
        let now = Utc::now();
        // 2..=9 with 4 missing (successors stored an hour ago) and 8 missing (successor 5 s ago).
        let i = inv(
            &[
                (2, 4000),
                (3, 4000),
                (5, 3600),
                (6, 3600),
                (7, 3600),
                (9, 5),
            ],
            now,
        );
        let r = analyse_now(&i, &[backup(2)], now);
        assert_eq!(r.gaps.len(), 2);
        assert_eq!(r.gaps[0].first, "000000010000000000000004");
        assert_eq!(r.gaps[0].status, "lost");
        assert_eq!(r.gaps[1].first, "000000010000000000000008");
        assert_eq!(r.gaps[1].status, "pending");
        assert!(r.window_broken);
        assert!(r.backups[0].restorable);
        assert_eq!(
            r.backups[0].gap.as_ref().unwrap().first,
            "000000010000000000000004"
        );
        // Only the recent gap: not broken yet.
        let i = inv(&[(2, 4000), (3, 4000), (5, 3)], now);
        let r = analyse_now(&i, &[backup(2)], now);
        assert!(!r.window_broken);
        assert_eq!(r.gaps[0].status, "pending");
    }

    #[test]
    fn a_backup_without_its_wal_is_not_restorable() {
        let now = Utc::now();
        let i = inv(&[(2, 100), (3, 100), (5, 100)], now);
        let r = analyse_now(&i, &[backup(4)], now);
        assert!(!r.backups[0].restorable);
        assert_eq!(
            r.backups[0].missing_own.as_ref().unwrap().first,
            "000000010000000000000004"
        );
        assert!(r.window_broken, "no restorable backup");
    }

    #[test]
    fn a_permanent_backup_keeps_only_its_own_wal_without_breaking_the_window() {
        let now = Utc::now();
        let i = inv(&[(2, 4000), (6, 4000), (7, 4000)], now);
        let pinned: BTreeSet<String> = ["b2".to_string()].into();
        let r = analyse(
            &i,
            &[backup(2), backup(6)],
            &pinned,
            now,
            Duration::seconds(600),
            "x".into(),
        );
        assert!(!r.window_broken);
        assert_eq!(r.window_from.as_deref(), Some("b6"));
        assert!(r.backups[0].restorable);
        let r = analyse_now(&i, &[backup(2), backup(6)], now);
        assert!(r.window_broken, "unpinned, the hole after b2 is a loss");
    }

    #[test]
    fn a_timeline_without_history_is_a_break() {
        let now = Utc::now();
        let mut i = inv(&[(2, 100), (3, 100)], now);
        let s = SegmentName::from_segno(2, 4, MB16);
        i.segments.insert(s, 1, Some(now));
        let r = analyse_now(&i, &[backup(2)], now);
        assert_eq!(r.timeline_breaks.len(), 1, "{:?}", r.timeline_breaks);
        assert!(r.timeline_breaks[0].contains("00000002.history"));
    }
}
